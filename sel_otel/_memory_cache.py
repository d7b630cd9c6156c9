"""In-memory cache backend: aiocache's memory backend with least-recently-used eviction, and
the `CacheBackend` steps of the result cache for one process."""

from __future__ import annotations

import asyncio
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiocache import SimpleMemoryCache

from ._cache_backend import FREE, MISS, Ticket, _Miss


class LRUMemoryCache(SimpleMemoryCache):  # type: ignore[misc]
    """aiocache's memory backend, bounded to `max_size` entries and, when given, `max_bytes`
    bytes of keys and values, with least-recently-used eviction. A value that alone would
    exceed `max_bytes` is not kept (and counted as evicted).

    Only the storage primitives are overridden, and the `CacheBackend` steps added: a read goes
    straight to the storage (a hit is a dict lookup, without aiocache's per-call wrappers); one
    process has no lock to take; keys are used as given. Each key with a TTL has one expiry
    timer; the timer is cancelled whenever its key leaves the cache (eviction, delete, clear),
    so a stale timer can never delete a key that was set again later. Values are stored by
    reference: store immutable values (the result cache stores `str`).
    """

    shared = False

    def __init__(
        self,
        max_size: int = 500,
        *,
        max_bytes: int | None = None,
        on_evict: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("timeout", None)  # no asyncio.wait_for around in-memory dict access
        super().__init__(**kwargs)
        if max_size < 1 or (max_bytes is not None and max_bytes < 1):
            raise ValueError("max_size and max_bytes must be at least 1")
        self.max_size = max_size
        self.max_bytes = max_bytes
        #: Bytes held by the keys and values stored (their objects' own sizes).
        self.bytes = 0
        self._on_evict = on_evict
        self._cache: OrderedDict[str, object] = OrderedDict()

    # -- CacheBackend ---------------------------------------------------------------------------

    async def read(self, key: str) -> str | _Miss:
        value = await self._get(key)
        return value if isinstance(value, str) else MISS

    @property
    def immediate(self) -> bool:
        """Whether `lookup` reads what `read` reads: the storage is this class's own dict (a
        subclass that overrides `_get` reads as that says, through `read` only)."""
        return type(self)._get is LRUMemoryCache._get

    def lookup(self, key: str) -> str | _Miss:
        """`read` without a coroutine, when `immediate`: the value under `key` (now the most
        recently used), or MISS."""
        value = self._cache.get(key)
        if value is None:
            return MISS
        self._cache.move_to_end(key)
        return value if isinstance(value, str) else MISS

    def discard(self, key: str) -> None:
        """Remove `key` now, if it is held."""
        self._remove(key)

    def discard_prefix(self, prefix: str) -> None:
        """Remove every key that starts with `prefix` ("": every key) now."""
        for key in [key for key in self._cache if key.startswith(prefix)]:
            self._remove(key)

    async def acquire(self, key: str, compute_timeout: float | None) -> Ticket:
        return FREE

    async def write(self, key: str, output: str, ttl: float, ticket: Ticket) -> bool:
        return bool(await self._set(key, output, ttl=ttl))

    async def release(self, key: str, ticket: Ticket) -> None:
        return None

    async def invalidate(self, prefix: str) -> None:
        await self.clear(namespace=prefix)

    async def open(self) -> None:
        return None

    # -- aiocache primitives --------------------------------------------------------------------

    async def _get(self, key: str, encoding: str = "utf-8", _conn: object = None) -> object:
        value = self._cache.get(key)
        if value is not None:
            self._cache.move_to_end(key)
        return value

    async def _multi_get(
        self, keys: list[str], encoding: str = "utf-8", _conn: object = None
    ) -> list[object]:
        return [await self._get(key) for key in keys]

    async def _set(
        self,
        key: str,
        value: object,
        ttl: float | None = None,
        _cas_token: object = None,
        _conn: object = None,
    ) -> bool | int:
        if _cas_token is not None and _cas_token != self._cache.get(key):
            return 0
        self._remove(key)
        size = _size(key, value)
        if self.max_bytes is not None and size > self.max_bytes:
            self._evicted()
            return False
        self._cache[key] = value
        self.bytes += size
        if ttl:
            self._handlers[key] = asyncio.get_running_loop().call_later(ttl, self._remove, key)
        while len(self._cache) > self.max_size or (
            self.max_bytes is not None and self.bytes > self.max_bytes
        ):
            self._remove(next(iter(self._cache)))
            self._evicted()
        return True

    async def _delete(self, key: str, _conn: object = None) -> int:
        return self._remove(key)

    async def _clear(self, namespace: str | None = None, _conn: object = None) -> bool:
        self.discard_prefix(namespace or "")
        return True

    async def _redlock_release(self, key: str, value: object) -> int:
        return self._remove(key) if self._cache.get(key) == value else 0

    def _remove(self, key: str) -> int:
        self._cancel_timer(key)
        value = self._cache.pop(key, None)
        if value is None:
            return 0
        self.bytes -= _size(key, value)
        return 1

    def _evicted(self) -> None:
        if self._on_evict is not None:
            self._on_evict()

    def _cancel_timer(self, key: str) -> None:
        handle = self._handlers.pop(key, None)
        if handle is not None:
            handle.cancel()


def _size(key: str, value: object) -> int:
    """Bytes held by an entry: its key's and its value's objects (a str's characters
    included)."""
    return sys.getsizeof(key) + sys.getsizeof(value)
