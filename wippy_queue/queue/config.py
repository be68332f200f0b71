"""``queue.queue`` and ``queue.consumer`` entries: their fields, defaults and limits."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from wippy_queue.lifecycle.config import ServiceModel
from wippy_queue.queue.codec import CODEC_NAMES
from wippy_queue.registry.entry import EntryModel, Reference, StrictModel
from wippy_queue.registry.types import Duration, Ref, parse_duration

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


class RetryDelay(StrictModel):
    """``retry_delay``: how long a failed attempt's message waits before it is offered again.

    ``initial``, growing by ``factor`` each attempt to at most ``max`` (a ceiling,
    jitter included), each delay moved at random by up to ``jitter`` of itself so
    that messages that failed together do not come back together. A single duration
    is a fixed delay: ``retry_delay: 0`` is Wippy's immediate requeue.
    """

    initial: Duration = 0.1
    max: Duration = 30.0
    factor: float = Field(default=2.0, ge=1.0, le=100.0, strict=True)
    jitter: float = Field(default=0.1, ge=0.0, le=1.0, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _fixed(cls, value: Any) -> Any:
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            seconds = parse_duration(value)  # one problem for one wrong value, not two
            return {"initial": seconds, "max": seconds, "jitter": 0.0}
        return value

    @model_validator(mode="after")
    def _ordered(self) -> RetryDelay:
        if self.max < self.initial:
            raise ValueError(f"max ({self.max:g}s) is below initial ({self.initial:g}s); raise max")
        return self


class QueueConfig(EntryModel):
    """``queue.queue``."""

    driver: Ref
    queue_name: str | None = Field(default=None, min_length=1)
    codec: str = "json"
    driver_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    dead_letter: DeadLetter | None = None
    #: how long a failed attempt waits (a denial waits security.settings deny_backoff)
    retry_delay: RetryDelay = Field(default_factory=RetryDelay)
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
