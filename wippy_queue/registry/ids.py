"""Registry IDs: ``namespace:name``, split at the first colon; namespaces are dotted."""

from __future__ import annotations

import re

from wippy_queue.errors import RegistryError

_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def split_id(entry_id: str) -> tuple[str, str]:
    namespace, sep, name = entry_id.partition(":")
    if not sep or not _PART.match(namespace) or not _PART.match(name):
        raise RegistryError(
            f"{entry_id!r} is not a registry ID; "
            "write it as 'namespace:name', e.g. 'app.queue:tasks'"
        )
    return namespace, name


def qualify(ref: str, namespace: str | None) -> str:
    """Resolve an unqualified ``name`` in ``namespace``; check the result's shape."""
    if ":" not in ref:
        if not namespace:
            raise RegistryError(f"{ref!r} has no namespace; write it as 'namespace:{ref}'")
        ref = f"{namespace}:{ref}"
    split_id(ref)
    return ref


def valid_part(part: str) -> bool:
    return bool(_PART.match(part))
