"""The history of one process, assembled from its settings: which stores it writes and reads.

- always `history.db` in `SEL_DATA_DIR` (SQLite), the local, durable copy;
- a Redis Stream on `SEL_HISTORY_REDIS_URL` (by default the cache's Redis, when the cache is
  on Redis), shared by every instance;
- log records, when `OTEL_LOGS_EXPORTER` asks for them (read, like every `OTEL_*` variable,
  from the process environment).
"""

from __future__ import annotations

import os

from ._history import ContentPolicy, History, HistoryStore
from ._history_logs import log_sink_from_env
from ._history_sqlite import SqliteHistoryStore
from ._settings import Settings
from ._telemetry import Telemetry

HISTORY_FILE = "history.db"
#: Seconds a Redis command of the history may take (on the writer's thread, or a query's).
REDIS_TIMEOUT = 2.0
DAY = 86_400.0


def history_from_settings(settings: Settings, telemetry: Telemetry) -> History | None:
    """The history `settings` ask for (None with `SEL_HISTORY=false`), its entries marked
    with the process's `service.instance.id`. Its writers start with `History.open()`."""
    if not settings.history:
        return None
    resource = telemetry.tracer_provider.resource
    sinks = [*history_stores(settings)]
    logs = log_sink_from_env(os.environ, resource, telemetry.meter_provider)
    return History(
        [*sinks, logs] if logs is not None else sinks,
        instance=str(resource.attributes.get("service.instance.id", "")),
        policy=ContentPolicy(
            settings.history_input, settings.history_input_max, settings.history_output_max
        ),
        flush_interval=settings.history_flush_interval,
        meter_provider=telemetry.meter_provider,
    )


def history_stores(settings: Settings) -> list[HistoryStore]:
    """The stores the history is kept in: the SQLite file, and the Redis Stream if any."""
    max_age = settings.history_max_age * DAY
    stores: list[HistoryStore] = [
        SqliteHistoryStore(
            settings.data_dir / HISTORY_FILE, max_age=max_age, max_rows=settings.history_max_rows
        )
    ]
    url = settings.shared_redis_url(settings.history_redis_url)
    if url is not None:
        from ._history_redis import RedisHistoryStore  # redis-py loads only when it is used

        stores.append(
            RedisHistoryStore.from_url(
                url,
                f"{settings.cache_namespace}:history",
                timeout=REDIS_TIMEOUT,
                max_len=settings.history_redis_max_len,
                max_age=max_age,
            )
        )
    return stores
