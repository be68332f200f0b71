"""Registers the security kinds and their whole-registry checks."""

from __future__ import annotations

from collections.abc import Iterator

from wippy_queue.errors import Problem
from wippy_queue.registry.kinds import KindTable
from wippy_queue.registry.models import ConsumerConfig
from wippy_queue.registry.registry import Registry
from wippy_queue.security.enforcer import PolicyLoadError
from wippy_queue.security.models import (
    AuditConfig,
    CasbinPolicyConfig,
    SecuritySettingsConfig,
    WippyPolicyConfig,
)
from wippy_queue.security.units import CasbinUnit


def register(kinds: KindTable) -> None:
    kinds.register("security.policy", WippyPolicyConfig)
    kinds.register("security.policy.casbin", CasbinPolicyConfig)
    kinds.register("security.settings", SecuritySettingsConfig)
    kinds.register("security.audit", AuditConfig)
    kinds.add_check(check_groups)
    kinds.add_check(check_settings)
    kinds.add_check(check_casbin_files)
    kinds.add_check(warn_unchecked)


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


def check_settings(registry: Registry) -> Iterator[Problem]:
    for kind in ("security.settings", "security.audit"):
        entries = registry.of_kind(kind)
        for extra in entries[1:]:
            yield Problem(
                f"a second {kind} entry; {entries[0].id} already sets it: keep one",
                extra.location.file,
                extra.location.line,
                extra.id,
            )


def check_casbin_files(registry: Registry) -> Iterator[Problem]:
    for entry in registry.of_kind("security.policy.casbin"):
        assert isinstance(entry.config, CasbinPolicyConfig)
        try:
            CasbinUnit(entry.id, entry.config)
        except PolicyLoadError as err:
            for problem in err.problems:
                yield Problem(
                    problem.message,
                    problem.file,
                    problem.line,
                    entry.id,
                    problem.field,
                )
        except OSError as err:
            yield Problem(f"cannot read: {err}", entry.location.file, entry.location.line, entry.id)


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
