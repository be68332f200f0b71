"""Attacks of issue 16 (items 9-16), each reproduced: the hole stays shut."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import security_support as sec

from wippy_queue import ConfigError, HandlerError, PermissionDenied, PublishError, Runtime
from wippy_queue.audit import verify_file
from wippy_queue.cli import main
from wippy_queue.identity import Actor, Request
from wippy_queue.policytools.lint import has_errors, lint
from wippy_queue.policytools.model import MATCH_FUNCTIONS
from wippy_queue.queue import api, context
from wippy_queue.queue import codec as codec_module
from wippy_queue.queue.codec import JSON, DecodeError, get_codec
from wippy_queue.queue.driver import Delivery
from wippy_queue.queue.envelope import decode_headers
from wippy_queue.queue.message import PUBLISHER_TENANT, Message, user_headers
from wippy_queue.queue.outcome import Outcome, Reason
from wippy_queue.security.iothread import IoThread
from wippy_queue.security.models import CasbinPolicyConfig, WippyPolicyConfig
from wippy_queue.security.scope import Scope
from wippy_queue.security.units import CasbinUnit, WippyRulesUnit

WORKER = Actor("worker-a", {"tenant": "tenant-a"})
SEED = Path(__file__).resolve().parents[2] / "examples" / "seed"

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


# -- item 9: malformed deliveries are decided first, recorded, backed off, dead-lettered ----

HANDLED: list[Any] = []


async def take(data: Any) -> bool:
    HANDLED.append(data)
    return True


async def refuse(data: Any) -> bool:
    raise RuntimeError("not this one")


def audited_app(
    tmp_path: Path, *, codec: str = "json", dead_codec: str = "json", dead: bool = True
) -> Runtime:
    """app:jobs (``codec``) consumed by app:worker under an allow-all rule, audited;
    dead-lettering at 3 attempts into app:dead (``dead_codec``) unless not ``dead``."""
    HANDLED.clear()
    jobs = sec.queue("jobs", dead="dead" if dead else None, max_attempts=3)
    return sec.load(
        tmp_path,
        [
            sec.settings(**sec.FAST_BACKOFF),
            {"name": "audit", "kind": "security.audit", "path": "file://audit.jsonl"},
            sec.driver(),
            {**jobs, "codec": codec},
            {**sec.queue("dead"), "codec": dead_codec},
            {"name": "take", "kind": "function.python", "source": "test_hardening_attacks:take"},
            sec.rule("all", "queue.consume", "*"),
            sec.consumer("worker", "jobs", "take", actor="worker-a", policies=("all",)),
        ],
    )


def consume_records(folder: Path) -> list[dict[str, Any]]:
    assert verify_file(folder / "audit.jsonl").ok
    records = [json.loads(line) for line in (folder / "audit.jsonl").read_text().splitlines()]
    return [r for r in records if r["event"] == "consume"]


def assert_recorded_as_malformed(records: list[dict[str, Any]], message_id: str) -> None:
    assert [r["outcome"] for r in records] == ["nack", "nack", "dead_letter"]
    assert [r["attempt"] for r in records] == [1, 2, 3]
    for record in records:
        assert (record["decision"], record["reason"]) == ("deny", "malformed")
        assert record["outcome_reason"] == "decode_error"
        assert record["message_id"] == message_id


@pytest.mark.usefixtures("backend")
async def test_an_undecodable_body_is_recorded_backed_off_and_dead_lettered(
    tmp_path: Path,
) -> None:
    runtime = audited_app(tmp_path)
    async with runtime:
        await runtime.queues["app:jobs"].put(Message("m-bad", b"\xff not json", {}))
        await runtime.join("app:jobs", timeout=5)
        dead = await sec.dead_letters(runtime, expect=1)
    assert HANDLED == []
    assert [(m.id, m.body, m.headers["x_dead_letter_reason"]) for m in dead] == [
        ("m-bad", b"\xff not json", "decode_error")
    ]
    assert_recorded_as_malformed(consume_records(tmp_path), "m-bad")


@pytest.mark.usefixtures("backend")
async def test_an_undecodable_body_is_backed_off_not_spun(tmp_path: Path) -> None:
    runtime = audited_app(tmp_path, dead=False)
    async with runtime:
        await runtime.queues["app:jobs"].put(Message("m-bad", b"\xff", {}))
        async with asyncio.timeout(5):  # held back after each attempt, never retried at once
            while (await runtime.info("app:jobs")).delayed == 0:
                await asyncio.sleep(0.001)
        policy = runtime.consumers["app:worker"].retry
    decode_error = Outcome.nack(Reason.DECODE_ERROR, "bad")
    assert 0 < policy.delay_s(1, decode_error) < policy.delay_s(2, decode_error)
    assert HANDLED == []


async def test_a_message_id_that_is_no_string_cannot_crash_settling(tmp_path: Path) -> None:
    runtime = audited_app(tmp_path)  # the memory driver carries whatever it is given
    async with runtime:
        await runtime.queues["app:jobs"].put(Message(123, b'{"n": 1}', {}))  # type: ignore[arg-type]
        await runtime.join("app:jobs", timeout=5)
        dead = await sec.dead_letters(runtime, expect=1)
        assert runtime.states()["app:worker"].value == "running"
    assert HANDLED == []  # a message that is not one is never handled
    assert [(m.id, m.headers["x_dead_letter_reason"]) for m in dead] == [("123", "decode_error")]
    assert_recorded_as_malformed(consume_records(tmp_path), "123")


async def test_a_json_queue_dead_lettering_into_a_msgpack_queue_ends_as_decode_error(
    tmp_path: Path,
) -> None:
    pytest.importorskip("msgpack")
    folder = tmp_path
    HANDLED.clear()
    runtime = sec.load(
        folder,
        [
            sec.settings(**sec.FAST_BACKOFF),
            {"name": "audit", "kind": "security.audit", "path": "file://audit.jsonl"},
            sec.driver(),
            sec.queue("jobs", dead="dead", max_attempts=1),
            {**sec.queue("dead", dead="graveyard", max_attempts=3), "codec": "msgpack"},
            sec.queue("graveyard"),
            {
                "name": "refuse",
                "kind": "function.python",
                "source": "test_hardening_attacks:refuse",
            },
            {"name": "take", "kind": "function.python", "source": "test_hardening_attacks:take"},
            sec.rule("all", "queue.consume", "*"),
            sec.consumer("worker", "jobs", "refuse", actor="worker-a", policies=("all",)),
            sec.consumer("mourner", "dead", "take", actor="worker-a", policies=("all",)),
        ],
    )
    async with runtime:
        message_id = await runtime.publish("app:jobs", {"n": 1})
        await runtime.join(timeout=5)
        buried = await sec.dead_letters(runtime, "graveyard", expect=1)
    assert HANDLED == []
    assert [(m.id, m.headers["x_dead_letter_reason"]) for m in buried] == [
        (message_id, "decode_error")
    ]
    mourned = [r for r in consume_records(folder) if r["consumer"] == "app:mourner"]
    assert_recorded_as_malformed(mourned, message_id)


async def test_a_settle_hook_failing_on_one_message_backs_it_off(tmp_path: Path) -> None:
    runtime = audited_app(tmp_path, dead=False)
    recorder = runtime.consumers["app:worker"]._settle_hooks[0]
    failures: list[int] = []

    def fails_on_it(job: Any, *args: Any) -> None:
        failures.append(job.attempt)
        raise TypeError("cannot record this one")

    recorder.before_settle = fails_on_it  # type: ignore[method-assign]
    async with runtime:
        await runtime.publish("app:jobs", {"n": 1})
        async with asyncio.timeout(5):  # held back, an attempt counted: never spun
            while (await runtime.info("app:jobs")).delayed == 0:
                await asyncio.sleep(0.001)
    assert failures[:1] == [1] and len(failures) < 10


async def test_a_security_check_that_crashes_is_recorded_as_a_deny_and_backed_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = audited_app(tmp_path)
    guard = runtime.consumers["app:worker"]._middlewares[0]

    def crash(job: Any) -> Any:
        raise RuntimeError("policy engine broke")

    guard.decide = crash  # type: ignore[attr-defined]
    with caplog.at_level(logging.ERROR, logger="wippy_queue.queue.consumer"):
        async with runtime:
            await runtime.publish("app:jobs", {"n": 1})
            await runtime.join("app:jobs", timeout=5)
    assert HANDLED == []
    # its whole traceback once (a bug of ours or of a policy), then one line an attempt
    logged = [r for r in caplog.records if "middleware failed" in r.getMessage()]
    assert len(logged) == 3
    first = logged[0].fields["traceback"]  # type: ignore[attr-defined]
    assert first.startswith("Traceback") and "in crash" in first
    assert all("same error as before" in r.getMessage() for r in logged[1:])
    records = consume_records(tmp_path)
    assert [r["outcome"] for r in records] == ["nack", "nack", "dead_letter"]
    for record in records:
        assert (record["decision"], record["reason"]) == ("deny", "error")
        assert "policy engine broke" in record["decision_error"]
        assert record["outcome_reason"] == "middleware_error"
    middleware_error = Outcome.nack(Reason.MIDDLEWARE_ERROR, "x")
    assert runtime.consumers["app:worker"].retry.delay_s(1, middleware_error) > 0


# -- item 10: depth and size limits at decode and at publish -------------------------------


def nested(depth: int) -> Any:
    data: Any = 1
    for _ in range(depth):
        data = [data]
    return data


@pytest.mark.usefixtures("backend")
async def test_a_body_nested_200k_deep_from_a_broker_is_a_decode_error_not_a_crash(
    tmp_path: Path,
) -> None:
    runtime = audited_app(tmp_path)
    async with runtime:
        deep = b"[" * 200_000 + b"]" * 200_000
        await runtime.queues["app:jobs"].put(Message("m-deep", deep, {}))
        await runtime.join("app:jobs", timeout=10)
        dead = await sec.dead_letters(runtime, expect=1)
        assert runtime.states()["app:worker"].value == "running"  # never failed
    assert HANDLED == []
    assert [(m.id, m.headers["x_dead_letter_reason"]) for m in dead] == [("m-deep", "decode_error")]
    assert "deeper than 100 levels" in str(dead[0].headers["x_dead_letter_error"])
    assert_recorded_as_malformed(consume_records(tmp_path), "m-deep")


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize("depth", [101, 5_000, 200_000])
def test_data_nested_too_deep_is_refused_at_publish_and_at_decode(codec: str, depth: int) -> None:
    if codec == "msgpack":
        pytest.importorskip("msgpack")
    chosen = get_codec(codec)
    assert chosen.decode(chosen.encode(nested(100))) == nested(100)  # the limit itself is fine
    with pytest.raises(PublishError, match=r"deeper than 100 levels|recursion limit"):
        chosen.encode(nested(depth))
    body = b"[" * depth + b"1" + b"]" * depth if codec == "json" else b"\x91" * depth + b"\x01"
    with pytest.raises(DecodeError):
        chosen.decode(body)


def test_data_over_the_size_limit_is_refused_at_publish_and_at_decode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(codec_module, "MAX_BODY_BYTES", 1000)
    assert JSON.encode("x" * 900)
    with pytest.raises(PublishError, match="over the 1000-byte limit"):
        JSON.encode("x" * 1000)
    with pytest.raises(DecodeError, match="over the 1000-byte limit"):
        JSON.decode(b'"' + b"x" * 1000 + b'"')


def test_run_publish_of_data_nested_5000_deep_is_a_usage_error_without_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(SystemExit) as stopped:
        main(["run", str(SEED), "--publish", "tasks", deep])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "deeper than 100 levels" in err
    assert len(err) < 2000  # the 10,000-character argument is not echoed whole


def test_headers_nested_deep_on_the_wire_are_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="nest too deep"):
        decode_headers(b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}")


# -- item 11: an actor whose id is a role's name does not hold that role everywhere ---------

RBAC = Path(__file__).resolve().parents[2] / "wippy_queue" / "policies" / "rbac_with_tenants.conf"
TENANT_RULES = (
    "p, worker, tenant-a, app:jobs, queue.consume, allow\n"
    "p, worker, tenant-b, app:jobs, queue.consume, allow\n"
    "g, worker-a, worker, tenant-a\n"
    "g, worker-b, worker, tenant-b\n"
)


def tenants_entry(folder: Path) -> dict[str, Any]:
    (folder / "tenants.csv").write_text(TENANT_RULES)
    return {
        "name": "tenants",
        "kind": "security.policy.casbin",
        "model": f"file://{RBAC}",
        "policy": "file://tenants.csv",
        "request": ["actor.id", "message.tenant", "resource", "action"],
    }


def role_named_app(folder: Path, actor: str) -> list[dict[str, Any]]:
    return [
        sec.driver(),
        sec.queue("jobs"),
        sec.func("record_async"),
        tenants_entry(folder),
        sec.consumer("worker", "jobs", "record_async", actor=actor, tenant="tenant-c",
                     policies=("tenants",)),
    ]  # fmt: skip


def test_an_actor_id_that_is_a_role_name_is_refused_at_load_and_by_lint(tmp_path: Path) -> None:
    sec.write_entries(tmp_path, role_named_app(tmp_path, actor="worker"))
    with pytest.raises(ConfigError) as refused:
        Runtime.load(tmp_path)
    message = str(refused.value)
    assert "actor id 'worker' is also the name of a role in app:tenants" in message
    assert "tenants.csv:3" in message and "every domain" in message
    findings = lint([tmp_path])
    assert has_errors(findings)
    assert any("is also the name of a role" in f.message for f in findings)


def test_a_role_named_subject_is_denied_when_deciding_in_every_domain(tmp_path: Path) -> None:
    runtime = sec.load(tmp_path, role_named_app(tmp_path, actor="worker-c"))
    scope = runtime.security.scopes["app:worker"]
    for tenant in ("tenant-a", "tenant-b"):
        asked = Request("queue.consume", "app:jobs", Actor("worker", {}), {}, "svc", tenant)
        decision = scope.check(asked)
        assert not decision.allowed and decision.reason == "error"
        assert "'worker' is also the name of a role" in str(decision.error)
    # the actors the roles are granted to are unaffected
    granted = Request("queue.consume", "app:jobs", Actor("worker-a", {}), {}, "svc", "tenant-a")
    assert scope.check(granted).allowed


def test_explain_says_why_a_role_named_actor_is_denied(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sec.write_entries(tmp_path, role_named_app(tmp_path, actor="worker-c"))
    main(
        ["policy", "explain", str(tmp_path), "--actor", "worker", "--policy", "app:tenants",
         "--action", "queue.consume", "--resource", "app:jobs", "--publisher", "svc",
         "--publisher-tenant", "tenant-b"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "decision: deny (error)" in out and "is also the name of a role" in out, out
    assert "Traceback" not in capsys.readouterr().err


# -- item 15: only regular files are read; the watcher never blocks, nor stops a stop -------

ALLOW_A = "p, worker-a, app:jobs, queue.consume, allow\n"
DENY_A = "p, worker-a, app:jobs, queue.consume, deny\n"
ACL_MODEL = """[request_definition]
r = sub, obj, act
[policy_definition]
p = sub, obj, act, eft
[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))
[matchers]
m = r.sub == p.sub && keyMatch(r.obj, p.obj) && r.act == p.act
"""


def acl_app(folder: Path, rules: str = ALLOW_A) -> list[dict[str, Any]]:
    (folder / "m.conf").write_text(ACL_MODEL)
    if rules:
        (folder / "p.csv").write_text(rules)
    cas = {
        "name": "cas",
        "kind": "security.policy.casbin",
        "model": f"file://{folder / 'm.conf'}",
        "policy": f"file://{folder / 'p.csv'}",
        "request": ["actor.id", "resource", "action"],
    }
    return [
        sec.driver(),
        sec.queue("jobs"),
        sec.func("record_async"),
        cas,
        sec.consumer("worker", "jobs", "record_async", actor="worker-a", policies=("cas",)),
    ]


def decide(runtime: Runtime) -> bool:
    scope = runtime.security.scopes["app:worker"]
    return scope.check(Request("queue.consume", "app:jobs", Actor("worker-a"))).allowed


def fifo_at(path: Path) -> None:
    """Replace ``path`` by a FIFO (no writer: opening it to read would wait forever)."""
    os.mkfifo(path.with_suffix(".fifo"))
    path.with_suffix(".fifo").replace(path)


async def test_a_fifo_at_a_policy_path_is_refused_and_later_changes_apply(
    tmp_path: Path,
) -> None:
    runtime = sec.load(tmp_path, acl_app(tmp_path))
    reloads: asyncio.Queue[tuple[bool, str | None]] = asyncio.Queue()
    runtime.policy_watcher.listeners.append(
        lambda policy, file, old, new, applied, error: reloads.put_nowait((applied, error))
    )
    runtime.policy_watcher.retry_s = 0.05
    async with runtime:
        fifo_at(tmp_path / "p.csv")
        applied, error = await asyncio.wait_for(reloads.get(), 5)
        assert not applied and "a FIFO, not a regular file" in str(error)
        assert decide(runtime)  # the last good rules stay

        (tmp_path / "p.new").write_text(DENY_A)
        (tmp_path / "p.new").replace(tmp_path / "p.csv")
        assert await asyncio.wait_for(reloads.get(), 5) == (True, None)
        assert not decide(runtime)
        fifo_at(tmp_path / "p.csv")  # and one left there at stop does not hold the stop
        await asyncio.wait_for(reloads.get(), 5)
    assert runtime.policy_watcher._task is None


def test_a_fifo_named_as_a_policy_or_entry_file_is_a_load_error_not_a_hang(
    tmp_path: Path,
) -> None:
    sec.write_entries(tmp_path, acl_app(tmp_path, rules=""))
    os.mkfifo(tmp_path / "p.csv")
    with pytest.raises(ConfigError, match=r"p\.csv is not a regular file"):
        Runtime.load(tmp_path)
    os.mkfifo(tmp_path / "more.yaml")
    with pytest.raises(ConfigError, match="a FIFO, not a regular file"):
        Runtime.load(tmp_path / "_index.yaml", tmp_path / "more.yaml")


async def test_a_read_that_never_answers_is_given_up_and_does_not_hold_the_loop() -> None:
    io = IoThread("test-io")
    never = threading.Event()
    with pytest.raises(TimeoutError, match=r"no answer within 0\.05s"):
        await io.run(never.wait, 0.05)
    assert await io.run(lambda: 7, 1.0) == 7  # on a fresh thread: the stuck one is given up
    never.set()
    io.close()


async def test_the_watcher_thread_is_started_once_and_reused() -> None:
    """Thread.start() blocks the loop until the new thread runs (ms on a busy machine):
    the watcher's looks must not start one each."""
    io = IoThread("test-io-reused")

    def ours() -> list[threading.Thread]:  # (other tests' threads come and go meanwhile)
        return [t for t in threading.enumerate() if t.name == "test-io-reused"]

    assert ours() == []
    idents = {await io.run(threading.get_ident, 1.0) for _ in range(5)}
    assert len(idents) == 1 and threading.get_ident() not in idents
    assert [t.ident for t in ours()] == list(idents)
    with pytest.raises(ZeroDivisionError):  # an error is the awaiting task's
        await io.run(lambda: 1 / 0, 1.0)
    assert await io.run(threading.get_ident, 1.0) in idents  # and the thread lives on
    io.close()


# -- item 14: a handler that leaves its call context still publishes as its consumer --------

ESCAPED: list[BaseException | str] = []


async def escape_in_a_fresh_task(data: Any) -> bool:
    publisher = context.current().publisher  # type: ignore[union-attr]
    fresh = asyncio.get_running_loop().create_task(
        publisher.publish("app:jobs", {"escaped": "task"}), context=contextvars.Context()
    )
    try:
        ESCAPED.append(await fresh)
    except PermissionDenied as err:
        ESCAPED.append(err)
    return True


def escape_in_a_thread(data: Any) -> bool:
    ctx = context.current()
    assert ctx is not None and ctx.publisher is not None and ctx.loop is not None
    publisher, loop = ctx.publisher, ctx.loop

    def elsewhere() -> None:  # a plain thread: no call context at all
        try:
            coro = publisher.publish("app:jobs", {"escaped": "thread"})
            ESCAPED.append(asyncio.run_coroutine_threadsafe(coro, loop).result())
        except PermissionDenied as err:
            ESCAPED.append(err)
        try:
            api.publish("app:jobs", {"escaped": "api"})
        except HandlerError as err:
            ESCAPED.append(err)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    return True


@pytest.mark.parametrize("handler", ["escape_in_a_fresh_task", "escape_in_a_thread"])
async def test_a_publish_made_outside_the_call_context_is_checked_as_the_consumer(
    tmp_path: Path, handler: str
) -> None:
    ESCAPED.clear()
    runtime = sec.load(
        tmp_path,
        [
            {"name": "audit", "kind": "security.audit", "path": "file://audit.jsonl"},
            sec.driver(),
            sec.queue("inbox"),
            sec.queue("jobs"),
            {"name": "h", "kind": "function.python", "source": f"test_hardening_attacks:{handler}"},
            sec.rule("take", "queue.consume", "app:inbox"),
            sec.rule("publish", "queue.publish", ""),  # but no queue.publish.queue on app:jobs
            sec.consumer("relay", "inbox", "h", actor="svc-b", policies=("take", "publish")),
        ],
    )
    async with runtime:
        await runtime.publish("app:inbox", {"n": 0})
        await runtime.join("app:inbox", timeout=5)
        assert (await runtime.info("app:jobs")).message_count == 0  # nothing got through
    assert ESCAPED and all(isinstance(e, PermissionDenied | HandlerError) for e in ESCAPED)
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    publishes = [r for r in records if r["event"] == "publish" and r["decision"] == "deny"]
    assert publishes and {r["actor"] for r in publishes} == {"svc-b"}


# -- item 16: rules that grant more are not taken from a file that may still be changing ----

DENY_B = "p, worker-b, app:jobs, queue.consume, deny\n"
ALLOW_B = "p, worker-b, app:jobs, queue.consume, allow\n"


def worker_b_app(folder: Path) -> list[dict[str, Any]]:
    entries = acl_app(folder, rules=DENY_B)
    entries[-1] = sec.consumer("worker", "jobs", "record_async", actor="worker-b",
                               policies=("cas",))  # fmt: skip
    return [sec.settings(**sec.FAST_BACKOFF), *entries]


def b_allowed(runtime: Runtime) -> bool:
    scope = runtime.security.scopes["app:worker"]
    return scope.check(Request("queue.consume", "app:jobs", Actor("worker-b"))).allowed


async def test_a_half_written_file_that_grants_more_is_not_taken_across_a_pause(
    tmp_path: Path,
) -> None:
    runtime = sec.load(tmp_path, worker_b_app(tmp_path))
    watcher, unit, rules = (
        runtime.policy_watcher,
        runtime.security.casbin_units["app:cas"],
        tmp_path / "p.csv",
    )
    now = [0.0]
    watcher.clock = lambda: now[0]
    rules.write_text(ALLOW_B)  # a writer, half-way: the deny it keeps is not written yet
    for pause_s in (0.0, 0.25, 0.25, 0.25, 0.6):  # the writer pauses well past one look
        now[0] += pause_s
        assert not await watcher.check(unit)
        assert not b_allowed(runtime)
    rules.write_text(ALLOW_B + DENY_B)  # done
    assert not await watcher.check(unit)  # changed: seen afresh
    assert not await watcher.check(unit)  # held still one look: grants more, so it waits
    now[0] += watcher.settle_s
    assert await watcher.check(unit)  # held still for the settling: taken
    assert [r.values[-1] for r in unit.enforcer.rules] == ["allow", "deny"]
    assert not b_allowed(runtime)


async def test_a_file_cut_mid_line_that_grants_more_is_refused_not_taken(tmp_path: Path) -> None:
    runtime = sec.load(tmp_path, worker_b_app(tmp_path))
    watcher, unit, rules = (
        runtime.policy_watcher,
        runtime.security.casbin_units["app:cas"],
        tmp_path / "p.csv",
    )
    now = [0.0]
    watcher.clock = lambda: now[0]
    heard: list[tuple[bool, str | None]] = []
    watcher.listeners[:] = [
        lambda policy, file, old, new, applied, error: heard.append((applied, error))
    ]
    rules.write_text(ALLOW_B.rstrip("\n"))  # no newline at its end: may still be written
    for _ in range(3):
        now[0] += watcher.settle_s
        assert not await watcher.check(unit)
    assert not b_allowed(runtime)
    assert heard and not heard[0][0] and "does not end with a newline" in str(heard[0][1])


async def test_a_change_that_only_tightens_applies_at_once(tmp_path: Path) -> None:
    runtime = sec.load(tmp_path, acl_app(tmp_path))
    watcher, unit, rules = (
        runtime.policy_watcher,
        runtime.security.casbin_units["app:cas"],
        tmp_path / "p.csv",
    )
    watcher.clock = lambda: 0.0  # no time passes
    rules.write_text(ALLOW_A + DENY_A)  # a deny added: no settling needed
    assert not await watcher.check(unit)
    assert await watcher.check(unit)
    assert not decide(runtime)


async def test_a_slow_writer_pausing_mid_file_never_lets_a_foreign_message_run(
    tmp_path: Path,
) -> None:
    state = sec.reset()
    runtime = sec.load(tmp_path, worker_b_app(tmp_path))
    reloads: asyncio.Queue[bool] = asyncio.Queue()
    runtime.policy_watcher.listeners.append(lambda *args: reloads.put_nowait(args[4]))
    rules = tmp_path / "p.csv"
    full = ALLOW_B + DENY_B

    def slow_writer() -> None:  # the attack: half the file, a 0.6 s pause, the rest
        with rules.open("w") as out:
            out.write(ALLOW_B)
            out.flush()
            time.sleep(0.6)
            out.write(DENY_B)

    async with runtime:
        for n in range(5):
            await runtime.publish("app:jobs", {"n": n})  # denied, retried all along
        await asyncio.to_thread(slow_writer)
        assert await asyncio.wait_for(reloads.get(), 10)  # the whole file, once settled
        assert rules.read_text() == full
        assert not b_allowed(runtime)
    assert state.seen == []  # not one foreign message ran
