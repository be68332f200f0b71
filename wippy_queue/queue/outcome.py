"""What a handler run came to (``Outcome``, ``Reason``) and what settling does (``Action``).

Value types only: the settle rules are in ``queue/settle.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    """Why a message was not acked (in logs, audit records and dead-letter headers)."""

    HANDLER_ERROR = "handler_error"
    RETURNED_FALSE = "returned_false"
    TIMEOUT = "timeout"
    DECODE_ERROR = "decode_error"
    NACK = "nack"  # the handler called nack()
    PERMISSION_DENIED = "permission_denied"
    FORGED_PROVENANCE = "forged_provenance"
    STALE_PROVENANCE = "stale_provenance"  # signed longer ago than max_message_age
    MIDDLEWARE_ERROR = "middleware_error"
    EXPIRED = "expired"  # its queue's ttl ran out before a handler took it


#: outcomes no retry can change: dead-lettered (or, with no dead-letter queue, dropped)
#: at once. A stale stamp only gets older; freshness is checked at a first delivery.
FINAL = frozenset((Reason.EXPIRED, Reason.STALE_PROVENANCE))

#: reasons a consumer's policy decided
DENIALS = frozenset((Reason.PERMISSION_DENIED, Reason.FORGED_PROVENANCE, Reason.STALE_PROVENANCE))
#: reasons retried with the deny back-off: the next attempt would fail the same way at
#: once (a denial, a message that cannot be decoded, the security check failing), so
#: without it a message no consumer can take would spin the CPU
BACKED_OFF = DENIALS | {Reason.DECODE_ERROR, Reason.MIDDLEWARE_ERROR}


@dataclass(frozen=True, slots=True)
class Outcome:
    """``ack``, or a nack with the reason recorded in logs, audit and dead-letter headers."""

    ack: bool
    reason: str = ""
    error: str | None = None
    #: seconds before the message is offered again; None: the retry policy decides
    delay_s: float | None = None

    @classmethod
    def nack(
        cls, reason: Reason, error: str | None = None, delay_s: float | None = None
    ) -> Outcome:
        return cls(False, reason, error, delay_s)


ACK = Outcome(True, "ack")


class Action(StrEnum):
    """What settling an outcome does to the delivery."""

    ACK = "ack"
    NACK = "nack"  # back to the queue, attempt counted
    DEAD_LETTER = "dead_letter"
    DROP = "drop"  # removed unhandled (an expired message with no dead-letter queue)
