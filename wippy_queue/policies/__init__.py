"""The Casbin models shipped with wippy-queue, by a name that works wherever it is
installed: an entry writes ``model: builtin://rbac_with_tenants`` instead of a path
into a source checkout. ``wippy-queue policy models`` lists them."""

from __future__ import annotations

from pathlib import Path

SCHEME = "builtin://"
_HERE = Path(__file__).resolve().parent


def models() -> dict[str, Path]:
    """Each shipped model's name and file, sorted by name."""
    return {path.stem: path for path in sorted(_HERE.glob("*.conf"))}


def model_path(name: str) -> Path:
    """The file of shipped model ``name`` (``rbac_with_tenants``; ``.conf`` optional);
    KeyError says which names there are."""
    shipped = models()
    path = shipped.get(name.removesuffix(".conf"))
    if path is None:
        raise KeyError(f"no shipped model {name!r}; shipped: {', '.join(shipped)}")
    return path


def summary(path: Path) -> str:
    """The first sentence of a model's leading comment: what it is for."""
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#") or not line.strip("# "):
            break
        words.append(line.lstrip("# ").strip())
    text = " ".join(words)
    first, stop, _ = text.partition(". ")
    return first + "." if stop else text
