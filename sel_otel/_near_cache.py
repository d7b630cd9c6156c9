"""Near copies of a shared Redis cache's entries in this process, kept in step by Redis itself.

This is Redis's server-assisted client-side caching in broadcasting mode. A connection of its
own, speaking RESP3, turns on `CLIENT TRACKING ON BCAST PREFIX <namespace>:`. From then on,
Redis pushes the name of every key under the namespace that changes, whoever changes it:
written, deleted, expired or evicted. Each push drops that key's copy here.

- **What is kept.** A copy is made only from a read of Redis, with the key's remaining
  expiry (PTTL, read in the same trip), so a copy outlives its entry by no more than that
  reply's way back (and Redis's push of the expiry drops it too). Copies are bounded by the
  `LRUMemoryCache` bounds.
- **Reads in flight.** A read whose key changed while it was in flight keeps no copy: the
  push may overtake the read's reply, which then holds the value from before the change.
- **While Redis is silent.** The connection is checked by a PING after `HEARTBEAT` seconds of
  silence. Pushes and replies come in order on one connection, so a PONG proves every change
  made before the PING was heard. If no PONG comes within `HEARTBEAT` more seconds, Redis
  answers with an error (BUSY during a long script), or the connection breaks, every copy is
  dropped and none is made until tracking is back on (tried again every `RECONNECT_AFTER`). So
  while the copies are used, they lag Redis by at most the time a push takes to arrive, or
  two heartbeats (plus any time the event loop was blocked) when cut off from Redis.
- **Invalidation in this process** drops the agent's copies at once (`drop`), before Redis
  is asked anything, and no read of the agent's keys keeps a copy until Redis has deleted them
  (`dropped`): such a read may have found a value just before it went.
- **A Redis that cannot track** (before 6.0: no HELLO or CLIENT TRACKING) or may not (an ACL
  without them) keeps no copies. It is logged once, and every read goes to Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from ._cache_backend import FREE, _Miss
from ._memory_cache import LRUMemoryCache

logger = logging.getLogger(__name__)

#: Seconds of silence on the tracking connection before it is checked by a PING, and the
#: seconds its PONG may take before the copies are dropped.
HEARTBEAT: Final = 1.0
#: Seconds between attempts to turn tracking on again after the connection was lost.
RECONNECT_AFTER: Final = 1.0


class NearCache:
    """Copies of the entries under `prefix`, read without a trip to Redis while Redis tracks
    them for this process (`live`). `open_connection` makes a new, unconnected RESP3
    connection to the cache's Redis; `start` turns tracking on in the background."""

    def __init__(
        self,
        prefix: str,
        open_connection: Callable[[], AbstractConnection],
        *,
        max_size: int,
        max_bytes: int | None = None,
        timeout: float | None = None,
    ) -> None:
        self.prefix = prefix
        self.store = LRUMemoryCache(max_size, max_bytes=max_bytes)
        self._open_connection = open_connection
        self._timeout = timeout
        #: Increases each time tracking is turned on; None while it is off.
        self.session: int | None = None
        #: Set while tracking is on.
        self.tracking = asyncio.Event()
        self._sessions = 0
        #: Reads of Redis in flight, by key, and those whose key changed meanwhile.
        self._reading: dict[str, int] = {}
        self._changed: set[str] = set()
        #: Prefixes being invalidated by this process, with how many invalidations of each.
        self._dropping: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        #: Which task tracks for this cache now: one started before has nothing to do here.
        self._epoch = 0

    @property
    def live(self) -> bool:
        """Whether Redis tracks the copies now."""
        return self.session is not None

    def lookup(self, key: str) -> str | _Miss:
        """The copy of `key`, or MISS."""
        return self.store.lookup(key)

    def reading(self, key: str) -> int | None:
        """Note a read of `key` from Redis about to be sent; what `keep` takes (None: no copy
        is to be made). Every call is followed by one `keep` or `forget`."""
        self._reading[key] = self._reading.get(key, 0) + 1
        return self.session

    async def keep(self, key: str, output: str | None, ttl_ms: int, session: int | None) -> None:
        """The read of `key` noted by `reading` came back with `output`, expiring in `ttl_ms`:
        copy it unless tracking went off or on again, or the key changed, meanwhile."""
        changed = self.forget(key)
        if output is None or ttl_ms <= 0 or changed or session is None or session != self.session:
            return
        if not key.startswith(self.prefix) or any(map(key.startswith, self._dropping)):
            return  # not tracked, or being invalidated
        await self.store.write(key, output, ttl_ms / 1000, FREE)

    def forget(self, key: str) -> bool:
        """The read of `key` noted by `reading` is over; whether its key changed meanwhile."""
        left = self._reading.pop(key) - 1
        changed = key in self._changed
        if left:
            self._reading[key] = left
        else:
            self._changed.discard(key)
        return changed

    def drop(self, prefix: str) -> None:
        """Drop the copies of every key that starts with `prefix`, this process invalidating
        them, and make none of such keys until `dropped`."""
        self._dropping[prefix] = self._dropping.get(prefix, 0) + 1
        self._drop_copies(prefix)

    def dropped(self, prefix: str) -> None:
        """The invalidation of `prefix` that `drop` began is over (done in Redis, or left to
        the background): reads from now on find what it left."""
        left = self._dropping.pop(prefix) - 1
        if left:
            self._dropping[prefix] = left
        # A read sent before Redis deleted the keys may still bring back what was there.
        self._reads_changed(prefix)

    def _changed_keys(self, keys: list[bytes] | None, encoding: str, errors: str) -> None:
        """Redis says `keys` changed (None: every key, as after FLUSHDB); they are read in the
        `encoding` (with `errors`) the connections write them in."""
        if keys is None:
            self._drop_copies()
            return
        for raw in keys:
            try:
                key = raw.decode(encoding, errors)
            except UnicodeDecodeError:  # no key of ours: ours were written in that encoding
                continue
            self.store.discard(key)
            if key in self._reading:
                self._changed.add(key)

    def _drop_copies(self, prefix: str = "") -> None:
        """Drop the copies of the keys that start with `prefix` (all by default), and make
        none from the reads of such keys in flight."""
        self.store.discard_prefix(prefix)
        self._reads_changed(prefix)

    def _reads_changed(self, prefix: str) -> None:
        """The reads in flight of keys that start with `prefix` are to keep no copy."""
        self._changed.update(key for key in self._reading if key.startswith(prefix))

    def start(self) -> None:
        """Turn tracking on in the background, and keep it on until `close`."""
        task = self._task
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            return
        self._retire()  # a task of a loop that is gone tracks nothing
        self._task = asyncio.create_task(self._track(self._epoch), name="sel-otel near cache")

    async def close(self) -> None:
        """Turn tracking off and drop every copy."""
        task, self._task = self._task, None
        self._retire()
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _retire(self) -> None:
        """Drop every copy, and leave any task started before nothing more to do here."""
        self._epoch += 1
        self.tracking = asyncio.Event()  # bound to the loop that first waits on it
        self._off()

    def _off(self) -> None:
        self.session = None
        self.tracking.clear()
        self._drop_copies()

    async def _track(self, epoch: int) -> None:
        """Keep tracking on: connect, listen, and after a loss connect again; until `epoch`
        is no longer the current one."""
        failing = False
        while epoch == self._epoch:
            connection = self._open_connection()
            try:
                await self._turn_on(connection, epoch)
                if failing:
                    logger.warning("near cache copies in use again")
                    failing = False
                await self._listen(connection)
            except _Refused as exc:
                logger.warning("near cache off: this Redis refuses tracking (%s)", exc)
                return
            except (OSError, RedisError) as exc:  # TimeoutError included
                if not failing:
                    logger.warning(
                        "near cache not in use (%s: %s); reads go to Redis",
                        type(exc).__name__,
                        exc,
                    )
                    failing = True
            except Exception:
                if epoch == self._epoch:  # else: finalized on a loop that is gone
                    logger.exception("near cache off: tracking failed")
                return
            finally:
                if epoch == self._epoch:
                    self._off()
                with contextlib.suppress(Exception):  # a TLS close a silent peer never ends
                    await connection.disconnect(nowait=True)
            await asyncio.sleep(RECONNECT_AFTER)

    async def _turn_on(self, connection: AbstractConnection, epoch: int) -> None:
        """Connect and turn tracking on, within the time the backend's `connect` takes (a few
        round trips); `_Refused` when this Redis cannot track."""
        async with asyncio.timeout(max(1.0, 8 * (self._timeout or 0)) if self._timeout else None):
            try:
                await connection.connect()  # type: ignore[no-untyped-call]  # HELLO 3 first
                # As redis-py's own client-side cache does: pushes returned to the reader.
                parser: Any = connection._parser
                parser.set_invalidation_push_handler(_returned)
                tracking = ("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", self.prefix)
                await connection.send_command(*tracking, check_health=False)
                await connection.read_response()
            except ResponseError as exc:
                if _refusal(exc):
                    raise _Refused(str(exc)) from None
                raise
        if epoch == self._epoch:
            self._sessions += 1
            self.session = self._sessions
            self.tracking.set()

    async def _listen(self, connection: AbstractConnection) -> None:
        """Apply the pushes until the connection breaks or a PING goes unanswered."""
        pinged = False
        while True:
            reply = await connection.read_response(timeout=HEARTBEAT, push_request=True)
            if reply is None:  # silence
                if pinged:
                    raise TimeoutError(f"no reply to a PING within {HEARTBEAT} s")
                await connection.send_command("PING", check_health=False)
                pinged = True
            elif isinstance(reply, list) and reply[:1] == [b"invalidate"]:
                encoder = connection.encoder
                self._changed_keys(reply[1], encoder.encoding, encoder.encoding_errors)
            else:  # the PONG
                pinged = False


class _Refused(Exception):
    """This Redis cannot track keys: too old for RESP3 or tracking, or not allowed to."""


def _refusal(exc: ResponseError) -> bool:
    """Whether `exc` says this Redis will never track (rather than: not now, as BUSY)."""
    text = str(exc).lower()
    return isinstance(exc, NoPermissionError) or "unknown command" in text or "unknown subc" in text


async def _returned(push: list[object]) -> list[object]:
    return push
