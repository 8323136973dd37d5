"""The Helm chart charts/eac-controller: lint, values schema, and what it renders.

Rendered offline with Helm's own Go SDK (helm-python-sdk); no cluster involved.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from conftest import (
    CHART_CRD_FILE,
    CHART_DIR,
    CRD_FILE,
    NAMESPACE,
    RELEASE,
    ROOT,
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
    (GROUP, f"{PLURAL}/status", "patch", None),
    ("events.k8s.io", "events", "create", None),
}

POLICIES = "connectionacceptancepolicies"

# The management side's use (acceptancePolicies.enabled, the default): read the policies, write
# their status.
ACCEPTANCE_RULES = {
    (GROUP, POLICIES, "get", None),
    (GROUP, POLICIES, "list", None),
    (GROUP, POLICIES, "watch", None),
    (GROUP, f"{POLICIES}/status", "patch", None),
}


def lease_rules(lease_name: str) -> set[tuple]:
    """The leader election's whole use of Leases: get, create and update (no patch)."""
    return {
        ("coordination.k8s.io", "leases", "create", None),
        ("coordination.k8s.io", "leases", "get", lease_name),
        ("coordination.k8s.io", "leases", "update", lease_name),
    }


def namespace_rules(watch_namespace: str | None = None) -> set[tuple]:
    """Adoption opt-in: get on Namespaces (only the watched one when there is one)."""
    return {("", "namespaces", "get", watch_namespace)}


NAMESPACES_ROLE = f"{RELEASE}-namespaces"
ACCOUNTS_ROLE = f"{RELEASE}-accounts"
CHECK_ROLE = f"{RELEASE}-check"


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
    "awsPollShare": 0.25,
    "awsTimeout": "2m",
    "awsListLag": "0s",
    "allowedRegions": ["us-gov-west-1", "eu-west-1"],
    "stsEndpoint": "https://sts.us-gov-west-1.amazonaws.com",
    "watchFailureTimeout": "30s",
    "adoption": {"mode": "everywhere"},
    "accountMappings": {"enabled": False},
    "acceptancePolicies": {"enabled": False},
    "leaderElection": {
        "enabled": True,
        "namespace": "eac-leases",
        "leaseName": "eac-shard-a",
        "leaseDuration": "30s",
        "renewDeadline": "20s",
    },
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
    "--aws-poll-share=0.25",
    "--aws-timeout=2m",
    "--aws-list-lag=0s",
    "--watch-failure-timeout=30s",
    "--adoption=everywhere",
    "--account-mappings=false",
    "--acceptance-policies=false",
    "--namespace=team-a",
    "--label-selector=shard in (a,b),team=payments",
    "--region=us-gov-west-1",
    "--allowed-regions=us-gov-west-1,eu-west-1",
    "--proton-endpoint=http://proton-emulator.eac-demo.svc:4566",
    "--sts-endpoint=https://sts.us-gov-west-1.amazonaws.com",
    "--leader-election",
    "--leader-election-namespace=eac-leases",
    "--lease-name=eac-shard-a",
    "--lease-duration=30s",
    "--lease-renew-deadline=20s",
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
            ("ClusterRole", "eac-controller-accounts"),
            ("ClusterRole", "eac-controller-check"),
            ("ClusterRole", "eac-controller-edit"),
            ("ClusterRole", "eac-controller-namespaces"),
            ("ClusterRole", "eac-controller-view"),
            ("ClusterRoleBinding", "eac-controller"),
            ("ClusterRoleBinding", "eac-controller-accounts"),
            ("ClusterRoleBinding", "eac-controller-check"),
            ("ClusterRoleBinding", "eac-controller-namespaces"),
            ("Deployment", "eac-controller"),
            ("Pod", "eac-controller-check"),
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
        "--concurrency=32",
        "--aws-rate-limit=10",
        "--aws-burst=20",
        "--aws-poll-share=0.5",
        "--aws-timeout=30s",
        "--aws-list-lag=30s",
        "--watch-failure-timeout=2m",
        "--adoption=namespace-opt-in",
        "--account-mappings=true",
        "--unmapped-namespaces=own-credentials",
        "--acceptance-policies=true",
        "--leader-election",
        "--lease-name=eac-controller",
        "--lease-duration=15s",
        "--lease-renew-deadline=10s",
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
    for flag in (
        "--namespace",
        "--label-selector",
        "--region",
        "--allowed-regions",
        "--proton-endpoint",
        "--sts-endpoint",
        "--leader-election-namespace",
    ):
        assert not [a for a in args if a == flag or a.startswith(flag + "=")], flag


def test_large_numbers_are_not_printed_in_float_notation(render):
    args = args_of(render({"awsRateLimit": 10000, "awsBurst": 10000, "concurrency": 1024}))
    assert "--aws-rate-limit=10000" in args
    assert "--aws-burst=10000" in args
    assert "--concurrency=1024" in args


# Each new value, set to a non-default, lands in exactly its flag.
@pytest.mark.parametrize(
    ("values", "flag"),
    [
        ({"leaderElection": {"leaseDuration": "20s"}}, "--lease-duration=20s"),
        ({"leaderElection": {"renewDeadline": "5s"}}, "--lease-renew-deadline=5s"),
        ({"adoption": {"mode": "everywhere"}}, "--adoption=everywhere"),
        ({"adoption": {"mode": "disabled"}}, "--adoption=disabled"),
        ({"allowedRegions": ["eu-west-1"]}, "--allowed-regions=eu-west-1"),
        ({"allowedRegions": ["eu-west-1", "eu-central-1", "us-gov-west-1"]}, "--allowed-regions=eu-west-1,eu-central-1,us-gov-west-1"),
        ({"watchFailureTimeout": "5m"}, "--watch-failure-timeout=5m"),
        ({"awsListLag": "2m"}, "--aws-list-lag=2m"),
        ({"awsPollShare": 0.05}, "--aws-poll-share=0.05"),
        ({"awsPollShare": 1}, "--aws-poll-share=1"),
        ({"awsPollShare": 0.75}, "--aws-poll-share=0.75"),
        ({"stsEndpoint": "http://proton-emulator.eac-demo.svc:4566"}, "--sts-endpoint=http://proton-emulator.eac-demo.svc:4566"),
    ],
    ids=lambda v: v if isinstance(v, str) else json.dumps(v, separators=(",", ":")),
)
def test_each_new_value_renders_its_flag(render, values, flag):
    args = args_of(render(values))
    name = flag.split("=", 1)[0]
    assert [a for a in args if a.split("=", 1)[0] == name] == [flag]


def test_empty_allowed_regions_and_sts_endpoint_render_no_flag(render):
    args = args_of(render({"allowedRegions": [], "stsEndpoint": ""}))
    assert not [a for a in args if a.startswith("--allowed-regions") or a.startswith("--sts-endpoint")]


def test_lease_timings_are_left_out_without_leader_election(render):
    objs = render({"replicaCount": 1, "leaderElection": {"enabled": False, "leaseDuration": "1h", "renewDeadline": "2h"}})
    args = args_of(objs)
    assert not [a for a in args if a.startswith("--lease-")], args


def test_every_rendered_flag_is_a_flag_of_the_binary(default_objs, render):
    """Guards against typos in _helpers.tpl: each flag the chart renders is one `eac-controller run`
    documents (the list in src/config.rs, as `--kebab-case` of its fields)."""
    config = (ROOT / "src" / "config.rs").read_text()
    run_args = config.split("pub struct RunArgs", 1)[1].split("\n}\n", 1)[0]
    known = {"--" + m.replace("_", "-") for m in re.findall(r"pub (\w+):", run_args)}
    rendered = set()
    for objs in (default_objs, render(NON_DEFAULTS)):
        rendered |= {a.split("=", 1)[0] for a in args_of(objs)[1:] if a.startswith("--")}
    rendered.discard("--some-future-flag")
    assert rendered - known == set(), f"flags the binary does not have: {rendered - known}"


# --- RBAC -------------------------------------------------------------------------------------


def test_default_rbac_is_a_cluster_role_with_exactly_the_controller_rules(default_objs):
    role = one(default_objs, "ClusterRole", RELEASE)
    assert flatten_rules(role) == CONTROLLER_RULES | ACCEPTANCE_RULES
    binding = one(default_objs, "ClusterRoleBinding", RELEASE)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": RELEASE,
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
    assert not [r for r in find(default_objs, "Role") if r["metadata"]["name"] == RELEASE]


def test_the_management_side_can_be_turned_off_with_its_rules(render):
    objs = render({"acceptancePolicies": {"enabled": False}})
    assert flatten_rules(one(objs, "ClusterRole", RELEASE)) == CONTROLLER_RULES
    assert "--acceptance-policies=false" in args_of(objs)
    objs = render({"watchNamespace": "team-a"})
    assert flatten_rules(one(objs, "Role", RELEASE)) == CONTROLLER_RULES | ACCEPTANCE_RULES


def test_tenants_can_only_read_acceptance_policies(render, default_objs):
    """Accepting connections is the management account's decision: no aggregated role (edit and
    admin included) may create, change or delete a ConnectionAcceptancePolicy or its status; the
    view role may read them."""
    for objs in (default_objs, render({"watchNamespace": "team-a"}), render({"acceptancePolicies": {"enabled": False}})):
        for role in find(objs, "ClusterRole"):
            labels = role["metadata"].get("labels", {})
            if not any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in labels):
                continue
            for _, resource, verb, _ in flatten_rules(role):
                if resource.startswith(POLICIES):
                    assert verb in {"get", "list", "watch"}, (role["metadata"]["name"], resource, verb)
        view = one(objs, "ClusterRole", f"{RELEASE}-view")
        assert {(GROUP, POLICIES, v, None) for v in ("get", "list", "watch")} <= flatten_rules(view)


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
    assert not find(objs, "ClusterRoleBinding", RELEASE)
    # The only cluster-wide grants left: get on the watched Namespace (adoption opt-in),
    # reading AccountMappings and Namespaces' labels, and the check's reads of the controller's
    # CRDs (cluster-scoped all).
    assert {r["metadata"]["name"] for r in find(objs, "ClusterRole")} == {
        NAMESPACES_ROLE,
        ACCOUNTS_ROLE,
        CHECK_ROLE,
        f"{RELEASE}-view",
        f"{RELEASE}-edit",
    }
    assert sorted(b["metadata"]["name"] for b in find(objs, "ClusterRoleBinding")) == [ACCOUNTS_ROLE, CHECK_ROLE, NAMESPACES_ROLE]
    role = one(objs, "Role", RELEASE)
    assert role["metadata"]["namespace"] == "team-a"
    assert flatten_rules(role) == CONTROLLER_RULES | ACCEPTANCE_RULES
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
    assert sorted(r["metadata"]["name"] for r in find(objs, "ClusterRole")) == [RELEASE, ACCOUNTS_ROLE, CHECK_ROLE, NAMESPACES_ROLE]
    objs = render(
        {
            "rbac": {"aggregateToDefaultRoles": False},
            "adoption": {"mode": "disabled"},
            "accountMappings": {"enabled": False},
            "helmTest": {"enabled": False},
        }
    )
    assert [r["metadata"]["name"] for r in find(objs, "ClusterRole")] == [RELEASE]


# --- account mappings RBAC --------------------------------------------------------------------


@pytest.mark.parametrize("watch_namespace", ["", "team-a"])
def test_account_mappings_read_mappings_and_namespaces_and_write_nothing(render, watch_namespace):
    objs = render({"watchNamespace": watch_namespace})
    role = one(objs, "ClusterRole", ACCOUNTS_ROLE)
    assert flatten_rules(role) == {
        (GROUP, "accountmappings", verb, None) for verb in ("list", "watch")
    } | {(GROUP, "accountmappings/status", "patch", None)} | {
        ("", "namespaces", verb, None) for verb in ("list", "watch")
    }
    binding = one(objs, "ClusterRoleBinding", ACCOUNTS_ROLE)
    assert binding["roleRef"]["name"] == ACCOUNTS_ROLE
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
    assert "--account-mappings=true" in args_of(objs)


def test_account_mappings_off_grant_nothing_and_say_so(render):
    objs = render({"accountMappings": {"enabled": False}})
    assert not find(objs, "ClusterRole", ACCOUNTS_ROLE)
    assert not find(objs, "ClusterRoleBinding", ACCOUNTS_ROLE)
    assert "--account-mappings=false" in args_of(objs)


def test_no_tenant_role_reaches_account_mappings(default_objs):
    """AccountMappings pick the AWS account a namespace acts in: only the cluster admin writes
    them, and the aggregated user roles do not even read them."""
    for role in find(default_objs, "ClusterRole"):
        if any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in role["metadata"]["labels"]):
            assert not [g for g in flatten_rules(role) if g[1].startswith("accountmappings")], role["metadata"]["name"]


# --- adoption RBAC ----------------------------------------------------------------------------


def test_namespace_opt_in_can_get_namespaces(default_objs):
    role = one(default_objs, "ClusterRole", NAMESPACES_ROLE)
    assert flatten_rules(role) == namespace_rules()
    binding = one(default_objs, "ClusterRoleBinding", NAMESPACES_ROLE)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAMESPACES_ROLE}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
    assert "--adoption=namespace-opt-in" in args_of(default_objs)


def test_namespace_opt_in_with_watch_namespace_gets_that_namespace_only(render):
    objs = render({"watchNamespace": "team-a", "adoption": {"mode": "namespace-opt-in"}})
    role = one(objs, "ClusterRole", NAMESPACES_ROLE)
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["namespaces"], "resourceNames": ["team-a"], "verbs": ["get"]}
    ]
    assert flatten_rules(role) == namespace_rules("team-a")
    assert one(objs, "ClusterRoleBinding", NAMESPACES_ROLE)["subjects"][0]["name"] == RELEASE


@pytest.mark.parametrize("mode", ["everywhere", "disabled"])
@pytest.mark.parametrize("watch_namespace", ["", "team-a"])
def test_no_namespace_access_without_namespace_opt_in(render, mode, watch_namespace):
    objs = render({"adoption": {"mode": mode}, "watchNamespace": watch_namespace, "accountMappings": {"enabled": False}})
    assert not find(objs, "ClusterRole", NAMESPACES_ROLE)
    assert not find(objs, "ClusterRoleBinding", NAMESPACES_ROLE)
    for kind in ("ClusterRole", "Role"):
        for role in find(objs, kind):
            assert not [g for g in flatten_rules(role) if g[1] == "namespaces"], role["metadata"]["name"]
    assert f"--adoption={mode}" in args_of(objs)


def test_namespace_role_uses_an_existing_service_account(render):
    objs = render({"serviceAccount": {"create": False, "name": "platform-eac"}})
    assert one(objs, "ClusterRoleBinding", NAMESPACES_ROLE)["subjects"] == [
        {"kind": "ServiceAccount", "name": "platform-eac", "namespace": NAMESPACE}
    ]
    assert not find(render({"rbac": {"create": False}}), "ClusterRole", NAMESPACES_ROLE)


def test_leader_election_role_has_no_patch(render, default_objs):
    for objs in (default_objs, render({"leaderElection": {"namespace": "eac-leases", "leaseName": "shard-a"}})):
        role = one(objs, "Role", f"{RELEASE}-leader-election")
        verbs = {verb for (_, _, verb, _) in flatten_rules(role)}
        assert verbs == {"create", "get", "update"}


def test_aggregated_user_roles_cannot_write_status_or_namespaces(render, default_objs):
    """Tenants with the built-in edit/admin roles write specs, never the status the controller
    reports, and gain nothing on Namespaces (the adoption opt-in label is the cluster admin's)."""
    write = {"create", "update", "patch", "delete", "deletecollection"}
    for objs in (default_objs, render({"watchNamespace": "team-a"})):
        aggregated = [
            r
            for r in find(objs, "ClusterRole")
            if any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in r["metadata"]["labels"])
        ]
        assert {r["metadata"]["name"] for r in aggregated} == {f"{RELEASE}-view", f"{RELEASE}-edit"}
        for role in aggregated:
            granted = flatten_rules(role)
            assert {g[0] for g in granted} == {GROUP}, role["metadata"]["name"]
            status_writes = {g for g in granted if g[1] == f"{PLURAL}/status" and g[2] in write}
            assert status_writes == set(), role["metadata"]["name"]
        edit = one(objs, "ClusterRole", f"{RELEASE}-edit")
        assert {g[1] for g in flatten_rules(edit)} == {PLURAL}


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
    for binding in find(objs, "ClusterRoleBinding") + find(objs, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "platform-eac", "namespace": NAMESPACE}]


def test_pdb_only_with_more_than_one_replica(render, default_objs):
    pdb = one(default_objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    # Both replicas are unready while the API server does not answer them: a drain may still
    # evict them.
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    unset = one(render({"podDisruptionBudget": {"unhealthyPodEvictionPolicy": ""}}), "PodDisruptionBudget")
    assert "unhealthyPodEvictionPolicy" not in unset["spec"]
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
        {"awsRateLimit": 10001},
        {"awsBurst": 10001},
        {"concurrency": 1025},
        # New flags: durations, adoption mode, regions, STS endpoint.
        {"leaderElection": {"leaseDuration": "15"}},
        {"leaderElection": {"leaseDuration": "0s"}},
        {"leaderElection": {"renewDeadline": "ten seconds"}},
        {"leaderElection": {"renewDeadline": "1.5s"}},
        {"watchFailureTimeout": "2 m"},
        {"watchFailureTimeout": "0m"},
        {"awsListLag": "-1s"},
        {"awsListLag": "30"},
        {"awsListLag": "1d"},
        {"adoption": {"mode": "namespace"}},
        {"adoption": {"mode": "Everywhere"}},
        {"adoption": {"mode": ""}},
        {"adoption": {"enabled": True}},
        {"adoption": "everywhere"},
        {"allowedRegions": "eu-west-1"},
        {"allowedRegions": "eu-west-1,eu-central-1"},
        {"allowedRegions": ["Europe"]},
        {"allowedRegions": ["eu-west-1", "EU-WEST-2"]},
        {"allowedRegions": ["eu-west"]},
        {"allowedRegions": ["eu-west-10"]},
        {"allowedRegions": ["eu-west-1,eu-central-1"]},
        {"allowedRegions": ["eu-west-1", "eu-west-1"]},
        {"allowedRegions": [""]},
        {"stsEndpoint": "sts.amazonaws.com"},
        {"stsEndpoint": "embedded"},
        {"stsEndpoint": "https://sts.test/?x=1"},
        {"awsPollShare": 0},
        {"awsPollShare": 0.04},
        {"awsPollShare": 1.5},
        {"awsPollShare": "0.5"},
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
    chart.validate_schema({"resyncPeriod": "1500ms", "pendingPoll": "1s", "protonEndpoint": "embedded"})
    chart.validate_schema(
        {
            "awsListLag": "0s",
            "allowedRegions": ["eu-west-1", "us-gov-west-1", "ap-southeast-2"],
            "stsEndpoint": "http://127.0.0.1:4566/",
            "watchFailureTimeout": "1h",
            "adoption": {"mode": "disabled"},
            "leaderElection": {"leaseDuration": "5m", "renewDeadline": "4500ms"},
        }
    )
    chart.validate_schema({"podDisruptionBudget": {"minAvailable": "50%", "unhealthyPodEvictionPolicy": "AlwaysAllow"}})
    chart.validate_schema({"region": "eu-west-1", "replicaCount": 0})


def with_value(path: str, value) -> dict:
    """{"a": {"b": value}} for "a.b"."""
    keys = path.split(".")
    values: dict = {keys[-1]: value}
    for key in reversed(keys[:-1]):
        values = {key: values}
    return values


# Each new value: what its schema accepts, and what it refuses (so a refusal is the value's own
# check, not merely an unknown key).
NEW_VALUE_SCHEMAS = {
    "leaderElection.leaseDuration": (["2s", "15s", "5m", "30000ms"], ["15", "15 s", "0s", "1.5s", "-5s", "15d", 15, ""]),
    "leaderElection.renewDeadline": (["1s", "10s", "4500ms"], ["10", "ten seconds", "0s", "1.5s", 10, ""]),
    "watchFailureTimeout": (["5s", "2m", "1h"], ["2", "2 m", "0m", "1d", 120, ""]),
    "awsListLag": (["0s", "0ms", "30s", "10m"], ["30", "-1s", "1d", "30 s", 30, ""]),
    "awsPollShare": ([0.05, 0.1, 0.5, 1], [0, 0.049, -0.5, 1.01, 2, "0.5", "", True]),
    "adoption.mode": (
        ["namespace-opt-in", "everywhere", "disabled"],
        ["namespace", "Everywhere", "NamespaceOptIn", "enabled", "", True],
    ),
    "allowedRegions": (
        [[], ["eu-west-1"], ["eu-west-1", "eu-central-1", "us-gov-west-1", "ap-southeast-2"]],
        [
            "eu-west-1",
            "eu-west-1,eu-central-1",
            ["eu-west-1,eu-central-1"],
            ["Europe"],
            ["EU-WEST-1"],
            ["eu-west"],
            ["eu-west-10"],
            ["euwest1"],
            ["eu--1"],
            [""],
            ["eu-west-1", "eu-west-1"],
            [1],
        ],
    ),
    "stsEndpoint": (
        ["", "https://sts.eu-west-1.amazonaws.com", "http://127.0.0.1:4566/", "http://proton-emulator.eac-demo.svc:4566"],
        ["sts.amazonaws.com", "embedded", "ftp://sts.test", "https://sts.test/?x=1", "https://", 42],
    ),
}


@pytest.mark.parametrize("path", sorted(NEW_VALUE_SCHEMAS))
def test_schema_checks_each_new_value(chart, helm, path):
    good, bad = NEW_VALUE_SCHEMAS[path]
    for value in good:
        chart.validate_schema(with_value(path, value))
    for value in bad:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(with_value(path, value))
            pytest.fail(f"{path}={value!r} was accepted")


def test_schema_rejects_unknown_keys_under_adoption(chart, helm):
    chart.validate_schema({"adoption": {"mode": "disabled"}})
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"adoption": {"mode": "disabled", "enabled": False}})


# Bounds and relations JSON schema cannot express are checked by the templates (the same ones
# `eac-controller run` checks at start-up), so a bad value fails the install, not the pod.
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"leaderElection": {"leaseDuration": "15s", "renewDeadline": "15s"}}, "renewDeadline=15s must be shorter than leaderElection.leaseDuration=15s"),
        ({"leaderElection": {"leaseDuration": "8s"}}, "renewDeadline=10s must be shorter"),
        ({"leaderElection": {"leaseDuration": "1m", "renewDeadline": "90000ms"}}, "must be shorter"),
        ({"leaderElection": {"leaseDuration": "1s", "renewDeadline": "500ms"}}, "leaseDuration=1s: must be between 2s and 5m"),
        ({"leaderElection": {"leaseDuration": "6m"}}, "leaseDuration=6m: must be between 2s and 5m"),
        ({"leaderElection": {"renewDeadline": "900ms"}}, "renewDeadline=900ms: must be between 1s and 5m"),
        ({"watchFailureTimeout": "4s"}, "watchFailureTimeout=4s: must be between 5s and 1h"),
        ({"watchFailureTimeout": "61m"}, "watchFailureTimeout=61m: must be between 5s and 1h"),
        ({"awsListLag": "11m"}, "awsListLag=11m: must be between 0s and 10m"),
        ({"resyncPeriod": "500ms"}, "resyncPeriod=500ms: must be between 1s and 24h"),
        ({"resyncPeriod": "25h"}, "resyncPeriod=25h: must be between 1s and 24h"),
        ({"resyncPeriod": "99999999999999h"}, "resyncPeriod=99999999999999h: must be between"),
        ({"pendingPoll": "2h", "resyncPeriod": "3h"}, "pendingPoll=2h: must be between 1s and 1h"),
        ({"pendingPoll": "2m", "resyncPeriod": "1m"}, "pendingPoll=2m must not be longer than resyncPeriod=1m"),
        ({"awsTimeout": "6m"}, "awsTimeout=6m: must be between 1s and 5m"),
    ],
    ids=lambda v: v if isinstance(v, str) else json.dumps(v, separators=(",", ":")),
)
def test_templates_refuse_values_the_binary_would_refuse(render, helm, values, message):
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(values)


def test_templates_accept_the_bounds(render):
    args = args_of(
        render(
            {
                "resyncPeriod": "24h",
                "pendingPoll": "1h",
                "awsTimeout": "5m",
                "awsListLag": "10m",
                "watchFailureTimeout": "5s",
                "leaderElection": {"leaseDuration": "2s", "renewDeadline": "1s"},
            }
        )
    )
    assert {"--resync-period=24h", "--pending-poll=1h", "--lease-duration=2s", "--lease-renew-deadline=1s"} <= set(args)


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
    # Helm installs them from the chart's crds/ directory.
    assert sorted(c["filename"].split("/", 1)[-1] for c in chart.crds) == [
        "crds/accountmappings.yaml",
        "crds/connectionacceptancepolicies.yaml",
        "crds/environmentaccountconnections.yaml",
    ]
    mapping = ROOT / "crds" / "accountmappings.yaml"
    assert (CHART_CRD_FILE.parent / "accountmappings.yaml").read_bytes() == mapping.read_bytes()


def test_chart_has_the_generated_policy_crd():
    generated = ROOT / "crds" / "connectionacceptancepolicies.yaml"
    in_chart = CHART_DIR / "crds" / "connectionacceptancepolicies.yaml"
    assert in_chart.read_bytes() == generated.read_bytes(), "chart CRD differs from crds/: regenerate"
    crd = yaml.safe_load(generated.read_text())
    assert crd["metadata"]["name"] == f"{POLICIES}.{GROUP}"
    assert crd["spec"]["scope"] == "Namespaced"


def test_argocd_snippet_is_exactly_health_lua():
    lua = (CHART_DIR / "argocd" / "health.lua").read_text()
    cm = yaml.safe_load((CHART_DIR / "argocd" / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    for kind in ["EnvironmentAccountConnection", "ConnectionAcceptancePolicy", "AccountMapping"]:
        assert cm["data"][f"resource.customizations.health.proton.eac.dev_{kind}"] == lua


def test_unmapped_namespaces_can_be_refused(render):
    objs = render({"accountMappings": {"enabled": True, "unmappedNamespaces": "refuse"}})
    assert "--unmapped-namespaces=refuse" in args_of(objs)
    objs = render({"accountMappings": {"enabled": False, "unmappedNamespaces": "refuse"}})
    assert not [a for a in args_of(objs) if a.startswith("--unmapped-namespaces")]


def test_helm_test_runs_check_with_the_controllers_identity_flags_and_environment(render):
    objs = render({"leaderElection": {"enabled": True}, "extraArgs": ["--aws-timeout=20s"], "extraEnv": [{"name": "AWS_REGION", "value": "eu-west-1"}]})
    pod = one(objs, "Pod", "eac-controller-check")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    deployment = one(objs, "Deployment")
    template = deployment["spec"]["template"]["spec"]
    assert pod["spec"]["serviceAccountName"] == template["serviceAccountName"]
    controller = controller_container(objs)
    check = pod["spec"]["containers"][0]
    assert controller["args"][0] == "run"
    assert check["args"] == ["check"] + controller["args"][1:], "the same flags as run"
    assert check["image"] == controller["image"]
    assert check["env"] == controller["env"], "the same environment (POD_NAMESPACE, extraEnv)"
    assert check["securityContext"] == controller["securityContext"]


def test_helm_test_can_be_turned_off(render):
    objs = render({"helmTest": {"enabled": False}})
    assert find(objs, "Pod") == []
    assert not find(objs, "ClusterRole", CHECK_ROLE), "nor its CRD reads"


@pytest.mark.parametrize("watch_namespace", ["", "team-a"])
def test_helm_test_may_read_the_controllers_crds_and_nothing_else(render, watch_namespace):
    """`check` reads each of the controller's CRDs (to tell one left from an older release: Helm
    never upgrades CRDs). A real API server answers 403 without this rule, and the check fails."""
    objs = render({"watchNamespace": watch_namespace})
    role = one(objs, "ClusterRole", CHECK_ROLE)
    crds = sorted(yaml.safe_load(p.read_text())["metadata"]["name"] for p in (ROOT / "crds").glob("*.yaml"))
    assert flatten_rules(role) == {
        ("apiextensions.k8s.io", "customresourcedefinitions", "get", name) for name in crds
    }
    binding = one(objs, "ClusterRoleBinding", CHECK_ROLE)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CHECK_ROLE}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]


def test_the_helm_test_pod_is_selected_by_none_of_the_controllers_selectors(render):
    """The `helm test` Pod is no endpoint of the metrics Service and no pod the PDB counts (it
    would be, with the controller's name and instance labels), and its labels are its own."""
    objs = render({"replicaCount": 2})
    labels = one(objs, "Pod", "eac-controller-check")["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "check"
    selectors = [
        one(objs, "Service")["spec"]["selector"],
        one(objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        one(objs, "Deployment")["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert not all(labels.get(k) == v for k, v in selector.items()), selector


@pytest.mark.parametrize(
    "name,values",
    [
        ("r", {"fullnameOverride": "x" * 63}),
        ("a-release-name-of-forty-one-characters-xx", {}),
    ],
)
def test_names_stay_within_what_the_api_server_takes(render, name, values):
    """A Service's name is a DNS-1035 label (63 characters at most): with a long release name
    (Argo CD's Application name) or fullnameOverride it is cut, the `-metrics` suffix kept. Other
    names are DNS subdomains (253)."""
    objs = render(values, name=name)
    for obj in objs:
        assert len(obj["metadata"]["name"]) <= 253, (obj["kind"], obj["metadata"]["name"])
    service = one(objs, "Service")["metadata"]["name"]
    assert len(service) <= 63, service
    assert service.endswith("-metrics") and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", service)


def test_chart_yaml_names_every_crd_and_the_kubernetes_versions_the_controller_supports():
    """Artifact Hub lists the CRDs from Chart.yaml; `helm install` refuses a cluster older than
    kubeVersion, which is the oldest minor `eac-controller check` supports."""
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    listed = {c["name"]: c["kind"] for c in yaml.safe_load(chart["annotations"]["artifacthub.io/crds"])}
    shipped = {}
    for path in sorted((CHART_DIR / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        shipped[crd["metadata"]["name"]] = crd["spec"]["names"]["kind"]
    assert listed == shipped
    source = (ROOT / "src" / "check" / "cluster.rs").read_text()
    oldest = re.search(r"SUPPORTED_MINORS: [^=]+= (\d+)\.\.=", source).group(1)
    assert chart["kubeVersion"] == f">=1.{oldest}.0-0"


def test_probes_set_to_null_keep_their_paths(render):
    """`--set livenessProbe=null` (Helm drops the default's key) renders the probe with its path
    and the API server's defaults, not a bare `null` inside it."""
    container = controller_container(render({"livenessProbe": None, "readinessProbe": None}))
    assert container["livenessProbe"] == {"httpGet": {"path": "/healthz", "port": "http-metrics"}}
    assert container["readinessProbe"] == {"httpGet": {"path": "/readyz", "port": "http-metrics"}}
