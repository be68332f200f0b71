"""Turns decisions and outcomes into audit records.

One record per consume (the decision AND what happened to the message), written
before the message is settled; one per publish decision; one per policy reload.
"""

from __future__ import annotations

import asyncio
from typing import Any

from wippy_queue.queue.middleware import Job
from wippy_queue.queue.outcome import Outcome
from wippy_queue.security.audit.trail import AuditTrail
from wippy_queue.security.request import Request
from wippy_queue.security.scope import Decision

UNCHECKED = Decision(True, "unchecked")


def _decision_fields(decision: Decision, request: Request | None) -> dict[str, Any]:
    actor = request.actor if request else None
    fields: dict[str, Any] = {
        "decision": "allow" if decision.allowed else "deny",
        "reason": decision.reason,
        "actor": actor.id if actor else None,
        "tenant": actor.tenant if actor else None,
        "publisher": request.publisher if request else None,
        "publisher_tenant": request.tenant if request else None,
        "policy": decision.policy,
        "rule": list(decision.rule),
    }
    if decision.error:
        fields["decision_error"] = decision.error
    return fields


class AuditRecorder:
    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail
        self.gate: asyncio.Event | None = trail.gate

    async def before_settle(
        self, job: Job, outcome: Outcome, action: str, duration_s: float
    ) -> None:
        decision, request = job.decision or (UNCHECKED, None)
        await self.trail.record(
            {
                "event": "consume",
                "action": "queue.consume",
                **_decision_fields(decision, request),
                "consumer": job.consumer_id,
                "queue": job.queue_id,
                "message_id": job.message.id,
                "attempt": job.attempt,
                "outcome": action,
                "outcome_reason": None if outcome.ack else outcome.reason,
                "error": outcome.error,
                "duration_ms": round(duration_s * 1000, 3),
            }
        )

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
        self.trail.append(
            {
                "event": event,
                **_decision_fields(decision, request),
                "action": request.action if request else None,
                "consumer": consumer,
                "queue": queue,
                "message_id": message_id,
            }
        )

    def policy_reload(
        self, policy: str, file: str, old: str, new: str, applied: bool, error: str | None
    ) -> None:
        self.trail.append(
            {
                "event": "policy_reload",
                "policy": policy,
                "file": file,
                "old_digest": old,
                "new_digest": new,
                "result": "applied" if applied else "refused",
                "error": error,
            }
        )
