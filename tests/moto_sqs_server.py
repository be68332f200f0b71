"""moto's SQS server in a process of its own: ``python moto_sqs_server.py PORT``.

The tests' shared endpoint runs here, so moto's threads never compete with a test
for its interpreter. It exits when the process that started it is gone.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any


def prompt_long_polls() -> None:
    """moto's long poll looks again for messages made visible (a release, a nack, a lease
    that ran out) once a second, where SQS finds them at once: look every 20 ms."""
    from moto.sqs.models import Queue

    if getattr(Queue.wait_for_messages, "prompt", False):
        return

    def wait_for_messages(self: Any, timeout: int) -> None:
        with self._messages_lock:
            self._messages_lock.wait_for(lambda: self.messages, timeout=min(timeout, 0.02))

    wait_for_messages.prompt = True  # type: ignore[attr-defined]
    Queue.wait_for_messages = wait_for_messages


def quiet() -> None:
    """No line per request (werkzeug's default), to any stream."""
    logger = logging.getLogger("werkzeug")
    logger.setLevel(logging.ERROR)
    logger.addHandler(logging.NullHandler())


def main() -> None:
    from moto.server import ThreadedMotoServer

    port, parent = int(sys.argv[1]), os.getppid()
    prompt_long_polls()
    quiet()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    print("ready", flush=True)
    while os.getppid() == parent:
        time.sleep(0.5)
    server.stop()


if __name__ == "__main__":
    main()
