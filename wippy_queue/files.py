"""Reading the files a configuration names: only regular files, within a size.

A FIFO, a device or a socket at a policy or entry path would block a read forever
(a FIFO waits for a writer) or never end (``/dev/zero``): such a path is an
``OSError`` saying what it is, found without blocking, like any unreadable file.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

#: the largest configuration file read (entry, policy, model, Lua source)
MAX_FILE_BYTES = 64 * 1024 * 1024
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_regular(path: str | os.PathLike[str], *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file at ``path`` (links followed); OSError for anything
    else, or for a file over ``max_bytes``. Opening never waits (``O_NONBLOCK``)."""
    fd = os.open(path, _FLAGS)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(
                errno.EINVAL, f"{_kind(mode)}, not a regular file: only regular files are read"
            )
        os.set_blocking(fd, True)
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > max_bytes:
                raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: Path) -> str:
    """``read_regular`` decoded as UTF-8 (UnicodeDecodeError if it is not)."""
    return read_regular(path).decode("utf-8")


#: the least length of a key (signing, audit): a short one is guessed
MIN_KEY_CHARS = 16
_ENV_ONLY = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


def key_value(value: str, where: str) -> str:
    """A key as given, read from ``file://path`` (one line, stripped), or from
    ``${env:NAME}`` (entry files substitute that when loaded; a command line option
    does not); ValueError saying what is wrong and where."""
    env = _ENV_ONLY.fullmatch(value)
    if env is not None:
        if env.group(1) not in os.environ:
            raise ValueError(f"{where}: the environment variable {env.group(1)} is not set")
        value = os.environ[env.group(1)]
    if value.startswith("file://"):
        path = Path(value.removeprefix("file://"))
        try:
            value = read_text(path).strip()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{where}: cannot read the key file {path}: {err}") from None
    if len(value) < MIN_KEY_CHARS:
        raise ValueError(
            f"{where}: a key needs at least {MIN_KEY_CHARS} characters "
            f"(got {len(value)}); use a long random value, e.g. from ${{env:...}}"
        )
    return value
