"""Policies a new user got wrong (issue 15): refused at load, at FILE:LINE, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write

from wippy_queue.cli import main

# main(["run", ...]) sets up the CLI's log handlers: each test gets the logging it had
pytestmark = pytest.mark.usefixtures("restore_logging")


ROOT = Path(__file__).resolve().parents[2]
RBAC = ROOT / "wippy_queue" / "policies" / "rbac_with_tenants.conf"


def line_of(path: Path, needle: str) -> int:
    return next(n for n, text in enumerate(path.read_text().splitlines(), 1) if needle in text)


def casbin_app(tmp_path: Path, model: Path, *, index: bool, rules: str = '["g, a, b, c"]') -> Path:
    index_line = "index: [message.tenant]" if index else ""
    return write(
        tmp_path / "app.yaml",
        f"""
        namespace: app
        entries:
          - name: tenants
            kind: security.policy.casbin
            model: file://{model}
            rules: {rules}
            request: [actor.id, message.tenant, resource, action]
            {index_line}
        """,
    )


# -- item 3: a matcher that does not parse, with index: -----------------------------------


@pytest.mark.parametrize("index", [False, True])
@pytest.mark.parametrize("command", ["validate", "lint"])
@pytest.mark.parametrize(
    "matcher",
    [
        "m = r.dom == = p.dom",
        "m = (r.dom == p.dom && g(r.sub, p.sub, r.dom)",
        "m = r.dom == p.dom ||| r.sub",
    ],
)
def test_a_matcher_syntax_error_is_one_line_at_the_matcher(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], matcher: str, command: str, index: bool
) -> None:
    model = tmp_path / "model.conf"
    text = "\n".join(
        matcher if line.startswith("m = ") else line for line in RBAC.read_text().splitlines()
    )
    model.write_text(text)
    app = casbin_app(tmp_path, model, index=index)
    argv = ["validate", str(app)] if command == "validate" else ["policy", "lint", str(app)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    (problem,) = [
        line for line in (captured.out + captured.err).splitlines() if "model.conf" in line
    ]
    assert problem.startswith(f"{model}:{line_of(model, 'm = ')}: app:tenants: model: ")
    assert "the matcher does not parse: SyntaxError" in problem


# -- item 15: typo'd actions and effects are refused at load ------------------------------

HANDLER = "def handle(body):\n    return True\n"


def native_app(tmp_path: Path, actions: str, resources: str = '"*"', effect: str = "allow") -> Path:
    write(tmp_path / "h.py", HANDLER)
    return write(
        tmp_path / "app.yaml",
        f"""
        namespace: app
        entries:
          - {{name: mem, kind: queue.driver.memory}}
          - {{name: jobs, kind: queue.queue, driver: mem}}
          - {{name: handle, kind: function.python, source: file://h.py, method: handle}}
          - name: rule
            kind: security.policy
            policy:
              actions: {actions}
              resources: {resources}
              effect: {effect}
          - name: worker
            kind: queue.consumer
            queue: jobs
            func: handle
            lifecycle:
              security: {{actor: {{id: w}}, policies: [rule]}}
        """,
    )


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_typod_native_action_fails_validate_and_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    app = native_app(tmp_path, "[queue.consume, queue.consme]")
    argv = [command, str(app)] + (["--timeout", "5"] if command == "run" else [])
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert (
        f"{app}:9: app:rule: policy.actions: action 'queue.consme' is never asked by the "
        "runtime (it asks queue.consume, queue.publish, queue.publish.queue), so this rule "
        "never takes effect; did you mean 'queue.consume'?"
    ) in err


@pytest.mark.parametrize("actions", ["job.*", "consume", "queue.consume.all"])
def test_a_native_action_pattern_that_matches_nothing_asked_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], actions: str
) -> None:
    assert main(["validate", str(native_app(tmp_path, actions))]) == 1
    assert f"action {actions!r} is never asked" in capsys.readouterr().err


@pytest.mark.parametrize("actions", ["'*'", "queue.*", "queue.publish*", "queue.publish.queue"])
def test_native_action_patterns_that_match_an_asked_action_load(
    tmp_path: Path, actions: str
) -> None:
    assert main(["validate", str(native_app(tmp_path, actions))]) == 0


def test_a_native_effect_typo_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(native_app(tmp_path, "queue.consume", effect="alow"))]) == 1
    assert "app:rule: policy.effect: Input should be 'allow' or 'deny'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("matcher", "rule", "message"),
    [
        # keyMatch (the shipped model) and == comparisons of the action, and the effect
        ("keyMatch(r.act, p.act)", "queue.consme, allow", "action 'queue.consme' is never asked"),
        ("r.act == p.act", "queue.*, allow", "action 'queue.*' is never asked"),
        ("p.act == r.act", "queue.publsh, allow", "did you mean 'queue.publish'?"),
        ("keyMatch(r.act, p.act)", "queue.consume, alow", "effect 'alow' is neither 'allow' nor"),
        ("keyMatch(r.act, p.act)", "queue.consume, Deny", "did you mean 'deny'?"),
    ],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_typo_in_a_casbin_rule_fails_validate_and_run_at_its_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    matcher: str,
    rule: str,
    message: str,
    command: str,
) -> None:
    model = tmp_path / "model.conf"
    model.write_text(RBAC.read_text().replace("keyMatch(r.act, p.act)", matcher))
    csv = write(
        tmp_path / "rules.csv",
        f"""
        p, worker, t1, app:jobs, queue.consume, allow
        p, worker, t1, app:jobs, {rule}
        g, w, worker, t1
        """,
    )
    app = write(
        tmp_path / "app.yaml",
        f"""
        namespace: app
        entries:
          - name: roles
            kind: security.policy.casbin
            model: file://{model}
            policy: file://{csv}
            request: [actor.id, message.tenant, resource, action]
        """,
    )
    argv = [command, str(app)] + (["--timeout", "5"] if command == "run" else [])
    assert main(argv) == 1
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "rules.csv" in line]
    assert line.startswith(f"{csv}:2: app:roles: ")
    assert message in line


def test_a_casbin_rule_whose_action_is_compared_by_no_term_is_not_judged(tmp_path: Path) -> None:
    # the matcher never compares the action: any value is as good as another
    model = tmp_path / "model.conf"
    model.write_text(RBAC.read_text().replace(" && keyMatch(r.act, p.act)", ""))
    app = casbin_app(tmp_path, model, index=False, rules='["p, w, t1, app:jobs, anything, allow"]')
    assert main(["validate", str(app)]) == 0


# -- item 11: the resource queue.publish is asked on ---------------------------------------


def test_a_native_rule_may_name_the_publish_resource_and_allows_that_publish(
    tmp_path: Path,
) -> None:
    from wippy_queue.identity import Actor
    from wippy_queue.policytools.query import Query, ask, load_security

    app = native_app(tmp_path, "queue.publish", resources='[""]')
    security = load_security([app], strict=None)
    query = Query("queue.publish", "", actor=Actor("w"), policies=("app:rule",))
    assert ask(security, query).decision.allowed


# -- item 7: shipped models by a stable name ----------------------------------------------


def test_the_multi_tenant_example_works_when_copied_elsewhere(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "my_app"
    shutil.copytree(ROOT / "examples" / "multi_tenant", copy)
    done = subprocess.run(
        [sys.executable, "-m", "wippy_queue", "run", str(copy), "--until-idle", "--timeout", "20",
         "--publish", "app.mt:outbox_a", '{"job": "a1"}'],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "job handled" in done.stderr and "job=a1" in done.stderr


def test_an_unknown_shipped_model_lists_the_shipped_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = write(
        tmp_path / "app.yaml",
        """
        namespace: app
        entries:
          - name: roles
            kind: security.policy.casbin
            model: builtin://rbac_with_tenant
            rules: ["g, a, b, c"]
            request: [actor.id, message.tenant, resource, action]
        """,
    )
    assert main(["validate", str(app)]) == 1
    assert (
        f"{app}:5: app:roles: model: no shipped model 'rbac_with_tenant'; shipped: "
        "abac_tenant, rbac_with_tenants, wippy_rules"
    ) in capsys.readouterr().err


def test_policy_models_prints_each_shipped_model_and_its_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["policy", "models"]) == 0
    out = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in out if line.startswith("builtin://")]
    assert names == [
        "builtin://abac_tenant",
        "builtin://rbac_with_tenants",
        "builtin://wippy_rules",
    ]
    for line in out[::2]:
        assert Path(line.split()[1]).is_file()
    assert out[3] == "    RBAC with tenants (Casbin domains)."


# -- item 12: explain shows a native rule as written, and the condition that decided ------


def explain_native(tmp_path: Path, capsys: pytest.CaptureFixture[str], prio: str) -> list[str]:
    write(tmp_path / "h.py", HANDLER)
    app = write(
        tmp_path / "app.yaml",
        """
        namespace: app
        entries:
          - {name: mem, kind: queue.driver.memory}
          - {name: jobs, kind: queue.queue, driver: mem}
          - {name: handle, kind: function.python, source: file://h.py, method: handle}
          - name: same_tenant
            kind: security.policy
            policy:
              actions: [queue.consume]
              resources: ["app:*"]
              effect: allow
              conditions:
                - {field: actor.meta.tenant, operator: eq, value_from: message.tenant}
                - {field: meta.prio, operator: eq, value: high}
          - name: w
            kind: queue.consumer
            queue: jobs
            func: handle
            lifecycle:
              security: {actor: {id: w, meta: {tenant: t1}}, policies: [same_tenant]}
        """,
    )
    argv = ["policy", "explain", str(app), "--consumer", "app:w", "--action", "queue.consume"]
    assert main([*argv, "--publisher", "w", "--header", f"prio={prio}"]) == 0
    return capsys.readouterr().out.splitlines()


RULE = (
    "allow queue.consume on 'app:*' if actor.meta.tenant eq message.tenant and meta.prio eq 'high'"
)


def test_explain_shows_an_allowing_native_rule_as_written_with_its_conditions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = explain_native(tmp_path, capsys, "high")
    assert lines[0] == f"decision: allow (policy) by app:same_tenant: {RULE}"
    assert lines[4].startswith("  => allow  app:same_tenant  ")
    assert lines[4].endswith(f":8  {RULE}")
    assert lines[5].strip() == "actor.meta.tenant eq message.tenant ('t1' eq 't1'): true"
    assert lines[6].strip() == "meta.prio eq 'high' ('high' eq 'high'): true"


def test_explain_names_the_condition_that_stopped_the_only_allow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = explain_native(tmp_path, capsys, "low")
    assert lines[0] == "decision: deny (no_allow)"
    assert "matched rules: none" in lines
    at = lines.index("stopped by a condition (1):")
    assert lines[at + 1].endswith(f":8  {RULE}")
    assert lines[at + 2].strip() == "meta.prio eq 'high' ('low' eq 'high'): false"
    assert lines[-1].endswith(
        ":8 is stopped by its condition meta.prio eq 'high' ('low' eq 'high')"
    )


# -- item 11: pycasbin's construction chatter under an application's INFO logging ---------


def test_loading_policies_logs_no_casbin_model_or_rules_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from wippy_queue import Runtime

    with caplog.at_level(logging.INFO):
        Runtime.load(ROOT / "examples" / "multi_tenant")
    assert [r.name for r in caplog.records if r.name.startswith("casbin")] == []
    # quieted while it builds only: the application's own casbin logging is left as it was
    assert not logging.getLogger("casbin.policy").disabled
