"""``wippy-queue policy test|explain|lint`` and the pytest helper (wippy_queue.testing)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from wippy_queue.cli import main
from wippy_queue.errors import ConfigError
from wippy_queue.loading import load
from wippy_queue.policytools.cases import CaseFileError, read_cases
from wippy_queue.policytools.explain import explain
from wippy_queue.policytools.lint import lint
from wippy_queue.policytools.overlap import pattern_covers
from wippy_queue.security.manager import Security
from wippy_queue.testing import assert_policy_cases, check_policy_cases

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "multi_tenant"
EXAMPLE_CASES = EXAMPLE / "cases.yaml"
DATA = Path(__file__).resolve().parents[1] / "data" / "policy_tools"
LINT_APP = DATA / "lint_app"

WriteFile = Callable[[str, str], Path]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- policy test ---------------------------------------------------------------------------


def test_example_cases_pass(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "policy", "test", EXAMPLE, "--cases", EXAMPLE_CASES)
    lines = out.splitlines()
    assert code == 0
    assert lines[-1] == "all 14 cases passed"
    assert all(line.startswith("PASS  ") for line in lines[:-1])
    assert any("tenants.csv:3" in line and "allow (policy)" in line for line in lines)


def test_example_folder_still_validates_with_the_case_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run_cli(capsys, "validate", EXAMPLE)
    assert code == 0
    assert out.startswith("ok: 16 entries")


def test_a_failing_case_exits_1_and_says_what_was_decided(
    capsys: pytest.CaptureFixture[str], write_file: WriteFile
) -> None:
    cases = write_file(
        "cases.yaml",
        """
        cases:
          - name: cross-tenant (wrongly expected)
            consumer: app.mt:worker_a
            action: queue.consume
            publisher: svc-b
            expect: allow
          - name: own tenant
            consumer: app.mt:worker_a
            action: queue.consume
            publisher: svc-a
            expect: allow
        """,
    )
    code, out, _ = run_cli(capsys, "policy", "test", EXAMPLE, "--cases", cases)
    assert code == 1
    assert "FAIL  cross-tenant (wrongly expected): expected allow, got deny (no_allow)" in out
    assert "PASS  own tenant: allow (policy) by app.mt:tenants" in out
    assert out.splitlines()[-1] == "1 of 2 cases FAILED"


def test_bad_case_file_lists_every_problem_with_file_line_and_case(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = DATA / "bad_cases.yaml"
    code, out, err = run_cli(capsys, "policy", "test", EXAMPLE, "--cases", bad)
    assert code == 2
    assert out == ""
    assert "4 problems in policy test cases" in err
    assert (
        f"{bad}:5: case 1 'a typo in the action': action: the runtime never asks "
        "'queue.consme'" in err
    )
    assert "did you mean 'queue.consume'?" in err
    assert f"{bad}:8: case 2 'no expectation': expect: required field is missing" in err
    assert f"{bad}:16: case 3 'a resource that is no queue': resource:" in err
    assert "did you mean 'app.mt:a_private'?" in err
    assert f"{bad}:24: case 4 'both a consumer and an actor': colour: unknown field" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cases:\n  - name: x\n    action: [\n", ":4: malformed YAML"),
        ("cases: []\n", ":1: no cases"),
        ("cases:\n  - just a string\n", "case 1: a case is a mapping"),
        ("tests:\n  - {}\n", ":1: unknown key 'tests'"),
    ],
)
def test_malformed_case_files(
    capsys: pytest.CaptureFixture[str], write_file: WriteFile, text: str, message: str
) -> None:
    path = write_file("cases.yaml", text)
    code, _, err = run_cli(capsys, "policy", "test", EXAMPLE, "--cases", path)
    assert code == 2
    assert f"{path}{message}" in err or message in err
    assert str(path) in err


def test_missing_case_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "policy", "test", EXAMPLE, "--cases", tmp_path / "no.yaml")
    assert code == 2
    assert "no.yaml: no such case file" in err


@pytest.mark.parametrize(
    ("case", "field", "message"),
    [
        (
            {"consumer": "app.mt:worker_a", "action": "queue.consume", "resource": "app.mt:dead"},
            "resource",
            "consumer app.mt:worker_a consumes app.mt:jobs; the runtime never asks it",
        ),
        (
            {
                "consumer": "app.mt:publisher_a",
                "action": "queue.publish",
                "resource": "app.mt:jobs",
            },
            "resource",
            "the runtime asks queue.publish on the resource ''",
        ),
        (
            {"consumer": "app.mt:publisher_a", "action": "queue.publish", "publisher": "svc-b"},
            "publisher",
            "a publish check always carries the publishing actor",
        ),
        (
            {"consumer": "app.mt:worker_a", "action": "queue.consume", "publisher_tenant": "t"},
            "publisher_tenant",
            "a publisher tenant without a publisher",
        ),
        (
            {"actor": "svc-a", "action": "queue.publish"},
            "policies",
            "name a 'consumer', or the 'policies' and/or 'groups'",
        ),
        (
            {"actor": "svc-a", "groups": ["admins"], "action": "queue.publish"},
            "groups",
            "no policy declares group 'admins'",
        ),
        (
            {"consumer": "app.mt:worker", "action": "queue.consume"},
            "consumer",
            "no consumer 'app.mt:worker'",
        ),
        (
            {"actor": "svc-a", "policies": ["tenants"], "action": "queue.publish"},
            "policies",
            "did you mean 'app.mt:tenants'?",
        ),
    ],
)
def test_cases_the_runtime_never_asks_are_rejected(
    case: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(CaseFileError) as caught:
        check_policy_cases([EXAMPLE], [{**case, "expect": "deny"}])
    [problem] = caught.value.problems
    assert problem.field == field
    assert message in problem.message
    assert problem.entry_id == "case 1 'case 1'"


OPEN_APP = """
namespace: app
entries:
  - {name: memory, kind: queue.driver.memory}
  - {name: jobs, kind: queue.queue, driver: memory}
  - {name: handle, kind: function.python, source: "json:loads"}
  - {name: open, kind: queue.consumer, queue: jobs, func: handle}
"""


def test_unchecked_consumer_is_allowed_and_strict_mode_denies_it(write_file: WriteFile) -> None:
    app = write_file("app/_index.yaml", OPEN_APP)
    case = [{"consumer": "app:open", "action": "queue.consume", "expect": "allow"}]
    [result] = assert_policy_cases([app], case)
    assert result.decision.reason == "unchecked"
    [strict] = check_policy_cases([app], case, strict=True)
    assert not strict.passed
    assert strict.decision.reason == "strict_mode"


# -- the pytest helper ---------------------------------------------------------------------


def test_helper_runs_a_case_file_and_reports_the_deciding_rule() -> None:
    results = assert_policy_cases([EXAMPLE], EXAMPLE_CASES)
    assert len(results) == 14
    first = results[0]
    assert first.passed
    assert first.decision.policy == "app.mt:tenants"
    assert first.rule is not None
    assert (Path(first.rule.file).name, first.rule.line) == ("tenants.csv", 3)


def test_helper_assertion_lists_every_failing_case() -> None:
    cases = [
        {"name": "ok", "consumer": "app.mt:worker_a", "publisher": "svc-a",
         "action": "queue.consume", "expect": "allow"},
        {"name": "wrong one", "consumer": "app.mt:worker_a", "publisher": "svc-b",
         "action": "queue.consume", "expect": "allow"},
        {"name": "wrong two", "consumer": "app.mt:publisher_b", "action": "queue.publish.queue",
         "resource": "app.mt:a_private", "expect": "allow"},
    ]  # fmt: skip
    with pytest.raises(AssertionError) as caught:
        assert_policy_cases([EXAMPLE], cases)
    text = str(caught.value)
    assert text.startswith("2 of 3 cases FAILED:")
    assert "FAIL  wrong one: expected allow, got deny (no_allow)" in text
    assert "FAIL  wrong two: expected allow" in text
    assert "ok" not in text.replace("no_allow", "")


def test_helper_raises_clear_errors_for_bad_input(tmp_path: Path) -> None:
    with pytest.raises(CaseFileError, match="expect: Input should be 'allow' or 'deny'"):
        check_policy_cases([EXAMPLE], [{"consumer": "app.mt:worker_a",
                                        "action": "queue.consume", "expect": "yes"}])  # fmt: skip
    with pytest.raises(ConfigError, match="no such file"):
        check_policy_cases([tmp_path / "missing"], EXAMPLE_CASES)


def test_read_cases_accepts_a_bare_list(write_file: WriteFile) -> None:
    path = write_file(
        "cases.yaml",
        """
        - {consumer: app.mt:worker_a, action: queue.consume, expect: deny}
        - {actor: {id: svc-a, meta: {tenant: tenant-a}}, policies: app.mt:tenants,
           action: queue.publish, expect: allow}
        """,
    )
    cases, problems = read_cases(path)
    assert problems == []
    assert [c.line for c in cases] == [1, 2]
    assert cases[1].query.actor is not None and cases[1].query.actor.tenant == "tenant-a"
    assert cases[1].query.policies == ("app.mt:tenants",)


# -- policy explain ------------------------------------------------------------------------


def test_explain_lists_every_matching_rule_and_marks_the_deny_that_decided(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run_cli(
        capsys, "policy", "explain", LINT_APP, "--consumer", "app.lint:worker_a",
        "--action", "queue.consume", "--publisher", "worker-a",
    )  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == (
        "decision: deny (policy) by app.lint:tenants rule "
        "[worker, tenant-a, app.lint:jobs, queue.consume, deny]"
    )
    assert "publisher worker-a (tenant tenant-a)" in lines[1]
    assert "matched rules (5):" in lines
    matched = [line for line in lines if "tenants.csv:" in line and "  p, " in line]
    assert [line.split("tenants.csv:")[1].split()[0] for line in matched] == [
        "1", "2", "3", "4", "8",
    ]  # fmt: skip
    decider = [line for line in matched if line.lstrip().startswith("=>")]
    assert len(decider) == 1 and "tenants.csv:2" in decider[0] and " deny " in decider[0]
    assert lines[-1].startswith("decided by: the deny rule at ")
    assert lines[-1].endswith("tenants.csv:2 (deny overrides allow)")


def test_explain_an_allow_by_actor_and_policies(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys, "policy", "explain", EXAMPLE, "--actor", "svc-a", "--meta", "tenant=tenant-a",
        "--policy", "app.mt:tenants", "--action", "queue.publish.queue",
        "--resource", "app.mt:a_private", "--header", "k=v",
    )  # fmt: skip
    assert code == 0
    assert "by actor svc-a {tenant: tenant-a}; publisher svc-a (tenant tenant-a)" in out
    assert "headers {k: v}" in out
    assert "=> allow  app.mt:tenants" in out
    assert "(no rule denies it)" in out


def test_explain_when_nothing_matches(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys, "policy", "explain", EXAMPLE, "--consumer", "app.mt:worker_b",
        "--action", "queue.consume", "--publisher", "svc-a",
    )  # fmt: skip
    assert code == 0
    assert "matched rules: none" in out
    assert "decided by: no rule allows it (no allow is a deny)" in out


def test_explain_an_unchecked_consumer(
    capsys: pytest.CaptureFixture[str], write_file: WriteFile
) -> None:
    app = write_file("app/_index.yaml", OPEN_APP)
    argv = ("policy", "explain", app, "--consumer", "app:open", "--action", "queue.consume")
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    assert out.splitlines()[0] == "decision: allow (unchecked)"
    assert "app:open has no lifecycle.security block, so it runs unchecked" in out
    code, out, _ = run_cli(capsys, *argv, "--strict")
    assert out.splitlines()[0].startswith("decision: deny (strict_mode)")
    assert "decided by: strict mode" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--consumer", "app.mt:worker"], "--consumer: no consumer 'app.mt:worker'"),
        (["--actor", "svc-a"], "--policy: name a 'consumer'"),
        (["--meta", "tenant=x", "--policy", "app.mt:tenants"], "--meta: --meta describes"),
        (
            ["--consumer", "app.mt:worker_a", "--actor", "x"],
            "give either 'consumer' or 'actor'",
        ),
        (  # a stamp is never read from headers: a result here would mislead
            ["--consumer", "app.mt:worker_a", "--header", "x_publisher=svc-a"],
            "--header: x_publisher: the runtime's provenance stamp",
        ),
    ],
)
def test_explain_bad_requests_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, "policy", "explain", EXAMPLE, *argv, "--action", "queue.consume")
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_explain_rejects_an_action_the_runtime_never_asks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["policy", "explain", str(EXAMPLE), "--consumer", "x:y", "--action", "queue.publsh"])
    assert caught.value.code == 2
    assert "invalid choice: 'queue.publsh'" in capsys.readouterr().err


def test_explain_agrees_with_the_decision_for_every_example_case() -> None:
    cases, problems = read_cases(EXAMPLE_CASES)
    assert problems == []
    security = Security(load([EXAMPLE]).registry)
    for case in cases:
        explanation = explain(security, case.query)
        decision = explanation.answer.decision
        effects = {m.effect for m in explanation.matches}
        if decision.allowed:
            assert effects == {"allow"}, case.name
            assert explanation.decided is not None
        else:
            assert "allow" not in effects or "deny" in effects, case.name


# -- policy lint ---------------------------------------------------------------------------


def test_lint_example_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "policy", "lint", EXAMPLE)
    assert code == 0
    assert out == "0 errors, 0 warnings\n"


LINT_FINDINGS = [
    # rules that can never match what the runtime asks
    ("_index.yaml:37: app.lint:no_such_queue: never matches: resource 'app.lint:job' names "
     "no queue", "did you mean 'app.lint:jobs'?"),
    ("_index.yaml:44: app.lint:publish_on_queue: never matches: queue.publish is asked on "
     "the resource ''", "write '*' or ''"),
    ("tenants.csv:5: app.lint:tenants: never matches: role 'admin' is never granted",
     "in domain 'tenant-a'"),
    ("tenants.csv:6: app.lint:tenants: never matches: p.dom is 'tenant-c', but "
     "message.tenant is only ever one of", "did you mean 'tenant-a'?"),
    # shadowed by a broader deny: in one entry, and across Wippy entries
    ("tenants.csv:3: app.lint:tenants: warning: this allow never takes effect: the deny rule "
     "at ", "tenants.csv:2"),
    ("_index.yaml:51: app.lint:reports_readers: warning: this allow never takes effect: the "
     "deny rule of app.lint:block_everything_on_reports", "(app.lint:reporter)"),
    # duplicates, '*' inside a pattern, a grant to no actor
    ("tenants.csv:4: app.lint:tenants: warning: duplicates the rule at ", "tenants.csv:1"),
    ("tenants.csv:8: app.lint:tenants: warning: p.obj pattern 'app.*:jobs' has '*' before "
     "its end", "matches all of 'app.*'"),
    ("tenants.csv:11: app.lint:tenants: warning: grants 'worker' to 'worker-aa', but no "
     "consumer runs as", "did you mean 'worker-a'?"),
]  # fmt: skip


def test_lint_reports_each_kind_of_finding(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "policy", "lint", LINT_APP)
    assert code == 1
    lines = out.splitlines()
    assert lines[-1] == "4 errors, 5 warnings"
    for start, end in LINT_FINDINGS:
        assert any(start in line and end in line for line in lines), (start, out)
    assert len(lines) == len(LINT_FINDINGS) + 1
    # conditions keep the broad deny 'no_reports' from shadowing anything
    assert "no_reports:" not in out
    # FILE:LINE first, so editors can jump to it
    assert all(line.split(":")[1].isdigit() for line in lines[:-1])


def test_lint_reports_broken_casbin_files_with_file_and_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run_cli(capsys, "policy", "lint", DATA / "lint_broken")
    assert code == 1
    assert "lint_broken/bad.conf:10: app.broken:bad_model: not a model line: 'matchers'" in out
    assert "lint_broken/short.csv:2: app.broken:short_rules: p rule has 4 fields" in out
    assert (
        "lint_broken/short.csv:3: app.broken:short_rules: rule type 'x' is not in the model" in out
    )


def test_lint_reports_entry_file_errors(
    capsys: pytest.CaptureFixture[str], write_file: WriteFile
) -> None:
    app = write_file("app/_index.yaml", "namespace: app\nentries:\n  - name: p\n    kind: [\n")
    code, out, _ = run_cli(capsys, "policy", "lint", app)
    assert code == 1
    assert "_index.yaml:5: malformed YAML: expected the node content" in out


def test_lint_warnings_alone_exit_0_and_inline_rules_have_lines(
    capsys: pytest.CaptureFixture[str], write_file: WriteFile
) -> None:
    write_file(
        "app/rbac.conf", (ROOT / "wippy_queue" / "policies" / "rbac_with_tenants.conf").read_text()
    )
    app = write_file(
        "app/_index.yaml",
        """
        namespace: app
        entries:
          - {name: memory, kind: queue.driver.memory}
          - {name: jobs, kind: queue.queue, driver: memory, dead_letter: {queue: dead}}
          - {name: handle, kind: function.python, source: "json:loads"}
          - name: roles
            kind: security.policy.casbin
            model: file://rbac.conf
            request: [actor.id, message.tenant, resource, action]
            rules:
              - p, worker, t1, app:jobs, queue.consume, allow
              - p, worker, t1, app:jobs, queue.consume, allow
              - g, w1, worker, t1
          - name: c
            kind: queue.consumer
            queue: jobs
            func: handle
            lifecycle:
              security:
                actor: {id: w1, meta: {tenant: t1}}
                policies: [roles]
          - {name: dead, kind: queue.queue, driver: memory}
        """,
    )
    code, out, _ = run_cli(capsys, "policy", "lint", app)
    assert code == 0
    assert "_index.yaml:12: app:roles: warning: duplicates the rule at " in out
    assert out.endswith("_index.yaml:11; drop one\n0 errors, 1 warning\n")


def test_lint_shadowing_across_entries_needs_the_deny_in_every_scope(
    write_file: WriteFile,
) -> None:
    app = write_file(
        "app/_index.yaml",
        """
        namespace: app
        entries:
          - {name: memory, kind: queue.driver.memory}
          - {name: jobs, kind: queue.queue, driver: memory}
          - {name: handle, kind: function.python, source: "json:loads"}
          - {name: allow_jobs, kind: security.policy,
             policy: {actions: queue.consume, resources: app:jobs, effect: allow}}
          - {name: deny_all, kind: security.policy,
             policy: {actions: "queue.*", resources: "*", effect: deny}}
          - {name: a, kind: queue.consumer, queue: jobs, func: handle,
             lifecycle: {security: {actor: {id: a}, policies: [allow_jobs, deny_all]}}}
          - {name: b, kind: queue.consumer, queue: jobs, func: handle,
             lifecycle: {security: {actor: {id: b}, policies: [allow_jobs]}}}
        """,
    )
    assert [f for f in lint([app]) if "never takes effect" in f.message] == []
    lines = app.read_text().replace("policies: [allow_jobs]}", "policies: [allow_jobs, deny_all]}")
    app.write_text(lines)
    [shadowed] = [f for f in lint([app]) if "never takes effect" in f.message]
    assert shadowed.entry_id == "app:allow_jobs"
    assert "(app:a, app:b)" in shadowed.message


def test_lint_without_policy_entries_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "policy", "lint", ROOT / "examples" / "seed")
    assert code == 0
    assert "warning: no security.policy or security.policy.casbin entries here" in out


@pytest.mark.parametrize(
    ("general", "specific", "covers"),
    [
        ("*", "anything", True),
        ("app.*", "app.mt:jobs", True),
        ("app.*", "app.mt:*", True),
        ("app.mt:*", "app.*", False),
        ("app.mt:jobs", "app.mt:jobs", True),
        ("app.mt:jobs", "app.mt:*", False),
        ("app.mt:jobs*", "app.mt:jobs", True),
    ],
)
def test_pattern_cover(general: str, specific: str, covers: bool) -> None:
    assert pattern_covers(general, specific) is covers


# -- end to end ----------------------------------------------------------------------------


def test_policy_test_end_to_end_in_a_subprocess() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "wippy_queue", "policy", "test", str(EXAMPLE),
         "--cases", str(EXAMPLE_CASES)],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "all 14 cases passed"
    assert "PASS  svc-b may not publish to tenant-a's private queue: deny (no_allow)" in (
        done.stdout
    )


def test_lint_of_a_policy_file_points_to_its_entries(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "policy", "lint", str(EXAMPLE / "tenants.csv"))
    assert code == 1
    assert "tenants.csv is not an entry file (.yaml)" in out + err
    assert "the folder that holds them" in out + err
