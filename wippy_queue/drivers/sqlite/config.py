"""``queue.driver.sqlite``: the entry's fields, a queue's options and what the driver can do.

Light on purpose: the plugin table imports this module to validate entries, and it
never opens a database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from wippy_queue.lifecycle.config import ServiceModel
from wippy_queue.queue.config import QueueOptions
from wippy_queue.queue.driver import Capabilities
from wippy_queue.registry.entry import Entry
from wippy_queue.registry.types import Duration

CAPABILITIES = Capabilities(
    attempts="exact",
    requeue="tail",
    info="exact",
    partitions=True,
    durable=True,
    shared=True,  # several processes on one machine, one file
    leases=True,
    group_commit=True,  # settles share commits: the consumer pipelines them
)


class SqliteDriverConfig(ServiceModel):
    """``queue.driver.sqlite``.

    ``path``: the database file, relative to the entry file that declares it (plain or
    ``file://``), or absolute; its folder is created if missing. ``synchronous``:
    ``full`` puts every commit on disk (fsync) before a publish or settle returns;
    ``normal`` survives a crash of the process but may lose the last commits on a
    power cut. ``poll_interval``: how soon a waiting consumer sees a message another
    process published (in this process it is told at once).
    """

    path: str = Field(min_length=1)
    synchronous: Literal["full", "normal"] = "full"
    poll_interval: Duration = Field(default=0.05, gt=0, le=60)

    def file(self, entry_file: str | Path) -> Path:
        """The database path, made absolute relative to ``entry_file``'s folder."""
        path = Path(self.path.removeprefix("file://")).expanduser()
        if not path.is_absolute():
            path = Path(entry_file).resolve().parent / path
        return path


class SqliteQueueOptions(QueueOptions):
    """``driver_options: {sqlite: {...}}`` of a queue on the SQLite driver.

    ``visibility_timeout``: how long a delivery's lease lasts; the runtime renews it
    while the handler runs, so it matters only when the process dies or hangs: a
    message it held goes back to the queue this long after its last renewal.
    """

    visibility_timeout: Duration = Field(default=30.0, gt=0, le=43_200)


def database_path(entry: Entry) -> Path:
    config = entry.config
    assert isinstance(config, SqliteDriverConfig)
    return config.file(entry.location.file)
