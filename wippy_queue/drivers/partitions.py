"""Partition names as brokers can hold them: in a key, a queue name, an SQS queue name.

A partition is a request field's value (a tenant, a header), so it may hold anything.
``safe_name`` keeps a short name of ``[A-Za-z0-9_-]`` (not starting with ``_``) as it
is, readable on the broker; anything else becomes ``_`` and a hash of it, so two
partitions never share a name and none can reach outside its queue's names.
"""

from __future__ import annotations

import hashlib
import re

#: kept as it is: what every broker allows in a name, short enough for SQS's 80
_PLAIN = re.compile(r"[A-Za-z0-9-][A-Za-z0-9_-]{0,31}")


def safe_name(partition: str) -> str:
    """``partition`` as a name of ``[A-Za-z0-9_-]``, at most 32 characters."""
    if _PLAIN.fullmatch(partition):
        return partition
    return "_" + hashlib.sha256(partition.encode("utf-8", "surrogatepass")).hexdigest()[:31]
