"""The seed page's handler (as in examples/seed/), taking ``seconds`` per task if asked,
so that a run can be killed while it works."""

import json
import logging
import time

logger = logging.getLogger("app.queue.task_handler")


def process_task(data):
    if not isinstance(data, dict) or "id" not in data:
        return None, "task has no id"
    time.sleep(float(data.get("seconds", 0)))
    return {"task_id": data["id"], "status": "done"}, None


def handler(body):
    data = json.loads(body) if isinstance(body, str | bytes) else body
    logger.info("Processing", extra={"fields": {"task_id": data.get("id")}})
    result, err = process_task(data)
    if err:
        return None, err  # nack: requeue
    return result  # ack: remove from the queue
