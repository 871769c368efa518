"""A TCP proxy a test controls, put between athenaq and a server it needs (MariaDB, the
Athena endpoint) to make that server fail as networks do, without touching the server:

- `refuse()`: new connections are closed at once, as by a server that is down;
- `blackhole()`: connections, new and open, stay up but carry nothing either way, as
  through a dead route (what was sent meanwhile arrives once it heals, as TCP
  retransmits it);
- `cut()`: every open connection is closed (new ones still pass);
- `heal()`: back to passing everything.

It runs on the test's event loop: `async with TcpProxy(host, port) as proxy`, then point
the client at `proxy.port`. Leaving it closes every connection it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

CHUNK = 65536


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.mode = "pass"
        # Connections accepted so far, refused ones included.
        self.accepted = 0
        self._server: asyncio.Server | None = None
        # Both ends of every connection held, linked upstream or still waiting to be.
        self._ends: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._closing = False
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Every connection is closed and every handler woken to see it and end (a cancel
        # would make asyncio's stream callback log the cancelled handler as an error).
        self._closing = True
        if self._server is not None:
            self._server.close()
        self.cut()
        self._flowing.set()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def refuse(self) -> None:
        self.mode = "refuse"
        self._flowing.set()

    def blackhole(self) -> None:
        self.mode = "blackhole"
        self._flowing.clear()

    def heal(self) -> None:
        self.mode = "pass"
        self._flowing.set()

    def cut(self) -> None:
        for end in list(self._ends):
            with contextlib.suppress(Exception):
                end.transport.abort()
        self._ends.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "refuse":
            writer.transport.abort()
            return
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        self._ends.add(writer)
        try:
            await self._flowing.wait()
            if self._closing or writer not in self._ends:  # cut while it waited
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                return
            if self._closing or writer not in self._ends:  # cut while it connected
                up_writer.transport.abort()
                return
            self._ends.add(up_writer)
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                self._ends.discard(up_writer)
                up_writer.transport.abort()
        finally:
            self._ends.discard(writer)
            writer.transport.abort()
            self._handlers.discard(handler)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(CHUNK):
                # Blackholed: what arrives is held (never delivered) until the proxy heals.
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.transport.abort()
