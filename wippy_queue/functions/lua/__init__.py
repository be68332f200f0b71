"""``function.lua``: Lua handlers run as in Wippy, in sandboxed Lua 5.1 states (lupa).

Importing this package does not import lupa (a dependency); building a handler
does, so a broken lupa install is a load error naming the entry, not an import crash.
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
