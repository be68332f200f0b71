"""``wippy-queue``: validate entry files, run them, inspect queues.

Exit codes: 0 success; 1 the entry files (or what a command checks) have problems,
each listed as FILE:LINE; 2 a usage error, or input that is not what the command
takes; 130 interrupted while loading. ``run``, ``policy`` and ``audit`` document
their own (see their modules and the README).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from wippy_queue import cli_audit, cli_policy, cli_run, logs
from wippy_queue.errors import ConfigError, WippyQueueError
from wippy_queue.loading import load
from wippy_queue.runtime import Runtime

DESCRIPTION = (
    "A security-aware runtime for Wippy-style message queues: validate entry files, "
    "run them, write and check policies, verify audit trails."
)


def _version() -> str:
    try:
        return metadata.version("wippy-queue")
    except metadata.PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wippy-queue", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check entry files; list every problem")
    validate.add_argument("paths", nargs="+", metavar="PATH", help="entry files or folders")

    cli_run.add_parser(sub)
    cli_audit.add_parser(sub)
    cli_policy.add_parser(sub)

    info = sub.add_parser("info", help="list the entries, services and queues of entry files")
    info.add_argument("paths", nargs="+", metavar="PATH", help="entry files or folders")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
    return asyncio.run(cli_run.run(args))


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
