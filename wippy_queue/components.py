"""The kinds wippy-queue understands and what builds each one at run time.

This is the one table a new kind is added to: its config model (for the loader)
and its builder (for the runtime). Neither the loader nor the runtime names kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from wippy_queue.drivers.memory import MemoryDriver, MemoryDriverConfig, check_queue_options
from wippy_queue.functions.lua import LuaFunctionConfig, LuaFunctions
from wippy_queue.functions.python import PythonFunctionConfig, PythonFunctions
from wippy_queue.queue.config import ConsumerConfig, QueueConfig
from wippy_queue.queue.driver import Driver
from wippy_queue.queue.handler import Handler
from wippy_queue.registry.entry import Entry
from wippy_queue.registry.kinds import KindTable
from wippy_queue.security import kinds as security_kinds

DriverFactory = Callable[[Entry], Driver]
FunctionFactory = Callable[[Entry], Handler]


@dataclass
class Components:
    kinds: KindTable = field(default_factory=KindTable)
    drivers: dict[str, DriverFactory] = field(default_factory=dict)
    functions: dict[str, FunctionFactory] = field(default_factory=dict)
    #: Casbin entries loaded by the registry check, handed to the runtime
    casbin: security_kinds.CasbinLoads = field(default_factory=security_kinds.CasbinLoads)


def default_components() -> Components:
    c = Components()
    c.kinds.register("queue.queue", QueueConfig)
    c.kinds.register("queue.consumer", ConsumerConfig)
    c.kinds.register("queue.driver.memory", MemoryDriverConfig)
    c.drivers["queue.driver.memory"] = lambda entry: MemoryDriver(entry.id)
    c.kinds.add_check(check_queue_options)
    c.kinds.register("function.python", PythonFunctionConfig)
    c.functions["function.python"] = PythonFunctions().build
    lua = LuaFunctions()  # imports lupa only when a function.lua handler is built
    c.kinds.register("function.lua", LuaFunctionConfig)
    c.kinds.add_check(lua.check)
    c.functions["function.lua"] = lua.build
    security_kinds.register(c.kinds, c.casbin)
    return c
