"""Security configuration mistakes are load errors that say file, line, entry and field;
never a crash (or a silent allow) when a message arrives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from security_support import consumer, driver, func, load, queue, rule

from wippy_queue import ConfigError, Problem, Runtime
from wippy_queue.identity import Actor, Request
from wippy_queue.loading import load as load_entries
from wippy_queue.security.units import CasbinUnit

RBAC = Path(__file__).parents[2] / "wippy_queue" / "policies" / "rbac_with_tenants.conf"
REQUEST = ["actor.id", "message.tenant", "resource", "action"]


def line_of(path: Path, needle: str) -> int:
    return next(n for n, text in enumerate(path.read_text().splitlines(), 1) if needle in text)


def casbin(name: str, model: Path, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "security.policy.casbin",
        "model": f"file://{model}",
        "request": REQUEST,
        **fields,
    }


def app(*extra: dict[str, Any], policies: tuple[str, ...] = (), groups: tuple[str, ...] = ()):
    return [
        driver(),
        queue("jobs"),
        func("record_async"),
        *extra,
        consumer("worker", "jobs", "record_async", actor="w", policies=policies, groups=groups),
    ]


def only_problem(tmp_path: Path, entries: list[dict[str, Any]]) -> Problem:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, entries)
    errors = [p for p in caught.value.problems if p.severity == "error"]
    assert len(errors) == 1, caught.value
    return errors[0]


def test_an_unresolved_policy_id_is_a_load_error(tmp_path: Path) -> None:
    problem = only_problem(
        tmp_path, app(rule("real", "queue.consume", "*"), policies=("real", "missing"))
    )
    index = tmp_path / "_index.yaml"
    assert (problem.file, problem.entry_id) == (str(index), "app:worker")
    assert problem.field == "lifecycle.security.policies"
    assert problem.line is not None and problem.line >= line_of(index, "name: worker")
    assert "app:missing" in problem.message


def test_a_policy_id_naming_an_entry_of_another_kind_is_a_load_error(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, app(policies=("jobs",)))
    assert (problem.entry_id, problem.field) == ("app:worker", "lifecycle.security.policies")
    assert "app:jobs" in problem.message


def test_an_unresolved_group_is_a_load_error(tmp_path: Path) -> None:
    entries = app(rule("real", "queue.consume", "*", groups=["readers"]), groups=("readers", "x"))
    problem = only_problem(tmp_path, entries)
    index = tmp_path / "_index.yaml"
    assert (problem.file, problem.entry_id) == (str(index), "app:worker")
    assert problem.field == "lifecycle.security.groups"
    assert problem.line is not None and problem.line >= line_of(index, "name: worker")
    assert "'x'" in problem.message and "readers" in problem.message


def test_a_group_resolves_to_every_policy_declaring_it(tmp_path: Path) -> None:
    runtime = load(
        tmp_path,
        app(
            rule("a", "queue.consume", "*", groups=["readers"]),
            rule("b", "queue.publish", "*", groups=["readers", "writers"]),
            rule("c", "queue.publish", "*", groups=["writers"]),
            groups=("readers",),
        ),
    )
    assert runtime.security.scopes["app:worker"].policies == ("app:a", "app:b")


# -- Casbin files -----------------------------------------------------------------------


def test_a_model_line_that_is_not_key_value_names_file_and_line(tmp_path: Path) -> None:
    model = tmp_path / "broken.conf"
    model.write_text(RBAC.read_text().replace("[matchers]", "[matchers]\nthis is not a model line"))
    problem = only_problem(tmp_path, app(casbin("t", model, rules=["g, a, b, c"])))
    assert (problem.file, problem.line) == (str(model), line_of(model, "this is not"))
    assert problem.entry_id == "app:t"


def test_a_model_without_matchers_names_the_file(tmp_path: Path) -> None:
    model = tmp_path / "nomatch.conf"
    model.write_text(RBAC.read_text().split("[matchers]")[0])
    problem = only_problem(tmp_path, app(casbin("t", model, rules=["g, a, b, c"])))
    assert problem.file == str(model) and problem.line == 1
    assert "matchers" in problem.message


@pytest.mark.parametrize(
    ("before", "after", "named"),
    [
        ("keyMatch(r.act", "noSuchFunction(r.act", "function noSuchFunction"),
        ("r.dom == p.dom", "r.dmo == p.dom", "r.dmo"),
        ("r.dom == p.dom", "r.dom == p.tenant", "p.tenant"),
        ("r.dom == p.dom", "r.dom === p.dom", "SyntaxError"),
    ],
)
def test_a_matcher_that_cannot_run_names_the_matcher_line(
    tmp_path: Path, before: str, after: str, named: str
) -> None:
    # rules that never reach the broken term: pycasbin alone would fail only once a
    # message gets past the short-circuit, i.e. at message time
    model = tmp_path / "badmatch.conf"
    model.write_text(RBAC.read_text().replace(before, after))
    problem = only_problem(tmp_path, app(casbin("t", model, rules=["g, a, b, c"])))
    assert (problem.file, problem.line) == (str(model), line_of(model, "m = "))
    assert problem.entry_id == "app:t"
    assert named in problem.message


def test_an_undefined_name_is_named_before_an_index_it_breaks(tmp_path: Path) -> None:
    model = tmp_path / "typo.conf"
    model.write_text(RBAC.read_text().replace("r.dom == p.dom", "r.dom == p.domx"))
    entry = casbin("t", model, rules=["g, a, b, c"], index=["message.tenant"])
    problem = only_problem(tmp_path, app(entry))
    assert "p.domx" in problem.message and "index" not in problem.message


def test_an_index_under_a_first_match_effect_is_a_load_error(tmp_path: Path) -> None:
    """The index keeps rules in sets, not in file order: under ``priority(p.eft)`` the
    first match, and so allow or deny, would change from run to run (with the hash
    seed); refused, naming the effect's line."""
    model = tmp_path / "first_match.conf"
    text = RBAC.read_text()
    effect = next(line for line in text.splitlines() if line.startswith("e = "))
    model.write_text(text.replace(effect, "e = priority(p.eft) || deny"))
    entry = casbin("t", model, rules=["g, a, b, c"], index=["message.tenant"])
    problem = only_problem(tmp_path, app(entry))
    assert (problem.file, problem.line) == (str(model), line_of(model, "e = "))
    assert "first-match effect" in problem.message and problem.entry_id == "app:t"


def test_a_policy_line_with_the_wrong_field_count_names_file_and_line(tmp_path: Path) -> None:
    csv = tmp_path / "tenants.csv"
    csv.write_text(
        "# header comment\n"
        "p, worker, tenant-a, app:*, queue.consume, allow\n"
        "\n"
        "p, worker, tenant-b, app:jobs, queue.consume\n"
        "g, worker-a, worker, tenant-a\n"
        "g, worker-b, worker\n"
        "x, what, is, this\n"
    )
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, app(casbin("t", RBAC, policy=f"file://{csv}")))
    located = [(p.file, p.line, p.entry_id) for p in caught.value.problems]
    assert located == [(str(csv), 4, "app:t"), (str(csv), 6, "app:t"), (str(csv), 7, "app:t")]
    messages = [p.message for p in caught.value.problems]
    assert "4 fields" in messages[0] and "has 5" in messages[0]
    assert "2 fields" in messages[1] and "has 3" in messages[1]
    assert "'x'" in messages[2]


def test_inline_rules_are_checked_line_by_line(tmp_path: Path) -> None:
    rules = ["p, worker, tenant-a, app:*, queue.consume, allow", "p, too, few"]
    problem = only_problem(tmp_path, app(casbin("t", RBAC, rules=rules)))
    assert problem.line == 2 and problem.file is not None and "app:t" in problem.file


def test_a_request_mapping_of_the_wrong_size_names_the_request_line(tmp_path: Path) -> None:
    entry = casbin("t", RBAC, rules=["g, a, b, c"])
    entry["request"] = ["actor.id", "resource", "action"]
    problem = only_problem(tmp_path, app(entry))
    assert (problem.file, problem.line) == (str(RBAC), line_of(RBAC, "r = sub"))
    assert (problem.entry_id, problem.field) == ("app:t", "request")
    assert "4 tokens" in problem.message and "maps 3" in problem.message


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"model": "file:///no/such/model.conf"}, "does not exist"),
        ({"model": "rbac.conf"}, "file://"),
        ({"request": ["actor.id", "message.tenant", "resource", "actor.name"]}, "unknown field"),
        ({"index": ["actor.meta.tenant"]}, "not in 'request'"),
        ({"rules": [], "policy": None}, "rules"),
    ],
)
def test_casbin_entry_fields_are_validated(
    tmp_path: Path, change: dict[str, Any], error: str
) -> None:
    entry = casbin("t", RBAC, rules=["g, a, b, c"])
    entry.update(change)
    entry = {k: v for k, v in entry.items() if v is not None}
    problem = only_problem(tmp_path, app(entry))
    assert problem.entry_id == "app:t"
    assert error in problem.message


def test_an_index_the_matcher_does_not_compare_by_equality_is_refused(tmp_path: Path) -> None:
    # rules on resources are patterns: filtering them by the exact resource would hide
    # "p, worker, tenant-a, app:*, ..., deny" and turn that deny into an allow
    entry = casbin("t", RBAC, rules=["g, a, b, c"], index=["resource"])
    problem = only_problem(tmp_path, app(entry))
    assert (problem.file, problem.line) == (str(RBAC), line_of(RBAC, "m = "))
    assert (problem.entry_id, problem.field) == ("app:t", "index")


def test_broken_policies_never_reach_message_time(tmp_path: Path) -> None:
    """A good file loads; the same entry with a broken file fails at load, not later."""
    csv = tmp_path / "p.csv"
    csv.write_text("p, worker, tenant-a, app:*, queue.consume, allow\ng, w, worker, tenant-a\n")
    entries = app(casbin("t", RBAC, policy=f"file://{csv}"), policies=("t",))
    assert isinstance(load(tmp_path, entries), Runtime)
    csv.write_text("p, worker, tenant-a\n")
    with pytest.raises(ConfigError):
        load(tmp_path, entries)


def test_unchecked_consumers_are_warned_about_when_others_are_checked(tmp_path: Path) -> None:
    from wippy_queue.security.kinds import warn_unchecked

    entries = app(rule("r", "queue.consume", "*"), policies=("r",))
    entries.append(consumer("open", "jobs", "record_async", secured=False))
    registry = load(tmp_path, entries).registry
    warnings = list(warn_unchecked(registry))
    assert [(w.entry_id, w.severity) for w in warnings] == [("app:open", "warning")]
    assert "UNCHECKED" in warnings[0].message


def test_casbin_files_are_read_once_at_start_and_again_when_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    real = CasbinUnit.load

    def counting(unit: CasbinUnit) -> Any:
        loads.append(unit.entry_id)
        return real(unit)

    monkeypatch.setattr(CasbinUnit, "load", counting)
    rules = tmp_path / "rules.csv"
    rules.write_text("p, w, tenant-a, app:jobs, queue.consume, allow\n")
    entries = app(casbin("rbac", RBAC, policy=f"file://{rules}"), policies=("app:rbac",))
    load(tmp_path / "one", entries)
    assert loads == ["app:rbac"]  # the load check's unit is the one the runtime runs

    loaded = load_entries([tmp_path / "one"])
    rules.write_text("p, w, tenant-a, app:jobs, queue.consume, deny\n")  # changed meanwhile
    runtime = Runtime(loaded)
    assert loads == ["app:rbac", "app:rbac", "app:rbac"]  # checked, then loaded afresh
    request = Request("queue.consume", "app:jobs", Actor("w", {}), {}, "svc", "tenant-a")
    decision = runtime.security.scopes["app:worker"].check(request)
    assert not decision.allowed and decision.rule[-1] == "deny"  # the file as it is now
