"""`StatsPublisher`: this instance's agent-call histogram, published for the whole deployment.

Every `interval` seconds a daemon thread reads the stats reader (cumulative: reading never
resets it) and writes the agent-call points to the shared store, with an expiry of
`EXPIRY_INTERVALS` intervals; it publishes once when it starts, so that a restarted instance
replaces its previous life at once, and once more when it stops. An instance that stops
publishing (killed, or cut off from Redis) drops out of the merged stats when its state
expires. A store that fails is logged once, and once more when it is back.
"""

from __future__ import annotations

import logging
import threading

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from ._exceptions import StatsStoreError
from ._stats import agent_points
from ._stats_redis import RedisStatsStore
from ._stats_state import encode, member

logger = logging.getLogger(__name__)

#: A published state lives this many publishing intervals: one or two late or lost publishes
#: do not make a live instance drop out.
EXPIRY_INTERVALS = 3


class StatsPublisher:
    """Publishes what `reader` holds, as `instance` started at `started`, into `store`."""

    def __init__(
        self,
        reader: InMemoryMetricReader,
        store: RedisStatsStore,
        *,
        instance: str,
        started: float,
        interval: float,
    ) -> None:
        self.reader = reader
        self.store = store
        self.instance = instance
        self.started = started
        self.interval = interval
        self.expiry = EXPIRY_INTERVALS * interval
        self._member = member(instance, started)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sel-stats-publisher", daemon=True)
        self._failing = False

    def start(self) -> None:
        """Publish now, then every interval until `close`."""
        self._thread.start()

    def publish(self) -> None:
        """Publish the reader's current figures; StatsStoreError when the store fails."""
        points = agent_points(self.reader.get_metrics_data())
        payload = encode(self.instance, self.started, self.expiry, points)
        self.store.put(self._member, payload, self.expiry)

    def close(self, timeout: float) -> None:
        """Stop publishing after a last publish, within about `timeout` seconds."""
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("the last stats were not published within %gs", timeout)

    def _run(self) -> None:
        self._publish_logged()
        while not self._stop.wait(self.interval):
            self._publish_logged()
        self._publish_logged()  # the last figures, as the instance stops

    def _publish_logged(self) -> None:
        try:
            self.publish()
        except StatsStoreError as exc:
            if not self._failing:
                logger.warning("stats not published to the shared store: %s", exc)
            self._failing = True
        except Exception:  # a bug must not end the thread: the next interval tries again
            logger.exception("stats not published")
        else:
            if self._failing:
                logger.warning("stats published to the shared store again")
            self._failing = False
