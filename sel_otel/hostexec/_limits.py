"""What a request may cost the service before it is answered: its body, read within limits.

aiohttp's defaults suit a public web site, not a service that answers a few small requests:
it inflates compressed bodies as they arrive (a 1 MB gzip body is 1 GiB of work), and keeps
reading a body nobody asked for, for up to ten seconds, after answering. The service turns
both off (`_service.py`) and reads a body only through `read_body`.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

_IDENTITY = ("", "identity")


class BodyRefused(Exception):
    """A request body the service will not read; `status` and `message` are the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(request: web.Request, *, time_limit: float) -> bytes:
    """The request's body, at most `request.client_max_size` bytes, never inflated, read
    within `time_limit` seconds.

    Raises BodyRefused: 415 for any `Content-Encoding` but identity, 413 for a body over the
    cap (by its `Content-Length` before a byte of it is read, else once the cap is passed),
    408 for a body still arriving after `time_limit` seconds (a slow client holds a connection
    and a request in the service for as long as its body takes).
    """
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in _IDENTITY:
        raise BodyRefused(415, "Content-Encoding is not supported; send the body uncompressed")
    limit = request.client_max_size
    too_large = BodyRefused(413, f"body is over {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        async with asyncio.timeout(time_limit):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    except TimeoutError:
        raise BodyRefused(408, f"the body took more than {time_limit:g}s to arrive") from None
