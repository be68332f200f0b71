"""Whole-registry checks of queues and consumers: what loads, but will hurt when it runs."""

from __future__ import annotations

from collections.abc import Iterator

from wippy_queue.errors import Problem
from wippy_queue.queue.config import ConsumerConfig, QueueConfig
from wippy_queue.registry.registry import Registry


def warn_no_dead_letter(registry: Registry) -> Iterator[Problem]:
    """A consumed queue with no ``dead_letter``: a message its handler always fails on
    is retried forever, and only the log says so."""
    consumed: dict[str, str] = {}
    for entry in registry.of_kind("queue.consumer"):
        assert isinstance(entry.config, ConsumerConfig)
        consumed.setdefault(entry.config.queue, entry.id)
    for queue in registry.of_kind("queue.queue"):
        assert isinstance(queue.config, QueueConfig)
        if queue.id not in consumed or queue.config.dead_letter is not None:
            continue
        delay = queue.config.retry_delay
        every = f"every {delay.max:g}s at most" if delay.max > 0 else "at once, in a tight loop"
        yield Problem(
            f"consumed by {consumed[queue.id]} but has no dead_letter: a message its handler "
            f"always fails on is retried forever ({every}); add "
            "dead_letter: {queue: ..., max_attempts: 5}",
            queue.location.file,
            queue.location.line,
            queue.id,
            "dead_letter",
            severity="warning",
        )


def refuse_auto_ack_audited(
    registry: Registry, *, audit_given: str | None = None, strict: bool | None = None
) -> Iterator[Problem]:
    """``auto_ack`` acks a message on delivery, before any check: under a ``security``
    block (or in strict mode, which denies a consumer without one) a denied message
    would be acked (gone) and, with an audit trail, acked before its record is
    written. Refused at load. ``audit_given`` names where an audit file was given
    outside the entries (``--audit``); ``strict`` overrides the entries' setting."""
    audits = registry.of_kind("security.audit")
    audit = audit_given or (audits[0].id if audits else None)
    if strict is None:
        settings = registry.of_kind("security.settings")
        strict = bool(settings) and getattr(settings[0].config, "strict", False) is True
    for entry in registry.of_kind("queue.consumer"):
        assert isinstance(entry.config, ConsumerConfig)
        why = _auto_ack_refused(entry.config, audit, strict)
        if why is None:
            continue
        yield Problem(
            f"auto_ack: true is refused: {why}; remove auto_ack (the default acks once the "
            "handler returns, after the check and the audit record)",
            entry.location.file,
            entry.location.line_of("auto_ack"),
            entry.id,
            "auto_ack",
        )


def _auto_ack_refused(config: ConsumerConfig, audit: str | None, strict: bool) -> str | None:
    if not config.auto_ack:
        return None
    if config.lifecycle.security is not None:
        return "under a security block a denied message would be acked on delivery and lost"
    if strict:
        return (
            "strict mode denies a consumer without a security block every message, which "
            "auto_ack would ack on delivery and lose"
        )
    if audit is not None:
        return (
            f"with the audit trail on ({audit}) a message would be acked before its record "
            "is written"
        )
    return None
