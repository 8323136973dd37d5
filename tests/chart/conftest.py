"""Shared fixtures for the packaging tests: the Helm chart rendered offline with Helm's own
Go SDK (PyPI's helm-python-sdk), and helpers to pick objects out of rendered manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "eac-controller"
CRD_FILE = ROOT / "crds" / "environmentaccountconnections.yaml"
CHART_CRD_FILE = CHART_DIR / "crds" / "environmentaccountconnections.yaml"

RELEASE = "eac-controller"
NAMESPACE = "eac-system"

Obj = dict[str, Any]


class _StrictLoader(yaml.SafeLoader):
    """Refuses a mapping that repeats a key, as kustomize (`helmCharts`), Flux's post-renderer
    and kubectl's strict decoding do; PyYAML and Helm keep the last value silently."""


def _no_repeated_keys(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"repeated key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_repeated_keys)


def parse_manifests(text: str) -> list[Obj]:
    return [doc for doc in yaml.load_all(text, Loader=_StrictLoader) if doc]


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o
        for o in objs
        if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)
    ]


# The chart's alerts, in the order the PrometheusRule renders them.
ALERTS = [
    "EacStalledResources",
    "EacAwsThrottling",
    "EacAwsUnreachable",
    "EacAwsBudgetSaturated",
    "EacReconcileErrors",
    "EacNoLeader",
]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def controller_container(objs: list[Obj]) -> Obj:
    deployment = one(objs, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["controller"]
    return containers[0]


@pytest.fixture(scope="session")
def helm():
    return pytest.importorskip("helm_python", reason="pip install -r tests/chart/requirements.txt")


@pytest.fixture(scope="session")
def chart(helm):
    loaded = helm.Chart.load(CHART_DIR)
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def render(chart) -> Callable[..., list[Obj]]:
    """Render the chart offline (like `helm template`) and parse every manifest."""

    def _render(
        values: dict[str, Any] | None = None,
        *,
        name: str = RELEASE,
        namespace: str = NAMESPACE,
    ) -> list[Obj]:
        rendered = chart.render(values, name=name, namespace=namespace, is_install=True)
        objs: list[Obj] = []
        for path, text in sorted(rendered.items()):
            if path.endswith(".yaml"):
                objs.extend(parse_manifests(text))
        return objs

    return _render


@pytest.fixture(scope="session")
def default_objs(render) -> list[Obj]:
    return render()
