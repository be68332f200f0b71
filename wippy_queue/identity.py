"""Who asks, what is asked, what was decided: the identity value types.

A leaf module (it imports nothing of ours) so that every layer may use them: the
call context carries an ``Actor``, a security check takes a ``Request`` and gives a
``Decision``, and the audit trail records both without importing the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from types import MappingProxyType
from typing import Any, NamedTuple


@dataclass(frozen=True, slots=True)
class Actor:
    """Immutable, meta included: whatever mapping is given is copied read-only, so
    no caller (a handler, a policy condition) can change who a call runs as."""

    id: str
    meta: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    @property
    def tenant(self) -> str | None:
        value = self.meta.get("tenant")
        return None if value is None else str(value)


_EMPTY: Mapping[str, Any] = MappingProxyType({})

#: Paths a condition field or a Casbin request token may name; ``*`` = any key.
FIELD_PATHS = (
    "actor",
    "actor.id",
    "actor.meta.*",
    "action",
    "resource",
    "meta.*",
    "message",
    "message.headers.*",
    "message.publisher",
    "message.tenant",
)


def known_path(path: str) -> bool:
    for pattern in FIELD_PATHS:
        if pattern.endswith(".*"):
            prefix = pattern[:-1]
            if path.startswith(prefix) and len(path) > len(prefix):
                return True
        elif path == pattern:
            return True
    return False


class Request(NamedTuple):
    """One question: may ``actor`` do ``action`` on ``resource`` for this message?

    ``publisher`` and ``tenant`` are the VERIFIED publisher's actor id and tenant
    (from the provenance stamp), never a header the publisher chose. Immutable; a
    tuple because one is made per message and per publish (a frozen dataclass costs
    twice as much to build).
    """

    action: str
    resource: str
    actor: Actor | None
    headers: Mapping[str, Any] = _EMPTY
    publisher: str | None = None
    tenant: str | None = None

    def value(self, path: str) -> Any:
        """The value at ``path`` (see FIELD_PATHS); None when absent."""
        head, _, rest = path.partition(".")
        if head == "action":
            return self.action
        if head == "resource":
            return self.resource
        if head == "actor":
            return _actor_value(self.actor, rest)
        if head == "meta":
            return self.headers.get(rest)
        if head == "message":
            return self._message_value(rest)
        return None

    def _message_value(self, rest: str) -> Any:
        if not rest:
            return MessageView(dict(self.headers), self.publisher, self.tenant)
        if rest == "publisher":
            return self.publisher
        if rest == "tenant":
            return self.tenant
        if rest.startswith("headers."):
            return self.headers.get(rest.removeprefix("headers."))
        return None


def getter(path: str) -> Callable[[Request], Any]:
    """``lambda request: request.value(path)``, with the path parsed once (the hot path)."""
    head, _, rest = path.partition(".")
    if path in ("action", "resource", "message.publisher", "message.tenant"):
        return attrgetter(path.removeprefix("message."))
    if path == "actor.id":
        return lambda r: r.actor.id if r.actor is not None else None
    if head == "meta" or (head == "message" and rest.startswith("headers.")):
        key = rest if head == "meta" else rest.removeprefix("headers.")
        return lambda r: r.headers.get(key)
    return lambda r: r.value(path)


def _actor_value(actor: Actor | None, rest: str) -> Any:
    if not rest:
        return ActorView(actor.id, dict(actor.meta), actor.tenant) if actor else None
    if actor is None:
        return None
    if rest == "id":
        return actor.id
    if rest.startswith("meta."):
        return actor.meta.get(rest.removeprefix("meta."))
    return None


@dataclass(frozen=True, slots=True)
class ActorView:
    """The whole actor as a Casbin ABAC matcher sees it: ``r.sub.id``, ``r.sub.tenant``."""

    id: str
    meta: dict[str, Any]
    tenant: str | None


@dataclass(frozen=True, slots=True)
class MessageView:
    """The whole message for ABAC matchers: ``r.obj.tenant``, ``r.obj.publisher``."""

    headers: dict[str, Any]
    publisher: str | None
    tenant: str | None


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    #: ``policy`` (a rule decided), ``no_allow``, ``strict_mode``, ``forged_provenance``, ``error``
    reason: str
    policy: str | None = None
    rule: tuple[str, ...] = ()
    error: str | None = None

    def describe(self) -> str:
        verdict = "allow" if self.allowed else "deny"
        text = f"{verdict} ({self.reason})"
        if self.policy:
            text += f" by {self.policy}"
        if self.rule:
            text += f" rule [{', '.join(self.rule)}]"
        if self.error:
            text += f": {self.error}"
        return text


NO_ALLOW = Decision(False, "no_allow")
