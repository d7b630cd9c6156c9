"""The Grafana dashboard queries what sel_otel exports, by the names Prometheus gives it.

The metrics are produced for real: a process's telemetry, built by `Telemetry.from_env` as
deployed, exports over OTLP to a loopback receiver while runtimes make calls that hit, miss,
fail, coalesce, evict and meet a dead Redis. Their names are then rendered as the collector's
Prometheus exporter renders them (OpenTelemetry's Prometheus compatibility rules), and every
metric and label in the dashboard's queries must be among them. The compose file must run a
Prometheus scraping the collector's exporter and a Grafana provisioned with both.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from sel_otel import AgentRegistry, AgentRuntime, Settings, Telemetry
from sel_otel import _semconv as names
from sel_otel._app import cache_from_settings
from sel_otel._metric_data import data_points
from tests.conftest import free_port
from tests.otlp_receiver import attributes

if TYPE_CHECKING:
    from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

    from tests.otlp_receiver import OtlpReceiver

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "sel-otel.json"

#: OpenTelemetry unit → Prometheus suffix; a unit in braces (`{call}`) adds none.
UNITS = {"s": "seconds", "ms": "milliseconds", "By": "bytes"}
#: Labels every series gets: the scrape target's, and the collector's from the resource.
TARGET_LABELS = {"job", "instance"}
PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "rate", "irate", "increase", "histogram_quantile",
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "topk", "bottomk", "clamp_min", "clamp_max", "label_values",
}  # fmt: skip


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_:]", "_", name)


def prometheus_names(metric: Metric) -> set[str]:
    """The series names the collector's Prometheus exporter serves for `metric`."""
    name = _sanitize(metric.name)
    unit = "" if metric.unit.startswith("{") else UNITS.get(metric.unit, _sanitize(metric.unit))
    if unit and not name.endswith(f"_{unit}"):
        name = f"{name}_{unit}"
    kind = metric.WhichOneof("data")
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    if kind == "sum" and metric.sum.is_monotonic:
        return {f"{name}_total"}
    return {name}


def _points(metric: Metric) -> Any:
    return getattr(metric, str(metric.WhichOneof("data"))).data_points


AGENTS = {
    "echo": "DESCRIPTION='d'\ndef run(q):\n    return q\n",
    "fails": "DESCRIPTION='d'\ndef run(q):\n    raise ValueError(q)\n",
    "slow": "import asyncio\nDESCRIPTION='d'\nasync def run(q):\n"
    "    await asyncio.sleep(0.05)\n    return q\n",
}


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Every Prometheus series name sel_otel's metrics become, with its label names."""
    from tests.otlp_receiver import OtlpReceiver

    with OtlpReceiver() as receiver, pytest.MonkeyPatch.context() as patch:
        return asyncio.run(_export(receiver, patch))


async def _export(receiver: OtlpReceiver, patch: pytest.MonkeyPatch) -> dict[str, set[str]]:
    for name, value in {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_BSP_MAX_QUEUE_SIZE": "1",  # so that spans are dropped, and counted
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "0.5",  # a failed export gives up soon
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",  # exported once, at shutdown
    }.items():
        patch.setenv(name, value)
    telemetry = Telemetry.from_env()
    receiver.stop()  # span exports fail, and are counted with their error.type
    runtimes = []
    try:
        with tempfile.TemporaryDirectory() as agents:
            for name, source in AGENTS.items():
                (Path(agents) / f"{name}.py").write_text(source)
            for cache_url in ("memory://", f"redis://127.0.0.1:{free_port()}/0"):  # a dead one
                settings = Settings(
                    agents_dir=Path(agents), cache_url=cache_url, cache_max_entries=1
                )
                registry = AgentRegistry(Path(agents))
                registry.reload()
                cache = cache_from_settings(
                    settings, telemetry.meter_provider, telemetry.tracer_provider
                )
                runtime = AgentRuntime(
                    registry,
                    cache,
                    settings=settings,
                    tracer_provider=telemetry.tracer_provider,
                    meter_provider=telemetry.meter_provider,
                )
                runtimes.append(runtime)
                for query in ("a", "b", "a", "b"):  # misses, hits, evictions
                    await runtime.run("echo", query)
                await runtime.run("fails", "x")
                await asyncio.gather(*(runtime.run("slow", "same") for _ in range(5)))
        deadline = time.monotonic() + 30
        while not any(
            names.ERROR_TYPE in (point.attributes or {})
            for point in data_points(
                telemetry.stats_reader.get_metrics_data(), "otel.sdk.exporter.span.exported"
            )
        ):
            assert time.monotonic() < deadline, "no span export failed"
            await asyncio.sleep(0.05)
        receiver.start()  # on the same port: the metrics are exported at shutdown
    finally:
        for runtime in runtimes:
            await runtime.aclose()
            await runtime.cache.close()
        telemetry.shutdown(timeout=10)
    series: dict[str, set[str]] = {}
    resource_labels = {_sanitize(key) for key in telemetry.tracer_provider.resource.attributes}
    for metric in receiver.metrics:
        labels = {_sanitize(k) for p in _points(metric) for k in attributes(p.attributes)}
        for name in prometheus_names(metric):
            known = series.setdefault(name, set(TARGET_LABELS | resource_labels))
            known |= labels | ({"le"} if name.endswith("_bucket") else set())
    return series


# -- reading the dashboard's queries ----------------------------------------------------------


def _panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in node.get("panels", ()):
        yield panel
        yield from _panels(panel)  # rows hold panels


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", ())]
    exprs += [v["definition"] for v in dashboard["templating"]["list"]]
    return exprs


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{([^}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def parse(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and the label names a PromQL expression uses."""
    labels: set[str] = set()
    for matchers in _MATCHERS.findall(_STRING.sub('""', expr)):
        labels |= {m.split("=")[0].split("!")[0].strip() for m in matchers.split(",") if m}
    bare = _MATCHERS.sub(" ", _STRING.sub('""', expr))
    for grouping in _GROUPING.findall(bare):
        labels |= {label.strip() for label in grouping.split(",") if label.strip()}
    bare = _RANGE.sub(" ", _GROUPING.sub(" ", bare))
    if bare.startswith("label_values("):  # a template variable: label_values(metric, label)
        metric, label = bare.removeprefix("label_values(").rstrip(") ").split(",")
        return {metric.strip()}, labels | {label.strip()}
    metrics = {word for word in _IDENTIFIER.findall(bare) if word not in PROMQL_WORDS}
    return metrics, labels


def test_the_query_reader_finds_metrics_and_labels() -> None:
    metrics, labels = parse(
        'histogram_quantile(0.95, sum by (le, a_b) (rate(x_bucket{c="v", d!~"w,{}"}[5m])))'
    )
    assert (metrics, labels) == ({"x_bucket"}, {"le", "a_b", "c", "d"})


# -- the dashboard against what is exported ---------------------------------------------------


def test_every_metric_and_label_queried_is_one_sel_otel_exports(
    dashboard: dict[str, Any], exported: dict[str, set[str]]
) -> None:
    used = [parse(expr) for expr in queries(dashboard)]
    assert len(used) >= 10
    for expr, (metrics, labels) in zip(queries(dashboard), used, strict=True):
        assert metrics, expr
        for metric in metrics:
            assert metric in exported, f"{metric} is not exported: {sorted(exported)}"
            assert labels <= exported[metric], (expr, labels - exported[metric])


def test_the_dashboard_shows_calls_hit_rate_p95_errors_cache_errors_and_dropped_spans(
    dashboard: dict[str, Any],
) -> None:
    text = "\n".join(queries(dashboard))
    calls = "gen_ai_client_operation_duration_seconds"
    assert f"sum by (gen_ai_agent_name) (rate({calls}_count" in text  # calls per agent
    assert 'sel_cache_hit="true"' in text  # hit rate
    assert f"histogram_quantile(0.95, sum by (le, gen_ai_agent_name) (rate({calls}_bucket" in text
    assert "sum by (gen_ai_agent_name, error_type)" in text  # errors per agent
    assert "sel_cache_errors_total" in text
    assert 'otel_sdk_processor_span_processed_total{error_type="queue_full"}' in text


def test_every_panel_reads_the_provisioned_prometheus(dashboard: dict[str, Any]) -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    [source] = provisioned["datasources"]
    panels = list(_panels(dashboard))
    assert panels and dashboard["uid"] and dashboard["title"]
    for panel in panels:
        for node in (panel, *panel.get("targets", ())):
            assert node["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))


# -- the compose file runs them ---------------------------------------------------------------


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose: dict[str, Any] = yaml.safe_load((DEPLOY / "jaeger-compose.yml").read_text())
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → path in deploy/, of the service's read-only mounts."""
    mounts = {}
    for volume in service.get("volumes", ()):
        source, target, mode = volume.split(":")
        assert mode == "ro", volume
        mounts[target] = source
    return mounts


def test_prometheus_scrapes_the_collectors_exporter(services: dict[str, dict[str, Any]]) -> None:
    collector = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    exporter = collector["exporters"]["prometheus"]
    assert exporter["resource_to_telemetry_conversion"]["enabled"] is True  # service_* labels
    assert exporter.get("add_metric_suffixes", True) is True  # _seconds, _total
    assert "prometheus" in collector["service"]["pipelines"]["metrics"]["exporters"]
    port = int(exporter["endpoint"].rsplit(":", 1)[1])
    prometheus = services["prometheus"]
    config_path = next(a.split("=", 1)[1] for a in prometheus["command"] if "config.file" in a)
    config = yaml.safe_load((DEPLOY / _mounts(prometheus)[config_path]).read_text())
    targets = [
        t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    ]
    assert f"otel-collector:{port}" in targets
    assert port in {int(str(p).rsplit(":", 1)[-1]) for p in services["otel-collector"]["ports"]}
    assert "otel-collector" in prometheus["depends_on"]


def test_grafana_is_provisioned_with_the_prometheus_and_the_dashboard(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    mounts = _mounts(grafana)
    provisioning = DEPLOY / mounts["/etc/grafana/provisioning"]
    [source] = yaml.safe_load((provisioning / "datasources/prometheus.yaml").read_text())[
        "datasources"
    ]
    host, port = source["url"].removeprefix("http://").split(":")
    assert host in services and int(port) == 9090
    assert any(str(p).endswith(":9090") for p in services[host]["ports"])
    [provider] = yaml.safe_load((provisioning / "dashboards/sel-otel.yaml").read_text())[
        "providers"
    ]
    dashboards = DEPLOY / mounts[provider["options"]["path"]]
    assert (dashboards / DASHBOARD.name).read_bytes() == DASHBOARD.read_bytes()
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    for name in ("prometheus", "grafana"):
        assert all(str(p).startswith("127.0.0.1:") for p in services[name]["ports"]), name
