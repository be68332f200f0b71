"""Builds the security pieces of a runtime from its registry: scopes, guards, settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wippy_queue.registry.entry import Entry
from wippy_queue.registry.models import ConsumerConfig, QueueConfig, SecurityBlock
from wippy_queue.registry.registry import Registry
from wippy_queue.security.actor import Actor
from wippy_queue.security.guard import ConsumeGuard, PublishGuard
from wippy_queue.security.models import (
    CasbinPolicyConfig,
    DenyBackoff,
    SecuritySettingsConfig,
    WippyPolicyConfig,
)
from wippy_queue.security.provenance import Stamper
from wippy_queue.security.recorder import Recorder
from wippy_queue.security.scope import Scope
from wippy_queue.security.units import CasbinUnit, PolicyUnit, WippyRulesUnit

POLICY_KINDS = ("security.policy", "security.policy.casbin")


def policies_of(registry: Registry, block: SecurityBlock) -> list[str]:
    """The policy ids a security block names, directly or through its groups."""
    ids = list(block.policies)
    for entry in registry:
        config = entry.config
        if isinstance(config, WippyPolicyConfig | CasbinPolicyConfig) and set(config.groups) & set(
            block.groups
        ):
            ids.append(entry.id)
    return list(dict.fromkeys(ids))


def dead_letter_sources(registry: Registry) -> dict[str, frozenset[str]]:
    """Dead-letter queue id -> the queues whose messages it receives."""
    sources: dict[str, set[str]] = {}
    for entry in registry.of_kind("queue.queue"):
        config = entry.config
        assert isinstance(config, QueueConfig)
        if config.dead_letter is not None:
            sources.setdefault(config.dead_letter.queue, set()).add(entry.id)
    return {queue: frozenset(found) for queue, found in sources.items()}


def settings_of(registry: Registry) -> SecuritySettingsConfig:
    entries = registry.of_kind("security.settings")
    config = entries[0].config if entries else SecuritySettingsConfig()
    assert isinstance(config, SecuritySettingsConfig)
    return config


def actor_of(block: SecurityBlock | None) -> Actor | None:
    if block is None or block.actor is None:
        return None
    return Actor(block.actor.id, block.actor.meta)


class Security:
    def __init__(
        self,
        registry: Registry,
        *,
        strict: bool | None = None,
        signing_key: str | None = None,
        recorders: Sequence[Recorder] = (),
    ) -> None:
        settings = settings_of(registry)
        self.registry = registry
        self.strict = settings.strict if strict is None else strict
        self.stamper = Stamper(signing_key or settings.signing_key, dead_letter_sources(registry))
        self.backoff: DenyBackoff = settings.deny_backoff
        self.recorders = tuple(recorders)
        self.casbin_units: dict[str, CasbinUnit] = {}
        self.scopes: dict[str, Scope] = {}
        self.checked_any = False
        for entry in registry.of_kind("queue.consumer"):
            block = _block(entry)
            if block is not None:
                self.checked_any = True
                self.scopes[entry.id] = self.scope_for(entry.id, policies_of(registry, block))

    def _casbin(self, entry: Entry) -> CasbinUnit:
        unit = self.casbin_units.get(entry.id)
        if unit is None:
            assert isinstance(entry.config, CasbinPolicyConfig)
            unit = self.casbin_units[entry.id] = CasbinUnit(entry.id, entry.config)
        return unit

    def scope_for(self, name: str, policy_ids: list[str]) -> Scope:
        """A scope over ``policy_ids``: Wippy rules in one unit, each Casbin entry in its own."""
        wippy: list[tuple[str, WippyPolicyConfig]] = []
        units: list[PolicyUnit] = []
        for pid in policy_ids:
            entry = self.registry.get(pid)
            if isinstance(entry.config, WippyPolicyConfig):
                wippy.append((pid, entry.config))
            else:
                units.append(self._casbin(entry))
        if wippy:
            units.insert(0, WippyRulesUnit(wippy))
        return Scope(name, units)

    def consumer_context(self, entry: Entry) -> dict[str, Any]:
        block = _block(entry)
        return {
            "actor": actor_of(block),
            "scope": self.scopes.get(entry.id),
            "checked": block is not None,
        }

    def consume_guard(self, entry: Entry) -> ConsumeGuard | None:
        """The guard for a consumer, or None when nothing would ever be checked."""
        block = _block(entry)
        if block is None and not self.strict and not self.stamper.signing:
            return None
        return ConsumeGuard(
            consumer_id=entry.id,
            actor=actor_of(block),
            scope=self.scopes.get(entry.id),
            strict=self.strict,
            stamper=self.stamper,
            backoff=self.backoff,
        )

    def publish_guard(self) -> PublishGuard:
        return PublishGuard(strict=self.strict, stamper=self.stamper, recorders=self.recorders)

    def clear_caches(self) -> None:
        for scope in self.scopes.values():
            scope.clear()


def _block(entry: Entry) -> SecurityBlock | None:
    config = entry.config
    return config.lifecycle.security if isinstance(config, ConsumerConfig) else None
