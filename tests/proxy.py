"""A TCP proxy between a driver and its broker, so a test can cut and restore the line.

The brokers are shared by every test and process: killing the server, or all of its
clients, would break other tests. Through this proxy a test breaks only its own
driver's connections (``drop``), or makes the broker unreachable for a while and
reachable again on the same address (``down`` / ``up``), while the broker itself
keeps running and keeps its data.
"""

from __future__ import annotations

import asyncio
import contextlib


class Proxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0  # chosen by the first ``up``
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.users = 0

    async def up(self) -> None:
        """Listen (again, on the same port once chosen)."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Refuse new connections and cut every open one."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self.drop()

    async def drop(self) -> None:
        """Cut every open connection (the broker sees its clients go)."""
        for writer in list(self._pipes):
            writer.transport.abort()
        self._pipes.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)

    async def acquire(self) -> None:
        """One more user (a driver): up if it was not."""
        self.users += 1
        await self.up()

    async def release(self) -> None:
        """One user less; the last one takes the proxy down (nothing left open)."""
        self.users -= 1
        if self.users <= 0:
            await self.down()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._relay(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._pipes.update((writer, up_writer))
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            self._pipes.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()
