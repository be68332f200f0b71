"""How a consumer logs failures on its messages: a traceback once per distinct error.

A handler that fails on every message (a downstream service is down) must not
flood the log with one traceback per attempt. The first time an error is seen (its
type and the frames it was raised through: the same bug at the same place) its
traceback is logged, a handler's trimmed of the runtime's own frames so that the
handler's come first; later occurrences log one line that says how often it has
been seen. A failing middleware (the security check) is logged the same way, with
its whole traceback.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path

from wippy_queue.errors import HandlerError

#: frames from files under this folder are the runtime's own
PACKAGE_DIR = str(Path(__file__).resolve().parents[1]) + os.sep
#: distinct errors remembered per consumer (the oldest is forgotten first)
REMEMBERED = 256


class FailureLog:
    """One consumer's record of the errors it has logged a traceback for."""

    def __init__(self, consumer_id: str, logger: logging.Logger) -> None:
        self.consumer_id = consumer_id
        self._log = logger
        #: error key -> how many times it has been seen
        self._seen: OrderedDict[Hashable, int] = OrderedDict()

    def handler_failed(self, message_id: str, err: BaseException, *, traceback_: bool) -> None:
        """The handler failed on ``message_id``; ``traceback_``: whether the error deserves
        one (our own errors say everything in their text). Its traceback starts at the
        handler's frame."""
        self._failed("handler", message_id, err, trimmed_traceback if traceback_ else None)

    def middleware_failed(self, message_id: str, err: BaseException) -> None:
        """A middleware (the security check) failed on ``message_id``: a bug of ours or of
        a policy, so its whole traceback, once."""
        self._failed("middleware", message_id, err, full_traceback)

    def _failed(
        self,
        what: str,
        message_id: str,
        err: BaseException,
        render: Callable[[BaseException], str] | None,
    ) -> None:
        text = "consumer %s: %s failed on message %s: %s: %s"
        args = (self.consumer_id, what, message_id, type(err).__name__, err)
        if render is None:
            self._log.error(text, *args)
            return
        count = self._count(err)
        if count == 1:
            self._log.error(text, *args, extra={"fields": {"traceback": render(err)}})
        else:
            self._log.error(
                text + " (same error as before, seen %d times; its traceback is logged once)",
                *args,
                count,
            )

    def _count(self, err: BaseException) -> int:
        key = error_key(err)
        count = self._seen.pop(key, 0) + 1
        self._seen[key] = count
        if len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)
        return count


def error_key(err: BaseException) -> Hashable:
    """What makes two errors the same: their type, the frames they were raised through
    (file, line, function) and their notes (a Lua traceback); not their text, which
    often holds the message's own values."""
    frames = tuple(
        (frame.f_code.co_filename, lineno, frame.f_code.co_name)
        for frame, lineno in traceback.walk_tb(err.__traceback__)
    )
    notes = tuple(str(n) for n in getattr(err, "__notes__", ()))
    return (type(err).__module__, type(err).__qualname__, frames, notes)


def full_traceback(err: BaseException) -> str:
    return "".join(traceback.format_exception(err)).rstrip()


def trimmed_traceback(err: BaseException) -> str:
    """``err``'s traceback without the runtime's frames that lead to the handler.

    Kept whole when every frame is ours and the error is not a handler's (a bug of
    ours: its frames say where); a Lua handler's error shows its Lua traceback (a note).
    """
    shown = traceback.TracebackException.from_exception(err)
    _trim(shown, err, set())
    return "".join(shown.format()).rstrip()


def _trim(part: traceback.TracebackException, err: BaseException, seen: set[int]) -> None:
    """Trim ``part`` (``err`` as formatted) and the exceptions chained to it."""
    if id(err) in seen:
        return
    seen.add(id(err))
    handler = isinstance(err, HandlerError)
    part.stack = traceback.StackSummary.from_list(_without_ours(part.stack, handler=handler))
    if part.__cause__ is not None and err.__cause__ is not None:
        _trim(part.__cause__, err.__cause__, seen)
    if part.__context__ is not None and err.__context__ is not None:
        _trim(part.__context__, err.__context__, seen)


def _without_ours(stack: traceback.StackSummary, *, handler: bool) -> list[traceback.FrameSummary]:
    frames = list(stack)
    first = next((i for i, f in enumerate(frames) if not _ours(f.filename)), None)
    if first is None:  # every frame is ours
        return [] if handler else frames
    return frames[first:]


def _ours(filename: str) -> bool:
    return filename.startswith(PACKAGE_DIR)
