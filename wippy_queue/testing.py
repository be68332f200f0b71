"""Helpers for policy authors' own test suites (pytest or any other runner).

Keep policy test cases next to your tests and run them through the same decision
path as ``wippy-queue policy test``::

    from wippy_queue.testing import assert_policy_cases

    def test_tenants_are_isolated():
        assert_policy_cases(["app/"], "app/cases.yaml")

    def test_svc_b_cannot_reach_the_private_queue():
        assert_policy_cases(
            ["app/"],
            [
                {
                    "consumer": "app.mt:publisher_b",
                    "action": "queue.publish.queue",
                    "resource": "app.mt:a_private",
                    "expect": "deny",
                }
            ],
        )

Cases have the CASES.yaml shape (see ``wippy_queue.policytools.cases``).
Entry files or cases that cannot be used raise ``ConfigError`` / ``CaseFileError``
with every problem listed; a case that fails is an ``AssertionError`` naming it,
its expectation, the decision and the rule that made it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from wippy_queue.policytools.cases import CaseSource, read_cases
from wippy_queue.policytools.query import load_security
from wippy_queue.policytools.runner import CaseResult, run_cases, summary

__all__ = ["CaseResult", "assert_policy_cases", "check_policy_cases"]


def check_policy_cases(
    paths: Iterable[str | os.PathLike[str]],
    cases: CaseSource,
    *,
    strict: bool | None = None,
) -> list[CaseResult]:
    """Decide each case against the entry files at ``paths``; one result per case.

    ``cases`` is a CASES.yaml path or a list of case mappings. ``strict`` overrides
    the registry's ``security.settings`` (as ``wippy-queue run --strict`` does).
    Each result has ``passed``, ``decision`` (allowed, reason, policy, rule), the
    written ``rule`` that decided (file and line), and ``describe()``.
    """
    security = load_security(paths, strict=strict)
    found, problems = read_cases(cases)
    return run_cases(security, found, problems)


def assert_policy_cases(
    paths: Iterable[str | os.PathLike[str]],
    cases: CaseSource,
    *,
    strict: bool | None = None,
) -> list[CaseResult]:
    """Like ``check_policy_cases``, raising AssertionError that lists every failing case."""
    results = check_policy_cases(paths, cases, strict=strict)
    failed = [r for r in results if not r.passed]
    if failed:
        lines = "\n".join(r.describe() for r in failed)
        raise AssertionError(f"{summary(results)}:\n{lines}")
    return results
