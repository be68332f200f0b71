"""Header values at the edges of what a condition can compare: whatever they are, a
check that cannot decide denies, and a cached decision answers only the same value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wippy_queue.identity import Actor, Request
from wippy_queue.security.models import CasbinPolicyConfig, WippyPolicyConfig
from wippy_queue.security.scope import Scope
from wippy_queue.security.units import CasbinUnit, WippyRulesUnit


def rule(effect: str, *conditions: dict[str, Any]) -> WippyPolicyConfig:
    policy = {"actions": ["queue.consume"], "resources": ["*"], "effect": effect}
    return WippyPolicyConfig.model_validate({"policy": policy | {"conditions": list(conditions)}})


def consume(**headers: Any) -> Request:
    return Request("queue.consume", "app:jobs", Actor("worker"), headers)


@pytest.mark.parametrize("size", ["NaN", "nan", " nan ", "+NaN", "-nan", float("nan")])
def test_not_a_number_never_slips_past_a_numeric_deny(size: Any) -> None:
    """``float("nan") > 100`` is False: a deny on ``size gt 100`` would never hold for
    "NaN" and the allow beside it would let the message in; it is an error, a deny."""
    big = {"field": "message.headers.size", "operator": "gt", "value": 100}
    scope = Scope("s", [WippyRulesUnit([("a:allow", rule("allow")), ("a:big", rule("deny", big))])])
    assert scope.check(consume(size=1000)).allowed is False
    assert scope.check(consume(size=50)).allowed is True
    decision = scope.check(consume(size=size))
    assert decision.allowed is False and decision.reason == "error"


def test_a_decision_for_zero_never_answers_for_minus_zero() -> None:
    """``-0.0 == 0.0`` in Python, but not to ``eq`` (which compares their text): a
    cached allow for 0.0 must not answer a request with -0.0."""
    zero = {"field": "message.headers.code", "operator": "eq", "value": "0.0"}
    scope = Scope("s", [WippyRulesUnit([("a:allow", rule("allow", zero))])])
    assert scope.check(consume(code=0.0)).allowed is True
    assert scope.check(consume(code=-0.0)).allowed is False


def test_a_value_whose_key_cannot_be_made_is_a_deny_not_an_exception(tmp_path: Path) -> None:
    """An int too long to turn into text (past Python's 4,300 digits) in a header a
    Casbin request reads: its cache key cannot be made; that is a deny (recorded as an
    error), not an exception out of the check."""
    model = tmp_path / "m.conf"
    model.write_text(
        "[request_definition]\nr = sub, prio, act\n[policy_definition]\n"
        "p = sub, prio, act, eft\n[policy_effect]\n"
        "e = some(where (p.eft == allow)) && !some(where (p.eft == deny))\n"
        "[matchers]\nm = r.sub == p.sub && r.prio == p.prio && keyMatch(r.act, p.act)\n"
    )
    rules = tmp_path / "p.csv"
    rules.write_text("p, worker, high, queue.*, allow\n")
    config = CasbinPolicyConfig(
        model=f"file://{model}",
        policy=f"file://{rules}",
        request=["actor.id", "message.headers.prio", "action"],
    )
    scope = Scope("s", [CasbinUnit("t:prio", config)])
    assert scope.check(consume(prio="high")).allowed is True
    decision = scope.check(consume(prio=10**5000))
    assert decision.allowed is False and decision.reason == "error"
