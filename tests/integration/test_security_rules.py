"""Wippy-native rules (``security.policy``): patterns, the 14 operators, value_from,
and how a scope combines rules: deny overrides allow, no allow is a deny."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from security_support import (
    FAST_BACKOFF,
    consumer,
    dead_letters,
    driver,
    func,
    load,
    queue,
    reset,
    rule,
    settings,
)

from wippy_queue import ConfigError
from wippy_queue.identity import Actor, Request
from wippy_queue.security.conditions import OPERATORS
from wippy_queue.security.models import CasbinPolicyConfig, WippyPolicyConfig
from wippy_queue.security.scope import Scope
from wippy_queue.security.units import CasbinUnit, WippyRulesUnit

pytestmark = pytest.mark.usefixtures("backend")  # every test runs on every driver

WORKER = Actor("worker-a", {"tenant": "tenant-a", "level": 5, "roles": ["reader", "writer"]})


def policy(
    actions: Any, resources: Any, effect: str = "allow", conditions: Any = None
) -> WippyPolicyConfig:
    body: dict[str, Any] = {"actions": actions, "resources": resources, "effect": effect}
    if conditions is not None:
        body["conditions"] = conditions
    return WippyPolicyConfig.model_validate({"policy": body})


def scope(*policies: WippyPolicyConfig) -> Scope:
    entries = [(f"app:p{i}", p) for i, p in enumerate(policies)]
    return Scope("test", [WippyRulesUnit(entries)])


def ask(
    s: Scope,
    action: str = "queue.consume",
    resource: str = "app:jobs",
    *,
    actor: Actor | None = WORKER,
    headers: dict[str, Any] | None = None,
    publisher: str | None = "svc-a",
    tenant: str | None = "tenant-a",
) -> bool:
    return s.check(Request(action, resource, actor, headers or {}, publisher, tenant)).allowed


# -- patterns ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "resource", "allowed"),
    [
        ("app:jobs", "app:jobs", True),
        ("app:jobs", "app:jobs2", False),
        ("app:jobs", "app:job", False),
        ("app:jobs", "other:jobs", False),
        ("*", "app:jobs", True),
        ("*", "", True),  # queue.publish is asked on the resource ""
        ("app:*", "app:jobs", True),
        ("app:*", "app:", True),
        ("app:*", "ap", False),
        ("app:*", "other:jobs", False),
        ("app:j*", "app:jobs", True),
        ("app:j*", "app:kobs", False),
    ],
)
def test_resource_patterns(pattern: str, resource: str, allowed: bool) -> None:
    assert ask(scope(policy("queue.consume", pattern)), resource=resource) is allowed


@pytest.mark.parametrize(
    ("pattern", "action", "allowed"),
    [
        ("queue.publish", "queue.publish", True),
        ("queue.publish", "queue.publish.queue", False),
        ("queue.publish*", "queue.publish", True),
        ("queue.publish*", "queue.publish.queue", True),
        ("queue.publish*", "queue.consume", False),
        ("*", "anything.at.all", True),
    ],
)
def test_action_patterns(pattern: str, action: str, allowed: bool) -> None:
    assert ask(scope(policy(pattern, "*")), action) is allowed


def test_lists_of_actions_and_resources_are_each_matched() -> None:
    s = scope(policy(["queue.consume", "queue.publish"], ["app:a", "app:b*"]))
    assert ask(s, "queue.consume", "app:a")
    assert ask(s, "queue.publish", "app:b2")
    assert not ask(s, "queue.publish.queue", "app:a")
    assert not ask(s, "queue.consume", "app:c")


@pytest.mark.parametrize("pattern", ["app:*:jobs", "*jobs", "a*b*"])
def test_a_star_inside_a_pattern_is_rejected(pattern: str) -> None:
    # Casbin's keyMatch would read "app:*:jobs" as the prefix "app:" and allow far more
    with pytest.raises(ValidationError, match="'\\*' may only be"):
        policy("queue.consume", pattern)


# -- conditions: every operator, true and false ---------------------------------------

HEADERS = {"priority": 7, "region": "eu-west", "kind": "invoice", "ratio": 0.5, "flag": True}

OPERATOR_CASES: list[tuple[str, str, Any, bool]] = [
    ("eq", "actor.id", "worker-a", True),
    ("eq", "actor.id", "worker-b", False),
    ("eq", "message.headers.priority", "7", True),  # compared as text as well
    ("eq", "message.headers.missing", "None", False),
    ("ne", "actor.meta.tenant", "tenant-b", True),
    ("ne", "actor.meta.tenant", "tenant-a", False),
    ("lt", "message.headers.priority", 10, True),
    ("lt", "message.headers.priority", 7, False),
    ("lt", "message.headers.missing", 10, False),
    ("gt", "actor.meta.level", 4, True),
    ("gt", "actor.meta.level", 5, False),
    ("lte", "message.headers.ratio", 0.5, True),
    ("lte", "message.headers.ratio", 0.4, False),
    ("gte", "message.headers.priority", 7, True),
    ("gte", "message.headers.priority", "8", False),
    ("in", "message.headers.region", ["eu-west", "eu-east"], True),
    ("in", "message.headers.region", ["us-east"], False),
    ("nin", "message.headers.region", ["us-east"], True),
    ("nin", "message.headers.region", ["eu-west"], False),
    ("exists", "message.headers.kind", None, True),
    ("exists", "message.headers.missing", None, False),
    ("nexists", "message.headers.missing", None, True),
    ("nexists", "message.headers.kind", None, False),
    ("contains", "message.headers.region", "west", True),
    ("contains", "message.headers.region", "north", False),
    ("contains", "actor.meta.roles", "writer", True),
    ("contains", "actor.meta.roles", "admin", False),
    ("ncontains", "actor.meta.roles", "admin", True),
    ("ncontains", "message.headers.region", "eu", False),
    ("matches", "message.headers.kind", "^inv", True),
    ("matches", "message.headers.kind", "^receipt$", False),
    ("matches", "message.headers.priority", "7", False),  # only text is matched
    ("nmatches", "actor.id", "^svc-", True),
    ("nmatches", "actor.id", "^worker-", False),
    ("eq", "meta.kind", "invoice", True),
    ("eq", "action", "queue.consume", True),
    ("eq", "resource", "app:other", False),
    ("eq", "message.publisher", "svc-a", True),
    ("eq", "message.tenant", "tenant-b", False),
]


@pytest.mark.parametrize(("operator", "field", "value", "expected"), OPERATOR_CASES)
def test_condition_operators(operator: str, field: str, value: Any, expected: bool) -> None:
    condition: dict[str, Any] = {"field": field, "operator": operator}
    if value is not None:
        condition["value"] = value
    s = scope(policy("queue.consume", "*", conditions=[condition]))
    assert ask(s, headers=HEADERS) is expected


def test_every_operator_is_covered_both_ways() -> None:
    outcomes = {(op, expected) for op, _, _, expected in OPERATOR_CASES}
    assert len(OPERATORS) == 14
    assert outcomes == {(op, b) for op in OPERATORS for b in (True, False)}


def test_all_conditions_of_a_rule_must_hold() -> None:
    conditions = [
        {"field": "actor.meta.tenant", "operator": "eq", "value": "tenant-a"},
        {"field": "message.headers.kind", "operator": "eq", "value": "invoice"},
    ]
    s = scope(policy("queue.consume", "*", conditions=conditions))
    assert ask(s, headers={"kind": "invoice"})
    assert not ask(s, headers={"kind": "receipt"})
    assert not ask(s, actor=Actor("worker-b", {"tenant": "tenant-b"}), headers={"kind": "invoice"})


def test_value_from_compares_two_request_values() -> None:
    same_tenant = {"field": "actor.meta.tenant", "operator": "eq", "value_from": "message.tenant"}
    s = scope(policy("queue.consume", "*", conditions=[same_tenant]))
    assert ask(s, tenant="tenant-a")
    assert not ask(s, tenant="tenant-b")
    assert not ask(s, tenant=None)  # an unstamped message has no tenant: equals nothing
    assert not ask(s, actor=Actor("no-meta"), tenant=None)  # absent == absent is not a match


def test_value_from_an_absent_value_matches_no_header_text() -> None:
    owner = {"field": "message.headers.owner", "operator": "eq", "value_from": "actor.meta.owner"}
    s = scope(policy("queue.consume", "*", conditions=[owner]))
    # the publisher chooses headers: "None" must not equal the actor's missing owner
    assert not ask(s, headers={"owner": "None"})
    assert ask(s, actor=Actor("w", {"owner": "bob"}), headers={"owner": "bob"})


@pytest.mark.parametrize(
    ("condition", "error"),
    [
        ({"field": "actor.name", "operator": "eq", "value": "x"}, "unknown field"),
        ({"field": "actor.id", "operator": "like", "value": "x"}, "operator"),
        ({"field": "actor.id", "operator": "eq"}, "needs 'value'"),
        ({"field": "actor.id", "operator": "eq", "value": "x", "value_from": "action"}, "not both"),
        ({"field": "actor.id", "operator": "eq", "value_from": "actor.nope"}, "unknown field"),
        ({"field": "actor.id", "operator": "in", "value": "worker-a"}, "needs a list"),
        ({"field": "actor.id", "operator": "nin", "value": "worker-a"}, "needs a list"),
        ({"field": "actor.id", "operator": "matches", "value": "(unclosed"}, "regular expression"),
    ],
)
def test_bad_conditions_are_rejected_when_loaded(condition: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        policy("queue.consume", "*", conditions=[condition])


# -- combining: deny overrides allow, no allow is a deny ------------------------------


def test_deny_overrides_allow_whatever_the_order() -> None:
    allow_all = policy("queue.*", "*")
    deny_secret = policy("queue.consume", "app:secret", "deny")
    for s in (scope(allow_all, deny_secret), scope(deny_secret, allow_all)):
        decision = s.check(Request("queue.consume", "app:secret", WORKER))
        assert not decision.allowed
        assert decision.reason == "policy"
        assert decision.policy is not None
        assert decision.rule[3] == "deny"
        assert ask(s, resource="app:jobs")


def test_a_deny_whose_condition_fails_does_not_deny() -> None:
    deny_other_tenants = policy(
        "queue.consume",
        "*",
        "deny",
        conditions=[{"field": "message.tenant", "operator": "ne", "value": "tenant-a"}],
    )
    s = scope(policy("queue.consume", "*"), deny_other_tenants)
    assert ask(s, tenant="tenant-a")
    assert not ask(s, tenant="tenant-b")
    assert not ask(s, tenant=None)


def test_no_allow_is_a_deny() -> None:
    s = scope(policy("queue.consume", "app:other"), policy("queue.publish", "*", "deny"))
    decision = s.check(Request("queue.consume", "app:jobs", WORKER))
    assert (decision.allowed, decision.reason, decision.policy) == (False, "no_allow", None)
    empty = Scope("empty", [])
    assert not empty.check(Request("queue.consume", "app:jobs", WORKER)).allowed


def test_a_casbin_deny_overrides_a_wippy_allow(tmp_path: Path) -> None:
    (tmp_path / "m.conf").write_text(
        "[request_definition]\nr = sub, obj, act\n[policy_definition]\np = sub, obj, act, eft\n"
        "[policy_effect]\ne = some(where (p.eft == allow)) && !some(where (p.eft == deny))\n"
        "[matchers]\nm = r.sub == p.sub && keyMatch(r.obj, p.obj) && r.act == p.act\n"
    )
    config = CasbinPolicyConfig(
        model=f"file://{tmp_path / 'm.conf'}",
        rules=["p, worker-a, app:secret, queue.consume, deny"],
        request=["actor.id", "resource", "action"],
    )
    s = Scope(
        "mixed",
        [WippyRulesUnit([("app:all", policy("*", "*"))]), CasbinUnit("app:casbin", config)],
    )
    assert ask(s, resource="app:jobs")
    decision = s.check(Request("queue.consume", "app:secret", WORKER))
    assert not decision.allowed
    assert decision.policy == "app:casbin"


def test_a_casbin_model_that_allows_by_default_still_needs_an_allowing_rule(
    tmp_path: Path,
) -> None:
    (tmp_path / "m.conf").write_text(
        "[request_definition]\nr = sub, obj\n[policy_definition]\np = sub, obj, eft\n"
        "[policy_effect]\ne = !some(where (p.eft == deny))\n"
        "[matchers]\nm = r.sub == p.sub && r.obj == p.obj\n"
    )
    config = CasbinPolicyConfig(
        model=f"file://{tmp_path / 'm.conf'}",
        rules=["p, worker-a, app:secret, deny", "p, worker-a, app:jobs, allow"],
        request=["actor.id", "resource"],
    )
    s = Scope("deny-model", [CasbinUnit("app:casbin", config)])
    assert ask(s, resource="app:jobs")
    assert not ask(s, resource="app:secret")
    # no rule says anything about app:other: the model says "allow", we say no allow
    decision = s.check(Request("queue.consume", "app:other", WORKER))
    assert (decision.allowed, decision.reason) == (False, "no_allow")


# -- end to end: a rule decides what a consumer may take ------------------------------


INVOICE = {"field": "message.headers.kind", "operator": "eq", "value": "invoice"}
SECRET = {"field": "message.headers.secret", "operator": "exists"}


async def test_rules_decide_consumption_end_to_end(tmp_path: Path) -> None:
    state = reset()
    runtime = load(
        tmp_path,
        [
            settings(**FAST_BACKOFF),
            driver(),
            queue("jobs", dead="dead", max_attempts=2),
            queue("dead"),
            func("record_async"),
            rule("take_invoices", "queue.consume", "app:*", conditions=[INVOICE]),
            rule("never_secret", "queue.consume", "app:jobs", "deny", conditions=[SECRET]),
            consumer(
                "worker",
                "jobs",
                "record_async",
                actor="w",
                policies=("take_invoices", "never_secret"),
            ),
        ],
    )
    async with runtime:
        await runtime.publish("app:jobs", {"n": 1}, {"kind": "invoice"})
        await runtime.publish("app:jobs", {"n": 2}, {"kind": "receipt"})
        await runtime.publish("app:jobs", {"n": 3}, {"kind": "invoice", "secret": "x"})
        await runtime.join(timeout=5)
        dead = await dead_letters(runtime, expect=2)
    assert [s.data for s in state.seen] == [{"n": 1}]
    errors = sorted(str(m.headers["x_dead_letter_error"]) for m in dead)
    assert errors[0] == "deny (no_allow)"
    assert errors[1].startswith("deny (policy) by app:never_secret")
    assert {m.headers["x_dead_letter_reason"] for m in dead} == {"permission_denied"}


def test_invalid_rules_are_config_errors_with_the_entry_and_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(
            tmp_path,
            [driver(), rule("wide", "queue.consume", "app:*:jobs")],
        )
    (problem,) = caught.value.problems
    assert problem.entry_id == "app:wide"
    assert problem.file is not None and problem.file.endswith("_index.yaml")
    assert problem.line is not None
    assert "may only be" in problem.message
