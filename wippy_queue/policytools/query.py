"""One question for the real decision path, asked the way the runtime's guards ask it.

A query names either a consumer (its ``lifecycle.security`` block applies: actor,
policies and groups) or an actor with policies and/or groups. ``ask`` builds the
scope with ``Security.scope_for`` and decides with ``Scope.check``, mirroring
``ConsumeGuard`` and ``PublishGuard``: a consumer without a security block runs
unchecked (denied in strict mode), publish checks carry the publishing actor as
the publisher, and ``queue.publish`` is asked on the resource ``""``. A consume
query's publisher without a tenant gets the tenant the runtime would stamp: that
of the consumers' actor with that id.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from wippy_queue.errors import WippyQueueError
from wippy_queue.identity import Actor, Decision, Request
from wippy_queue.lifecycle.config import SecurityBlock
from wippy_queue.loading import load
from wippy_queue.policytools.hints import did_you_mean, listing
from wippy_queue.queue.config import ConsumerConfig
from wippy_queue.queue.message import PUBLISHER, PUBLISHER_TENANT
from wippy_queue.registry.registry import Registry
from wippy_queue.security.guard import CONSUME, PUBLISH_CHECKS, STRICT_DENY, UNCHECKED
from wippy_queue.security.manager import POLICY_KINDS, Security, actor_of, policies_of
from wippy_queue.security.models import CasbinPolicyConfig, WippyPolicyConfig
from wippy_queue.security.provenance import SIGNATURE
from wippy_queue.security.scope import Scope

#: Every action the runtime asks, and its resource: a fixed one, or None for a queue ID.
ASKED: Mapping[str, str | None] = MappingProxyType({CONSUME: None, **dict(PUBLISH_CHECKS)})


def load_security(paths: Iterable[str | os.PathLike[str]], *, strict: bool | None) -> Security:
    """The security a runtime would build from these entry files (no handler is loaded);
    ConfigError lists every problem. Casbin files are read once, by the load check."""
    loaded = load(paths)
    return Security(loaded.registry, strict=strict, load_casbin=loaded.casbin.take)


@dataclass(frozen=True, slots=True)
class Query:
    """Who asks (``consumer``, or ``actor`` + ``policies``/``groups``) to do what."""

    action: str
    resource: str | None = None
    consumer: str | None = None
    actor: Actor | None = None
    policies: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    headers: Mapping[str, Any] = field(default_factory=dict)
    publisher: str | None = None
    publisher_tenant: str | None = None


class QueryError(WippyQueueError):
    """A query the runtime could never ask; ``problems`` holds (field, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))


@dataclass(frozen=True, slots=True)
class Answer:
    query: Query
    request: Request
    decision: Decision
    #: None when no policy is consulted (an unchecked consumer, strict mode)
    scope: Scope | None


def ask(security: Security, query: Query) -> Answer:
    """Decide ``query`` exactly as the runtime would; QueryError if it never would ask it."""
    query = resolve(security.registry, query)
    actor, scope, checked = _subject(security, query)
    if query.action == CONSUME:
        request = Request(
            query.action,
            query.resource or "",
            actor,
            dict(query.headers),
            query.publisher,
            query.publisher_tenant,
        )
        if scope is None:
            decision = STRICT_DENY if security.strict else UNCHECKED
        elif security.strict and actor is None:
            decision = STRICT_DENY
        else:
            decision = scope.check(request)
        return Answer(query, request, decision, None if decision is STRICT_DENY else scope)
    publisher = actor.id if actor else None
    tenant = actor.tenant if actor else None
    request = Request(
        query.action, query.resource or "", actor, dict(query.headers), publisher, tenant
    )
    if not checked or scope is None:
        return Answer(query, request, STRICT_DENY if security.strict else UNCHECKED, None)
    return Answer(query, request, scope.check(request), scope)


def _subject(security: Security, query: Query) -> tuple[Actor | None, Scope | None, bool]:
    if query.consumer is not None:
        context = security.consumer_context(security.registry.get(query.consumer))
        return context["actor"], context["scope"], context["checked"]
    block = SecurityBlock.model_validate(
        {"policies": list(query.policies), "groups": list(query.groups)}
    )
    name = f"actor {query.actor.id}" if query.actor else "no actor"
    return query.actor, security.scope_for(name, policies_of(security.registry, block)), True


def resolve(registry: Registry, query: Query) -> Query:
    """``query`` with its default resource filled in; QueryError listing every problem."""
    problems: list[tuple[str, str]] = []
    if query.action not in ASKED:
        problems.append(
            (
                "action",
                f"the runtime never asks {query.action!r}; it asks {listing(ASKED)}"
                + did_you_mean(query.action, ASKED),
            )
        )
    if query.consumer is not None:
        problems += _consumer_problems(registry, query)
    else:
        problems += _policy_problems(registry, query)
    resource, resource_problems = _resource(registry, query)
    problems += resource_problems
    if query.action != CONSUME and (query.publisher or query.publisher_tenant):
        problems.append(
            (
                "publisher",
                "a publish check always carries the publishing actor as the publisher; "
                "drop 'publisher' and 'publisher_tenant'",
            )
        )
    stamps = [h for h in (PUBLISHER, PUBLISHER_TENANT, SIGNATURE) if h in query.headers]
    if stamps:
        problems.append(
            (
                "headers",
                f"{', '.join(stamps)}: the runtime's provenance stamp, never taken from a "
                "publisher's headers; say who published with 'publisher' and "
                "'publisher_tenant' (--publisher, --publisher-tenant)",
            )
        )
    if query.publisher_tenant is not None and query.publisher is None:
        problems.append(
            (
                "publisher_tenant",
                "a publisher tenant without a publisher is a forged stamp; add 'publisher'",
            )
        )
    if problems:
        raise QueryError(problems)
    tenant = query.publisher_tenant
    if query.publisher is not None and tenant is None:
        tenant = _tenant_of(registry, query.publisher)
    return dataclasses.replace(query, resource=resource, publisher_tenant=tenant)


def _tenant_of(registry: Registry, actor_id: str) -> str | None:
    """The tenant the runtime stamps for a publisher: its actor's, when the registry agrees."""
    tenants = set()
    for entry in registry.of_kind("queue.consumer"):
        assert isinstance(entry.config, ConsumerConfig)
        actor = actor_of(entry.config.lifecycle.security)
        if actor is not None and actor.id == actor_id:
            tenants.add(actor.tenant)
    return tenants.pop() if len(tenants) == 1 else None


def _consumer_problems(registry: Registry, query: Query) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    consumers = [e.id for e in registry.of_kind("queue.consumer")]
    if query.consumer not in consumers:
        problems.append(
            (
                "consumer",
                f"no consumer {query.consumer!r}; consumers: {listing(consumers)}"
                + did_you_mean(str(query.consumer), consumers),
            )
        )
    if query.actor is not None or query.policies or query.groups:
        problems.append(
            (
                "consumer",
                "a consumer brings its own actor, policies and groups (its lifecycle.security); "
                "give either 'consumer' or 'actor' with 'policies'/'groups', not both",
            )
        )
    return problems


def _policy_problems(registry: Registry, query: Query) -> list[tuple[str, str]]:
    if not query.policies and not query.groups:
        return [
            (
                "policies",
                "name a 'consumer', or the 'policies' and/or 'groups' the actor acts under",
            )
        ]
    problems: list[tuple[str, str]] = []
    known = [e.id for kind in POLICY_KINDS for e in registry.of_kind(kind)]
    for pid in query.policies:
        if pid not in known:
            problems.append(
                (
                    "policies",
                    f"no policy {pid!r}; policies: {listing(known)}" + did_you_mean(pid, known),
                )
            )
    declared = {
        g
        for e in registry
        if isinstance(e.config, WippyPolicyConfig | CasbinPolicyConfig)
        for g in e.config.groups
    }
    for group in query.groups:
        if group not in declared:
            problems.append(
                (
                    "groups",
                    f"no policy declares group {group!r}; groups: {listing(declared)}"
                    + did_you_mean(group, declared),
                )
            )
    return problems


def _resource(registry: Registry, query: Query) -> tuple[str | None, list[tuple[str, str]]]:
    if query.action not in ASKED:
        return query.resource, []
    fixed = ASKED[query.action]
    if fixed is not None:
        if query.resource not in (None, fixed):
            return query.resource, [
                (
                    "resource",
                    f"the runtime asks {query.action} on the resource {fixed!r} (the queue is "
                    f"checked by queue.publish.queue); drop 'resource' or write {fixed!r}",
                )
            ]
        return fixed, []
    queues = [e.id for e in registry.of_kind("queue.queue")]
    own = _consumer_queue(registry, query.consumer)
    resource = query.resource
    if resource is None:
        if query.consumer is not None and query.action == CONSUME:
            return own, []  # an unknown consumer is reported on its own
        return None, [("resource", f"{query.action} needs 'resource': a queue ID")]
    if resource not in queues:
        return resource, [
            (
                "resource",
                f"{resource!r} is not a queue; queues: {listing(queues)}"
                + did_you_mean(resource, queues),
            )
        ]
    if own is not None and query.action == CONSUME and resource != own:
        return resource, [
            (
                "resource",
                f"consumer {query.consumer} consumes {own}; the runtime never asks it about "
                f"{resource} (drop 'resource' or name the consumer of {resource})",
            )
        ]
    return resource, []


def _consumer_queue(registry: Registry, consumer: str | None) -> str | None:
    if consumer is None or consumer not in registry:
        return None
    config = registry.get(consumer).config
    return config.queue if isinstance(config, ConsumerConfig) else None
