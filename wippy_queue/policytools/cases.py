"""The policy test case format (CASES.yaml), read with the file and line of every problem.

::

    cases:
      - name: worker-a takes tenant-a's job   # optional; default "case N"
        consumer: app.mt:worker_a             # its lifecycle.security applies
        action: queue.consume                 # or queue.publish, queue.publish.queue
        resource: app.mt:jobs                 # default: the consumer's queue ('' for publish)
        publisher: svc-a                      # the VERIFIED publisher (consume only)
        publisher_tenant: tenant-a            # default: the tenant of svc-a's actor
        headers: {priority: high}             # optional message headers
        expect: allow                         # allow | deny
      - actor: {id: svc-b, meta: {tenant: tenant-b}}   # or: actor: svc-b
        policies: [app.mt:tenants]            # and/or groups: [...]
        action: queue.publish.queue
        resource: app.mt:a_private
        expect: deny

The file is either that mapping or the bare list. It has no ``namespace`` or
``entries`` key, so an entry folder scan skips it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from wippy_queue.errors import Problem, WippyQueueError
from wippy_queue.identity import Actor
from wippy_queue.policytools.query import Query
from wippy_queue.registry.source import LineDict, read_yaml


class CaseFileError(WippyQueueError):
    """A case file is broken; ``problems`` lists every problem with file and line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        lines = "\n".join(str(p) for p in self.problems)
        super().__init__(f"{count} problem{'s' * (count != 1)} in policy test cases:\n{lines}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ActorSpec(_Strict):
    id: str = Field(min_length=1)
    meta: dict[str, Any] = Field(default_factory=dict)


class QuerySpec(_Strict):
    """What is asked, as a case file or ``policy explain`` writes it; the single source
    of truth for the query fields."""

    consumer: str | None = Field(default=None, min_length=1)
    actor: ActorSpec | None = None
    policies: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    action: str = Field(min_length=1)
    resource: str | None = None
    headers: dict[str, Any] = Field(default_factory=dict)
    publisher: str | None = Field(default=None, min_length=1)
    publisher_tenant: str | None = None

    @field_validator("actor", mode="before")
    @classmethod
    def _actor_id(cls, value: Any) -> Any:
        return {"id": value} if isinstance(value, str) else value

    @field_validator("policies", "groups", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def query(self) -> Query:
        return Query(
            action=self.action,
            resource=self.resource,
            consumer=self.consumer,
            actor=Actor(self.actor.id, self.actor.meta) if self.actor else None,
            policies=tuple(self.policies),
            groups=tuple(self.groups),
            headers=MappingProxyType(dict(self.headers)),
            publisher=self.publisher,
            publisher_tenant=self.publisher_tenant,
        )


class CaseSpec(QuerySpec):
    """One case as written: a query, its name and the decision expected."""

    name: str | None = None
    expect: Literal["allow", "deny"]


@dataclass(frozen=True, slots=True)
class Case:
    index: int
    name: str
    query: Query
    expect: str
    file: str
    line: int | None
    field_lines: Mapping[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"case {self.index} {self.name!r}"

    def problem(self, message: str, field: str | None = None) -> Problem:
        line = self.field_lines.get(field, self.line) if field else self.line
        return Problem(message, self.file, line, self.label, field)


CaseSource = str | os.PathLike[str] | Sequence[Mapping[str, Any]]


def read_cases(source: CaseSource) -> tuple[list[Case], list[Problem]]:
    """The well-formed cases of a case file (or of a list of case mappings), and the problems.

    Never raises for bad input: the caller reports these problems together with the
    ones found when the cases are asked.
    """
    if isinstance(source, str | os.PathLike):
        file = os.fspath(source)
        problems: list[Problem] = []
        if not Path(file).is_file():
            return [], [Problem("no such case file", file)]
        document = read_yaml(Path(file), problems)
        if problems:
            return [], problems
        return _cases(document, file)
    return _cases(list(source), "<cases>")


def _cases(document: Any, file: str) -> tuple[list[Case], list[Problem]]:
    items = document.get("cases") if isinstance(document, Mapping) else document
    problems: list[Problem] = []
    if isinstance(document, Mapping):
        for key in (k for k in document if k != "cases"):
            line = document.key_lines.get(key) if isinstance(document, LineDict) else None
            problems.append(
                Problem(f"unknown key {key!r}; a case file has only 'cases'", file, line)
            )
    if not isinstance(items, list) or not items:
        problems.append(
            Problem("no cases: write 'cases:' followed by a list of cases (see the docs)", file, 1)
        )
        return [], problems
    cases = []
    for index, item in enumerate(items, 1):
        case = _case(index, item, file, problems)
        if case is not None:
            cases.append(case)
    return cases, problems


def _case(index: int, item: Any, file: str, problems: list[Problem]) -> Case | None:
    line = getattr(item, "line", None)
    lines: dict[str, int] = dict(getattr(item, "key_lines", {}))
    name = item.get("name") if isinstance(item, Mapping) else None
    label = f"case {index}" + (f" {name!r}" if isinstance(name, str) else "")
    if not isinstance(item, Mapping):
        problems.append(Problem(f"a case is a mapping, got {item!r}", file, line, label))
        return None
    try:
        spec = CaseSpec.model_validate(dict(item))
    except ValidationError as err:
        for error in err.errors():
            where = ".".join(str(p) for p in error["loc"])
            top = str(error["loc"][0]) if error["loc"] else ""
            problems.append(
                Problem(_explain(error), file, lines.get(top, line), label, where or None)
            )
        return None
    name = spec.name or f"case {index}"
    return Case(index, name, spec.query(), spec.expect, file, line, lines)


def _explain(error: Any) -> str:
    kind, msg, value = error["type"], error["msg"], error.get("input")
    if kind == "extra_forbidden":
        known = ", ".join(CaseSpec.model_fields)
        if len(error["loc"]) > 1 and error["loc"][0] == "actor":
            known = ", ".join(ActorSpec.model_fields)
        return f"unknown field; known fields: {known}"
    if kind == "missing":
        return "required field is missing"
    return f"{msg} (got {value!r})"
