"""``policy lint``: every problem of the policy entries, as ``FILE:LINE: entry: message``.

Errors: the loader's problems (YAML, entry fields, broken Casbin models and policy
files, each with file and line), actions the runtime never asks, and rules that can
never match what it asks (a queue that does not exist, a role nobody is granted,
a tenant no actor has). Warnings: allow rules a deny shadows, duplicate rules,
``*`` inside a keyMatch pattern, roles granted to names that are no actor, and the
loader's own warnings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from wippy_queue.errors import ConfigError, Problem
from wippy_queue.loading import load
from wippy_queue.policytools.hints import display_path
from wippy_queue.policytools.overlap import check_duplicates, check_shadowed
from wippy_queue.policytools.reach import check_grants, check_rule
from wippy_queue.policytools.rules import PolicyRules, rules_of
from wippy_queue.policytools.world import World
from wippy_queue.security.enforcer import PolicyLoadError
from wippy_queue.security.manager import POLICY_KINDS

NO_POLICIES = Problem(
    "no security.policy or security.policy.casbin entries here; lint reads Casbin model "
    "and policy files through the entries that use them, so give it the entry files",
    severity="warning",
)


def lint(paths: Iterable[str | os.PathLike[str]]) -> list[Problem]:
    """Every finding for the entry files at ``paths``, sorted by file and line."""
    try:
        registry = load(paths).registry
    except ConfigError as err:
        return _sorted(_shown(p) for p in err.problems)
    findings = [_shown(p) for p in registry.warnings]
    world = World.of(registry)
    written: list[PolicyRules] = []
    entries = [e for kind in POLICY_KINDS for e in registry.of_kind(kind)]
    if not entries:
        findings.append(NO_POLICIES)
    for entry in entries:
        try:
            written.append(rules_of(entry))
        except PolicyLoadError as err:  # the loader checked these; kept for safety
            findings += [_shown(p) for p in err.problems]
        except OSError as err:
            findings.append(Problem(f"cannot read: {err}", entry.location.file, None, entry.id))
    for entry_rules in written:
        for rule in entry_rules.checks:
            findings += check_rule(world, entry_rules, rule)
        findings += check_grants(world, entry_rules)
        findings += check_duplicates(entry_rules)
    findings += check_shadowed(registry, world, written)
    return _sorted(findings)


def has_errors(findings: Iterable[Problem]) -> bool:
    return any(f.severity == "error" for f in findings)


def _shown(problem: Problem) -> Problem:
    if problem.file is None:
        return problem
    return Problem(
        problem.message,
        display_path(problem.file),
        problem.line,
        problem.entry_id,
        problem.field,
        problem.severity,
    )


def _sorted(findings: Iterable[Problem]) -> list[Problem]:
    unique = list(dict.fromkeys(findings))
    return sorted(unique, key=lambda p: (p.file or "", p.line or 0))
