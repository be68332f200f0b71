"""What the policy check costs end to end: the memory-driver run with and without it.

Every row publishes N messages and drains them with a no-op async handler
(concurrency 4, prefetch 20) in this one process, like ``throughput.py``'s
``wippy-async`` row. The checked rows put the consumer under RBAC-with-tenants
policies (``builtin://rbac_with_tenants``, indexed by tenant) of 10, 1,000 or
10,000 rules, generated into a temp dir (many tenants, two roles each; the
consumer's actor may consume its own tenant's messages):

- ``rbac-R``: the consume check alone. Messages are published as in the core bench
  (``runtime.publish``, outside any actor) with a ``tenant`` header, and the policy
  maps ``message.headers.tenant`` to the tenant: ``queue.consume`` is decided before
  every handler call.
- ``rbac-R-unsigned``: the provenance path without a key. Publishing runs under a
  publisher actor, as a handler's publish does (the ``queue.publish`` and
  ``queue.publish.queue`` checks and the stamp), and consuming decides on the
  stamped tenant (``message.tenant``), which the memory driver believes unsigned.
- ``rbac-R-signed``: the same, signed: the stamp gets its time and HMAC signature,
  and consuming verifies it first. Its ratio to ``unsigned`` is what signing costs.
- ``rbac-R-partitioned``: signed, on a queue partitioned by ``message.tenant`` (the
  consumer reads its tenant's partition).

- ``rbac-10000-audited``: ``rbac-10000`` with the audit trail on (``fsync: batch``):
  every decision written and hash-chained before its message is acked.
- ``dramatiq`` and ``taskiq-shipped``: the unchecked peers of ``throughput.py``
  (Dramatiq's StubBroker and Worker, 4 threads, prefetch 20; taskiq's InMemoryBroker
  as shipped, a task per message, concurrency unbounded), run in the same rounds: the
  target compares ``rbac-10000-audited`` with the faster of the two in this run (issue
  17: at least 2x), by the ratio of medians and paired round by round.

- ``abac``: the shipped ``builtin://abac_tenant`` ("the actor's tenant must
  equal the message's tenant") over the whole ``actor`` and ``message`` objects,
  published under a publisher actor (unsigned), so every message is checked three
  times (two publish checks, one consume check); decisions are cached by the
  tenants the matcher reads.

Each run counts the decisions (``Scope.checks``: one consume check per message,
plus two publish checks on the signed rows) and the handler calls (N, so every
check allowed): a run that skipped a check or lost a message is rejected. Rows
are interleaved round by round after one warm-up run each; medians. The target
compares ``rbac-10000`` with ``unchecked``.

Then the raw cost of one ``Scope.check``: uncached (the cache dropped before every
call) with and without the tenant index, and cached.

    python bench/security.py [--n 20000] [--repeat 5] [--json results.json] [--svg chart.svg]
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import throughput
import yaml
from harness import CONCURRENCY, PREFETCH, Timing, check_audited, check_handled, clock, since

from wippy_queue import Runtime
from wippy_queue.identity import Actor, Request
from wippy_queue.queue.context import CallContext, bound
from wippy_queue.security.models import CasbinPolicyConfig
from wippy_queue.security.scope import Scope
from wippy_queue.security.units import CasbinUnit

RULE_COUNTS = (10, 1_000, 10_000)
TARGET = 0.80  # checked throughput at 10,000 rules / unchecked
SIGNED_TARGET = 0.80  # signed and verified / the same unsigned (issue 14)
PEER_TARGET = 2.0  # checked and audited / the fastest unchecked peer (issue 17)
#: the unchecked peers, by row key: the faster in a run is the one compared with
PEERS: dict[str, Callable[[int], Timing]] = {
    "dramatiq": throughput.dramatiq_run,
    "taskiq-shipped": lambda n: asyncio.run(throughput.taskiq_shipped_run(n)),
}
FASTEST_PEER = "the faster peer"
# (name, row, the row it is compared with); a verdict is printed when both rows ran
VERDICTS = [
    ("10000", "rbac-10000", "unchecked"),
    ("audited_to_peer", "rbac-10000-audited", FASTEST_PEER),
    ("signed", "rbac-10000-signed", "rbac-10000-unsigned"),
]
VERDICT_TEXT: dict[str, tuple[float, str, Callable[[float], str]]] = {
    "10000": (TARGET, "checked at 10,000 rules", lambda r: f"{r:.0%} of unchecked"),
    "audited_to_peer": (
        PEER_TARGET,
        "checked at 10,000 rules and audited (fsync batch)",
        lambda r: f"{r:.2f}x",
    ),
    "signed": (SIGNED_TARGET, "signed and verified", lambda r: f"{r:.0%} of unsigned"),
}
HANDLERS_MODULE = "wippy_bench_security_handlers"
HANDLERS_SOURCE = '''\
"""No-op handler for bench/security.py; the counter checks that nothing was lost."""

import itertools

done = itertools.count()


async def noop(data):
    next(done)
'''
POLICIES = Path(__file__).parents[1] / "wippy_queue" / "policies"
RBAC = POLICIES / "rbac_with_tenants.conf"
REQUEST = ["actor.id", "message.tenant", "resource", "action"]
HEADER_REQUEST = ["actor.id", "message.headers.tenant", "resource", "action"]
TENANT = "t0"
WORKER = Actor(f"worker-{TENANT}", {"tenant": TENANT})
SIGNING_KEY = "bench-signing-key-0123456789"


def tenant_rules(count: int) -> str:
    """``count`` RBAC-with-tenants lines: six per tenant, tenant t0 complete and first."""
    lines: list[str] = []
    for t in itertools.count():
        lines += [
            f"p, worker, t{t}, bench:*, queue.consume, allow",
            f"p, worker, t{t}, bench:secret, queue.consume, deny",
            f"p, publisher, t{t}, *, queue.publish, allow",
            f"p, publisher, t{t}, bench:jobs, queue.publish.queue, allow",
            f"g, worker-t{t}, worker, t{t}",
            f"g, svc-t{t}, publisher, t{t}",
        ]
        if len(lines) >= count:
            return "\n".join(lines[:count]) + "\n"
    raise AssertionError("unreachable")


def entries(
    n: int,
    rules: Path | None,
    *,
    publisher: bool = False,
    signed: bool = False,
    partitioned: bool = False,
    abac: bool = False,
    audit: Path | None = None,
) -> dict[str, Any]:
    """The row's entry file: the core bench's consumer, plus policies when ``rules``
    (or the shipped ABAC policy when ``abac``), and an audit trail at ``audit``."""
    noop = {"name": "noop", "kind": "function.python", "source": f"{HANDLERS_MODULE}:noop"}
    document = harness.bench_entries(noop, max_length=n)
    listed: list[dict[str, Any]] = document["entries"]
    worker = listed[-1]
    if rules is None and not abac:
        return document
    security = {"policies": ["bench:tenants"]}
    worker["lifecycle"]["security"] = {
        "actor": {"id": WORKER.id, "meta": dict(WORKER.meta)},
        **security,
    }
    if partitioned:
        listed[1]["partition_by"] = "message.tenant"
    request = REQUEST if publisher else HEADER_REQUEST
    policy: dict[str, Any] = {
        "name": "tenants",
        "kind": "security.policy.casbin",
        "model": f"file://{RBAC}",
        "policy": f"file://{rules}",
        "request": request,
        "index": [request[1]],
    }
    if abac:
        policy |= {
            "model": f"file://{POLICIES / 'abac_tenant.conf'}",
            "policy": f"file://{POLICIES / 'abac_tenant.csv'}",
            "request": ["actor", "message", "action"],
            "index": [],
        }
    listed.append(policy)
    if signed:
        listed.append({"name": "settings", "kind": "security.settings", "signing_key": SIGNING_KEY})
    if audit is not None:
        listed.append(
            {"name": "audit", "kind": "security.audit", "path": str(audit), "fsync": "batch"}
        )
    if publisher or abac:
        listed += [
            {"name": "outbox", "kind": "queue.queue", "driver": "bench:memory"},
            {  # never started: it gives the publishing actor its scope
                "name": "publisher",
                "kind": "queue.consumer",
                "queue": "bench:outbox",
                "func": "bench:noop",
                "lifecycle": {
                    "auto_start": False,
                    "security": {"actor": {"id": f"svc-{TENANT}", "meta": {"tenant": TENANT}}}
                    | security,
                },
            },
        ]
    return document


@dataclass
class CheckRow(harness.Row):
    rules: int | None
    folder: Path
    publisher: bool = False
    abac: bool = False
    audit: Path | None = None

    @property
    def as_publisher(self) -> bool:
        """Published under the publisher actor (stamped, and checked at publish)."""
        return self.publisher or self.abac


def run_row(row: CheckRow, n: int) -> Timing:
    peer = PEERS.get(row.key)
    if peer is not None:
        return peer(n)
    return asyncio.run(run_once(row, n))


async def run_once(row: CheckRow, n: int) -> Timing:
    if row.audit is not None:
        harness.fresh_audit(row.audit)
    handlers: Any = importlib.import_module(HANDLERS_MODULE)
    handlers.done = itertools.count()
    runtime = Runtime.load(row.folder)
    ctx: CallContext | None = None
    # every unsigned row publishes the same messages, so only the check differs
    headers: dict[str, str] | None = {"tenant": TENANT}
    scopes = runtime.security.scopes
    if row.as_publisher:
        publisher_entry = runtime.registry.get("bench:publisher")
        ctx = CallContext(
            publisher=runtime.publisher, **runtime.security.consumer_context(publisher_entry)
        )
        headers = None
    async with runtime:
        gc.collect()  # loading is setup: its garbage (a discarded check copy) is not the run's
        started = clock()
        if ctx is None:
            for i in range(n):
                await runtime.publish("bench:jobs", {"i": i}, headers)
        else:
            with bound(ctx):  # as a handler publishes: under its actor and policies
                for i in range(n):
                    await runtime.publish("bench:jobs", {"i": i})
        await runtime.join("bench:jobs")
        elapsed = since(started)
    check_handled(next(handlers.done), n, row.key)
    if row.rules is not None or row.abac:  # every message was checked (and allowed)
        made = {name: scope.checks for name, scope in scopes.items()}
        expected = {"bench:worker": n} | ({"bench:publisher": 2 * n} if row.as_publisher else {})
        if made != expected:
            raise SystemExit(f"{row.key}: decisions made {made}, expected {expected}")
    if row.audit is not None:
        check_audited(row.audit, n, row.key)
    return elapsed


# -- raw Scope.check -----------------------------------------------------------------------


def per_call_us(fn: Callable[[], object], budget_s: float = 0.3) -> float:
    """Median µs per call of ``fn`` over 5 batches sized to take about ``budget_s`` each."""
    started = time.perf_counter()
    fn()
    once = max(time.perf_counter() - started, 1e-7)
    batch = max(1, min(100_000, int(budget_s / once)))
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - started) / batch * 1e6)
    return statistics.median(samples)


def scope_costs(folder: Path, rules: int) -> dict[str, float]:
    csv = folder / f"rules_{rules}.csv"
    request = Request("queue.consume", "bench:jobs", WORKER, {}, f"svc-{TENANT}", TENANT)
    costs = {}
    for name, index in (("indexed", ["message.tenant"]), ("no_index", [])):
        config = CasbinPolicyConfig(
            model=f"file://{RBAC}", policy=f"file://{csv}", request=REQUEST, index=index
        )
        scope = Scope(name, [CasbinUnit("bench:tenants", config)])
        assert scope.check(request).allowed

        def uncached(scope: Scope = scope) -> None:
            scope.clear()
            scope.check(request)

        costs[f"uncached_{name}_us"] = per_call_us(uncached)

        def cached(scope: Scope = scope) -> None:
            scope.check(request)

        if index:
            costs["cached_us"] = per_call_us(cached)
    return costs


# -- report --------------------------------------------------------------------------------


def _row_cells(row: CheckRow, base: float) -> list[str]:
    if row.abac:
        shown = "ABAC"
    else:
        how = row.key.partition(f"{row.rules}")[2].replace("-", " ")
        shown = "-" if row.rules is None else f"{row.rules:,}{how}"
    ratio = f"{row.median / base:.0%}"
    return [row.key, shown, f"{row.median:,.0f}", row.rate_range, f"{row.cpu_us:.1f}", ratio]


def _cost_cells(rules: int, c: dict[str, float]) -> list[str]:
    return [
        f"{rules:,}",
        f"{c['uncached_indexed_us']:,.1f} µs",
        f"{c['uncached_no_index_us']:,.1f} µs",
        f"{c['cached_us']:.2f} µs",
    ]


def table(rows: list[CheckRow], costs: dict[int, dict[str, float]]) -> str:
    header = ["run", "rules", "median msg/s", "range msg/s", "CPU µs/msg", "checked / unchecked"]
    body = [_row_cells(row, rows[0].median) for row in rows]
    cost_header = ["rules", "Scope.check uncached, indexed", "uncached, no index", "cached"]
    cost_body = [_cost_cells(rules, c) for rules, c in costs.items()]
    runs = harness.markdown_table(header, body)
    return runs + "\n\n" + harness.markdown_table(cost_header, cost_body, left=0)


def write_rows(root: Path, n: int) -> list[CheckRow]:
    """One entry folder (and rules file) per row, under ``root``."""
    rows = []
    plain: dict[str, Any] = {"publisher": False, "signed": False, "partitioned": False}
    kinds = [
        ("unchecked", None, plain),
        *((f"rbac-{r}", r, plain) for r in RULE_COUNTS),
        ("rbac-10000-unsigned", 10_000, plain | {"publisher": True}),
        ("rbac-10000-signed", 10_000, plain | {"publisher": True, "signed": True}),
        (
            "rbac-10000-partitioned",
            10_000,
            {"publisher": True, "signed": True, "partitioned": True},
        ),
        ("rbac-10000-audited", 10_000, plain | {"audit": root / "audited.jsonl"}),
    ]
    for key, rules, how in kinds:
        folder = root / key
        folder.mkdir()
        csv = None
        if rules is not None:
            csv = root / f"rules_{rules}.csv"
            if not csv.exists():
                csv.write_text(tenant_rules(rules))
        (folder / "_index.yaml").write_text(yaml.safe_dump(entries(n, csv, **how)))
        rows.append(CheckRow(key, rules, folder, how["publisher"], audit=how.get("audit")))
    folder = root / "abac"
    folder.mkdir()
    (folder / "_index.yaml").write_text(yaml.safe_dump(entries(n, None, abac=True)))
    rows.append(CheckRow("abac", None, folder, abac=True))
    rows += [CheckRow(key, None, root) for key in PEERS]
    return rows


def main(argv: list[str] | None = None) -> int:
    made = harness.parser(__doc__, with_json=True)
    made.add_argument("--only", nargs="+", metavar="KEY", help="run only these rows (keys)")
    args = harness.parse(made, argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / f"{HANDLERS_MODULE}.py").write_text(HANDLERS_SOURCE)
        sys.path.insert(0, str(root))
        rows = harness.select(write_rows(root, args.n), args.only)
        harness.measure(
            rows,
            run_row,
            n=args.n,
            repeat=args.repeat,
            warmup=max(args.n // 10, 100),
        )
        costs = {rules: scope_costs(root, rules) for rules in RULE_COUNTS}

    print(table(rows, costs))
    by_key: dict[str, CheckRow] = {r.key: r for r in rows}
    peers = [r for r in rows if r.key in PEERS]
    if peers:
        by_key[FASTEST_PEER] = fastest = max(peers, key=lambda r: r.median)
    ratios = {
        name: by_key[over].median / by_key[under].median
        for name, over, under in VERDICTS
        if over in by_key and under in by_key
    }
    compared = {name: (over, under) for name, over, under in VERDICTS}
    for name, ratio in ratios.items():
        target, label, shown = VERDICT_TEXT[name]
        over, under = compared[name]
        verdict = "meets" if ratio >= target else "MISSES"
        versus = ""
        if under == FASTEST_PEER:
            paired = by_key[over].paired_ratio(fastest)
            versus = f" {fastest.key}, the faster peer in this run (paired {paired:.2f}x)"
        print(f"{label}: {shown(ratio)}{versus} ({verdict} the {shown(target)} target)")
    if args.json:
        harness.write_json(
            args.json,
            {
                "n": args.n,
                "rows": {r.key: {"rates": r.rates, "cpu_us": r.cpu_us_runs} for r in rows},
                "scope_check": costs,
                **{f"ratio_{name}": ratio for name, ratio in ratios.items()},
            },
        )
    if args.svg:
        harness.write_chart(
            args.svg,
            [row.bar() for row in rows],
            title="bench/security.py: throughput with the policy check (RBAC with tenants)",
            n=args.n,
            repeat=args.repeat,
            settings=f"concurrency {CONCURRENCY}, prefetch {PREFETCH}; rows: rules in the policy",
        )
    missed = [n for n, r in ratios.items() if n != "audited_to_peer" and r < VERDICT_TEXT[n][0]]
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
