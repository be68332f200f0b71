"""Hot reload of policies while consumers run.

A watcher polls, 4 times a second and by content digest, the model and policy
files of every ``security.policy.casbin`` entry and, when the runtime was loaded
from entry files, those files too (``security.policy`` entries are written there),
including files added to or removed from a loaded folder.
A good change replaces the rules in force and drops every decision cache; a broken
one is refused and the last good rules stay. Both are logged and, when auditing,
recorded with the old and new digests. Entry files are loaded again whole, with
every check a start runs; only policy entries take effect at once, and the log
names any other entry whose change waits for a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from wippy_queue.errors import ConfigError
from wippy_queue.registry.registry import Registry
from wippy_queue.registry.source import entry_files
from wippy_queue.security.enforcer import PolicyLoadError
from wippy_queue.security.manager import ReloadRefused, Security
from wippy_queue.security.units import CasbinUnit

log = logging.getLogger(__name__)

#: (policy id, file, old digest, new digest, applied, error)
ReloadListener = Callable[[str, str, str, str, bool, str | None], None]
#: loads the entry files again (in a thread), raising ConfigError on any problem
RegistryLoader = Callable[[], Registry]
_REFUSED = (PolicyLoadError, ConfigError, ReloadRefused, OSError)


def digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as err:
        return f"unreadable: {err.strerror}"


def _casbin_files(unit: CasbinUnit) -> list[Path]:
    return [p for p in (unit.model_path, unit.policy_path) if p is not None]


class PolicyWatcher:
    def __init__(
        self,
        security: Security,
        listeners: list[ReloadListener] | None = None,
        *,
        sources: Sequence[str | os.PathLike[str]] = (),
        load_entries: RegistryLoader | None = None,
        interval_s: float = 0.25,
    ) -> None:
        """``sources``: the entry files and folders, loaded again by ``load_entries``."""
        self.security = security
        self.listeners = listeners or []
        self.sources = list(sources) if load_entries else []
        self.load_entries = load_entries
        self.interval_s = interval_s
        self._digests: dict[Path, str] = {}
        self._listed: set[Path] = set()
        self._task: asyncio.Task[None] | None = None

    def _entry_files(self) -> list[Path]:
        return [path for path, _ in entry_files(self.sources)]

    async def start(self) -> None:
        listed = await asyncio.to_thread(self._entry_files)
        self._listed = set(listed)
        for path in [*self._casbin_files(), *listed]:
            self._digests[path] = await asyncio.to_thread(digest, path)
        self._task = asyncio.create_task(self._run(), name="policy-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _casbin_files(self) -> list[Path]:
        return [p for u in self.security.casbin_units.values() for p in _casbin_files(u)]

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check_entries()
            for unit in list(self.security.casbin_units.values()):
                await self.check(unit)

    async def _changed(self, files: list[Path]) -> list[tuple[Path, str, str]]:
        """(file, old digest, new digest) for each of ``files`` changed since last seen."""
        changed = []
        for path in files:
            new = await asyncio.to_thread(digest, path)
            old = self._digests.get(path)
            self._digests[path] = new
            if old is not None and new != old:  # a file first seen was just loaded
                changed.append((path, old, new))
        return changed

    async def check(self, unit: CasbinUnit) -> bool:
        """Reload ``unit`` if one of its files changed; True when new rules took effect."""
        changed = await self._changed(_casbin_files(unit))
        if not changed:
            return False
        try:
            enforcer = await asyncio.to_thread(unit.load)
        except _REFUSED as err:
            self._report(unit.entry_id, changed, False, str(err))
            return False
        unit.install(enforcer)
        self.security.clear_caches()
        self._report(unit.entry_id, changed, True, None)
        return True

    async def check_entries(self) -> bool:
        """Reload the policy entries if an entry file changed, appeared or went away;
        True when they took effect."""
        load = self.load_entries
        if load is None:
            return False
        listed = await asyncio.to_thread(self._entry_files)
        changed = await self._changed(listed)
        changed += [(p, "", self._digests.get(p, "")) for p in set(listed) - self._listed]
        changed += [(p, self._digests.pop(p, ""), "removed") for p in self._listed - set(listed)]
        self._listed = set(listed)
        if not changed:
            return False
        try:
            plan = await asyncio.to_thread(lambda: self.security.plan_reload(load()))
        except _REFUSED as err:
            self._report("entry files", changed, False, str(err))
            return False
        if plan.restart_needed:
            log.warning(
                "entry files changed: %s take effect at the next start (only policy "
                "entries are reloaded while running)",
                ", ".join(plan.restart_needed),
            )
        if not plan.changed:
            return False
        self.security.install(plan)
        self._report(", ".join(plan.changed), changed, True, None)
        return True

    def _report(
        self,
        policy: str,
        changed: list[tuple[Path, str, str]],
        applied: bool,
        error: str | None,
    ) -> None:
        for path, old, new in changed:
            if applied:
                log.info("policy %s reloaded from %s", policy, path)
            else:
                log.error(
                    "policy %s: refused the new %s, the last good rules stay in force: %s",
                    policy,
                    path,
                    error,
                )
            for listener in self.listeners:
                listener(policy, str(path), old, new, applied, error)
