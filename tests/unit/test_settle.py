"""The retry policy: what a failed attempt becomes, and how long it waits."""

from __future__ import annotations

from wippy_queue.queue.outcome import ACK, Action, Outcome, Reason
from wippy_queue.queue.settle import RetryPolicy


class _Queue:  # only its presence matters to the policy
    pass


def test_a_denial_backs_off_doubling_to_its_cap() -> None:
    policy = RetryPolicy(deny_initial_s=0.02, deny_max_s=0.05)
    denied = Outcome.nack(Reason.PERMISSION_DENIED)
    assert [policy.delay_s(n, denied) for n in range(1, 6)] == [0.02, 0.04, 0.05, 0.05, 0.05]
    assert policy.delay_s(1, Outcome.nack(Reason.HANDLER_ERROR, delay_s=3.0)) == 3.0


def test_dead_letter_at_max_attempts_and_final_outcomes_at_once() -> None:
    policy = RetryPolicy(dead_letter=_Queue(), max_attempts=3)  # type: ignore[arg-type]
    failed = Outcome.nack(Reason.HANDLER_ERROR)
    assert [policy.action(n, failed) for n in (1, 2, 3)] == [
        Action.NACK,
        Action.NACK,
        Action.DEAD_LETTER,
    ]
    assert policy.action(1, ACK) is Action.ACK
    for final in (Reason.EXPIRED, Reason.STALE_PROVENANCE):
        assert policy.action(1, Outcome.nack(final)) is Action.DEAD_LETTER
        assert RetryPolicy().action(1, Outcome.nack(final)) is Action.DROP  # nowhere to go
