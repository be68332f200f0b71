"""The security kinds' whole-registry checks, and the Casbin units a load reads once."""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterator, Mapping
from pathlib import Path

from wippy_queue.errors import Problem
from wippy_queue.files import read_regular
from wippy_queue.queue.config import ConsumerConfig, QueueConfig
from wippy_queue.registry.registry import Registry
from wippy_queue.security.enforcer import PolicyLine, PolicyLoadError
from wippy_queue.security.models import (
    CasbinPolicyConfig,
    WippyPolicyConfig,
)
from wippy_queue.security.units import CasbinUnit


def _declared_groups(registry: Registry) -> set[str]:
    groups: set[str] = set()
    for entry in registry:
        if isinstance(entry.config, WippyPolicyConfig | CasbinPolicyConfig):
            groups.update(entry.config.groups)
    return groups


def check_groups(registry: Registry) -> Iterator[Problem]:
    declared = _declared_groups(registry)
    for entry in registry.of_kind("queue.consumer"):
        assert isinstance(entry.config, ConsumerConfig)
        block = entry.config.lifecycle.security
        for group in block.groups if block else ():
            if group not in declared:
                known = ", ".join(sorted(declared)) or "none"
                yield Problem(
                    f"policy group {group!r} is not declared by any policy (groups: {known}); "
                    "an unresolved group would leave the consumer without its policies",
                    entry.location.file,
                    entry.location.line_of("lifecycle"),
                    entry.id,
                    "lifecycle.security.groups",
                )


def _policies_of(registry: Registry, policies: list[str], groups: list[str]) -> list[str]:
    """The policy ids a security block names, directly or through its groups."""
    found = list(policies)
    for entry in registry:
        config = entry.config
        if isinstance(config, WippyPolicyConfig | CasbinPolicyConfig) and set(config.groups) & set(
            groups
        ):
            found.append(entry.id)
    return list(dict.fromkeys(found))


def _paths(config: CasbinPolicyConfig) -> list[Path]:
    model = Path(config.model.removeprefix("file://"))
    return [model] if not config.policy else [model, Path(config.policy.removeprefix("file://"))]


class CasbinLoads:
    """Each Casbin entry loaded once, by the load-time check, for the runtime too.

    Reading and indexing a 100,000-rule file takes about a second; checking it when
    the registry loads and loading it again for the runtime doubled start-up. The
    check keeps the unit it loads, keyed by the entry's config and its files'
    digests, and ``take`` hands it over once; anything else gets a fresh load. A key
    that passed before is not loaded again (a reload of unchanged entries is cheap).
    """

    def __init__(self) -> None:
        self._loaded: dict[str, tuple[Hashable, CasbinUnit]] = {}
        self._passed: dict[str, Hashable] = {}
        #: entry id -> the role names of its rules, and the request paths asked roles of
        self._roles: dict[str, tuple[dict[str, PolicyLine], tuple[str, ...]]] = {}

    @staticmethod
    def _key(config: CasbinPolicyConfig, files: Mapping[Path, str] | None = None) -> Hashable:
        """The config and its files' digests: as on disk now, or as ``files`` says a
        unit read them (a file that changes between the two never matches)."""
        if files is None:
            files = {p: hashlib.sha256(read_regular(p)).hexdigest() for p in _paths(config)}
        return (config.model_dump_json(), tuple(files.get(p) for p in _paths(config)))

    def check(self, registry: Registry) -> Iterator[Problem]:
        self._loaded.clear()  # what the last load did not take is stale by now
        for entry in registry.of_kind("security.policy.casbin"):
            assert isinstance(entry.config, CasbinPolicyConfig)
            try:
                if self._passed.get(entry.id) != self._key(entry.config):
                    unit = CasbinUnit(entry.id, entry.config)
                    key = self._key(entry.config, unit.files)  # what it really read
                    self._loaded[entry.id] = (key, unit)
                    self._passed[entry.id] = key
                    self._roles[entry.id] = (dict(unit.role_names), unit.role_subject_paths())
            except PolicyLoadError as err:
                for problem in err.problems:
                    yield Problem(
                        problem.message, problem.file, problem.line, entry.id, problem.field
                    )
            except OSError as err:
                yield Problem(
                    f"cannot read: {err}", entry.location.file, entry.location.line, entry.id
                )
        yield from self._role_actors(registry)

    def _role_actors(self, registry: Registry) -> Iterator[Problem]:
        """Consumers whose actor id is the name of a role in a Casbin entry they decide
        with: pycasbin holds ``g(x, x, dom)`` true, so the actor would hold that role in
        every domain (every tenant). Refused at load, as at decision time."""
        for entry in registry.of_kind("queue.consumer"):
            assert isinstance(entry.config, ConsumerConfig)
            block = entry.config.lifecycle.security
            if block is None or block.actor is None:
                continue
            for policy_id in _policies_of(registry, block.policies, block.groups):
                roles, subjects = self._roles.get(policy_id, ({}, ()))
                rule = roles.get(block.actor.id) if "actor.id" in subjects else None
                if rule is not None:
                    yield Problem(
                        f"actor id {block.actor.id!r} is also the name of a role in "
                        f"{policy_id} ({rule.file}:{rule.line}: {rule.ptype}, "
                        f"{', '.join(rule.values)}); Casbin holds g(x, x, domain) for any "
                        "name, so this actor would hold that role in every domain (tenant): "
                        "rename the actor or the role",
                        entry.location.file,
                        entry.location.line_of("lifecycle"),
                        entry.id,
                        "lifecycle.security.actor.id",
                    )

    def take(self, entry_id: str, config: CasbinPolicyConfig) -> CasbinUnit:
        """The unit the check loaded for this config and these files, else a new load."""
        held = self._loaded.pop(entry_id, None)
        if held is not None and held[0] == self._key(config):
            return held[1]
        return CasbinUnit(entry_id, config)


def warn_unchecked(registry: Registry) -> Iterator[Problem]:
    consumers = registry.of_kind("queue.consumer")
    checked = [c for c in consumers if c.config.lifecycle.security]  # type: ignore[attr-defined]
    if not checked:
        return
    for entry in consumers:
        if entry.config.lifecycle.security is None:  # type: ignore[attr-defined]
            yield Problem(
                "this consumer has no lifecycle.security block and runs UNCHECKED while "
                f"{len(checked)} other consumer(s) are checked; add one, or run with --strict "
                "to deny it",
                entry.location.file,
                entry.location.line,
                entry.id,
                "lifecycle.security",
                severity="warning",
            )


def warn_shared_tenants(registry: Registry) -> Iterator[Problem]:
    """Consumers of different tenants on one queue without ``partition_by``: each takes
    the others' messages only to deny them, and every denial spends an attempt."""
    tenants: dict[str, set[str]] = {}
    for entry in registry.of_kind("queue.consumer"):
        assert isinstance(entry.config, ConsumerConfig)
        block = entry.config.lifecycle.security
        tenant = block.actor.meta.get("tenant") if block and block.actor else None
        if tenant is not None:
            tenants.setdefault(entry.config.queue, set()).add(str(tenant))
    for queue_id, found in tenants.items():
        queue = registry.entries.get(queue_id)
        if queue is None or len(found) < 2:
            continue
        assert isinstance(queue.config, QueueConfig)
        if queue.config.partition_by is None:
            yield Problem(
                f"consumers of {len(found)} tenants ({', '.join(sorted(found))}) share this "
                "queue without partition_by: each is offered the others' messages and every "
                "denial spends an attempt (a message can be dead-lettered before its own "
                "tenant's consumer sees it); add partition_by: message.tenant",
                queue.location.file,
                queue.location.line,
                queue.id,
                "partition_by",
                severity="warning",
            )
