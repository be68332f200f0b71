"""The ``lifecycle`` block of a service entry (drivers, consumers): Wippy's supervision fields."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from wippy_queue.registry.entry import EntryModel, Reference, StrictModel
from wippy_queue.registry.types import Duration, Ref


class RestartPolicy(StrictModel):
    initial_delay: Duration = 1.0
    max_delay: Duration = 90.0
    backoff_factor: float = Field(default=2.0, ge=1.0, le=100.0, strict=True)
    jitter: float = Field(default=0.1, ge=0.0, le=1.0, strict=True)
    max_attempts: int = Field(default=0, ge=0, strict=True, description="0 restarts forever")


class ActorConfig(StrictModel):
    id: str = Field(min_length=1)
    meta: dict[str, Any] = Field(default_factory=dict)


class SecurityBlock(StrictModel):
    """``lifecycle.security``: who a consumer's handler calls run as."""

    actor: ActorConfig | None = None
    policies: list[Ref] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)


class Lifecycle(StrictModel):
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
