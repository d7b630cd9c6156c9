"""The agent contract: turn a loaded module into a validated `Agent`.

An agent module defines:

```python
DESCRIPTION = "What it does"        # required, non-empty string
CACHEABLE = True                    # optional, default True
CACHE_TTL = 60                      # optional, seconds; 0 means never cache
CACHE_TTL_BY_INPUT = {"uname -a": 3600, "cat": 0}   # optional per-input TTL overrides
TIMEOUT = 15                        # optional, seconds; default from settings
INVALIDATED_BY = {"rm", "mv"}       # optional: inputs whose first word clears the agent's cache
PRIVILEGED = False                  # optional: only allowed users may run it
CACHE_PER_USER = False              # optional: the user id goes into the cache key
def run(query: str) -> str: ...     # or: async def run(query: str) -> str
async def setup(context) -> None: ...  # optional: take what the runtime owns (`AgentContext`)
async def close() -> None: ...      # optional: release resources when the runtime stops
```
`CACHE_TTL_BY_INPUT` keys match the input (white space collapsed) exactly, or else its first word.

`setup(context)` runs once per loaded version of the agent, before its first call: the
`AgentContext` carries the runtime's settings (the host-exec URL and token among them) and an
httpx client the runtime owns and closes. Agents take their configuration from it, never from
variables of the process environment.
"""

from __future__ import annotations

import inspect
import shlex
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any

from ._exceptions import AgentLoadError

if TYPE_CHECKING:
    import httpx

    from ._settings import Settings

AgentFunction = Callable[[str], Awaitable[Any]] | Callable[[str], Any]

DEFAULT_CACHE_TTL = 60.0
_QUOTING = frozenset("'\"\\")

#: The longest TTL or timeout an agent may declare; a cache backend must be able to take it.
MAX_SECONDS = 365 * 24 * 3600


@dataclass(frozen=True, slots=True)
class AgentContext:
    """What the runtime hands an agent's `setup(context)`: what it owns, for agents to use.

    `settings` are the runtime's (`host_exec_url`, `host_exec_token`, `host_exec_token_file`
    among them); `http` is a client traced by the OpenTelemetry httpx instrumentation, so that
    a request is a child of the agent span and carries `traceparent`. It honours the proxy
    settings of the environment, but for loopback addresses, reached direct. The runtime
    closes it when it stops: an agent must not.
    """

    settings: Settings
    http: httpx.AsyncClient = field(repr=False)


@dataclass(frozen=True, slots=True)
class Agent:
    """A loaded agent: what it is, how its results are cached, and how to call it."""

    name: str
    description: str
    function: AgentFunction = field(repr=False)
    is_async: bool
    cacheable: bool = True
    cache_ttl: float = DEFAULT_CACHE_TTL
    ttl_by_input: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    timeout: float | None = None
    invalidated_by: frozenset[str] = frozenset()
    privileged: bool = False
    cache_per_user: bool = False
    close: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)
    setup: Callable[[AgentContext], Coroutine[Any, Any, None]] | None = field(
        default=None, repr=False
    )
    path: Path | None = None
    #: The digest of the source it was loaded from: part of its cache keys, so that results
    #: of different code never mix.
    version: str = ""

    def ttl_for(self, query: str) -> float:
        """Seconds to cache the result of `query`; 0 means do not cache it.

        Overrides match the input with its white space collapsed, or else its first word.
        """
        if not self.cacheable:
            return 0.0
        if self.ttl_by_input:
            ttl = self.ttl_by_input.get(" ".join(query.split()))
            if ttl is None:
                ttl = self.ttl_by_input.get(first_word(query))
            if ttl is not None:
                return ttl
        return self.cache_ttl

    def invalidates(self, query: str) -> bool:
        """True when running `query` changes state, so the agent's cached results go stale."""
        return bool(self.invalidated_by) and first_word(query) in self.invalidated_by

    @classmethod
    def from_module(cls, name: str, module: ModuleType, path: Path | None = None) -> Agent:
        """Validate `module` against the agent contract; raise `AgentLoadError` if it breaks it."""

        def broken(reason: str) -> AgentLoadError:
            return AgentLoadError(name, path=path or Path(f"<{name}>"), reason=reason)

        description = getattr(module, "DESCRIPTION", None)
        if not isinstance(description, str) or not description.strip():
            raise broken("DESCRIPTION must be a non-empty string")
        function = getattr(module, "run", None)
        if not callable(function):
            raise broken("run(query) must be defined")
        try:
            inspect.signature(function).bind("query")
        except (TypeError, ValueError) as exc:
            raise broken(f"run must accept one argument (the query): {exc}") from None

        cacheable = getattr(module, "CACHEABLE", True)
        if not isinstance(cacheable, bool):
            raise broken("CACHEABLE must be True or False")
        cache_ttl = _seconds(getattr(module, "CACHE_TTL", DEFAULT_CACHE_TTL), "CACHE_TTL", broken)
        overrides = getattr(module, "CACHE_TTL_BY_INPUT", {})
        if not isinstance(overrides, Mapping) or not all(isinstance(k, str) for k in overrides):
            raise broken("CACHE_TTL_BY_INPUT must map input strings to seconds")
        ttl_by_input = {
            " ".join(key.split()): _seconds(value, f"CACHE_TTL_BY_INPUT[{key!r}]", broken)
            for key, value in overrides.items()
        }
        timeout = getattr(module, "TIMEOUT", None)
        if timeout is not None:
            timeout = _seconds(timeout, "TIMEOUT", broken)
            if timeout == 0:
                raise broken("TIMEOUT must be greater than 0")
        invalidated_by = getattr(module, "INVALIDATED_BY", ())
        if isinstance(invalidated_by, str) or not all(isinstance(w, str) for w in invalidated_by):
            raise broken("INVALIDATED_BY must be a collection of command words")
        close = getattr(module, "close", None)
        if close is not None and not inspect.iscoroutinefunction(close):
            raise broken("close must be an async function taking no arguments")
        setup = getattr(module, "setup", None)
        if setup is not None:
            if not inspect.iscoroutinefunction(setup):
                raise broken("setup must be an async function taking one argument (the context)")
            try:
                inspect.signature(setup).bind("context")
            except (TypeError, ValueError) as exc:
                raise broken(f"setup must accept one argument (the context): {exc}") from None
        flags = {}
        for flag in ("PRIVILEGED", "CACHE_PER_USER"):
            flags[flag] = getattr(module, flag, False)
            if not isinstance(flags[flag], bool):
                raise broken(f"{flag} must be True or False")

        return cls(
            name=name,
            description=description.strip(),
            function=function,
            is_async=inspect.iscoroutinefunction(function),
            cacheable=cacheable,
            cache_ttl=cache_ttl,
            ttl_by_input=MappingProxyType(ttl_by_input),
            timeout=timeout,
            invalidated_by=frozenset(invalidated_by),
            privileged=flags["PRIVILEGED"],
            cache_per_user=flags["CACHE_PER_USER"],
            close=close,
            setup=setup,
            path=path,
        )


def first_word(query: str) -> str:
    """The first word of `query`, read as a shell would when it holds quotes or backslashes
    (`'rm' x` starts with rm), so that quoting cannot dodge a per-word rule."""
    word = next(iter(query.split(maxsplit=1)), "")
    if _QUOTING.isdisjoint(word):
        return word
    lexer = shlex.shlex(query, posix=True)
    lexer.whitespace_split = True
    try:
        return lexer.get_token() or ""
    except ValueError:  # an unclosed quote
        return word


def _seconds(value: object, what: str, broken: Callable[[str], AgentLoadError]) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= MAX_SECONDS
    ):
        raise broken(f"{what} must be a number of seconds from 0 to {MAX_SECONDS:,} (a year)")
    return float(value)
