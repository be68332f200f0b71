"""The seed page's Lua handler, in Python: decode, log, process, ack or nack."""

import json
import logging

logger = logging.getLogger("app.queue.task_handler")


def process_task(data):
    if not isinstance(data, dict) or "id" not in data:
        return None, "task has no id"
    return {"task_id": data["id"], "status": "done"}, None


def handler(body):
    # The runtime passes the body decoded; a JSON string is accepted too (the seed's style).
    data = json.loads(body) if isinstance(body, str | bytes) else body
    logger.info("Processing", extra={"fields": {"task_id": data.get("id")}})
    result, err = process_task(data)
    if err:
        return None, err  # nack: requeue
    return result  # ack: remove from the queue
