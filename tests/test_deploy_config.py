"""deploy/ is consistent by construction: checked by parsing, as no engine or validator runs here.

The collector configuration, the compose file and the Dockerfiles must agree on names, ports
and health checks; a mismatch would only show up as a stack that starts and sees nothing.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COLLECTOR_CONFIG = DEPLOY / "otel-collector.yaml"
COMPOSE = DEPLOY / "jaeger-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
COLLECTOR_DOCKERFILE = DEPLOY / "otel-collector.Dockerfile"

_ENV_REF = re.compile(r"\$\{env:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|PRIVATE_KEY|CREDENTIAL", re.I)


def _resolve(node: Any, env: Mapping[str, str]) -> Any:
    """Expand the collector's `${env:NAME:-default}` references as the collector would."""
    if isinstance(node, dict):
        return {key: _resolve(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(value, env) for value in node]
    if isinstance(node, str):
        whole = _ENV_REF.fullmatch(node)
        if whole:  # a value that is only a reference takes the type of what it expands to
            raw = env.get(whole["name"], whole["default"])
            assert raw is not None, f"{whole['name']} has no default in {node!r}"
            return yaml.safe_load(raw)

        def expand(match: re.Match[str]) -> str:
            value = env.get(match["name"], match["default"])
            assert value is not None, f"{match['name']} has no default in {node!r}"
            return value

        return _ENV_REF.sub(expand, node)
    return node


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    config: dict[str, Any] = _resolve(yaml.safe_load(COLLECTOR_CONFIG.read_text()), env={})
    return config


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return config


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    named: dict[str, dict[str, Any]] = compose["services"]
    return named


def _pipelines(collector: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield from collector["service"]["pipelines"].items()


def _env(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def _container_ports(service: Mapping[str, Any]) -> set[int]:
    """Ports a service listens on for others: `expose` plus the container side of `ports`."""
    ports = {int(str(port).split("/")[0]) for port in service.get("expose", ())}
    for mapping in service.get("ports", ()):
        container = str(mapping).rsplit(":", 1)[-1]
        ports.add(int(container.split("/")[0]))
    return ports


def _published_ports(service: Mapping[str, Any]) -> set[int]:
    return {int(str(m).rsplit(":", 1)[-1].split("/")[0]) for m in service.get("ports", ())}


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def _service_named(services: Mapping[str, Any], host: str) -> dict[str, Any]:
    assert host in services, f"{host!r} is not a compose service ({sorted(services)})"
    service: dict[str, Any] = services[host]
    return service


def _depends(service: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return {name: {"condition": "service_started"} for name in depends}
    return depends


def _healthcheck_command(service: Mapping[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else str(test)


# -- the collector configuration -------------------------------------------------------------


def test_every_component_in_a_pipeline_or_the_extensions_is_defined(
    collector: dict[str, Any],
) -> None:
    for name, pipeline in _pipelines(collector):
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, ()):
                assert component in (collector.get(kind) or {}), f"{name}: {kind} {component}"
        assert pipeline["receivers"] and pipeline["exporters"], name
    for extension in collector["service"].get("extensions", ()):
        assert extension in collector["extensions"], extension


def test_every_defined_component_is_used(collector: dict[str, Any]) -> None:
    used = {
        kind: {c for _, pipeline in _pipelines(collector) for c in pipeline.get(kind, ())}
        for kind in ("receivers", "processors", "exporters")
    }
    for kind, names in used.items():
        assert set(collector[kind]) == names, f"unused {kind}: {set(collector[kind]) - names}"
    assert set(collector["extensions"]) == set(collector["service"]["extensions"])


def test_memory_limiter_is_first_in_every_pipeline(collector: dict[str, Any]) -> None:
    pipelines = dict(_pipelines(collector))
    assert {"traces", "metrics"} <= set(pipelines)
    for name, pipeline in pipelines.items():
        assert pipeline["processors"][0] == "memory_limiter", name
    limiter = collector["processors"]["memory_limiter"]
    assert 0 < limiter["spike_limit_mib"] < limiter["limit_mib"]


def test_traces_are_tail_sampled_keeping_errors_slow_traces_and_a_share(
    collector: dict[str, Any],
) -> None:
    traces = collector["service"]["pipelines"]["traces"]
    assert "tail_sampling" in traces["processors"]
    policies = {p["type"]: p for p in collector["processors"]["tail_sampling"]["policies"]}
    assert policies["status_code"]["status_code"]["status_codes"] == ["ERROR"]
    assert 0 < policies["latency"]["latency"]["threshold_ms"] <= 1000
    assert 0 < policies["probabilistic"]["probabilistic"]["sampling_percentage"] < 100
    # no policy that keeps everything (it would make the others pointless)
    assert "always_sample" not in policies


def test_the_sample_share_and_decision_wait_can_be_set_from_the_environment() -> None:
    raw = yaml.safe_load(COLLECTOR_CONFIG.read_text())
    tuned = _resolve(raw, env={"SEL_TAIL_SAMPLE_PERCENT": "100", "SEL_TAIL_DECISION_WAIT": "1s"})
    sampling = tuned["processors"]["tail_sampling"]
    (share,) = (p for p in sampling["policies"] if p["type"] == "probabilistic")
    assert share["probabilistic"]["sampling_percentage"] == 100
    assert sampling["decision_wait"] == "1s"


def test_batching_is_done_in_the_exporters_sending_queue(collector: dict[str, Any]) -> None:
    for name, pipeline in _pipelines(collector):
        assert "batch" not in pipeline["processors"], f"{name} uses the batch processor"
    queue = collector["exporters"]["otlp_grpc/jaeger"]["sending_queue"]
    assert queue["enabled"] is True
    assert queue["sizer"] in ("items", "bytes")
    batch = queue["batch"]
    assert batch["flush_timeout"]
    assert batch["min_size"] <= batch["max_size"]
    assert batch.get("sizer", queue["sizer"]) != queue["sizer"] or (
        batch["min_size"] <= queue["queue_size"]
    )


def test_otlp_receivers_listen_on_4317_and_4318_on_every_interface(
    collector: dict[str, Any],
) -> None:
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"


# -- the compose file against the collector configuration ------------------------------------


def test_every_otlp_endpoint_in_compose_is_a_collector_port_that_the_collector_service_opens(
    collector: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    receiver_ports = {
        protocol: _port(settings["endpoint"])
        for protocol, settings in collector["receivers"]["otlp"]["protocols"].items()
    }
    exporting = {name: _env(s) for name, s in services.items() if "OTLP_ENDPOINT" in str(_env(s))}
    assert {"bot", "host-exec"} <= set(exporting)
    for name, env in exporting.items():
        url = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        expected_port = receiver_ports["grpc" if protocol == "grpc" else "http"]
        assert url.scheme == "http" and url.port == expected_port, name
        assert url.path in ("", "/"), f"{name}: the SDK appends /v1/<signal> itself"
        collector_service = _service_named(services, url.hostname or "")
        assert "opentelemetry-collector-contrib" in (
            collector_service.get("image", "") + COLLECTOR_DOCKERFILE.read_text()
        )
        assert expected_port in _container_ports(collector_service)
        assert set(receiver_ports.values()) <= _published_ports(collector_service)


def test_the_jaeger_exporter_targets_the_jaeger_service_on_an_otlp_port_it_listens_on(
    collector: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    exporter = collector["exporters"]["otlp_grpc/jaeger"]
    host, port = exporter["endpoint"].rsplit(":", 1)
    jaeger = _service_named(services, host)
    assert jaeger["image"].startswith("jaegertracing/jaeger:")
    assert int(port) == 4317  # Jaeger v2's OTLP gRPC receiver
    assert int(port) in _container_ports(jaeger)
    assert exporter["tls"]["insecure"] is True  # plain gRPC inside the compose network
    assert "jaeger" in _depends(services["otel-collector"])


def test_the_collector_service_mounts_this_configuration_and_checks_its_health(
    collector: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    service = services["otel-collector"]
    (mount,) = [v for v in service["volumes"] if v.startswith("./otel-collector.yaml:")]
    target = mount.split(":")[1]
    assert f"--config={target}" in service["command"]
    health_port = _port(collector["extensions"]["health_check"]["endpoint"])
    assert f"127.0.0.1:{health_port}/" in _healthcheck_command(service)
    # the official image has no shell; the health check runs the busybox copied in
    assert _healthcheck_command(service).startswith("CMD /busybox wget")
    assert "COPY --from=busybox /bin/busybox /busybox" in COLLECTOR_DOCKERFILE.read_text()
    assert service["build"]["dockerfile"] == COLLECTOR_DOCKERFILE.name
    prometheus_port = _port(collector["exporters"]["prometheus"]["endpoint"])
    assert prometheus_port == 8889
    assert prometheus_port in _published_ports(service)


def test_images_are_pinned_and_jaeger_is_v2(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image = service["image"]
        # a version number, with the "v" some projects (Prometheus) prefix their tags with
        assert re.fullmatch(r"[\w./-]+:v?\d+(\.\d+)+[\w.-]*", image), f"{name}: {image} unpinned"
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", services["jaeger"]["image"])
    assert "COLLECTOR_OTLP_ENABLED" not in _env(services["jaeger"])  # a v1 setting
    pinned = re.search(
        r"^ARG COLLECTOR_VERSION=(\d+\.\d+\.\d+)$", COLLECTOR_DOCKERFILE.read_text(), re.M
    )
    assert pinned, "the collector image is not pinned"
    collector_service = services["otel-collector"]
    assert collector_service["build"]["args"]["COLLECTOR_VERSION"] == pinned[1]
    assert collector_service["image"].endswith(":" + pinned[1])


def test_services_wait_only_for_dependencies_that_have_a_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    waited = 0
    for name, service in services.items():
        for dependency, how in _depends(service).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if how.get("condition") == "service_healthy":
                waited += 1
                assert "healthcheck" in services[dependency], f"{name} → {dependency}"
    assert waited >= 5
    for name in ("jaeger", "otel-collector", "redis", "host-exec"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    assert "/healthz" in _healthcheck_command(services["host-exec"])
    assert "redis-cli ping" in _healthcheck_command(services["redis"])
    assert ":13133/status" in _healthcheck_command(services["jaeger"])


def test_the_bot_reaches_redis_host_exec_and_names_itself(
    services: dict[str, dict[str, Any]],
) -> None:
    bot, host_exec = services["bot"], services["host-exec"]
    env = _env(bot)
    cache = urlsplit(env["SEL_CACHE_URL"])
    assert cache.scheme == "redis" and cache.port == 6379
    assert 6379 in _container_ports(_service_named(services, cache.hostname or ""))
    exec_url = urlsplit(env["HOST_EXEC_URL"])
    assert _service_named(services, exec_url.hostname or "") is host_exec
    assert exec_url.port == int(_env(host_exec)["HOST_EXEC_PORT"])
    assert exec_url.port in _container_ports(host_exec)
    assert f":{exec_url.port}/healthz" in _healthcheck_command(host_exec)
    assert _env(host_exec)["HOST_EXEC_HOST"] == "0.0.0.0"
    assert host_exec["command"] == ["host-exec"] and bot["command"] == ["bot"]
    assert env["OTEL_SERVICE_NAME"] == "sel-bot"
    assert _env(host_exec)["OTEL_SERVICE_NAME"] != "sel-bot"
    for service in (bot, host_exec):
        assert _env(service)["OTEL_RESOURCE_ATTRIBUTES"].startswith("deployment.environment=")
        assert {"otel-collector"} <= set(_depends(service))
    assert {"redis", "host-exec"} <= set(_depends(bot))


# -- secrets ---------------------------------------------------------------------------------


def _env_example() -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in (DEPLOY / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )


def test_no_secret_is_written_in_compose_and_tokens_come_from_deploy_env(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    example = _env_example()
    assert {"DISCORD_TOKEN", "HOST_EXEC_TOKEN"} <= set(example)
    assert all(value == "" for key, value in example.items() if _SECRET_NAME.search(key))
    secrets = compose.get("secrets") or {}
    for name, service in services.items():
        granted = set(service.get("secrets", ()))
        for key, value in _env(service).items():
            if not _SECRET_NAME.search(key):
                continue
            if key.endswith("_FILE"):  # a compose secret, sourced from deploy/.env
                secret = value.removeprefix("/run/secrets/")
                assert value.startswith("/run/secrets/") and secret in granted, (name, key)
                assert secrets[secret]["environment"] in example, (name, key)
            else:  # one variable of deploy/.env, interpolated by compose
                reference = re.fullmatch(r"\$\{(\w+)(:-)?\}", value)
                assert reference and reference[1] == key, f"{name} sets {key}"
                assert key in example, f"{name}: {key} is not in .env.example"
        assert "env_file" not in service, f"{name} would get every secret of deploy/.env"


def test_the_host_exec_token_reaches_both_ends_as_a_file_not_an_environment_variable(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert compose["secrets"]["host_exec_token"] == {"environment": "HOST_EXEC_TOKEN"}
    for name in ("host-exec", "bot"):
        env = _env(services[name])
        assert "HOST_EXEC_TOKEN" not in env, name
        assert env["HOST_EXEC_TOKEN_FILE"] == "/run/secrets/host_exec_token", name
        assert services[name]["secrets"] == ["host_exec_token"], name


def test_the_real_env_file_is_never_committed_nor_sent_to_a_build() -> None:
    assert "deploy/.env" in (ROOT / ".gitignore").read_text().split()
    assert "deploy/.env" in (ROOT / ".dockerignore").read_text().split()
    assert (DEPLOY / ".dockerignore").read_text().split("\n")[-2:] == ["*", ""]


# -- the image -------------------------------------------------------------------------------


def test_the_dockerfile_installs_the_project_with_pip_and_runs_sel_otel() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.1[12]-slim[\w-]*$", text, re.M)
    assert "COPY pyproject.toml README.md constraints.txt ./" in text
    assert "COPY sel_otel ./sel_otel" in text
    assert re.search(r"^RUN pip install -c constraints\.txt \.$", text, re.M)
    assert "constraints.txt" not in (ROOT / ".dockerignore").read_text().split()
    assert 'ENTRYPOINT ["sel-otel"]' in text
    assert 'CMD ["bot"]' in text
    assert re.search(r"^USER \w+", text, re.M), "runs as root"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'sel-otel = "sel_otel._entry:main"' in pyproject  # the entrypoint the image calls


def test_constraints_pin_every_requirement_within_its_range() -> None:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = [Requirement(text) for text in [*project["dependencies"], *extras["test"]]]
    # An extra that names the project itself ("sel-otel[load]") brings that extra's requirements.
    own = [r for r in requirements if canonicalize_name(r.name) == project["name"]]
    requirements = [r for r in requirements if r not in own]
    requirements += [Requirement(text) for r in own for extra in r.extras for text in extras[extra]]
    for requirement in requirements:
        pinned = pins.get(canonicalize_name(requirement.name))
        assert pinned is not None, f"constraints.txt does not pin {requirement.name}"
        assert requirement.specifier.contains(pinned, prereleases=True), (requirement, pinned)
