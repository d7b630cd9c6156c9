"""A `sel-otel run` call reaches Jaeger through the collector configured in deploy/.

Where a Docker engine has Jaeger v2 and the collector-contrib image (the versions pinned in
deploy/) or can pull them, the stack test starts both on a private network, with
deploy/otel-collector.yaml as the collector's configuration, runs `sel-otel run sysinfo`
exporting OTLP/HTTP to the collector's mapped 4318 port, and finds the trace through Jaeger's
query API (`/api/v3`). Otherwise it skips, saying why.

Tail sampling keeps only a share of fast, successful traces (10 % by default), and this
call is exactly such a trace, so the test would pass or fail by chance. The configuration
reads that share (`SEL_TAIL_SAMPLE_PERCENT`) and the decision wait (`SEL_TAIL_DECISION_WAIT`)
from the collector's environment; the test sets them to 100 and 1s, which keeps the file
under test unchanged while making the outcome certain and quick. That error and slow traces
are kept whatever the share is checked by tests/test_deploy_config.py.

The first test needs no engine: it runs the same command against the loopback OTLP receiver,
so the command line and environment the stack test relies on are checked everywhere.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import cli_environment
from tests.docker_engine import use_docker_image
from tests.otlp_receiver import OtlpReceiver

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COLLECTOR_CONFIG = DEPLOY / "otel-collector.yaml"
COLLECTOR_CONFIG_IN_CONTAINER = "/etc/otelcol-contrib/config.yaml"

SERVICE_NAME = "sel-bot"
OPERATION = "invoke_agent sysinfo"


def _jaeger_image() -> str:
    compose = yaml.safe_load((DEPLOY / "jaeger-compose.yml").read_text())
    return str(compose["services"]["jaeger"]["image"])


def _collector_image() -> str:
    dockerfile = (DEPLOY / "otel-collector.Dockerfile").read_text()
    pinned = re.search(r"^ARG COLLECTOR_VERSION=(\S+)$", dockerfile, re.M)
    assert pinned, "deploy/otel-collector.Dockerfile pins no collector version"
    return f"otel/opentelemetry-collector-contrib:{pinned[1]}"


def _sel_otel() -> list[str]:
    script = Path(sys.executable).with_name("sel-otel")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sel_otel"]


def run_sysinfo(otlp_endpoint: str, environment: str) -> subprocess.CompletedProcess[str]:
    """`sel-otel run sysinfo`, exporting traces and metrics over OTLP/HTTP to the endpoint."""
    env = cli_environment(
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME=SERVICE_NAME,
        OTEL_RESOURCE_ATTRIBUTES=f"deployment.environment={environment}",
        SEL_CACHE_URL="memory://",
    )
    return subprocess.run(
        [*_sel_otel(), "run", "sysinfo"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli_call_exports_the_span_the_stack_test_searches_for(
    otlp_receiver: OtlpReceiver,
) -> None:
    environment = f"test-{uuid.uuid4().hex[:8]}"
    result = run_sysinfo(otlp_receiver.url, environment)
    assert result.returncode == 0, result.stderr

    (span,) = otlp_receiver.wait_for_spans(lambda s: s.name == OPERATION, timeout=10)
    assert span.attributes["gen_ai.agent.name"] == "sysinfo"
    assert span.attributes["sel.cache.hit"] is False
    assert span.resource["service.name"] == SERVICE_NAME
    assert span.resource["deployment.environment"] == environment
    (request,) = otlp_receiver.wait_for_spans(lambda s: s.name == "cli agent")
    assert (span.parent_span_id, request.parent_span_id) == (request.span_id, "")
    otlp_receiver.wait_for_metrics(lambda m: m.name == "gen_ai.client.operation.duration")


# -- the containerised stack -----------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    otlp_http_url: str  # the collector's OTLP/HTTP receiver, as mapped on the host
    jaeger_url: str  # Jaeger's UI and query API
    collector_metrics_url: str  # the collector's Prometheus exporter


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    for image in (_jaeger_image(), _collector_image()):
        use_docker_image(image, pull=True, purpose="the Jaeger and collector stack")
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network
    from testcontainers.core.wait_strategies import HttpWaitStrategy

    with contextlib.ExitStack() as cleanup:
        network = Network().create()
        cleanup.callback(network.remove)

        jaeger = (
            DockerContainer(_jaeger_image())
            .with_network(network)
            .with_network_aliases("jaeger")  # the host name in the collector's exporter
            .with_env("JAEGER_LISTEN_HOST", "0.0.0.0")
            .with_exposed_ports(16686, 13133)
            .waiting_for(HttpWaitStrategy(13133, "/status").with_startup_timeout(180))
        )
        cleanup.callback(jaeger.stop)
        jaeger.start()

        collector = (
            DockerContainer(_collector_image())
            .with_network(network)
            .with_network_aliases("otel-collector")
            # Copied rather than bind-mounted, so a remote engine works too; same file.
            .with_copy_into_container(COLLECTOR_CONFIG, COLLECTOR_CONFIG_IN_CONTAINER)
            .with_command(f"--config={COLLECTOR_CONFIG_IN_CONTAINER}")
            .with_envs(SEL_TAIL_SAMPLE_PERCENT="100", SEL_TAIL_DECISION_WAIT="1s")
            .with_exposed_ports(4318, 8889, 13133)
            .waiting_for(HttpWaitStrategy(13133, "/").with_startup_timeout(180))
        )
        cleanup.callback(collector.stop)
        collector.start()

        def url(container: Any, port: int) -> str:
            return f"http://{container.get_container_host_ip()}:{container.get_exposed_port(port)}"

        yield Stack(
            otlp_http_url=url(collector, 4318),
            jaeger_url=url(jaeger, 16686),
            collector_metrics_url=url(collector, 8889) + "/metrics",
        )


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _get_json(url: str) -> dict[str, Any] | None:
    """The decoded body, or None while Jaeger has nothing (it answers 404 to an empty search)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 404:
            return None
        raise


def _value(any_value: dict[str, Any]) -> Any:
    """An OTLP/JSON AnyValue as a Python value (int64 arrive as strings)."""
    for key, convert in (
        ("stringValue", str),
        ("boolValue", bool),
        ("intValue", int),
        ("doubleValue", float),
    ):
        if key in any_value:
            return convert(any_value[key])
    return any_value or None


def _attributes(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {item["key"]: _value(item.get("value", {})) for item in items or ()}


def find_span_in_jaeger(
    jaeger_url: str, environment: str, since: datetime, timeout: float
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Poll `/api/v3/traces` until the agent span of this run appears.

    Returns (span, span attributes, resource attributes); the run is told apart from any
    other by its `deployment.environment` resource attribute.
    """
    deadline = time.monotonic() + timeout
    while True:
        query = urllib.parse.urlencode(
            {
                "query.service_name": SERVICE_NAME,
                "query.operation_name": OPERATION,
                "query.start_time_min": _rfc3339(since),
                "query.start_time_max": _rfc3339(datetime.now(UTC) + timedelta(minutes=1)),
                "query.search_depth": 20,
            }
        )
        body = _get_json(f"{jaeger_url}/api/v3/traces?{query}") or {}
        for resource_spans in (body.get("result") or {}).get("resourceSpans") or ():
            resource = _attributes(resource_spans.get("resource", {}).get("attributes"))
            if resource.get("deployment.environment") != environment:
                continue
            for scope_spans in resource_spans.get("scopeSpans") or ():
                for span in scope_spans.get("spans") or ():
                    if span.get("name") == OPERATION:
                        return span, _attributes(span.get("attributes")), resource
        if time.monotonic() > deadline:
            raise AssertionError(f"no {OPERATION!r} trace for {environment} in Jaeger: {body}")
        time.sleep(1)


@pytest.mark.timeout(600)  # the first run pulls both images
def test_a_cli_agent_call_is_found_in_jaeger_through_the_collector(stack: Stack) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    environment = f"stack-{uuid.uuid4().hex[:8]}"

    result = run_sysinfo(stack.otlp_http_url, environment)
    assert result.returncode == 0, result.stderr

    span, attributes, resource = find_span_in_jaeger(
        stack.jaeger_url, environment, since, timeout=90
    )
    assert attributes["gen_ai.agent.name"] == "sysinfo"
    assert attributes["gen_ai.operation.name"] == "invoke_agent"
    assert "sel.cache.hit" in attributes and attributes["sel.cache.hit"] is not True
    assert resource["service.name"] == SERVICE_NAME
    assert len(span["traceId"]) == 32
    assert span.get("kind") in (1, "SPAN_KIND_INTERNAL")

    # The metrics pipeline of the same collector serves the call's histogram to Prometheus.
    with urllib.request.urlopen(stack.collector_metrics_url, timeout=5) as response:
        exposition = response.read().decode()
    assert re.search(r"gen_ai[._]client[._]operation[._]duration", exposition)
