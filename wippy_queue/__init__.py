"""wippy-queue: a security-aware runtime for Wippy-style message queues.

The errors and ``Actor`` are imported with the package; the runtime and the message
types are imported when first used (``wippy_queue.Runtime``, ``from wippy_queue
import Runtime``), so that importing the package, as ``wippy-queue --help`` does,
does not import pydantic, Casbin and the rest of the runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from wippy_queue.errors import (
    ConfigError,
    DriverError,
    HandlerError,
    LifecycleError,
    PermissionDenied,
    Problem,
    PublishError,
    RegistryError,
    SettleError,
    WippyQueueError,
)
from wippy_queue.identity import Actor

if TYPE_CHECKING:
    from wippy_queue.lifecycle.service import ServiceState
    from wippy_queue.queue.api import current_actor, current_message
    from wippy_queue.queue.driver import QueueInfo
    from wippy_queue.queue.handle import MessageHandle
    from wippy_queue.queue.message import Message
    from wippy_queue.runtime import Runtime

#: the public names imported on first use, and the module each comes from
_LAZY = {
    "Runtime": "wippy_queue.runtime",
    "ServiceState": "wippy_queue.lifecycle.service",
    "QueueInfo": "wippy_queue.queue.driver",
    "Message": "wippy_queue.queue.message",
    "MessageHandle": "wippy_queue.queue.handle",
    "current_message": "wippy_queue.queue.api",
    "current_actor": "wippy_queue.queue.api",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wippy_queue' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # imported once: later lookups find it here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    # running
    "Runtime",
    "ServiceState",
    "QueueInfo",
    # messages and handlers
    "Message",
    "MessageHandle",
    "current_message",
    "current_actor",
    "Actor",
    # errors
    "WippyQueueError",
    "ConfigError",
    "Problem",
    "RegistryError",
    "LifecycleError",
    "DriverError",
    "PublishError",
    "SettleError",
    "HandlerError",
    "PermissionDenied",
]
