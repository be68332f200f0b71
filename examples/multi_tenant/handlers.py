"""Handlers of the multi-tenant example: workers log what they handle; publisher
services forward requests under their own actor (and report a denied publish)."""

import logging

from wippy_queue import PermissionDenied, current_actor, current_message
from wippy_queue.queue import publish_async

log = logging.getLogger("app.mt")


async def handle_job(job):
    message = current_message()
    actor = current_actor()
    log.info(
        "job handled",
        extra={
            "fields": {
                "job": job.get("job"),
                "by": actor.id if actor else None,
                "publisher": message.header("x_publisher"),
                "tenant": message.header("x_publisher_tenant"),
                "queue": message.queue_id,
            }
        },
    )
    return True


async def forward(request):
    target = request.get("target", "app.mt:jobs")
    headers = {"tenant": request["claim_tenant"]} if "claim_tenant" in request else None
    try:
        await publish_async(target, {"job": request["job"]}, headers)
    except PermissionDenied as err:
        log.warning("publish denied", extra={"fields": {"job": request["job"], "error": str(err)}})
    return True
