"""A scope: the policies an actor acts under, combined into one decision.

Deny overrides allow; no allow is a deny; an error while deciding is a deny.
Decisions are cached per scope, keyed by everything the request's answer depends
on (only when every such value is a plain value), and dropped on ``clear``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Hashable, Sequence

from wippy_queue.errors import WippyQueueError
from wippy_queue.identity import NO_ALLOW, Decision, Request
from wippy_queue.security.units import PolicyUnit, Verdict

log = logging.getLogger(__name__)

CACHE_LIMIT = 50_000


class Scope:
    def __init__(self, name: str, units: Sequence[PolicyUnit]) -> None:
        self.name = name
        self.units = tuple(units)
        self._cache: dict[Hashable, Decision] = {}
        #: decisions asked for, and how many the cache answered
        self.checks = 0
        self.hits = 0

    @property
    def policies(self) -> tuple[str, ...]:
        return tuple(p for unit in self.units for p in unit.policies)

    def clear(self) -> None:
        self._cache.clear()

    def replace(self, units: Sequence[PolicyUnit]) -> None:
        """Decide with ``units`` from now on (a policy reload); cached decisions go."""
        self.units = tuple(units)
        self._cache.clear()

    def check(self, request: Request) -> Decision:
        self.checks += 1
        try:
            key = self._key(request)
            if key is not None:
                cached = self._cache.get(key)
                if cached is not None:
                    self.hits += 1
                    return cached
            decision = self._decide(request)
        except WippyQueueError as err:  # ours says what is wrong: no traceback
            log.error("scope %s: deciding %s failed: %s", self.name, request.action, err)
            return Decision(False, "error", error=f"{type(err).__name__}: {err}")
        except Exception as err:  # fail closed, never cached
            log.exception("scope %s: deciding %s failed", self.name, request.action)
            return Decision(False, "error", error=f"{type(err).__name__}: {err}")
        if key is not None:
            if len(self._cache) >= CACHE_LIMIT:
                self._evict()
            self._cache[key] = decision
        return decision

    def _evict(self) -> None:
        """Drop the older half (insertion order): a flood of one-off keys (a header
        that differs per message) cannot flush the decisions asked all the time."""
        for key in list(itertools.islice(self._cache, len(self._cache) // 2 or 1)):
            del self._cache[key]

    def _key(self, request: Request) -> Hashable | None:
        actor = request.actor
        if len(self.units) == 1:  # the common case, without the list
            part = self.units[0].cache_key(request)
            if part is None:
                return None
            return (request.action, request.resource, actor.id if actor else None, part)
        parts: list[Hashable] = [
            request.action,
            request.resource,
            actor.id if actor is not None else None,
        ]
        for unit in self.units:
            part = unit.cache_key(request)
            if part is None:
                return None
            parts.append(part)
        return tuple(parts)

    def _decide(self, request: Request) -> Decision:
        allow: Verdict | None = None
        for unit in self.units:
            verdict = unit.decide(request)
            if verdict.effect == "deny":
                return Decision(False, "policy", verdict.policy, verdict.rule)
            if verdict.effect == "allow" and allow is None:
                allow = verdict
        if allow is not None:
            return Decision(True, "policy", allow.policy, allow.rule)
        return NO_ALLOW
