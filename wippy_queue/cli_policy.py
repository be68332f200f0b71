"""``wippy-queue policy test|explain|lint``: tools for writing policy files.

Exit codes: ``test`` 0 when every case passes, 1 when one fails; ``lint`` 0 without
errors (warnings are printed), 1 with any; ``explain`` and ``models`` 0. Input that cannot be
used (entry files, case files, a request the runtime never asks) exits 2 with
every problem listed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pydantic import ValidationError

from wippy_queue import policies as shipped
from wippy_queue.errors import ConfigError, Problem
from wippy_queue.policytools.cases import Case, CaseFileError, QuerySpec, read_cases
from wippy_queue.policytools.explain import explain
from wippy_queue.policytools.lint import has_errors, lint
from wippy_queue.policytools.query import ASKED, QueryError, load_security
from wippy_queue.policytools.runner import run_cases, summary
from wippy_queue.security.manager import Security

BAD_INPUT = 2
_FLAGS = {"policies": "policy", "groups": "group", "headers": "header"}


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_parser(subparsers: Any) -> None:
    """Register ``policy`` and its sub-commands on the CLI's sub-parsers."""
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
    what.add_argument("--action", required=True, choices=list(ASKED), help="the action asked")
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


def run(args: argparse.Namespace) -> int:
    """Run the ``policy`` sub-command in ``args``; returns the exit code."""
    if args.policy_command == "lint":
        return _lint(args.paths)
    if args.policy_command == "models":
        return _models()
    try:
        security = load_security(args.paths, strict=args.strict or None)
        if args.policy_command == "test":
            return _test(security, args.cases)
        return _explain(security, args)
    except (ConfigError, CaseFileError) as err:
        print(err, file=sys.stderr)
    except QueryError as err:
        for field, message in err.problems:
            flag = _FLAGS.get(field, field.replace("_", "-"))
            print(f"wippy-queue policy explain: --{flag}: {message}", file=sys.stderr)
    return BAD_INPUT


def _test(security: Security, case_files: list[str]) -> int:
    cases: list[Case] = []
    problems: list[Problem] = []
    for path in case_files:
        found, bad = read_cases(path)
        cases += found
        problems += bad
    results = run_cases(security, cases, problems)
    for result in results:
        print(result.describe())
    print(summary(results))
    return 0 if all(r.passed for r in results) else 1


def _explain(security: Security, args: argparse.Namespace) -> int:
    if args.meta and args.actor is None:
        raise QueryError([("meta", "--meta describes the --actor; add --actor ID")])
    written = {
        "action": args.action,
        "resource": args.resource,
        "consumer": args.consumer,
        "actor": None if args.actor is None else {"id": args.actor, "meta": dict(args.meta)},
        "policies": args.policy,
        "groups": args.group,
        "headers": dict(args.header),
        "publisher": args.publisher,
        "publisher_tenant": args.publisher_tenant,
    }
    try:
        query = QuerySpec.model_validate(written).query()
    except ValidationError as err:
        raise QueryError(
            [(str(e["loc"][0]), f"{e['msg']} (got {e.get('input')!r})") for e in err.errors()]
        ) from None
    for line in explain(security, query).lines():
        print(line)
    return 0


def _models() -> int:
    for name, path in shipped.models().items():
        print(f"{shipped.SCHEME}{name:20} {path}\n    {shipped.summary(path)}")
    return 0


def _lint(paths: list[str]) -> int:
    findings = lint(paths)
    for finding in findings:
        print(finding)
    errors = sum(f.severity == "error" for f in findings)
    warnings = len(findings) - errors
    print(f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}")
    return 1 if has_errors(findings) else 0
