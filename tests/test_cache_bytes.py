"""The memory cache is bounded in bytes as well as in entries (`SEL_CACHE_MAX_BYTES`): large
outputs evict the least recently used ones, and one larger than the whole bound is not kept."""

from __future__ import annotations

from sel_otel import LRUMemoryCache, Settings
from sel_otel._app import cache_from_settings
from sel_otel._cache import Lookup
from tests.conftest import Counting, TelemetryFixture

OUTPUT = "x" * 100_000  # about 100 kB in memory


async def test_outputs_beyond_sel_cache_max_bytes_evict_the_least_recently_used(
    telemetry: TelemetryFixture,
) -> None:
    settings = Settings.from_env({"SEL_CACHE_MAX_BYTES": "1000000"})  # room for 9 outputs
    assert settings.cache_max_entries >= 30  # the entry bound is not what evicts below
    cache = cache_from_settings(settings, telemetry.meter_provider)
    keys = [cache.key("big", str(i)) for i in range(30)]
    for key in keys:
        await cache.get_or_run(key, 60, Counting(OUTPUT))
    compute = Counting(OUTPUT)
    lookups = [(await cache.get_or_run(key, 60, compute)).lookup for key in reversed(keys)]
    assert lookups[:9] == [Lookup.HIT] * 9  # the most recent ones
    assert lookups.count(Lookup.HIT) == 9
    evicted = sum(p.value for p in telemetry.points("sel.cache.evictions"))
    assert evicted >= 21
    await cache.close()


async def test_an_output_larger_than_the_bound_is_not_kept_and_evicts_nothing() -> None:
    backend = LRUMemoryCache(10, max_bytes=50_000)
    await backend.set("small", "s")
    await backend.set("huge", OUTPUT)
    assert await backend.get("huge") is None
    assert await backend.get("small") == "s"


async def test_a_value_set_again_is_counted_once() -> None:
    backend = LRUMemoryCache(10, max_bytes=250_000)
    await backend.set("other", OUTPUT)
    for _ in range(3):
        await backend.set("k", OUTPUT)
    assert [await backend.get(key) for key in ("other", "k")] == [OUTPUT, OUTPUT]
