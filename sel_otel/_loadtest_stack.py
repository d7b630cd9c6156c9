"""The load test's Docker stack (`--cache docker`): the deployment, in containers.

```
                 network front (published ports, loopback only)
loadtest ──HTTP──► sel-0 … sel-N-1   (sel-otel serve, the app image)
                      │  network back (created for the run)
                      ├──► redis       (the project's Redis image; the shared cache)
                      ├──► hostexec    (sel-otel host-exec, the app image)
                      └──► collector   (rotel, OTLP over HTTP)
```

Redis, the collector and the host-exec service are testcontainers containers on a network of
the run's own; each instance is created on a second network of the run's (where its port is
published, on 127.0.0.1) and joined to the first, so `instance-cut` can take it off Redis's
network while the load test still reaches it. The work agent's directory is mounted into
every instance (read-only), so its faults act on all of them. User i calls instance i mod N.
Everything is removed at the end, networks included. The images are the project's own,
built by `scripts/docker-setup.sh`; none is pulled.

The collector drops what it receives, unless the stack is made with `trace_log=True`: then it
also prints every span it receives (rotel's detailed debug log, on its standard output), and
`Stack.received_spans()` reads them back, so a test can see what arrived at the collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ._exceptions import ConfigError
from ._loadtest import CallResult, LoadPlan, Outcome
from ._loadtest_agent import WorkAgent
from ._loadtest_faults import Fault
from ._loadtest_local import Environment, run_namespace, stats_calls_of

#: Seconds a container has to become ready.
READY_TIMEOUT = 60
#: Seconds a call over HTTP may take (the work agent's timeout is 2 s).
CALL_TIMEOUT = 10.0
PORT = 8080
HOST_EXEC_PORT = 8765
#: Variables of this process passed on to the instances (sampling, say).
PASSED_ON = ("OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "SEL_LOG_LEVEL")
#: The collector's command: OTLP over gRPC and HTTP, dropped (the image's default command).
COLLECTOR_COMMAND = (
    "--otlp-grpc-endpoint", "0.0.0.0:4317", "--otlp-http-endpoint", "0.0.0.0:4318",
    "--exporter", "blackhole",
)  # fmt: skip
#: Added to it to print every span received, with its ids and resource, on standard output.
COLLECTOR_TRACE_LOG = ("--debug-log", "traces", "--debug-log-verbosity", "detailed")


@dataclass(frozen=True)
class ReceivedSpan:
    """A span as the collector printed it: ids in hex, `parent_id` empty for a root."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str  # SPAN_KIND_SERVER, SPAN_KIND_CLIENT...
    resource: dict[str, str]  # its string attributes: service.name, service.instance.id...


#: rotel's detailed debug log (the OpenTelemetry Collector's debug exporter format).
_RESOURCE_START = re.compile(r"^ResourceSpans #")
_RESOURCE_ATTRIBUTES = re.compile(r"^Resource attributes:")
_SCOPE_START = re.compile(r"^ScopeSpans #")
_SPAN_START = re.compile(r"^Span #")
_ATTRIBUTE = re.compile(r"^\s+-> ([^:]+): Str\((.*)\)$")
_SPAN_FIELD = re.compile(r"^\s+(Trace ID|Parent ID|ID|Name|Kind)\s*: ?(.*)$")
_SPAN_FIELDS = {
    "Trace ID": "trace_id",
    "Parent ID": "parent_id",
    "ID": "span_id",
    "Name": "name",
    "Kind": "kind",
}


def parse_trace_log(text: str) -> list[ReceivedSpan]:
    """The spans of a collector's detailed trace debug log, in the order printed (other lines,
    its own log among them, are skipped)."""
    spans: list[ReceivedSpan] = []
    resource: dict[str, str] = {}
    fields: dict[str, str] | None = None
    in_resource = False

    def finish() -> None:
        if fields is not None and len(fields) == len(_SPAN_FIELDS):
            spans.append(ReceivedSpan(**fields, resource=dict(resource)))

    for line in text.splitlines():
        if _RESOURCE_START.match(line):
            finish()
            fields, resource, in_resource = None, {}, False
        elif _RESOURCE_ATTRIBUTES.match(line):
            in_resource = True
        elif _SCOPE_START.match(line):
            finish()
            fields, in_resource = None, False
        elif _SPAN_START.match(line):
            finish()
            fields = {}
        elif in_resource and (attribute := _ATTRIBUTE.match(line)):
            resource[attribute[1]] = attribute[2]
        elif fields is not None and (field := _SPAN_FIELD.match(line)):
            fields.setdefault(_SPAN_FIELDS[field[1]], field[2].strip())
    finish()
    return spans


@dataclass(frozen=True)
class Images:
    """The project's images the stack runs (scripts/docker-setup.sh builds them)."""

    app: str = "sel-otel/app:test"
    redis: str = "sel-otel/redis:test"
    collector: str = "sel-otel/collector:test"


class StackTarget:
    """The instances of the stack, over HTTP on their loopback-published ports, with the
    token they ask of a reload (`SEL_SERVE_TOKEN`)."""

    def __init__(self, urls: list[str], token: str) -> None:
        self.urls = urls
        self.client = httpx.AsyncClient(
            timeout=CALL_TIMEOUT,
            limits=httpx.Limits(max_connections=200),
            headers={"Authorization": f"Bearer {token}"},
        )

    async def request(self, instance: int, text: str, user: str | None = None) -> dict[str, Any]:
        response = await self.client.post(
            f"{self.urls[instance]}/request", json={"text": text, "user": user}
        )
        response.raise_for_status()
        reply: dict[str, Any] = response.json()
        return reply

    async def call(self, agent: str, query: str, user: str) -> CallResult:
        instance = int(user.rpartition("-")[2]) % len(self.urls)
        try:
            reply = await self.request(instance, f"agent:{agent} {query}", user)
        except httpx.HTTPError as exc:  # the instance did not answer: it never saw the call
            return CallResult(Outcome.FAILED, type(exc).__name__, reached=False)
        if not reply["ok"]:
            return CallResult(Outcome.FAILED, reply["error_type"] or "refused")
        if reply["cached"]:
            return CallResult(Outcome.HIT)
        return CallResult(Outcome.COALESCED if reply["coalesced"] else Outcome.MISS)

    async def stats_calls(self) -> int:
        """Each instance's own calls (`scope:this`), added up."""
        replies = await asyncio.gather(
            *(self.request(i, "/sel_agent_stats scope:this") for i in range(len(self.urls)))
        )
        return sum(stats_calls_of(reply["text"]) for reply in replies)

    async def reload(self) -> None:
        """Reload the agents of every instance; raises naming those that could not."""
        outcomes = await asyncio.gather(
            *(self.request(i, "/sel_agent_reload") for i in range(len(self.urls))),
            return_exceptions=True,
        )
        failed = [
            f"{url} ({type(outcome).__name__})"
            for url, outcome in zip(self.urls, outcomes, strict=True)
            if isinstance(outcome, BaseException)
        ]
        if failed:
            raise ConfigError(f"reload not done by {', '.join(failed)}")


def configure_testcontainers() -> None:
    """What TESTCONTAINERS_RYUK_DISABLED=true, TESTCONTAINERS_CONNECTION_MODE=docker_host and,
    for a local engine, TC_HOST=127.0.0.1 say, except where the environment sets them:

    - no Ryuk: its image would have to be pulled; the stack (and every test) removes its own
      containers;
    - containers are reached at their ports as published on the engine's host, which
      scripts/docker-setup.sh starts with `--ip 127.0.0.1` (loopback only). Left to itself,
      testcontainers sees /.dockerenv on such a machine and goes through the bridge gateway.

    Set on testcontainers' configuration object, which read the environment when imported.
    """
    from testcontainers.core.config import ConnectionMode
    from testcontainers.core.config import testcontainers_config as config

    if "TESTCONTAINERS_RYUK_DISABLED" not in os.environ:
        config.ryuk_disabled = True
    if config.connection_mode_override is None:
        config.connection_mode_override = ConnectionMode.docker_host
    docker_host = urllib.parse.urlparse(os.environ.get("DOCKER_HOST", "unix://"))
    if config.tc_host_override is None and docker_host.scheme == "unix":
        config.tc_host_override = "127.0.0.1"


class Stack:
    """The containers and networks of one run; `up` starts them, `down` removes them all."""

    def __init__(
        self,
        images: Images,
        instances: int,
        agents: Path,
        namespace: str,
        *,
        trace_log: bool = False,
    ) -> None:
        import docker

        self.images = images
        self.trace_log = trace_log
        self.count = instances
        self.agents = agents
        self.namespace = namespace
        self.token = secrets.token_urlsafe(24)
        #: What the instances ask of a reload (`sel-otel serve`'s SEL_SERVE_TOKEN).
        self.serve_token = secrets.token_urlsafe(24)
        self.client = docker.from_env()
        self.label = {"org.sel-otel.loadtest": namespace}
        self._cleanup: list[Callable[[], object]] = []
        self.instances: list[Any] = []
        self.back: Any = None
        self.redis: Any = None
        self.collector: Any = None
        self.hostexec: Any = None

    def up(self) -> list[str]:
        """Start everything; the instances' base URLs once each answers /health."""
        import docker.errors
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.network import Network
        from testcontainers.core.wait_strategies import LogMessageWaitStrategy

        for image in (self.images.app, self.images.redis, self.images.collector):
            try:
                self.client.images.get(image)
            except docker.errors.ImageNotFound:
                raise ConfigError(
                    f"--cache docker: image {image} is not built (sh scripts/docker-setup.sh)"
                ) from None
        configure_testcontainers()
        # Internal: no way out of it, and never an instance's gateway, so published ports go
        # through the front network whatever happens to this one.
        back = Network(docker_network_kw={"labels": self.label, "internal": True}).create()
        self._cleanup.append(back.remove)
        self.back = self.client.networks.get(back.name)
        front = self.client.networks.create(f"sel-loadtest-{self.namespace}", labels=self.label)
        self._cleanup.append(front.remove)

        def started(container: Any, alias: str, message: str) -> Any:
            container.with_network(back)
            container.with_network_aliases(alias)
            container.with_kwargs(labels=self.label)
            container.waiting_for(
                LogMessageWaitStrategy(message).with_startup_timeout(READY_TIMEOUT)
            )
            self._cleanup.append(container.stop)
            container.start()
            return container.get_wrapped_container()

        self.redis = started(
            DockerContainer(self.images.redis), "redis", "Ready to accept connections"
        )
        collector = DockerContainer(self.images.collector)
        if self.trace_log:
            collector.with_command([*COLLECTOR_COMMAND, *COLLECTOR_TRACE_LOG])
        self.collector = started(collector, "collector", "Starting Rotel")
        hostexec = DockerContainer(self.images.app).with_command("host-exec")
        hostexec.with_env("HOST_EXEC_HOST", "0.0.0.0").with_env("HOST_EXEC_TOKEN", self.token)
        hostexec.with_env("HOST_EXEC_PORT", str(HOST_EXEC_PORT))
        hostexec.with_env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
        hostexec.with_env("OTEL_SERVICE_NAME", "sel-host-exec")
        self.hostexec = started(hostexec, "hostexec", "host-exec listens beyond loopback")
        self.instances = [self._instance(index, front) for index in range(self.count)]
        return [self._ready(container) for container in self.instances]

    def _instance(self, index: int, front: Any) -> Any:
        passed = {name: os.environ[name] for name in PASSED_ON if name in os.environ}
        container = self.client.containers.create(
            self.images.app,
            ["serve", "--host", "0.0.0.0", "--port", str(PORT)],
            name=f"sel-loadtest-{self.namespace}-{index}",
            environment={
                "SEL_CACHE_URL": "redis://redis:6379/0",
                "SEL_CACHE_NAMESPACE": self.namespace,
                "SEL_AGENTS_DIR": "/agents",
                "SEL_DATA_DIR": "/tmp/sel-otel",
                "SEL_STATS_PUBLISH_INTERVAL": "1",
                "HOST_EXEC_URL": f"http://hostexec:{HOST_EXEC_PORT}",
                "HOST_EXEC_TOKEN": self.token,
                "SEL_SERVE_TOKEN": self.serve_token,
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
                "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id=sel-{index}",
                **passed,
            },
            ports={f"{PORT}/tcp": ("127.0.0.1", None)},
            network=front.name,
            volumes={str(self.agents): {"bind": "/agents", "mode": "ro"}},
            labels=self.label,
        )
        self._cleanup.append(lambda: container.remove(force=True))
        self.back.connect(container, aliases=[f"sel-{index}"])
        container.start()
        return container

    def _ready(self, container: Any) -> str:
        """The base URL of an instance once it answers /health."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            container.reload()
            if container.status == "exited":
                logs = container.logs(tail=20).decode(errors="replace")
                raise ConfigError(f"instance {container.name} exited:\n{logs}")
            bindings = container.ports.get(f"{PORT}/tcp")
            if bindings:
                url = f"http://127.0.0.1:{bindings[0]['HostPort']}"
                try:
                    if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
            if time.monotonic() > deadline:
                raise ConfigError(f"instance {container.name} not ready in {READY_TIMEOUT:g} s")
            time.sleep(0.1)

    def received_spans(self) -> list[ReceivedSpan]:
        """The spans the collector has received so far (a stack made with `trace_log`)."""
        if not self.trace_log:
            raise ConfigError("the collector prints what it receives only with trace_log=True")
        return parse_trace_log(self.collector.logs(stderr=False).decode(errors="replace"))

    def down(self) -> None:
        """Remove every container and network of the run, the last made first."""
        while self._cleanup:
            with contextlib.suppress(Exception):  # already gone: removed is what we want
                self._cleanup.pop()()
        self.client.close()


@contextlib.asynccontextmanager
async def docker_environment(
    plan: LoadPlan, *, instances: int, work_ms: float, images: Images = Images()
) -> AsyncIterator[Environment]:
    """The stack, for a load run: its target and its faults; removed at the end."""
    try:
        import docker.errors
        import testcontainers  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"--cache docker needs {exc.name}: pip install 'sel-otel[load]'"
        ) from None
    with tempfile.TemporaryDirectory(prefix="sel-loadtest-") as scratch:
        agents = Path(scratch) / "agents"
        agents.mkdir()
        for directory in (Path(scratch), agents):
            directory.chmod(0o755)  # the instances' user reads the work agent
        work = WorkAgent(agents, work_ms)
        work.write()
        namespace = run_namespace()
        try:
            stack = await asyncio.to_thread(Stack, images, instances, agents, namespace)
        except Exception as exc:
            raise ConfigError(f"--cache docker: no Docker engine answers ({exc})") from None
        try:
            try:
                urls = await asyncio.to_thread(stack.up)
            except (RuntimeError, OSError, docker.errors.DockerException) as exc:
                raise ConfigError(f"--cache docker: the stack did not start: {exc}") from exc
            target = StackTarget(urls, stack.serve_token)
            try:
                yield Environment(
                    target,
                    f"{instances} instances on one Redis (docker)",
                    _stack_faults(stack, target, work),
                )
            finally:
                await target.client.aclose()
        finally:
            await asyncio.shield(asyncio.to_thread(stack.down))


def _stack_faults(stack: Stack, target: StackTarget, work: WorkAgent) -> dict[str, Fault]:
    def blocking(call: Callable[[], object]) -> Callable[[], Any]:
        return lambda: asyncio.to_thread(call)

    first = stack.instances[0]

    def restart_first() -> None:
        first.start()
        target.urls[0] = stack._ready(first)

    return {
        **work.faults(target.reload, "hot-reloaded everywhere"),
        "redis-pause": Fault(
            "docker pause of Redis, then unpause",
            blocking(stack.redis.pause),
            blocking(stack.redis.unpause),
        ),
        "redis-kill": Fault(
            "Redis killed, then started again, empty",
            blocking(stack.redis.kill),
            blocking(stack.redis.start),
        ),
        "collector-down": Fault(
            "the OTLP collector stopped, then started again",
            blocking(lambda: stack.collector.stop(timeout=1)),
            blocking(stack.collector.start),
        ),
        "hostexec-restart": Fault(
            "the host-exec service stopped, then started again",
            blocking(lambda: stack.hostexec.stop(timeout=1)),
            blocking(stack.hostexec.start),
        ),
        "instance-kill": Fault(
            "instance 0 killed, then started again",
            blocking(first.kill),
            blocking(restart_first),
        ),
        "instance-cut": Fault(
            "instance 0 disconnected from the back network (Redis, collector), then joined",
            blocking(lambda: stack.back.disconnect(first)),
            blocking(lambda: stack.back.connect(first, aliases=["sel-0"])),
        ),
    }
