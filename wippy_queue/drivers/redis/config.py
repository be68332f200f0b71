"""``queue.driver.redis`` entry, queue and consumer options, and what the driver can do.

Nothing here imports redis: entry files validate without the ``redis`` extra.
"""

from __future__ import annotations

import math

from pydantic import Field, field_validator

from wippy_queue.lifecycle.config import ServiceModel
from wippy_queue.queue.config import QueueOptions
from wippy_queue.queue.driver import Capabilities
from wippy_queue.registry.entry import StrictModel
from wippy_queue.registry.types import Duration

DEFAULT_URL = "redis://127.0.0.1:6379/0"

CAPABILITIES = Capabilities(
    attempts="exact",
    requeue="tail",
    max_delay_s=math.inf,
    info="exact",
    partitions=True,
    durable=True,  # as durable as the server's own persistence (AOF/RDB) makes it
    shared=True,
    leases=True,
)


class RedisDriverConfig(ServiceModel):
    """``queue.driver.redis``: where the server is."""

    url: str = Field(default=DEFAULT_URL, min_length=1)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"url {value!r} is not a Redis URL; write redis://host:port/db "
                "(rediss:// for TLS, unix:///path/to.sock for a socket)"
            )
        return value


class RedisQueueOptions(QueueOptions):
    """``driver_options: {redis: {...}}`` of a queue.

    ``visibility_timeout``: a delivery held this long by a consumer that stopped
    renewing it (a process that died) is claimed by a live one.
    """

    visibility_timeout: Duration = Field(default=30.0, gt=0, le=86_400)


class RedisConsumerOptions(StrictModel):
    """``driver_options: {redis: {...}}`` of a consumer.

    ``read_block``: how long one read waits on the server for new messages before it
    looks again (for claims of dead consumers' messages and for a stop).
    """

    read_block: Duration = Field(default=1.0, gt=0, le=5)
