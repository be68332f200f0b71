"""``wippy-queue policy test|explain|lint``: tools for writing policy files.

Exit codes: ``test`` 0 when every case passes, 1 when one fails; ``lint`` 0 without
errors (warnings are printed), 1 with any; ``explain`` and ``models`` 0. Input that cannot be
used (entry files, case files, a request the runtime never asks) exits 2 with
every problem listed.

Its arguments are parsed by ``cli_args``; this module is imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from wippy_queue import policies as shipped
from wippy_queue.errors import ConfigError, Problem
from wippy_queue.policytools.cases import Case, CaseFileError, QuerySpec, read_cases
from wippy_queue.policytools.explain import explain
from wippy_queue.policytools.lint import has_errors, lint
from wippy_queue.policytools.query import QueryError, load_security
from wippy_queue.policytools.runner import run_cases, summary
from wippy_queue.security.manager import Security

BAD_INPUT = 2
_FLAGS = {"policies": "policy", "groups": "group", "headers": "header"}


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
