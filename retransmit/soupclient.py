"""The client side of a SoupBinTCP 3.0 session, sans-IO, and a blocking helper for tools and tests.

The recovery client (retransmit/recovery.py) and ``matchwire bench retransmit`` use it to fetch a
replay or a snapshot::

    c = SoupClientSession(username, password, session, sequence, replay_only=None | n)
    c.start(now_ns)                      Debug "REPLAY-ONLY [n]" (if asked) + Login Request
    c.receive_data(data, now_ns)         -> messages received in Sequenced Data packets (count)
    c.take_blocks() -> (first_seq, n, blocks)   those messages as MoldUDP64 blocks
    c.poll(now_ns)                       Client Heartbeat after heartbeat_ns of silence
    c.data_to_send() -> bytes
    c.accepted (session, sequence) | c.rejected (reason byte) | c.ended (End of Session seen)
    c.error: why the stream cannot be read any further (framing, unexpected packet)

Sequenced Data carries one message each; its sequence number is implicit: the Login Accepted's,
plus one per Sequenced Data packet. Messages are kept as ``u16 length + message`` blocks, the
layout a MoldUDP64 datagram and the feed store use, so a replay feeds a ``ChannelReceiver`` with
no per-message object.
"""
from __future__ import annotations

import socket
import time
from typing import Final

from feeds.moldudp64 import BLOCK_LENGTH, split_blocks
from feeds.soupbintcp import (
    HEAD_SIZE,
    LENGTH_SIZE,
    MAX_PACKET_LENGTH,
    TYPE_SIZE,
    encode_client_heartbeat,
    encode_debug,
    encode_login_request,
    encode_logout_request,
    parse_login_accepted,
)

__all__ = ["SoupClientSession", "fetch", "FetchResult"]

_BLOCK_HEAD: Final = [BLOCK_LENGTH.pack(n) for n in range(2048)]


class SoupClientSession:
    """Owned by the caller's thread: one SoupBinTCP client session (sans-IO)."""

    __slots__ = ("username", "password", "session", "sequence", "replay_only", "heartbeat_ns",
                 "accepted", "rejected", "ended", "error", "debug", "heartbeats", "next_seq",
                 "messages", "last_rx_ns", "last_tx_ns", "_buf", "_blocks", "_count", "_first", "_out")

    def __init__(self, username: str, password: str, session: str | bytes = b"", sequence: int = 0, *,
                 replay_only: int | None = None, heartbeat_ns: int = 1_000_000_000) -> None:
        self.username = username
        self.password = password
        self.session = session
        self.sequence = sequence
        self.replay_only = replay_only
        self.heartbeat_ns = heartbeat_ns
        self.accepted: tuple[bytes, int] | None = None
        self.rejected: bytes | None = None
        self.ended = False
        self.error: str | None = None
        self.debug: list[bytes] = []
        self.heartbeats = 0
        self.next_seq = 0           # the sequence number of the next Sequenced Data packet
        self.messages = 0
        self.last_rx_ns = 0
        self.last_tx_ns = 0
        self._buf = bytearray()
        self._blocks = bytearray()
        self._count = 0
        self._first = 0
        self._out: list[bytes] = []

    def start(self, now_ns: int) -> None:
        if self.replay_only is not None:
            text = b"REPLAY-ONLY" + (b" %d" % self.replay_only if self.replay_only else b"")
            self._out.append(encode_debug(text))
        self._out.append(encode_login_request(self.username, self.password, self.session, self.sequence))
        self.last_tx_ns = self.last_rx_ns = now_ns

    @property
    def done(self) -> bool:
        """Nothing more will come: rejected, ended or broken."""
        return self.rejected is not None or self.ended or self.error is not None

    def receive_data(self, data: bytes, now_ns: int) -> int:
        """Parse bytes of the stream; return how many Sequenced Data messages they completed."""
        if self.error is not None:
            return 0
        self.last_rx_ns = now_ns
        buf = self._buf
        buf += data
        blocks = self._blocks
        heads = _BLOCK_HEAD
        mv = memoryview(buf)
        pos, size, got = 0, len(buf), 0
        ls, hs = LENGTH_SIZE, HEAD_SIZE
        try:
            while size - pos >= ls:
                n = (buf[pos] << 8) | buf[pos + 1]
                end = pos + ls + n
                if n == 0:
                    self.error = f"packet length 0 at offset {pos}"
                    break
                if end > size:
                    break
                t = buf[pos + ls]
                if t == 83:                              # S
                    if self.accepted is None:
                        self.error = "Sequenced Data before Login Accepted"
                        break
                    m = n - TYPE_SIZE
                    blocks += heads[m] if m < 2048 else BLOCK_LENGTH.pack(m)
                    blocks += mv[pos + hs:end]
                    got += 1
                elif t == 72:                            # H
                    self.heartbeats += 1
                elif t == 65:                            # A
                    try:
                        acc = parse_login_accepted(bytes(mv[pos + hs:end]))
                    except ValueError as exc:
                        self.error = str(exc)
                        break
                    self.accepted = (acc.session.encode("ascii"), acc.sequence)
                    self.next_seq = self._first = acc.sequence
                elif t == 74:                            # J
                    self.rejected = bytes(mv[pos + hs:end])
                elif t == 90:                            # Z
                    self.ended = True
                elif t == 43:                            # +
                    if len(self.debug) < 16:
                        self.debug.append(bytes(mv[pos + hs:end]))
                else:
                    self.error = f"unexpected packet type {bytes([t])!r}"
                    break
                pos = end
        finally:
            mv.release()
        if pos:
            del buf[:pos]
        if len(buf) > MAX_PACKET_LENGTH + ls and self.error is None:
            self.error = "buffer overrun"
        self._count += got
        self.messages += got
        self.next_seq += got
        return got

    def take_blocks(self) -> tuple[int, int, bytes]:
        """(sequence of the first, count, ``u16 length + message`` blocks) received since the last call."""
        first, n = self._first, self._count
        blocks = bytes(self._blocks)
        self._blocks = bytearray()
        self._count = 0
        self._first = first + n
        return first, n, blocks

    def poll(self, now_ns: int) -> None:
        if self.accepted is not None and not self.done and now_ns - self.last_tx_ns >= self.heartbeat_ns:
            self._out.append(encode_client_heartbeat())
            self.last_tx_ns = now_ns

    def logout(self) -> None:
        self._out.append(encode_logout_request())

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        self._out = []
        return b"".join(out)


class FetchResult:
    """What ``fetch`` got: the session's final state and the messages as blocks."""

    def __init__(self, client: SoupClientSession, first: int, count: int, blocks: bytes, transcript: list[tuple[int, bool, bytes]]) -> None:
        self.client = client
        self.first = first
        self.count = count
        self.blocks = blocks
        self.transcript = transcript     # (ts_ns, from_client, bytes), if asked for

    def messages(self) -> list[bytes]:
        return split_blocks(self.blocks)


def fetch(address: tuple[str, int], username: str, password: str, session: str | bytes = b"",
          sequence: int = 0, *, replay_only: int | None = 0, timeout_s: float = 10.0, keep_blocks: bool = True, transcript: bool = False) -> FetchResult:
    """Blocking: log in, read until End of Session, a rejection, EOF or ``timeout_s``. For tools
    and tests (a snapshot session ends with End of Session after its End of Snapshot). ``transcript`` keeps every chunk sent and received, with its time."""
    client = SoupClientSession(username, password, session, sequence, replay_only=replay_only)
    chunks: list[bytes] = []
    log: list[tuple[int, bool, bytes]] = []
    first = 0
    count = 0
    deadline = time.monotonic() + timeout_s
    with socket.create_connection(address, timeout=timeout_s) as sock:
        client.start(time.monotonic_ns())
        out = client.data_to_send()
        sock.sendall(out)
        if transcript:
            log.append((time.time_ns(), True, out))
        while not client.done:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(min(left, 0.5))
            try:
                data = sock.recv(1 << 20)
            except socket.timeout:
                data = None
            now = time.monotonic_ns()
            if data == b"":
                break
            if data:
                if transcript:
                    log.append((time.time_ns(), False, data))
                client.receive_data(data, now)
                f, n, blocks = client.take_blocks()
                if n:
                    if not count:
                        first = f
                    count += n
                    if keep_blocks:
                        chunks.append(blocks)
            client.poll(now)
            out = client.data_to_send()
            if out:
                sock.sendall(out)
                if transcript:
                    log.append((time.time_ns(), True, out))
    return FetchResult(client, first, count, b"".join(chunks), log)

