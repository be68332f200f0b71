"""Why a request is allowed or denied: the decision, every matching rule, and the decider.

The decision comes from the real path (``query.ask``). Each rule of the scope's
policies is then evaluated on its own (``RuleJudge``), so every rule that matches
is listed, not only the first one Casbin reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wippy_queue.identity import Actor, Request
from wippy_queue.policytools.query import Answer, Query, ask
from wippy_queue.policytools.rules import (
    PolicyRules,
    Rule,
    RuleJudge,
    condition_text,
    find_rule,
    rules_of,
)
from wippy_queue.security.conditions import UNARY, evaluate
from wippy_queue.security.guard import STRICT_DENY, UNCHECKED
from wippy_queue.security.manager import Security
from wippy_queue.security.models import Condition, WippyPolicyConfig


@dataclass(frozen=True, slots=True)
class Match:
    rule: Rule
    #: ``allow``, ``deny``, or ``error`` (evaluating the rule raised; the scope denies then)
    effect: str
    error: str | None = None
    #: a ``security.policy`` rule's conditions as evaluated on the request: all of
    #: them for a match, the false ones for a rule they stopped
    conditions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Explanation:
    answer: Answer
    policies: tuple[str, ...]
    matches: tuple[Match, ...]
    decided: Rule | None
    #: ``security.policy`` rules whose action and resource match, stopped by a condition
    stopped: tuple[Match, ...] = ()

    def lines(self) -> list[str]:
        out = [f"decision: {self._decision()}", f"request:  {_request(self.answer)}"]
        if self.answer.scope is None:
            out.append(f"decided by: {_unchecked(self.answer)}")
            return out
        out.append(f"policies: {', '.join(self.policies) or 'none'}")
        out += _listed("matched rules", self.matches, self.decided)
        if self.stopped:
            out += _listed("stopped by a condition", self.stopped, None)
        out.append(f"decided by: {self._decider()}")
        return out

    def _decision(self) -> str:
        decision = self.answer.decision
        if self.decided is None or self.decided.written is None:
            return decision.describe()
        verdict = "allow" if decision.allowed else "deny"
        return f"{verdict} ({decision.reason}) by {decision.policy}: {self.decided.written}"

    def _decider(self) -> str:
        decision = self.answer.decision
        stopped = [m for m in self.stopped if m.effect == "allow"]
        if decision.reason == "no_allow" and stopped:
            first = stopped[0]
            return (
                f"no rule allows it (no allow is a deny): the allow rule at {first.rule.where} "
                f"is stopped by its condition {first.conditions[0].removesuffix(': false')}"
            )
        if decision.reason == "no_allow":
            return "no rule allows it (no allow is a deny)"
        if decision.reason == "error":
            return f"an error while deciding (an error is a deny): {decision.error}"
        if self.decided is None:
            return f"{decision.policy} rule [{', '.join(decision.rule)}]"
        if decision.allowed:
            return f"the allow rule at {self.decided.where} (no rule denies it)"
        return f"the deny rule at {self.decided.where} (deny overrides allow)"


def _listed(title: str, matches: tuple[Match, ...], decided: Rule | None) -> list[str]:
    if not matches:
        return [f"{title}: none"]
    out = [f"{title} ({len(matches)}):"]
    for match in matches:
        mark = "=>" if match.rule is decided else "  "
        rule = match.rule
        extra = f": {match.error}" if match.error else ""
        out.append(f"  {mark} {match.effect:5}  {rule.policy}  {rule.where}  {rule.text}{extra}")
        out += [f"           {condition}" for condition in match.conditions]
    return out


def explain(security: Security, query: Query) -> Explanation:
    """Decide ``query`` and evaluate every rule of its scope on its own."""
    answer = ask(security, query)
    if answer.scope is None:
        return Explanation(answer, (), (), None)
    policies = answer.scope.policies
    written = [rules_of(security.registry.get(pid)) for pid in policies]
    matches: list[Match] = []
    stopped: list[Match] = []
    for entry_rules in written:
        _judge(entry_rules, answer.request, matches, stopped)
    decision = answer.decision
    decided = find_rule(written, decision.policy, decision.rule) if decision.policy else None
    return Explanation(answer, policies, tuple(matches), decided, tuple(stopped))


def _judge(
    entry_rules: PolicyRules, request: Request, matches: list[Match], stopped: list[Match]
) -> None:
    """Each rule on its own: those that match to ``matches``, and ``security.policy``
    rules that would match but for a condition to ``stopped``."""
    judge = RuleJudge(entry_rules)
    config = entry_rules.entry.config
    conditions = config.policy.conditions if isinstance(config, WippyPolicyConfig) else []
    for rule in entry_rules.checks:
        try:
            verdict = judge.verdict(rule, request)
            if verdict.effect is not None:
                seen = tuple(text for _, text in _evaluated(conditions, request))
                matches.append(Match(rule, verdict.effect, conditions=seen))
            elif conditions and (bare := judge.verdict(rule, request, conditions=False).effect):
                false = tuple(text for held, text in _evaluated(conditions, request) if not held)
                stopped.append(Match(rule, bare, conditions=false))
        except Exception as err:  # reported, as the scope would deny on it
            matches.append(Match(rule, "error", f"{type(err).__name__}: {err}"))


def _evaluated(conditions: list[Condition], request: Request) -> list[tuple[bool, str]]:
    """Each condition, whether it holds, and what it compared: ``meta.prio eq 'high'
    ('low' eq 'high'): false``."""
    out = []
    for c in conditions:
        held = evaluate(c.field, c.operator, request, c.value, c.value_from)
        left = request.value(c.field)
        if c.operator in UNARY:
            seen = f"{c.field} is {left!r}"
        else:
            right = request.value(c.value_from) if c.value_from else c.value
            seen = f"{left!r} {c.operator} {right!r}"
        out.append((held, f"{condition_text(c)} ({seen}): {'true' if held else 'false'}"))
    return out


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
