"""The bearer-token check of the project's HTTP endpoints: the host-exec service and
`sel-otel serve`."""

from __future__ import annotations

import hmac
from collections.abc import Mapping


def bearer_matches(headers: Mapping[str, str], token: bytes) -> bool:
    """Whether `headers` carry `Authorization: Bearer <token>` (the scheme in any case),
    compared in constant time; never for an empty `token`."""
    if not token:
        return False
    scheme, _, given = headers.get("Authorization", "").partition(" ")
    # Header bytes that are not UTF-8 arrive as surrogates: back to bytes, never a match.
    given_bytes = given.strip().encode("utf-8", "surrogateescape")
    return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, token)
