"""Turns decisions and outcomes into audit records.

One ``attempt`` record before a handler runs (``RecordAttempt``: a handler never runs
unrecorded, even when the disk fills up), one record per consume (the decision AND
what happened to the message), written before the message is settled; one per
publish decision; one per policy reload.
Fields without a value (no actor, no error, ...) are left out of the record.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Hashable
from typing import Any

from wippy_queue.audit.chain import encode, fragment
from wippy_queue.audit.trail import AuditTrail, AuditUnavailable
from wippy_queue.identity import Decision, Request
from wippy_queue.queue.middleware import CallNext, Job, Middleware
from wippy_queue.queue.outcome import Action, Outcome, Reason

UNCHECKED = Decision(True, "unchecked")
_UNCHECKED = (UNCHECKED, None)
#: message ids that need no JSON escaping (ours are UUID4s) skip the encoder
_PLAIN_ID = re.compile(r"[0-9A-Za-z_.:-]+").fullmatch


def _decision(record: dict[str, Any], decision: Decision, request: Request | None) -> None:
    record["decision"] = "allow" if decision.allowed else "deny"
    record["reason"] = decision.reason
    if request is not None:
        actor = request.actor
        if actor is not None:
            record["actor"] = actor.id
            if actor.tenant is not None:
                record["tenant"] = actor.tenant
        if request.publisher is not None:
            record["publisher"] = request.publisher
        if request.tenant is not None:
            record["publisher_tenant"] = request.tenant
    if decision.policy is not None:
        record["policy"] = decision.policy
        record["rule"] = list(decision.rule)
    if decision.error:
        record["decision_error"] = decision.error


MEMO_LIMIT = 10_000


class AuditRecorder:
    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail
        self.gate: asyncio.Event | None = trail.gate
        #: encoded JSON members reused across records (decisions repeat: they are cached)
        self._memo: dict[Hashable, tuple[Decision, str]] = {}

    def before_settle(
        self, job: Job, outcome: Outcome, action: Action, duration_s: float
    ) -> Awaitable[None] | None:
        """The consume record (decision and outcome); written before the settle.

        Encoded by hand around memoised parts: it is written once per message.
        """
        decision, request = job.decision or _UNCHECKED
        # A consumer's actor and queue are fixed: the decision and the verified
        # publisher are all that vary in this part of the record. Decisions are
        # keyed by identity (they are cached objects); the memo holds each decision,
        # so an id is never reused while its entry lives.
        if request is None:
            key: Hashable = (id(decision), job.consumer_id)
        else:
            key = (id(decision), job.consumer_id, request.publisher, request.tenant)
        hit = self._memo.get(key)
        if hit is None or hit[0] is not decision:
            hit = self._remember(key, decision, request, job)
        message_id = job.message.id
        quoted = f'"{message_id}"' if _PLAIN_ID(message_id) else encode(message_id)
        tail = (
            f',"message_id":{quoted},"attempt":{job.attempt}'
            f',"outcome":"{action}","duration_us":{int(duration_s * 1e6)}'
        )  # action: ack | nack | dead_letter, nothing to escape
        if not outcome.ack:
            tail += f',"outcome_reason":{encode(outcome.reason)}'
        if outcome.error:
            tail += f',"error":{encode(outcome.error)}'
        return self.trail.append_members(hit[1] + tail)

    def _remember(
        self, key: Hashable, decision: Decision, request: Request | None, job: Job
    ) -> tuple[Decision, str]:
        record: dict[str, Any] = {"event": "consume", "action": "queue.consume"}
        _decision(record, decision, request)
        record["consumer"] = job.consumer_id
        record["queue"] = job.queue_id
        if len(self._memo) >= MEMO_LIMIT:
            self._memo.clear()
        hit = self._memo[key] = (decision, fragment(record))
        return hit

    def lost(self, job: Job, action: Action, error: str) -> None:
        """A settle the broker no longer honoured (its record said it was done)."""
        self.trail.append(
            {
                "event": "lost_settle",
                "consumer": job.consumer_id,
                "queue": job.queue_id,
                "message_id": job.message.id,
                "attempt": job.attempt,
                "outcome": str(action),
                "error": error,
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
        record: dict[str, Any] = {"event": event}
        if request is not None:
            record["action"] = request.action
        _decision(record, decision, request)
        if consumer is not None:
            record["consumer"] = consumer
        record["queue"] = queue
        record["message_id"] = message_id
        self.trail.append(record)

    def policy_reload(
        self, policy: str, file: str, old: str, new: str, applied: bool, error: str | None
    ) -> None:
        record = {
            "event": "policy_reload",
            "policy": policy,
            "file": file,
            "old_digest": old,
            "new_digest": new,
            "result": "applied" if applied else "refused",
        }
        if error:
            record["error"] = error
        self.trail.append(record)


class RecordAttempt(Middleware):
    """The innermost step before the handler: an ``attempt`` record is handed to the OS
    (under ``fsync: always`` too; it is fsynced with the consume record that follows)
    before the handler runs. If it cannot be (disk full,
    file too large, the file lost), the handler does not run: the message is nacked,
    its settle is refused by the same trail, and it goes back to its queue untried."""

    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail
        #: the encoded start of a consumer's attempt records (its consumer and queue)
        self._heads: dict[tuple[str, str], str] = {}

    async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
        key = (job.consumer_id, job.queue_id)
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = fragment(
                {"event": "attempt", "consumer": job.consumer_id, "queue": job.queue_id}
            )
        message_id = job.message.id
        quoted = f'"{message_id}"' if _PLAIN_ID(message_id) else encode(message_id)
        members = f'{head},"message_id":{quoted},"attempt":{job.attempt}'
        try:
            self.trail.append_members(members, flush=True)
        except AuditUnavailable as err:
            return Outcome.nack(Reason.MIDDLEWARE_ERROR, f"not run: {err}")
        return await call_next(job)
