"""Policy units: one Casbin enforcer each, asked the same Request.

- ``WippyRulesUnit``: the ``security.policy`` entries of a scope, compiled into
  rules of the shipped model ``builtin://wippy_rules``.
- ``CasbinUnit``: one ``security.policy.casbin`` entry, its own model and rules,
  with ``request:`` mapping a Request onto the model's request tokens.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

from wippy_queue import policies as shipped
from wippy_queue.errors import Problem, WippyQueueError
from wippy_queue.files import read_regular
from wippy_queue.identity import ActorView, MessageView, Request, getter
from wippy_queue.security.conditions import evaluate
from wippy_queue.security.enforcer import (
    Enforcer,
    ModelInfo,
    PolicyLine,
    PolicyLoadError,
    read_model,
    read_policy,
)
from wippy_queue.security.models import CasbinPolicyConfig, Condition, WippyPolicyConfig
from wippy_queue.security.vocabulary import action_problem

_PLAIN = (str, int, float, bool, type(None))
_SEQUENCES = (list, tuple)


class RoleNameSubject(WippyQueueError):
    """A request's role subject is a role's name: deciding it would grant that role."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """One unit's answer: ``allow``, ``deny`` or None (no rule matched)."""

    effect: str | None
    policy: str | None = None
    rule: tuple[str, ...] = ()


class PolicyUnit(ABC):
    #: policy entry ids this unit enforces
    policies: tuple[str, ...]

    @abstractmethod
    def decide(self, request: Request) -> Verdict: ...

    @abstractmethod
    def cache_key(self, request: Request) -> Hashable | None:
        """What else the decision depends on, or None if it cannot be cached.

        The scope's key already holds the action, the resource and the actor's id.
        """


#: request paths the scope's cache key always holds
SCOPE_KEYED = ("action", "resource", "actor.id")


def wippy_model_text() -> str:
    return shipped.model_path("wippy_rules").read_text(encoding="utf-8")


_UNHASHABLE = object()


def _hashable(value: Any) -> Any:
    """A cache-key part for ``value``, typed (``1``, ``1.0`` and ``True`` are equal in Python
    but not to every condition); ``_UNHASHABLE`` when it cannot be part of a key."""
    if type(value) is float:  # (by its bits: -0.0 == 0.0, yet str() tells them apart)
        return ("float", value.hex())
    if isinstance(value, _PLAIN):
        return (type(value).__name__, value)
    if isinstance(value, _SEQUENCES):
        items = tuple(_hashable(v) for v in value)
        return _UNHASHABLE if any(i is _UNHASHABLE for i in items) else ("list", items)
    return _UNHASHABLE


class WippyRulesUnit(PolicyUnit):
    def __init__(self, entries: Sequence[tuple[str, WippyPolicyConfig]]) -> None:
        self.policies = tuple(pid for pid, _ in entries)
        self._conditions: dict[str, list[Condition]] = {}
        rules: list[PolicyLine] = []
        fields: set[str] = set()
        for pid, config in entries:
            rule = config.policy
            cond = pid if rule.conditions else ""
            if rule.conditions:
                self._conditions[pid] = list(rule.conditions)
                for c in rule.conditions:
                    fields.add(c.field)
                    if c.value_from:
                        fields.add(c.value_from)
            for action in rule.actions:
                for resource in rule.resources:
                    values = (action, resource, cond, rule.effect, pid)
                    rules.append(PolicyLine("p", values, pid, 0))
        self._fields = tuple(getter(f) for f in sorted(fields - set(SCOPE_KEYED)))
        self._enforcer = Enforcer(
            wippy_model_text(),
            rules,
            functions={"wippyCond": self._cond},
            source="builtin://wippy_rules",
        )

    def _cond(self, cond: str, request: Request) -> bool:
        if not cond:
            return True
        return all(
            evaluate(c.field, c.operator, request, c.value, c.value_from)
            for c in self._conditions[cond]
        )

    def decide(self, request: Request) -> Verdict:
        effect, rule = self._enforcer.decide(request.action, request.resource, request)
        return Verdict(effect, rule[4] if rule else None, tuple(rule))

    def cache_key(self, request: Request) -> Hashable | None:
        key = []
        for get in self._fields:
            hashable = _hashable(get(request))
            if hashable is _UNHASHABLE:
                return None
            key.append(hashable)
        return tuple(key)


def _sample(token: str) -> Any:
    if token == "actor":
        return ActorView("sample-actor", {}, "sample-tenant")
    if token == "message":
        return MessageView({}, "sample-actor", "sample-tenant")
    return "sample"


def _check_index(info: ModelInfo, index: Sequence[int], model_file: str, entry_id: str) -> None:
    """An index filters rules by exact value: the matcher must demand that equality.

    Otherwise the filter could hide a rule the matcher would have matched (a pattern,
    a deny), and hiding a deny rule is an allow. Nor can a first-match effect
    (``priority``) use one: the index keeps rules in sets, not in file order, so which
    rule comes first (an allow, or the deny above it) would change from run to run.
    """
    if "priority(" in info.effect.replace(" ", "").lower():
        raise PolicyLoadError(
            [
                Problem(
                    f"'index' cannot serve the first-match effect {info.effect!r}: the index "
                    "does not keep the rules in file order, so the first match would change "
                    "from run to run; remove 'index' or use an effect such as "
                    "'some(where (p.eft == allow)) && !some(where (p.eft == deny))'",
                    model_file,
                    info.effect_line,
                    entry_id,
                    "index",
                )
            ]
        )
    conjuncts = {" ".join(c.split()) for c in info.matcher.split("&&")}
    for i in dict.fromkeys(index):
        r = info.request_tokens[i]
        p = info.policy_tokens[i] if i < len(info.policy_tokens) else "?"
        if "||" in info.matcher or not {f"r.{r} == p.{p}", f"p.{p} == r.{r}"} & conjuncts:
            raise PolicyLoadError(
                [
                    Problem(
                        f"'index' needs the matcher to require 'r.{r} == p.{p}' (an && term, "
                        "no ||): the index keeps only rules whose field equals the request's",
                        model_file,
                        info.matcher_line,
                        entry_id,
                        "index",
                    )
                ]
            )


def _read_text(path: Path, digests: dict[Path, str], entry_id: str) -> str:
    """A policy file's text, its digest noted; not UTF-8 is a PolicyLoadError at its line."""
    data = read_regular(path)
    digests[path] = hashlib.sha256(data).hexdigest()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        problem = Problem(
            f"not UTF-8 text (byte {data[err.start]:#04x}); save the file as UTF-8",
            str(path),
            line,
            entry_id,
        )
        raise PolicyLoadError([problem]) from err


ObjectRead = Callable[[Request], Any]

#: What an ABAC matcher may read of a whole-object token (``r.sub.tenant``) and still
#: be cached, and where the request holds each value; reading anything else of the
#: object (``meta``, ``headers``: mutable dicts) leaves the decision uncached.
OBJECT_READS: dict[str, dict[str, ObjectRead]] = {
    "actor": {
        "id": lambda r: r.actor.id if r.actor is not None else None,
        "tenant": lambda r: r.actor.tenant if r.actor is not None else None,
    },
    "message": {"publisher": attrgetter("publisher"), "tenant": attrgetter("tenant")},
}


def _plain(value: Any) -> Any:
    """Casbin rules hold strings: give it strings ('' for absent), objects as they are."""
    if value is None:
        return ""
    return str(value) if isinstance(value, _PLAIN) else value


class CasbinUnit(PolicyUnit):
    def __init__(self, entry_id: str, config: CasbinPolicyConfig) -> None:
        self.policies = (entry_id,)
        self.entry_id = entry_id
        self.config = config
        self.model_path = Path(config.model.removeprefix("file://"))
        self.policy_path = Path(config.policy.removeprefix("file://")) if config.policy else None
        self._tokens = tuple(config.request)
        self._getters = tuple(getter(t) for t in self._tokens)
        #: the plain tokens the scope's key lacks; whole objects are keyed by what is read
        self._key_getters = tuple(
            getter(t) for t in self._tokens if t not in SCOPE_KEYED and t not in OBJECT_READS
        )
        #: bumped by every install, so that decisions cached under old rules never answer
        self.generation = 0
        self._enforcer = self.load()
        self._object_reads = self._reads_of(self._enforcer)
        self._subjects = self._subjects_of(self._enforcer)

    @property
    def files(self) -> Mapping[Path, str]:
        """The model and policy files in force -> SHA-256 of the bytes they were read from."""
        return self._enforcer.files

    def load(self) -> Enforcer:
        """Read and check the model and rules; PolicyLoadError says file and line."""
        model_file = str(self.model_path)
        files: dict[Path, str] = {}
        model_text = _read_text(self.model_path, files, self.entry_id)
        info = read_model(model_text, model_file)
        if len(info.request_tokens) != len(self._tokens):
            raise PolicyLoadError(
                [
                    Problem(
                        f"the model's request has {len(info.request_tokens)} tokens "
                        f"({', '.join(info.request_tokens)}) but the entry's 'request' maps "
                        f"{len(self._tokens)} ({', '.join(self._tokens)}); make them match",
                        model_file,
                        info.request_line,
                        self.entry_id,
                        "request",
                    )
                ]
            )
        rules: list[PolicyLine] = []
        if self.policy_path is not None:
            text = _read_text(self.policy_path, files, self.entry_id)
            rules += read_policy(text, str(self.policy_path), info)
        if self.config.rules:
            rules += read_policy("\n".join(self.config.rules), f"{self.entry_id} rules", info)
        index = [self._tokens.index(t) for t in self.config.index]
        try:
            _check_index(info, index, model_file, self.entry_id)
        except PolicyLoadError:
            # a matcher that does not parse, or names something undefined, is the first
            # thing to say, not the index it breaks
            self._check_matcher(Enforcer(model_text, [], source=model_file), info, sample=False)
            raise
        if len(index) == 1:
            index *= 2  # pycasbin's FastPolicy only iterates a two-level index correctly
        enforcer = Enforcer(model_text, rules, index=index, source=model_file, files=files)
        self._check_matcher(enforcer, info, sample=True)
        self._check_actions(enforcer, info, rules)
        return enforcer

    def _check_actions(self, enforcer: Enforcer, info: ModelInfo, rules: list[PolicyLine]) -> None:
        """PolicyLoadError naming each rule whose action the runtime never asks."""
        if "action" not in self._tokens:
            return
        token = info.request_tokens[self._tokens.index("action")]
        problems = []
        for matches, field in enforcer.comparisons(token):
            if field not in info.policy_tokens:
                continue
            at = info.policy_tokens.index(field)
            for rule in rules:
                wrong = action_problem(rule.values[at], matches) if rule.ptype == "p" else None
                if wrong:
                    problems.append(Problem(wrong, rule.file, rule.line, self.entry_id))
        if problems:
            raise PolicyLoadError(problems)

    def _check_matcher(self, enforcer: Enforcer, info: ModelInfo, *, sample: bool) -> None:
        """PolicyLoadError at the matcher's line if it does not parse, names something
        undefined, or (``sample``) fails on a sample request."""
        try:
            undefined = enforcer.undefined_in_matcher()
            if undefined:
                raise ValueError(f"the matcher names undefined {', '.join(undefined)}")
            if sample:
                enforcer.decide(*(_sample(t) for t in self._tokens))
        except Exception as err:
            raise self._matcher_error(err, info) from err

    def _matcher_error(self, err: Exception, info: ModelInfo) -> PolicyLoadError:
        if isinstance(err, SyntaxError):  # pycasbin parses it as Python: its line is ours
            message = f"the matcher does not parse: SyntaxError: {err.msg}; check its operators"
        else:
            message = f"the matcher fails on a sample request: {type(err).__name__}: {err}"
        problem = Problem(message, str(self.model_path), info.matcher_line, self.entry_id, "model")
        return PolicyLoadError([problem])

    def install(self, enforcer: Enforcer) -> None:
        """Put rules made by ``load`` in force (on the event loop, between decisions)."""
        self._object_reads = self._reads_of(enforcer)
        self._subjects = self._subjects_of(enforcer)
        self._enforcer = enforcer
        self.generation += 1

    @property
    def enforcer(self) -> Enforcer:
        """The rules in force."""
        return self._enforcer

    @property
    def role_names(self) -> Mapping[str, PolicyLine]:
        """The names the rules in force grant as roles -> the first rule that does."""
        return self._enforcer.role_names

    def role_subject_paths(self) -> tuple[str, ...]:
        """The request paths (``actor.id``) the matcher asks roles of (``g(r.sub, ...)``)."""
        return tuple(self._tokens[i] for i in self._subjects_of(self._enforcer))

    def _subjects_of(self, enforcer: Enforcer) -> tuple[int, ...]:
        asked = enforcer.role_subjects()
        return tuple(i for i, t in enumerate(enforcer.request_tokens()) if t in asked)

    def _refuse_role_subject(self, values: tuple[Any, ...]) -> None:
        """A request whose role subject (the actor's id, a header) is a role's name would
        hold that role in every domain (pycasbin's ``g(x, x, dom)`` is true): refused."""
        roles = self._enforcer.role_names
        for i in self._subjects:
            rule = roles.get(values[i]) if type(values[i]) is str else None
            if rule is not None:
                raise RoleNameSubject(
                    f"{self._tokens[i]} {values[i]!r} is also the name of a role "
                    f"({rule.file}:{rule.line}: {rule.ptype}, {', '.join(rule.values)}); "
                    "Casbin would give it that role in every domain, so it is refused: "
                    "rename the actor or the role"
                )

    def _reads_of(self, enforcer: Enforcer) -> tuple[ObjectRead, ...] | None:
        """What the cache key needs of whole-object tokens: the attributes the matcher
        reads of them; None (not cacheable) when it uses one any other way."""
        reads: list[ObjectRead] = []
        model_tokens = enforcer.request_tokens()
        for model_token, token in zip(model_tokens, self._tokens, strict=True):
            if token not in OBJECT_READS:
                continue
            attrs = enforcer.attribute_reads(model_token)
            if attrs is None or not attrs <= OBJECT_READS[token].keys():
                return None
            reads += [OBJECT_READS[token][a] for a in sorted(attrs)]
        return tuple(reads)

    def _values(self, request: Request) -> tuple[Any, ...]:
        values = []
        for get in self._getters:
            value = get(request)
            values.append(value if type(value) is str else _plain(value))
        return tuple(values)

    def decide(self, request: Request) -> Verdict:
        values = self._values(request)
        if self._subjects:
            self._refuse_role_subject(values)
        effect, rule = self._enforcer.decide(*values)
        return Verdict(effect, self.entry_id, tuple(rule))

    def cache_key(self, request: Request) -> Hashable | None:
        reads = self._object_reads
        if reads is None:
            return None
        key: list[Any] = [self.generation]
        for get in self._key_getters:
            value = get(request)
            if type(value) is not str:
                value = _plain(value)
                if type(value) is not str:
                    return None
            key.append(value)
        for read in reads:  # typed: the matcher compares the raw attribute
            part = _hashable(read(request))
            if part is _UNHASHABLE:
                return None
            key.append(part)
        return tuple(key)
