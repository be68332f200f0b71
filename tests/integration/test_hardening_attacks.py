"""Attacks of issue 16 (items 9-16), each reproduced: the hole stays shut."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wippy_queue.identity import Actor, Request
from wippy_queue.policytools.model import MATCH_FUNCTIONS
from wippy_queue.security.models import CasbinPolicyConfig, WippyPolicyConfig
from wippy_queue.security.scope import Scope
from wippy_queue.security.units import CasbinUnit, WippyRulesUnit

WORKER = Actor("worker-a", {"tenant": "tenant-a"})

# -- item 12: '$' is the end of the value, never "before a trailing newline" ---------------


def native(condition: dict[str, Any]) -> Scope:
    config = WippyPolicyConfig.model_validate(
        {
            "policy": {
                "actions": "queue.consume",
                "resources": "*",
                "effect": "allow",
                "conditions": [condition],
            }
        }
    )
    return Scope("test", [WippyRulesUnit([("app:p", config)])])


def consume(s: Scope, resource: str = "app:jobs", **headers: Any) -> bool:
    return s.check(Request("queue.consume", resource, WORKER, headers)).allowed


@pytest.mark.parametrize("operator", ["matches", "nmatches"])
def test_a_native_pattern_anchored_at_the_end_does_not_skip_a_trailing_newline(
    operator: str,
) -> None:
    s = native({"field": "message.headers.project", "operator": operator, "value": "^proj-a$"})
    yes = operator == "matches"
    assert consume(s, project="proj-a") is yes
    assert consume(s, project="proj-a\n") is not yes
    assert consume(s, project="proj-ab") is not yes
    # '$' inside a class, escaped, or under (?m) keeps its meaning
    assert consume(
        native({"field": "message.headers.p", "operator": "matches", "value": r"^a[$]\$$"}), p="a$$"
    )
    multi = native({"field": "message.headers.p", "operator": "matches", "value": "(?m)^a$"})
    assert consume(multi, p="a\nb")


REGEX_MODEL = """[request_definition]
r = sub, obj, act
[policy_definition]
p = sub, obj, act
[policy_effect]
e = some(where (p.eft == allow))
[matchers]
m = r.sub == p.sub && FN(r.obj, p.obj) && r.act == p.act
"""


@pytest.mark.parametrize(
    ("fn", "pattern", "good"),
    [
        ("regexMatch", "^proj-a$", "proj-a"),
        ("keyMatch2", "/proj/a/*", "/proj/a/x"),
        ("keyMatch3", "/proj/a/*", "/proj/a/x"),
        ("keyMatch4", "/proj/a/*", "/proj/a/x"),
        ("keyMatch5", "/proj/a/*", "/proj/a/x"),
    ],
)
def test_casbin_regex_matchers_do_not_skip_a_trailing_newline(
    tmp_path: Path, fn: str, pattern: str, good: str
) -> None:
    (tmp_path / "m.conf").write_text(REGEX_MODEL.replace("FN", fn))
    config = CasbinPolicyConfig.model_validate(
        {
            "model": f"file://{tmp_path / 'm.conf'}",
            "rules": [f"p, worker-a, {pattern}, queue.consume"],
            "request": ["actor.id", "resource", "action"],
        }
    )
    s = Scope("test", [CasbinUnit("app:cas", config)])
    assert consume(s, good)
    assert not consume(s, good + "\n")
    # lint and explain evaluate the same way the runtime does
    assert MATCH_FUNCTIONS[fn](good, pattern)
    assert not MATCH_FUNCTIONS[fn](good + "\n", pattern)
