"""Why a request is allowed or denied: the decision, every matching rule, and the decider.

The decision comes from the real path (``query.ask``). Each rule of the scope's
policies is then evaluated on its own (``RuleJudge``), so every rule that matches
is listed, not only the first one Casbin reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wippy_queue.identity import Actor
from wippy_queue.policytools.query import Answer, Query, ask
from wippy_queue.policytools.rules import PolicyRules, Rule, RuleJudge, find_rule, rules_of
from wippy_queue.security.guard import STRICT_DENY, UNCHECKED
from wippy_queue.security.manager import Security


@dataclass(frozen=True, slots=True)
class Match:
    rule: Rule
    #: ``allow``, ``deny``, or ``error`` (evaluating the rule raised; the scope denies then)
    effect: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Explanation:
    answer: Answer
    policies: tuple[str, ...]
    matches: tuple[Match, ...]
    decided: Rule | None

    def lines(self) -> list[str]:
        decision = self.answer.decision
        out = [f"decision: {decision.describe()}", f"request:  {_request(self.answer)}"]
        if self.answer.scope is None:
            out.append(f"decided by: {_unchecked(self.answer)}")
            return out
        out.append(f"policies: {', '.join(self.policies) or 'none'}")
        if not self.matches:
            out.append("matched rules: none")
        else:
            out.append(f"matched rules ({len(self.matches)}):")
            for match in self.matches:
                mark = "=>" if match.rule is self.decided else "  "
                rule = match.rule
                extra = f": {match.error}" if match.error else ""
                out.append(
                    f"  {mark} {match.effect:5}  {rule.policy}  {rule.where}  {rule.text}{extra}"
                )
        out.append(f"decided by: {self._decider()}")
        return out

    def _decider(self) -> str:
        decision = self.answer.decision
        if decision.reason == "no_allow":
            return "no rule allows it (no allow is a deny)"
        if decision.reason == "error":
            return f"an error while deciding (an error is a deny): {decision.error}"
        if self.decided is None:
            return f"{decision.policy} rule [{', '.join(decision.rule)}]"
        if decision.allowed:
            return f"the allow rule at {self.decided.where} (no rule denies it)"
        return f"the deny rule at {self.decided.where} (deny overrides allow)"


def explain(security: Security, query: Query) -> Explanation:
    """Decide ``query`` and evaluate every rule of its scope on its own."""
    answer = ask(security, query)
    if answer.scope is None:
        return Explanation(answer, (), (), None)
    policies = answer.scope.policies
    written = [rules_of(security.registry.get(pid)) for pid in policies]
    matches = [m for entry_rules in written for m in _matches(entry_rules, answer)]
    decision = answer.decision
    decided = find_rule(written, decision.policy, decision.rule) if decision.policy else None
    return Explanation(answer, policies, tuple(matches), decided)


def _matches(entry_rules: PolicyRules, answer: Answer) -> list[Match]:
    judge = RuleJudge(entry_rules)
    matches = []
    for rule in entry_rules.checks:
        try:
            verdict = judge.verdict(rule, answer.request)
        except Exception as err:  # reported, as the scope would deny on it
            matches.append(Match(rule, "error", f"{type(err).__name__}: {err}"))
            continue
        if verdict.effect is not None:
            matches.append(Match(rule, verdict.effect))
    return matches


def _actor(actor: Actor | None) -> str:
    if actor is None:
        return "no actor"
    return f"actor {actor.id}" + (f" {_mapping(actor.meta)}" if actor.meta else "")


def _mapping(values: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in values.items()) + "}"


def _request(answer: Answer) -> str:
    request, query = answer.request, answer.query
    who = _actor(request.actor)
    if query.consumer:
        who = f"consumer {query.consumer} ({who})"
    text = f"{request.action} on {request.resource!r} by {who}"
    if request.publisher is not None:
        tenant = f" (tenant {request.tenant})" if request.tenant is not None else ""
        text += f"; publisher {request.publisher}{tenant}"
    if request.headers:
        text += f"; headers {_mapping(request.headers)}"
    return text


def _unchecked(answer: Answer) -> str:
    who = answer.query.consumer or "this caller"
    if answer.decision is STRICT_DENY:
        return f"strict mode: {who} has no security block or no actor, so it is denied"
    if answer.decision is UNCHECKED:
        return (
            f"no policy: {who} has no lifecycle.security block, so it runs unchecked "
            "(strict mode would deny it)"
        )
    return answer.decision.describe()
