"""Whether a Docker engine answers, for the tests that need one (testcontainers)."""

from __future__ import annotations

import gc
import os
import warnings


def docker_engine_problem() -> str | None:
    """Why no Docker engine can be used, or None when one answers a ping."""
    try:
        import docker
    except ImportError as exc:
        return f"the docker package is not installed ({exc})"
    # docker-py leaves its socket open when the engine is absent; collect it here, quietly,
    # rather than let a ResourceWarning surface in whichever test runs next.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=5)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:
            host = os.environ.get("DOCKER_HOST", "the default socket")
            return f"no Docker engine answers at {host}: {type(exc).__name__}: {exc}"
        finally:
            gc.collect()
    return None
