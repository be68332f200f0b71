"""Entry models of the security kinds."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from wippy_queue import policies as shipped
from wippy_queue.files import key_value
from wippy_queue.identity import FIELD_PATHS, known_path
from wippy_queue.registry.entry import EntryModel, StrictModel
from wippy_queue.registry.types import Duration
from wippy_queue.security.conditions import OPERATORS, UNARY
from wippy_queue.security.vocabulary import action_problem


def _check_path(value: str) -> str:
    if not known_path(value):
        raise ValueError(f"unknown field {value!r}; use one of {', '.join(FIELD_PATHS)}")
    return value


class Condition(StrictModel):
    field: str
    operator: Literal[OPERATORS]  # type: ignore[valid-type]
    value: Any = None
    value_from: str | None = None

    _field = field_validator("field")(classmethod(lambda cls, v: _check_path(v)))

    @model_validator(mode="after")
    def _operand(self) -> Condition:
        if self.value_from is not None:
            _check_path(self.value_from)
            if self.value is not None:
                raise ValueError("give either 'value' or 'value_from', not both")
        elif self.value is None and self.operator not in UNARY:
            raise ValueError(f"operator {self.operator!r} needs 'value' or 'value_from'")
        elif self.operator in ("in", "nin") and not isinstance(self.value, list):
            # a scalar would make 'in' never and 'nin' always true
            raise ValueError(f"operator {self.operator!r} needs a list value, got {self.value!r}")
        elif self.operator in ("matches", "nmatches"):
            try:
                re.compile(str(self.value))
            except re.error as err:
                raise ValueError(f"{self.value!r} is not a regular expression: {err}") from None
        return self


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class WippyRule(StrictModel):
    actions: list[str] = Field(min_length=1)
    resources: list[str] = Field(min_length=1)
    effect: Literal["allow", "deny"]
    conditions: list[Condition] = Field(default_factory=list)

    @field_validator("actions", "resources", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("actions", "resources")
    @classmethod
    def _patterns(cls, values: list[str], info: ValidationInfo) -> list[str]:
        for value in values:
            # '' is a resource: the one queue.publish is asked on
            if (not value and info.field_name == "actions") or "," in value:
                raise ValueError(f"{value!r}: actions are non-empty and patterns have no commas")
            if "*" in value[:-1]:
                # keyMatch would treat 'a*b' as the prefix 'a': far wider than written
                raise ValueError(
                    f"{value!r}: '*' may only be the whole pattern or its last character"
                )
            wrong = action_problem(value) if info.field_name == "actions" else None
            if wrong:
                raise ValueError(wrong)
        return values


class WippyPolicyConfig(EntryModel):
    """``security.policy``: Wippy's native rule, compiled to Casbin under builtin://wippy_rules."""

    policy: WippyRule
    groups: list[str] = Field(default_factory=list)


def _existing_file(value: str, what: str, other: str = "") -> str:
    if not value.startswith("file://"):
        raise ValueError(f"{what} must be a file:// path{other}, got {value!r}")
    path = Path(value.removeprefix("file://"))
    if not path.is_file():
        missing = "is not a regular file" if path.exists() else "does not exist"
        raise ValueError(f"{what} file {path} {missing}")
    return value


class CasbinPolicyConfig(EntryModel):
    """``security.policy.casbin``: a Casbin model with a policy file or inline rules."""

    model: str
    policy: str | None = None
    rules: list[str] = Field(default_factory=list)
    request: list[str] = Field(min_length=1)
    index: list[str] = Field(default_factory=list, max_length=2)
    groups: list[str] = Field(default_factory=list)

    @field_validator("model")
    @classmethod
    def _model_file(cls, value: str) -> str:
        if value.startswith(shipped.SCHEME):  # a shipped model, wherever it is installed
            try:
                path = shipped.model_path(value.removeprefix(shipped.SCHEME))
            except KeyError as err:
                raise ValueError(err.args[0]) from None
            return f"file://{path}"
        return _existing_file(value, "model", f" or {shipped.SCHEME}NAME (a shipped model)")

    @field_validator("policy")
    @classmethod
    def _policy_file(cls, value: str | None) -> str | None:
        return None if value is None else _existing_file(value, "policy")

    @field_validator("request")
    @classmethod
    def _request(cls, tokens: list[str]) -> list[str]:
        for token in tokens:
            _check_path(token)
        return tokens

    @model_validator(mode="after")
    def _has_rules(self) -> CasbinPolicyConfig:
        if self.policy is None and not self.rules:
            raise ValueError("give 'policy: file://...csv' or inline 'rules:' lines")
        for token in self.index:
            if token not in self.request:
                raise ValueError(f"index token {token!r} is not in 'request'")
        return self


class DenyBackoff(StrictModel):
    initial: Duration = 0.05
    max: Duration = 5.0


#: the id ``signing_key`` (the one-key form) signs under
DEFAULT_KEY_ID = "default"
_KEY_ID = r"^[A-Za-z0-9_.-]{1,64}$"


class SecuritySettingsConfig(EntryModel):
    """``security.settings``: runtime-wide security switches (at most one entry).

    Provenance keys: ``signing_key`` (one key), or ``signing_keys`` (key id -> value;
    ``${env:...}`` or ``file://``) with ``signing_key_id`` naming the one that signs;
    any listed key verifies. ``max_message_age`` (off by default) denies a first
    delivery whose signed stamp is older.
    """

    strict: bool = False
    signing_key: str | None = None
    signing_keys: dict[str, str] = Field(default_factory=dict)
    signing_key_id: str | None = Field(default=None, pattern=_KEY_ID)
    max_message_age: Duration | None = Field(default=None, gt=0)
    deny_backoff: DenyBackoff = Field(default_factory=DenyBackoff)

    @field_validator("signing_key")
    @classmethod
    def _one_key(cls, value: str | None) -> str | None:
        return None if value is None else key_value(value, "signing_key")

    @field_validator("signing_keys")
    @classmethod
    def _keys(cls, keys: dict[str, str]) -> dict[str, str]:
        for kid in keys:
            if not re.match(_KEY_ID, kid):
                raise ValueError(f"key id {kid!r}: use letters, digits, '_', '.', '-'")
        return {kid: key_value(value, f"signing_keys.{kid}") for kid, value in keys.items()}

    @model_validator(mode="after")
    def _signer(self) -> SecuritySettingsConfig:
        ring = self.key_ring()
        if self.signing_key_id is not None and self.signing_key_id not in ring:
            known = ", ".join(sorted(ring)) or "none"
            raise ValueError(
                f"signing_key_id {self.signing_key_id!r} is not in signing_keys ({known})"
            )
        if self.signing_key_id is None and len(self.signing_keys) > 1:
            raise ValueError("several signing_keys: name the one that signs in signing_key_id")
        return self

    def key_ring(self) -> dict[str, str]:
        """Every key that verifies, by id."""
        ring = dict(self.signing_keys)
        if self.signing_key is not None:
            ring.setdefault(DEFAULT_KEY_ID, self.signing_key)
        return ring

    def signer(self) -> str | None:
        """The id of the key that signs (None: nothing is signed)."""
        if self.signing_key_id is not None:
            return self.signing_key_id
        ring = self.key_ring()
        if self.signing_key is not None:
            return DEFAULT_KEY_ID
        return next(iter(ring)) if ring else None
