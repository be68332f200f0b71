"""The actions the runtime asks and the effects a rule may have.

A rule naming an action the runtime never asks (``queue.consme``) or an effect
Casbin does not know (``alow``) never takes effect, silently: such a rule is
refused when the entries load, where ``validate`` and ``run`` say so. The names
import nothing heavy (the CLI's parser lists ``ACTIONS``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence

CONSUME = "queue.consume"
#: the checks of one publish, in order: (action, fixed resource or None for the queue ID)
PUBLISH_CHECKS: Sequence[tuple[str, str | None]] = (
    ("queue.publish", ""),
    ("queue.publish.queue", None),
)
ACTIONS: tuple[str, ...] = (CONSUME, *(action for action, _ in PUBLISH_CHECKS))
EFFECTS = ("allow", "deny")

#: (action the runtime asks, the rule's value) -> whether the rule matches it
Matcher = Callable[[str, str], bool]


def did_you_mean(value: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(value, sorted(set(candidates) - {value}), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def action_problem(value: str, matches: Matcher | None = None) -> str | None:
    """Why a rule's action ``value`` never matches an action the runtime asks, or None.

    ``matches`` is how the rule is compared (keyMatch for ``security.policy``); one that
    cannot be evaluated on ``value`` (a broken regex) is left to decide at run time.
    """
    if matches is None:  # Casbin is imported where a rule is checked, not with the names
        from casbin.util.builtin_operators import key_match

        matches = key_match
    try:
        if any(matches(action, value) for action in ACTIONS):
            return None
    except Exception:
        return None
    return (
        f"action {value!r} is never asked by the runtime (it asks {', '.join(ACTIONS)}), so "
        "this rule never takes effect" + did_you_mean(value, ACTIONS)
    )


def effect_problem(value: str) -> str | None:
    """Why ``value`` is no effect Casbin knows, or None."""
    if value in EFFECTS:
        return None
    return (
        f"effect {value!r} is neither 'allow' nor 'deny', so Casbin ignores this rule"
        + did_you_mean(value, EFFECTS)
    )
