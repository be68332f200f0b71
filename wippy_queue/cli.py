"""``wippy-queue``: validate entry files, run them, inspect queues."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from wippy_queue import cli_audit, cli_policy, logs
from wippy_queue.errors import ConfigError, WippyQueueError
from wippy_queue.loading import load
from wippy_queue.runtime import Runtime

log = logging.getLogger("wippy_queue.cli")


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wippy-queue", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check entry files; list every problem")
    validate.add_argument("paths", nargs="+", metavar="PATH")

    run = sub.add_parser("run", help="start the runtime on entry files")
    run.add_argument("paths", nargs="+", metavar="PATH")
    run.add_argument(
        "--publish",
        nargs=2,
        action="append",
        default=[],
        metavar=("QUEUE_ID", "JSON"),
        help="publish a message once started (repeatable)",
    )
    run.add_argument("--until-idle", action="store_true", help="stop once every queue is idle")
    run.add_argument("--timeout", type=float, metavar="SECONDS", help="stop after this long")
    run.add_argument("--log-format", choices=["text", "json"], default="text")
    run.add_argument("--log-level", default="INFO")
    run.add_argument(
        "--strict", action="store_true", help="deny consumers and publishers without security"
    )
    run.add_argument("--audit", metavar="PATH", help="write the audit trail to PATH")

    cli_audit.add_parser(sub)
    cli_policy.add_parser(sub)

    info = sub.add_parser("info", help="list the entries, services and queues of entry files")
    info.add_argument("paths", nargs="+", metavar="PATH")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        try:  # bad JSON is a usage error, found before anything starts
            args.publish = [(queue_id, _json_arg(text)) for queue_id, text in args.publish]
        except argparse.ArgumentTypeError as err:
            parser.error(f"--publish: {err}")
    try:
        return _dispatch(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    except WippyQueueError as err:
        print(f"wippy-queue: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`... | head`): not an error of ours
        # Python flushes stdout at exit; point it at /dev/null so that flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "validate":
        return _validate(args.paths)
    if args.command == "info":
        return _info(args.paths)
    if args.command == "audit":
        return cli_audit.run(args)
    if args.command == "policy":
        return cli_policy.run(args)
    logs.setup(args.log_format, args.log_level)
    return asyncio.run(_run(args))


def _validate(paths: list[str]) -> int:
    runtime = Runtime.load(*paths)
    registry = runtime.registry
    for warning in registry.warnings:
        print(warning, file=sys.stderr)
    kinds: dict[str, int] = {}
    for entry in registry:
        kinds[entry.kind] = kinds.get(entry.kind, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    print(f"ok: {len(registry.entries)} entries ({summary})")
    return 0


def _info(paths: list[str]) -> int:
    registry = load(paths).registry
    for entry_id in registry.start_order():
        entry = registry.get(entry_id)
        deps = ", ".join(registry.dependencies.get(entry_id, ())) or "-"
        print(f"{entry_id:40} {entry.kind:22} requires: {deps}")
    return 0


async def _run(args: argparse.Namespace) -> int:
    runtime = Runtime.load(*args.paths, strict=args.strict or None, audit_path=args.audit)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    async with runtime:
        for queue_id, data in args.publish:
            message_id = await runtime.publish(queue_id, data)
            log.info("published", extra={"fields": {"message_id": message_id, "queue": queue_id}})
        waiters: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
        if args.until_idle:
            waiters.append(asyncio.create_task(runtime.join()))
        done, pending = await asyncio.wait(
            waiters, timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        if not done and args.until_idle:
            print(f"wippy-queue: not idle after {args.timeout}s; stopping", file=sys.stderr)
            code = 3
    return code
