"""Entry files -> what a runtime (or a policy tool) runs on.

Loading validates every entry with the plugin table's models and checks. The
Casbin check reads and indexes each policy once; the units it read are handed on
explicitly (``Loaded.casbin``), so a runtime does not read them a second time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from wippy_queue.plugins import Plugins, default_plugins
from wippy_queue.registry.kinds import KindTable
from wippy_queue.registry.loader import load_registry
from wippy_queue.registry.registry import Registry
from wippy_queue.security.kinds import CasbinLoads


@dataclass(frozen=True)
class Loaded:
    registry: Registry
    plugins: Plugins
    #: the Casbin units the load-time check read (a runtime takes them over)
    casbin: CasbinLoads
    #: what the files were loaded with (a policy reload loads them again with it)
    kinds: KindTable


def load(paths: Iterable[str | os.PathLike[str]], plugins: Plugins | None = None) -> Loaded:
    """Load entry files or folders; raise ConfigError listing every problem."""
    plugins = plugins or default_plugins()
    casbin = CasbinLoads()
    kinds = plugins.kind_table(extra_checks=[casbin.check])
    return Loaded(load_registry(list(paths), kinds), plugins, casbin, kinds)
