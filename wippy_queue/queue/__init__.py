"""Messages, the driver protocol, queues, consumers; and the handler-side queue API.

``wippy_queue.queue.publish`` / ``publish_async`` / ``message`` mirror Wippy's Lua
``queue`` module for Python handlers.
"""

from wippy_queue.queue.api import current_message, publish, publish_async

message = current_message

__all__ = ["current_message", "message", "publish", "publish_async"]
