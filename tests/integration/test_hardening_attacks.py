"""Attacks of issue 16 (items 9-16), each reproduced: the hole stays shut."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import security_support as sec

from wippy_queue import PublishError
from wippy_queue.identity import Actor, Request
from wippy_queue.policytools.model import MATCH_FUNCTIONS
from wippy_queue.queue import api
from wippy_queue.queue.driver import Delivery
from wippy_queue.queue.message import PUBLISHER_TENANT, Message, user_headers
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


# -- item 13: header keys and values are exact built-in types before any check -------------


class LyingKey(str):
    """A key that says it does not start with 'x_'."""

    def startswith(self, *args: Any, **kwargs: Any) -> bool:
        return False


@pytest.mark.parametrize("reserved", ["x_publisher", "x_publisher_tenant", "x_signature"])
def test_a_str_subclass_key_cannot_set_a_reserved_header(reserved: str) -> None:
    with pytest.raises(PublishError, match="reserved"):
        user_headers({LyingKey(reserved): "tenant-a"})


def test_header_keys_and_values_become_exact_built_in_types() -> None:
    class Text(str):
        pass

    class Number(int):
        pass

    headers = user_headers({Text("kind"): Text("invoice"), "n": Number(3), "r": 0.5})
    assert headers == {"kind": "invoice", "n": 3, "r": 0.5}
    assert [type(k) for k in headers] == [str, str, str]
    assert [type(v) for v in headers.values()] == [str, int, float]
    with pytest.raises(PublishError, match="finite"):
        user_headers({"r": float("nan")})


SIGNING_KEY = "test-signing-key-0123456789"


async def smuggle_tenant(data: Any) -> bool:
    """A handler whose actor has no tenant, claiming tenant-a through a lying key."""
    try:
        await api.publish_async(
            "app:jobs", {"from": "relay"}, {LyingKey(PUBLISHER_TENANT): "tenant-a"}
        )
    except PublishError as err:
        SMUGGLED.append(err)
    return True


SMUGGLED: list[BaseException] = []


async def test_a_handler_cannot_have_the_runtime_sign_a_forged_tenant(tmp_path: Path) -> None:
    SMUGGLED.clear()
    state = sec.reset()
    runtime = sec.load(
        tmp_path,
        [
            sec.settings(signing_key=SIGNING_KEY),
            sec.driver(),
            sec.queue("inbox"),
            sec.queue("jobs"),
            {
                "name": "smuggle",
                "kind": "function.python",
                "source": "test_hardening_attacks:smuggle_tenant",
            },
            sec.func("record_async"),
            sec.rule("all", ["queue.publish", "queue.publish.queue", "queue.consume"], "*"),
            sec.rule(
                "same_tenant",
                "queue.consume",
                "app:jobs",
                conditions=[
                    {"field": "actor.meta.tenant", "operator": "eq", "value_from": "message.tenant"}
                ],
            ),
            sec.consumer("relay", "inbox", "smuggle", actor="svc-b", policies=("all",)),
            sec.consumer(
                "worker",
                "jobs",
                "record_async",
                actor="worker-a",
                tenant="tenant-a",
                policies=("same_tenant",),
            ),
        ],
    )
    async with runtime:
        await runtime.publish("app:inbox", {"n": 0})
        await runtime.join("app:inbox", timeout=5)
        await runtime.join("app:jobs", timeout=5)
    assert [type(e) for e in SMUGGLED] == [PublishError]
    assert state.seen == []  # tenant-a's worker never ran it


class _Held(Delivery):
    async def _ack(self) -> None: ...

    async def _nack(self, *, requeue: bool, delay_s: float, reason: str) -> None: ...

    async def _release(self) -> None: ...


def test_what_a_driver_hands_over_is_made_exact_at_the_delivery() -> None:
    class Text(str):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = str.__hash__

    clean = _Held(Message("m1", b"{}", {LyingKey("x_publisher"): Text("svc-a"), "n": 1}), 1)
    assert clean.malformed is None
    assert clean.message.headers == {"x_publisher": "svc-a", "n": 1}
    assert all(type(k) is str for k in clean.message.headers)
    assert type(clean.message.headers["x_publisher"]) is str
    assert clean.message.headers["x_publisher"] != "svc-b"  # its own __eq__ is gone

    odd = _Held(Message(123, b"{}", {"ok": "yes", 7: "no", "list": [1]}), 1)  # type: ignore[arg-type, dict-item]
    assert odd.message.id == "123" and type(odd.message.id) is str
    assert odd.message.headers == {"ok": "yes"}
    assert odd.malformed is not None and "id is a int" in odd.malformed
