"""Tenant partitions across real processes: one process per tenant on one shared queue.

Each tenant's ``wippy-queue run`` process reads its tenant's partition only. One is
killed with SIGKILL while it holds messages: the other tenant's process never takes
them, they wait (counted by ``info``), and a restarted process of the same tenant
handles every one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import services
import yaml
from processes import HANDLER, WAIT_S, handled, start, stop, until

from wippy_queue import Runtime

pytestmark = pytest.mark.services

TENANTS = ("acme", "globex")
COUNT = 40
CONCURRENCY = 2


@pytest.fixture(params=["redis", "sqlite"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    name = f"wq-e2e-{uuid.uuid4().hex[:10]}"
    entry: dict[str, Any] = {"name": "broker", "lifecycle": {"auto_start": True}}
    if request.param == "redis":
        host, port = services.redis_address()
        services.require("Redis", host, port, module="redis")
        entry |= {"kind": "queue.driver.redis", "url": services.REDIS_URL}
        options = {"redis": {"visibility_timeout": 1.0}}
    else:
        entry |= {"kind": "queue.driver.sqlite", "path": str(tmp_path / "queues.db")}
        entry["poll_interval"] = "20ms"
        options = {"sqlite": {"visibility_timeout": 1.0}}
    yield {"entry": entry, "queue_name": name, "options": options}
    if request.param == "redis":
        services.redis_delete_prefix(name)


def write_apps(tmp_path: Path, driver: dict[str, Any]) -> tuple[dict[str, Path], Path]:
    """An app per tenant (its consumer's actor has the tenant) and ``pub/`` to publish."""
    queue = {
        "name": "jobs",
        "kind": "queue.queue",
        "driver": "broker",
        "queue_name": driver["queue_name"],
        "partition_by": "message.headers.tenant",
        "driver_options": driver["options"],
    }
    handler = {"name": "handle", "kind": "function.python", "source": "file://h.py"}
    handler["method"] = "handle"
    policy = {
        "name": "consume",
        "kind": "security.policy",
        "policy": {"actions": "queue.consume", "resources": "e2e:jobs", "effect": "allow"},
    }
    apps = {}
    for tenant in TENANTS:
        security = {"actor": {"id": f"w-{tenant}", "meta": {"tenant": tenant}}}
        security["policies"] = ["consume"]
        consumer = {
            "name": "worker",
            "kind": "queue.consumer",
            "queue": "jobs",
            "func": "handle",
            "concurrency": CONCURRENCY,
            "prefetch": 4,
            "lifecycle": {"auto_start": True, "security": security},
        }
        apps[tenant] = _write(
            tmp_path / tenant, [driver["entry"], queue, handler, policy, consumer]
        )
        (apps[tenant] / "h.py").write_text(HANDLER)
    return apps, _write(tmp_path / "pub", [driver["entry"], queue])


def _write(folder: Path, entries: list[dict[str, Any]]) -> Path:
    folder.mkdir()
    document = {"namespace": "e2e", "entries": entries}
    (folder / "_index.yaml").write_text(yaml.safe_dump(document))
    return folder


def tenant_of(n: int) -> str:
    return TENANTS[n % 2]


async def test_a_killed_tenant_process_s_messages_wait_for_its_restart(
    tmp_path: Path, driver: dict[str, Any]
) -> None:
    apps, pub = write_apps(tmp_path, driver)
    out = tmp_path / "out.txt"
    doomed = start(apps["acme"], out, 0.2)
    other = start(apps["globex"], out, 0.0)
    survivor = None
    try:
        async with Runtime.load(pub) as runtime:
            for n in range(COUNT):
                await runtime.publish("e2e:jobs", {"n": n}, {"tenant": tenant_of(n)})

            def acme_working() -> bool:
                return any(pid == doomed.pid for pid, _ in handled(out))

            await until(acme_working, "acme's process at work")
            doomed.kill()  # SIGKILL: it holds acme messages it took and did not finish
            doomed.wait()
            globex = {n for n in range(COUNT) if tenant_of(n) == "globex"}
            await until(lambda: globex <= {n for _, n in handled(out)}, "globex's all handled")
            left = COUNT - len({n for _, n in handled(out)})
            assert left > 0
            # acme's wait, the killed process's leases included: those it had not handled,
            # and up to CONCURRENCY it handled but was killed before acking (handled again)
            counted = COUNT
            async with asyncio.timeout(WAIT_S):  # globex's last acks may still be on the way
                while counted > left + CONCURRENCY:
                    counted = (await runtime.info("e2e:jobs")).message_count
                    await asyncio.sleep(0.05)
            assert counted >= left
            survivor = start(apps["acme"], out, 0.0)
            await until(lambda: {n for _, n in handled(out)} == set(range(COUNT)), "all handled")
    finally:
        stop(doomed)
        errors = [stop(other)] + ([stop(survivor)] if survivor else [])
    done = handled(out)
    by_pid = {other.pid: "globex", doomed.pid: "acme"}
    if survivor is not None:
        by_pid[survivor.pid] = "acme"
    assert all(by_pid[pid] == tenant_of(n) for pid, n in done), done
    assert any(pid == survivor.pid for pid, _ in done)  # type: ignore[union-attr]
    assert all("Traceback" not in err for err in errors), errors
