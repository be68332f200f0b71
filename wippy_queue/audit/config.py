"""``security.audit``: the entry that turns the audit trail on."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from wippy_queue.audit.instance import PLACEHOLDERS
from wippy_queue.errors import ConfigError, Problem
from wippy_queue.files import key_value
from wippy_queue.registry.entry import EntryModel


class AuditConfig(EntryModel):
    """``security.audit``: where the hash-chained audit trail goes, and how durably.

    ``path`` may hold ``{instance}``, ``{host}`` and ``{pid}``: one file per runtime
    instance (``audit-{instance}.jsonl``). ``key`` (``${env:...}`` or ``file://``)
    keys the chain: each hash is an HMAC-SHA256 under it, and ``key_id`` names it in
    the file's header.
    """

    path: str = Field(min_length=1)
    fsync: Literal["always", "batch", "never"] = "batch"
    key: str | None = None
    key_id: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")

    @field_validator("path")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        unknown = [m for m in re.findall(r"\{([^{}]*)\}", value) if m not in PLACEHOLDERS]
        if unknown:
            known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
            raise ValueError(f"unknown placeholder {{{unknown[0]}}} in the path; known: {known}")
        return value

    @field_validator("key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        return None if value is None else key_value(value, "key")

    def file(self) -> Path:
        return Path(self.path.removeprefix("file://"))


#: the audit key when no ``--audit-key`` is given (``audit verify``, ``run``)
KEY_ENV = "WIPPY_QUEUE_AUDIT_KEY"


def given_key(value: str | None) -> str | None:
    """The audit key of ``--audit-key`` (a value, ``${env:NAME}`` or ``file://path``),
    else of ``WIPPY_QUEUE_AUDIT_KEY``, else None; ConfigError if it is unusable."""
    where = "--audit-key"
    if value is None:
        value, where = os.environ.get(KEY_ENV), KEY_ENV
    if value is None:
        return None
    try:
        return key_value(value, where)
    except ValueError as err:
        raise ConfigError([Problem(str(err), field=where)]) from None
