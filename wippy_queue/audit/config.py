"""``security.audit``: the entry that turns the audit trail on."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from wippy_queue.registry.entry import EntryModel


class AuditConfig(EntryModel):
    """``security.audit``: where the hash-chained audit trail goes, and how durably."""

    path: str = Field(min_length=1)
    fsync: Literal["always", "batch", "never"] = "batch"

    def file(self) -> Path:
        return Path(self.path.removeprefix("file://"))
