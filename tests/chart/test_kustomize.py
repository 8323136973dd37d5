"""The plain manifests in deploy/: they build with kustomize (`kubectl kustomize`, offline) and
are the chart's defaults; the example resources in deploy/examples are valid."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import CRD_FILE, NAMESPACE, ROOT, find, one, parse_manifests

DEPLOY = ROOT / "deploy"
EXAMPLES = DEPLOY / "examples"

# Labels only Helm adds; everything else must be the same in the chart and in deploy/base.
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/version")

STUB_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: environmentaccountconnections.proton.eac.dev
spec:
  group: proton.eac.dev
  names:
    kind: EnvironmentAccountConnection
    plural: environmentaccountconnections
  scope: Namespaced
  versions: []
"""


@pytest.fixture(scope="module")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` builds deploy/ offline")
    return path


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """The repository's deploy/; with a stub CRD while deploy/crd has none generated yet."""
    if (DEPLOY / "crd" / CRD_FILE.name).exists():
        return ROOT
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(DEPLOY, root / "deploy")
    (root / "deploy" / "crd" / CRD_FILE.name).write_text(STUB_CRD)
    return root


def kustomize(kubectl: str, directory: Path) -> list[dict]:
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return parse_manifests(result.stdout)


@pytest.fixture(scope="module")
def base(kubectl, tree) -> list[dict]:
    return kustomize(kubectl, tree / "deploy" / "base")


@pytest.fixture(scope="module")
def overlay(kubectl, tree) -> list[dict]:
    return kustomize(kubectl, tree / "deploy" / "overlays" / "example")


def without_helm_labels(obj: dict) -> dict:
    obj = copy.deepcopy(obj)
    for meta in (obj["metadata"], obj.get("spec", {}).get("template", {}).get("metadata", {})):
        for label in HELM_ONLY_LABELS:
            meta.get("labels", {}).pop(label, None)
    return obj


def test_base_builds_with_the_crd(base):
    crd = one(base, "CustomResourceDefinition", "environmentaccountconnections.proton.eac.dev")
    assert one(base, "Namespace")["metadata"]["name"] == NAMESPACE
    if CRD_FILE.exists():
        assert crd == yaml.safe_load(CRD_FILE.read_text())


def test_base_is_the_chart_default(base, default_objs):
    """Every object the chart renders by default is in deploy/base, field for field."""
    base_by_key = {(o["kind"], o["metadata"]["name"]): o for o in base}
    # `helm test`'s Pod is Helm's alone: kustomize has no test hook (run `eac-controller check`).
    default_objs = [
        o for o in default_objs if o.get("metadata", {}).get("annotations", {}).get("helm.sh/hook") != "test"
    ]
    for rendered in default_objs:
        key = (rendered["kind"], rendered["metadata"]["name"])
        assert key in base_by_key, f"deploy/base lacks {key}"
        assert base_by_key[key] == without_helm_labels(rendered), f"deploy/base differs from the chart in {key}"
    extra = set(base_by_key) - {(o["kind"], o["metadata"]["name"]) for o in default_objs}
    assert extra == {
        ("Namespace", NAMESPACE),
        ("CustomResourceDefinition", "environmentaccountconnections.proton.eac.dev"),
        ("CustomResourceDefinition", "accountmappings.proton.eac.dev"),
        ("CustomResourceDefinition", "connectionacceptancepolicies.proton.eac.dev"),
    }


def test_base_installs_the_policy_crd_and_runs_the_management_side(base):
    crd = one(base, "CustomResourceDefinition", "connectionacceptancepolicies.proton.eac.dev")
    assert crd == yaml.safe_load((ROOT / "crds" / "connectionacceptancepolicies.yaml").read_text())
    assert "--acceptance-policies=true" in base_args(base)
    role = one(base, "ClusterRole", "eac-controller")
    assert {"apiGroups": ["proton.eac.dev"], "resources": ["connectionacceptancepolicies"], "verbs": ["get", "list", "watch"]} in role["rules"]
    assert {"apiGroups": ["proton.eac.dev"], "resources": ["connectionacceptancepolicies/status"], "verbs": ["patch"]} in role["rules"]


def test_base_user_roles_can_only_read_acceptance_policies(base):
    for role in find(base, "ClusterRole"):
        labels = role["metadata"].get("labels", {})
        if not any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in labels):
            continue
        for rule in role["rules"]:
            if any(r.startswith("connectionacceptancepolicies") for r in rule["resources"]):
                assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule


def base_args(objs: list[dict]) -> list[str]:
    return one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]


def test_base_sets_the_new_flags_like_the_chart(base):
    """The flags added with the Lease, adoption, readiness and call budget work, at the chart's defaults;
    the optional ones (no default) are left out."""
    args = base_args(base)
    for flag in (
        "--aws-list-lag=30s",
        "--aws-poll-share=0.5",
        "--watch-failure-timeout=2m",
        "--adoption=namespace-opt-in",
        "--lease-duration=15s",
        "--lease-renew-deadline=10s",
    ):
        assert args.count(flag) == 1, flag
    assert not [a for a in args if a.startswith("--allowed-regions") or a.startswith("--sts-endpoint")]


def test_base_can_get_namespaces_for_the_adoption_opt_in(base):
    role = one(base, "ClusterRole", "eac-controller-namespaces")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}]
    binding = one(base, "ClusterRoleBinding", "eac-controller-namespaces")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "eac-controller-namespaces"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "eac-controller", "namespace": NAMESPACE}]
    assert "--adoption=namespace-opt-in" in base_args(base)


def test_base_reads_account_mappings_and_namespaces(base):
    role = one(base, "ClusterRole", "eac-controller-accounts")
    assert role["rules"] == [
        {"apiGroups": ["proton.eac.dev"], "resources": ["accountmappings"], "verbs": ["list", "watch"]},
        {"apiGroups": ["proton.eac.dev"], "resources": ["accountmappings/status"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    ]
    binding = one(base, "ClusterRoleBinding", "eac-controller-accounts")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "eac-controller", "namespace": NAMESPACE}]
    assert "--account-mappings=true" in base_args(base)
    crds = {o["metadata"]["name"] for o in find(base, "CustomResourceDefinition")}
    assert "accountmappings.proton.eac.dev" in crds


def test_base_leader_election_role_has_no_patch(base):
    role = one(base, "Role", "eac-controller-leader-election")
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["eac-controller"], "verbs": ["get", "update"]},
    ]


def test_base_user_roles_cannot_write_status(base):
    """Tenants with the aggregated edit/admin roles must not write the status the controller reports."""
    for role in find(base, "ClusterRole"):
        labels = role["metadata"].get("labels", {})
        if not any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in labels):
            continue
        for rule in role["rules"]:
            assert rule["apiGroups"] == ["proton.eac.dev"], rule
            if "environmentaccountconnections/status" in rule["resources"]:
                assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule


def test_overlay_example(overlay):
    namespace = "platform-eac"
    assert one(overlay, "Namespace")["metadata"]["name"] == namespace
    for obj in overlay:
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace"):
            assert "namespace" not in obj["metadata"], obj["metadata"]
        else:
            assert obj["metadata"]["namespace"] == namespace, (obj["kind"], obj["metadata"])
    for binding in find(overlay, "ClusterRoleBinding") + find(overlay, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "eac-controller", "namespace": namespace}]
    account = one(overlay, "ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    container = one(overlay, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["EAC_REGION"]["value"] == "eu-west-1"
    assert {"POD_NAME", "POD_NAMESPACE"} <= env.keys(), "the patch must merge into env, not replace it"
    assert container["image"].startswith("ghcr.io/eac-dev/eac-controller:")
    assert container["args"][0] == "run"


# --- deploy/examples --------------------------------------------------------------------------


def example(name: str) -> dict:
    docs = parse_manifests((EXAMPLES / name).read_text())
    assert len(docs) == 1
    return docs[0]


@pytest.mark.parametrize("name", ["basic.yaml", "full.yaml", "retain.yaml", "adopt.yaml", "observe.yaml"])
def test_example_is_a_connection(name):
    obj = example(name)
    assert obj["apiVersion"] == "proton.eac.dev/v1alpha1"
    assert obj["kind"] == "EnvironmentAccountConnection"
    spec = obj["spec"]
    assert isinstance(spec["managementAccountId"], str) and len(spec["managementAccountId"]) == 12
    assert spec["environmentName"]


def test_examples_say_what_they_show():
    assert example("retain.yaml")["spec"]["deletionPolicy"] == "Retain"
    assert example("adopt.yaml")["metadata"]["annotations"]["proton.eac.dev/adopt-id"]
    assert example("observe.yaml")["spec"]["managementPolicy"] == "Observe"
    full = example("full.yaml")["spec"]
    assert set(full) == {
        "environmentName",
        "managementAccountId",
        "roleArn",
        "codebuildRoleArn",
        "componentRoleArn",
        "tags",
        "region",
        "deletionPolicy",
        "managementPolicy",
    }


@pytest.mark.parametrize("name", ["basic.yaml", "full.yaml", "retain.yaml", "adopt.yaml", "observe.yaml"])
def test_example_matches_the_crd_schema(name):
    if not CRD_FILE.exists():
        pytest.skip(f"{CRD_FILE} is not generated yet")
    jsonschema = pytest.importorskip("jsonschema")
    crd = yaml.safe_load(CRD_FILE.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    jsonschema.validate(example(name)["spec"], schema)
    if name == "full.yaml":
        # Every field of the spec appears in full.yaml.
        assert set(example(name)["spec"]) == set(schema["properties"])


def test_account_mapping_example_matches_its_crd_schema():
    mapping_crd = ROOT / "crds" / "accountmappings.yaml"
    if not mapping_crd.exists():
        pytest.skip(f"{mapping_crd} is not generated yet")
    jsonschema = pytest.importorskip("jsonschema")
    crd = yaml.safe_load(mapping_crd.read_text())
    assert crd["spec"]["scope"] == "Cluster"
    (version,) = crd["spec"]["versions"]
    obj = example("account-mapping.yaml")
    assert obj["kind"] == "AccountMapping"
    assert "namespace" not in obj["metadata"]
    jsonschema.validate(obj["spec"], version["schema"]["openAPIV3Schema"]["properties"]["spec"])


def test_acceptance_policy_example_matches_its_crd_schema():
    jsonschema = pytest.importorskip("jsonschema")
    obj = example("acceptance-policy.yaml")
    assert obj["apiVersion"] == "proton.eac.dev/v1alpha1"
    assert obj["kind"] == "ConnectionAcceptancePolicy"
    crd = yaml.safe_load((ROOT / "crds" / "connectionacceptancepolicies.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    jsonschema.validate(obj["spec"], schema)
    # Every field of the spec is shown, with the option that needs explaining.
    assert set(obj["spec"]) == set(schema["properties"])
    assert obj["spec"]["unmatched"] == "Reject"
    assert all(isinstance(a, str) and len(a) == 12 for a in obj["spec"]["environmentAccountIds"])


def test_quickstart_demo_has_both_sides_and_matches_every_crd_schema():
    """deploy/examples/demo.yaml, the README's Quickstart: a mapping to a management-account role,
    a policy in the mapped namespace that accepts the environment account, and a connection."""
    jsonschema = pytest.importorskip("jsonschema")
    docs = parse_manifests((EXAMPLES / "demo.yaml").read_text())
    by_kind = {d["kind"]: d for d in docs}
    assert sorted(by_kind) == ["AccountMapping", "ConnectionAcceptancePolicy", "EnvironmentAccountConnection", "Namespace"]
    schemas = {}
    for plural, kind in [
        ("accountmappings", "AccountMapping"),
        ("connectionacceptancepolicies", "ConnectionAcceptancePolicy"),
        ("environmentaccountconnections", "EnvironmentAccountConnection"),
    ]:
        crd = yaml.safe_load((ROOT / "crds" / f"{plural}.yaml").read_text())
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
        schemas[kind] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        jsonschema.validate(by_kind[kind]["spec"], schemas[kind])
    mapping, policy, eac = by_kind["AccountMapping"], by_kind["ConnectionAcceptancePolicy"], by_kind["EnvironmentAccountConnection"]
    namespaces = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Namespace"}
    policy_ns = namespaces[policy["metadata"]["namespace"]]
    selector = mapping["spec"]["namespaceSelector"]["matchLabels"]
    assert selector.items() <= policy_ns["metadata"].get("labels", {}).items(), "the policy's namespace is mapped"
    eac_ns = namespaces[eac["metadata"]["namespace"]]
    assert not selector.items() <= eac_ns["metadata"].get("labels", {}).items(), "the connection's is not"
    management = mapping["spec"]["roleArn"].split(":")[4]
    assert policy["spec"]["managementAccountId"] == management == eac["spec"]["managementAccountId"]
