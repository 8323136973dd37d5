"""The chart's alerts, run by Prometheus's own tool: `promtool test rules` feeds each alert of the
rendered PrometheusRule a series that should fire it (after its `for`) and one that should not,
and `promtool check rules` checks the rules as rendered (annotation templates included).

promtool comes with Debian's `prometheus` package; `.ci/run` installs it and sets
EAC_REQUIRE_PROMTOOL=1, so in CI a missing promtool fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ALERTS, one

# The series carry this job label; the chart's selector is set to match it.
SEL = 'job="eac"'
VALUES = {
    "replicaCount": 2,
    "leaderElection": {"enabled": True},
    "pendingPoll": "30s",
    "prometheusRule": {"enabled": True, "selector": SEL},
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("EAC_REQUIRE_PROMTOOL") == "1":
        pytest.fail("promtool is required (apt-get install prometheus) and not on PATH")
    pytest.skip("promtool not installed (apt-get install prometheus)")


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def groups(render) -> list[dict[str, Any]]:
    rule = one(render(VALUES), "PrometheusRule")
    return rule["spec"]["groups"]


def alert_names(groups: list[dict[str, Any]]) -> list[str]:
    return [r["alert"] for g in groups for r in g["rules"]]


def without_annotations(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rules as they fire: promtool compares annotations exactly, and they are prose."""
    return [
        {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
        for g in groups
    ]


def series(name: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{SEL},{labels}}}" if labels else f"{name}{{{SEL}}}", "values": values}


def fires(at: str, alert: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": labels}]}


def silent(at: str, alert: str) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


# One test group per scenario: the input series (one sample a minute) and what must hold when.
SCENARIOS: list[dict[str, Any]] = [
    {
        "name": "a resource that keeps failing with AccessDenied is stalled after 30m, not before",
        "input_series": [
            series("eac_reconcile_total", 'instance="a",result="AccessDenied"', "0+1x60"),
            series("eac_reconcile_total", 'instance="a",result="settled"', "0+10x60"),
            series("eac_leader", 'instance="a"', "1x60"),
        ],
        "alert_rule_test": [
            silent("20m", "EacStalledResources"),
            fires("45m", "EacStalledResources", {"result": "AccessDenied", "severity": "warning"}),
        ],
    },
    {
        "name": "routine results and a failure that stopped long ago are not stalled",
        "input_series": [
            series("eac_reconcile_total", 'instance="a",result="settled"', "0+10x90"),
            series("eac_reconcile_total", 'instance="a",result="deferred"', "0+10x90"),
            # The watch behind the controller's own write: the reconcile runs again, no problem.
            series("eac_reconcile_total", 'instance="a",result="stale_cache"', "0+3x90"),
            series("eac_acceptance_reconcile_total", 'instance="a",result="settled"', "0+10x90"),
            series("eac_acceptance_reconcile_total", 'instance="a",result="gone"', "0+1x90"),
            # Failed for 10 minutes, then stopped failing (the increase over 15m drops to 0).
            series("eac_reconcile_total", 'instance="a",result="Throttled"', "0+1x10 10x80"),
            series("eac_leader", 'instance="a"', "1x90"),
        ],
        "alert_rule_test": [
            silent("60m", "EacStalledResources"),
            silent("60m", "EacReconcileErrors"),
            silent("60m", "EacAwsThrottling"),
            silent("60m", "EacNoLeader"),
        ],
    },
    {
        "name": "resources without a connection status for 30m are stalled",
        "input_series": [
            series("eac_connections", 'instance="a",status="unknown"', "3x60"),
            series("eac_connections", 'instance="a",status="PENDING"', "5x60"),
            series("eac_leader", 'instance="a"', "1x60"),
        ],
        "alert_rule_test": [
            silent("25m", "EacStalledResources"),
            fires("40m", "EacStalledResources", {"result": "NoConnectionStatus", "severity": "warning"}),
        ],
    },
    {
        "name": "a policy whose Accepts AWS keeps refusing (or an endpoint its Rejects), or whose reconciles end on a problem, is stalled",
        "input_series": [
            series(
                "eac_aws_requests_total",
                'instance="a",operation="AcceptEnvironmentAccountConnection",outcome="AccessDenied"',
                "0+2x60",
            ),
            # An endpoint without RejectEnvironmentAccountConnection.
            series(
                "eac_aws_requests_total",
                'instance="a",operation="RejectEnvironmentAccountConnection",outcome="UnsupportedByEndpoint"',
                "0+1x60",
            ),
            # Someone else decided: no problem.
            series(
                "eac_aws_requests_total",
                'instance="a",operation="RejectEnvironmentAccountConnection",outcome="Conflict"',
                "0+1x60",
            ),
            series("eac_acceptance_reconcile_total", 'instance="a",result="AccountMismatch"', "0+1x60"),
            series("eac_acceptance_reconcile_total", 'instance="a",result="settled"', "0+10x60"),
            series("eac_leader", 'instance="a"', "1x60"),
        ],
        "alert_rule_test": [
            silent("20m", "EacStalledResources"),
            {
                "eval_time": "45m",
                "alertname": "EacStalledResources",
                "exp_alerts": [
                    {"exp_labels": {"result": "AccessDenied", "outcome": "AccessDenied", "kind": "ConnectionAcceptancePolicy", "severity": "warning"}},
                    {"exp_labels": {"result": "UnsupportedByEndpoint", "outcome": "UnsupportedByEndpoint", "kind": "ConnectionAcceptancePolicy", "severity": "warning"}},
                    {"exp_labels": {"result": "AccountMismatch", "kind": "ConnectionAcceptancePolicy", "severity": "warning"}},
                ],
            },
        ],
    },
    {
        "name": "a policy's reconciles failing on Kubernetes alert as the connections' do",
        "input_series": [
            series("eac_acceptance_reconcile_total", 'instance="a",result="kube_error"', "0+2x40"),
            series("eac_leader", 'instance="a"', "1x40"),
        ],
        "alert_rule_test": [
            fires("30m", "EacReconcileErrors", {"severity": "warning"}),
            silent("39m", "EacStalledResources"),
        ],
    },
    {
        "name": "throttling for 15m alerts, an idle throttle counter does not",
        "input_series": [
            series("eac_aws_throttled_total", 'instance="a"', "0+5x40"),
            series("eac_aws_throttled_total", 'instance="b"', "7x40"),
        ],
        "alert_rule_test": [
            silent("10m", "EacAwsThrottling"),
            fires("30m", "EacAwsThrottling", {"severity": "warning"}),
        ],
    },
    {
        "name": "a region the leader cannot reach for 5m alerts, per region; a standby's old value does not",
        "input_series": [
            series("eac_aws_unreachable", 'instance="a",region="us-east-1"', "0x2 1x30"),
            series("eac_aws_unreachable", 'instance="a",region="STS"', "0x32"),
            series("eac_leader", 'instance="a"', "1x32"),
            # A pod that stopped leading while it could not reach eu-west-1 keeps its gauge.
            series("eac_aws_unreachable", 'instance="b",region="eu-west-1"', "1x32"),
            series("eac_leader", 'instance="b"', "0x32"),
        ],
        "alert_rule_test": [
            silent("4m", "EacAwsUnreachable"),
            fires("10m", "EacAwsUnreachable", {"region": "us-east-1", "severity": "warning"}),
        ],
    },
    {
        "name": "an endpoint that answers again within a minute or two does not alert",
        "input_series": [
            series("eac_aws_unreachable", 'instance="a",region="us-east-1"', "0x2 1x1 0x27"),
            series("eac_leader", 'instance="a"', "1x30"),
        ],
        "alert_rule_test": [silent("5m", "EacAwsUnreachable"), silent("20m", "EacAwsUnreachable")],
    },
    {
        "name": "an endpoint that answers now and then but keeps going away alerts",
        "input_series": [
            series("eac_aws_unreachable", 'instance="a",region="us-east-1"', "0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1"),
            series("eac_leader", 'instance="a"', "1x20"),
        ],
        "alert_rule_test": [fires("12m", "EacAwsUnreachable", {"region": "us-east-1", "severity": "warning"})],
    },
    {
        "name": "the leader polling at 4x pendingPoll while polls are deferred saturates the budget",
        "input_series": [
            series("eac_effective_poll_interval_seconds", 'instance="a",class="poll"', "120x40"),
            series("eac_leader", 'instance="a"', "1x40"),
            series("eac_aws_deferred_total", 'instance="a",class="poll"', "0+20x40"),
        ],
        "alert_rule_test": [
            silent("10m", "EacAwsBudgetSaturated"),
            fires("30m", "EacAwsBudgetSaturated", {"severity": "warning"}),
        ],
    },
    {
        "name": "a slow interval on a standby, or within 3x pendingPoll on the leader, is not saturation",
        "input_series": [
            # The standby keeps its last (old) value; the leader polls at 2x pendingPoll.
            series("eac_effective_poll_interval_seconds", 'instance="b",class="poll"', "600x40"),
            series("eac_leader", 'instance="b"', "0x40"),
            series("eac_effective_poll_interval_seconds", 'instance="a",class="poll"', "60x40"),
            series("eac_leader", 'instance="a"', "1x40"),
            series("eac_aws_deferred_total", 'instance="a",class="poll"', "0+20x40"),
        ],
        "alert_rule_test": [silent("30m", "EacAwsBudgetSaturated")],
    },
    {
        "name": "reconciles failing on Kubernetes for 15m alert",
        "input_series": [
            series("eac_reconcile_total", 'instance="a",result="kube_error"', "0+2x40"),
            series("eac_leader", 'instance="a"', "1x40"),
        ],
        "alert_rule_test": [
            silent("10m", "EacReconcileErrors"),
            fires("30m", "EacReconcileErrors", {"severity": "warning"}),
            # kube_error has its own alert; it is not also a stalled resource.
            silent("39m", "EacStalledResources"),
        ],
    },
    {
        "name": "no pod holding the Lease for 5m, or no pod scraped, is no leader",
        "input_series": [
            series("eac_leader", 'instance="a"', "0x20"),
            series("eac_leader", 'instance="b"', "0x20"),
        ],
        "alert_rule_test": [
            silent("3m", "EacNoLeader"),
            fires("10m", "EacNoLeader", {"severity": "critical"}),
        ],
    },
    {
        "name": "nothing scraped at all is no leader too",
        "input_series": [series("eac_connections", 'instance="x",status="CONNECTED"', "1x20")],
        # absent() names the series it missed: the selector's labels come with the alert.
        "alert_rule_test": [fires("10m", "EacNoLeader", {"job": "eac", "severity": "critical"})],
    },
    {
        "name": "one leader among two pods is quiet",
        "input_series": [
            series("eac_leader", 'instance="a"', "1x20"),
            series("eac_leader", 'instance="b"', "0x20"),
        ],
        "alert_rule_test": [silent("15m", "EacNoLeader")],
    },
]


def test_every_alert_has_a_case_that_fires_it_and_one_that_does_not(groups):
    names = alert_names(groups)
    assert names == ALERTS
    for alert in names:
        checks = [c for s in SCENARIOS for c in s["alert_rule_test"] if c["alertname"] == alert]
        assert any(c["exp_alerts"] for c in checks), f"{alert}: no case fires it"
        assert any(not c["exp_alerts"] for c in checks), f"{alert}: no case keeps it silent"


def test_promtool_runs_every_alert_on_series_that_fire_it_and_series_that_do_not(groups, tmp_path):
    tool = promtool()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": without_annotations(groups)}))
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {"interval": "1m", "name": s["name"], "input_series": s["input_series"], "alert_rule_test": s["alert_rule_test"]}
            for s in SCENARIOS
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run([tool, "test", "rules", "tests.yaml"], tmp_path)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_fails_a_case_the_rules_do_not_meet(groups, tmp_path):
    """The check above can fail: an alert expected to fire on series that cannot fire it."""
    tool = promtool()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": without_annotations(groups)}))
    wrong = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [series("eac_leader", 'instance="a"', "1x20")],
                "alert_rule_test": [fires("10m", "EacNoLeader", {"severity": "critical"})],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(wrong, sort_keys=False))
    result = run([tool, "test", "rules", "tests.yaml"], tmp_path)
    assert result.returncode != 0, result.stdout


def test_promtool_checks_the_rules_as_rendered(groups, tmp_path):
    tool = promtool()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    result = run([tool, "check", "rules", "rules.yaml"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(alert_names(groups))} rules found" in result.stdout, result.stdout
