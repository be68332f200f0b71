"""Restart delays that really grow: initial * factor^(n-1), capped, with jitter."""

from __future__ import annotations

import random

from wippy_queue.registry.models import RestartPolicy


def restart_delay(policy: RestartPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before restart number ``attempt`` (1-based)."""
    base = policy.initial_delay * policy.backoff_factor ** max(attempt - 1, 0)
    base = min(base, policy.max_delay)
    if policy.jitter:
        spread = base * policy.jitter
        base += (rng or random).uniform(-spread, spread)
    return max(base, 0.0)
