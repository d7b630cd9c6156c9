"""Every span, metric and attribute name sel_otel emits, defined once.

These names are a public interface: dashboards and trace searches depend on them, and the
README mirrors this module. Standard names follow the OpenTelemetry semantic conventions
(GenAI agent spans, `error.type`); project-specific ones live under `sel.`. The GenAI
conventions are still in development, so their names are spelled out here rather than
imported from the incubating constants.
"""

from __future__ import annotations

from typing import Final

# Instrumentation scope
SCOPE_NAME: Final = "sel_otel"

# Span names
INVOKE_AGENT: Final = "invoke_agent"  # operation name; the span is "invoke_agent {agent}"

# Standard attributes (OpenTelemetry semantic conventions)
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
GEN_AI_AGENT_DESCRIPTION: Final = "gen_ai.agent.description"
ERROR_TYPE: Final = "error.type"

# Project attributes
SEL_CACHE_HIT: Final = "sel.cache.hit"
SEL_CACHE_COALESCED: Final = "sel.cache.coalesced"
SEL_CACHE_ERROR: Final = "sel.cache.error"
SEL_AGENT_DURATION_MS: Final = "sel.agent.duration_ms"
SEL_AGENT_INPUT: Final = "sel.agent.input"
#: True on a call that ran past its timeout because its agent held the event loop (an async
#: agent that blocks): it fails as a timeout and is not cached.
SEL_AGENT_BLOCKED_LOOP: Final = "sel.agent.blocked_loop"
SEL_USER_ID: Final = "sel.user.id"
SEL_SCRUBBED: Final = "sel.scrubbed"  # string array: "{where}: {rule}" for each value scrubbed

# Frontend requests: one root span per request, named "{frontend} {request}"
SEL_FRONTEND: Final = "sel.frontend"  # console, cli, discord
SEL_REQUEST: Final = "sel.request"  # agent, stats, agents, reload, help

# Error types that are not exception class names
ERROR_TIMEOUT: Final = "timeout"
#: A sync call that could not start: its agent's own calls still running took its threads.
ERROR_THREADS_EXHAUSTED: Final = "threads_exhausted"
EXCEPTION_TYPE: Final = "exception.type"
EXCEPTION_MESSAGE: Final = "exception.message"
EXCEPTION_STACKTRACE: Final = "exception.stacktrace"

# Metrics
AGENT_DURATION: Final = "gen_ai.client.operation.duration"
AGENT_DURATION_UNIT: Final = "s"
CACHE_EVICTIONS: Final = "sel.cache.evictions"
CACHE_COALESCED: Final = "sel.cache.coalesced_calls"
CACHE_ERRORS: Final = "sel.cache.errors"
COUNT_UNIT: Final = "{call}"
ENTRY_UNIT: Final = "{entry}"
ERROR_UNIT: Final = "{error}"

#: Bucket boundaries (seconds) for the duration histogram: fine enough that a p95 read from
#: the buckets separates a 20 µs cache hit from a 2 ms agent run.
DURATION_BUCKETS: Final = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Discord frontend
# ---------------------------------------------------------------------------------------------
# Every Discord command is a root span, kind SERVER, named "discord.command {command}" (e.g.
# "discord.command /sel_agent"); the agent call's "invoke_agent {agent}" span is its child.
# Ids are strings: Discord snowflakes do not fit a JavaScript number in trace viewers.
# The user id is `sel.user.id` (above). Message content is never recorded.
DISCORD_COMMAND: Final = "discord.command"
SEL_DISCORD_COMMAND: Final = "sel.discord.command"  # /sel_agent, ..., or "agent:" (prefix)
SEL_DISCORD_TRIGGER: Final = "sel.discord.trigger"  # slash or prefix
SEL_DISCORD_GUILD_ID: Final = "sel.discord.guild.id"  # absent in direct messages
SEL_DISCORD_CHANNEL_ID: Final = "sel.discord.channel.id"
SEL_DISCORD_OUTCOME: Final = "sel.discord.outcome"  # see the DISCORD_OUTCOME_* values
SEL_DISCORD_DEFERRED: Final = "sel.discord.deferred"  # bool: acknowledged first, answered later

DISCORD_TRIGGER_SLASH: Final = "slash"
DISCORD_TRIGGER_PREFIX: Final = "prefix"
DISCORD_OUTCOME_OK: Final = "ok"  # answered
DISCORD_OUTCOME_ERROR: Final = "error"  # answered with an error (the agent call failed)
DISCORD_OUTCOME_FORBIDDEN: Final = "forbidden"  # refused: not allowed, nothing ran
DISCORD_OUTCOME_COOLDOWN: Final = "cooldown"  # refused: the user's cooldown, nothing ran

# -- Cache ----------------------------------------------------------------------------------
# Child spans of `invoke_agent {agent}` around the operations of a remote (Redis) cache. The
# in-memory cache records none: its cost is part of the agent span.
CACHE_GET: Final = "cache get"  # read a result (GET)
CACHE_LOCK: Final = "cache lock"  # read a result or take the key's lock, waiting while held
CACHE_SET: Final = "cache set"  # store a result with its TTL (SET PX)
CACHE_INVALIDATE: Final = "cache invalidate"  # delete one agent's results (SCAN + UNLINK)

# Standard database attributes on those spans (OpenTelemetry database conventions)
DB_SYSTEM_NAME: Final = "db.system.name"
DB_SYSTEM_REDIS: Final = "redis"
DB_OPERATION_NAME: Final = "db.operation.name"
DB_NAMESPACE: Final = "db.namespace"  # the Redis database index
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"

# Project attributes on those spans (`sel.cache.hit` too, on `cache get` and `cache lock`)
SEL_CACHE_LOCK_ACQUIRED: Final = "sel.cache.lock.acquired"  # this instance runs the agent
SEL_CACHE_LOCK_WAIT_MS: Final = "sel.cache.lock.wait_ms"  # time spent waiting for the holder
SEL_CACHE_DELETED: Final = "sel.cache.deleted"  # results deleted by an invalidation
SEL_CACHE_STORED: Final = "sel.cache.stored"  # false: the agent was invalidated meanwhile

# `error.type` of a cache operation skipped while the backend is considered down
CACHE_ERROR_CIRCUIT_OPEN: Final = "circuit_open"

# -- Execution history ----------------------------------------------------------------------
# Every agent call and every refusal is one history entry (SQLite, Redis Stream) and one log
# record, with the trace context of the call's span (a refusal: of the command's span).
HISTORY_EVENT: Final = "sel.agent.execution"  # the log record's event name
SEL_OUTCOME: Final = "sel.outcome"  # one of the OUTCOME_* values
SEL_HISTORY_ID: Final = "sel.history.id"  # the entry's id, the same in every store
SEL_AGENT_OUTPUT: Final = "sel.agent.output"  # only with SEL_HISTORY_OUTPUT_MAX > 0
OUTCOME_OK: Final = "ok"
OUTCOME_ERROR: Final = "error"
OUTCOME_REFUSED: Final = "refused"  # refused by the bot's checks; nothing ran

# Entries a store could not keep, by store (`sel.history.store`) and `error.type`
HISTORY_DROPPED: Final = "sel.history.dropped"
SEL_HISTORY_STORE: Final = "sel.history.store"  # sqlite, redis, otlp_logs
HISTORY_ERROR_QUEUE_FULL: Final = "queue_full"  # more entries pending than the bound
HISTORY_ERROR_NOT_WRITTEN: Final = "not_written"  # still pending when the store was closed

# -- Span export ------------------------------------------------------------------------------
# The span processor's counts: the SDK's own metric for a span processor (semantic conventions
# for SDK self-observability), with `sel.span.outcome` saying which spans: errors are dropped
# last, cache hits first. Dropped spans carry `error.type`.
PROCESSOR_SPANS_PROCESSED: Final = "otel.sdk.processor.span.processed"
SPAN_UNIT: Final = "{span}"
OTEL_COMPONENT_TYPE: Final = "otel.component.type"
OTEL_COMPONENT_NAME: Final = "otel.component.name"  # batching_span_processor/0, /1, ...
BATCHING_SPAN_PROCESSOR: Final = "batching_span_processor"
SEL_SPAN_OUTCOME: Final = "sel.span.outcome"  # error, ok or cache_hit (OUTCOME_*)
OUTCOME_CACHE_HIT: Final = "cache_hit"
SPAN_DROPPED_QUEUE_FULL: Final = "queue_full"  # the queue was full of spans at least as useful
SPAN_DROPPED_SHUTDOWN: Final = "already_shutdown"  # ended after the processor stopped
