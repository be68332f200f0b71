"""The one table of kinds: what each entry kind is validated with and what builds it.

A kind is ONE row: its config model, its role (a driver, a function, or config
only), how its driver options are keyed and validated, the factory that builds it,
and the pip extra whose libraries it needs. Models, factories and checks are named
as ``"module:attribute"`` strings and imported when first needed, so a broker's
client library is imported only when an entry uses that broker, and a kind whose
extra is not installed is a load error at ``FILE:LINE`` that names the
``pip install`` command. Third-party drivers add rows through the
``wippy_queue.drivers`` entry-point group (each entry point loads to a ``Plugin``
or a sequence of them).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from wippy_queue.errors import Problem
from wippy_queue.queue.config import ConsumerConfig, QueueConfig
from wippy_queue.queue.driver import Capabilities
from wippy_queue.registry.entry import Entry, EntryModel
from wippy_queue.registry.kinds import KindTable, RegistryCheck
from wippy_queue.registry.registry import Registry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "wippy_queue.drivers"

#: ``"module:attribute"``, or the object itself (tests, programmatic registration)
Target = str | Any


def resolve(target: Target) -> Any:
    """Import ``"package.module:attr.sub"`` (or return a non-string target as is)."""
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    value: Any = importlib.import_module(module_name)
    for part in attr.split(".") if attr else ():
        value = getattr(value, part)
    return value


@dataclass(frozen=True, slots=True)
class Plugin:
    """One entry kind.

    ``factory``: for a driver, called with the entry, returns the Driver; for a
    function, called once per runtime with no arguments, returns a builder whose
    ``build(entry, registry)`` makes each consumer's Handler.
    """

    kind: str
    config: Target
    role: Literal["driver", "function", "config"] = "config"
    factory: Target | None = None
    #: a driver's key in ``driver_options`` (``memory`` for ``queue.driver.memory``)
    options_key: str | None = None
    queue_options: Target | None = None
    consumer_options: Target | None = None
    #: a driver's ``Capabilities`` (what a configuration may ask of it)
    capabilities: Target | None = None
    #: registry checks run when the registry has an entry of this kind
    #: (each ``(Registry) -> Iterable[Problem]``)
    checks: tuple[Target, ...] = ()
    #: at most one entry of this kind (a runtime-wide setting)
    single: bool = False
    #: modules that must be importable, and what installs them: our pip extra
    #: (``redis`` -> ``wippy-queue[redis]``) or else a requirement (``lupa>=2.0``)
    needs: tuple[str, ...] = ()
    extra: str | None = None
    requirement: str | None = None

    def missing(self) -> list[str]:
        """The modules of ``needs`` that cannot be imported here."""
        return [name for name in self.needs if importlib.util.find_spec(name) is None]

    def install_hint(self) -> str:
        if self.extra:
            return f"pip install 'wippy-queue[{self.extra}]'"
        return f"pip install '{self.requirement or ' '.join(self.needs)}'"


class Plugins:
    """The kinds one runtime knows, by kind name."""

    def __init__(self, plugins: Iterable[Plugin]) -> None:
        self._plugins: dict[str, Plugin] = {}
        for plugin in plugins:
            self.add(plugin)

    def add(self, plugin: Plugin) -> None:
        if plugin.kind in self._plugins:
            raise ValueError(f"kind {plugin.kind!r} is already registered")
        self._plugins[plugin.kind] = plugin

    def replace(self, kind: str, **changes: Any) -> None:
        """Change one row (e.g. a test's ``factory``); the kind must exist."""
        self._plugins[kind] = replace(self._plugins[kind], **changes)

    def __iter__(self) -> Iterator[Plugin]:
        return iter(self._plugins.values())

    def get(self, kind: str) -> Plugin:
        return self._plugins[kind]

    def of_role(self, role: str) -> list[Plugin]:
        return [p for p in self if p.role == role]

    def kind_table(self, extra_checks: Sequence[RegistryCheck] = ()) -> KindTable:
        """What the loader validates with: every model (imported lazily) and check."""
        table = KindTable()
        for plugin in self:
            table.register(plugin.kind, _lazy_model(plugin.config))
        table.add_check(self.check_extras)
        table.add_check(self.check_single)
        table.add_check(self.check_driver_options)
        table.add_check(self.check_capabilities)
        table.add_check(self.check_unverifiable_provenance)
        for plugin in self:
            for check in plugin.checks:
                table.add_check(_lazy_check(plugin.kind, check))
        for check in extra_checks:
            table.add_check(check)
        return table

    def check_extras(self, registry: Registry) -> Iterator[Problem]:
        """An entry whose kind needs an uninstalled library: say what to install."""
        for plugin in self:
            if not plugin.needs:
                continue
            entries = registry.of_kind(plugin.kind)
            missing = plugin.missing() if entries else []
            for entry in entries if missing else ():
                yield Problem(
                    f"{plugin.kind} needs {', '.join(missing)}, which is not installed: "
                    f"{plugin.install_hint()}",
                    entry.location.file,
                    entry.location.line_of("kind"),
                    entry.id,
                    "kind",
                )

    def check_single(self, registry: Registry) -> Iterator[Problem]:
        for plugin in self:
            entries = registry.of_kind(plugin.kind) if plugin.single else []
            for extra in entries[1:]:
                yield Problem(
                    f"a second {plugin.kind} entry; {entries[0].id} already sets it: keep one",
                    extra.location.file,
                    extra.location.line,
                    extra.id,
                )

    def driver_plugin(self, registry: Registry, driver_id: str) -> Plugin | None:
        driver = registry.entries.get(driver_id)
        plugin = self._plugins.get(driver.kind) if driver is not None else None
        return plugin if plugin is not None and plugin.role == "driver" else None

    def check_capabilities(self, registry: Registry) -> Iterator[Problem]:
        """A queue must not need what its driver cannot do (say so at load, not at run)."""
        delays = _delays(registry)
        for entry in registry.of_kind("queue.queue"):
            assert isinstance(entry.config, QueueConfig)
            plugin = self.driver_plugin(registry, entry.config.driver)
            if plugin is None or plugin.capabilities is None:
                continue
            capabilities: Capabilities = resolve(plugin.capabilities)
            if entry.config.partition_by and not capabilities.partitions:
                yield Problem(
                    f"{plugin.kind} has no partitions; drop partition_by or use a driver "
                    "that has them (see the README's Drivers table)",
                    entry.location.file,
                    entry.location.line_of("partition_by"),
                    entry.id,
                    "partition_by",
                )
            own = ("retry_delay.max", entry.config.retry_delay.max, "retry_delay")
            for what, seconds, field in [*delays, own]:
                if seconds > capabilities.max_delay_s:
                    yield Problem(
                        f"{what} is {seconds:g}s but {plugin.kind} holds a nacked message back "
                        f"at most {capabilities.max_delay_s:g}s; lower it",
                        entry.location.file,
                        entry.location.line_of(field),
                        entry.id,
                        field,
                    )

    def check_unverifiable_provenance(self, registry: Registry) -> Iterator[Problem]:
        """A policy that decides on who published, on a broker, with no key to verify
        the stamp: every broker message is anonymous to it (the stamp is dropped)."""
        from wippy_queue.security.manager import reads_provenance, settings_of

        settings = settings_of(registry)
        if settings.key_ring():
            return
        for entry in registry.of_kind("queue.consumer"):
            assert isinstance(entry.config, ConsumerConfig)
            block = entry.config.lifecycle.security
            queue = registry.entries.get(entry.config.queue)
            if block is None or queue is None or not isinstance(queue.config, QueueConfig):
                continue
            plugin = self.driver_plugin(registry, queue.config.driver)
            if plugin is None or plugin.capabilities is None:
                continue
            capabilities: Capabilities = resolve(plugin.capabilities)
            readers = reads_provenance(registry, block) if capabilities.shared else []
            if readers:
                yield Problem(
                    f"policies {', '.join(readers)} decide on who published, but "
                    f"{plugin.kind} messages can come from anyone with access to the broker "
                    "and no signing key is set to verify the stamp: every message is "
                    "anonymous to them; set security.settings signing_key(s)",
                    entry.location.file,
                    entry.location.line_of("lifecycle"),
                    entry.id,
                    "lifecycle.security.policies",
                    severity="error" if settings.strict else "warning",
                )

    def check_driver_options(self, registry: Registry) -> Iterator[Problem]:
        """Each queue's and consumer's options for its driver, against that driver's models."""
        for entry in registry.of_kind("queue.queue"):
            assert isinstance(entry.config, QueueConfig)
            plugin = self.driver_plugin(registry, entry.config.driver)
            if plugin is not None and plugin.options_key:
                options = entry.config.options_for(plugin.options_key)
                field = "driver_options" if "driver_options" in entry.location.field_lines else None
                yield from _check_options(entry, plugin, plugin.queue_options, options, field)
        for entry in registry.of_kind("queue.consumer"):
            assert isinstance(entry.config, ConsumerConfig)
            queue = registry.entries.get(entry.config.queue)
            if queue is None or not isinstance(queue.config, QueueConfig):
                continue
            plugin = self.driver_plugin(registry, queue.config.driver)
            if plugin is not None and plugin.options_key:
                options = entry.config.driver_options.get(plugin.options_key, {})
                yield from _check_options(
                    entry, plugin, plugin.consumer_options, options, "driver_options"
                )


def _delays(registry: Registry) -> list[tuple[str, float, str]]:
    """The longest runtime-wide nack delays the runtime may ask of a driver, where they
    are set, and the queue field a problem points at (a queue's own ``retry_delay`` is
    checked with the queue)."""
    from wippy_queue.security.models import SecuritySettingsConfig

    found = []
    for entry in registry.of_kind("security.settings"):
        assert isinstance(entry.config, SecuritySettingsConfig)
        max_s = entry.config.deny_backoff.max
        found.append(("security.settings deny_backoff.max", max_s, "driver"))
    return found


def _check_options(
    entry: Entry,
    plugin: Plugin,
    model_target: Target | None,
    options: dict[str, Any],
    field: str | None,
) -> Iterator[Problem]:
    """Problems of ``options`` against ``model_target`` (no model: none are accepted)."""
    key = plugin.options_key
    prefix = f"{field}.{key}" if field else "options"
    if model_target is None:
        if options:
            yield Problem(
                f"{plugin.kind} takes no options here (got {', '.join(options)})",
                entry.location.file,
                entry.location.line_of(field or "options"),
                entry.id,
                prefix,
            )
        return
    model: type[BaseModel] = resolve(model_target)
    try:
        model.model_validate(options)
    except ValidationError as err:
        for error in err.errors():
            where = ".".join(str(p) for p in error["loc"])
            yield Problem(
                f"{key} option {where}: {error['msg']} (got {error.get('input')!r}); "
                f"known options: {', '.join(model.model_fields)}",
                entry.location.file,
                entry.location.line_of(field or "options"),
                entry.id,
                f"{prefix}.{where}",
            )


def _lazy_model(target: Target) -> Callable[[], type[EntryModel]]:
    return lambda: resolve(target)


def _lazy_check(kind: str, target: Target) -> RegistryCheck:
    """``target``, imported and run only for a registry with an entry of ``kind``."""

    def check(registry: Registry) -> Iterable[Problem]:
        if not registry.of_kind(kind):
            return ()
        found: Iterable[Problem] = resolve(target)(registry)
        return found

    return check


BUILTIN = (
    Plugin("queue.queue", "wippy_queue.queue.config:QueueConfig"),
    Plugin(
        "queue.consumer",
        "wippy_queue.queue.config:ConsumerConfig",
        checks=(
            "wippy_queue.queue.checks:warn_no_dead_letter",
            "wippy_queue.queue.checks:refuse_auto_ack_audited",
            "wippy_queue.security.kinds:check_groups",
            "wippy_queue.security.kinds:warn_unchecked",
            "wippy_queue.security.kinds:warn_shared_tenants",
        ),
    ),
    Plugin(
        "queue.driver.memory",
        "wippy_queue.drivers.memory:MemoryDriverConfig",
        role="driver",
        factory="wippy_queue.drivers.memory:MemoryDriver.from_entry",
        options_key="memory",
        queue_options="wippy_queue.drivers.memory:MemoryQueueOptions",
        capabilities="wippy_queue.drivers.memory:CAPABILITIES",
    ),
    Plugin(
        "queue.driver.redis",
        "wippy_queue.drivers.redis.config:RedisDriverConfig",
        role="driver",
        factory="wippy_queue.drivers.redis.driver:RedisDriver.from_entry",
        options_key="redis",
        queue_options="wippy_queue.drivers.redis.config:RedisQueueOptions",
        consumer_options="wippy_queue.drivers.redis.config:RedisConsumerOptions",
        capabilities="wippy_queue.drivers.redis.config:CAPABILITIES",
        needs=("redis",),
        extra="redis",
    ),
    Plugin(
        "queue.driver.sqlite",
        "wippy_queue.drivers.sqlite.config:SqliteDriverConfig",
        role="driver",
        factory="wippy_queue.drivers.sqlite.driver:SqliteDriver.from_entry",
        options_key="sqlite",
        queue_options="wippy_queue.drivers.sqlite.config:SqliteQueueOptions",
        capabilities="wippy_queue.drivers.sqlite.config:CAPABILITIES",
    ),
    Plugin(
        "queue.driver.amqp",
        "wippy_queue.drivers.amqp.config:AmqpDriverConfig",
        role="driver",
        factory="wippy_queue.drivers.amqp.driver:AmqpDriver.from_entry",
        options_key="amqp",
        queue_options="wippy_queue.drivers.amqp.config:AmqpQueueOptions",
        consumer_options="wippy_queue.drivers.amqp.config:AmqpConsumerOptions",
        capabilities="wippy_queue.drivers.amqp.config:CAPABILITIES",
        needs=("aio_pika",),
        extra="amqp",
    ),
    Plugin(
        "queue.driver.sqs",
        "wippy_queue.drivers.sqs.config:SqsDriverConfig",
        role="driver",
        factory="wippy_queue.drivers.sqs.driver:SqsDriver.from_entry",
        options_key="sqs",
        queue_options="wippy_queue.drivers.sqs.config:SqsQueueOptions",
        capabilities="wippy_queue.drivers.sqs.config:CAPABILITIES",
        needs=("aiobotocore",),
        extra="sqs",
    ),
    Plugin(
        "function.python",
        "wippy_queue.functions.python:PythonFunctionConfig",
        role="function",
        factory="wippy_queue.functions.python:PythonFunctions",
    ),
    Plugin(
        "function.lua",
        "wippy_queue.functions.lua.config:LuaFunctionConfig",
        role="function",
        factory="wippy_queue.functions.lua.library:LuaFunctions",
        checks=("wippy_queue.functions.lua.library:check",),
        needs=("lupa",),
        requirement="lupa>=2.0",
    ),
    Plugin("security.policy", "wippy_queue.security.models:WippyPolicyConfig"),
    Plugin("security.policy.casbin", "wippy_queue.security.models:CasbinPolicyConfig"),
    Plugin("security.settings", "wippy_queue.security.models:SecuritySettingsConfig", single=True),
    Plugin("security.audit", "wippy_queue.audit.config:AuditConfig", single=True),
)


def entry_point_plugins() -> list[Plugin]:
    """Rows from installed packages' ``wippy_queue.drivers`` entry points."""
    found: list[Plugin] = []
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = point.load()
        except Exception as err:  # a broken third-party package must not stop ours
            log.warning("entry point %s (%s) cannot be loaded: %s", point.name, point.value, err)
            continue
        rows = [loaded] if isinstance(loaded, Plugin) else list(loaded)
        found += [row for row in rows if isinstance(row, Plugin)]
    return found


def default_plugins() -> Plugins:
    """The built-in kinds plus those installed packages register."""
    return Plugins([*BUILTIN, *entry_point_plugins()])
