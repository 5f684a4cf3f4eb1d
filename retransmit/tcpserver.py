"""The asyncio shell of the SoupBinTCP servers (replay and snapshot): it only moves bytes.

One ``SoupServerSession`` per connection does the protocol (retransmit/soupserver.py). The shell
feeds it what the socket reads, writes what it produces, and tells it how many bytes wait in the
transport's buffer (``get_write_buffer_size``), which is all the back-pressure there is: the
session produces only while fewer than ``send_buffer_bytes`` wait. A timer polls every session
every ``tick_s`` (heartbeats, timeouts, live data appended to a store). Connections beyond
``max_sessions + spare_connections`` are dropped at once (before any byte is read); logins beyond
``max_sessions`` concurrent sessions get Login Rejected 'S'.

A session closed with mode "flush" is closed after its queued bytes (aborted if they are still
not sent after ``linger_s``); mode "abort" drops the connection at once.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from feeds.soupbintcp import REJECT_SESSION_NOT_AVAILABLE, LoginRequest
from retransmit.soupserver import CLOSE_REASONS, STREAMING, SoupServerSession, SoupServerSettings, Stream, StreamSource

__all__ = ["SoupTcpServer"]


class _Connection(asyncio.Protocol):
    """Owned by the asyncio loop's thread: one client connection."""

    def __init__(self, server: SoupTcpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.session: SoupServerSession | None = None
        self.paused = False
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        srv = self.server
        if len(srv.connections) >= srv.settings.max_sessions + srv.spare_connections:
            srv.counters["refused_connections"] += 1
            self.done = True
            transport.abort()
            return
        high = srv.settings.send_buffer_bytes
        transport.set_write_buffer_limits(high=high, low=high // 4)
        srv.connections.add(self)
        srv.counters["connections"] += 1
        self.session = SoupServerSession(srv.settings, srv, srv.clock(), transport.get_extra_info("peername"))

    def data_received(self, data: bytes) -> None:
        if self.session is not None and not self.done:
            self.session.receive_data(data, self.server.clock())
            self.pump()

    def eof_received(self) -> bool:
        if self.session is not None and not self.done:
            self.session.receive_eof(self.server.clock())
            self.pump()
        return False

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.session is not None and not self.session.closed:
            self.session.receive_eof(self.server.clock())
        self._finish()
        self.server.connections.discard(self)

    def pump(self, rounds: int = 4) -> None:
        """Let the session work (timers, production) and write what it produced."""
        session, transport = self.session, self.transport
        if session is None or transport is None or self.done:
            return
        clock = self.server.clock
        for _ in range(rounds):
            session.poll(clock(), transport.get_write_buffer_size())
            data = session.data_to_send()
            if data:
                transport.write(data)
            if session.closed:
                self._close()
                return
            if not data or self.paused:
                return

    def _close(self) -> None:
        session, transport = self.session, self.transport
        assert session is not None and transport is not None
        self._finish()
        if session.close_mode == "abort":
            transport.abort()
        else:
            transport.close()
            self.server.loop_call_later(self.server.linger_s, transport.abort)

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        session = self.session
        if session is not None:
            if session.close_reason is not None:
                self.server.reasons[session.close_reason] += 1
            if session.stream is not None:
                session.stream.close()


class SoupTcpServer:
    """Owned by the asyncio loop's thread: a SoupBinTCP listener whose sessions stream what
    ``source`` opens. It is also the sessions' source: it applies the session cap first."""

    def __init__(self, settings: SoupServerSettings, source: StreamSource, *,
                 clock: Callable[[], int] = time.monotonic_ns, tick_s: float = 0.01,
                 linger_s: float = 1.0, spare_connections: int = 16) -> None:
        self.settings = settings
        self.source = source
        self.clock = clock
        self.tick_s = tick_s
        self.linger_s = linger_s
        self.spare_connections = spare_connections
        self.connections: set[_Connection] = set()
        self.counters = {"connections": 0, "refused_connections": 0, "refused_full": 0, "logins": 0}
        self.reasons = dict.fromkeys(CLOSE_REASONS, 0)
        self.address: tuple[str, int] | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open_stream(self, request: LoginRequest, replay_only: int | None, now_ns: int) -> Stream | bytes | None:
        active = sum(1 for c in self.connections if c.session is not None and c.session.state == STREAMING)
        if active >= self.settings.max_sessions:
            self.counters["refused_full"] += 1
            return REJECT_SESSION_NOT_AVAILABLE
        answer = self.source.open_stream(request, replay_only, now_ns)
        if answer is not None and not isinstance(answer, bytes):
            self.counters["logins"] += 1
        return answer

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._server = await loop.create_server(lambda: _Connection(self), host, port, reuse_address=True)
        sock = self._server.sockets[0]
        self.address = sock.getsockname()[:2]
        self._ticker = loop.create_task(self._tick())
        return self.address

    def loop_call_later(self, delay: float, callback: Callable[[], Any]) -> None:
        if self._loop is not None:
            self._loop.call_later(delay, callback)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            for conn in list(self.connections):
                conn.pump()

    def stats(self) -> dict[str, Any]:
        return dict(self.counters, active=len(self.connections), closed=dict(self.reasons))

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._server is not None:
            self._server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            await self._server.wait_closed()
            self._server = None
