"""The host-exec service: runs allow-listed commands on the host for the bot.

Token check → allow-list policy → process runner (no shell, bounded in time and output),
served over HTTP by aiohttp and traced with OpenTelemetry. It imports no cache, bot or Discord
code. The embedded launcher the bot uses to start it as a child process,
`sel_otel.hostexec._local.LocalHostExec`, belongs to the bot side and is not imported here.
"""

from __future__ import annotations

from ._allowlist import AllowList, Entry, OperandType
from ._policy import Approved, Policy, Refused
from ._runner import ExecResult, Runner
from ._server import create_app
from ._service import main, run_service
from ._settings import HostExecSettings

__all__ = [
    "AllowList",
    "Approved",
    "Entry",
    "ExecResult",
    "HostExecSettings",
    "OperandType",
    "Policy",
    "Refused",
    "Runner",
    "create_app",
    "main",
    "run_service",
]
