"""The chart's Grafana dashboard (grafana.dashboard) and Prometheus alerts (prometheusRule).

Every PromQL expression may only name series the controller exports (src/metrics.rs): counters
with `_total`, histograms with `_bucket`/`_sum`/`_count`, gauges as they are. Expressions are
also parsed with a real PromQL parser (promql-parser) when it is installed.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

import pytest

from conftest import ALERTS, CHART_DIR, NAMESPACE, RELEASE, ROOT, find, one

DASHBOARD_FILE = CHART_DIR / "dashboards" / "eac-controller.json"
DASHBOARD_KEY = "eac-controller.json"
METRICS_SERVICE = f"{RELEASE}-metrics"

# What /metrics exports (src/metrics.rs), by Prometheus type.
METRICS = {
    "eac_reconcile": "counter",
    "eac_reconcile_duration_seconds": "histogram",
    "eac_aws_requests": "counter",
    "eac_aws_throttled": "counter",
    "eac_aws_calls_by_class": "counter",
    "eac_aws_deferred": "counter",
    "eac_aws_budget_wait_seconds": "histogram",
    "eac_effective_poll_interval_seconds": "gauge",
    "eac_time_to_connected_seconds": "histogram",
    "eac_connections": "gauge",
    "eac_leader": "gauge",
    "eac_aws_unreachable": "gauge",
    "eac_acceptance_decisions": "counter",
    "eac_acceptance_reconcile": "counter",
}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
SERIES = {name + suffix: name for name, kind in METRICS.items() for suffix in SUFFIXES[kind]}

WITHOUT_LEADER_ELECTION = {"replicaCount": 1, "leaderElection": {"enabled": False}}

# Results that are not a problem (EacStalledResources leaves them out, and kube_error too: it has
# an alert of its own).
ROUTINE_RESULTS = {"settled", "quiet", "deferred", "released", "ignored"}


# --- PromQL helpers ---------------------------------------------------------------------------

STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:$])eac_[a-z_]+")


def series_names(expr: str) -> set[str]:
    """The eac_* series an expression names (label values and other strings left out)."""
    return set(METRIC_NAME.findall(STRING.sub('""', expr)))


def unknown_series(expr: str) -> set[str]:
    return {name for name in series_names(expr) if name not in SERIES}


# Grafana's variables, replaced by what they stand for so a PromQL parser accepts the expression.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "6h",
    "$pending_poll_seconds": "30",
    "$resync_period_seconds": "600",
}


def without_grafana_variables(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert not re.search(r"\$(?!namespace\b|job\b)\w+", STRING.sub('""', expr)), f"unknown variable in {expr}"
    return expr


@pytest.fixture(scope="module")
def promql():
    return pytest.importorskip("promql_parser", reason="pip install -r tests/chart/requirements.txt")


def selectors(node) -> Iterator[Any]:
    """Every VectorSelector of a parsed expression."""
    if type(node).__name__ == "VectorSelector":
        yield node
        return
    for attr in ("lhs", "rhs", "expr", "param", "vector_selector"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, (str, int, float)):
            yield from selectors(child)
    for child in getattr(node, "args", None) or []:
        yield from selectors(child)


def matchers_of(selector) -> dict[str, tuple[str, str]]:
    return {m.name: (str(m.op).rsplit(".", 1)[-1], m.value) for m in selector.matchers.matchers}


def parsed_selectors(promql, expr: str) -> list[Any]:
    try:
        tree = promql.parse(expr)
    except Exception as e:  # the parser raises ValueError
        pytest.fail(f"not valid PromQL ({e}): {expr}")
    found = list(selectors(tree))
    # The parser and the name scan agree on what the expression reads.
    assert {s.name for s in found if s.name} == series_names(expr), expr
    return found


# --- the metric catalogue ---------------------------------------------------------------------


def metrics_in_source() -> dict[str, str]:
    """Name and type of every metric src/metrics.rs registers."""
    source = (ROOT / "src" / "metrics.rs").read_text()
    inner = re.search(r"struct Inner \{(.*?)\n\}", source, re.S)
    assert inner, "src/metrics.rs: struct Inner not found"
    field_types = dict(re.findall(r"^\s*(\w+): ([^\n]+),$", inner.group(1), re.M))
    found = {}
    for name, field in re.findall(
        r'registry\.register\(\s*"(eac_\w+)",\s*"(?:[^"\\]|\\.)*",\s*(\w+)\.clone\(\)', source, re.S
    ):
        kinds = [k for k in ("Counter", "Histogram", "Gauge") if k in field_types.get(field, "")]
        assert len(kinds) == 1, f"{name}: cannot tell the type of field {field}"
        found[name] = kinds[0].lower()
    for name, kind in re.findall(r'encode_descriptor\(\s*"(eac_\w+)",.*?MetricType::(\w+)', source, re.S):
        found[name] = kind.lower()
    return found


def test_metric_catalogue_is_what_the_controller_exports():
    """The list these tests check against is the one src/metrics.rs registers."""
    assert metrics_in_source() == METRICS


# --- the dashboard file, without Helm ---------------------------------------------------------


def no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    duplicates = {k for k in keys if keys.count(k) > 1}
    assert not duplicates, f"duplicate keys {duplicates}"
    return dict(pairs)


def load_dashboard(text: str) -> dict:
    return json.loads(text, object_pairs_hook=no_duplicate_keys)


@pytest.fixture(scope="module")
def dashboard_file() -> dict:
    return load_dashboard(DASHBOARD_FILE.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return panels


def graph_panels(dashboard: dict) -> list[dict]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def dashboard_exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in graph_panels(dashboard) for t in p["targets"]]


def variable(dashboard: dict, name: str) -> dict:
    found = [v for v in dashboard["templating"]["list"] if v["name"] == name]
    assert len(found) == 1, f"variable {name}"
    return found[0]


def variable_query(var: dict) -> str:
    query = var["query"]
    return query["query"] if isinstance(query, dict) else query


def test_dashboard_file_is_valid_grafana_json(dashboard_file):
    d = dashboard_file
    assert 36 <= d["schemaVersion"] <= 41
    assert d["uid"] == "eac-controller" and d["title"] == "eac-controller"
    assert d["id"] is None, "a provisioned dashboard must not carry a database id"
    assert "__inputs" not in d, "sidecar dashboards cannot use import inputs: use the datasource variable"
    ids = [p["id"] for p in all_panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in graph_panels(d):
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        assert panel.get("description"), f"{panel['title']}: say what the panel shows"


def test_dashboard_layout_fits_the_grid(dashboard_file):
    boxes = []
    for panel in dashboard_file["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, panel["title"]
        for other_title, o in boxes:
            overlap = g["x"] < o["x"] + o["w"] and o["x"] < g["x"] + g["w"] and g["y"] < o["y"] + o["h"] and o["y"] < g["y"] + g["h"]
            assert not overlap, f"{panel['title']} overlaps {other_title}"
        boxes.append((panel["title"], g))


def test_dashboard_uses_the_datasource_variable(dashboard_file):
    ds = variable(dashboard_file, "datasource")
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    chosen = {"type": "prometheus", "uid": "${datasource}"}
    for panel in graph_panels(dashboard_file):
        assert panel["datasource"] == chosen, panel["title"]
        for t in panel["targets"]:
            assert t.get("datasource", chosen) == chosen, panel["title"]
    for name in ("namespace", "job"):
        assert variable(dashboard_file, name)["datasource"] == chosen


def test_dashboard_namespace_and_job_variables(dashboard_file):
    namespace = variable(dashboard_file, "namespace")
    job = variable(dashboard_file, "job")
    assert namespace["type"] == job["type"] == "query"
    assert re.fullmatch(r"label_values\((eac_\w+), namespace\)", variable_query(namespace))
    assert re.fullmatch(r'label_values\((eac_\w+)\{namespace="\$namespace"\}, job\)', variable_query(job))
    for var in (namespace, job):
        assert not unknown_series(variable_query(var)), variable_query(var)
    for name in ("pending_poll_seconds", "resync_period_seconds"):
        constant = variable(dashboard_file, name)
        assert constant["type"] == "constant" and constant["hide"] == 2
        float(constant["query"])


# Panel title -> series it must read.
EXPECTED_PANELS = {
    "Connections by status": {"eac_connections"},
    "Leader per pod": {"eac_leader"},
    "Reconciles by result": {"eac_reconcile_total"},
    "Reconcile duration (p50, p99)": {"eac_reconcile_duration_seconds_bucket"},
    "AWS calls by operation and outcome": {"eac_aws_requests_total"},
    "Throttled calls": {"eac_aws_throttled_total"},
    "AWS endpoints not answering": {"eac_aws_unreachable", "eac_leader"},
    "AWS calls sent and deferred by class": {"eac_aws_calls_by_class_total", "eac_aws_deferred_total"},
    "Budget wait by class (p50, p99)": {"eac_aws_budget_wait_seconds_bucket"},
    "Effective read interval vs configured": {"eac_effective_poll_interval_seconds"},
    "Time to CONNECTED (p50, p99, 1h window)": {"eac_time_to_connected_seconds_bucket"},
    "Acceptance decisions": {"eac_acceptance_decisions_total"},
    "Policy reconciles by result": {"eac_acceptance_reconcile_total"},
}


def test_dashboard_has_the_expected_panels(dashboard_file):
    panels = {p["title"]: p for p in graph_panels(dashboard_file)}
    assert set(EXPECTED_PANELS) <= set(panels), set(EXPECTED_PANELS) - set(panels)
    for title, wanted in EXPECTED_PANELS.items():
        exprs = [t["expr"] for t in panels[title]["targets"]]
        read = set().union(*(series_names(e) for e in exprs))
        assert wanted <= read, f"{title} reads {read}"
        if "p50, p99" in title:
            assert any(e.startswith("histogram_quantile(0.5,") for e in exprs), title
            assert any(e.startswith("histogram_quantile(0.99,") for e in exprs), title
    for title in ("AWS calls sent and deferred by class", "Budget wait by class (p50, p99)", "Effective read interval vs configured"):
        assert all("class" in t["expr"] for t in panels[title]["targets"] if series_names(t["expr"])), title
    configured = " ".join(t["expr"] for t in panels["Effective read interval vs configured"]["targets"])
    assert "$pending_poll_seconds" in configured and "$resync_period_seconds" in configured
    leader = panels["Leader per pod"]["targets"][0]["expr"]
    assert "by (pod" in leader


def test_dashboard_reads_every_metric_and_only_known_ones(dashboard_file):
    exprs = dashboard_exprs(dashboard_file)
    for expr in exprs:
        assert not unknown_series(expr), f"unknown series {unknown_series(expr)} in {expr}"
    read = {SERIES[name] for expr in exprs for name in series_names(expr)}
    assert read == set(METRICS), f"not on the dashboard: {set(METRICS) - read}"


def test_dashboard_exprs_parse_and_are_scoped(dashboard_file, promql):
    """Valid PromQL, and every selector is limited to the chosen namespace and job."""
    for expr in dashboard_exprs(dashboard_file):
        for selector in parsed_selectors(promql, without_grafana_variables(expr)):
            m = matchers_of(selector)
            assert m.get("namespace") == ("Equal", "$namespace"), expr
            assert m.get("job") == ("Equal", "$job"), expr
    for name in ("namespace", "job"):
        inner = re.fullmatch(r"label_values\((.*), \w+\)", variable_query(variable(dashboard_file, name))).group(1)
        parsed_selectors(promql, inner)


# --- the dashboard ConfigMap ------------------------------------------------------------------

DASHBOARD_ON = {"grafana": {"dashboard": {"enabled": True}}}


def rendered_dashboard(objs) -> tuple[dict, dict]:
    cm = one(objs, "ConfigMap", f"{RELEASE}-dashboard")
    assert list(cm["data"]) == [DASHBOARD_KEY]
    return cm, load_dashboard(cm["data"][DASHBOARD_KEY])


def test_dashboard_and_rules_are_off_by_default(default_objs):
    assert not find(default_objs, "ConfigMap")
    assert not find(default_objs, "PrometheusRule")


def test_dashboard_configmap(render, dashboard_file):
    objs = render(DASHBOARD_ON)
    cm, dashboard = rendered_dashboard(objs)
    assert cm["metadata"]["namespace"] == NAMESPACE
    labels = cm["metadata"]["labels"]
    assert labels["grafana_dashboard"] == "1"
    assert labels["app.kubernetes.io/instance"] == RELEASE
    assert "annotations" not in cm["metadata"]
    # The file, with the chart's settings in its variables.
    expected = json.loads(DASHBOARD_FILE.read_text())
    for var in expected["templating"]["list"]:
        value = {"pending_poll_seconds": "30", "resync_period_seconds": "600", "namespace": NAMESPACE, "job": METRICS_SERVICE}.get(var["name"])
        if value is None:
            continue
        var["current"] = {"selected": True, "text": value, "value": value}
        if var["type"] == "constant":
            var["query"] = value
            var["options"] = [{"selected": True, "text": value, "value": value}]
    assert dashboard == expected


@pytest.mark.parametrize(
    ("pending_poll", "resync_period", "pending_seconds", "resync_seconds"),
    [("30s", "10m", "30", "600"), ("2m", "1h", "120", "3600"), ("1500ms", "24h", "1.5", "86400")],
)
def test_dashboard_gets_the_configured_intervals(render, pending_poll, resync_period, pending_seconds, resync_seconds):
    _, dashboard = rendered_dashboard(render({**DASHBOARD_ON, "pendingPoll": pending_poll, "resyncPeriod": resync_period}))
    for name, seconds in (("pending_poll_seconds", pending_seconds), ("resync_period_seconds", resync_seconds)):
        var = variable(dashboard, name)
        assert var["query"] == seconds and var["current"]["value"] == seconds, var


def test_dashboard_configmap_options(render):
    values = {
        "grafana": {
            "dashboard": {
                "enabled": True,
                "namespace": "monitoring",
                "label": "example.com/dashboard",
                "labelValue": "eac",
                "labels": {"team": "platform"},
                "annotations": {"grafana_folder": "Controllers"},
            }
        }
    }
    objs = render(values)
    cm, dashboard = rendered_dashboard(objs)
    assert cm["metadata"]["namespace"] == "monitoring"
    labels = cm["metadata"]["labels"]
    assert labels["example.com/dashboard"] == "eac" and labels["team"] == "platform"
    assert "grafana_dashboard" not in labels
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Controllers"}
    # Still this release's job and namespace as the default pick.
    assert variable(dashboard, "namespace")["current"]["value"] == NAMESPACE
    assert variable(dashboard, "job")["current"]["value"] == METRICS_SERVICE


def test_dashboard_sidecar_label_is_not_duplicated_by_extra_labels(render):
    objs = render({"grafana": {"dashboard": {"enabled": True, "labels": {"grafana_dashboard": "other", "a": "b"}}}})
    cm, _ = rendered_dashboard(objs)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["labels"]["a"] == "b"


def test_dashboard_job_follows_the_release_name(render):
    objs = render(DASHBOARD_ON, name="shard-a")
    cm = one(objs, "ConfigMap", "shard-a-eac-controller-dashboard")
    dashboard = load_dashboard(cm["data"][DASHBOARD_KEY])
    assert variable(dashboard, "job")["current"]["value"] == "shard-a-eac-controller-metrics"
    assert one(objs, "Service")["metadata"]["name"] == "shard-a-eac-controller-metrics"


# --- the PrometheusRule -----------------------------------------------------------------------

RULES_ON = {"prometheusRule": {"enabled": True}}
DEFAULT_SELECTOR = {"job": ("Equal", METRICS_SERVICE), "namespace": ("Equal", NAMESPACE)}


def alerts_of(objs, release: str = RELEASE) -> dict[str, dict]:
    rule = one(objs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = rule["spec"]["groups"]
    assert len(groups) == 1 and groups[0]["name"] == f"{release}.rules"
    rules = groups[0]["rules"]
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    return {r["alert"]: r for r in rules}


@pytest.fixture(scope="module")
def default_alerts(render) -> dict[str, dict]:
    return alerts_of(render(RULES_ON))


def test_rule_metadata(render):
    rule = one(render(RULES_ON), "PrometheusRule")
    assert rule["metadata"]["name"] == RELEASE
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert rule["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    rule = one(
        render({"prometheusRule": {"enabled": True, "namespace": "monitoring", "labels": {"release": "kube-prometheus-stack"}}}),
        "PrometheusRule",
    )
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_six_alerts_with_leader_election(default_alerts):
    assert list(default_alerts) == ALERTS


def test_five_alerts_without_leader_election(render):
    alerts = alerts_of(render({**RULES_ON, **WITHOUT_LEADER_ELECTION}))
    assert list(alerts) == [a for a in ALERTS if a != "EacNoLeader"]


def test_no_leader_alert_without_replicas(render):
    assert "EacNoLeader" not in alerts_of(render({**RULES_ON, "replicaCount": 0}))


def test_alerts_say_what_to_do(default_alerts):
    for name, alert in default_alerts.items():
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        annotations = alert["annotations"]
        assert set(annotations) >= {"summary", "description"}, name
        assert len(annotations["description"]) > 150, f"{name}: the description says what to do"
        assert "<no value>" not in json.dumps(alert) and "%!" not in json.dumps(alert), name
    assert default_alerts["EacNoLeader"]["labels"]["severity"] == "critical"


# Prometheus template actions the annotations may use.
ALLOWED_ACTIONS = [
    r"\$value",
    r"\$value \| humanize",
    r"\$value \| humanizeDuration",
    r"\$labels\.\w+",
    r'if eq \$labels\.\w+ "\w+"',
    r"else",
    r"end",
]


def test_annotations_are_prometheus_templates(default_alerts):
    """Helm left Prometheus' own {{ ... }} alone, and they nest properly."""
    for name, alert in default_alerts.items():
        for key, text in alert["annotations"].items():
            assert text.count("{{") == text.count("}}"), f"{name}.{key}"
            depth = 0
            for action in re.findall(r"\{\{\s*(.*?)\s*\}\}", text):
                assert any(re.fullmatch(p, action) for p in ALLOWED_ACTIONS), f"{name}.{key}: {{{{ {action} }}}}"
                depth += action.startswith("if ") - (action == "end")
                assert depth >= 0, f"{name}.{key}"
            assert depth == 0, f"{name}.{key}"
    stalled = default_alerts["EacStalledResources"]["annotations"]
    assert "{{ $labels.result }}" in stalled["summary"]


def test_alert_exprs_read_only_known_series(render):
    for values in (RULES_ON, {**RULES_ON, **WITHOUT_LEADER_ELECTION}):
        for name, alert in alerts_of(render(values)).items():
            names = series_names(alert["expr"])
            assert names, name
            assert not unknown_series(alert["expr"]), f"{name}: unknown series {unknown_series(alert['expr'])}"


def test_alert_exprs_parse_and_select_this_release(default_alerts, promql):
    for name, alert in default_alerts.items():
        for selector in parsed_selectors(promql, alert["expr"]):
            m = matchers_of(selector)
            assert {k: m.get(k) for k in DEFAULT_SELECTOR} == DEFAULT_SELECTOR, f"{name}: {selector}"


def test_alert_selector_can_be_set(render, promql):
    values = {"prometheusRule": {"enabled": True, "selector": 'cluster="prod",job=~"eac.*"'}}
    for name, alert in alerts_of(render(values)).items():
        assert METRICS_SERVICE not in alert["expr"], name
        for selector in parsed_selectors(promql, alert["expr"]):
            m = matchers_of(selector)
            assert m["cluster"] == ("Equal", "prod") and m["job"] == ("Re", "eac.*"), f"{name}: {selector}"
            assert "namespace" not in m, name


def test_alert_selector_follows_the_release(render):
    alerts = alerts_of(render(RULES_ON, name="shard-a", namespace="ops"), "shard-a-eac-controller")
    for alert in alerts.values():
        assert 'job="shard-a-eac-controller-metrics",namespace="ops"' in alert["expr"]


def test_stalled_resources_alert(default_alerts):
    alert = default_alerts["EacStalledResources"]
    expr = alert["expr"]
    assert alert["for"] == "30m"
    excluded = re.search(r'result!~"([^"]*)"', expr).group(1).split("|")
    assert set(excluded) == ROUTINE_RESULTS | {"stale_cache", "kube_error"}
    # The management side's: its routine results, and decisions AWS keeps refusing.
    policies = re.search(r'eac_acceptance_reconcile_total\{[^}]*result!~"([^"]*)"', expr).group(1).split("|")
    assert set(policies) == {"settled", "quiet", "deferred", "gone", "kube_error"}
    assert 'operation=~"AcceptEnvironmentAccountConnection|RejectEnvironmentAccountConnection"' in expr
    assert "[15m]" in expr
    assert 'status="unknown"' in expr and "eac_connections" in expr
    assert "by (result)" in expr


@pytest.mark.parametrize(
    ("values", "window"),
    [
        ({}, "15m"),
        ({"resyncPeriod": "1m"}, "15m"),
        ({"resyncPeriod": "1h"}, "90m"),
        ({"resyncPeriod": "25m"}, "2250s"),
        ({"resyncPeriod": "24h"}, "2160m"),
        ({"prometheusRule": {"alerts": {"stalledResources": {"window": "2h"}}}}, "2h"),
    ],
    ids=lambda v: v if isinstance(v, str) else json.dumps(v, separators=(",", ":")),
)
def test_stalled_window_holds_one_retry(render, values, window):
    """A resource that keeps failing is retried at most every max(resyncPeriod, 10m) (+25 %
    jitter): the window holds at least one retry, so the alert does not flap."""
    merged = {**values, "prometheusRule": {"enabled": True, **values.get("prometheusRule", {})}}
    expr = alerts_of(render(merged))["EacStalledResources"]["expr"]
    assert f"[{window}]" in expr


def test_default_thresholds(default_alerts):
    assert re.search(r"eac_aws_throttled_total\{[^}]*\}\[10m\]\)\) > 0$", default_alerts["EacAwsThrottling"]["expr"])
    assert default_alerts["EacAwsThrottling"]["for"] == "15m"
    errors = default_alerts["EacReconcileErrors"]["expr"]
    assert re.search(r"\n\) > 0$", errors)
    # Both kinds' reconciles (connections' and policies'), over 10m.
    for series in ("eac_reconcile_total", "eac_acceptance_reconcile_total"):
        assert re.search(series + r'\{[^}]*result="kube_error"\}\[10m\]', errors), series
    assert default_alerts["EacReconcileErrors"]["for"] == "15m"
    budget = default_alerts["EacAwsBudgetSaturated"]
    # 3 x pendingPoll (30s), on the leader's gauge, while polls are deferred.
    assert re.search(r'class="poll"\} and on \(instance\) \(eac_leader\{[^}]*\} == 1\)\) > 90\n', budget["expr"])
    assert re.search(r'rate\(eac_aws_deferred_total\{[^}]*class="poll"\}\[10m\]\)\) > 0$', budget["expr"])
    leader = default_alerts["EacNoLeader"]
    assert re.search(r"max\(eac_leader\{[^}]*\}\) < 1", leader["expr"]) and "absent(eac_leader" in leader["expr"]
    assert leader["for"] == "5m"
    unreachable = default_alerts["EacAwsUnreachable"]
    # Per region, on the leader's gauge only.
    assert re.search(
        r"^max by \(region\) \(max_over_time\(eac_aws_unreachable\{[^}]*\}\[2m\]\) and on \(instance\) \(eac_leader\{[^}]*\} == 1\)\) > 0$",
        unreachable["expr"],
    )
    assert unreachable["for"] == "5m"


def test_thresholds_and_durations_render_from_values(render):
    values = {
        "pendingPoll": "45s",
        "prometheusRule": {
            "enabled": True,
            "alertLabels": {"team": "platform"},
            "alerts": {
                "stalledResources": {"for": "1h", "severity": "info"},
                "awsThrottling": {"for": "5m", "threshold": 0.5},
                "awsUnreachable": {"for": "10m", "severity": "critical"},
                "awsBudgetSaturated": {"for": "20m", "pollIntervalFactor": 4},
                "reconcileErrors": {"for": "1h30m", "threshold": 0.01, "severity": "critical"},
                "noLeader": {"for": "2m"},
            },
        },
    }
    alerts = alerts_of(render(values))
    assert {n: a["for"] for n, a in alerts.items()} == {
        "EacStalledResources": "1h",
        "EacAwsThrottling": "5m",
        "EacAwsUnreachable": "10m",
        "EacAwsBudgetSaturated": "20m",
        "EacReconcileErrors": "1h30m",
        "EacNoLeader": "2m",
    }
    assert alerts["EacAwsThrottling"]["expr"].endswith("> 0.5")
    assert alerts["EacReconcileErrors"]["expr"].endswith("> 0.01")
    assert "== 1)) > 180\n" in alerts["EacAwsBudgetSaturated"]["expr"]
    assert "every 45s (pendingPoll)" in alerts["EacAwsBudgetSaturated"]["annotations"]["description"]
    assert alerts["EacStalledResources"]["labels"] == {"severity": "info", "team": "platform"}
    assert alerts["EacReconcileErrors"]["labels"] == {"severity": "critical", "team": "platform"}
    assert alerts["EacAwsUnreachable"]["labels"] == {"severity": "critical", "team": "platform"}


@pytest.mark.parametrize(
    ("pending_poll", "factor", "threshold"),
    [("30s", 3, "90"), ("1500ms", 2.5, "3.75"), ("1h", 100, "360000"), ("2m", 1.5, "180")],
)
def test_budget_threshold_is_a_multiple_of_pending_poll(render, pending_poll, factor, threshold):
    values = {
        "pendingPoll": pending_poll,
        "resyncPeriod": "24h",
        "prometheusRule": {"enabled": True, "alerts": {"awsBudgetSaturated": {"pollIntervalFactor": factor}}},
    }
    expr = alerts_of(render(values))["EacAwsBudgetSaturated"]["expr"]
    assert f"== 1)) > {threshold}\n" in expr


def test_each_alert_can_be_turned_off(render):
    keys = ["stalledResources", "awsThrottling", "awsUnreachable", "awsBudgetSaturated", "reconcileErrors", "noLeader"]
    for key, name in zip(keys, ALERTS):
        alerts = alerts_of(render({"prometheusRule": {"enabled": True, "alerts": {key: {"enabled": False}}}}))
        assert list(alerts) == [a for a in ALERTS if a != name], key
    rule = one(render({"prometheusRule": {"enabled": True, "alerts": {k: {"enabled": False} for k in keys}}}), "PrometheusRule")
    assert rule["spec"]["groups"][0]["rules"] == []


def test_lint_passes_with_dashboard_and_rules(helm):
    values = {**DASHBOARD_ON, **RULES_ON, "metrics": {"serviceMonitor": {"enabled": True}}}
    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


# --- values and schema ------------------------------------------------------------------------


def schema_keys(schema: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        keys.add(path)
        if sub.get("type") == "object" and "properties" in sub:
            keys |= schema_keys(sub, path + ".")
    return keys


def value_keys(values: dict, prefix: str = "", schema: dict | None = None) -> set[str]:
    keys = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        keys.add(path)
        sub = (schema or {}).get("properties", {}).get(key, {})
        if isinstance(value, dict) and "properties" in sub:
            keys |= value_keys(value, path + ".", sub)
    return keys


@pytest.mark.parametrize("section", ["grafana", "prometheusRule"])
def test_values_yaml_documents_every_new_key(chart, section):
    schema = chart.schema["properties"][section]
    assert value_keys(chart.values[section], "", schema) == schema_keys(schema)
    assert chart.values[section].get("enabled", chart.values[section].get("dashboard", {}).get("enabled")) is False


def test_values_yaml_defaults(chart):
    v = chart.values
    assert v["awsPollShare"] == 0.5
    assert v["grafana"]["dashboard"] == {
        "enabled": False,
        "namespace": "",
        "label": "grafana_dashboard",
        "labelValue": "1",
        "labels": {},
        "annotations": {},
    }
    alerts = v["prometheusRule"]["alerts"]
    assert {k: a["for"] for k, a in alerts.items()} == {
        "stalledResources": "30m",
        "awsThrottling": "15m",
        "awsUnreachable": "5m",
        "awsBudgetSaturated": "15m",
        "reconcileErrors": "15m",
        "noLeader": "5m",
    }
    assert alerts["awsBudgetSaturated"]["pollIntervalFactor"] == 3


def with_value(path: str, value) -> dict:
    keys = path.split(".")
    values: dict = {keys[-1]: value}
    for key in reversed(keys[:-1]):
        values = {key: values}
    return values


A = "prometheusRule.alerts."
# value path -> (accepted, refused). None: Helm drops a key set to null, and the schema requires
# the keys the templates need.
OBSERVABILITY_SCHEMAS = {
    "grafana.dashboard.enabled": ([True, False], ["yes", 1, None]),
    "grafana.dashboard.namespace": (["", "monitoring"], ["Monitoring", "ops_1", 1]),
    "grafana.dashboard.label": (
        ["grafana_dashboard", "example.com/dashboard", "dashboard"],
        ["", "bad key", "-x", "a/b/c", "Example.com/x", 1],
    ),
    "grafana.dashboard.labelValue": (["1", "", "eac-controller", "true"], [1, True, "a b", "-1", "x" * 64]),
    "grafana.dashboard.labels": ([{}, {"team": "platform"}], [{"team": 1}, ["team"]]),
    "grafana.dashboard.annotations": ([{}, {"grafana_folder": "Controllers"}], [{"a": True}, "x"]),
    "prometheusRule.enabled": ([True, False], ["true", 0, None]),
    "prometheusRule.namespace": (["", "monitoring"], ["Monitoring", 5]),
    "prometheusRule.labels": ([{"release": "kube-prometheus-stack"}], [{"release": 1}]),
    "prometheusRule.alertLabels": ([{}, {"team": "platform", "page_me": "yes"}], [{"severity": "x"}, {"bad-key": "x"}, {"team": 1}]),
    "prometheusRule.selector": (
        ["", 'job="eac"', 'job="eac",namespace=~"a|b",cluster!="dev"'],
        ['{job="eac"}', 'job="eac"}', 5],
    ),
    A + "stalledResources.for": (["30m", "1h30m", "90s", "2d", "500ms"], ["", "30", "thirty minutes", "30 m", "-5m", "1.5h", 30]),
    A + "stalledResources.window": (["", "15m", "2h"], ["15", "15 m", 15]),
    A + "stalledResources.severity": (["warning", "critical", "info", "P2"], ["", "very bad", 1]),
    A + "stalledResources.enabled": ([True, False], ["no"]),
    A + "awsThrottling.threshold": ([0, 0.01, 5], [-0.1, "0", None]),
    A + "awsThrottling.for": (["15m"], ["15"]),
    A + "awsUnreachable.for": (["5m", "90s"], ["5", None]),
    A + "awsUnreachable.enabled": ([True, False], ["yes"]),
    A + "awsBudgetSaturated.pollIntervalFactor": ([1.5, 3, 100], [1, 0.5, 0, 101, "3", None]),
    A + "awsBudgetSaturated.for": (["15m"], ["fifteen"]),
    A + "reconcileErrors.threshold": ([0, 0.5], [-1, "0"]),
    A + "reconcileErrors.severity": (["warning"], ["", None]),
    A + "noLeader.for": (["5m", "1m30s"], ["5", None]),
    A + "noLeader.severity": (["critical"], [2]),
}


@pytest.mark.parametrize("path", sorted(OBSERVABILITY_SCHEMAS))
def test_schema_checks_each_observability_value(chart, helm, path):
    good, bad = OBSERVABILITY_SCHEMAS[path]
    for value in good:
        chart.validate_schema(with_value(path, value))
    for value in bad:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(with_value(path, value))
            pytest.fail(f"{path}={value!r} was accepted")


@pytest.mark.parametrize(
    "values",
    [
        {"grafana": {"dashboard": {"enabled": True, "folder": "x"}}},
        {"grafana": {"enabled": True}},
        {"prometheusRule": {"enabled": True, "rules": []}},
        {"prometheusRule": {"alerts": {"EacNoLeader": {"enabled": False}}}},
        {"prometheusRule": {"alerts": {"noLeader": {"threshold": 1}}}},
        {"prometheusRule": {"alerts": {"awsThrottling": {"window": "10m"}}}},
    ],
    ids=lambda v: json.dumps(v, separators=(",", ":")),
)
def test_schema_rejects_unknown_observability_keys(chart, render, helm, values):
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        render(values)


def test_readme_documents_the_alerts_and_values():
    """The chart README names every alert and the new values."""
    readme = (CHART_DIR / "README.md").read_text()
    for name in ALERTS:
        assert f"`{name}`" in readme, name
    for key in ("grafana.dashboard.enabled", "prometheusRule.enabled", "awsPollShare", "prometheusRule.selector"):
        assert f"`{key}`" in readme, key


def test_dashboard_file_is_in_the_chart_package():
    """Helm packages dashboards/ (nothing in .helmignore leaves it out)."""
    helmignore = CHART_DIR / ".helmignore"
    if helmignore.exists():
        patterns = [l.strip() for l in helmignore.read_text().splitlines() if l.strip() and not l.startswith("#")]
        assert not [p for p in patterns if "dashboards" in p or p in ("*.json", "dashboards/")], patterns
    assert DASHBOARD_FILE.stat().st_size < 512 * 1024, "a ConfigMap holds at most 1 MiB"
