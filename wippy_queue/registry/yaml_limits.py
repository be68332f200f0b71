"""Bounds on what one YAML file may make us build, whatever the file.

YAML aliases let a few lines stand for billions of values (the "billion laughs":
nine anchors, each naming the one below ten times), and deep nesting exhausts
Python's stack. An entry file never needs either, so both are refused with the
line to fix, before anything walks the values.
"""

from __future__ import annotations

from typing import Any

import yaml

#: values aliases may add to a file (sharing a `lifecycle` block among 100 entries
#: adds about a thousand)
MAX_ALIAS_VALUES = 100_000
#: levels of nesting, counting what aliases expand to
MAX_DEPTH = 100


class YamlLimitError(Exception):
    """A file over one of the bounds; ``line`` is where to look (1-based)."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


class BoundedLoader(yaml.SafeLoader):
    """A safe loader that refuses nesting past ``MAX_DEPTH`` (PyYAML's composer recurses)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH and parent is not None:
                raise YamlLimitError(
                    f"nested deeper than {MAX_DEPTH} levels; an entry file never needs that",
                    _line(parent),
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def check_expansion(root: yaml.Node) -> None:
    """Walk ``root`` as the constructor will (aliases expanded), refusing a document that
    aliases blow up past ``MAX_ALIAS_VALUES`` values or ``MAX_DEPTH`` levels, or an alias
    inside the value it names. Costs at most the file's nodes plus the bound.

    Problems are reported at the line of the collection holding the (outermost) alias.
    """
    seen: set[int] = set()
    path: set[int] = set()
    added = 0
    #: (node, where, inside an alias's expansion?, entering?), in document order
    stack: list[tuple[yaml.Node, int, bool, bool]] = [(root, _line(root), False, True)]
    while stack:
        node, where, expanding, entering = stack.pop()
        if not entering:
            path.discard(id(node))
            continue
        if id(node) in path:
            raise YamlLimitError("an alias refers to a value that contains it", where)
        if id(node) in seen:
            expanding = True
            added += 1
            if added > MAX_ALIAS_VALUES:
                raise YamlLimitError(
                    f"the aliases here expand to more than {MAX_ALIAS_VALUES:,} values; "
                    "write the values out, or share fewer of them",
                    where,
                )
        seen.add(id(node))
        path.add(id(node))
        if len(path) > MAX_DEPTH:
            raise YamlLimitError(f"aliases here nest values deeper than {MAX_DEPTH} levels", where)
        stack.append((node, where, expanding, False))
        inner = where if expanding else _line(node)
        stack.extend((child, inner, expanding, True) for child in reversed(_children(node)))
