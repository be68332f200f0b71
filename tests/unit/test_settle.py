"""The retry policy: what a failed attempt becomes, and how long it waits."""

from __future__ import annotations

from random import Random

import pytest
from pydantic import ValidationError

from wippy_queue.queue.config import RetryDelay
from wippy_queue.queue.outcome import ACK, Action, Outcome, Reason
from wippy_queue.queue.settle import RetryPolicy


class _Queue:  # only its presence matters to the policy
    pass


def test_a_denial_backs_off_doubling_to_its_cap() -> None:
    policy = RetryPolicy(deny_initial_s=0.02, deny_max_s=0.05)
    denied = Outcome.nack(Reason.PERMISSION_DENIED)
    assert [policy.delay_s(n, denied) for n in range(1, 6)] == [0.02, 0.04, 0.05, 0.05, 0.05]
    assert policy.delay_s(10**7, denied) == 0.05  # denied forever: no overflow
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


def test_a_failed_attempt_waits_a_delay_that_doubles_to_its_cap() -> None:
    policy = RetryPolicy(retry_initial_s=0.1, retry_max_s=1.0, retry_jitter=0.0)
    failed = Outcome.nack(Reason.HANDLER_ERROR)
    delays = [policy.delay_s(n, failed) for n in range(1, 7)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert policy.delay_s(10**7, failed) == 1.0  # a message retried forever: no overflow
    for reason in (Reason.RETURNED_FALSE, Reason.TIMEOUT, Reason.NACK):
        assert policy.delay_s(2, Outcome.nack(reason)) == 0.2


def test_the_default_retry_delay_is_100ms_doubling_to_30s() -> None:
    policy = RetryPolicy(retry_jitter=0.0)
    assert [policy.retry_delay_s(n) for n in (1, 2, 3, 9, 10)] == [0.1, 0.2, 0.4, 25.6, 30.0]


def test_jitter_spreads_each_delay_within_its_share_and_never_past_the_cap() -> None:
    policy = RetryPolicy(retry_initial_s=1.0, retry_max_s=4.0, retry_jitter=0.25, rng=Random(7))
    firsts = [policy.retry_delay_s(1) for _ in range(200)]
    assert all(0.75 <= d <= 1.25 for d in firsts)
    assert len(set(firsts)) > 100  # spread: messages that failed together come back apart
    capped = [policy.retry_delay_s(9) for _ in range(200)]
    assert all(3.0 <= d <= 4.0 for d in capped)


def test_retry_delay_zero_requeues_at_once_and_an_explicit_delay_wins() -> None:
    immediate = RetryPolicy(retry_initial_s=0.0, retry_max_s=0.0, retry_jitter=0.0)
    failed = Outcome.nack(Reason.HANDLER_ERROR)
    assert [immediate.delay_s(n, failed) for n in range(1, 5)] == [0.0] * 4
    growing = RetryPolicy(retry_jitter=0.0)
    assert growing.delay_s(3, Outcome.nack(Reason.NACK, delay_s=7.0)) == 7.0
    assert growing.delay_s(3, Outcome.nack(Reason.NACK, delay_s=0.0)) == 0.0


def test_denials_keep_their_back_off_whatever_the_retry_delay() -> None:
    policy = RetryPolicy(deny_initial_s=0.02, deny_max_s=0.05, retry_initial_s=0.0, retry_max_s=0.0)
    for reason in (Reason.PERMISSION_DENIED, Reason.DECODE_ERROR, Reason.MIDDLEWARE_ERROR):
        assert [policy.delay_s(n, Outcome.nack(reason)) for n in (1, 2, 3)] == [0.02, 0.04, 0.05]


def test_retry_delay_is_a_duration_or_a_growth_and_max_is_not_below_initial() -> None:
    assert RetryDelay.model_validate(0) == RetryDelay(initial=0, max=0, jitter=0.0)
    assert RetryDelay.model_validate("2s") == RetryDelay(initial=2, max=2, jitter=0.0)
    assert RetryDelay() == RetryDelay(initial=0.1, max=30, factor=2.0, jitter=0.1)
    grown = RetryDelay.model_validate({"initial": "50ms", "max": "1m", "jitter": 0})
    assert (grown.initial, grown.max, grown.jitter) == (0.05, 60.0, 0.0)
    with pytest.raises(ValidationError, match=r"max \(1s\) is below initial \(5s\)"):
        RetryDelay.model_validate({"initial": "5s", "max": "1s"})
    for bad in (True, "soon", "-1s", {"factor": 0.5}, {"jitter": 2}, {"maximum": 3}):
        with pytest.raises(ValidationError):
            RetryDelay.model_validate(bad)
