"""Lint: duplicate rules, and allow rules shadowed by a broader deny (deny overrides allow).

A deny rule covers an allow rule when every request the allow matches, the deny
matches too: field by field, a ``keyMatch`` pattern covers the patterns and values
it is a prefix of, and any other field must be equal. The allow can then never
take effect. Across Wippy policy entries, the deny must also be in the scope of
every consumer that uses the allow.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from wippy_queue.errors import Problem
from wippy_queue.policytools.reach import finding
from wippy_queue.policytools.rules import PolicyRules, Rule
from wippy_queue.policytools.world import World
from wippy_queue.registry.registry import Registry
from wippy_queue.security.models import WippyPolicyConfig

_WIPPY_FIELDS = ("keyMatch", "keyMatch", "cond", "eft", "pol")


def check_duplicates(written: PolicyRules) -> Iterator[Problem]:
    first: dict[tuple[str, tuple[str, ...]], Rule] = {}
    for rule in written.rules:
        key = (rule.ptype, rule.values)
        if key in first:
            yield finding(rule, f"duplicates the rule at {first[key].where}; drop one", "warning")
        else:
            first[key] = rule


def pattern_covers(general: str, specific: str) -> bool:
    """Whether keyMatch pattern ``general`` matches everything ``specific`` matches."""
    if general == specific:
        return True
    star = general.find("*")
    if star < 0:
        return False
    cut = specific.find("*")
    return (specific if cut < 0 else specific[:cut]).startswith(general[:star])


def _comparisons(written: PolicyRules) -> tuple[str, ...] | None:
    """Per p field: ``keyMatch`` (prefix cover), ``eft``/``pol`` (ignored), else equality."""
    if written.shape is None:
        return _WIPPY_FIELDS
    shape = written.shape
    if not shape.deny_overrides:
        return None
    out = []
    for name in shape.policy.get("p", ()):
        fns = {t.fn for t in shape.terms if t.field == name}
        fns |= {"role" for t in shape.role_terms if t.field == name or t.domain == ("p", name)}
        out.append("eft" if name == "eft" else "keyMatch" if fns == {"keyMatch"} else "==")
    return tuple(out)


def _covers(registry: Registry, fields: Sequence[str], deny: Rule, allow: Rule) -> bool:
    if deny.ptype != allow.ptype or deny.ptype != "p":
        return False
    for how, d, a in zip(fields, deny.values, allow.values, strict=False):
        if how == "keyMatch" and not pattern_covers(d, a):
            return False
        if how == "==" and d != a:
            return False
        if how == "cond" and not _same_conditions(registry, d, a):
            return False
    return True


def _same_conditions(registry: Registry, deny_cond: str, allow_cond: str) -> bool:
    """A deny without conditions covers any; otherwise both must have the same ones."""
    if not deny_cond:
        return True
    if not allow_cond:
        return False
    deny, allow = registry.config(deny_cond), registry.config(allow_cond)
    assert isinstance(deny, WippyPolicyConfig) and isinstance(allow, WippyPolicyConfig)
    return deny.policy.conditions == allow.policy.conditions


def check_shadowed(
    registry: Registry, world: World, written: Sequence[PolicyRules]
) -> Iterator[Problem]:
    wippy_denies = [r for w in written if w.shape is None for r in w.checks if r.effect == "deny"]
    for entry_rules in written:
        fields = _comparisons(entry_rules)
        if fields is None:
            continue
        denies = [r for r in entry_rules.checks if r.effect == "deny"]
        others = [r for r in wippy_denies if r.policy != entry_rules.entry.id]
        for allow in (r for r in entry_rules.checks if r.effect == "allow"):
            deny = next((d for d in denies if _covers(registry, fields, d, allow)), None)
            if deny is not None:
                yield finding(
                    allow,
                    f"this allow never takes effect: the deny rule at {deny.where} "
                    "matches every request it matches (deny overrides allow)",
                    "warning",
                )
            elif entry_rules.shape is None:
                yield from _shadowed_across(registry, world, fields, allow, others)


def _shadowed_across(
    registry: Registry, world: World, fields: Sequence[str], allow: Rule, denies: list[Rule]
) -> Iterator[Problem]:
    users = world.users_of(allow.policy)
    if not users:
        return
    for deny in denies:
        if all(deny.policy in world.scopes[u] for u in users) and _covers(
            registry, fields, deny, allow
        ):
            yield finding(
                allow,
                f"this allow never takes effect: the deny rule of {deny.policy} at {deny.where} "
                f"matches every request it matches, and every consumer using this policy "
                f"({', '.join(users)}) has that one too (deny overrides allow)",
                "warning",
            )
            return
