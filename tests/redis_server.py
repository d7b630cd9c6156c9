"""Real Redis servers for tests: a local `redis-server` process, or a testcontainers container.

`redis_server` starts the Debian `redis-server` on a free 127.0.0.1 port, in a temporary
directory, without persistence (`--save "" --appendonly no`), and kills it at teardown. The
`RedisServer` it yields can `kill()` it (SIGKILL), `start()` it again on the same port, and
`pause()` / `resume()` it (SIGSTOP / SIGCONT) to play a stalled server. Without
`redis-server` on PATH the fixture skips, saying so.

`raw` is a plain redis-py client of that server, to plant values as anyone who can reach the
database could; `redis_caches` makes result caches on it, each one playing an instance.

`redis_container_url` runs testcontainers' `RedisContainer` on the project's Redis image
(`sel-otel/redis:test`, or `SEL_TEST_REDIS_IMAGE`; scripts/docker-setup.sh builds it from
Debian's `redis-server`) where a Docker engine has it, and skips with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from sel_otel import ResultCache, Settings
from sel_otel._redis_cache import RedisResultBackend
from tests.conftest import free_port
from tests.docker_engine import project_image, use_docker_image
from tests.processes import state
from tests.waiting import block_until

REDIS_SERVER = shutil.which("redis-server")
#: The operation timeout of the caches `redis_caches` makes: SEL_CACHE_TIMEOUT's default.
CACHE_TIMEOUT = 0.25
#: Their breaker's pause: long enough that a breaker opened by a test stays open for the rest
#: of it.
CACHE_RETRY_AFTER = 60.0

CacheFactory = Callable[..., ResultCache]


class RedisServer:
    """One `redis-server` process on a fixed loopback port that can be killed and restarted."""

    def __init__(
        self, directory: Path, *, password: str | None = None, options: Sequence[str] = ()
    ) -> None:
        assert REDIS_SERVER is not None
        self.directory = directory
        self.password = password
        self.options = list(options)  # more of redis-server's command-line options
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (again) on its port and wait until it answers PING."""
        assert self.process is None, "already running"
        command = [
            str(REDIS_SERVER),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        command += self.options
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                self.kill()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")
            time.sleep(0.01)

    def ping(self) -> bool:
        """True when the server answers PING (or asks for the password) within 0.5 s."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                reply = conn.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def kill(self) -> None:
        """SIGKILL the server and reap it; its data is gone (no persistence)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGCONT)  # a stopped process still dies, but reap
            self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP, and wait until the process is stopped: connections stay open, and what is
        sent from now on waits in its socket unanswered."""
        assert self.process is not None
        pid = self.process.pid
        os.kill(pid, signal.SIGSTOP)
        block_until(lambda: state(pid) == "T", "redis-server to stop")

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A fresh `redis-server` on a free loopback port, killed at teardown."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def redis_caches(redis_server: RedisServer) -> AsyncIterator[CacheFactory]:
    """Result caches on the test's Redis, closed at the end: `make(namespace, max_output=...,
    near_entries=..., **cache options)`, with the timeout and breaker pause above unless
    options say otherwise, and no near copies unless `near_entries` asks for them."""
    caches: list[ResultCache] = []

    def make(
        namespace: str,
        *,
        max_output: int = Settings.agent_max_output,
        near_entries: int = 0,
        **options: Any,
    ) -> ResultCache:
        backend = RedisResultBackend.from_url(
            redis_server.url,
            timeout=CACHE_TIMEOUT,
            max_output=max_output,
            near_prefix=f"{namespace}:",
            near_entries=near_entries,
        )
        options.setdefault("retry_after", CACHE_RETRY_AFTER)
        cache = ResultCache(backend, namespace=namespace, **options)
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        await cache.close()


@pytest.fixture(scope="session")
def redis_container_url() -> Iterator[str]:
    """The URL of a Redis in a testcontainers container (skips without the engine or image)."""
    image = project_image("redis")
    use_docker_image(image, pull=False, purpose="testcontainers' Redis")
    try:  # testcontainers >= 4.14 moved the module and deprecates the old path
        from testcontainers.community.redis import RedisContainer
    except ImportError:
        from testcontainers.redis import RedisContainer

    with RedisContainer(image) as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(container.port)
        yield f"redis://{host}:{port}/0"


# -- runtime processes sharing one Redis -------------------------------------------------------
#
# `python -m tests.redis_server CONFIG_JSON` runs one sel_otel runtime (cache from
# `cache_from_settings`, so the production path) that answers JSON commands, one per line on
# stdin, with one JSON line on stdout:
#   {"op": "run", "agent": A, "query": Q, "n": N}     N concurrent identical calls
#   {"op": "load", "agent": A, "queries": [...], "seconds": S}   sequential calls for S seconds
#   {"op": "quit"}

ROOT = Path(__file__).resolve().parent.parent


def _result(result: object, start: float) -> dict[str, object]:
    from sel_otel import AgentResult

    assert isinstance(result, AgentResult)
    return {
        "output": result.output,
        "cached": result.cached,
        "coalesced": result.coalesced,
        "error": None if result.error is None else str(result.error),
        "duration": result.duration,
        "at": time.monotonic() - start,
    }


async def _serve(config: dict[str, object]) -> None:
    import asyncio
    import json
    import sys

    from sel_otel import AgentRegistry, AgentRuntime, Settings
    from sel_otel._app import cache_from_settings

    settings = Settings(
        agents_dir=Path(str(config["agents_dir"])),
        cache_url=str(config["url"]),
        cache_namespace=str(config["namespace"]),
        cache_timeout=float(config.get("timeout", 0.25)),  # type: ignore[arg-type]
        cache_lock_lease=float(config.get("lease", 5.0)),  # type: ignore[arg-type]
        cache_retry_after=float(config.get("retry_after", 0.2)),  # type: ignore[arg-type]
        cache_near_entries=int(config.get("near", Settings.cache_near_entries)),  # type: ignore[call-overload]
    )
    registry = AgentRegistry(Path(str(config["agents_dir"])))
    registry.reload()
    cache = cache_from_settings(settings)
    await cache.open()
    runtime = AgentRuntime(registry, cache, settings=settings)
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": os.getpid()}), flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command = json.loads(line)
        start = time.monotonic()
        if command["op"] == "quit":
            break
        if command["op"] == "run":
            calls = [
                runtime.run(command["agent"], command["query"])
                for _ in range(int(command.get("n", 1)))
            ]
            results = [_result(r, start) for r in await asyncio.gather(*calls)]
        else:  # load
            results = []
            queries = command["queries"]
            while time.monotonic() - start < float(command["seconds"]):
                query = queries[len(results) % len(queries)]
                results.append(_result(await runtime.run(command["agent"], query), start))
        print(json.dumps({"results": results}), flush=True)
    await runtime.aclose()
    await cache.close()


class RuntimeProcess:
    """A `python -m tests.redis_server` child: one runtime process on a shared Redis."""

    def __init__(self, config: dict[str, object], env: dict[str, str]) -> None:
        import json
        import sys

        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.redis_server", json.dumps(config)],
            cwd=ROOT,
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = int(self._read(timeout=30)["ready"])

    def send(self, command: dict[str, object]) -> None:
        import json

        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def results(self, timeout: float = 30.0) -> list[dict[str, object]]:
        return list(self._read(timeout)["results"])

    def call(self, command: dict[str, object], timeout: float = 30.0) -> list[dict[str, object]]:
        self.send(command)
        return self.results(timeout)

    def _read(self, timeout: float) -> dict[str, Any]:
        """The process's next line: a JSON object."""
        import json
        import select

        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"runtime process {self.process.pid} silent for {timeout}s")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"runtime process exited with {self.process.wait(5)}")
        return dict(json.loads(line))

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.send({"op": "quit"})
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


if __name__ == "__main__":
    import asyncio
    import json
    import sys

    asyncio.run(_serve(json.loads(sys.argv[1])))
