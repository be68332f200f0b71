"""Builds the security pieces of a runtime from its registry: scopes, guards, settings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from wippy_queue.errors import WippyQueueError
from wippy_queue.identity import Actor
from wippy_queue.lifecycle.config import SecurityBlock
from wippy_queue.queue.config import ConsumerConfig, QueueConfig
from wippy_queue.registry.entry import Entry
from wippy_queue.registry.registry import Registry
from wippy_queue.security.guard import ConsumeGuard, PublishGuard
from wippy_queue.security.models import (
    DEFAULT_KEY_ID,
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
PolicyConfig = WippyPolicyConfig | CasbinPolicyConfig
#: loads a Casbin entry's unit (``CasbinLoads.take`` reuses the registry check's)
CasbinLoader = Callable[[str, CasbinPolicyConfig], CasbinUnit]


class ReloadRefused(WippyQueueError):
    """Entry files changed in a way the running consumers cannot take without a restart."""


@dataclass(frozen=True)
class PolicyPlan:
    """Changed policy entries, checked and compiled off the event loop, ready to install."""

    #: policy id -> its config, as now written
    configs: dict[str, PolicyConfig]
    casbin_units: dict[str, CasbinUnit]
    #: consumer id -> the units its scope decides with from now on
    scopes: dict[str, tuple[PolicyUnit, ...]]
    #: policy ids added, removed or changed
    changed: tuple[str, ...]
    #: other entries that changed: those changes take effect at the next start
    restart_needed: tuple[str, ...]


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


#: request paths that read who published a message (its provenance stamp)
PROVENANCE_PATHS = ("message", "message.publisher", "message.tenant")


def reads_provenance(registry: Registry, block: SecurityBlock) -> list[str]:
    """The policies of ``block`` that decide on who published (sorted ids)."""
    found = []
    for pid in policies_of(registry, block):
        config = registry.entries[pid].config if pid in registry.entries else None
        if isinstance(config, WippyPolicyConfig):
            paths = [p for c in config.policy.conditions for p in (c.field, c.value_from) if p]
        elif isinstance(config, CasbinPolicyConfig):
            paths = list(config.request)
        else:
            continue
        if any(path in PROVENANCE_PATHS for path in paths):
            found.append(pid)
    return sorted(found)


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
        load_casbin: CasbinLoader = CasbinUnit,
    ) -> None:
        settings = settings_of(registry)
        self._load_casbin = load_casbin
        self.registry = registry
        self.strict = settings.strict if strict is None else strict
        keys, signer = settings.key_ring(), settings.signer()
        if signing_key:  # given to the runtime (--signing-key): it signs
            keys, signer = {**keys, DEFAULT_KEY_ID: signing_key}, DEFAULT_KEY_ID
        self.stamper = Stamper(
            keys,
            signer,
            max_age_s=settings.max_message_age,
            dead_letter_sources=dead_letter_sources(registry),
        )
        self.backoff: DenyBackoff = settings.deny_backoff
        self.recorders = tuple(recorders)
        self.policy_configs = _policy_configs(registry)
        self.casbin_units: dict[str, CasbinUnit] = {}
        self.scopes: dict[str, Scope] = {}
        self.checked_any = False
        for entry in registry.of_kind("queue.consumer"):
            block = _block(entry)
            if block is not None:
                self.checked_any = True
                self.scopes[entry.id] = self.scope_for(entry.id, policies_of(registry, block))

    def scope_for(self, name: str, policy_ids: list[str]) -> Scope:
        """A scope over ``policy_ids``: Wippy rules in one unit, each Casbin entry in its own."""
        units = _units(policy_ids, self.policy_configs, self.casbin_units, self._load_casbin)
        return Scope(name, units)

    def plan_reload(self, written: Registry) -> PolicyPlan:
        """What the policy entries of ``written`` (the entry files, loaded again) change.

        Runs in a thread: builds new units and touches nothing in force. Consumers keep
        their security blocks (actor, policies, groups) until a restart; the policies
        they name, and the groups' members, are taken as now written. A Casbin entry
        whose config changed is loaded again (its files are also watched on their own).
        Raises ReloadRefused when a running consumer would lose a policy it names.
        """
        configs = _policy_configs(written)
        changed = tuple(
            sorted(
                pid
                for pid in {*configs, *self.policy_configs}
                if configs.get(pid) != self.policy_configs.get(pid)
            )
        )
        # unchanged Casbin entries keep their units; the scopes load the others they use
        casbin = {
            pid: unit
            for pid, unit in self.casbin_units.items()
            if pid in configs and pid not in changed
        }
        scopes: dict[str, tuple[PolicyUnit, ...]] = {}
        for entry in self.registry.of_kind("queue.consumer"):
            block = _block(entry)
            if block is None:
                continue
            missing = [pid for pid in block.policies if pid not in configs]
            if missing:
                raise ReloadRefused(
                    f"running consumer {entry.id} names policy {', '.join(missing)}, which the "
                    "entry files no longer define: put it back (or restart to drop it)"
                )
            units = _units(policies_of(written, block), configs, casbin, self._load_casbin)
            scopes[entry.id] = units
        running = {e.id: e.config for e in self.registry if e.id not in self.policy_configs}
        now = {e.id: e.config for e in written if e.id not in configs}
        restart = tuple(sorted(i for i in {*running, *now} if running.get(i) != now.get(i)))
        return PolicyPlan(configs, casbin, scopes, changed, restart)

    def install(self, plan: PolicyPlan) -> None:
        """Put a plan in force (on the event loop, between decisions); caches are dropped."""
        self.policy_configs = plan.configs
        self.casbin_units = plan.casbin_units
        for consumer_id, units in plan.scopes.items():
            self.scopes[consumer_id].replace(units)

    def consumer_context(self, entry: Entry) -> dict[str, Any]:
        block = _block(entry)
        return {
            "actor": actor_of(block),
            "scope": self.scopes.get(entry.id),
            "checked": block is not None,
        }

    def consume_guard(self, entry: Entry, *, trusted: bool = True) -> ConsumeGuard | None:
        """The guard for a consumer, or None when nothing would ever be checked.

        ``trusted``: the queue's messages can only come from this process (the memory
        driver); otherwise an unsigned stamp is dropped, so the guard always runs.
        """
        block = _block(entry)
        if block is None and not self.strict and not self.stamper.signing and trusted:
            return None
        return ConsumeGuard(
            consumer_id=entry.id,
            actor=actor_of(block),
            scope=self.scopes.get(entry.id),
            strict=self.strict,
            stamper=self.stamper,
            trusted=trusted,
        )

    def publish_guard(self) -> PublishGuard:
        return PublishGuard(strict=self.strict, stamper=self.stamper, recorders=self.recorders)

    def clear_caches(self) -> None:
        for scope in self.scopes.values():
            scope.clear()


def _policy_configs(registry: Registry) -> dict[str, PolicyConfig]:
    return {e.id: e.config for e in registry if isinstance(e.config, PolicyConfig)}


def _units(
    policy_ids: list[str],
    configs: dict[str, PolicyConfig],
    casbin: dict[str, CasbinUnit],
    load: CasbinLoader,
) -> tuple[PolicyUnit, ...]:
    """Wippy rules in one unit (first), each Casbin entry in its own (loaded once)."""
    wippy: list[tuple[str, WippyPolicyConfig]] = []
    units: list[PolicyUnit] = []
    for pid in policy_ids:
        config = configs[pid]
        if isinstance(config, WippyPolicyConfig):
            wippy.append((pid, config))
        else:
            unit = casbin.get(pid)
            if unit is None:
                unit = casbin[pid] = load(pid, config)
            units.append(unit)
    if wippy:
        units.insert(0, WippyRulesUnit(wippy))
    return tuple(units)


def _block(entry: Entry) -> SecurityBlock | None:
    config = entry.config
    return config.lifecycle.security if isinstance(config, ConsumerConfig) else None
