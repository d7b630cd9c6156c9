"""Results of different code never mix: an agent's version (the digest of its source) is part
of its cache keys, so instances on one Redis that run different versions of an agent each
serve their own version's results, and a reload on one instance leaves the others' entries.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from tests.conftest import AgentWriter, RuntimeFactory, TelemetryFixture

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]

VERSIONED = """
    DESCRIPTION = "answers with the version of its code"
    CACHE_TTL = 60
    def run(query):
        return {answer!r}
"""


async def test_instances_running_two_versions_of_an_agent_each_serve_their_own(
    redis_server: RedisServer, make_runtime: RuntimeFactory, write_agent: AgentWriter
) -> None:
    namespace = f"t{uuid.uuid4().hex[:8]}"
    write_agent("versioned", VERSIONED.format(answer="old"))
    first, second = (
        make_runtime(cache_url=redis_server.url, cache_namespace=namespace) for _ in range(2)
    )
    assert (await first.run("versioned", "q")).output == "old"
    assert (await second.run("versioned", "q")).cached is True

    write_agent("versioned", VERSIONED.format(answer="new code"))  # another size: no stale .pyc
    assert (await first.reload()).updated == ("versioned",)  # the second has not reloaded yet

    fresh = await first.run("versioned", "q")
    assert (fresh.output, fresh.cached) == ("new code", False)
    kept = await second.run("versioned", "q")  # its entry outlived the first's reload
    assert (kept.output, kept.cached) == ("old", True)
    assert (await first.run("versioned", "q")).output == "new code"


async def test_a_reload_drops_the_old_versions_results_from_memory(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    write_agent("versioned", VERSIONED.format(answer="old"))
    runtime = make_runtime(cache_max_entries=1)
    await runtime.run("versioned", "q")
    write_agent("versioned", VERSIONED.format(answer="new code"))
    await runtime.reload()
    assert (await runtime.run("versioned", "q")).output == "new code"
    assert (await runtime.run("versioned", "q")).cached is True
    # The new result took the room the old one left: nothing was evicted for it.
    assert sum(p.value for p in telemetry.points("sel.cache.evictions")) == 0
