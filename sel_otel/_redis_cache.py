"""The Redis storage of the result cache: aiocache's Redis backend, made safe to share.

`RedisResultBackend` extends aiocache's `RedisCache` the way aiocache's own backends are
built (primitives only; `ResultCache` keeps the policy), and adds what sharing one Redis
between several bot instances needs:

- connections from a `redis://[[user]:password@]host[:port][/db]` or `rediss://` URL, with a
  connect timeout and an operation timeout (aiocache and redis-py set none);
- `OutputSerializer`: JSON of `{"output": str}`, never pickle; anything else read back (garbage
  bytes, JSON of another shape, a pickle payload, text no codec can write such as a lone
  surrogate, an output over `SEL_AGENT_MAX_OUTPUT`) is a miss and is never executed;
- reads that never take in more than the bytes such an output takes: a read asks for the
  first `READ_WINDOW` bytes (GETRANGE, as cheap as a GET), and for a value that fills them, for
  the whole of it only when it is no larger (`_READ`, as `claim` does); a larger value, or a
  key of another type, is a miss, so a planted 50 MB value neither times the call out nor
  opens the breaker;
- near copies (`_near_cache.py`, with `near_entries`): while Redis tracks them, a read asks
  for the key's remaining expiry in the same trip (`_READ_WITH_TTL`), and a hit leaves a copy
  in this process that `ResultCache.peek` answers from;
- `_clear` that deletes one prefix with SCAN and UNLINK page by page, each step within the
  operation timeout, and refuses to run without a prefix (aiocache's un-namespaced clear is
  FLUSHDB on a shared database);
- the primitives of the shared-cache protocol (`SharedBackend`, described in
  `_shared_cache.py`), each an atomic Lua script: `claim`, `store`, `advance_generation`,
  `extend_lock` and `release_lock`. A generation key that holds no count of ours is replaced
  with a fresh random count and logged, and a lock key of another type holds no token: a
  planted key never makes a script fail.

Every operation is bounded by the operation timeout through `Deadlines`: one timer for all the
operations in flight, and a deadline that never takes a reply already received for a timeout
(after the event loop was blocked past it), so that a loop stall does not fail a healthy Redis.

Redis's own `maxmemory` with `maxmemory-policy allkeys-lru` bounds the entries; every entry
carries its TTL as a Redis expiry.
"""

from __future__ import annotations

import asyncio
import json
import json.decoder
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from aiocache import RedisCache
from aiocache.serializers import BaseSerializer
from redis.asyncio.connection import AbstractConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from . import _semconv as names
from ._deadlines import Deadlines
from ._exceptions import ConfigError
from ._near_cache import NearCache
from ._settings import Settings
from ._shared_cache import GENERATION_KEY, LOCK_SUFFIX, Claim, Claimed

logger = logging.getLogger(__name__)

#: Keys deleted per UNLINK and asked for per SCAN step during invalidation.
SCAN_BATCH: Final = 500

#: Bytes of a value a read asks for first: a value that fills them is asked for whole, in a
#: second trip, only when it is within the bytes an output may take.
READ_WINDOW: Final = 64 * 1024

# KEYS[1] value key; ARGV[1] the largest value in bytes. Returns the value, nil when there is
# none, or its size (-1: not a string) when it is no output of ours: never sent.
_READ = """
local size = redis.pcall('STRLEN', KEYS[1])
if type(size) ~= 'number' then return -1 end
if size == 0 then return false end
if size > tonumber(ARGV[1]) then return size end
return redis.call('GET', KEYS[1])
"""
# `_READ` over the whole window at once, with the key's remaining expiry in milliseconds (PTTL;
# -2 when there is no value to keep), for the reads a near copy is made from (`_near_cache.py`).
_READ_WITH_TTL = """
local size = redis.pcall('STRLEN', KEYS[1])
if type(size) ~= 'number' then return {-1, -2} end
if size == 0 then return {false, -2} end
if size > tonumber(ARGV[1]) then return {size, -2} end
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
"""
# The generation held at `key`, or `seed`, written in its place, when there is none (never
# counted before, or lost to eviction or a restart: a count restarting from 0 could repeat one
# that a computation in flight read) or it is no count of ours: anything but a decimal of at
# most 19 digits without a leading zero, below 9e18, so that INCR can go on from it. Returns
# the generation and what the key held instead of one (false: nothing, or a count). A fresh
# random count also moves on from the one it replaces, as an invalidation does.
_GENERATION = """
local function generation_of(key, seed)
  local value = redis.pcall('GET', key)
  if type(value) == 'string' and #value <= 19
      and (value == '0' or string.match(value, '^[1-9]%d*$')) and tonumber(value) < 9e18 then
    return value, false
  end
  local found = false
  if type(value) == 'table' then
    found = 'a ' .. redis.call('TYPE', key)['ok']
  elseif value == '' then
    found = 'an empty string'
  elseif value then
    found = 'a string of ' .. #value .. ' bytes'
  end
  redis.call('SET', key, seed)
  return seed, found
end
"""
# KEYS[1] value key, KEYS[2] lock key, KEYS[3] generation key; ARGV[1] token, ARGV[2] lease
# in ms, ARGV[3] a random generation to start from when there is none (`_GENERATION`),
# ARGV[4] the largest value in bytes, ARGV[5] "1" when the value was read and found invalid.
# Returns {1, generation, found, value} when a value is stored, {2, generation, found} when
# the lock was taken, {0, generation, found} when it is held; `found` is what the generation
# key held instead of a generation (nil: nothing was replaced). A value that is not a string
# or is larger is no output of ours, and a lock without an expiry no lock of ours (every lock
# is taken with one): the first is a miss, the second counts as expired.
_CLAIM = (
    _GENERATION
    + """
local generation, found = generation_of(KEYS[3], ARGV[3])
local size = redis.pcall('STRLEN', KEYS[1])
if ARGV[5] ~= '1' and type(size) == 'number' and size > 0 and size <= tonumber(ARGV[4]) then
  return {1, generation, found, redis.call('GET', KEYS[1])}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, generation, found} end
if redis.call('PTTL', KEYS[2]) == -1 then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {2, generation, found}
end
return {0, generation, found}
"""
)
# KEYS[1] value key, KEYS[2] generation key; ARGV[1] value, ARGV[2] ttl in ms, ARGV[3] the
# generation the value was computed in. Returns 1 when stored, 0 when the generation moved on,
# was lost or was replaced by anything else (a key of another type included) meanwhile.
_STORE = """
if redis.pcall('GET', KEYS[2]) ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# KEYS[1] generation key; ARGV[1] a random generation to count from when there is none
# (`_GENERATION`: INCR would restart at 1, a value a computation in flight may hold). Returns
# what the key held instead of a generation (nil: nothing was replaced).
_ADVANCE = (
    _GENERATION
    + """
local _, found = generation_of(KEYS[1], ARGV[1])
redis.call('INCR', KEYS[1])
return found
"""
)
# KEYS[1] lock key; ARGV[1] token (and ARGV[2] lease in ms). A key of another type holds no
# token of ours: 0, not an error.
_EXTEND = """
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.pcall('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: Generations start from a random integer below this, so that INCR still applies.
_GENERATION_SEEDS: Final = 2**62

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")

_T = TypeVar("_T")


class OutputSerializer(BaseSerializer):  # type: ignore[misc]
    """Agent outputs of at most `max_output` characters as JSON `{"output": "..."}` in UTF-8;
    nothing else is ever loaded.

    `loads` works on raw bytes and returns None (a miss) for anything that is not exactly that
    shape: undecodable bytes, other JSON, a pickle payload, an output that is not text (a lone
    surrogate) or is longer than `max_output`, checked first by the bytes' length
    (`max_bytes`). Nothing read is ever executed.
    """

    DEFAULT_ENCODING = None  # raw bytes both ways: bad bytes are a miss, not a decode error

    def __init__(self, max_output: int = Settings.agent_max_output) -> None:
        super().__init__()
        self.max_output = max_output
        #: The most bytes an output of `max_output` characters takes: 6 a character (a control
        #: character is escaped as \u001b), and the braces.
        self.max_bytes = 6 * max_output + len(_EMPTY)
        self.rejected = 0

    def dumps(self, value: str) -> bytes:
        """The JSON of `value`; `UnicodeEncodeError` when it is not text (a lone surrogate)."""
        if not isinstance(value, str):
            raise TypeError(f"only str outputs are cached, not {type(value).__name__}")
        return json.dumps({"output": value}, ensure_ascii=False, separators=(",", ":")).encode()

    def loads(self, value: bytes | str | None) -> str | None:
        if value is None:
            return None
        output = self._output(value)
        if output is None:
            self.reject()
        return output

    def _output(self, value: bytes | str) -> str | None:
        if len(value) > self.max_bytes:  # before decoding any of it
            return None
        if type(value) is bytes and value.startswith(_PREFIX) and value.endswith(b"}"):
            # What `dumps` writes, read without building a dict (a fifth of json.loads' time):
            # the JSON string after the key, then nothing but the closing brace.
            try:
                text = value.decode()
                output, end = _scanstring(text, len(_PREFIX))
            except ValueError:  # not UTF-8, or no JSON string: json.loads would fail too
                return None
            if end == len(text) - 1:
                if len(output) > self.max_output or ("\\" in text and not _is_text(output)):
                    return None
                return output
        try:
            decoded = json.loads(value)
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
            return None
        if type(decoded) is not dict or len(decoded) != 1:
            return None
        found = decoded.get("output")
        if type(found) is str and len(found) <= self.max_output and _is_text(found):
            return found
        return None

    def reject(self) -> None:
        """Count a value read that is no agent output; the first is logged."""
        self.rejected += 1
        if self.rejected == 1:
            logger.warning("ignored a cached value that is not a JSON agent output (a miss)")


_EMPTY: Final = b'{"output":""}'
_PREFIX: Final = b'{"output":"'
#: The reader of a JSON string that json.loads uses (C), absent from the type stubs.
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def _is_text(output: str) -> bool:
    """Whether `output` can be written as UTF-8: a lone surrogate cannot (it would fail every
    frontend that prints it)."""
    try:
        output.encode()
    except UnicodeEncodeError:
        return False
    return True


class RedisResultBackend(RedisCache):  # type: ignore[misc]
    """aiocache's Redis backend with bounded timeouts, a safe serializer and shared locks.

    Build it with `from_url`. Keys are used as given (no backend namespace): `ResultCache`
    builds them under its own namespace.
    """

    def __init__(
        self,
        *,
        timeout: float,
        description: str,
        max_output: int = Settings.agent_max_output,
        near_prefix: str = "",
        near_entries: int = 0,
        near_bytes: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(serializer=OutputSerializer(max_output), timeout=timeout, **kwargs)
        self.description = description
        #: Copies of the entries under `near_prefix` kept in this process (`_near_cache.py`),
        #: at most `near_entries` (0: none).
        self.near = (
            NearCache(
                near_prefix,
                self._tracking_connection,
                max_size=near_entries,
                max_bytes=near_bytes,
                timeout=timeout,
            )
            if near_entries
            else None
        )
        self.deadlines = Deadlines(timeout)
        self.db_attributes: Mapping[str, str | int] = {
            names.DB_SYSTEM_NAME: names.DB_SYSTEM_REDIS,
            names.SERVER_ADDRESS: self.endpoint,
            names.SERVER_PORT: self.port,
            names.DB_NAMESPACE: str(self.db),
        }
        self._read = self.client.register_script(_READ)
        self._read_with_ttl = self.client.register_script(_READ_WITH_TTL)
        self._claim = self.client.register_script(_CLAIM)
        self._store = self.client.register_script(_STORE)
        self._advance = self.client.register_script(_ADVANCE)
        self._extend = self.client.register_script(_EXTEND)
        self._release = self.client.register_script(_RELEASE)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float,
        max_output: int = Settings.agent_max_output,
        near_prefix: str = "",
        near_entries: int = 0,
        near_bytes: int | None = None,
    ) -> RedisResultBackend:
        """A backend for `redis://` or `rediss://` `url`; every operation bounded by `timeout`,
        and outputs read of at most `max_output` characters (`SEL_AGENT_MAX_OUTPUT`). With
        `near_entries`, up to that many entries under `near_prefix` (and `near_bytes` bytes)
        are also kept in this process while Redis tracks them (`_near_cache.py`).

        The URL's user, password, db and TLS (`rediss://`, plus redis-py's `ssl_*` query
        options) are honoured. The connect timeout is `timeout` too, and a command is retried
        once at once on a broken connection (a pooled connection from before a Redis
        restart), never beyond the operation timeout. There is no socket timeout: every
        operation here is bounded as a whole by its deadline (`Deadlines`), and redis-py would
        bound each write again with `asyncio.wait_for`, a Task per command on Python 3.11
        (about a tenth of a cached call); a connection cut off mid-command is closed by
        redis-py.
        """
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss"):
            raise ConfigError(f"not a redis:// or rediss:// URL: {redact(url)!r}")
        try:
            options: dict[str, Any] = dict(parse_url(url))
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {redact(url)!r}: {exc}") from exc
        host = options.pop("host", "127.0.0.1")
        port = int(options.pop("port", 6379))
        db = int(options.pop("db", 0))
        password = options.pop("password", None)
        pool_options = {
            **options,  # username, connection_class (TLS), ssl_* and other query options
            "socket_timeout": None,
            "retry": Retry(NoBackoff(), 1),
        }
        return cls(
            endpoint=host,
            port=port,
            db=db,
            password=password,
            create_connection_timeout=timeout,
            connection_pool_kwargs=pool_options,
            timeout=timeout,
            description=f"{scheme}://{host}:{port}/{db}",
            max_output=max_output,
            near_prefix=near_prefix,
            near_entries=near_entries,
            near_bytes=near_bytes,
        )

    async def _get(self, key: str, encoding: str | None = None, _conn: object = None) -> Any:
        """The value of `key`, or None when there is none or it is no output of ours (a string
        of more than the serializer's `max_bytes`, which Redis never sends, or another type)."""
        try:
            value = await self.client.getrange(key, 0, READ_WINDOW - 1)
            if len(value) == READ_WINDOW:  # maybe more: the whole, if it is not too large
                value = await self._read(keys=[key], args=[self.serializer.max_bytes])
        except ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            value = -1
        return self._value(value)

    def _value(self, value: bytes | int | None) -> bytes | None:
        """A read's reply as a value: None for no key, or for a size or type (an int) that
        makes it no output of ours."""
        if isinstance(value, int):
            self.serializer.reject()
            return None
        return value or None  # b"": no such key

    async def _output(self, key: str) -> Any:
        """The output stored under `key`, or None; copied near when tracking is on."""
        key = self.build_key(key)
        near = self.near
        if near is None or not near.live:
            return self.serializer.loads(await self._get(key))
        session = near.reading(key)
        try:
            value, ttl_ms = await self._read_with_ttl(keys=[key], args=[self.serializer.max_bytes])
            output = self.serializer.loads(self._value(value))
        except BaseException:
            near.forget(key)
            raise
        await near.keep(key, output, ttl_ms, session)
        return output

    def _tracking_connection(self) -> AbstractConnection:
        """A new connection to this Redis, as the pool's, speaking RESP3 and bounded by the
        near cache's own heartbeat rather than a socket timeout."""
        pool = self.client.connection_pool
        options = {
            **pool.connection_kwargs,
            "protocol": 3,
            "decode_responses": False,
            "health_check_interval": 0,  # its own PING would wait unbounded, and eat pushes
        }
        return pool.connection_class(**options)  # type: ignore[no-any-return]

    async def _set(
        self,
        key: str,
        value: bytes,
        ttl: float | None = None,
        _cas_token: object = None,
        _conn: object = None,
    ) -> Any:
        if _cas_token is not None:
            return await super()._set(key, value, ttl=ttl, _cas_token=_cas_token, _conn=_conn)
        # SET PX: redis-py deprecates the SETEX/PSETEX aiocache sends
        return await self.client.set(key, value, px=None if ttl is None else _ms(ttl))

    async def _clear(self, namespace: str | None = None, _conn: object = None) -> int:
        """Delete the keys that start with `namespace` (SCAN + UNLINK); never FLUSHDB. Each
        SCAN step and each UNLINK of what it found is one operation within the timeout
        (`Deadlines`): a large keyspace takes as many steps as it needs, and what was found
        is deleted as it is found."""
        if not namespace:
            raise ValueError("refusing to clear a shared Redis database without a key prefix")
        pattern = _GLOB_SPECIAL.sub(r"\\\1", namespace) + "*"
        kept = (LOCK_SUFFIX.encode(), GENERATION_KEY.encode())
        deleted = 0
        cursor = 0
        while True:
            cursor, keys = await self.deadlines.run(
                self.client.scan(cursor, match=pattern, count=SCAN_BATCH)
            )
            # A lock in use is its holder's to release; generations only grow.
            found = [key for key in keys if not key.endswith(kept)]
            if found:
                deleted += await self.deadlines.run(self.client.unlink(*found))
            if not cursor:
                return deleted

    # aiocache bounds each operation with asyncio.wait_for, which spawns a Task per call on
    # Python 3.11 (15-20 µs, a fifth of a loopback GET). The same bound is applied here by
    # `Deadlines`, and aiocache's wait_for is switched off for the call (timeout=0).

    async def get(self, key: str, default: Any = None, **kwargs: Any) -> Any:
        if kwargs:
            limit = kwargs.pop("timeout", self.timeout)
            return await self._within(limit, super().get(key, default, timeout=0, **kwargs))
        # What aiocache's get does, without its four decorators (an environment lookup, two
        # clocks and three wrapper calls on every read): this backend has no plugins, and its
        # timeout is the deadline here, taken inline (Deadlines.run's frame costs a hit 1 µs).
        deadlines = self.deadlines
        if not deadlines.timeout:
            value = await self._output(key)
        else:
            task = deadlines.enter()
            try:
                value = await self._output(key)
            except asyncio.CancelledError:
                if deadlines.leave(task):
                    raise TimeoutError from None
                raise
            except BaseException:
                deadlines.leave(task)
                raise
            deadlines.leave(task)
        return default if value is None else value

    async def set(self, key: str, value: Any, **kwargs: Any) -> Any:
        limit = kwargs.pop("timeout", self.timeout)
        return await self._within(limit, super().set(key, value, timeout=0, **kwargs))

    async def _within(self, limit: float | None, operation: Awaitable[_T]) -> _T:
        """`operation` bounded by the operation timeout, or by `limit` seconds when another
        bound is asked for (None or 0: unbounded)."""
        if limit == self.timeout:
            return await self.deadlines.run(operation)
        async with asyncio.timeout(limit or None):
            return await operation

    async def clear(self, namespace: str | None = None, _conn: object = None, **kwargs: Any) -> Any:
        # Each step of the clear is bounded by its own deadline (`_clear`), not the whole.
        return await super().clear(namespace, _conn=_conn, timeout=0, **kwargs)

    async def connect(self) -> None:
        """Connect and load the lock scripts, allowing more than one operation's timeout; turn
        the near cache's tracking on (in the background, until `close`)."""
        if self.near is not None:
            self.near.start()
        async with asyncio.timeout(max(1.0, 8 * (self.timeout or 0))):
            await self.client.ping()
            scripts = [self._read, self._read_with_ttl, self._claim, self._store, self._advance]
            for script in (*scripts, self._extend, self._release):
                await self.client.script_load(script.script)

    async def claim(
        self, key: str, lock_key: str, generation_key: str, token: str, lease: float
    ) -> Claimed:
        """The stored output of `key`, or take `lock_key` for `lease` seconds, in one trip;
        with the agent's generation."""
        return await self.deadlines.run(self._claimed(key, lock_key, generation_key, token, lease))

    async def _claimed(
        self, key: str, lock_key: str, generation_key: str, token: str, lease: float
    ) -> Claimed:
        keys = [key, lock_key, generation_key]
        args = [token, _ms(lease), secrets.randbelow(_GENERATION_SEEDS)]
        reply = await self._claim(keys=keys, args=[*args, self.serializer.max_bytes, 0])
        if reply[2] is not None:
            _replaced(generation_key, reply[2])
        if reply[0] == 1:
            value = self.serializer.loads(reply[3])
            if value is not None:
                return Claimed(str(value), reply[1].decode())
            # An invalid value is a miss: claim again, as if the key were empty.
            reply = await self._claim(keys=keys, args=[*args, self.serializer.max_bytes, 1])
        generation = reply[1].decode()  # ASCII digits: anything else was replaced
        return Claimed(Claim.ACQUIRED if reply[0] == 2 else Claim.HELD, generation)

    async def store(
        self, key: str, output: str, ttl: float, generation_key: str, generation: str
    ) -> bool:
        """Store `output` for `ttl` seconds unless the agent's generation moved on; an output
        that is not text (a lone surrogate) is not stored."""
        try:
            value = self.serializer.dumps(output)
        except UnicodeEncodeError:
            return False
        keys, args = [key, generation_key], [value, _ms(ttl), generation]
        return bool(await self.deadlines.run(self._store(keys=keys, args=args)))

    async def advance_generation(self, generation_key: str) -> None:
        """One more invalidation of the agent: results computed before it are not stored."""
        seed = secrets.randbelow(_GENERATION_SEEDS)
        found = await self.deadlines.run(self._advance(keys=[generation_key], args=[seed]))
        if found is not None:
            _replaced(generation_key, found)

    async def extend_lock(self, lock_key: str, token: str, lease: float) -> bool:
        """Push the lock's expiry to `lease` from now, if `token` still holds it."""
        extended = await self.deadlines.run(self._extend(keys=[lock_key], args=[token, _ms(lease)]))
        return bool(extended)

    async def release_lock(self, lock_key: str, token: str) -> bool:
        """Delete the lock, if `token` still holds it."""
        return bool(await self.deadlines.run(self._release(keys=[lock_key], args=[token])))

    async def _close(self, *args: Any, _conn: object = None, **kwargs: Any) -> None:
        try:
            if self.near is not None:
                await self.near.close()
        finally:
            await self.client.aclose()  # redis-py deprecates the close() aiocache calls

    def __repr__(self) -> str:
        return f"RedisResultBackend({self.description})"


def redact(url: str) -> str:
    """`url` without its password, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def _replaced(generation_key: str, found: bytes) -> None:
    """Log a generation key that held no count of ours, which a script replaced."""
    logger.warning(
        "cache generation key %r held %s, not an invalidation count: replaced it with a fresh"
        " random count (results computed before are not stored)",
        generation_key,
        found.decode(),
    )


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
