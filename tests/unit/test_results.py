"""How a handler's return value maps to ack or nack (Wippy's documented rule)."""

from __future__ import annotations

from typing import Any

import pytest

from wippy_queue.queue.handler import outcome_of


@pytest.mark.parametrize(
    ("result", "ack", "reason"),
    [
        ({"ok": 1}, True, "ack"),
        (None, True, "ack"),
        (0, True, "ack"),
        ("", True, "ack"),
        ((None, None), True, "ack"),
        (False, False, "returned_false"),
        ((None, "boom"), False, "handler_error"),
        ((None, ""), False, "handler_error"),
        (("value", "ignored"), True, "ack"),
    ],
)
def test_result_mapping(result: Any, ack: bool, reason: str) -> None:
    outcome = outcome_of(result)
    assert (outcome.ack, outcome.reason) == (ack, reason)
