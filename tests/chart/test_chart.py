"""The Helm chart charts/eac-controller: lint, values schema, and what it renders.

Rendered offline with Helm's own Go SDK (helm-python-sdk); no cluster involved.
"""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import (
    CHART_CRD_FILE,
    CHART_DIR,
    CRD_FILE,
    NAMESPACE,
    RELEASE,
    controller_container,
    find,
    one,
)

GROUP = "proton.eac.dev"
PLURAL = "environmentaccountconnections"

# The controller's whole Kubernetes API use; nothing more may be granted.
CONTROLLER_RULES = {
    (GROUP, PLURAL, "get", None),
    (GROUP, PLURAL, "list", None),
    (GROUP, PLURAL, "watch", None),
    (GROUP, PLURAL, "patch", None),
    (GROUP, f"{PLURAL}/status", "get", None),
    (GROUP, f"{PLURAL}/status", "patch", None),
    (GROUP, f"{PLURAL}/finalizers", "update", None),
    ("events.k8s.io", "events", "create", None),
    ("events.k8s.io", "events", "patch", None),
}


def lease_rules(lease_name: str) -> set[tuple]:
    return {
        ("coordination.k8s.io", "leases", "create", None),
        ("coordination.k8s.io", "leases", "get", lease_name),
        ("coordination.k8s.io", "leases", "update", lease_name),
        ("coordination.k8s.io", "leases", "patch", lease_name),
    }


def flatten_rules(role: dict) -> set[tuple]:
    """Every (apiGroup, resource, verb, resourceName) a role grants; wildcards fail the test."""
    granted = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(field, []), f"wildcard in {role['metadata']['name']}: {rule}"
        names = rule.get("resourceNames") or [None]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in names:
                        granted.add((group, resource, verb, name))
    return granted


def args_of(objs) -> list[str]:
    return controller_container(objs)["args"]


# Every flag of `eac-controller run` the chart sets, with non-default values.
NON_DEFAULTS = {
    "replicaCount": 3,
    "watchNamespace": "team-a",
    "labelSelector": "shard in (a,b),team=payments",
    "region": "us-gov-west-1",
    "protonEndpoint": "http://proton-emulator.eac-demo.svc:4566",
    "resyncPeriod": "1h",
    "pendingPoll": "45s",
    "concurrency": 16,
    "awsRateLimit": 5,
    "awsBurst": 7,
    "awsTimeout": "2m",
    "leaderElection": {"enabled": True, "namespace": "eac-leases", "leaseName": "eac-shard-a"},
    "logging": {"format": "text", "level": "debug"},
    "metrics": {"port": 9090, "bindAddress": "[::]"},
    "extraArgs": ["--some-future-flag=1"],
    "extraEnv": [{"name": "RUST_LOG", "value": "eac_controller=trace,kube=info"}],
}

EXPECTED_NON_DEFAULT_ARGS = [
    "run",
    "--metrics-addr=[::]:9090",
    "--log-format=text",
    "--log-level=debug",
    "--resync-period=1h",
    "--pending-poll=45s",
    "--concurrency=16",
    "--aws-rate-limit=5",
    "--aws-burst=7",
    "--aws-timeout=2m",
    "--namespace=team-a",
    "--label-selector=shard in (a,b),team=payments",
    "--region=us-gov-west-1",
    "--proton-endpoint=http://proton-emulator.eac-demo.svc:4566",
    "--leader-election",
    "--leader-election-namespace=eac-leases",
    "--lease-name=eac-shard-a",
    "--some-future-flag=1",
]


# --- chart and lint ---------------------------------------------------------------------------


def test_chart_metadata(chart):
    meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "eac-controller"
    assert meta["appVersion"] == "0.1.0"
    assert chart.schema is not None, "values.schema.json is missing"


def test_lint_passes_strict(helm):
    report = helm.lint(CHART_DIR, strict=True, namespace=NAMESPACE)
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_lint_passes_with_non_default_values(helm):
    values = {**NON_DEFAULTS, "metrics": {**NON_DEFAULTS["metrics"], "serviceMonitor": {"enabled": True}}}
    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == [], report


def test_values_yaml_documents_every_schema_key(chart):
    """values.yaml and values.schema.json describe the same top-level keys."""
    schema_keys = set(chart.schema["properties"]) - {"global"}
    assert set(chart.values) == schema_keys


# --- default render ---------------------------------------------------------------------------


def test_default_render_objects(default_objs):
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in default_objs)
    assert kinds == sorted(
        [
            ("ClusterRole", "eac-controller"),
            ("ClusterRole", "eac-controller-edit"),
            ("ClusterRole", "eac-controller-view"),
            ("ClusterRoleBinding", "eac-controller"),
            ("Deployment", "eac-controller"),
            ("PodDisruptionBudget", "eac-controller"),
            ("Role", "eac-controller-leader-election"),
            ("RoleBinding", "eac-controller-leader-election"),
            ("Service", "eac-controller-metrics"),
            ("ServiceAccount", "eac-controller"),
        ]
    )
    for obj in default_objs:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]


def test_default_deployment(default_objs):
    deployment = one(default_objs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]
    assert pod["spec"]["serviceAccountName"] == "eac-controller"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    container = controller_container(default_objs)
    assert container["image"] == "ghcr.io/eac-dev/eac-controller:0.1.0"
    assert container["args"] == [
        "run",
        "--metrics-addr=0.0.0.0:8080",
        "--log-format=json",
        "--log-level=info",
        "--resync-period=10m",
        "--pending-poll=30s",
        "--concurrency=4",
        "--aws-rate-limit=10",
        "--aws-burst=20",
        "--aws-timeout=30s",
        "--leader-election",
        "--lease-name=eac-controller",
    ]


def test_pod_identity_comes_from_the_downward_api(default_objs):
    env = {e["name"]: e for e in controller_container(default_objs)["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_resources_have_requests_and_limits(default_objs):
    resources = controller_container(default_objs)["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert "memory" in resources["limits"]


def test_image_digest_wins_over_tag(render):
    digest = "sha256:" + "ab" * 32
    objs = render({"image": {"repository": "registry.example/eac", "tag": "9.9.9", "digest": digest}})
    assert controller_container(objs)["image"] == f"registry.example/eac@{digest}"
    objs = render({"image": {"repository": "registry.example/eac", "tag": "9.9.9"}})
    assert controller_container(objs)["image"] == "registry.example/eac:9.9.9"


# --- flags ------------------------------------------------------------------------------------


def test_every_flag_value_lands_in_the_args(render):
    objs = render(NON_DEFAULTS)
    assert args_of(objs) == EXPECTED_NON_DEFAULT_ARGS
    env = {e["name"]: e for e in controller_container(objs)["env"]}
    assert env["RUST_LOG"] == {"name": "RUST_LOG", "value": "eac_controller=trace,kube=info"}
    assert {"POD_NAME", "POD_NAMESPACE"} <= env.keys()
    assert one(objs, "Deployment")["spec"]["replicas"] == 3


def test_empty_optional_flags_are_left_out(default_objs):
    args = args_of(default_objs)
    for flag in ("--namespace", "--label-selector", "--region", "--proton-endpoint", "--leader-election-namespace"):
        assert not [a for a in args if a.startswith(flag + "=")], flag


def test_large_numbers_are_not_printed_in_float_notation(render):
    args = args_of(render({"awsRateLimit": 1000000, "awsBurst": 2000000, "concurrency": 1000}))
    assert "--aws-rate-limit=1000000" in args
    assert "--aws-burst=2000000" in args
    assert "--concurrency=1000" in args


# --- RBAC -------------------------------------------------------------------------------------


def test_default_rbac_is_a_cluster_role_with_exactly_the_controller_rules(default_objs):
    role = one(default_objs, "ClusterRole", RELEASE)
    assert flatten_rules(role) == CONTROLLER_RULES
    binding = one(default_objs, "ClusterRoleBinding", RELEASE)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": RELEASE,
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
    assert not [r for r in find(default_objs, "Role") if r["metadata"]["name"] == RELEASE]


def test_leader_election_role_is_namespaced_and_limited_to_the_lease(default_objs):
    role = one(default_objs, "Role", f"{RELEASE}-leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert flatten_rules(role) == lease_rules("eac-controller")
    binding = one(default_objs, "RoleBinding", f"{RELEASE}-leader-election")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"]["kind"] == "Role"
    assert binding["roleRef"]["name"] == f"{RELEASE}-leader-election"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]


def test_watch_namespace_gets_a_role_instead_of_a_cluster_role(render):
    objs = render({"watchNamespace": "team-a"})
    assert not find(objs, "ClusterRole", RELEASE)
    assert not find(objs, "ClusterRoleBinding")
    role = one(objs, "Role", RELEASE)
    assert role["metadata"]["namespace"] == "team-a"
    assert flatten_rules(role) == CONTROLLER_RULES
    binding = one(objs, "RoleBinding", RELEASE)
    assert binding["metadata"]["namespace"] == "team-a"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": RELEASE}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
    assert "--namespace=team-a" in args_of(objs)
    # The Lease stays in the release namespace.
    assert one(objs, "Role", f"{RELEASE}-leader-election")["metadata"]["namespace"] == NAMESPACE


def test_leader_election_off_has_no_lease_role(render):
    objs = render({"replicaCount": 1, "leaderElection": {"enabled": False}})
    assert not find(objs, "Role")
    assert not find(objs, "RoleBinding")
    args = args_of(objs)
    assert not [a for a in args if a.startswith("--leader-election") or a.startswith("--lease-name")]
    assert not find(objs, "PodDisruptionBudget")


def test_more_than_one_replica_needs_leader_election(render, helm):
    with pytest.raises(helm.HelmError, match="leaderElection"):
        render({"replicaCount": 2, "leaderElection": {"enabled": False}})


def test_leader_election_namespace_and_lease_name(render):
    objs = render({"leaderElection": {"namespace": "eac-leases", "leaseName": "shard-a"}})
    role = one(objs, "Role", f"{RELEASE}-leader-election")
    assert role["metadata"]["namespace"] == "eac-leases"
    assert flatten_rules(role) == lease_rules("shard-a")
    assert one(objs, "RoleBinding")["metadata"]["namespace"] == "eac-leases"
    args = args_of(objs)
    assert "--leader-election-namespace=eac-leases" in args
    assert "--lease-name=shard-a" in args


def test_lease_name_follows_the_release_name(render):
    """Two releases (e.g. label-selector shards) in one namespace must not share a Lease."""
    objs = render({"labelSelector": "shard=b"}, name="eac-shard-b")
    assert "--lease-name=eac-shard-b-eac-controller" in args_of(objs)
    role = one(objs, "Role")
    assert flatten_rules(role) == lease_rules("eac-shard-b-eac-controller")


def test_aggregated_user_roles_are_not_bound_to_the_controller(default_objs):
    view = one(default_objs, "ClusterRole", f"{RELEASE}-view")
    edit = one(default_objs, "ClusterRole", f"{RELEASE}-edit")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit["metadata"]["labels"]
    assert {v for (_, _, v, _) in flatten_rules(view)} == {"get", "list", "watch"}
    bound = {b["roleRef"]["name"] for b in find(default_objs, "ClusterRoleBinding") + find(default_objs, "RoleBinding")}
    assert not bound & {f"{RELEASE}-view", f"{RELEASE}-edit"}


def test_rbac_can_be_turned_off(render):
    objs = render({"rbac": {"create": False}})
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert not find(objs, kind), kind
    objs = render({"rbac": {"aggregateToDefaultRoles": False}})
    assert [r["metadata"]["name"] for r in find(objs, "ClusterRole")] == [RELEASE]


# --- probes, ports, security ------------------------------------------------------------------


@pytest.mark.parametrize("port", [8080, 9443])
def test_probes_use_the_metrics_port(render, port):
    objs = render({"metrics": {"port": port}})
    container = controller_container(objs)
    assert container["ports"] == [{"name": "http-metrics", "containerPort": port, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert f"--metrics-addr=0.0.0.0:{port}" in container["args"]
    service = one(objs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "http-metrics", "port": 8080, "targetPort": "http-metrics", "protocol": "TCP"}
    ]
    deployment_selector = one(objs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == deployment_selector


def test_security_context(default_objs):
    pod = one(default_objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # distroless "nonroot" is 65532
    assert pod["securityContext"]["runAsUser"] == 65532
    sc = controller_container(default_objs)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in sc


# --- optional objects -------------------------------------------------------------------------


def test_service_monitor_is_off_by_default(default_objs):
    assert not find(default_objs, "ServiceMonitor")


def test_service_monitor(render):
    objs = render(
        {
            "metrics": {
                "serviceMonitor": {
                    "enabled": True,
                    "interval": "15s",
                    "scrapeTimeout": "10s",
                    "labels": {"release": "kube-prometheus-stack"},
                }
            }
        }
    )
    monitor = one(objs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"] == [
        {"port": "http-metrics", "path": "/metrics", "scheme": "http", "interval": "15s", "scrapeTimeout": "10s"}
    ]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    service = one(objs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def test_irsa_annotation(render):
    arn = "arn:aws:iam::444455556666:role/eac-controller"
    objs = render({"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": arn}}})
    account = one(objs, "ServiceAccount")
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": arn}
    assert account["automountServiceAccountToken"] is True


def test_existing_service_account(render):
    objs = render({"serviceAccount": {"create": False, "name": "platform-eac"}})
    assert not find(objs, "ServiceAccount")
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "platform-eac"
    assert one(objs, "ClusterRoleBinding")["subjects"][0]["name"] == "platform-eac"


def test_pdb_only_with_more_than_one_replica(render, default_objs):
    pdb = one(default_objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == one(default_objs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert not find(render({"replicaCount": 1}), "PodDisruptionBudget")
    assert not find(render({"podDisruptionBudget": {"enabled": False}}), "PodDisruptionBudget")


def test_scheduling_and_extra_env(render):
    zone_spread = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
    own_selector = {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"custom": "yes"}},
    }
    values = {
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "platform", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}},
        "topologySpreadConstraints": [zone_spread, own_selector],
        "extraEnv": [{"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"}],
        "podAnnotations": {"example.com/a": "b"},
        "podLabels": {"team": "platform"},
        "priorityClassName": "system-cluster-critical",
    }
    objs = render(values)
    pod = one(objs, "Deployment")["spec"]["template"]
    spec = pod["spec"]
    assert spec["nodeSelector"] == values["nodeSelector"]
    assert spec["tolerations"] == values["tolerations"]
    assert spec["affinity"] == values["affinity"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    selector = one(objs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert spec["topologySpreadConstraints"] == [
        {**zone_spread, "labelSelector": {"matchLabels": selector}},
        own_selector,
    ]
    assert pod["metadata"]["annotations"] == {"example.com/a": "b"}
    assert pod["metadata"]["labels"]["team"] == "platform"
    env = controller_container(objs)["env"]
    assert env[-1] == {"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"}


def test_notes_render(chart):
    notes = chart.render(None, name=RELEASE, namespace=NAMESPACE)["eac-controller/templates/NOTES.txt"]
    assert "kubectl wait" in notes
    assert "create-pod-identity-association" in notes


# --- values schema ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"logging": {"format": "xml"}},
        {"logging": {"level": "verbose"}},
        {"replicaCount": -1},
        {"replicaCount": "two"},
        {"resyncPeriod": "ten minutes"},
        {"resyncPeriod": "10"},
        {"resyncPeriod": "0s"},
        {"pendingPoll": "30 s"},
        {"awsTimeout": "forever"},
        {"metrics": {"bindAddress": "localhost"}},
        {"protonEndpoint": "http://proton.test/?x=1"},
        {"concurrency": 0},
        {"awsRateLimit": 0},
        {"awsRateLimit": "fast"},
        {"awsBurst": 1.5},
        {"metrics": {"port": 70000}},
        {"watchNamespace": "Team_A"},
        {"region": "Europe"},
        {"protonEndpoint": "proton.local"},
        {"leaderElection": {"enabled": "yes"}},
        {"image": {"pullPolicy": "Sometimes"}},
        {"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": 42}}},
        {"extraEnv": [{"value": "no name"}]},
        {"extraArgs": "--flag"},
        {"unknownKey": True},
        {"leaderElection": {"enable": True}},
        {"metrics": {"serviceMonitor": {"interval": "often"}}},
        {"podDisruptionBudget": {"minAvailable": "half"}},
    ],
    ids=lambda v: json.dumps(v, separators=(",", ":")),
)
def test_schema_rejects_bad_values(chart, render, helm, values):
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    # ... and so does an install/template with them.
    with pytest.raises(helm.HelmValuesError):
        render(values)


def test_schema_accepts_good_values(chart):
    chart.validate_schema(NON_DEFAULTS)
    chart.validate_schema({"resyncPeriod": "500ms", "pendingPoll": "2m", "protonEndpoint": "embedded"})
    chart.validate_schema({"podDisruptionBudget": {"minAvailable": "50%", "unhealthyPodEvictionPolicy": "AlwaysAllow"}})
    chart.validate_schema({"region": "eu-west-1", "replicaCount": 0})


# --- CRD and Argo CD --------------------------------------------------------------------------


def test_chart_crd_is_the_generated_crd(chart):
    if not CRD_FILE.exists() and not CHART_CRD_FILE.exists():
        pytest.skip(f"{CRD_FILE.relative_to(CRD_FILE.parents[1])} is not generated yet")
    assert CRD_FILE.exists(), f"{CHART_CRD_FILE} exists but {CRD_FILE} does not"
    assert CHART_CRD_FILE.exists(), (
        f"the chart has no CRD: copy {CRD_FILE} to {CHART_CRD_FILE} (cargo run --bin eac-controller -- crd)"
    )
    assert CHART_CRD_FILE.read_bytes() == CRD_FILE.read_bytes(), "chart CRD differs from crds/: regenerate"
    crd = yaml.safe_load(CRD_FILE.read_text())
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    # Helm installs it from the chart's crds/ directory.
    assert [c["filename"].split("/", 1)[-1] for c in chart.crds] == ["crds/environmentaccountconnections.yaml"]


def test_argocd_snippet_is_exactly_health_lua():
    lua = (CHART_DIR / "argocd" / "health.lua").read_text()
    cm = yaml.safe_load((CHART_DIR / "argocd" / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    key = "resource.customizations.health.proton.eac.dev_EnvironmentAccountConnection"
    assert cm["data"][key] == lua
