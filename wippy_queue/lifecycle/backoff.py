"""Restart delays that really grow: initial * factor^(n-1), capped, with jitter."""

from __future__ import annotations

import random

from wippy_queue.lifecycle.config import RestartPolicy


def restart_delay(policy: RestartPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before restart number ``attempt`` (1-based), never above max_delay."""
    try:
        base = policy.initial_delay * policy.backoff_factor ** max(attempt - 1, 0)
    except OverflowError:  # a service retried forever reaches huge attempt numbers
        base = policy.max_delay
    base = min(base, policy.max_delay)
    if policy.jitter:
        spread = base * policy.jitter
        base += (rng or random).uniform(-spread, spread)
    return min(max(base, 0.0), policy.max_delay)  # max_delay is a ceiling, jitter included
