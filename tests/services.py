"""Brokers the tests need: reachable, or a skip that says why (a failure in CI).

Under ``WIPPY_QUEUE_REQUIRE_SERVICES=1`` (``.ci/run`` sets it) a missing broker
fails the test instead of skipping it: nothing may silently skip in CI.
"""

from __future__ import annotations

import functools
import os
import socket

import pytest

REQUIRED = os.environ.get("WIPPY_QUEUE_REQUIRE_SERVICES") == "1"

REDIS_URL = os.environ.get("WIPPY_QUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("WIPPY_QUEUE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@functools.cache
def _reachable(host: str, port: int) -> str | None:
    """None when something listens at host:port, else why not."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return None
    except OSError as err:
        return f"{host}:{port} unreachable ({err})"


def require(name: str, host: str, port: int, *, module: str | None = None) -> None:
    """Skip (or, in CI, fail) unless broker ``name`` answers and its client is installed."""
    why = _reachable(host, port)
    if why is None and module is not None:
        try:
            __import__(module)
        except ImportError as err:
            why = f"its client library is not installed ({err})"
    if why is None:
        return
    message = f"{name} is needed: {why}"
    if REQUIRED:
        pytest.fail(f"{message} (WIPPY_QUEUE_REQUIRE_SERVICES=1: a missing broker fails)")
    pytest.skip(message)


def redis_address() -> tuple[str, int]:
    from urllib.parse import urlparse

    parsed = urlparse(REDIS_URL)
    return parsed.hostname or "127.0.0.1", parsed.port or 6379


def redis_delete_prefix(prefix: str) -> None:
    """Delete the keys a test made (they all start with its own prefix)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)  # own: every key starts with this test's prefix
    finally:
        client.close()
