"""``wippy-queue``: validate entry files, run them, inspect queues.

Exit codes: 0 success; 1 the entry files (or what a command checks) have problems,
each listed as FILE:LINE; 2 a usage error, or input that is not what the command
takes; 130 interrupted while loading. ``run``, ``policy`` and ``audit`` document
their own (see their modules and the README).

The arguments are parsed by ``cli_args``, which imports nothing heavy: ``--help`` and
a usage error are answered before the runtime (pydantic, Casbin, the broker clients)
is imported. Each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from wippy_queue import cli_args
from wippy_queue.errors import ConfigError, WippyQueueError


def _parser() -> argparse.ArgumentParser:
    return cli_args.parser()


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
    """Run the chosen command, importing its module (and the runtime) only now."""
    if args.command == "validate":
        return _validate(args.paths)
    if args.command == "info":
        return _info(args.paths)
    if args.command == "audit":
        from wippy_queue import cli_audit

        return cli_audit.run(args)
    if args.command == "policy":
        from wippy_queue import cli_policy

        return cli_policy.run(args)
    import asyncio

    from wippy_queue import cli_run, logs

    logs.setup(args.log_format, args.log_level)
    return asyncio.run(cli_run.run(args))


def _validate(paths: list[str]) -> int:
    from wippy_queue.runtime import Runtime

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
    from wippy_queue.loading import load

    registry = load(paths).registry
    for entry_id in registry.start_order():
        entry = registry.get(entry_id)
        deps = ", ".join(registry.dependencies.get(entry_id, ())) or "-"
        print(f"{entry_id:40} {entry.kind:22} requires: {deps}")
    return 0
