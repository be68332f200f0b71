"""A connection of its own for one sequence of round trips: no pool, packed in C.

The client's pool serves many callers; a batcher (or a fetch loop) has one round
trip on the wire at a time, so it keeps one connection of its own: its commands
are packed by hiredis (when installed) and sent in one write, the replies read
back in order, all under one timeout. On this path redis-py's per-command work
(pool checkout, per-reply timers, response callbacks) cost more CPU than the
round trip itself. Any error or cancellation mid-way closes the connection (a
reply half read must never be taken for the next command's); the next round trip
connects again. Scripts are sent by SHA and loaded when the server lacks them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_pack_in_c: Any
try:
    from hiredis import pack_command as _pack_in_c
except ImportError:  # pragma: no cover - the redis extra installs hiredis
    _pack_in_c = None

#: one command: its name and arguments
Command = tuple[str | bytes | int | float, ...]


class Wire:
    def __init__(self, client: aioredis.Redis, *, timeout_s: float, name: str = "") -> None:
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        if name:  # the server knows the connection by it (to unblock its blocked read)
            kwargs["client_name"] = name
        #: this connection's client name on the server
        self.name: str = kwargs.get("client_name") or ""
        # a plain connection, outside the pool: no per-read timer (one timeout covers
        # the round trip), and not handed to the pool's maintenance-notification handler
        # (redis-py 8; on a server that sends them, a wire simply reconnects)
        kwargs["socket_timeout"] = None
        for pooled in ("maint_notifications_pool_handler", "maint_notifications_config"):
            kwargs.pop(pooled, None)
        self._conn = pool.connection_class(**kwargs)
        self.timeout_s = timeout_s
        #: script sources by SHA, to load one the server lacks
        self._sources: dict[str, str] = {}
        #: closed by its owner: a late call still goes out, on a connection of its own
        self._closed = False

    def evalsha(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Command:
        """The command that runs ``script`` (a registered ``Script``) by its SHA."""
        self._sources[script.sha] = script.script
        return ("EVALSHA", script.sha, len(keys), *keys, *args)

    async def call(self, commands: Sequence[Command]) -> list[Any]:
        """Every command's reply, in order; an error reply is its ``ResponseError``, in
        its place. Commands whose script the server lacks are sent again once loaded."""
        replies = await self._round_trip(commands)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            shas = {str(commands[i][1]) for i in missing}
            await self._round_trip([("SCRIPT", "LOAD", self._sources[sha]) for sha in shas])
            again = await self._round_trip([commands[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _round_trip(self, commands: Sequence[Command]) -> list[Any]:
        conn = self._conn
        try:
            async with asyncio.timeout(self.timeout_s):
                await conn.send_packed_command(self._packed(commands), check_health=False)
                return [await self._reply() for _ in commands]
        except TimeoutError as err:
            await conn.disconnect(nowait=True)
            raise RedisTimeoutError(f"no reply from Redis within {self.timeout_s}s") from err
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            if self._closed:
                await conn.disconnect(nowait=True)

    async def _reply(self) -> Any:
        try:
            return await self._conn.read_response()
        except ResponseError as err:  # the reply is read: the line stays in step
            return err

    def _packed(self, commands: Sequence[Command]) -> list[bytes]:
        if _pack_in_c is not None:
            return [b"".join([_pack_in_c(command) for command in commands])]
        return self._conn.pack_commands(commands)

    async def close(self) -> None:
        self._closed = True
        await self._conn.disconnect(nowait=True)
