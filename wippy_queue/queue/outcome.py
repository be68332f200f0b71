"""What should happen to a delivery once its handler (or a middleware) is done."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outcome:
    """``ack`` or a nack with the reason recorded in logs, audit and dead-letter headers.

    Reasons: ``handler_error``, ``returned_false``, ``timeout``, ``decode_error``,
    ``nack`` (explicit), ``permission_denied``, ``forged_provenance``, ``middleware_error``.
    """

    ack: bool
    reason: str = ""
    error: str | None = None
    #: seconds before the message is offered again; None means the consumer's default
    delay_s: float | None = None

    @classmethod
    def nack(cls, reason: str, error: str | None = None, delay_s: float | None = None) -> Outcome:
        return cls(False, reason, error, delay_s)


ACK = Outcome(True, "ack")
