"""One sandboxed Lua 5.1 state: build it, call its handler, map what comes back.

A state is created, used and dropped by ONE worker thread (lupa states are not
for concurrent use). A state whose call was stopped (instruction or memory limit,
cancellation) is marked ``broken`` and replaced: its hook now fails every
instruction and its globals may be half-updated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lupa import lua51

from wippy_queue.errors import HandlerError
from wippy_queue.functions.lua.convert import Converter, describe
from wippy_queue.functions.lua.host import CANCELLED, CallToken, Host
from wippy_queue.functions.lua.memory import NO_MEMORY, Memory
from wippy_queue.functions.lua.modules import ModuleSpec
from wippy_queue.functions.lua.pattern_functions import FUNCTIONS
from wippy_queue.functions.lua.patterns import MATCHER
from wippy_queue.functions.lua.prelude import CHECK_TICKS, HOOK_STEP, PRELUDE
from wippy_queue.functions.lua.program import (
    LuaHandlerError,
    LuaLimitError,
    LuaValueError,
    Program,
)

MB = 1024 * 1024
_INSTRUCTIONS = "instruction limit exceeded"


def _deny_attributes(obj: Any, name: Any, is_setting: bool) -> Any:
    """lupa's attribute filter: Lua code never reads or writes a Python attribute."""
    raise AttributeError("Python attributes are not reachable from Lua")


def new_runtime(memory_bytes: int | None = None) -> Any:
    """A bare lupa Lua 5.1 runtime with Python access switched off."""
    return lua51.LuaRuntime(
        register_eval=False,
        register_builtins=False,
        unpack_returned_tuples=True,
        attribute_filter=_deny_attributes,
        max_memory=memory_bytes,
    )


class LuaState:
    """The sandbox, the loaded chunk and its handler; ``broken`` once a call was stopped."""

    def __init__(self, program: Program, modules: Mapping[str, ModuleSpec]) -> None:
        self.program = program
        self.broken = False
        runtime = new_runtime(program.limits.memory_mb * MB)
        self.memory = Memory(runtime, program.limits.memory_mb * MB)
        self.memory.lift()  # armed only while Lua code runs (see memory.py)
        self._host: Host | None = None
        check = self._callback(self._check)
        print_ = self._callback(self._print)
        lift = self.memory.lift
        api = runtime.execute(
            PRELUDE,
            check,
            print_,
            lift,
            HOOK_STEP,
            CHECK_TICKS,
            CANCELLED,
            MATCHER,
            FUNCTIONS,
            name="prelude",
        )
        self.convert = Converter(runtime, api, self.memory)
        self.host = self._host = Host(program.entry_id, runtime, self.convert, self.memory, api.ctl)
        self._ctl = api.ctl
        self._call = api.call
        used: set[str] = set()
        for unit in program.units.values():
            names = runtime.table_from(unit.modules)
            imports = runtime.table_from(dict(unit.imports))
            api.add_unit(unit.id, unit.source, unit.chunkname, names, imports)
            used.update(unit.modules)
        for name in sorted(used):
            spec = modules.get(name)
            if spec is None:
                raise HandlerError(f"{program.entry_id}: no Lua module {name!r} is installed")
            api.add_module(name, spec.shim, runtime.table_from(dict(spec.host(self.host))))
        globals_ = runtime.globals()
        for key in list(globals_):  # handler code reaches nothing but the sandbox
            globals_[key] = None
        values = self._invoke(api.load_main, program.entry_id, program.method)
        if not values[0]:
            err = self._error(values[1] if len(values) > 1 else None)
            raise HandlerError(f"loading {program.entry_id} failed: {err}") from err
        self._handler = values[1]

    # -- host callbacks ----------------------------------------------------------------

    def _callback(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """A Python function Lua calls directly: the memory limit is lifted meanwhile."""

        def wrapper(*args: Any) -> Any:
            with self.memory.unlimited():
                return fn(*args)

        return wrapper

    def _check(self) -> bool:
        return self._host.check() if self._host is not None else False

    def _print(self, text: str) -> None:
        host = self._host
        if host is not None:
            host.log.info(text, extra={"fields": {**host.fields(), "source": "print"}})

    # -- calling -----------------------------------------------------------------------

    def call(self, token: CallToken, data: Any) -> Any:
        """Run the handler on ``data``; return the raw result for ``outcome_of``."""
        self.host.begin(token)
        try:
            arg = self.convert.to_lua(data, "body")
            values = self._invoke(self._call, self._handler, arg)
            return self._result(values)
        finally:
            self.host.end()

    @property
    def oversized(self) -> bool:
        """Does the state keep more than one call may allocate (globals grown too big)?"""
        return self.memory.retained_too_much()

    def _invoke(self, fn: Any, *args: Any) -> tuple[Any, ...]:
        """Call a Lua function under a fresh instruction budget and memory limit."""
        ctl = self._ctl
        ctl["budget"] = self.program.limits.instructions
        ctl["ticks"] = 0
        self.memory.arm()
        try:
            raw = fn(*args)
        except lua51.LuaMemoryError:
            raise self._stopped(NO_MEMORY) from None
        except lua51.LuaError as err:  # escaped the trampoline: only the hook does that
            raise self._stopped(ctl["stop"]) if ctl["stop"] else LuaHandlerError(str(err)) from None
        except UnicodeDecodeError as err:
            raise LuaValueError(f"the handler returned a string that is not UTF-8: {err}") from None
        finally:
            self.memory.lift()
        if ctl["stop"]:
            raise self._stopped(ctl["stop"])
        return raw if isinstance(raw, tuple) else (raw,)

    def _result(self, values: tuple[Any, ...]) -> Any:
        """Wippy's mapping: a value acks; ``false``, ``nil, err`` and ``error()`` nack."""
        ok, rest = values[0], values[1:]
        if not ok:
            raise self._error(rest[0] if rest else None)
        if not rest:
            return None
        first = rest[0]
        if first is None:
            err = rest[1] if len(rest) > 1 else None
            if err is None or err is False:
                return None
            return None, describe(err, self.convert) or 'the handler returned nil, ""'
        if first is False:
            return False
        return self.convert.from_lua(first, "result")

    def _error(self, value: Any) -> HandlerError:
        if self._ctl["stop"]:
            return self._stopped(self._ctl["stop"])
        if value == NO_MEMORY or isinstance(value, MemoryError):
            return self._stopped(NO_MEMORY)
        if lua51.lua_type(value) != "table":  # not wrapped by the trampoline's on_error
            return LuaHandlerError(describe(value, self.convert))
        inner = value["err"]
        if isinstance(inner, MemoryError):
            return self._stopped(NO_MEMORY)
        err = LuaHandlerError(describe(inner, self.convert))
        trace = str(value["traceback"] or "").strip()
        if trace:
            err.add_note(f"Lua {trace} (in {self.program.entry_id})")
        return err

    def _stopped(self, reason: str) -> LuaLimitError:
        self.broken = True
        limits = self.program.limits
        if reason == _INSTRUCTIONS:
            text = (
                f"stopped after {limits.instructions:,} Lua instructions "
                "(limits.instructions); a runaway loop?"
            )
        elif reason == NO_MEMORY:
            text = (
                f"stopped: it used more than its memory limit of {limits.memory_mb} MB "
                "(limits.memory_mb)"
            )
        else:
            text = reason if reason == CANCELLED else f"stopped: {reason}"
        return LuaLimitError(f"{self.program.entry_id}: {text}")


def check_syntax(program: Program) -> None:
    """Compile every unit once, so that a syntax error is a load error, not a nack."""
    runtime = new_runtime()
    compile_ = runtime.globals().loadstring
    for unit in program.units.values():
        if unit.source.startswith("\x1b"):
            raise HandlerError(f"{unit.id}: precompiled Lua chunks are not accepted; give source")
        result = compile_(unit.source, unit.chunkname)
        if isinstance(result, tuple) and result[0] is None:
            raise HandlerError(f"{unit.id}: Lua syntax error: {result[1]}")
