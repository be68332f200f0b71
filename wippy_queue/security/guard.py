"""The security middleware (before each handler) and publish interceptor.

Both fail closed: an exception while deciding is a deny, with the error in the
log and the audit record.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from wippy_queue.errors import PermissionDenied
from wippy_queue.identity import Actor, Decision, Request
from wippy_queue.queue.context import CallContext
from wippy_queue.queue.message import Message
from wippy_queue.queue.middleware import CallNext, Job, Middleware
from wippy_queue.queue.outcome import Outcome, Reason
from wippy_queue.queue.queue import Queue
from wippy_queue.security.provenance import ForgedProvenance, StaleProvenance, Stamper
from wippy_queue.security.recorder import Recorder
from wippy_queue.security.scope import Scope
from wippy_queue.security.vocabulary import CONSUME as CONSUME
from wippy_queue.security.vocabulary import PUBLISH_CHECKS as PUBLISH_CHECKS

log = logging.getLogger(__name__)

STRICT_DENY = Decision(
    False, "strict_mode", error="strict mode denies calls without a security block"
)
UNCHECKED = Decision(True, "unchecked")


#: a decision's reason -> the nack's (and dead letter's) reason
_REASONS = {
    "forged_provenance": Reason.FORGED_PROVENANCE,
    "stale_provenance": Reason.STALE_PROVENANCE,
}


class ConsumeGuard(Middleware):
    def __init__(
        self,
        *,
        consumer_id: str,
        actor: Actor | None,
        scope: Scope | None,
        strict: bool,
        stamper: Stamper,
        trusted: bool = True,
    ) -> None:
        self.consumer_id = consumer_id
        self.actor = actor
        self.scope = scope
        self.strict = strict
        self.stamper = stamper
        #: only this process can have stamped its queue's messages (memory driver)
        self.trusted = trusted

    def decide(self, job: Job) -> tuple[Decision, Request | None]:
        try:
            provenance = self.stamper.verify(
                job.message, job.queue_id, attempt=job.attempt, trusted=self.trusted
            )
        except StaleProvenance as err:
            return Decision(False, "stale_provenance", error=str(err)), None
        except ForgedProvenance as err:
            return Decision(False, "forged_provenance", error=str(err)), None
        except Exception as err:
            return Decision(False, "error", error=f"{type(err).__name__}: {err}"), None
        request = Request(
            CONSUME,
            job.queue_id,
            self.actor,
            job.message.headers,
            provenance.publisher,
            provenance.tenant,
        )
        if self.scope is None:
            return (STRICT_DENY if self.strict else UNCHECKED), request
        if self.strict and self.actor is None:
            return STRICT_DENY, request
        return self.scope.check(request), request

    async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
        decision, request = self.decide(job)
        job.decision = (decision, request)
        if decision.allowed:
            return await call_next(job)
        reason = _REASONS.get(decision.reason, Reason.PERMISSION_DENIED)
        log.warning(
            "consumer %s denied message %s on %s: %s",
            self.consumer_id,
            job.message.id,
            job.queue_id,
            decision.describe(),
            extra={
                "fields": {
                    "consumer": self.consumer_id,
                    "message_id": job.message.id,
                    "actor": self.actor.id if self.actor else None,
                    "decision": reason,
                    "policy": decision.policy,
                    "rule": list(decision.rule),
                }
            },
        )
        # the retry policy backs a denied message off (see queue/settle.py)
        return Outcome.nack(reason, decision.describe())


class PublishGuard:
    """Checks ``queue.publish`` then ``queue.publish.queue``; stamps the publisher."""

    def __init__(
        self, *, strict: bool, stamper: Stamper, recorders: Sequence[Recorder] = ()
    ) -> None:
        self.strict = strict
        self.stamper = stamper
        self.recorders = recorders

    def _record(
        self,
        decision: Decision,
        request: Request | None,
        ctx: CallContext | None,
        queue: Queue,
        message: Message,
    ) -> None:
        for recorder in self.recorders:
            recorder.decision(
                "publish",
                decision,
                request,
                consumer=ctx.consumer if ctx else None,
                queue=queue.id,
                message_id=message.id,
                attempt=0,
            )

    async def before_publish(self, ctx: CallContext | None, queue: Queue, message: Message) -> None:
        actor = ctx.actor if ctx else None
        if ctx is None or not ctx.checked or ctx.scope is None:
            if self.strict:
                asked = Request("queue.publish", "", actor, message.headers)
                self._record(STRICT_DENY, asked, ctx, queue, message)
                raise PermissionDenied(
                    "queue.publish", queue.id, actor.id if actor else None, "strict_mode"
                )
            if actor is not None:
                self.stamper.stamp(message, queue.id, actor)
            return
        scope = ctx.scope
        for action, resource in PUBLISH_CHECKS:
            request = Request(
                action,
                queue.id if resource is None else resource,
                actor,
                message.headers,
                actor.id if actor else None,
                actor.tenant if actor else None,
            )
            decision = scope.check(request)
            self._record(decision, request, ctx, queue, message)
            if not decision.allowed:
                raise PermissionDenied(
                    action, request.resource, actor.id if actor else None, decision.describe()
                )
        if actor is not None:
            self.stamper.stamp(message, queue.id, actor)
