"""Lint: rules that can never match what the runtime asks, and actions it never asks.

A rule's constraints are the comparisons every match must pass: a Wippy rule's
action and resource patterns (``keyMatch``), or the analysable terms of a Casbin
matcher, each tied through the entry's ``request:`` mapping to a request path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from wippy_queue.errors import Problem
from wippy_queue.policytools.hints import did_you_mean, display_path, listing
from wippy_queue.policytools.model import MATCH_FUNCTIONS, ModelShape, RoleTerm
from wippy_queue.policytools.query import ASKED
from wippy_queue.policytools.rules import PolicyRules, Rule
from wippy_queue.policytools.world import World
from wippy_queue.security.models import CasbinPolicyConfig


@dataclass(frozen=True, slots=True)
class Constraint:
    """The rule's ``value`` must match the request's ``path`` under ``fn``."""

    path: str
    fn: str
    value: str
    #: how messages name the rule's field: ``action``, ``p.act``
    field: str

    def matches(self, candidate: str) -> bool | None:
        """None when the function cannot be evaluated (e.g. a broken regex)."""
        try:
            return bool(MATCH_FUNCTIONS[self.fn](candidate, self.value))
        except Exception:
            return None


def finding(rule: Rule, message: str, severity: str = "error") -> Problem:
    return Problem(message, display_path(rule.file), rule.line, rule.policy, severity=severity)


def constraints_of(written: PolicyRules, rule: Rule) -> list[Constraint]:
    if written.shape is None:  # a Wippy rule: act, res, cond, eft, pol
        return [
            Constraint("action", "keyMatch", rule.values[0], "action"),
            Constraint("resource", "keyMatch", rule.values[1], "resource"),
        ]
    config = written.entry.config
    assert isinstance(config, CasbinPolicyConfig)
    shape = written.shape
    if rule.ptype != "p" or len(shape.request) != len(config.request):
        return []
    found = []
    for term in shape.terms:
        value = shape.value(rule.values, term.field)
        if term.request in shape.request and value is not None:
            path = config.request[shape.request.index(term.request)]
            found.append(Constraint(path, term.fn, value, f"p.{term.field}"))
    return found


def check_rule(world: World, written: PolicyRules, rule: Rule) -> Iterator[Problem]:
    """Warnings about the rule's patterns, then the first reason it can never match."""
    constraints = constraints_of(written, rule)
    yield from _stars(rule, constraints)
    reason = next(_dead(world, written, rule, constraints), None)
    if reason is not None:
        yield finding(rule, reason)


def _dead(
    world: World, written: PolicyRules, rule: Rule, constraints: list[Constraint]
) -> Iterator[str]:
    candidates = set(ASKED)
    for constraint in (c for c in constraints if c.path == "action"):
        candidates &= {a for a in ASKED if constraint.matches(a) is not False}
        if not candidates:
            yield _never_asked(constraint)
            return
    problem = _resource_problem(world, constraints, candidates)
    if problem is not None:
        yield problem
    for constraint in constraints:
        known = world.values(constraint.path)
        if constraint.path in ("action", "resource") or known is None:
            continue
        values, origin = known
        if not any(constraint.matches(v) is not False for v in values):
            yield (
                f"never matches: {constraint.field} is {constraint.value!r}, but "
                f"{constraint.path} is only ever one of {listing(values)} ({origin})"
                + did_you_mean(constraint.value, values)
            )
    if written.shape is not None:
        yield from _roles(world, written, rule)


def _never_asked(constraint: Constraint) -> str:
    asks = f"it asks {listing(ASKED)}"
    if constraint.fn == "==" or "*" not in constraint.value:
        return f"action {constraint.value!r} is never asked by the runtime ({asks})" + did_you_mean(
            constraint.value, ASKED
        )
    return f"action pattern {constraint.value!r} matches no action the runtime asks ({asks})"


def _resource_problem(world: World, constraints: list[Constraint], actions: set[str]) -> str | None:
    resources = [c for c in constraints if c.path == "resource"]
    if not resources:
        return None
    for _, resource in (p for p in world.pairs() if p[0] in actions):
        if all(c.matches(resource) is not False for c in resources):
            return None
    value = resources[0].value
    if actions <= {"queue.publish"}:
        return (
            f"never matches: queue.publish is asked on the resource '' (the queue itself is "
            f"checked by queue.publish.queue), so resource {value!r} never matches; "
            "write '*' or ''"
        )
    return (
        f"never matches: resource {value!r} names no queue (queues: {listing(world.queues)})"
        + did_you_mean(value, world.queues)
    )


def _stars(rule: Rule, constraints: list[Constraint]) -> Iterator[Problem]:
    for c in constraints:
        star = c.value.find("*")
        if c.fn == "keyMatch" and 0 <= star < len(c.value) - 1:
            yield finding(
                rule,
                f"{c.field} pattern {c.value!r} has '*' before its end: keyMatch ignores "
                f"everything after the first '*', so it matches all of {c.value[: star + 1]!r}",
                "warning",
            )


def _roles(world: World, written: PolicyRules, rule: Rule) -> Iterator[str]:
    shape = written.shape
    assert shape is not None
    config = written.entry.config
    assert isinstance(config, CasbinPolicyConfig)
    for term in shape.role_terms:
        role = shape.value(rule.values, term.field)
        if role is None or term.request not in shape.request:
            continue
        path = config.request[shape.request.index(term.request)]
        if path not in ("actor.id", "message.publisher") or not world.actor_ids:
            continue
        domain = shape.domain_of(term, rule.values)
        if role in world.actor_ids or _granted(written, term, role, domain):
            continue
        where = f" in domain {domain!r}" if domain is not None else ""
        roles = {g.values[1] for g in written.grants if g.ptype == term.ptype}
        yield (
            f"never matches: role {role!r} is never granted: no {term.ptype} line gives it"
            f"{where}, and no consumer's actor is called {role!r}" + did_you_mean(role, roles)
        )


def _granted(written: PolicyRules, term: RoleTerm, role: str, domain: str | None) -> bool:
    for grant in written.grants:
        if grant.ptype != term.ptype or grant.values[1] != role:
            continue
        if domain is None or len(grant.values) < 3 or grant.values[2] == domain:
            return True
    return False


def check_grants(world: World, written: PolicyRules) -> Iterator[Problem]:
    """Warn about a role granted to a name that is no actor, role or rule subject."""
    if not world.actor_ids or written.shape is None:
        return
    roles = {g.values[1] for g in written.grants}
    subjects = _subjects(written.shape, written.checks)
    for grant in written.grants:
        user = grant.values[0]
        if user in world.actor_ids or user in roles or user in subjects:
            continue
        yield finding(
            grant,
            f"grants {grant.values[1]!r} to {user!r}, but no consumer runs as an actor called "
            f"{user!r} (actors: {listing(world.actor_ids)})" + did_you_mean(user, world.actor_ids),
            "warning",
        )


def _subjects(shape: ModelShape, rules: list[Rule]) -> set[str]:
    fields = {t.field for t in shape.role_terms}
    return {v for r in rules for f in fields if (v := shape.value(r.values, f)) is not None}
