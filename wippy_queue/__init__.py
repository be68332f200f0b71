"""wippy-queue: a security-aware runtime for Wippy-style message queues."""

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
from wippy_queue.lifecycle.service import ServiceState
from wippy_queue.queue.api import current_actor, current_message
from wippy_queue.queue.driver import QueueInfo
from wippy_queue.queue.handle import MessageHandle
from wippy_queue.queue.message import Message
from wippy_queue.runtime import Runtime

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
