"""``queue.queue`` and ``queue.consumer`` entries: their fields, defaults and limits."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from wippy_queue.lifecycle.config import ServiceModel
from wippy_queue.queue.codec import CODEC_NAMES
from wippy_queue.registry.entry import EntryModel, Reference, StrictModel
from wippy_queue.registry.types import Duration, Ref

MAX_CONCURRENCY = 1000
MAX_PREFETCH = 10_000

DRIVER_KINDS = ("queue.driver.*",)
#: what a queue may be partitioned by (a request field)
PARTITION_PATTERN = r"^message\.(tenant|headers\.[A-Za-z0-9_.\-]+)$"
FUNCTION_KINDS = ("function.*",)


class QueueOptions(StrictModel):
    """What every driver's queue options share (``driver_options: {KIND: {...}}``).

    ``max_length`` bounds the queue (publish waits while it is full; nothing is ever
    trimmed); ``ttl`` expires a message not handled in time: it is dead-lettered
    (``x_dead_letter_reason: expired``) or, with no dead-letter queue, dropped and
    counted in ``info``; never handed to a handler.
    """

    max_length: int | None = Field(default=None, gt=0, le=1_000_000_000)
    ttl: Duration | None = Field(default=None, gt=0)


class DeadLetter(StrictModel):
    queue: Ref
    max_attempts: int = Field(default=5, ge=1, le=1_000_000, strict=True)


class QueueConfig(EntryModel):
    """``queue.queue``."""

    driver: Ref
    queue_name: str | None = Field(default=None, min_length=1)
    codec: str = "json"
    driver_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    dead_letter: DeadLetter | None = None
    #: ``message.tenant`` (the verified publisher's tenant) or ``message.headers.NAME``
    partition_by: str | None = Field(default=None, pattern=PARTITION_PATTERN)

    @field_validator("codec")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        if value not in CODEC_NAMES:
            raise ValueError(f"unknown codec {value!r}; use one of {', '.join(CODEC_NAMES)}")
        return value

    def references(self) -> list[Reference]:
        refs = [Reference("driver", self.driver, DRIVER_KINDS)]
        if self.dead_letter:
            refs.append(Reference("dead_letter.queue", self.dead_letter.queue, ("queue.queue",)))
        return refs

    def options_for(self, driver_type: str) -> dict[str, Any]:
        """Driver options: ``driver_options[<type>]`` over the seed's plain ``options``."""
        return {**self.options, **self.driver_options.get(driver_type, {})}


def _default_if_not_positive(value: Any, default: int) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
        return default
    return value


class ConsumerConfig(ServiceModel):
    """``queue.consumer``."""

    queue: Ref
    func: Ref
    concurrency: int = Field(default=1, le=MAX_CONCURRENCY, strict=True)
    prefetch: int = Field(default=10, le=MAX_PREFETCH, strict=True)
    auto_ack: bool = Field(default=False, strict=True)
    timeout: Duration | None = Field(default=None, gt=0)
    driver_options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("concurrency", mode="before")
    @classmethod
    def _concurrency(cls, value: Any) -> Any:
        return _default_if_not_positive(value, 1)

    @field_validator("prefetch", mode="before")
    @classmethod
    def _prefetch(cls, value: Any) -> Any:
        return _default_if_not_positive(value, 10)

    def references(self) -> list[Reference]:
        return [
            Reference("queue", self.queue, ("queue.queue",)),
            Reference("func", self.func, FUNCTION_KINDS),
            *super().references(),
        ]
