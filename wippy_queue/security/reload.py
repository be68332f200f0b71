"""Hot reload of policies while consumers run.

A watcher polls, 4 times a second, the model and policy files of every
``security.policy.casbin`` entry and, when the runtime was loaded from entry
files, those files too (``security.policy`` entries are written there), including
files added to or removed from a loaded folder. Each file's digest is compared
with the digest of the bytes the rules in force were read from, so no edit is
missed, whenever it lands.

A change is loaded once it has held still for one look (a file saved by renaming
is not taken while missing); the rules in force change only when the new ones load
with no error and their change has been recorded. New rules that grant no more than
those in force take effect then; rules that may grant more (``growth.py``) only once
their files have held still for ``settle_s`` and each ends with a newline, so that a
file still being written (a writer pausing mid-file) never grants anything. A refusal keeps the
last good rules, is logged and audited once, and the same content is tried again
after a back-off (2 s, doubling to a minute: an entry file may name a policy file
that is not saved yet, and a read can fail for a passing reason). Entry files are
loaded again whole, with every check a start runs; only policy entries take effect
at once, and the log names any other entry whose change waits for a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from wippy_queue.files import read_regular
from wippy_queue.registry.registry import Registry
from wippy_queue.registry.source import entry_files
from wippy_queue.security.growth import policies_grant_no_more, rules_grant_no_more
from wippy_queue.security.iothread import IoThread
from wippy_queue.security.manager import PolicyPlan, Security
from wippy_queue.security.units import CasbinUnit

log = logging.getLogger(__name__)

#: (policy id, file, old digest, new digest, applied, error)
ReloadListener = Callable[[str, str, str, str, bool, str | None], None]
#: loads the entry files again (in a thread), raising ConfigError on any problem
RegistryLoader = Callable[[], Registry]
Digests = dict[Path, str]
RETRY_S = 2.0
#: how long rules that may grant more must have held still (8 looks)
SETTLE_S = 2.0
MAX_RETRY_S = 60.0
ENTRIES = "entry files"
#: the files that Casbin units loaded afresh by an entry reload read
FRESH_UNITS = "fresh units"
NOT_RECORDED = "the change could not be recorded (audit trail), so it is not put in force"


#: the longest a look at one file, and a load of new rules, may take
READ_TIMEOUT_S = 5.0
LOAD_TIMEOUT_S = 60.0


def digest(path: Path) -> str:
    return look(path)[0]


def look(path: Path) -> tuple[str, bool]:
    """The file's digest, and whether it is finished: empty, absent, or ending with a
    newline (a file cut off mid-line is still being written, or was torn)."""
    try:
        data = read_regular(path)
    except OSError as err:
        return f"unreadable: {err.strerror}", True
    return hashlib.sha256(data).hexdigest(), not data or data.endswith(b"\n")


def _casbin_files(unit: CasbinUnit) -> list[Path]:
    return [p for p in (unit.model_path, unit.policy_path) if p is not None]


def _changes(before: Mapping[Path, str], now: Mapping[Path, str]) -> list[tuple[Path, str, str]]:
    """(file, old digest, new digest) for each file that differs; '' is absent."""
    paths = sorted({*before, *now})
    return [(p, before.get(p, ""), now.get(p, "")) for p in paths if before.get(p) != now.get(p)]


@dataclass
class _Seen:
    """Content a look saw, since when it has held still, and (once loaded) whether its
    rules may grant more than those in force."""

    digests: Digests
    since: float
    grows: bool | None = None


#: the verdicts of ``_settled``
WAIT, TAKE = "wait", "take"


@dataclass(frozen=True)
class _Refusal:
    """Content that was refused, why, and when (after ``backoff_s``) to try it again."""

    digests: Digests
    error: str
    retry_at: float
    backoff_s: float
    #: whether every listener (the audit trail) took the refusal; if not, it is told again
    recorded: bool


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
        settle_s: float = SETTLE_S,
    ) -> None:
        """``sources``: the entry files and folders, loaded again by ``load_entries``;
        ``entry_digests``: the files read for the registry in force (``Registry.files``)."""
        self.security = security
        self.listeners = listeners or []
        self.sources = list(sources) if load_entries else []
        self.load_entries = load_entries
        self.interval_s = interval_s
        self.retry_s = retry_s
        #: how long rules that may grant more must have held still before they count
        self.settle_s = settle_s
        #: what the settling is timed with (a test drives it by hand)
        self.clock: Callable[[], float] = time.monotonic
        #: files whose last look found them cut off mid-line
        self._unfinished: set[Path] = set()
        #: the entry files as read for the policies in force
        self._entries: Digests = {Path(p): d for p, d in (entry_digests or {}).items()}
        #: per source (ENTRIES or a CasbinUnit): a change seen at the last look
        self._seen: dict[Hashable, _Seen] = {}
        self._refused: dict[Hashable, _Refusal] = {}
        #: digests taken during one poll (a file shared by several entries is read once)
        self._poll: Digests | None = None
        self._task: asyncio.Task[None] | None = None
        #: the looks and loads run here, one thread reused (not one started per look)
        self._io = IoThread("policy-watcher-io")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="policy-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._io.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self._poll = {}
            try:
                await self.check_entries()
                for unit in list(self.security.casbin_units.values()):
                    await self.check(unit)
            except Exception:  # never let the watcher die: the rules in force stay
                log.exception("policy watcher: checking for changes failed; trying again")
            finally:
                self._poll = None

    async def _digests(self, files: list[Path], *, fresh: bool = False) -> Digests:
        poll = None if fresh else self._poll
        found: Digests = {}
        for path in files:
            polled = poll.get(path) if poll is not None else None
            if polled is None:
                polled = await self._look(path)
                if poll is not None:
                    poll[path] = polled
            found[path] = polled
        return found

    async def _look(self, path: Path) -> str:
        """The file's digest; whether it ends mid-line is noted in ``_unfinished``."""
        try:
            found, finished = await self._io.run(partial(look, path), READ_TIMEOUT_S)
        except TimeoutError:
            found, finished = f"unreadable: no answer within {READ_TIMEOUT_S}s", True
        if finished:
            self._unfinished.discard(path)
        else:
            self._unfinished.add(path)
        return found

    def _ready(self, source: Hashable, now: Digests, in_force: Mapping[Path, str]) -> bool:
        """Whether to load ``now``: it differs from what is in force, it is what the last
        look saw too (not being written), and it was not refused lately."""
        if now == in_force:
            self._seen.pop(source, None)
            return False
        seen = self._seen.get(source)
        if seen is None or seen.digests != now:
            self._seen[source] = _Seen(now, self.clock())  # held still for one look first
            return False
        if seen.grows and self.clock() - seen.since < self.settle_s:
            return False  # loaded already: it grants more, and has not held still enough
        refusal = self._refused.get(source)
        loop = asyncio.get_running_loop()
        return refusal is None or refusal.digests != now or loop.time() >= refusal.retry_at

    def _settled(self, source: Hashable, grows: bool, changed: list[Path]) -> str:
        """Whether rules just loaded may take effect now (TAKE), must wait (WAIT), or are
        refused (the error). Rules that grant no more take effect at once. Rules that
        may grant more count only from files that have held still for ``settle_s`` and
        whose every changed file ends with a newline: a file caught mid-write (a writer
        pausing for less than ``settle_s``) is never taken."""
        seen = self._seen[source]
        seen.grows = grows
        if not grows:
            return TAKE
        since = seen.since
        if source is ENTRIES and FRESH_UNITS in self._seen:  # and the files they load
            since = max(since, self._seen[FRESH_UNITS].since)
        if self.clock() - since < self.settle_s:
            return WAIT
        cut = [str(p) for p in changed if p in self._unfinished]
        if cut:
            return (
                f"{', '.join(cut)} does not end with a newline: it may still be being "
                "written, so rules that grant more are not taken from it; end its last line"
            )
        return TAKE

    async def _refuse(
        self,
        source: Hashable,
        label: str,
        files: list[Path],
        now: Digests,
        in_force: Mapping[Path, str],
        error: str,
    ) -> None:
        """Keep the rules in force; report it once per content and error, back off."""
        if await self._digests(files, fresh=True) != now:
            return  # the files moved on while loading: the next look decides
        before = self._refused.get(source)
        same = before is not None and before.digests == now
        backoff = min(before.backoff_s * 2, MAX_RETRY_S) if before and same else self.retry_s
        retry_at = asyncio.get_running_loop().time() + backoff
        if before is not None and same and before.error == error and before.recorded:
            recorded = True  # said already
        else:
            recorded = self._report(label, _changes(in_force, now), False, error)
        self._refused[source] = _Refusal(now, error, retry_at, backoff, recorded)

    async def check(self, unit: CasbinUnit) -> bool:
        """Reload ``unit`` if its files differ from those its rules were read from;
        True when new rules took effect."""
        files = _casbin_files(unit)
        now = await self._digests(files)
        in_force = {p: unit.files.get(p, "") for p in files}
        if not self._ready(unit, now, in_force):
            return False
        try:
            enforcer = await self._io.run(unit.load, LOAD_TIMEOUT_S)
        except Exception as err:  # broken, unreadable, half-read: the last good rules stay
            await self._refuse(unit, unit.entry_id, files, now, in_force, str(err))
            return False
        if dict(enforcer.files) != now:
            return False  # read while being written: it must hold still for a look first
        changes = _changes(in_force, now)
        grows = not rules_grant_no_more(unit.enforcer, enforcer)
        verdict = self._settled(unit, grows, [p for p, _, new in changes if new])
        if verdict is WAIT:
            return False
        if verdict is not TAKE:
            await self._refuse(unit, unit.entry_id, files, now, in_force, verdict)
            return False
        if not self._report(unit.entry_id, changes, True, None):
            await self._refuse(unit, unit.entry_id, files, now, in_force, NOT_RECORDED)
            return False
        self._refused.pop(unit, None)
        self._seen.pop(unit, None)
        unit.install(enforcer)
        self.security.clear_caches()
        return True

    async def check_entries(self) -> bool:
        """Reload the policy entries if an entry file changed, appeared or went away;
        True when they took effect."""
        load = self.load_entries
        if load is None:
            return False
        listed = await self._io.run(
            lambda: [p for p, _ in entry_files(self.sources)], READ_TIMEOUT_S
        )
        now = await self._digests(listed)  # a file gone from the listing is absent
        if not self._ready(ENTRIES, now, self._entries):
            return False

        try:
            written, plan = await self._io.run(partial(self._plan, load), LOAD_TIMEOUT_S)
        except Exception as err:  # a load problem, or what running consumers cannot take
            await self._refuse(ENTRIES, ENTRIES, listed, now, self._entries, str(err))
            return False
        if {Path(p): d for p, d in written.files.items()} != now:
            return False  # an entry file moved on while loading: it must hold still first
        unit_changes = await self._fresh_units(plan)
        if unit_changes is None:
            return False
        changes = _changes(self._entries, now) + unit_changes
        grows = not policies_grant_no_more(self.security.policy_configs, plan.configs, plan.changed)
        verdict = self._settled(ENTRIES, grows, [p for p, _, new in changes if new])
        if verdict is WAIT:
            return False
        if verdict is not TAKE:
            await self._refuse(ENTRIES, ENTRIES, listed, now, self._entries, verdict)
            return False
        if plan.changed and not self._report(", ".join(plan.changed), changes, True, None):
            await self._refuse(ENTRIES, ENTRIES, listed, now, self._entries, NOT_RECORDED)
            return False
        for source in (ENTRIES, FRESH_UNITS):
            self._refused.pop(source, None)
            self._seen.pop(source, None)
        self._entries = now
        return self._install(plan)

    def _plan(self, load: RegistryLoader) -> tuple[Registry, PolicyPlan]:
        """In a thread: the entry files loaded again, and what they change."""
        written = load()
        return written, self.security.plan_reload(written)

    def _install(self, plan: PolicyPlan) -> bool:
        if plan.restart_needed:
            log.warning(
                "entry files changed: %s take effect at the next start (only policy "
                "entries are reloaded while running)",
                ", ".join(plan.restart_needed),
            )
        if not plan.changed:
            return False
        self.security.install(plan)
        live = set(map(id, self.security.casbin_units.values()))
        for table in (self._seen, self._refused):  # replaced units are watched no more
            for source in [s for s in table if isinstance(s, CasbinUnit) and id(s) not in live]:
                del table[source]
        return True

    async def _fresh_units(self, plan: PolicyPlan) -> list[tuple[Path, str, str]] | None:
        """The file changes of the Casbin units an entry reload loaded afresh (their
        config changed), recorded with the entries'; None while those files have not
        held still for a look (as every file must before it counts)."""
        running = self.security.casbin_units
        fresh = {pid: u for pid, u in plan.casbin_units.items() if running.get(pid) is not u}
        read = {p: d for u in fresh.values() for p, d in u.files.items()}
        seen = self._seen.get(FRESH_UNITS)
        if read and (
            seen is None
            or seen.digests != read
            or await self._digests(list(read), fresh=True) != read
        ):
            self._seen[FRESH_UNITS] = _Seen(read, self.clock())
            return None
        changes = []
        for pid, unit in fresh.items():
            changes += _changes(running[pid].files if pid in running else {}, unit.files)
        return changes

    def _report(
        self,
        policy: str,
        changed: list[tuple[Path, str, str]],
        applied: bool,
        error: str | None,
    ) -> bool:
        """Log and tell the listeners (the audit trail); False if one of them failed."""
        recorded = True
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
                try:
                    listener(policy, os.path.abspath(path), old, new or "removed", applied, error)
                except Exception:
                    log.exception("policy %s: recording the reload of %s failed", policy, path)
                    recorded = False
        return recorded
