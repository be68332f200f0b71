"""The command line's grammar: every command's arguments, importing nothing heavy.

``wippy-queue --help`` and a usage error need only this module (and argparse): the
runtime, pydantic, Casbin and the broker clients are imported by the command that
runs (``cli.py`` dispatches to ``cli_run``, ``cli_policy``, ``cli_audit``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wippy_queue.security.vocabulary import ACTIONS

DESCRIPTION = (
    "A security-aware runtime for Wippy-style message queues: validate entry files, "
    "run them, write and check policies, verify audit trails."
)
LOG_LEVELS = ("debug", "info", "warning", "error")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="wippy-queue", description=DESCRIPTION)
    top.add_argument("--version", action=_Version, help="show program's version number and exit")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check entry files; list every problem")
    validate.add_argument("paths", nargs="+", metavar="PATH", help="entry files or folders")

    _run(sub)
    _audit(sub)
    _policy(sub)

    info = sub.add_parser("info", help="list the entries, services and queues of entry files")
    info.add_argument("paths", nargs="+", metavar="PATH", help="entry files or folders")
    return top


class _Version(argparse.Action):
    """``--version``: the installed version, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        from importlib import metadata

        try:
            version = metadata.version("wippy-queue")
        except metadata.PackageNotFoundError:  # a source tree that was not installed
            version = "unknown (not installed)"
        print(f"{parser.prog} {version}")  # on stdout, as argparse's own --version
        parser.exit()


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


class _Publish(argparse.Action):
    """``--publish QUEUE_ID JSON``: the JSON is parsed at once, so bad JSON is a usage
    error of ``run`` found before anything loads or starts."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        from wippy_queue.queue.codec import JSON, DecodeError  # run imports it anyway

        assert isinstance(values, list)
        queue_id, text = values
        try:  # within the limits a queue decodes with (depth, size)
            data = JSON.decode(text.encode("utf-8", "surrogateescape"))
        except DecodeError as err:
            shown = text if len(text) <= 200 else f"{text[:200]}... ({len(text)} characters)"
            parser.error(f"--publish {queue_id}: not valid JSON ({err}): {shown!r}")
        getattr(namespace, self.dest).append((queue_id, data))


def _run(sub: Any) -> None:
    """``run``: see ``cli_run``."""
    run = sub.add_parser("run", help="start the runtime on entry files")
    run.add_argument("paths", nargs="+", metavar="PATH", help="entry files or folders")
    run.add_argument(
        "--publish",
        nargs=2,
        action=_Publish,
        default=[],
        metavar=("QUEUE_ID", "JSON"),
        help="publish a message once started (repeatable); QUEUE_ID may leave out the "
        "namespace when one loaded queue has that name",
    )
    run.add_argument(
        "--header",
        type=_pair,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a header of every --publish message (repeatable)",
    )
    run.add_argument(
        "--as",
        dest="as_actor",
        metavar="ACTOR_ID",
        help="publish as this actor (the consumers' lifecycle.security that names it), "
        "checked by its policies like any publish",
    )
    run.add_argument("--until-idle", action="store_true", help="stop once every queue is idle")
    run.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="stop after this long")
    run.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="log lines (default text)"
    )
    run.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default="info",
        help="least severe level logged (default info)",
    )
    run.add_argument(
        "--strict", action="store_true", help="deny consumers and publishers without security"
    )
    run.add_argument("--audit", metavar="PATH", help="write the audit trail to PATH")
    run.add_argument("--audit-key", metavar="KEY", help=KEY_HELP)


KEY_HELP = (
    "the audit key that keys the chain (HMAC-SHA256): a value, '${env:NAME}' or "
    "file://PATH (default: $WIPPY_QUEUE_AUDIT_KEY)"
)


def _audit(sub: Any) -> None:
    """``audit verify|show``: see ``cli_audit``."""
    audit = sub.add_parser("audit", help="verify or show an audit trail file")
    commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = commands.add_parser("verify", help="check the hash chain; exit 1 if tampered")
    verify.add_argument("file", type=Path, nargs="+", help="audit trails (JSON lines)")
    verify.add_argument("--audit-key", metavar="KEY", help=KEY_HELP)
    show = commands.add_parser("show", help="print records as a table")
    show.add_argument(
        "file", type=Path, nargs="+", help="audit trails (JSON lines), merged by time"
    )
    show.add_argument("--audit-key", metavar="KEY", help=KEY_HELP)
    show.add_argument("--denied", action="store_true", help="only denied decisions")
    show.add_argument("--actor", metavar="ID", help="only records of this actor")
    show.add_argument("--queue", metavar="ID", help="only records of this queue")
    show.add_argument(
        "--since",
        metavar="TIME",
        help="an ISO time (2026-11-27T18:00:00Z) or a duration ago (90s, 15m, 2h, 7d)",
    )
    show.add_argument("--json", action="store_true", help="JSON lines instead of a table")


def _policy(subparsers: Any) -> None:
    """``policy test|explain|lint|models``: see ``cli_policy``."""
    policy = subparsers.add_parser("policy", help="test, explain and lint security policies")
    sub = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")

    test = sub.add_parser("test", help="run policy test cases; exit 1 if any fails")
    test.add_argument("paths", nargs="+", metavar="PATH", help="entry files or folders")
    test.add_argument(
        "--cases",
        action="append",
        required=True,
        metavar="CASES.yaml",
        help="a policy test case file (repeatable)",
    )
    test.add_argument("--strict", action="store_true", help="decide as 'run --strict' would")

    why = sub.add_parser("explain", help="show the decision, the matching rules and the decider")
    why.add_argument("paths", nargs="+", metavar="PATH", help="entry files or folders")
    who = why.add_argument_group("who asks: a consumer, or an actor with policies/groups")
    who.add_argument("--consumer", metavar="ID", help="its lifecycle.security applies")
    who.add_argument("--actor", metavar="ID", help="an actor id (with --policy/--group)")
    who.add_argument(
        "--meta",
        type=_pair,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the actor's meta (repeatable), e.g. tenant=tenant-a",
    )
    who.add_argument(
        "--policy", action="append", default=[], metavar="ID", help="a policy entry (repeatable)"
    )
    who.add_argument(
        "--group", action="append", default=[], metavar="NAME", help="a policy group (repeatable)"
    )
    what = why.add_argument_group("what is asked")
    what.add_argument("--action", required=True, choices=list(ACTIONS), help="the action asked")
    what.add_argument(
        "--resource",
        metavar="ID",
        help="a queue ID (default: the consumer's queue; '' for queue.publish)",
    )
    what.add_argument(
        "--header",
        type=_pair,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a message header (repeatable)",
    )
    what.add_argument("--publisher", metavar="ACTOR_ID", help="the verified publisher (consume)")
    what.add_argument(
        "--publisher-tenant",
        metavar="TENANT",
        help="the verified publisher's tenant (default: that of its actor)",
    )
    why.add_argument("--strict", action="store_true", help="decide as 'run --strict' would")

    check = sub.add_parser("lint", help="find broken, dead, shadowed and duplicate rules")
    check.add_argument("paths", nargs="+", metavar="PATH", help="entry files or folders")

    sub.add_parser(
        "models", help="list the shipped Casbin models: write 'model: builtin://NAME' to use one"
    )
