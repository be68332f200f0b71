"""``queue.driver.amqp`` entries and options; never imports the AMQP client library.

Queues are quorum queues by default (``type: classic`` for classic ones). What
``Delivery.attempt`` means on each:

- quorum: the broker's own ``x-delivery-count`` (a failed attempt is a
  ``basic.nack`` with requeue, which the broker counts; a crash or a lost
  connection counts too), plus the attempts carried in the ``x-wq-attempts``
  header by the copies the driver republishes (a delayed nack, a release, whose
  copies the broker starts counting afresh). Exact.
- classic: classic queues keep no delivery count, so every failed attempt is a
  republished copy carrying the count in ``x-wq-attempts``; a delivery the broker
  gives back after a crash or a lost connection (``redelivered``) counts one more,
  however often that happened. Approximate (never lower than the failed attempts).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from wippy_queue.lifecycle.config import ServiceModel
from wippy_queue.queue.config import QueueOptions
from wippy_queue.queue.driver import Capabilities
from wippy_queue.registry.entry import StrictModel

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"

#: x-message-ttl is an unsigned 32-bit count of milliseconds
MAX_DELAY_S = 4_000_000.0


class AmqpDriverConfig(ServiceModel):
    """``queue.driver.amqp``: where the broker is."""

    url: str = DEFAULT_URL

    @field_validator("url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        if not value.startswith(("amqp://", "amqps://")):
            raise ValueError(f"url must start with amqp:// or amqps://, got {value!r}")
        return value


class AmqpQueueOptions(QueueOptions):
    """``driver_options: {amqp: {...}}`` of a queue on the AMQP driver.

    ``max_length`` becomes the queue's ``x-max-length`` with ``x-overflow:
    reject-publish``; a publish waits while the queue holds that many ready messages.
    """

    type: Literal["quorum", "classic"] = "quorum"


class AmqpConsumerOptions(StrictModel):
    """``driver_options: {amqp: {...}}`` of a consumer (none yet: QoS is the
    consumer's ``prefetch + concurrency``)."""

    priority: int | None = Field(default=None, ge=-1000, le=1000, strict=True)


#: quorum queues (the default); classic queues count attempts approximately
CAPABILITIES = Capabilities(
    attempts="exact",
    requeue="tail",
    max_delay_s=MAX_DELAY_S,
    info="exact",
    partitions=True,
    durable=True,
    shared=True,
    leases=False,
    group_commit=True,  # acks go out in batches: a worker takes its next message meanwhile
)

#: what a ``type: classic`` queue gives
CLASSIC_CAPABILITIES = Capabilities(
    attempts="approximate",
    requeue="tail",
    max_delay_s=MAX_DELAY_S,
    info="exact",
    partitions=True,
    durable=True,
    shared=True,
    leases=False,
    group_commit=True,  # acks go out in batches: a worker takes its next message meanwhile
)
