"""examples/multi_tenant end to end, as its header comment says to run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "multi_tenant"


def run_example(*publishes: tuple[str, str]) -> list[dict[str, object]]:
    args = [sys.executable, "-m", "wippy_queue", "run", str(EXAMPLE)]
    for queue_id, body in publishes:
        args += ["--publish", queue_id, body]
    args += ["--until-idle", "--timeout", "10", "--log-format", "json"]
    env = {k: v for k, v in os.environ.items() if k != "WIPPY_QUEUE_SIGNING_KEY"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_each_tenant_handles_only_its_own_jobs() -> None:
    records = run_example(
        ("app.mt:outbox_a", '{"job": "a1"}'),
        ("app.mt:outbox_b", '{"job": "b2", "claim_tenant": "tenant-a"}'),
        ("app.mt:outbox_b", '{"job": "b3", "target": "app.mt:a_private"}'),
    )
    handled = [(r["job"], r["by"], r["tenant"]) for r in records if r["message"] == "job handled"]
    # b2 claims tenant-a in a header: it is still tenant-b's, handled by worker-b only
    assert sorted(handled) == [("a1", "worker-a", "tenant-a"), ("b2", "worker-b", "tenant-b")]
    (denied,) = [r for r in records if r["message"] == "publish denied"]
    assert denied["job"] == "b3"
    assert "svc-b" in str(denied["error"]) and "app.mt:a_private" in str(denied["error"])
    # any delivery of b2 to worker-a was denied by the check, never handled
    for record in records:
        if record["logger"] == "wippy_queue.security.guard":
            assert record["decision"] == "permission_denied"
            assert (record["consumer"], record["actor"]) == ("app.mt:worker_a", "worker-a")
    assert not [r for r in records if r["level"] == "error"]
