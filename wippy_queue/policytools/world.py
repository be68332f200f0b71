"""Everything the runtime can ever ask about, given a registry (for lint).

Actions and resources come from the guards (``query.ASKED``); actors, tenants and
publishers from the consumers' ``lifecycle.security`` blocks, since only a
consumer's handler calls run as an actor. A missing value reaches a Casbin model
as ``""``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from wippy_queue.policytools.query import ASKED
from wippy_queue.queue.config import ConsumerConfig
from wippy_queue.registry.registry import Registry
from wippy_queue.security.manager import actor_of, policies_of


@dataclass(frozen=True, slots=True)
class World:
    queues: tuple[str, ...]
    actor_ids: tuple[str, ...]
    tenants: tuple[str, ...]
    #: consumer id -> the policy ids of its scope
    scopes: Mapping[str, tuple[str, ...]]

    @classmethod
    def of(cls, registry: Registry) -> World:
        actor_ids: list[str] = []
        tenants: list[str] = []
        scopes: dict[str, tuple[str, ...]] = {}
        for entry in registry.of_kind("queue.consumer"):
            assert isinstance(entry.config, ConsumerConfig)
            block = entry.config.lifecycle.security
            if block is None:
                continue
            scopes[entry.id] = tuple(policies_of(registry, block))
            actor = actor_of(block)
            if actor is not None:
                actor_ids.append(actor.id)
                if actor.tenant is not None:
                    tenants.append(actor.tenant)
        queues = tuple(e.id for e in registry.of_kind("queue.queue"))
        return cls(queues, tuple(dict.fromkeys(actor_ids)), tuple(dict.fromkeys(tenants)), scopes)

    def pairs(self) -> set[tuple[str, str]]:
        """Every (action, resource) the guards ask."""
        return {
            (action, resource)
            for action, fixed in ASKED.items()
            for resource in ((fixed,) if fixed is not None else self.queues)
        }

    def values(self, path: str) -> tuple[tuple[str, ...], str] | None:
        """The values ``path`` can take and where they come from; None when not known."""
        if path == "action":
            return tuple(ASKED), "the actions the runtime asks"
        if path == "resource":
            return ("", *self.queues), "'' (queue.publish) and the queue IDs"
        if not self.actor_ids:
            return None  # no consumer has an actor: nothing to compare against
        if path in ("actor.id", "message.publisher"):
            return ("", *self.actor_ids), "the consumers' actor ids"
        if path in ("actor.meta.tenant", "message.tenant"):
            return ("", *self.tenants), "the tenants of the consumers' actors"
        return None

    def users_of(self, policy: str) -> list[str]:
        """The consumers whose scope includes ``policy``."""
        return [consumer for consumer, ids in self.scopes.items() if policy in ids]
