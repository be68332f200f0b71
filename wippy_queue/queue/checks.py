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
