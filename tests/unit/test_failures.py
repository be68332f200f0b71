"""How a consumer logs failures: a traceback once per distinct error, the handler's first."""

from __future__ import annotations

import logging

import pytest

from wippy_queue.errors import HandlerError
from wippy_queue.queue.failures import FailureLog, error_key, trimmed_traceback
from wippy_queue.registry.types import parse_duration


def _raised_in_our_code() -> ValueError:
    """A ValueError raised inside the package, its traceback starting there (no frame of
    this file): as if the runtime itself had failed."""
    try:
        parse_duration("soon")
    except ValueError as err:
        assert err.__traceback__ is not None
        err.__traceback__ = err.__traceback__.tb_next
        return err
    raise AssertionError("parse_duration accepted 'soon'")


def test_a_bug_of_ours_keeps_its_frames_and_a_handler_error_drops_them() -> None:
    ours = _raised_in_our_code()
    assert 'wippy_queue/registry/types.py", line' in trimmed_traceback(ours)
    wrapped = HandlerError("the handler failed")
    wrapped.__traceback__ = ours.__traceback__
    assert trimmed_traceback(wrapped) == "wippy_queue.errors.HandlerError: the handler failed"


def test_a_chained_cause_is_trimmed_too_and_its_text_does_not_make_it_another_error() -> None:
    def handler(n: int) -> None:
        try:
            parse_duration(f"{n} fortnights")
        except ValueError as err:
            raise RuntimeError(f"bad input {n}") from err

    errors = []
    for n in (1, 2):
        try:
            handler(n)
        except RuntimeError as err:
            errors.append(err)
    assert error_key(errors[0]) == error_key(errors[1])  # same place, other text
    trace = trimmed_traceback(errors[0])
    assert trace.count("Traceback (most recent call last):") == 2
    assert "in handler" in trace and "The above exception was the direct cause" in trace


def test_the_same_error_logs_one_line_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    failures = FailureLog("app:worker", logging.getLogger("wippy_queue.test"))
    with caplog.at_level(logging.ERROR, logger="wippy_queue.test"):
        for message_id in ("m1", "m2", "m3"):
            failures.handler_failed(message_id, _raised_in_our_code(), traceback_=True)
        failures.handler_failed("m4", HandlerError("a publish refused"), traceback_=False)
    first, second, third, own = caplog.records
    assert "traceback" in first.fields  # type: ignore[attr-defined]
    assert second.getMessage().endswith(
        "ValueError: 'soon' is not a duration; write e.g. 10s, 500ms, 1m30s or 2h "
        "(same error as before, seen 2 times; its traceback is logged once)"
    )
    assert "seen 3 times" in third.getMessage()
    assert not hasattr(own, "fields")
