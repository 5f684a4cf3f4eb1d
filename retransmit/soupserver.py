"""The server side of a SoupBinTCP 3.0 session, sans-IO: login, heartbeats, timeouts, back-pressure.

Shared by the TCP replay server and the snapshot server; they differ only in the ``Stream`` their
``StreamSource`` opens for a login. Bytes and ``now_ns`` in, bytes and a final state out::

    session.receive_data(data, now_ns)      bytes read from the socket
    session.poll(now_ns, buffered)          timers, and production while the socket's send
                                            buffer holds fewer than send_buffer_bytes
    session.data_to_send() -> bytes         what to write now
    session.closed, close_reason, close_mode ("flush": write what is queued, then close;
                                              "abort": drop the connection)

States and transitions (anything else from the client closes the session, reason in brackets)::

    LOGIN ──Debug "REPLAY-ONLY [n]"──► LOGIN            (replay only: end with Z after n messages,
      │                                                   or, without n, at the end of the store)
      ├──Debug, Client Heartbeat─────► LOGIN
      ├──Login Request, bad layout───► CLOSED  J 'A'   [reject_malformed_login]
      ├──wrong username/password─────► CLOSED  J 'A'   [reject_not_authorized]
      ├──source: no such session─────► CLOSED  J 'S'   [reject_session]
      ├──source: not ready yet───────► WAITING
      ├──source: a stream────────────► STREAMING  Login Accepted (session, first sequence)
      ├──Logout Request──────────────► CLOSED          [logout]
      └──no login within login_timeout► CLOSED        [login_timeout]
    WAITING ──source ready──► STREAMING ; ──wait_timeout──► CLOSED J 'S' [reject_session]
    STREAMING ──Client Heartbeat, Debug, Unsequenced Data (ignored, counted)──► STREAMING
      ├──stream finished─────────────► CLOSED  Z (End of Session)          [end_of_session]
      ├──Logout Request──────────────► CLOSED                              [logout]
      └──another Login Request───────► CLOSED                              [protocol_error]
    any state: a framing error (length 0 or > max_packet) [framing_error]; an unknown packet type
      [protocol_error]; no byte from the client for idle_timeout (15 s) [client_silent]; the send
      buffer full (>= send_buffer_bytes) for stall_timeout without draining [slow_client: abort].
      Each closing sends a Debug packet with the reason before it (best effort).

While STREAMING, a Server Heartbeat goes out after heartbeat_ns (1 s) with nothing sent. The
session produces at most ``send_buffer_bytes - buffered`` bytes per poll (and at most
``chunk_bytes``): what is not yet produced stays in the source (a file, a built snapshot), so a
client that does not read costs no memory beyond its send buffer, and is dropped when the buffer
stays full.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol

from feeds.soupbintcp import (
    CLIENT_HEARTBEAT,
    DEBUG,
    LOGIN_REQUEST,
    LOGOUT_REQUEST,
    REJECT_NOT_AUTHORIZED,
    REJECT_SESSION_NOT_AVAILABLE,
    UNSEQUENCED_DATA,
    FrameParser,
    LoginRequest,
    encode_debug,
    encode_end_of_session,
    encode_login_accepted,
    encode_login_rejected,
    encode_server_heartbeat,
    parse_login_request,
)

__all__ = ["SoupServerSettings", "Stream", "StreamSource", "SoupServerSession", "LOGIN", "WAITING",
           "STREAMING", "CLOSED", "REPLAY_ONLY", "CLOSE_REASONS", "parse_replay_only"]

LOGIN, WAITING, STREAMING, CLOSED = "login", "waiting", "streaming", "closed"

#: Debug text that asks, before the login, for a replay that ends with End of Session.
REPLAY_ONLY = b"REPLAY-ONLY"

#: Every close reason, as counted by the servers.
CLOSE_REASONS = ("end_of_session", "logout", "eof", "reject_malformed_login", "reject_not_authorized",
                 "reject_session", "login_timeout", "client_silent", "slow_client", "framing_error",
                 "protocol_error")

_MAX_CLIENT_PACKET = 1024     # a login is 47; Debug text beyond this is a framing error


@dataclasses.dataclass(frozen=True)
class SoupServerSettings:
    """Limits and timers of every session of one server (docs/retransmit.md, docs/config.md)."""

    username: str
    password: str
    heartbeat_ns: int = 1_000_000_000          # Server Heartbeat after this much silence
    idle_timeout_ns: int = 15_000_000_000      # drop a client silent this long
    login_timeout_ns: int = 15_000_000_000     # drop a connection without a login this long
    wait_timeout_ns: int = 5_000_000_000       # a source not ready this long: J 'S'
    send_buffer_bytes: int = 4 << 20           # per client: produce only while less is queued
    stall_timeout_ns: int = 5_000_000_000      # send buffer full this long: slow client, dropped
    chunk_bytes: int = 256 << 10               # produced per poll at most
    max_sessions: int = 64                     # concurrent logged-in sessions per server


class Stream(Protocol):
    """What a login opened: Sequenced Data packets from ``next_seq`` of ``session``."""

    session: bytes
    next_seq: int
    finished: bool

    def produce(self, now_ns: int, max_bytes: int) -> bytes:
        """Framed Sequenced Data packets, about ``max_bytes`` at most (may be empty: nothing new)."""

    def close(self) -> None: ...


class StreamSource(Protocol):
    def open_stream(self, request: LoginRequest, replay_only: int | None, now_ns: int) -> Stream | bytes | None:
        """A stream for an authenticated login; or a Login Rejected reason (b"A", b"S"); or None
        when the answer is not known yet (asked again at each poll until wait_timeout)."""


def parse_replay_only(text: bytes) -> int | None:
    """The count of a ``REPLAY-ONLY [n]`` Debug text (0: up to the end of the store); None if the
    text is something else."""
    if text == REPLAY_ONLY:
        return 0
    head, _, tail = text.partition(b" ")
    if head == REPLAY_ONLY and tail.isdigit() and len(tail) <= 20:
        return int(tail)
    return None


class SoupServerSession:
    """Owned by the server's event-loop thread: one client's SoupBinTCP session (sans-IO)."""

    __slots__ = ("settings", "source", "state", "stream", "replay_only", "close_reason", "close_mode",
                 "connected_ns", "last_rx_ns", "last_tx_ns", "wait_since_ns", "stall_since_ns",
                 "request", "_parser", "_out", "_accepted_unsent", "packets_in", "ignored_packets",
                 "sequenced_out", "peer")

    def __init__(self, settings: SoupServerSettings, source: StreamSource, now_ns: int,
                 peer: object = None) -> None:
        self.settings = settings
        self.source = source
        self.peer = peer
        self.state = LOGIN
        self.stream: Stream | None = None
        self.replay_only: int | None = None
        self.close_reason: str | None = None
        self.close_mode = "flush"
        self.connected_ns = now_ns
        self.last_rx_ns = now_ns
        self.last_tx_ns = now_ns
        self.wait_since_ns = 0
        self.stall_since_ns: int | None = None
        self.request: LoginRequest | None = None
        self._parser = FrameParser(_MAX_CLIENT_PACKET)
        self._out: list[bytes] = []
        self._accepted_unsent = False
        self.packets_in = 0
        self.ignored_packets = 0
        self.sequenced_out = 0

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    # -- input ----------------------------------------------------------------------------------
    def receive_data(self, data: bytes, now_ns: int) -> None:
        if self.state == CLOSED or not data:
            return
        self.last_rx_ns = now_ns
        try:
            packets = self._parser.feed(data)
        except ValueError as exc:
            self._close("framing_error", "abort", str(exc))
            return
        for ptype, payload in packets:
            if self.state == CLOSED:
                return
            self.packets_in += 1
            if ptype == CLIENT_HEARTBEAT:
                continue
            if ptype == LOGOUT_REQUEST:
                self._close("logout", "flush")
            elif ptype == DEBUG:
                if self.state == LOGIN:
                    n = parse_replay_only(payload)
                    if n is not None:
                        self.replay_only = n
            elif ptype == LOGIN_REQUEST and self.state == LOGIN:
                self._login(payload, now_ns)
            elif ptype == UNSEQUENCED_DATA and self.state == STREAMING:
                self.ignored_packets += 1
            else:
                self._close("protocol_error", "abort", f"unexpected packet {ptype!r} in state {self.state}")

    def receive_eof(self, now_ns: int) -> None:
        if self.state != CLOSED:
            self._finish("eof", "abort")

    def _login(self, payload: bytes, now_ns: int) -> None:
        try:
            request = parse_login_request(payload)
        except ValueError:
            self._reject(REJECT_NOT_AUTHORIZED, "reject_malformed_login")
            return
        s = self.settings
        if request.username != s.username or request.password != s.password:
            self._reject(REJECT_NOT_AUTHORIZED, "reject_not_authorized")
            return
        self.request = request
        self.state = WAITING
        self.wait_since_ns = now_ns
        self._try_open(now_ns)

    def _try_open(self, now_ns: int) -> None:
        assert self.request is not None
        answer = self.source.open_stream(self.request, self.replay_only, now_ns)
        if answer is None:
            if now_ns - self.wait_since_ns >= self.settings.wait_timeout_ns:
                self._reject(REJECT_SESSION_NOT_AVAILABLE, "reject_session")
            return
        if isinstance(answer, bytes):
            self._reject(answer, "reject_not_authorized" if answer == REJECT_NOT_AUTHORIZED else "reject_session")
            return
        self.stream = answer
        self.state = STREAMING
        self._send(encode_login_accepted(answer.session, answer.next_seq), now_ns)
        self._accepted_unsent = True

    def _reject(self, reason: bytes, why: str) -> None:
        self._out.append(encode_login_rejected(reason))
        self._finish(why, "flush")

    # -- timers and production ------------------------------------------------------------------
    def poll(self, now_ns: int, buffered: int = 0) -> None:
        """Timers, and Sequenced Data while the send buffer (``buffered`` bytes) has room."""
        st = self.state
        if st == CLOSED:
            return
        s = self.settings
        if now_ns - self.last_rx_ns >= s.idle_timeout_ns:
            self._close("client_silent", "flush", f"no byte from the client for {s.idle_timeout_ns // 10**9} s")
            return
        if st == LOGIN:
            if now_ns - self.connected_ns >= s.login_timeout_ns:
                self._close("login_timeout", "flush", "no Login Request")
            return
        if st == WAITING:
            self._try_open(now_ns)
            if self.state != STREAMING:
                return
        stream = self.stream
        assert stream is not None
        if self._accepted_unsent:
            return        # Login Accepted goes out in a write of its own, as servers answer a login
        room = s.send_buffer_bytes - buffered
        if room <= 0:
            if self.stall_since_ns is None:
                self.stall_since_ns = now_ns
            elif now_ns - self.stall_since_ns >= s.stall_timeout_ns:
                self._close("slow_client", "abort",
                            f"send buffer full ({s.send_buffer_bytes} bytes) for {s.stall_timeout_ns / 1e9:g} s")
            return
        self.stall_since_ns = None
        data = stream.produce(now_ns, min(room, s.chunk_bytes))
        if data:
            self._send(data, now_ns)
        if stream.finished:
            self._out.append(encode_end_of_session())
            self._finish("end_of_session", "flush")
        elif now_ns - self.last_tx_ns >= s.heartbeat_ns:
            self._send(encode_server_heartbeat(), now_ns)

    def _send(self, data: bytes, now_ns: int) -> None:
        self._out.append(data)
        self.last_tx_ns = now_ns

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        self._out = []
        self._accepted_unsent = False
        return out[0] if len(out) == 1 else b"".join(out)

    # -- closing --------------------------------------------------------------------------------
    def _close(self, why: str, mode: str, detail: str = "") -> None:
        self._out.append(encode_debug((why + (": " + detail if detail else "")).encode("ascii", "replace")[:1000]))
        self._finish(why, mode)

    def _finish(self, why: str, mode: str) -> None:
        self.state = CLOSED
        self.close_reason = why
        self.close_mode = mode
        if self.stream is not None:
            self.stream.close()
