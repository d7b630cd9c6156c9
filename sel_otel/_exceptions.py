"""The sel_otel exception tree.

```
SelOtelError
├── StartupError              the process could not start: a service it needs is unreachable
│   └── ConfigError           ... because a setting is bad or missing
├── AgentError                an agent call did not produce an output (carries `agent`)
│   ├── AgentNotFound         no agent of that name (carries `known`)
│   ├── AgentLoadError        an agent file failed to import or breaks the contract (carries `path`)
│   ├── AgentTimeout          the call ran past its timeout
│   ├── AgentBusy             a sync agent found no free thread before its timeout
│   │   └── AgentThreadsExhausted  ... as its own calls still running hold all of its share
│   ├── AgentFailed           the agent raised (carries `original`)
│   └── AgentOutputError      the agent returned a non-string or an output over the cap
├── AgentReplyError           raised by agent code: fail the call with a message for the user
├── Refused                   a frontend's access policy refused a request; nothing ran
│   ├── NotPermitted          the user may not do that (as discord.py's `CheckFailure`)
│   └── OnCooldown            the user did it too recently (carries `retry_after`)
└── StatsStoreError           the shared stats could not be read or published (carries `original`)
```
Library errors are translated at the boundary with `raise ... from exc`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

from ._markup import code_span


class SelOtelError(Exception):
    """Base of every error raised by sel_otel."""


class StartupError(SelOtelError):
    """The process could not start: a service it needs refused it or could not be reached.

    Each entry point answers it in one place: the message, and exit status 2.
    """


class ConfigError(StartupError):
    """A setting is missing or invalid."""


class AgentError(SelOtelError):
    """An agent call did not produce an output."""

    #: Low-cardinality name recorded as `error.type` on spans and metrics.
    error_type: str = "agent_error"

    def __init__(self, message: str, *, agent: str) -> None:
        super().__init__(message)
        self.agent = agent

    @property
    def reply(self) -> str:
        """The text a user is shown for this error."""
        return f"❌ {self}"


class AgentNotFound(AgentError):
    """No agent is registered under that name."""

    error_type = "agent_not_found"

    def __init__(self, agent: str, *, known: list[str]) -> None:
        listing = ", ".join(known) if known else "none"
        shown = repr(agent) if agent.isidentifier() else code_span(agent)  # as the user typed it
        super().__init__(f"Unknown agent {shown}. Known agents: {listing}", agent=agent)
        self.known = known


class AgentLoadError(AgentError):
    """An agent file failed to import, or its module breaks the agent contract."""

    error_type = "agent_load_error"

    def __init__(self, agent: str, *, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}", agent=agent)
        self.path = path
        self.reason = reason


class AgentTimeout(AgentError):
    """The agent ran past its timeout and was abandoned; `blocked` is how long it held the
    event loop past its deadline (an async agent that blocks), 0 when it did not."""

    error_type = "timeout"

    def __init__(self, agent: str, *, timeout: float, blocked: float = 0.0) -> None:
        message = f"Agent {agent!r} timed out after {timeout:g}s"
        if blocked:
            message += f": it blocked the event loop for {blocked:.2f}s"
        super().__init__(message, agent=agent)
        self.timeout = timeout
        self.blocked = blocked


class AgentBusy(AgentError):
    """A sync agent's call could not start before its timeout: every thread for sync agents
    was taken, by calls still running (hung agents keep theirs until they end)."""

    error_type = "no_free_thread"

    def __init__(self, agent: str, *, timeout: float, threads: int) -> None:
        super().__init__(
            f"Agent {agent!r} could not start within {timeout:g}s: {self._taken(threads)}",
            agent=agent,
        )
        self.timeout = timeout

    @staticmethod
    def _taken(threads: int) -> str:
        return f"all {threads} threads for sync agents are taken by calls still running"


class AgentThreadsExhausted(AgentBusy):
    """A sync agent's call could not start before its timeout: the agent's own calls still
    running (hung, most likely) hold every thread of its share."""

    error_type = "threads_exhausted"

    @staticmethod
    def _taken(threads: int) -> str:
        return f"its {threads} threads are all taken by its calls still running"


class AgentFailed(AgentError):
    """The agent raised an exception."""

    def __init__(self, agent: str, *, original: BaseException) -> None:
        super().__init__(
            f"Agent {agent!r} failed: {type(original).__name__}: {original}", agent=agent
        )
        self.original = original
        #: The exception's own class name: what the agent raised is what went wrong.
        self.error_type = type(original).__qualname__

    @property
    def reply(self) -> str:
        """An `AgentReplyError`'s message as it is; any other exception's text quoted, as it
        may hold the input."""
        if isinstance(self.original, AgentReplyError):
            return str(self.original)
        text = str(self.original)
        detail = f": {code_span(text)}" if text else ""
        return f"❌ Agent {self.agent!r} failed: {type(self.original).__name__}{detail}"


class AgentOutputError(AgentError):
    """The agent returned something other than a string, or an output over the cap."""

    error_type = "invalid_output"


class AgentReplyError(SelOtelError):
    """Raised by an agent to fail its call with a message shown to the user as it is.

    The call counts as an error (never cached, `error.type` is the subclass name), and the
    reply is the message alone, e.g. `⚠️ Command blocked by the allow-list: rm -rf /`.
    """


class Refused(SelOtelError):
    """A frontend refused a request before anything ran; the message is the reply shown to
    the user, `outcome` the low-cardinality reason recorded (`sel.discord.outcome`, the
    history's refusal reason)."""

    outcome: ClassVar[str] = "refused"


class NotPermitted(Refused):
    """The user may not do that: a privileged agent, an owners' command."""

    outcome = "forbidden"


class OnCooldown(Refused):
    """The user did that within the cooldown; `retry_after` is the wait, in seconds."""

    outcome = "cooldown"

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"⏳ Slow down: try again in {math.ceil(retry_after)}s.")
        self.retry_after = retry_after


class StatsStoreError(SelOtelError):
    """The store where instances publish their stats (Redis) could not be read or written."""

    def __init__(self, message: str, *, original: BaseException) -> None:
        super().__init__(message)
        self.original = original
