"""Whether new rules may grant more than the rules in force.

A hot reload takes rules that grant no more (a deny added, an allow removed) at
the first look at which they hold still: tightening is never held back. Rules that
may grant more must first show that their file is not still being written (see
``reload.py``). The judgement is conservative: anything it cannot show to grant no
more (a changed model, role grants, a reordered or edited rule) counts as more.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wippy_queue.security.enforcer import Enforcer
from wippy_queue.security.models import WippyPolicyConfig


def rules_grant_no_more(old: Enforcer, new: Enforcer) -> bool:
    """True when ``new`` differs from ``old`` only by allow rules removed and deny rules
    added (same model, same role grants, the other rules in the same order)."""
    if old.model_text != new.model_text:
        return False
    if _others(old) != _others(new):
        return False
    at = new.effect_at
    old_p = [r.values for r in old.rules if r.ptype == "p"]
    new_p = [r.values for r in new.rules if r.ptype == "p"]
    old_set, new_set = set(old_p), set(new_p)

    def allows(values: tuple[str, ...]) -> bool:
        return at is None or values[at] != "deny"

    kept_old = [v for v in old_p if not (allows(v) and v not in new_set)]
    kept_new = [v for v in new_p if allows(v) or v in old_set]
    return kept_old == kept_new


def _others(enforcer: Enforcer) -> list[tuple[str, tuple[str, ...]]]:
    return [(r.ptype, r.values) for r in enforcer.rules if r.ptype != "p"]


def policies_grant_no_more(
    old: Mapping[str, Any], new: Mapping[str, Any], changed: tuple[str, ...]
) -> bool:
    """True when every changed policy entry only tightens: a native deny added, a native
    allow removed, or a native allow turned into the same deny. Any change to a
    Casbin entry's config counts as more (its files load afresh)."""
    for pid in changed:
        before, after = old.get(pid), new.get(pid)
        if not _tightens(before, after):
            return False
    return True


def _tightens(before: Any, after: Any) -> bool:
    if before is not None and not isinstance(before, WippyPolicyConfig):
        return False
    if after is not None and not isinstance(after, WippyPolicyConfig):
        return False
    if before is None:
        return after is not None and after.policy.effect == "deny"
    if after is None:
        return before.policy.effect == "allow"
    denied = before.model_dump()
    denied["policy"]["effect"] = "deny"
    return bool(after.policy.effect == "deny" and after.model_dump() == denied)
