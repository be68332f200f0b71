"""``function.python``: a Python callable, async or plain.

Plain functions run in a per-consumer thread pool of ``concurrency`` threads with
the call context copied in (the stdlib does not do that for executors). The
consumer's prefetched messages wait in the pool's queue, checked and ready, so a
thread that finishes a call starts the next at once; the ``timeout`` counts from
when a call starts. A call that outlives its caller (the timeout, a stop) gets its
thread replaced, so a hung handler does not take the consumer's capacity away.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from wippy_queue.errors import HandlerError
from wippy_queue.functions.threads import HandlerThreads
from wippy_queue.queue.handler import Handler
from wippy_queue.registry.entry import Entry, EntryModel
from wippy_queue.registry.registry import Registry

_DOTTED = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$")


class PythonFunctionConfig(EntryModel):
    """``function.python``: ``source: file://x.py`` + ``method``, or ``pkg.module:function``."""

    source: str
    method: str | None = Field(default=None, pattern=r"^[A-Za-z_]\w*$")

    @model_validator(mode="after")
    def _shape(self) -> PythonFunctionConfig:
        if self.source.startswith("file://"):
            path = Path(self.source.removeprefix("file://"))
            if not self.method:
                raise ValueError(
                    "a file:// source needs 'method': the name of the function in the file"
                )
            if path.suffix != ".py":
                raise ValueError(f"source {path} is not a .py file")
            if not path.is_file():
                raise ValueError(f"source file {path} does not exist")
        elif not _DOTTED.match(self.source):
            raise ValueError(
                f"source {self.source!r} is neither file://path.py nor package.module:function"
            )
        elif ":" not in self.source and not self.method:
            raise ValueError(
                "source names a module without a function: write 'package.module:function' "
                "or add 'method'"
            )
        return self


def _load_file(path: Path, entry_id: str) -> Any:
    name = "wippy_queue_handlers." + entry_id.replace(":", ".").replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise HandlerError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # (sys.exit() at import too: a load error, not an exit)
        sys.modules.pop(name, None)
        raise HandlerError(f"importing {path} failed: {type(err).__name__}: {err}") from err
    return module


def resolve(
    config: PythonFunctionConfig, entry_id: str, files: dict[str, Any] | None = None
) -> Callable[..., Any]:
    """Find the callable a ``function.python`` entry names; HandlerError says why not.

    ``files`` caches handler files already executed (one runtime loads each once).
    """
    if config.source.startswith("file://"):
        path = Path(config.source.removeprefix("file://"))
        files = {} if files is None else files
        module = files.get(str(path))
        if module is None:
            module = files[str(path)] = _load_file(path, entry_id)
        attr = config.method
        where = config.source.removeprefix("file://")
    else:
        module_name, _, attr_name = config.source.partition(":")
        attr = config.method or attr_name
        where = module_name
        try:
            module = importlib.import_module(module_name)
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # (sys.exit() at import too)
            raise HandlerError(
                f"cannot import module {module_name!r}: {type(err).__name__}: {err}"
            ) from err
    fn = getattr(module, attr or "", None)
    if not callable(fn):
        raise HandlerError(f"{where} has no function {attr!r}; check 'method' or 'source'")
    return fn  # type: ignore[no-any-return]


class PythonHandler(Handler):
    def __init__(self, entry_id: str, fn: Callable[..., Any]) -> None:
        super().__init__(entry_id)
        self._fn = fn
        self._async = inspect.iscoroutinefunction(fn)
        self._threads: HandlerThreads | None = None

    async def start(self, *, concurrency: int, timeout_s: float | None = None) -> None:
        if not self._async and self._threads is None:
            self._threads = HandlerThreads(
                concurrency, self.entry_id, replace_abandoned=True, timeout_s=timeout_s
            )

    def backlog(self, prefetch: int) -> int:
        """A plain function's prefetched calls wait in its thread queue (see Handler)."""
        return 0 if self._async else prefetch

    def drop_backlog(self) -> None:
        if self._threads is not None:
            self._threads.cancel_waiting()

    async def close(self) -> None:
        if self._threads is not None:
            self._threads.close()
            self._threads = None

    async def call(self, data: Any) -> Any:
        if self._async:
            return await self._fn(data)
        threads = self._threads
        assert threads is not None, "start() the handler first"
        future = threads.submit(self._fn, data)
        try:
            return await future
        except asyncio.CancelledError:  # timed out or stopped: free its thread if it hangs
            threads.stopped_waiting(future)
            raise


class PythonFunctions:
    """Builds ``function.python`` handlers; each handler file is executed once per runtime
    (its consumers share its module), and a new runtime executes it afresh."""

    def __init__(self) -> None:
        self._files: dict[str, Any] = {}

    def build(self, entry: Entry, registry: Registry) -> PythonHandler:
        assert isinstance(entry.config, PythonFunctionConfig)
        return PythonHandler(entry.id, resolve(entry.config, entry.id, self._files))
