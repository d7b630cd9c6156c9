"""Whether a Docker engine and an image can be used, for the tests that need them (testcontainers).

A test that runs a container calls `use_docker_image(image, ...)` first: it skips, saying why,
unless an engine answers and the image is there (a public image may be pulled; the project's
own images are only ever built here, by scripts/docker-setup.sh, never pulled: a registry may
hold anything under their names). It then points testcontainers at this engine.

The project's images are `sel-otel/NAME:test`, or what `SEL_TEST_NAME_IMAGE` says (the same
rule as scripts/docker-setup.sh, which builds them).
"""

from __future__ import annotations

import gc
import os
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from sel_otel._loadtest_stack import configure_testcontainers

#: How long a pull of a public image may stay silent before it counts as impossible.
PULL_TIMEOUT = 60.0


def project_image(name: str) -> str:
    """The tag of the project's own image NAME (redis, python, app...)."""
    return os.environ.get(f"SEL_TEST_{name.upper()}_IMAGE", f"sel-otel/{name}:test")


def _ask_engine(
    question: Callable[[Any], str | None], *, timeout: float, failure: str
) -> str | None:
    """`question(client)` asked of a client of the engine: its answer, or `failure` with the
    exception when there is no engine or the question raises."""
    try:
        import docker
    except ImportError as exc:
        return f"the docker package is not installed ({exc})"
    # docker-py leaves its socket open when the engine is absent; collect it here, quietly,
    # rather than let a ResourceWarning surface in whichever test runs next.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=timeout)
            try:
                return question(client)
            finally:
                client.close()
        except Exception as exc:
            return f"{failure}: {type(exc).__name__}: {exc}"
        finally:
            gc.collect()


def docker_engine_problem() -> str | None:
    """Why no Docker engine can be used, or None when one answers a ping."""
    host = os.environ.get("DOCKER_HOST", "the default socket")
    return _ask_engine(
        lambda client: client.ping() and None,
        timeout=5,
        failure=f"no Docker engine answers at {host}",
    )


def docker_image_problem(image: str, *, pull: bool) -> str | None:
    """Why `image` cannot run here, or None: no engine, or the image is absent and either may
    not be pulled (`pull=False`, the project's own images) or could not be."""

    def absent_and_not_pullable(client: Any) -> str | None:
        import docker.errors

        try:
            client.images.get(image)
            return None
        except docker.errors.ImageNotFound:
            if not pull:
                return f"image {image} is not built (sh scripts/docker-setup.sh builds it)"
        client.images.pull(image)
        return None

    return docker_engine_problem() or _ask_engine(
        absent_and_not_pullable,
        timeout=PULL_TIMEOUT,
        failure=f"image {image} is not here and cannot be pulled",
    )


def use_docker_image(image: str, *, pull: bool, purpose: str) -> None:
    """Skip the calling test unless `image` can run (see `docker_image_problem`); then set
    testcontainers up for this engine."""
    problem = docker_image_problem(image, pull=pull)
    if problem is not None:
        pytest.skip(f"{purpose} needs a Docker engine with {image}; {problem}")
    configure_testcontainers()
