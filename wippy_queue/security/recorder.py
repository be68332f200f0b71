"""Where security decisions and consume outcomes are reported (the audit trail plugs in here)."""

from __future__ import annotations

from typing import Protocol

from wippy_queue.identity import Decision, Request


class Recorder(Protocol):
    def decision(
        self,
        event: str,
        decision: Decision,
        request: Request | None,
        *,
        consumer: str | None,
        queue: str,
        message_id: str,
        attempt: int,
    ) -> None:
        """A consume or publish decision was made."""
