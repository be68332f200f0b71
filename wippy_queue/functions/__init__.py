"""Handler functions: ``function.python`` and ``function.lua``."""
