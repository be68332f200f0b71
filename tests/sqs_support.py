"""moto's SQS server for the tests, on a free local port; no test reaches AWS.

``shared()`` is the one server of a test session, in a process of its own
(``moto_sqs_server.py``), started on first use; the ``moto_sqs`` fixture gives the
same. A fault test that stops the endpoint makes a ``MotoSqs`` of its own, in this
process, and stops and starts it on the same port: moto keeps its queues in the
process, so a queue outlives a stop of the HTTP server, as an SQS queue outlives an
outage of the network to it.

moto's long polls are made to notice a message made visible again within 20 ms
(moto looks once a second; SQS at once), so the tests wait as long as on SQS.

Fake credentials go into this process's environment (and so into every
``wippy-queue run`` subprocess a test starts): real ones are never sent anywhere.
moto is a test dependency: a server that does not start is a failure, not a skip.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from moto_sqs_server import prompt_long_polls, quiet

REGION = "us-east-1"
#: a delivery's lease in the tests: short, so expiry is quick to see
LEASE_S = 2
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}
_DROPPED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL")
START_TIMEOUT_S = 30.0


def fake_credentials() -> None:
    os.environ.update(FAKE_ENV)
    for name in _DROPPED:
        os.environ.pop(name, None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MotoSqs:
    """A moto server in a thread of this process, stoppable and restartable on its port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._server: Any = None
        self._connections: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoSqs:
        from moto.server import ThreadedMotoServer

        fake_credentials()
        prompt_long_polls()
        quiet()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        wsgi = server._server
        accept = wsgi.get_request

        def get_request() -> tuple[socket.socket, Any]:
            conn, address = accept()
            self._connections.append(conn)
            return conn, address

        wsgi.get_request = get_request
        wsgi.handle_error = lambda *args: None  # a cut connection is what a stop means here
        self._server = server
        return self

    def stop(self) -> None:
        """Down: no new connection is accepted and every open one (keep-alive, a long poll
        in progress) is cut, as a network outage does."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            server._server.server_close()  # free the port (shutdown alone keeps it bound)
        connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


class SharedMoto:
    """The session's server: moto in a subprocess."""

    def __init__(self) -> None:
        fake_credentials()
        self.port = free_port()
        script = Path(__file__).with_name("moto_sqs_server.py")
        self.process = subprocess.Popen(
            [sys.executable, str(script), str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"moto's SQS server did not start (exit {self.process.poll()})")
        _wait_listening(self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


_SHARED: SharedMoto | None = None


def shared() -> SharedMoto:
    """The session's server, started on first use."""
    global _SHARED
    if _SHARED is None:
        _SHARED = SharedMoto()
        atexit.register(_SHARED.stop)
    return _SHARED


@pytest.fixture(scope="session")
def moto_sqs() -> Iterator[SharedMoto]:
    yield shared()


def driver_fields(url: str) -> dict[str, Any]:
    """A driver entry's own fields for moto at ``url``."""
    return {"region": REGION, "endpoint_url": url, "settle_linger": "20ms"}
