"""Every rule of a policy entry, with the file and line it was written on.

- ``security.policy``: one ``p`` rule per action x resource, exactly as
  ``WippyRulesUnit`` compiles it (``act, res, cond, eft, pol``), located at the
  entry's ``policy:`` line.
- ``security.policy.casbin``: the ``p``/``g`` lines of its policy file (at their
  lines) and of its inline ``rules:`` (one line each after ``rules:``).

``RuleJudge`` evaluates ONE rule on its own (with the entry's role grants), through
the same enforcer code as the runtime, so ``explain`` can list every rule that matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wippy_queue.files import read_text
from wippy_queue.identity import Request
from wippy_queue.policytools.hints import display_path
from wippy_queue.policytools.model import ModelShape, read_shape
from wippy_queue.registry.entry import Entry
from wippy_queue.security.conditions import UNARY
from wippy_queue.security.enforcer import Enforcer, PolicyLine, read_model, read_policy
from wippy_queue.security.models import CasbinPolicyConfig, Condition, WippyPolicyConfig
from wippy_queue.security.units import CasbinUnit, Verdict, WippyRulesUnit


@dataclass(frozen=True, slots=True)
class Rule:
    policy: str
    ptype: str
    values: tuple[str, ...]
    file: str
    line: int
    #: ``allow`` / ``deny`` for a policy rule; None for a role grant (``g`` line)
    effect: str | None
    #: how the user wrote it, when that is not a Casbin line (a ``security.policy``)
    written: str | None = None

    @property
    def where(self) -> str:
        return f"{display_path(self.file)}:{self.line}"

    @property
    def text(self) -> str:
        return self.written or ", ".join((self.ptype, *self.values))

    def as_line(self) -> PolicyLine:
        return PolicyLine(self.ptype, self.values, self.file, self.line)


@dataclass(frozen=True, slots=True)
class PolicyRules:
    """One policy entry's rules; ``shape`` and ``model_text`` for Casbin entries only."""

    entry: Entry
    rules: tuple[Rule, ...]
    shape: ModelShape | None = None
    model_text: str = ""

    @property
    def grants(self) -> list[Rule]:
        return [r for r in self.rules if r.effect is None]

    @property
    def checks(self) -> list[Rule]:
        return [r for r in self.rules if r.effect is not None]


def rules_of(entry: Entry) -> PolicyRules:
    """The rules of a ``security.policy`` or ``security.policy.casbin`` entry."""
    config = entry.config
    if isinstance(config, WippyPolicyConfig):
        return PolicyRules(entry, tuple(_wippy_rules(entry, config)))
    assert isinstance(config, CasbinPolicyConfig)
    return _casbin_rules(entry, config)


def _wippy_rules(entry: Entry, config: WippyPolicyConfig) -> list[Rule]:
    rule = config.policy
    cond = entry.id if rule.conditions else ""
    line = entry.location.line_of("policy")
    when = " if " + " and ".join(map(condition_text, rule.conditions)) if rule.conditions else ""
    return [
        Rule(
            entry.id,
            "p",
            (act, res, cond, rule.effect, entry.id),
            entry.location.file,
            line,
            rule.effect,
            f"{rule.effect} {act} on {res!r}{when}",
        )
        for act in rule.actions
        for res in rule.resources
    ]


def condition_text(condition: Condition) -> str:
    """A condition as written: ``actor.meta.tenant eq message.tenant``, ``meta.p eq 'x'``."""
    if condition.operator in UNARY:
        return f"{condition.field} {condition.operator}"
    operand = condition.value_from or repr(condition.value)
    return f"{condition.field} {condition.operator} {operand}"


def _casbin_rules(entry: Entry, config: CasbinPolicyConfig) -> PolicyRules:
    model_path = Path(config.model.removeprefix("file://"))
    model_text = read_text(model_path)
    info = read_model(model_text, str(model_path))
    shape = read_shape(model_text)
    lines: list[PolicyLine] = []
    if config.policy:
        policy_path = Path(config.policy.removeprefix("file://"))
        lines += read_policy(read_text(policy_path), str(policy_path), info)
    if config.rules:
        first = entry.location.line_of("rules") + 1
        lines += read_policy("\n".join(config.rules), entry.location.file, info, first)
    rules = tuple(
        Rule(entry.id, line.ptype, line.values, line.file, line.line, shape.effect_of(line))
        for line in lines
    )
    return PolicyRules(entry, rules, shape, model_text)


def find_rule(
    rules: Sequence[PolicyRules], policy: str | None, values: Sequence[str]
) -> Rule | None:
    """The first written rule of ``policy`` with these values (a Decision's rule)."""
    for entry_rules in rules:
        if entry_rules.entry.id != policy:
            continue
        for rule in entry_rules.checks:
            if rule.values == tuple(values):
                return rule
    return None


class RuleJudge:
    """Answers whether one rule, alone (with its entry's grants), matches a request.

    A Casbin rule is put in force, alone, in a private ``CasbinUnit`` of the entry,
    so the request is mapped onto the model exactly as the runtime maps it.
    """

    def __init__(self, entry_rules: PolicyRules) -> None:
        self.entry_rules = entry_rules
        config = entry_rules.entry.config
        self._unit: CasbinUnit | None = None
        if isinstance(config, CasbinPolicyConfig):
            self._unit = CasbinUnit(entry_rules.entry.id, config)

    def verdict(self, rule: Rule, request: Request, *, conditions: bool = True) -> Verdict:
        """``conditions=False``: a Wippy rule's verdict were its conditions all true."""
        if self._unit is None:
            config = self.entry_rules.entry.config
            assert isinstance(config, WippyPolicyConfig)
            update = {"actions": [rule.values[0]], "resources": [rule.values[1]]}
            narrowed = config.policy.model_copy(
                update=update if conditions else {**update, "conditions": []}
            )
            single = config.model_copy(update={"policy": narrowed})
            return WippyRulesUnit([(rule.policy, single)]).decide(request)
        lines = [rule.as_line(), *(g.as_line() for g in self.entry_rules.grants)]
        self._unit.install(Enforcer(self.entry_rules.model_text, lines, source=rule.file))
        return self._unit.decide(request)
