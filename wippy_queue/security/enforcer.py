"""A wrapper around one pycasbin enforcer (composition, never subclassing).

It reads model and policy text with line numbers so that every problem names
the file and line, keeps pycasbin from touching the process's logging config,
and refuses to decide if enforcement was ever switched off (pycasbin answers
"allow" to everything then).
"""

from __future__ import annotations

import ast
import csv
import io
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import casbin
from casbin.model.model_fast import FastModel
from casbin.model.policy_fast import fast_policy_filter
from casbin.persist.adapter import Adapter
from casbin.util import has_eval
from casbin.util.log import DEFAULT_LOGGING

from wippy_queue.errors import Problem, WippyQueueError
from wippy_queue.security.matching import CASBIN_FUNCTIONS
from wippy_queue.security.vocabulary import Matcher, effect_problem

_CASBIN_LOGGERS = tuple(DEFAULT_LOGGING["loggers"])
_DROP = logging.Logger("wippy_queue.casbin.requests", level=logging.CRITICAL + 1)
_SECTION = re.compile(r"^\[(\w+)\]\s*$")


class PolicyLoadError(WippyQueueError):
    """A Casbin model or policy file is broken; ``problems`` says where."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


@dataclass(frozen=True, slots=True)
class PolicyLine:
    ptype: str
    values: tuple[str, ...]
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What we need from a model file: request tokens, rule shapes, where ``r =`` is."""

    request_tokens: tuple[str, ...]
    request_line: int
    rule_sizes: dict[str, int]
    #: the ``p =`` tokens, and the ``m =`` matcher with its line
    policy_tokens: tuple[str, ...] = ()
    matcher: str = ""
    matcher_line: int = 1
    #: the ``e =`` policy effect, and its line
    effect: str = ""
    effect_line: int = 1


def read_model(text: str, file: str) -> ModelInfo:
    sections: dict[str, dict[str, tuple[str, int]]] = {}
    current: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _SECTION.match(line)
        if match:
            current = match.group(1)
            sections.setdefault(current, {})
            continue
        key, sep, value = line.partition("=")
        if current is None or not sep:
            raise PolicyLoadError([Problem(f"not a model line: {raw.strip()!r}", file, number)])
        sections[current][key.strip()] = (value.strip(), number)
    needed = ("request_definition", "policy_definition", "policy_effect", "matchers")
    missing = [s for s in needed if s not in sections]
    if missing:
        raise PolicyLoadError([Problem(f"model has no [{', '.join(missing)}] section", file, 1)])
    request = sections["request_definition"].get("r")
    if request is None:
        raise PolicyLoadError([Problem("[request_definition] has no 'r = ...'", file, 1)])
    sizes = {k: len(v.split(",")) for k, (v, _) in sections["policy_definition"].items()}
    sizes.update(
        {k: len(v.split(",")) for k, (v, _) in sections.get("role_definition", {}).items()}
    )
    tokens = tuple(t.strip() for t in request[0].split(","))
    policy = sections["policy_definition"].get("p", ("", 1))[0]
    matcher, matcher_line = sections["matchers"].get("m", ("", 1))
    effect, effect_line = sections["policy_effect"].get("e", ("", 1))
    return ModelInfo(
        tokens,
        request[1],
        sizes,
        tuple(t.strip() for t in policy.split(",")),
        matcher,
        matcher_line,
        effect,
        effect_line,
    )


def read_policy(text: str, file: str, model: ModelInfo, first_line: int = 1) -> list[PolicyLine]:
    """Parse CSV policy lines, checking each against the model's rule shapes."""
    problems: list[Problem] = []
    lines: list[PolicyLine] = []
    for offset, raw in enumerate(text.splitlines()):
        number = first_line + offset
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        row = [cell.strip() for cell in next(csv.reader(io.StringIO(raw), skipinitialspace=True))]
        ptype, values = row[0], tuple(row[1:])
        wrong = _rule_problem(ptype, values, model)
        if wrong:
            problems.append(Problem(wrong, file, number))
        else:
            lines.append(PolicyLine(ptype, values, file, number))
    if problems:
        raise PolicyLoadError(problems)
    return lines


def _rule_problem(ptype: str, values: tuple[str, ...], model: ModelInfo) -> str | None:
    """What is wrong with one policy line for ``model``, or None."""
    size = model.rule_sizes.get(ptype)
    if size is None:
        return f"rule type {ptype!r} is not in the model ({', '.join(model.rule_sizes)})"
    if len(values) != size:
        return f"{ptype} rule has {len(values)} fields, the model's {ptype} has {size}"
    if ptype == "p" and "eft" in model.policy_tokens:  # pycasbin reads p.eft by that name
        return effect_problem(values[model.policy_tokens.index("eft")])
    return None


def _quiet_construct(factory: Callable[[], Any]) -> Any:
    """Build an enforcer without letting pycasbin change logging configuration, and
    without the model and every rule it logs at INFO while it builds (an application's
    ``logging.basicConfig(level=INFO)`` would print them all)."""
    saved = {name: logging.getLogger(name).disabled for name in _CASBIN_LOGGERS}
    for name in saved:
        logging.getLogger(name).disabled = True
    try:
        return factory()
    finally:
        for name, disabled in saved.items():
            logging.getLogger(name).disabled = disabled


class _Rules(Adapter):  # type: ignore[misc]
    """Hands checked rules to pycasbin in one pass (its add_policy is O(n) per rule)."""

    def __init__(self, rules: Sequence[PolicyLine]) -> None:
        self._rules = rules

    def load_policy(self, model: Any) -> None:
        seen: set[tuple[str, tuple[str, ...]]] = set()
        for rule in self._rules:
            key = (rule.ptype, rule.values)
            if key not in seen:
                seen.add(key)
                model.model[rule.ptype[0]][rule.ptype].policy.append(list(rule.values))


class Enforcer:
    """One model plus its rules; ``decide`` answers allow, deny, or no opinion (None).

    An allow counts only when a rule allowed it: a model whose effect allows by
    default (``!some(where (p.eft == deny))``) gives no opinion when no rule matched.
    With ``index``, only the rules whose indexed fields equal the request's are
    asked (pycasbin's FastPolicy); the unit checks that the matcher compares those
    fields by equality, so the filter never hides a rule that could match.
    """

    def __init__(
        self,
        model_text: str,
        rules: Sequence[PolicyLine],
        *,
        functions: dict[str, Callable[..., Any]] | None = None,
        index: Sequence[int] = (),
        source: str = "<model>",
        files: Mapping[Path, str] | None = None,
    ) -> None:
        self.source = source
        #: the files it was built from -> SHA-256 of the bytes read (a watcher compares)
        self.files: Mapping[Path, str] = files or {}
        #: what it was built from (a reload compares old and new: ``growth.py``)
        self.model_text = model_text
        self.rules = tuple(rules)
        #: where a ``p`` rule holds its effect (None: the model has no ``eft``: allow)
        self.effect_at: int | None = None
        #: every name a ``g`` rule grants as a role -> the first rule that does
        self.role_names: dict[str, PolicyLine] = {}
        for rule in rules:
            if rule.ptype.startswith("g") and len(rule.values) >= 2:
                self.role_names.setdefault(rule.values[1], rule)
        self._index = tuple(index)
        try:
            if index:
                model: casbin.model.Model = FastModel(list(index))
            else:
                model = casbin.model.Model()
            model.load_model_from_text(model_text)
            adapter = _Rules(rules)
            if index:
                self._e = _quiet_construct(
                    lambda: casbin.FastEnforcer(model, adapter, cache_key_order=list(index))
                )
            else:
                self._e = _quiet_construct(lambda: casbin.Enforcer(model, adapter))
            tokens = list(model.model["p"]["p"].tokens)
            self.effect_at = tokens.index("p_eft") if "p_eft" in tokens else None
            # pycasbin logs every request at INFO/WARNING; decisions are logged (and
            # audited) by us, so give it a detached logger that drops them.
            self._e.logger = _DROP
            # pycasbin's regular-expression matchers let '$' skip a trailing newline
            for name, fn in {**CASBIN_FUNCTIONS, **(functions or {})}.items():
                self._e.add_function(name, fn)
        except PolicyLoadError:
            raise
        except Exception as err:
            raise PolicyLoadError(
                [Problem(f"Casbin cannot load this model: {type(err).__name__}: {err}", source, 1)]
            ) from err

    def undefined_in_matcher(self) -> list[str]:
        """Functions and tokens the matcher names that nothing defines.

        pycasbin finds them only when evaluation reaches them, which a short-circuit
        may put off until some message arrives; ``eval()`` matchers are not checked.
        """
        model = self._e.model.model
        matcher = model["m"]["m"].value
        if has_eval(matcher):
            return []
        functions = set(self._e.fm.get_functions()) | set(model.get("g", {}))
        tokens = set(model["r"]["r"].tokens) | set(model["p"]["p"].tokens)
        tree = self._e._get_expression(matcher).ast_parsed_value
        called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        missing = []
        for node in ast.walk(tree):
            if not isinstance(node, ast.Name):
                continue
            if id(node) in called:
                if node.id not in functions:
                    missing.append(f"function {node.id}")
            elif node.id not in tokens:
                missing.append(node.id.replace("_", ".", 1))  # r_sub is how r.sub reads here
        return list(dict.fromkeys(missing))

    def role_subjects(self) -> frozenset[str]:
        """The request tokens the matcher asks roles of: ``X`` of each ``g(r.X, ...)``.

        pycasbin holds ``g(name, name, ...)`` true for any name (in every domain), so a
        request whose ``X`` is a role's name holds that role everywhere.
        """
        model = self._e.model.model
        matcher = model["m"]["m"].value
        roles = set(model.get("g", {}))
        if not roles:
            return frozenset()
        tree = self._e._get_expression(matcher).ast_parsed_value
        found = set()
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in roles
                and node.args
                and isinstance(node.args[0], ast.Name)
                and node.args[0].id.startswith("r_")
            ):
                found.add(node.args[0].id.removeprefix("r_"))
        return frozenset(found)

    def comparisons(self, token: str) -> list[tuple[Matcher, str]]:
        """How the matcher compares request token ``token`` with a rule field, in terms
        EVERY match must pass: ``r.T == p.F`` or ``fn(r.T, p.F)`` joined by ``&&``.

        Each is (the comparison as a function of the request's value and the rule's,
        the rule field ``F``). A matcher with ``||`` or ``eval`` gives none.
        """
        matcher = self._e.model.model["m"]["m"].value
        if has_eval(matcher):
            return []
        tree = self._e._get_expression(matcher).ast_parsed_value
        if isinstance(tree, ast.BoolOp) and not isinstance(tree.op, ast.And):
            return []
        terms = tree.values if isinstance(tree, ast.BoolOp) else [tree]
        functions = self._e.fm.get_functions()
        found = []
        for term in terms:
            names = _compared(term, f"r_{token}")
            if names is not None and names[0] in (*functions, "=="):
                fn = functions.get(names[0], _equal)
                found.append((fn, names[1]))
        return found

    def request_tokens(self) -> list[str]:
        """The model's request tokens in order (``sub``, ``obj``, ``act``)."""
        return [t.removeprefix("r_") for t in self._e.model.model["r"]["r"].tokens]

    def attribute_reads(self, token: str) -> frozenset[str] | None:
        """The attributes the matcher reads of request token ``token`` (``r.sub.tenant``
        reads ``tenant`` of ``sub``), or None when it uses the token any other way: whole
        (passed to a function), nested (``r.sub.meta.x``), called, or through ``eval``."""
        model = self._e.model.model
        matcher = model["m"]["m"].value
        if has_eval(matcher):
            return None
        name = f"r_{token}"  # how pycasbin's parsed matcher names r.<token>
        tree = self._e._get_expression(matcher).ast_parsed_value
        parents = {
            id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)
        }
        reads = set()
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Name) and node.id == name):
                continue
            parent = parents.get(id(node))
            if not isinstance(parent, ast.Attribute):
                return None  # the whole object
            outer = parents.get(id(parent))
            if isinstance(outer, ast.Attribute | ast.Subscript) or (
                isinstance(outer, ast.Call) and outer.func is parent
            ):
                return None  # nested, indexed or called: more than one plain attribute
            reads.add(parent.attr)
        return frozenset(reads)

    def decide(self, *request: Any) -> tuple[str | None, list[str]]:
        if not self._e.enabled:
            raise WippyQueueError(f"enforcement was switched off on {self.source}; refusing")
        if self._index:
            # FastEnforcer filters only in enforce(), not in the enforce_ex we need
            keys = [request[i] for i in self._index]
            with fast_policy_filter(self._e.model.model["p"]["p"].policy, *keys):
                allowed, explain = self._e.enforce_ex(*request)
        else:
            allowed, explain = self._e.enforce_ex(*request)
        if not explain:
            return None, []
        return ("allow" if allowed else "deny"), list(explain)


def _equal(value: str, rule: str) -> bool:
    return value == rule


def _compared(term: ast.expr, request: str) -> tuple[str, str] | None:
    """(``==`` or the function name, the rule field) if ``term`` compares ``request``
    with a rule field (``p_F``), else None."""
    if isinstance(term, ast.Compare) and len(term.ops) == 1 and isinstance(term.ops[0], ast.Eq):
        pair = [term.left, term.comparators[0]]
        op = "=="
    elif isinstance(term, ast.Call) and isinstance(term.func, ast.Name) and len(term.args) == 2:
        pair, op = list(term.args), term.func.id
    else:
        return None
    names = [n.id if isinstance(n, ast.Name) else "" for n in pair]
    if op == "==" and names[1] == request:
        names.reverse()
    if names[0] != request or not names[1].startswith("p_"):
        return None
    return op, names[1].removeprefix("p_")
