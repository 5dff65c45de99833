"""The Grafana dashboards import as they are, and the deployment files expose the metrics port.

(The queries themselves run against a real Prometheus in tests/integration/test_prometheus.py.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from actors.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "ops" / "grafana").glob("*.json"))
KUBERNETES = ROOT / "ops" / "deploy" / "kubernetes"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def test_there_are_the_four_dashboards() -> None:
    assert [path.name for path in DASHBOARDS] == [
        "failures-dead-letters.json",
        "long-jobs-checkpoints.json",
        "overview.json",
        "queues-workers.json",
    ]
    uids = [json.loads(path.read_text())["uid"] for path in DASHBOARDS]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_a_dashboard_imports_as_it_is_with_a_datasource_variable(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["id"] is None, "an id would overwrite whatever dashboard has it in the target Grafana"
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 36
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE
    panels: list[dict[str, Any]] = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["type"] in ("timeseries", "stat") and panel["title"] and panel["description"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE and target["expr"] and target["refId"], panel["title"]
            used = {name for name in ("$queue", "$__rate_interval", "$__range") if name in target["expr"]}
            assert used <= {"$__rate_interval", "$__range"} | ({"$queue"} if "queue" in variables else set())


def test_every_kubernetes_worker_exposes_its_metrics_port_to_prometheus() -> None:
    [configmap, _secret] = yaml.safe_load_all((KUBERNETES / "configmap.yaml").read_text())
    settings = Settings.from_env(configmap["data"])
    assert settings.metrics_port > 0 and settings.metrics_bind == "0.0.0.0", "Prometheus scrapes the pod's address"
    for path in sorted(KUBERNETES.glob("workers-*.yaml")):
        [deployment] = yaml.safe_load_all(path.read_text())
        template = deployment["spec"]["template"]
        [container] = template["spec"]["containers"]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports["metrics"] == settings.metrics_port, path.name
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", path.name
        assert annotations["prometheus.io/port"] == str(settings.metrics_port), path.name
