"""The chart's connection limits (issue 13, item 5): per-client limits as ingress-nginx annotations, the broker's
own limits as settings, its per-client cap off behind the ingress."""

from __future__ import annotations

from typing import Any

from broker.settings import Settings
from tests.unit.test_helm_chart import VALUE_SETS, chart, one, render

__all__ = ["chart"]  # the module-scoped fixture, shared with the chart tests

LIMIT = "nginx.ingress.kubernetes.io/"


def test_the_ingress_carries_per_client_limits_and_explicit_annotations_win(chart: Any) -> None:
    values = {"ingress": {**VALUE_SETS["ingress-on"]["ingress"]}}
    values["ingress"]["annotations"] = {"cert-manager.io/cluster-issuer": "x", f"{LIMIT}limit-rps": "7"}
    annotations = one(render(chart, values), "Ingress")["metadata"]["annotations"]
    assert annotations[f"{LIMIT}limit-connections"] == "20"
    assert annotations[f"{LIMIT}limit-rps"] == "7"  # the explicit annotation overrides ingress.limits
    assert annotations[f"{LIMIT}proxy-body-size"] == "64m"
    assert annotations[f"{LIMIT}proxy-read-timeout"] == annotations[f"{LIMIT}proxy-send-timeout"] == "120"
    assert annotations["cert-manager.io/cluster-issuer"] == "x"


def test_limits_can_be_left_to_another_controller(chart: Any) -> None:
    values = {"ingress": {**VALUE_SETS["ingress-on"]["ingress"], "limits": {"enabled": False}}}
    annotations = one(render(chart, values), "Ingress")["metadata"].get("annotations", {})
    assert not any(k.startswith(LIMIT) for k in annotations)


def test_the_broker_gets_its_connection_limits_and_no_per_client_cap(chart: Any) -> None:
    data = one(render(chart, {}), "ConfigMap", "sbx-sandbox-broker")["data"]
    env = {k.removeprefix("SBX_").lower(): v for k, v in data.items() if k.startswith("SBX_HTTP_")}
    assert env == {
        "http_max_header_bytes": "16384",
        "http_header_timeout_s": "10",
        "http_keep_alive_s": "5",
        "http_max_concurrency": "1000",
        "http_max_connections_per_client": "0",
    }
    settings = Settings(**env)  # every value is one the broker accepts
    assert settings.http_max_connections_per_client == 0 and settings.http_header_timeout_s == 10
