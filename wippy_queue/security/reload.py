"""Hot reload of policies while consumers run.

A watcher polls, 4 times a second, the model and policy files of every
``security.policy.casbin`` entry and, when the runtime was loaded from entry
files, those files too (``security.policy`` entries are written there), including
files added to or removed from a loaded folder. Each file's digest is compared
with the digest of the bytes the rules in force were read from, so no edit is
missed, whenever it lands. A good change replaces the rules in force and drops
every decision cache; a broken one (or any error while loading it) is refused and
the last good rules stay. Both are logged and, when auditing, recorded with the old
and new digests. Entry files are loaded again whole, with every check a start runs;
only policy entries take effect at once, and the log names any other entry whose
change waits for a restart. A refused entry reload is tried again every couple of
seconds (it may wait on a file it names), and a file that goes missing counts as
removed only when it is still missing at the next look (an editor saving it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from wippy_queue.registry.registry import Registry
from wippy_queue.registry.source import entry_files
from wippy_queue.security.manager import PolicyPlan, Security
from wippy_queue.security.units import CasbinUnit

log = logging.getLogger(__name__)

#: (policy id, file, old digest, new digest, applied, error)
ReloadListener = Callable[[str, str, str, str, bool, str | None], None]
#: loads the entry files again (in a thread), raising ConfigError on any problem
RegistryLoader = Callable[[], Registry]
Digests = dict[Path, str]
RETRY_S = 2.0


def digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as err:
        return f"unreadable: {err.strerror}"


def _casbin_files(unit: CasbinUnit) -> list[Path]:
    return [p for p in (unit.model_path, unit.policy_path) if p is not None]


def _changes(before: Mapping[Path, str], now: Mapping[Path, str]) -> list[tuple[Path, str, str]]:
    """(file, old digest, new digest) for each file that differs; '' is absent."""
    paths = sorted({*before, *now})
    return [(p, before.get(p, ""), now.get(p, "")) for p in paths if before.get(p) != now.get(p)]


@dataclass(frozen=True)
class _Refusal:
    """Files whose content was refused, why, and when to try the same content again."""

    digests: Digests
    error: str
    retry_at: float


class PolicyWatcher:
    def __init__(
        self,
        security: Security,
        listeners: list[ReloadListener] | None = None,
        *,
        sources: Sequence[str | os.PathLike[str]] = (),
        load_entries: RegistryLoader | None = None,
        entry_digests: Mapping[str, str] | None = None,
        interval_s: float = 0.25,
        retry_s: float = RETRY_S,
    ) -> None:
        """``sources``: the entry files and folders, loaded again by ``load_entries``;
        ``entry_digests``: the files read for the registry in force (``Registry.files``)."""
        self.security = security
        self.listeners = listeners or []
        self.sources = list(sources) if load_entries else []
        self.load_entries = load_entries
        self.interval_s = interval_s
        self.retry_s = retry_s
        #: the entry files as read for the policies in force
        self._entries: Digests = {Path(p): d for p, d in (entry_digests or {}).items()}
        self._missing: set[Path] = set()
        self._refused: dict[str, _Refusal] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
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
            try:
                await self.check_entries()
                for unit in list(self.security.casbin_units.values()):
                    await self.check(unit)
            except Exception:  # never let the watcher die: the rules in force stay
                log.exception("policy watcher: checking for changes failed; trying again")

    async def _digests(self, files: list[Path]) -> Digests:
        return {path: await asyncio.to_thread(digest, path) for path in files}

    def _refused_already(self, key: str, now: Digests) -> bool:
        """This content was refused, and it is not yet time to try it again."""
        refusal = self._refused.get(key)
        loop = asyncio.get_running_loop()
        return refusal is not None and refusal.digests == now and loop.time() < refusal.retry_at

    def _refuse(self, key: str, now: Digests, error: str, *, retry: bool) -> bool:
        """Note a refusal (to be tried again in ``retry_s`` if ``retry``, else only once
        the files change); True when it is news (not the same refusal tried again)."""
        before = self._refused.get(key)
        retry_at = asyncio.get_running_loop().time() + self.retry_s if retry else math.inf
        self._refused[key] = _Refusal(now, error, retry_at)
        return before is None or (before.digests, before.error) != (now, error)

    async def check(self, unit: CasbinUnit) -> bool:
        """Reload ``unit`` if its files differ from those its rules were read from;
        True when new rules took effect."""
        now = await self._digests(_casbin_files(unit))
        changed = _changes({p: unit.files.get(p, "") for p in now}, now)
        if not changed or self._refused_already(unit.entry_id, now):
            return False
        try:
            enforcer = await asyncio.to_thread(unit.load)
        except Exception as err:  # broken (or unreadable) files: the last good rules stay
            # nothing outside its own files decides it: the same bytes fail the same way
            if self._refuse(unit.entry_id, now, str(err), retry=False):
                self._report(unit.entry_id, changed, False, str(err))
            return False
        self._refused.pop(unit.entry_id, None)
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
        listed = await asyncio.to_thread(lambda: [p for p, _ in entry_files(self.sources)])
        now = await self._digests(listed)
        gone = set(self._entries) - set(now)
        if gone - self._missing:  # just went missing: maybe mid-save, look again first
            self._missing = gone
            return False
        self._missing = gone
        changed = _changes(self._entries, now)
        if not changed or self._refused_already("entry files", now):
            return False

        def reload() -> tuple[Registry, PolicyPlan]:
            written = load()
            return written, self.security.plan_reload(written)

        try:
            written, plan = await asyncio.to_thread(reload)
        except Exception as err:  # a load problem, or what running consumers cannot take
            # it may wait on a file the entries name (a new CSV not saved yet): retry
            if self._refuse("entry files", now, str(err), retry=True):
                self._report("entry files", changed, False, str(err))
            return False
        self._refused.pop("entry files", None)
        self._entries = {Path(p): d for p, d in written.files.items()}
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
                listener(policy, str(path), old, new or "removed", applied, error)
