"""Hot reload of ``security.policy`` entries: editing the entry files that hold Wippy
rules changes the decisions of running consumers, and a broken edit changes nothing."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import security_support as sec
import yaml
from security_support import FAST_BACKOFF, consumer, driver, func, queue, rule, settings

from wippy_queue import Runtime
from wippy_queue.audit import verify_file
from wippy_queue.identity import Actor, Request
from wippy_queue.security.reload import digest
from wippy_queue.security.units import CasbinUnit

WAIT_S = 5.0
Reload = tuple[str, bool, str | None]


def entries(
    *policies: dict[str, Any],
    groups: tuple[str, ...] = (),
    concurrency: int = 1,
    audited: bool = True,
) -> list[dict[str, Any]]:
    """app:jobs consumed by app:worker (actor worker-a, policy app:reader, and
    ``groups``), audited to audit.jsonl (unless not ``audited``)."""
    audit = {"name": "audit", "kind": "security.audit", "path": "file://audit.jsonl"}
    return [
        settings(**FAST_BACKOFF),
        *([audit] if audited else []),
        driver(),
        queue("jobs", dead="dead", max_attempts=1000),
        queue("dead"),
        func("record_async"),
        *policies,
        consumer(
            "worker",
            "jobs",
            "record_async",
            actor="worker-a",
            policies=("app:reader",),
            groups=groups,
            concurrency=concurrency,
        ),
    ]


def reloads_of(runtime: Runtime) -> asyncio.Queue[Reload]:
    seen: asyncio.Queue[Reload] = asyncio.Queue()
    runtime.policy_watcher.listeners.append(
        lambda policy, file, old, new, applied, error: seen.put_nowait((policy, applied, error))
    )
    return seen


def audit_reloads(folder: Path) -> list[dict[str, Any]]:
    path = folder / "audit.jsonl"
    assert verify_file(path).ok
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r["event"] == "policy_reload"]


async def test_an_edited_policy_applies_and_a_broken_edit_is_refused(tmp_path: Path) -> None:
    state = sec.reset()
    runtime = sec.load(tmp_path, entries(rule("reader", "queue.consume", "app:other")))
    reloads = reloads_of(runtime)
    decisions = sec.watch_decisions(runtime, "app:worker")
    async with runtime:
        await runtime.publish("app:jobs", {"n": 0})
        await decisions.wait(lambda r: not r.decision.allowed)  # no rule allows app:jobs

        sec.write_entries(tmp_path, entries(rule("reader", "queue.consume", "app:jobs")))
        assert await asyncio.wait_for(reloads.get(), WAIT_S) == ("app:reader", True, None)
        await runtime.join("app:jobs", timeout=WAIT_S)
        assert [s.data for s in state.seen] == [{"n": 0}]

        index = tmp_path / "_index.yaml"
        index.write_text(index.read_text().replace("effect: allow", "effect: maybe"))
        _, applied, error = await asyncio.wait_for(reloads.get(), WAIT_S)
        assert not applied
        assert "_index.yaml" in str(error) and "app:reader" in str(error) and "effect" in str(error)

        index.write_text("entries: [\n")  # torn mid-save: not even YAML
        _, applied, error = await asyncio.wait_for(reloads.get(), WAIT_S)
        assert not applied and "_index.yaml" in str(error)

        await runtime.publish("app:jobs", {"n": 1})
        await runtime.join("app:jobs", timeout=WAIT_S)  # the last good rule is in force
        assert [s.data for s in state.seen] == [{"n": 0}, {"n": 1}]

    records = audit_reloads(tmp_path)
    assert [r["result"] for r in records] == ["applied", "refused", "refused"]
    assert records[0]["policy"] == "app:reader" and records[0]["file"].endswith("_index.yaml")
    assert records[0]["old_digest"] != records[0]["new_digest"]
    assert all(r["error"] for r in records[1:])


async def test_a_deny_added_to_the_consumers_group_takes_effect(tmp_path: Path) -> None:
    state = sec.reset()
    allow = rule("reader", "queue.consume", "app:jobs", groups=["readers"])
    runtime = sec.load(tmp_path, entries(allow, groups=("readers",)))
    reloads = reloads_of(runtime)
    decisions = sec.watch_decisions(runtime, "app:worker")
    async with runtime:
        await runtime.publish("app:jobs", {"n": 0})
        await runtime.join("app:jobs", timeout=WAIT_S)

        block = rule("block", "queue.consume", "app:*", "deny", groups=["readers"])
        sec.write_entries(tmp_path, entries(allow, block, groups=("readers",)))
        assert await asyncio.wait_for(reloads.get(), WAIT_S) == ("app:block", True, None)
        await runtime.publish("app:jobs", {"n": 1})
        denied = await decisions.wait(lambda r: not r.decision.allowed)
        assert denied.decision.policy == "app:block"
        assert [s.data for s in state.seen] == [{"n": 0}]  # the deny overrides the allow


async def test_removing_a_policy_a_running_consumer_names_is_refused(tmp_path: Path) -> None:
    state = sec.reset()
    runtime = sec.load(tmp_path, entries(rule("reader", "queue.consume", "app:jobs")))
    reloads = reloads_of(runtime)
    async with runtime:
        # the consumer is edited too, so the files are consistent: still refused, since the
        # running consumer keeps its security block until a restart
        edited = [e for e in entries() if e["name"] != "worker"]
        edited.append(consumer("worker", "jobs", "record_async", actor="worker-a"))
        sec.write_entries(tmp_path, edited)
        _, applied, error = await asyncio.wait_for(reloads.get(), WAIT_S)
        assert not applied and "app:reader" in str(error) and "put it back" in str(error)

        await runtime.publish("app:jobs", {"n": 0})
        await runtime.join("app:jobs", timeout=WAIT_S)
        assert [s.data for s in state.seen] == [{"n": 0}]


async def test_other_entry_changes_are_named_as_waiting_for_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sec.reset()
    allow = rule("reader", "queue.consume", "app:jobs")
    runtime = sec.load(tmp_path, entries(allow))
    reloads = reloads_of(runtime)
    before = runtime.security.scopes["app:worker"].units
    async with runtime:
        with caplog.at_level(logging.WARNING, logger="wippy_queue.security.reload"):
            sec.write_entries(tmp_path, entries(allow, concurrency=3))
            async with asyncio.timeout(WAIT_S):
                while "app:worker take effect at the next start" not in caplog.text:
                    await asyncio.sleep(0.01)
        sec.write_entries(tmp_path, entries(rule("reader", "queue.consume", "app:*")))
        assert await asyncio.wait_for(reloads.get(), WAIT_S) == ("app:reader", True, None)
    assert runtime.security.scopes["app:worker"].units is not before
    assert [r["policy"] for r in audit_reloads(tmp_path)] == ["app:reader"]


async def test_a_policy_file_added_to_the_folder_applies_and_its_removal_too(
    tmp_path: Path,
) -> None:
    state = sec.reset()
    allow = rule("reader", "queue.consume", "app:jobs", groups=["readers"])
    runtime = sec.load(tmp_path, entries(allow, groups=("readers",)))
    reloads = reloads_of(runtime)
    decisions = sec.watch_decisions(runtime, "app:worker")
    extra = tmp_path / "more" / "block.yaml"
    async with runtime:
        extra.parent.mkdir()
        block = rule("block", "queue.consume", "app:*", "deny", groups=["readers"])
        extra.write_text(yaml.safe_dump({"namespace": "app", "entries": [block]}))
        assert await asyncio.wait_for(reloads.get(), WAIT_S) == ("app:block", True, None)
        await runtime.publish("app:jobs", {"n": 0})
        denied = await decisions.wait(lambda r: not r.decision.allowed)
        assert denied.decision.policy == "app:block"

        extra.unlink()
        assert await asyncio.wait_for(reloads.get(), WAIT_S) == ("app:block", True, None)
        await runtime.join("app:jobs", timeout=WAIT_S)  # allowed again: handled
    assert [s.data for s in state.seen] == [{"n": 0}]
    files = [r["file"] for r in audit_reloads(tmp_path)]
    assert files == [str(extra), str(extra)]


# -- the watcher, driven by hand: no edit may be missed, no broken file may count ---------

RBAC_MODEL = """[request_definition]
r = sub, obj, act
[policy_definition]
p = sub, obj, act, eft
[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))
[matchers]
m = r.sub == p.sub && keyMatch(r.obj, p.obj) && r.act == p.act
"""


def casbin(name: str, folder: Path, csv: str) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "security.policy.casbin",
        "model": f"file://{folder / 'm.conf'}",
        "policy": f"file://{folder / csv}",
        "request": ["actor.id", "resource", "action"],
    }


def decide(runtime: Runtime, consumer_id: str = "app:worker", actor: str = "worker-a") -> str:
    request = Request("queue.consume", "app:jobs", Actor(actor, {}))
    decision = runtime.security.scopes[consumer_id].check(request)
    return "allow" if decision.allowed else "deny"


def casbin_app(folder: Path, *entries_: dict[str, Any]) -> Runtime:
    (folder / "m.conf").write_text(RBAC_MODEL)
    return sec.load(folder, [driver(), queue("jobs"), func("record_async"), *entries_])


WORKER_UNDER_CAS = consumer(
    "worker", "jobs", "record_async", actor="worker-a", policies=("app:cas",)
)
ALLOW_A = "p, worker-a, app:jobs, queue.consume, allow\n"
DENY_A = "p, worker-a, app:jobs, queue.consume, deny\n"


def clocked(runtime: Runtime) -> list[float]:
    """Time for the watcher's settling, moved by hand: ``now[0] += ...``."""
    now = [0.0]
    runtime.policy_watcher.clock = lambda: now[0]
    return now


def one_casbin(folder: Path, csv: str = "p.csv") -> tuple[Runtime, CasbinUnit]:
    """app:worker under one Casbin entry app:cas whose rules are ``csv`` (made to allow
    worker-a unless it exists already)."""
    if not (folder / csv).exists():
        (folder / csv).write_text(ALLOW_A)
    runtime = casbin_app(folder, casbin("cas", folder, csv), WORKER_UNDER_CAS)
    return runtime, runtime.security.casbin_units["app:cas"]


async def test_two_entries_sharing_a_policy_file_both_take_its_change(tmp_path: Path) -> None:
    rules = tmp_path / "shared.csv"
    rules.write_text("p, worker-a, app:jobs, queue.consume, allow\n")
    runtime = casbin_app(
        tmp_path,
        casbin("one", tmp_path, "shared.csv"),
        casbin("two", tmp_path, "shared.csv"),
        consumer("worker", "jobs", "record_async", actor="worker-a", policies=("app:one",)),
        consumer("other", "jobs", "record_async", actor="worker-a", policies=("app:two",)),
    )
    watcher = runtime.policy_watcher
    assert decide(runtime) == decide(runtime, "app:other") == "allow"
    rules.write_text("p, worker-a, app:jobs, queue.consume, deny\n")
    units = list(runtime.security.casbin_units.values())
    assert [await watcher.check(u) for u in units] == [False] * 2  # seen; held still?
    assert [await watcher.check(u) for u in units] == [True] * 2
    assert decide(runtime) == decide(runtime, "app:other") == "deny"


async def test_a_file_caught_half_written_is_not_taken(tmp_path: Path) -> None:
    runtime, unit = one_casbin(tmp_path)
    rules, watcher, now = tmp_path / "p.csv", runtime.policy_watcher, clocked(runtime)
    rules.write_text("p, worker-b, app:jobs, queue.consume, allow\n")  # a writer, half-way
    assert not await watcher.check(unit)
    rules.write_text(  # ...and done: the file held still for no look yet
        "p, worker-b, app:jobs, queue.consume, allow\np, worker-a, app:*, queue.consume, deny\n"
    )
    assert not await watcher.check(unit)
    assert decide(runtime) == "allow"  # still the old rules, never the half-written ones
    assert not await watcher.check(unit)  # it allows worker-b: it must settle first
    now[0] += watcher.settle_s
    assert await watcher.check(unit)
    assert decide(runtime) == "deny"


async def test_an_undecodable_policy_file_is_refused_at_its_line_and_watching_goes_on(
    tmp_path: Path,
) -> None:
    rules = tmp_path / "p.csv"
    rules.write_text("p, worker-a, app:jobs, queue.consume, allow\n")
    entries_ = [casbin("cas", tmp_path, "p.csv")]
    runtime = casbin_app(tmp_path, *entries_, consumer("worker", "jobs", "record_async",
                         actor="worker-a", policies=("app:cas",)))  # fmt: skip
    reloads = reloads_of(runtime)
    async with runtime:
        rules.write_bytes(b"# caf\xe9\np, worker-a, app:jobs, queue.consume, deny\n")
        _, applied, error = await asyncio.wait_for(reloads.get(), WAIT_S)
        assert not applied and "p.csv:1" in str(error) and "not UTF-8" in str(error)
        assert decide(runtime) == "allow"  # the last good rules
        rules.write_text("p, worker-a, app:jobs, queue.consume, deny\n")
        assert await asyncio.wait_for(reloads.get(), WAIT_S) == ("app:cas", True, None)
        assert decide(runtime) == "deny"


async def test_a_refused_entry_reload_is_tried_again_when_what_it_waits_on_arrives(
    tmp_path: Path,
) -> None:
    runtime, _ = one_casbin(tmp_path, "allow.csv")
    watcher, now = runtime.policy_watcher, clocked(runtime)
    watcher.retry_s = 0.0
    (tmp_path / "m.conf").write_text(RBAC_MODEL)
    renamed = casbin("cas", tmp_path, "deny.csv")
    sec.write_entries(
        tmp_path, [driver(), queue("jobs"), func("record_async"), renamed, WORKER_UNDER_CAS]
    )
    assert not await watcher.check_entries()  # seen
    assert not await watcher.check_entries()  # deny.csv is not written yet: refused
    (tmp_path / "deny.csv").write_text(DENY_A)
    assert not await watcher.check_entries()  # it now loads; deny.csv must hold still a look
    assert not await watcher.check_entries()  # a Casbin entry edited: it must settle first
    now[0] += watcher.settle_s
    assert await watcher.check_entries()  # the entry files did not change, but it now loads
    assert decide(runtime) == "deny"


async def test_an_edit_made_before_the_watcher_starts_is_not_missed(tmp_path: Path) -> None:
    allow = rule("reader", "queue.consume", "app:jobs")
    runtime = sec.load(tmp_path, entries(allow, audited=False))
    deny = rule("reader", "queue.consume", "app:jobs", "deny")
    sec.write_entries(tmp_path, entries(deny, audited=False))
    assert not await runtime.policy_watcher.check_entries()  # seen
    assert await runtime.policy_watcher.check_entries()
    assert decide(runtime) == "deny"


async def test_a_file_missing_for_one_look_does_not_drop_its_policies(tmp_path: Path) -> None:
    allow = rule("reader", "queue.consume", "app:jobs", groups=["readers"])
    runtime = sec.load(tmp_path, entries(allow, groups=("readers",), audited=False))
    watcher, now = runtime.policy_watcher, clocked(runtime)
    block = tmp_path / "block.yaml"
    deny = rule("block", "queue.consume", "app:*", "deny", groups=["readers"])
    block.write_text(yaml.safe_dump({"namespace": "app", "entries": [deny]}))
    assert not await watcher.check_entries()  # seen
    assert await watcher.check_entries()
    assert decide(runtime) == "deny"
    block.rename(tmp_path / "block.yaml~")  # an editor saving: the old file moved away...
    assert not await watcher.check_entries()
    (tmp_path / "block.yaml~").rename(block)  # ...and the new one written
    assert not await watcher.check_entries()
    assert decide(runtime) == "deny"  # never dropped, not even for one look
    block.unlink()  # gone for good: dropped once it stays gone (a deny dropped: settled)
    assert not await watcher.check_entries()
    assert not await watcher.check_entries()
    now[0] += watcher.settle_s
    assert await watcher.check_entries()
    assert decide(runtime) == "allow"


async def test_a_policy_file_swapped_by_its_link_is_seen(tmp_path: Path) -> None:
    (tmp_path / "v1.csv").write_text(ALLOW_A)
    (tmp_path / "v2.csv").write_text(DENY_A)
    (tmp_path / "p.csv").symlink_to(tmp_path / "v1.csv")
    runtime, unit = one_casbin(tmp_path)
    assert decide(runtime) == "allow"
    (tmp_path / "p.new").symlink_to(tmp_path / "v2.csv")
    (tmp_path / "p.new").replace(tmp_path / "p.csv")  # as ln -sfn / a ConfigMap swap does
    (tmp_path / "v1.csv").unlink()
    assert not await runtime.policy_watcher.check(unit)
    assert await runtime.policy_watcher.check(unit)
    assert decide(runtime) == "deny"


async def test_a_reload_that_cannot_be_recorded_does_not_take_effect(tmp_path: Path) -> None:
    runtime, unit = one_casbin(tmp_path)
    rules, watcher = tmp_path / "p.csv", runtime.policy_watcher
    recorded: list[tuple[str, str]] = []
    allow_digest = unit.files[rules]

    def audit_down(policy: str, file: str, old: str, new: str, *_: Any) -> None:
        raise OSError("audit file not writable")

    watcher.listeners[:] = [audit_down]
    watcher.retry_s = 0.0  # no back-off wait in this test
    rules.write_text(DENY_A)
    assert not await watcher.check(unit)  # seen
    assert not await watcher.check(unit)  # loaded, but it could not be recorded
    assert decide(runtime) == "allow"
    watcher.listeners[:] = [lambda policy, file, old, new, *_: recorded.append((old, new))]
    assert await watcher.check(unit)
    assert decide(runtime) == "deny"
    assert recorded == [(allow_digest, unit.files[rules])]  # once, when it took effect


async def test_bytes_that_change_while_loading_are_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, unit = one_casbin(tmp_path)
    rules, watcher = tmp_path / "p.csv", runtime.policy_watcher
    recorded: list[str] = []
    watcher.listeners[:] = [lambda policy, file, old, new, *_: recorded.append(new)]
    load = unit.load

    def edited_while_loading() -> Any:  # another save lands while the rules are read
        rules.write_text("p, worker-a, app:jobs, queue.consume, deny\n# v3\n")
        return load()

    rules.write_text(DENY_A)
    assert not await watcher.check(unit)  # seen
    monkeypatch.setattr(unit, "load", edited_while_loading)
    assert not await watcher.check(unit)  # v3 read, not the v2 that held still: not taken
    assert recorded == [] and decide(runtime) == "allow"
    monkeypatch.undo()
    assert not await watcher.check(unit)  # v3 seen
    assert await watcher.check(unit)
    assert recorded == [unit.files[rules]] == [digest(rules)]  # the v3 bytes now in force
    assert decide(runtime) == "deny"


async def test_a_failed_record_backs_off_and_a_lost_refusal_is_told_again(
    tmp_path: Path,
) -> None:
    runtime, unit = one_casbin(tmp_path)
    rules, watcher = tmp_path / "p.csv", runtime.policy_watcher
    heard: list[tuple[bool, str | None]] = []
    down = [True]

    def good(policy: str, file: str, old: str, new: str, applied: bool, error: Any) -> None:
        heard.append((applied, error))

    def flaky(*_: Any) -> None:
        if down[0]:
            raise OSError("audit file not writable")

    watcher.listeners[:] = [good, flaky]
    rules.write_text(DENY_A)
    for _ in range(5):  # seen, loaded but not recorded, then backing off (2 s)
        assert not await watcher.check(unit)
    assert [applied for applied, _ in heard] == [True, False]  # said once, then corrected
    assert heard[1][1] is not None and "could not be recorded" in heard[1][1]
    assert decide(runtime) == "allow"

    heard.clear()
    watcher.retry_s = 0.0
    rules.write_bytes(b"p, worker-a, app:jobs\xff\n")  # broken: refused, and the record lost
    assert not await watcher.check(unit)
    assert not await watcher.check(unit)
    assert heard == [(False, heard[0][1])]
    down[0] = False
    assert not await watcher.check(unit)  # the same refusal, told again: now it is recorded
    assert len(heard) == 2 and heard[1] == heard[0]
    assert not await watcher.check(unit)
    assert len(heard) == 2  # and not again


async def test_a_casbin_file_an_entry_reload_loads_afresh_must_hold_still_too(
    tmp_path: Path,
) -> None:
    runtime, _ = one_casbin(tmp_path)
    watcher, now = runtime.policy_watcher, clocked(runtime)
    heard: list[str] = []
    watcher.listeners[:] = [lambda policy, file, *_: heard.append(Path(file).name)]
    new_rules = tmp_path / "new.csv"
    new_rules.write_text("p, worker-b, app:jobs, queue.consume, allow\n")  # half-way
    moved = casbin("cas", tmp_path, "new.csv")
    sec.write_entries(
        tmp_path, [driver(), queue("jobs"), func("record_async"), moved, WORKER_UNDER_CAS]
    )
    assert not await watcher.check_entries()  # the entry file: seen
    assert not await watcher.check_entries()  # loads; new.csv read, not yet seen still
    new_rules.write_text(new_rules.read_text() + DENY_A)  # the writer finishes
    assert not await watcher.check_entries()  # new.csv changed since: seen again
    assert decide(runtime) == "allow"  # the old rules all along, never the half file
    assert not await watcher.check_entries()  # a Casbin entry edited: it must settle first
    now[0] += watcher.settle_s
    assert await watcher.check_entries()
    assert decide(runtime) == "deny"
    assert sorted(heard) == ["_index.yaml", "new.csv", "p.csv"]  # p.csv: no longer read
