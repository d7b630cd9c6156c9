"""The interface between the result cache and its storage.

`ResultCache` (`_cache.py`) keeps the policy: keys, TTL, single-flight, this process's count of
each agent's invalidations, failures served as misses. It reaches storage through the steps
of `CacheBackend`: `read` a key; as the one caller computing it, `acquire` the key, `write` the
output and `release` the key; `invalidate` an agent's keys. `LRUMemoryCache`
(`_memory_cache.py`) implements them for one process; `SharedCache` (`_shared_cache.py`)
implements them over a store shared by several processes, such as `RedisResultBackend`.

Keys are `{prefix}{digest}`: the prefix ends with ':' and names the agent, so that an agent's
keys are all the keys starting with its prefix (`prefix_of`). A step that fails raises; one
skipped because the backend failed lately raises `CircuitOpen`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Protocol

from . import _semconv as names


class _Miss(enum.Enum):
    MISS = "miss"


#: Returned by lookups that found nothing, so that no stored value is ever confused with a miss.
MISS: Final = _Miss.MISS


class CircuitOpen(Exception):
    """The step was skipped, not tried: the backend failed lately."""


@dataclass(frozen=True, slots=True)
class Ticket:
    """What `acquire` found: the output stored under the key meanwhile, or leave to compute it.

    `found` is the output another caller stored (`waited`: this caller waited for it), else
    MISS: compute the output, `write` it with this ticket and `release` the ticket.
    """

    found: str | _Miss = MISS
    waited: bool = False
    #: The agent's count of invalidations in a shared store when the key was acquired: the
    #: output is written only if no process invalidated the agent since.
    generation: str = ""
    #: The token of the key's lock while this caller holds it.
    token: str | None = None


#: The ticket of a store that has nothing to coordinate: compute, write, nothing to release.
FREE: Final = Ticket()


class CacheBackend(Protocol):
    """The storage steps of a cached call. A step that fails raises; `ResultCache` serves the
    failure as a miss."""

    #: Shared by several processes, over a network: a read waits, so concurrent callers of a
    #: key share one read; a read that failed means the store is down, so the call neither
    #: acquires nor writes; and other processes may still run an agent's older version, so a
    #: reload here leaves that version's results to them.
    shared: bool

    async def read(self, key: str) -> str | _Miss:
        """The output stored under `key`, or MISS."""
        ...

    async def acquire(self, key: str, compute_timeout: float | None) -> Ticket:
        """The output stored under `key` meanwhile, or leave to compute it; computing may take
        `compute_timeout` seconds (None: unknown)."""
        ...

    async def write(self, key: str, output: str, ttl: float, ticket: Ticket) -> bool:
        """Store `output` under `key` for `ttl` seconds; False when the ticket forbids it."""
        ...

    async def release(self, key: str, ticket: Ticket) -> None:
        """Give up what `acquire` took for `key`."""
        ...

    async def invalidate(self, prefix: str) -> None:
        """Delete the outputs under every key starting with `prefix` (one agent's)."""
        ...

    async def open(self) -> None:
        """Get ready for the first call (connect a shared store)."""
        ...

    async def close(self) -> None:
        """Release the connections."""
        ...


def prefix_of(key: str) -> str:
    """The prefix of the agent owning `key`."""
    return key[: key.rfind(":") + 1]


def error_type(exc: BaseException) -> str:
    """The low-cardinality name of a backend failure: `timeout`, `circuit_open` or the
    exception class."""
    if isinstance(exc, CircuitOpen):
        return names.CACHE_ERROR_CIRCUIT_OPEN
    return names.ERROR_TIMEOUT if isinstance(exc, TimeoutError) else type(exc).__qualname__
