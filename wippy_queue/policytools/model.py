"""What a Casbin model's matcher compares, read well enough for lint.

Only a conjunctive matcher (terms joined by ``&&``) is analysed: each term of the
form ``r.X == p.Y``, ``fn(r.X, p.Y)`` (``keyMatch``, ``regexMatch``, ...) or
``g(r.X, p.Y[, r.D | p.D])`` is a condition EVERY match must meet, so a rule whose
value fails one of them for every request the runtime can make never matches.
Anything else in the matcher is left alone (no finding rather than a wrong one).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from casbin.util import builtin_operators as ops

from wippy_queue.security import matching
from wippy_queue.security.enforcer import PolicyLine

_SECTION = re.compile(r"^\[(\w+)\]\s*$")
_ROLE = re.compile(r"(?<![\w.!])(g\d*)\(\s*r\.(\w+)\s*,\s*p\.(\w+)\s*(?:,\s*([rp])\.(\w+)\s*)?\)")
_CALL = re.compile(r"(?<![\w.!])(\w+)\(\s*r\.(\w+)\s*,\s*p\.(\w+)\s*\)")
_EQ = re.compile(
    r"(?<![\w.!])r\.(\w+)\s*==\s*p\.(\w+)(?![\w.(])|(?<![\w.!])p\.(\w+)\s*==\s*r\.(\w+)(?![\w.(])"
)

#: matcher functions lint can evaluate: (request value, rule value) -> matched
MATCH_FUNCTIONS: dict[str, Callable[[str, str], bool]] = {
    "==": lambda value, rule: value == rule,
    "keyMatch": ops.key_match,
    "keyMatch2": matching.key_match2,
    "keyMatch3": matching.key_match3,
    "keyMatch4": matching.key_match4,
    "keyMatch5": matching.key_match5,
    "regexMatch": matching.regex_match,
    "globMatch": ops.glob_match,
}


@dataclass(frozen=True, slots=True)
class Term:
    """``fn(r.<request>, p.<field>)``; ``fn`` is ``==`` or a MATCH_FUNCTIONS name."""

    fn: str
    request: str
    field: str


@dataclass(frozen=True, slots=True)
class RoleTerm:
    """``g(r.<request>, p.<field>[, <domain>])``; domain is ("r" | "p", token) or None."""

    ptype: str
    request: str
    field: str
    domain: tuple[str, str] | None


@dataclass(frozen=True, slots=True)
class ModelShape:
    request: tuple[str, ...]
    #: ptype -> its field names, e.g. {"p": ("sub", "dom", "obj", "act", "eft")}
    policy: dict[str, tuple[str, ...]]
    terms: tuple[Term, ...]
    role_terms: tuple[RoleTerm, ...]
    #: the effect is "some allow and no deny" (deny overrides allow)
    deny_overrides: bool

    def effect_of(self, line: PolicyLine) -> str | None:
        """``allow``/``deny`` of a policy line (``allow`` without an eft field); None for g."""
        if line.ptype.startswith("g"):
            return None
        fields = self.policy.get(line.ptype, ())
        if "eft" in fields:
            return line.values[fields.index("eft")].strip()
        return "allow"

    def value(self, rule_values: tuple[str, ...], field: str) -> str | None:
        fields = self.policy.get("p", ())
        return rule_values[fields.index(field)] if field in fields else None

    def domain_of(self, term: RoleTerm, rule_values: tuple[str, ...]) -> str | None:
        """The domain a rule's role must be granted in, when the matcher pins it."""
        if term.domain is None:
            return None
        side, token = term.domain
        if side == "p":
            return self.value(rule_values, token)
        for eq in self.terms:
            if eq.fn == "==" and eq.request == token:
                return self.value(rule_values, eq.field)
        return None


def _sections(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _SECTION.match(line)
        if match:
            current = sections.setdefault(match.group(1), {})
        elif current is not None:
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return sections


def _tokens(definition: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in definition.split(",") if t.strip())


def read_shape(text: str) -> ModelShape:
    """The shape of a model that already loaded (``read_model`` checked its syntax)."""
    sections = _sections(text)
    request = _tokens(sections.get("request_definition", {}).get("r", ""))
    policy = {k: _tokens(v) for k, v in sections.get("policy_definition", {}).items()}
    roles = set(sections.get("role_definition", {}))
    matcher = sections.get("matchers", {}).get("m", "")
    effect = re.sub(r"\s+", "", sections.get("policy_effect", {}).get("e", ""))
    deny_overrides = "!some(where(p.eft==deny))" in effect
    if "||" in matcher or re.search(r"\bor\b", matcher):
        return ModelShape(request, policy, (), (), deny_overrides)
    role_terms = tuple(
        RoleTerm(
            m.group(1), m.group(2), m.group(3), (m.group(4), m.group(5)) if m.group(4) else None
        )
        for m in _ROLE.finditer(matcher)
        if m.group(1) in roles
    )
    terms = [
        Term(m.group(1), m.group(2), m.group(3))
        for m in _CALL.finditer(matcher)
        if m.group(1) in MATCH_FUNCTIONS and m.group(1) not in roles
    ]
    for m in _EQ.finditer(matcher):
        terms.append(Term("==", m.group(1) or m.group(4), m.group(2) or m.group(3)))
    return ModelShape(request, policy, tuple(terms), role_terms, deny_overrides)
