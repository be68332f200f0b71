"""Policies a new user got wrong (issue 15): refused at load, at FILE:LINE, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write

from wippy_queue.cli import main

ROOT = Path(__file__).resolve().parent.parent
RBAC = ROOT / "wippy_queue" / "policies" / "rbac_with_tenants.conf"


def line_of(path: Path, needle: str) -> int:
    return next(n for n, text in enumerate(path.read_text().splitlines(), 1) if needle in text)


def casbin_app(tmp_path: Path, model: Path, *, index: bool, rules: str = '["g, a, b, c"]') -> Path:
    index_line = "index: [message.tenant]" if index else ""
    return write(
        tmp_path / "app.yaml",
        f"""
        namespace: app
        entries:
          - name: tenants
            kind: security.policy.casbin
            model: file://{model}
            rules: {rules}
            request: [actor.id, message.tenant, resource, action]
            {index_line}
        """,
    )


# -- item 3: a matcher that does not parse, with index: -----------------------------------


@pytest.mark.parametrize("index", [False, True])
@pytest.mark.parametrize("command", ["validate", "lint"])
@pytest.mark.parametrize(
    "matcher",
    [
        "m = r.dom == = p.dom",
        "m = (r.dom == p.dom && g(r.sub, p.sub, r.dom)",
        "m = r.dom == p.dom ||| r.sub",
    ],
)
def test_a_matcher_syntax_error_is_one_line_at_the_matcher(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], matcher: str, command: str, index: bool
) -> None:
    model = tmp_path / "model.conf"
    text = "\n".join(
        matcher if line.startswith("m = ") else line for line in RBAC.read_text().splitlines()
    )
    model.write_text(text)
    app = casbin_app(tmp_path, model, index=index)
    argv = ["validate", str(app)] if command == "validate" else ["policy", "lint", str(app)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    (problem,) = [
        line for line in (captured.out + captured.err).splitlines() if "model.conf" in line
    ]
    assert problem.startswith(f"{model}:{line_of(model, 'm = ')}: app:tenants: model: ")
    assert "the matcher does not parse: SyntaxError" in problem
