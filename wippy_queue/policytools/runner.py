"""Runs policy test cases through the real decision path and reports each one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from wippy_queue.errors import Problem
from wippy_queue.identity import Decision
from wippy_queue.policytools.cases import Case, CaseFileError
from wippy_queue.policytools.query import Answer, QueryError, ask
from wippy_queue.policytools.rules import PolicyRules, Rule, find_rule, rules_of
from wippy_queue.security.manager import Security


@dataclass(frozen=True, slots=True)
class CaseResult:
    """One case's outcome: the decision the runtime would make, and whether it was expected."""

    case: Case
    answer: Answer
    #: the written rule that decided, when a rule decided
    rule: Rule | None = None

    @property
    def decision(self) -> Decision:
        return self.answer.decision

    @property
    def got(self) -> str:
        return "allow" if self.decision.allowed else "deny"

    @property
    def passed(self) -> bool:
        return self.got == self.case.expect

    def describe(self) -> str:
        """``PASS name: allow (policy) by ... rule [...] at FILE:LINE`` (or FAIL, expected ...)."""
        verdict = self.decision.describe()
        if self.rule is not None:
            verdict += f" at {self.rule.where}"
        if self.passed:
            return f"PASS  {self.case.name}: {verdict}"
        return f"FAIL  {self.case.name}: expected {self.case.expect}, got {verdict}"


def run_cases(
    security: Security, cases: Sequence[Case], problems: Sequence[Problem] = ()
) -> list[CaseResult]:
    """Decide every case; CaseFileError lists ``problems`` (e.g. from reading the cases)
    and every case the runtime could never ask, all at once."""
    found = list(problems)
    answers: list[tuple[Case, Answer]] = []
    for case in cases:
        try:
            answers.append((case, ask(security, case.query)))
        except QueryError as err:
            found += [case.problem(message, field) for field, message in err.problems]
    if found:
        raise CaseFileError(sorted(found, key=lambda p: (p.file or "", p.line or 0)))
    written: dict[str, PolicyRules] = {}
    return [
        CaseResult(case, answer, _deciding_rule(security, answer, written))
        for case, answer in answers
    ]


def _deciding_rule(
    security: Security, answer: Answer, written: dict[str, PolicyRules]
) -> Rule | None:
    decision = answer.decision
    if answer.scope is None or decision.policy is None:
        return None
    if decision.policy not in written:
        written[decision.policy] = rules_of(security.registry.get(decision.policy))
    return find_rule([written[decision.policy]], decision.policy, decision.rule)


def summary(results: Sequence[CaseResult]) -> str:
    failed = sum(not r.passed for r in results)
    total = len(results)
    if failed:
        return f"{failed} of {total} case{'s' * (total != 1)} FAILED"
    return f"all {total} case{'s' * (total != 1)} passed"
