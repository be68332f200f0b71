"""Pydantic models of the core kinds: the one source of truth for fields and defaults."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from wippy_queue.registry.entry import EntryModel, Reference
from wippy_queue.registry.types import Duration, Ref

MAX_CONCURRENCY = 1000
MAX_PREFETCH = 10_000

SERVICE_KINDS = ("queue.driver.*", "queue.consumer")
DRIVER_KINDS = ("queue.driver.*",)
FUNCTION_KINDS = ("function.*",)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RestartPolicy(_Strict):
    initial_delay: Duration = 1.0
    max_delay: Duration = 90.0
    backoff_factor: float = Field(default=2.0, ge=1.0, le=100.0, strict=True)
    jitter: float = Field(default=0.1, ge=0.0, le=1.0, strict=True)
    max_attempts: int = Field(default=0, ge=0, strict=True, description="0 restarts forever")


class ActorConfig(_Strict):
    id: str = Field(min_length=1)
    meta: dict[str, Any] = Field(default_factory=dict)


class SecurityBlock(_Strict):
    """``lifecycle.security``: who a consumer's handler calls run as."""

    actor: ActorConfig | None = None
    policies: list[Ref] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)


class Lifecycle(_Strict):
    # strict: a YAML `true` is no count and a quoted "yes" no switch (wrong types are errors)
    auto_start: bool = Field(default=False, strict=True)
    start_timeout: Duration = 10.0
    stop_timeout: Duration = 10.0
    stable_threshold: Duration = 5.0
    requires: list[Ref] = Field(default_factory=list)
    depends_on: list[Ref] = Field(default_factory=list)
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    startup: Literal["required", "optional"] = "required"
    security: SecurityBlock | None = None

    def dependencies(self) -> list[str]:
        return list(dict.fromkeys([*self.requires, *self.depends_on]))

    def references(self) -> list[Reference]:
        refs = [Reference("lifecycle.requires", r, ("*",)) for r in self.requires]
        refs += [Reference("lifecycle.depends_on", r, ("*",)) for r in self.depends_on]
        if self.security:
            refs += [
                Reference("lifecycle.security.policies", p, ("security.policy*",), False)
                for p in self.security.policies
            ]
        return refs


class ServiceModel(EntryModel):
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)

    def references(self) -> list[Reference]:
        return self.lifecycle.references()


class MemoryDriverConfig(ServiceModel):
    """``queue.driver.memory``: no options of its own."""


class DeadLetter(_Strict):
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

    @field_validator("codec")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        from wippy_queue.queue.codec import CODEC_NAMES

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


_DOTTED = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$")


class PythonFunctionConfig(EntryModel):
    """``function.python``: ``source: file://x.py`` + ``method``, or ``pkg.module:function``."""

    source: str
    method: str | None = Field(default=None, pattern=r"^[A-Za-z_]\w*$")

    @model_validator(mode="after")
    def _shape(self) -> PythonFunctionConfig:
        if self.source.startswith("file://"):
            path = Path(self.source.removeprefix("file://"))
            if not self.method:
                raise ValueError(
                    "a file:// source needs 'method': the name of the function in the file"
                )
            if path.suffix != ".py":
                raise ValueError(f"source {path} is not a .py file")
            if not path.is_file():
                raise ValueError(f"source file {path} does not exist")
        elif not _DOTTED.match(self.source):
            raise ValueError(
                f"source {self.source!r} is neither file://path.py nor package.module:function"
            )
        elif ":" not in self.source and not self.method:
            raise ValueError(
                "source names a module without a function: write 'package.module:function' "
                "or add 'method'"
            )
        return self
