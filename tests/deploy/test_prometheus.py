"""deploy/prometheus and deploy/grafana: the alert rules pass `promtool check rules`
and their unit tests, and every PromQL expression of the dashboard parses.
(tests/deploy_metrics.rs checks that every metric they name is in a real scrape.)"""

import json

from conftest import DEPLOY, run

ALERTS = DEPLOY / "prometheus" / "trident-alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "trident-dashboard.json"
# Values Grafana puts in for its variables when it runs a query.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "30s",
    "$__range": "1h",
    "$job": ".*",
    "$model": ".*",
    "$pool": ".*",
}


def test_alert_rules_pass_promtool(promtool):
    run(promtool, "check", "rules", ALERTS)


def test_alert_rules_unit_tests_pass(promtool):
    run(promtool, "test", "rules", ALERTS.with_name("trident-alerts.test.yaml"))


def dashboard_panels():
    def walk(panels):
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def substituted(expr):
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


def test_dashboard_expressions_parse(promtool, tmp_path):
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]
    assert len(exprs) > 40
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expr_{i}", "expr": substituted(e)}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    # YAML is a superset of JSON: promtool reads this as a rules file.
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(json.dumps(rules, indent=1))
    run(promtool, "check", "rules", path)


def test_dashboard_is_grafana_shaped():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert {"job", "model", "pool"} <= variables.keys()
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == [
        "Traffic",
        "Upstream endpoints",
        "Retries",
        "Filters",
        "Canary: mirrors and splits",
        "Client connections",
        "Process and lifecycle",
    ]
