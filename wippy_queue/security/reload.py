"""Hot reload of Casbin model and policy files while consumers run.

A watcher polls the files of every ``security.policy.casbin`` entry (4 times a
second, by content digest). A good new file replaces the rules in force and drops
every decision cache; a broken one is refused and the last good rules stay. Both
are logged and, when auditing, recorded with the old and new digests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from wippy_queue.security.enforcer import PolicyLoadError
from wippy_queue.security.units import CasbinUnit

log = logging.getLogger(__name__)

#: (policy id, file, old digest, new digest, applied, error)
ReloadListener = Callable[[str, str, str, str, bool, str | None], None]


def digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as err:
        return f"unreadable: {err.strerror}"


class PolicyWatcher:
    def __init__(
        self,
        units: list[CasbinUnit],
        on_reloaded: Callable[[], None],
        listeners: list[ReloadListener] | None = None,
        *,
        interval_s: float = 0.25,
    ) -> None:
        self.units = units
        self.on_reloaded = on_reloaded
        self.listeners = listeners or []
        self.interval_s = interval_s
        self._digests: dict[Path, str] = {}
        self._task: asyncio.Task[None] | None = None

    def _files(self, unit: CasbinUnit) -> list[Path]:
        return [p for p in (unit.model_path, unit.policy_path) if p is not None]

    async def start(self) -> None:
        for unit in self.units:
            for path in self._files(unit):
                self._digests[path] = await asyncio.to_thread(digest, path)
        self._task = asyncio.create_task(self._run(), name="policy-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            for unit in self.units:
                await self.check(unit)

    async def check(self, unit: CasbinUnit) -> bool:
        """Reload ``unit`` if one of its files changed; True when new rules took effect."""
        changed = []
        for path in self._files(unit):
            new = await asyncio.to_thread(digest, path)
            if new != self._digests.get(path):
                changed.append((path, self._digests.get(path, ""), new))
                self._digests[path] = new
        if not changed:
            return False
        try:
            enforcer = await asyncio.to_thread(unit.load)
        except (PolicyLoadError, OSError) as err:
            self._report(unit, changed, False, str(err))
            return False
        unit.install(enforcer)
        self.on_reloaded()
        self._report(unit, changed, True, None)
        return True

    def _report(
        self,
        unit: CasbinUnit,
        changed: list[tuple[Path, str, str]],
        applied: bool,
        error: str | None,
    ) -> None:
        for path, old, new in changed:
            if applied:
                log.info("policy %s reloaded from %s", unit.entry_id, path)
            else:
                log.error(
                    "policy %s: refused the new %s, the last good rules stay in force: %s",
                    unit.entry_id,
                    path,
                    error,
                )
            for listener in self.listeners:
                listener(unit.entry_id, str(path), old, new, applied, error)
