"""The SQS driver's entry, queue options and capabilities (no client library imported).

Credentials never come from an entry file: the driver uses the standard AWS chain
(environment, shared profile, container or instance role). ``max_length`` is not
offered (SQS cannot bound a queue); ``ttl`` is enforced by the runtime.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from wippy_queue.lifecycle.config import ServiceModel
from wippy_queue.queue.config import QueueOptions
from wippy_queue.queue.driver import Capabilities
from wippy_queue.registry.types import Duration

#: SQS's own limits
MAX_VISIBILITY_S = 43_200  # 12 h: a lease, and so a nack delay, never lasts longer
MAX_WAIT_S = 20  # the longest long poll
MAX_BATCH = 10  # entries per SendMessageBatch / DeleteMessageBatch / ChangeMessageVisibilityBatch
DEFAULT_VISIBILITY_S = 30
MAX_MESSAGE_BYTES = 1_048_576  # body + attributes; a queue's MaximumMessageSize may be lower

CAPABILITIES = Capabilities(
    # ApproximateReceiveCount: approximate by SQS's own word, and a release counts a
    # receive (the driver subtracts releases it made itself when it sees the message again)
    attempts="approximate",
    requeue="unordered",
    max_delay_s=MAX_VISIBILITY_S,
    info="approximate",
    partitions=True,
    durable=True,
    shared=True,
    leases=True,
)

_CREDENTIAL_KEYS = {
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "access_key",
    "secret_key",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "credentials",
}
_NAME = re.compile(r"[A-Za-z0-9_-]{1,75}(\.fifo)?|[A-Za-z0-9_-]{1,80}")


def valid_queue_name(name: str) -> bool:
    """SQS's rule: 1-80 of ``A-Za-z0-9_-``, a FIFO queue's ending in ``.fifo``."""
    return _NAME.fullmatch(name) is not None


#: between a partitioned queue's name and a partition's (``jobs-p-acme``)
PARTITION_MARK = "-p-"
#: the longest partitioned queue name: room for the mark and a 32-character partition
MAX_PARTITIONED_NAME = 80 - len(PARTITION_MARK) - 32


def partition_prefix(queue: str) -> str:
    """What every partition queue of ``queue`` is named with first (``ListQueues``)."""
    return queue.removesuffix(".fifo") + PARTITION_MARK


def partition_queue_name(queue: str, partition: str) -> str:
    """The SQS queue of ``partition`` of ``queue``: the queue itself for ``""``, else
    ``<queue>-p-<safe name>`` (``.fifo`` kept last)."""
    from wippy_queue.drivers.partitions import safe_name

    if not partition:
        return queue
    fifo = ".fifo" if queue.endswith(".fifo") else ""
    return partition_prefix(queue) + safe_name(partition) + fifo


class SqsDriverConfig(ServiceModel):
    """``queue.driver.sqs``.

    ``endpoint_url`` empty or absent: AWS itself (the region's endpoint); otherwise an
    SQS-compatible endpoint (moto, LocalStack, ElasticMQ, a VPC endpoint).
    """

    region: str | None = Field(default=None, min_length=1)
    endpoint_url: str | None = None
    #: a named profile of the shared AWS files (the chain's default when absent)
    profile: str | None = Field(default=None, min_length=1)
    #: seconds a receive long-polls (WaitTimeSeconds); a stop cuts it short
    wait_time: int = Field(default=MAX_WAIT_S, ge=1, le=MAX_WAIT_S, strict=True)
    #: how long an ack or nack may wait to share a batch call with others
    settle_linger: Duration = Field(default=0.1, ge=0.0, le=1.0)

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, data: Any) -> Any:
        if isinstance(data, dict):
            found = sorted(k for k in data if isinstance(k, str) and k.lower() in _CREDENTIAL_KEYS)
            if found:
                raise ValueError(
                    f"{', '.join(found)}: credentials are never read from entry files; "
                    "use the AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the "
                    "environment, a profile: NAME, or an instance/container role)"
                )
        return data

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # empty (an unset ${env:...:-}): AWS itself
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"endpoint_url must start with http:// or https://, got {value!r}")
        return value.strip()


class SqsQueueOptions(QueueOptions):
    """``driver_options: {sqs: {...}}`` of a queue on SQS."""

    #: CreateQueue when it does not exist (false: it must exist already)
    create: bool = Field(default=True, strict=True)
    #: the queue's VisibilityTimeout (a delivery's lease), whole seconds; unset: 30 for a
    #: queue we create, whatever an existing queue has
    visibility_timeout: int | None = Field(default=None, ge=1, le=MAX_VISIBILITY_S)

    @field_validator("visibility_timeout", mode="before")
    @classmethod
    def _whole_seconds(cls, value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return value
        from wippy_queue.registry.types import parse_duration

        seconds = parse_duration(value)
        if seconds != int(seconds):
            raise ValueError(f"SQS counts visibility in whole seconds, got {value!r}")
        return int(seconds)

    @field_validator("max_length")
    @classmethod
    def _no_max_length(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError(
                "SQS cannot bound a queue, so the sqs driver does not offer max_length; "
                "remove it (or use a driver that can: memory)"
            )
        return value
