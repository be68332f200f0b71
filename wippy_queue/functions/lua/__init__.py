"""``function.lua``: Lua handlers run as in Wippy, in sandboxed Lua 5.1 states (lupa).

Importing this package does not import lupa; building a handler does (install the
``lua`` extra: ``pip install 'wippy-queue[lua]'``).
"""

from wippy_queue.functions.lua.config import MODULE_NAMES, LuaFunctionConfig, LuaLimits, LuaPool
from wippy_queue.functions.lua.library import LuaFunctions
from wippy_queue.functions.lua.program import LuaHandlerError, LuaLimitError, LuaValueError

__all__ = [
    "MODULE_NAMES",
    "LuaFunctionConfig",
    "LuaFunctions",
    "LuaHandlerError",
    "LuaLimitError",
    "LuaLimits",
    "LuaPool",
    "LuaValueError",
]
