"""The GitHub Actions workflow .github/workflows/e2e.yml that runs the opt-in end-to-end tests on
kind. Nothing here runs it (it needs a network and Docker); these checks keep it from rotting
silently: the Kubernetes versions it covers, how it hands the cluster to the tests, the test
target it runs, and where it looks for the logs the harness keeps."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "e2e.yml"
E2E_SUPPORT = ROOT / "tests" / "e2e_support" / "mod.rs"
KIND_NODE = re.compile(r"^kindest/node:v1\.(\d+)\.(\d+)@sha256:[0-9a-f]{64}$")
# The minor the maintainers accept issues on, and the newest one k8s-openapi supports (v1_37).
MAINTAINERS_MINOR = 36
NEWEST_MINOR = 37


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


@pytest.fixture(scope="module")
def job(workflow) -> dict:
    assert list(workflow["jobs"]) == ["e2e"], list(workflow["jobs"])
    return workflow["jobs"]["e2e"]


def run_steps(job: dict) -> list[dict]:
    return [s for s in job["steps"] if "run" in s]


def step_using(job: dict, action: str) -> dict:
    found = [s for s in job["steps"] if s.get("uses", "").split("@")[0] == action]
    assert len(found) == 1, f"expected one step using {action}, found {len(found)}"
    return found[0]


def test_triggers(workflow):
    # PyYAML reads the bare key `on` as the boolean True.
    triggers = workflow.get("on", workflow.get(True))
    assert set(triggers) == {"pull_request", "workflow_dispatch"}


def oldest_supported_minor() -> int:
    """The k8s-openapi feature in Cargo.toml (v1_NN) is the oldest Kubernetes the binary supports."""
    cargo = (ROOT / "Cargo.toml").read_text()
    line = next(l for l in cargo.splitlines() if l.startswith("k8s-openapi"))
    (minor,) = re.findall(r'"v1_(\d+)"', line)
    return int(minor)


def test_matrix_covers_the_oldest_and_newest_supported_kubernetes(job):
    entries = job["strategy"]["matrix"]["include"]
    images = [e["node_image"] for e in entries]
    minors = []
    for entry in entries:
        match = KIND_NODE.match(entry["node_image"])
        assert match, f"not a kindest/node image pinned by digest: {entry['node_image']}"
        minors.append(int(match.group(1)))
        assert entry["kubernetes"] == f"1.{match.group(1)}", entry
        assert re.fullmatch(r"v0\.\d+\.\d+", entry["kind"]), f"kind release not pinned: {entry}"
    # Today kindest/node:v1.33.x, v1.36.x and v1.37.x.
    assert sorted(minors) == [oldest_supported_minor(), MAINTAINERS_MINOR, NEWEST_MINOR], images
    assert job["strategy"].get("fail-fast") is False, "one version's failure must not hide the other's"


def test_kind_cluster_uses_the_matrix_image_and_kind_release(job):
    kind = step_using(job, "helm/kind-action")
    assert re.fullmatch(r"helm/kind-action@v\d+\.\d+\.\d+", kind["uses"]), "pin kind-action to a release tag"
    assert kind["with"]["node_image"] == "${{ matrix.node_image }}"
    assert kind["with"]["version"] == "${{ matrix.kind }}"
    cluster = kind["with"]["cluster_name"]
    exports = [s["run"] for s in run_steps(job) if "EAC_E2E_KUBECONFIG" in s["run"]]
    assert exports, "no step sets EAC_E2E_KUBECONFIG"
    script = exports[0]
    assert f"kind get kubeconfig --name {cluster}" in script
    assert re.search(r'echo "EAC_E2E_KUBECONFIG=[^"]+" >> "\$GITHUB_ENV"', script), script


def test_the_e2e_target_runs_after_a_build_with_few_threads(job):
    steps = job["steps"]
    runs = [s.get("run", "") for s in steps]
    test_index = next(i for i, r in enumerate(runs) if re.search(r"cargo test\b.*--test e2e\b(?!.*--no-run)", r))
    build_index = next(
        i for i, r in enumerate(runs) if re.search(r"cargo test\b.*--test e2e\b.*--no-run|cargo build\b.*--bins", r)
    )
    assert build_index < test_index, "build before the tests, so their timeouts exclude compiling"
    kubeconfig_index = next(i for i, r in enumerate(runs) if "EAC_E2E_KUBECONFIG" in r)
    assert kubeconfig_index < test_index
    threads = re.search(r"--test-threads=(\d+)", runs[test_index])
    assert threads and 1 <= int(threads.group(1)) <= 4, runs[test_index]
    assert steps[test_index].get("shell") == "bash", "bash (with pipefail) so `| tee` keeps cargo's exit code"
    step_using(job, "dtolnay/rust-toolchain")
    step_using(job, "Swatinem/rust-cache")


def test_the_tests_that_need_the_cluster_to_themselves_run_alone_after_the_rest(job):
    """README's demo test starts README's controller, which watches every namespace and would act
    on the other tests' resources: the workflow skips it in the parallel run and runs it alone
    after."""
    source = (ROOT / "tests" / "e2e.rs").read_text()
    # Each test's body runs from its `fn` to the next one's attribute.
    bodies = re.split(r"\n#\[(?:tokio::)?test", source)
    alone = [
        re.search(r"fn (\w+)", body).group(1)
        for body in bodies[1:]
        if "Cluster::from_env()" in body and (".demo()" in body or "start_readme_controller" in body)
    ]
    assert alone, "no e2e test uses cluster.demo(): update this test"
    step = next(s for s in job["steps"] if re.search(r"cargo test\b.*--test e2e\b(?!.*--no-run)", s.get("run", "")))
    commands = [c for c in step["run"].replace("\\\n", " ").splitlines() if "cargo test" in c]
    assert len(commands) == 2, commands
    parallel, after = commands
    for name in alone:
        skips = re.findall(r"--skip (\S+)", parallel)
        assert any(name.startswith(s) for s in skips), f"{name} is not skipped in {parallel!r}"
        filters = after.split(" -- ", 1)[1].split()
        assert "--test-threads=1" in filters, after
        assert any(name.startswith(f) for f in filters if not f.startswith("-")), f"{name} is not run in {after!r}"
    assert "tee -a" in step["run"], "the second run appends to the log the first wrote"
    assert "|| status=$?" in parallel and "|| status=$?" in after and 'exit "$status"' in step["run"], (
        "the tests that run alone run even when one of the others failed, and the step fails if any did"
    )


def test_logs_are_uploaded_from_where_the_harness_keeps_them(job):
    """The harness keeps a failed test's logs in a tempfile directory (under TMPDIR); the workflow
    points TMPDIR at the directory it uploads on failure."""
    harness = E2E_SUPPORT.read_text()
    assert "tempfile::Builder::new()" in harness and ".tempdir()" in harness, (
        "the e2e harness no longer keeps its logs under TMPDIR: update the workflow's upload path"
    )
    test_step = next(s for s in job["steps"] if re.search(r"cargo test\b.*--test e2e\b(?!.*--no-run)", s.get("run", "")))
    log_root = test_step["env"]["E2E_LOG_ROOT"]
    assert 'TMPDIR="$E2E_LOG_ROOT"' in test_step["run"]
    upload = step_using(job, "actions/upload-artifact")
    assert upload["if"] == "failure()"
    assert upload["with"]["path"] == log_root


def test_ci_stays_offline_and_does_not_run_the_workflow():
    ci = (ROOT / ".ci" / "run").read_text()
    for word in ("e2e.yml", "kind ", "EAC_E2E_KUBECONFIG", ".github"):
        assert word not in ci, f".ci/run mentions {word!r}"
