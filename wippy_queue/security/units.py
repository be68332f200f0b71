"""Policy units: one Casbin enforcer each, asked the same Request.

- ``WippyRulesUnit``: the ``security.policy`` entries of a scope, compiled into
  rules of the shipped model ``policies/wippy_rules.conf``.
- ``CasbinUnit``: one ``security.policy.casbin`` entry, its own model and rules,
  with ``request:`` mapping a Request onto the model's request tokens.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from wippy_queue.errors import Problem
from wippy_queue.security.conditions import evaluate
from wippy_queue.security.enforcer import (
    Enforcer,
    PolicyLine,
    PolicyLoadError,
    read_model,
    read_policy,
)
from wippy_queue.security.models import CasbinPolicyConfig, Condition, WippyPolicyConfig
from wippy_queue.security.request import ActorView, MessageView, Request

_PLAIN = (str, int, float, bool, type(None))


@dataclass(frozen=True, slots=True)
class Verdict:
    """One unit's answer: ``allow``, ``deny`` or None (no rule matched)."""

    effect: str | None
    policy: str | None = None
    rule: tuple[str, ...] = ()


class PolicyUnit(ABC):
    #: policy entry ids this unit enforces
    policies: tuple[str, ...]

    @abstractmethod
    def decide(self, request: Request) -> Verdict: ...

    @abstractmethod
    def cache_key(self, request: Request) -> Hashable | None:
        """What the decision depends on, or None if it cannot be cached."""


def wippy_model_text() -> str:
    return resources.files("wippy_queue.policies").joinpath("wippy_rules.conf").read_text()


def _hashable(value: Any) -> Hashable | None:
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, list | tuple):
        items = tuple(_hashable(v) for v in value)
        if any(h is None and v is not None for h, v in zip(items, value, strict=True)):
            return None
        return items
    return None


class WippyRulesUnit(PolicyUnit):
    def __init__(self, entries: Sequence[tuple[str, WippyPolicyConfig]]) -> None:
        self.policies = tuple(pid for pid, _ in entries)
        self._conditions: dict[str, list[Condition]] = {}
        rules: list[PolicyLine] = []
        fields: set[str] = set()
        for pid, config in entries:
            rule = config.policy
            cond = pid if rule.conditions else ""
            if rule.conditions:
                self._conditions[pid] = list(rule.conditions)
                for c in rule.conditions:
                    fields.add(c.field)
                    if c.value_from:
                        fields.add(c.value_from)
            for action in rule.actions:
                for resource in rule.resources:
                    values = (action, resource, cond, rule.effect, pid)
                    rules.append(PolicyLine("p", values, pid, 0))
        self._fields = tuple(sorted(fields))
        self._enforcer = Enforcer(
            wippy_model_text(),
            rules,
            functions={"wippyCond": self._cond},
            source="policies/wippy_rules.conf",
        )

    def _cond(self, cond: str, request: Request) -> bool:
        if not cond:
            return True
        return all(
            evaluate(c.field, c.operator, request, c.value, c.value_from)
            for c in self._conditions[cond]
        )

    def decide(self, request: Request) -> Verdict:
        effect, rule = self._enforcer.decide(request.action, request.resource, request)
        return Verdict(effect, rule[4] if rule else None, tuple(rule))

    def cache_key(self, request: Request) -> Hashable | None:
        key = []
        for field in self._fields:
            value = request.value(field)
            hashable = _hashable(value)
            if hashable is None and value is not None:
                return None
            key.append(hashable)
        return tuple(key)


def _sample(token: str) -> Any:
    if token == "actor":
        return ActorView("sample-actor", {}, "sample-tenant")
    if token == "message":
        return MessageView({}, "sample-actor", "sample-tenant")
    return "sample"


class CasbinUnit(PolicyUnit):
    def __init__(self, entry_id: str, config: CasbinPolicyConfig) -> None:
        self.policies = (entry_id,)
        self.entry_id = entry_id
        self.config = config
        self.model_path = Path(config.model.removeprefix("file://"))
        self.policy_path = Path(config.policy.removeprefix("file://")) if config.policy else None
        self._tokens = tuple(config.request)
        self._objects = any(t in ("actor", "message") for t in self._tokens)
        self._enforcer = self.load()

    def load(self) -> Enforcer:
        """Read and check the model and rules; PolicyLoadError says file and line."""
        model_file = str(self.model_path)
        model_text = self.model_path.read_text(encoding="utf-8")
        info = read_model(model_text, model_file)
        if len(info.request_tokens) != len(self._tokens):
            raise PolicyLoadError(
                [
                    Problem(
                        f"the model's request has {len(info.request_tokens)} tokens "
                        f"({', '.join(info.request_tokens)}) but the entry's 'request' maps "
                        f"{len(self._tokens)} ({', '.join(self._tokens)}); make them match",
                        model_file,
                        info.request_line,
                        self.entry_id,
                        "request",
                    )
                ]
            )
        rules: list[PolicyLine] = []
        if self.policy_path is not None:
            text = self.policy_path.read_text(encoding="utf-8")
            rules += read_policy(text, str(self.policy_path), info)
        if self.config.rules:
            rules += read_policy("\n".join(self.config.rules), f"{self.entry_id} rules", info)
        index = [self._tokens.index(t) for t in self.config.index]
        if len(index) == 1:
            index *= 2  # pycasbin's FastPolicy only iterates a two-level index correctly
        enforcer = Enforcer(model_text, rules, index=index, source=model_file)
        try:
            enforcer.decide(*(_sample(t) for t in self._tokens))
        except Exception as err:
            raise PolicyLoadError(
                [
                    Problem(
                        f"the matcher fails on a sample request: {type(err).__name__}: {err}",
                        model_file,
                        1,
                        self.entry_id,
                        "model",
                    )
                ]
            ) from err
        return enforcer

    def install(self, enforcer: Enforcer) -> None:
        """Put rules made by ``load`` in force (on the event loop, between decisions)."""
        self._enforcer = enforcer

    def _values(self, request: Request) -> tuple[Any, ...]:
        return tuple(request.value(t) for t in self._tokens)

    def decide(self, request: Request) -> Verdict:
        values = tuple("" if v is None else v for v in self._values(request))
        effect, rule = self._enforcer.decide(*values)
        return Verdict(effect, self.entry_id, tuple(rule))

    def cache_key(self, request: Request) -> Hashable | None:
        if self._objects:
            return None
        values = self._values(request)
        if not all(isinstance(v, _PLAIN) for v in values):
            return None
        return values
