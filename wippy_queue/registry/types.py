"""Field types shared by entry models: registry references and durations."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, ValidationInfo

from wippy_queue.errors import RegistryError
from wippy_queue.registry.ids import qualify

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds from ``10``, ``2.5``, ``"500ms"``, ``"10s"``, ``"1m30s"`` or ``"2h"``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 10s or 500ms, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(
                    f"{value!r} is not a duration; write e.g. 10s, 500ms, 1m30s or 2h"
                ) from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ValueError(f"expected a duration such as 10s or 500ms, got {value!r}")
    if not math.isfinite(seconds):  # (nan would pass every bound: a retry loop at once)
        raise ValueError(f"a duration must be a finite number of seconds, got {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


def _qualify(value: str, info: ValidationInfo) -> str:
    namespace = (info.context or {}).get("namespace")
    try:
        return qualify(value, namespace)
    except RegistryError as err:
        raise ValueError(str(err)) from None


#: Seconds, written in YAML as a number or a duration string.
Duration = Annotated[float, BeforeValidator(parse_duration)]

#: A registry ID; an unqualified name resolves in the entry's own namespace.
Ref = Annotated[str, AfterValidator(_qualify)]
