"""`matchwire demo`: the appliance on loopback, a load generator, a live book built from the feed.

What it does, in well under a minute:

1. the embedded default config (appliance.config.DEFAULT), with its WAL, feed store and gateway
   state in a temporary directory, free TCP ports and random multicast ports (239.192.x.y on
   127.0.0.1, TTL 0: nothing leaves the host), written out and started as ``matchwire run``;
2. a subscriber process joins the L3 and L2 multicast channels and builds the books;
3. the load generator: the three firms each over OUCH and FIX, a few thousand limit orders around
   each instrument's reference price (some cross, a few are cancelled), with a progress bar, and a
   live view of the L2 ladder of ALPH and the trade tape, printed from the subscriber's books;
4. SIGTERM: the appliance shuts down cleanly (End of Session on the feeds, final snapshot);
5. a one-screen summary: orders, acks, fills, rejects by reason, feed messages and sequence numbers,
   order-to-ack latency percentiles, and whether the subscriber's book equals the partition's.

The OUCH and FIX clients here are small blocking-socket clients on feeds/soupbintcp.py,
appliance/gateway/ouch_layout.py and appliance/gateway/fixcodec.py (tests and benchmarks use them).
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Final

from appliance.config import Config, FeedChannelConfig, default, dumps
from appliance.gateway import ouch_layout as L
from appliance.gateway.fixcodec import FixMessage, FixParser, encode as fix_encode
from appliance.model import price_to_text
from feeds import soupbintcp as soup

PYTHON: Final = sys.executable


# ================================================================================================
# Loopback configuration
# ================================================================================================

def free_tcp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def loopback_config(root: str, base: Config | None = None, *, rng: random.Random | None = None,
                    durability: str | None = None, idle: str = "backoff", **changes: Any) -> Config:
    """``base`` (default: the demo's DEFAULT) with every directory under ``root``, free TCP ports,
    random multicast groups and ports (239.192-255.x.y, loopback, TTL 0), a unique ring prefix."""
    rng = rng or random.Random()
    c = base or default()
    used: set[int] = set()

    def port() -> int:
        while True:
            p = free_tcp_port()
            if p not in used:
                used.add(p)
                return p

    parts = []
    for p in c.partitions:
        wal = os.path.join(root, p.name, "wal")
        feeds = {}
        for ch in p.feeds:
            mport = rng.randrange(40000, 60000)
            g = f"239.{rng.randrange(192, 255)}.{rng.randrange(0, 255)}.{rng.randrange(1, 254)}"
            feeds[ch] = FeedChannelConfig(g, mport, g.rsplit(".", 1)[0] + "." + str(int(g.rsplit(".", 1)[1]) ^ 1),
                                          mport)
        parts.append(dataclasses.replace(p, wal_dir=wal, snapshot_dir=os.path.join(wal, "snapshots"), feeds=feeds,
                                         idle=idle, durability=durability or p.durability))
    gws = tuple(dataclasses.replace(g, bind="127.0.0.1", ouch_port=port(), fix_port=port()) for g in c.gateways)
    rt = dataclasses.replace(c.retransmit, replay_port=port(), snapshot_port=port(),
                             rerequest_port=rng.randrange(20000, 30000))
    admin = dataclasses.replace(c.admin, port=port(), token=c.admin.token or "demo")
    app = dataclasses.replace(c.appliance, name=f"mw{os.getpid()}x{rng.randrange(1 << 30):x}")
    return dataclasses.replace(c, partitions=tuple(parts), gateways=gws, retransmit=rt, admin=admin,
                               appliance=app, **changes)


def write_config(c: Config, path: str) -> str:
    with open(path, "w") as f:
        f.write(dumps(c))
    return path


# ================================================================================================
# Clients
# ================================================================================================

class OuchClient:
    """A blocking OUCH 5.0 / SoupBinTCP client (tests, demo, benchmarks). Owned by one thread."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = soup.FrameParser()
        self.timeout = timeout
        self.session = ""
        self.next_seq = 0            # the sequence number of the next Sequenced Data packet
        self.messages: list[tuple[int, Any]] = []   # (sequence number, decoded OUCH message)
        self.other: list[tuple[bytes, bytes]] = []  # non-sequenced packets (debug, heartbeats, Z)
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def login(self, username: str, password: str, session: str = "", sequence: int = 0) -> bytes:
        """Login; returns the answer's packet type (A accepted, J rejected, b"" closed)."""
        self.send(soup.encode_login_request(username, password, session, sequence))
        deadline = time.monotonic() + self.timeout
        answer = b""
        while time.monotonic() < deadline and not answer:
            for kind, payload in self._read(deadline - time.monotonic()):
                if answer:
                    self._packet(kind, payload)
                elif kind == soup.LOGIN_ACCEPTED:
                    acc = soup.parse_login_accepted(payload)
                    self.session = acc.session
                    self.next_seq = acc.sequence
                    answer = kind
                elif kind == soup.LOGIN_REJECTED:
                    answer = kind + payload
            if self.closed and not answer:
                return b""
        if not answer:
            raise TimeoutError("no answer to the login")
        return answer

    def _packet(self, kind: bytes, payload: bytes) -> int:
        if kind == soup.SEQUENCED_DATA:
            self.messages.append((self.next_seq, L.decode(payload, L.OUTBOUND)[0]))
            self.next_seq += 1
            return 1
        self.other.append((kind, payload))
        return 0

    def _read(self, timeout: float) -> list[tuple[bytes, bytes]]:
        self.sock.settimeout(max(0.0001, timeout))
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            return []
        except (ConnectionResetError, OSError):
            data = b""
        if not data:
            self.closed = True
            return []
        return list(self.parser.feed(data))

    def pump(self, timeout: float = 0.0) -> int:
        """Read what is there (waiting up to timeout); returns sequenced messages added."""
        return sum(self._packet(kind, payload) for kind, payload in self._read(timeout))

    def wait_for(self, pred: Any, timeout: float = 10.0) -> Any:
        """Pump until pred(message) is true for a new message; return it (TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout
        seen = len(self.messages)
        while True:
            for _seq, m in self.messages[seen:]:
                if pred(m):
                    return m
            seen = len(self.messages)
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                raise TimeoutError(f"no matching OUCH message in {timeout} s")
            self.pump(min(left, 0.2))

    def enter(self, urn: int, side: bytes, qty: int, symbol: str, price: int, tif: bytes = b"0",
              cl_ord_id: str = "") -> None:
        msg = L.EnterOrder(urn, side, qty, symbol.encode().ljust(8), price, tif, b"Y", b"A", b"N", b"N",
                           (cl_ord_id or f"C{urn}").encode().ljust(14), 0)
        self.send(soup.encode_unsequenced_data(L.encode(L.ENTER_ORDER, msg)))

    def cancel(self, urn: int, qty: int = 0) -> None:
        self.send(soup.encode_unsequenced_data(L.encode(L.CANCEL_ORDER, L.CancelOrder(urn, qty))))

    def close(self) -> None:
        try:
            self.send(soup.encode_logout_request())
        except OSError:
            pass
        self.sock.close()
        self.closed = True


class FixClient:
    """A blocking FIX 4.4 initiator on our own codec (demo, benchmarks). Owned by one thread."""

    def __init__(self, host: str, port: int, sender: str, target: str, timeout: float = 10.0,
                 next_out: int = 1) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sender = sender
        self.target = target
        self.next_out = next_out
        self.parser = FixParser()
        self.messages: list[FixMessage] = []
        self.timeout = timeout
        self.closed = False

    def send(self, msg_type: str, fields: list[tuple[int, Any]]) -> None:
        head = [(49, self.sender), (56, self.target), (34, self.next_out), (52, "20240131-14:05:09.123")]
        self.next_out += 1
        self.sock.sendall(fix_encode(msg_type, head + fields))

    def logon(self, password: str, heartbeat: int = 30) -> FixMessage:
        self.send("A", [(98, 0), (108, heartbeat), (554, password)])
        return self.wait_for(lambda m: m.msg_type in ("A", "5"))

    def order(self, cl: str, symbol: str, side: str, qty: int, price: int, tif: str = "0") -> None:
        self.send("D", [(11, cl), (55, symbol), (54, side), (60, "20240131-14:05:09.123"), (38, qty),
                        (40, "2"), (44, price_to_text(price)), (59, tif)])

    def cancel(self, cl: str, orig: str, symbol: str, side: str, qty: int) -> None:
        self.send("F", [(11, cl), (41, orig), (55, symbol), (54, side), (38, qty),
                        (60, "20240131-14:05:09.123")])

    def pump(self, timeout: float = 0.0) -> int:
        self.sock.settimeout(max(0.0001, timeout))
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            return 0
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return 0
        items = [m for m in self.parser.feed(data) if isinstance(m, FixMessage)]
        self.messages.extend(items)
        return len(items)

    def wait_for(self, pred: Any, timeout: float | None = None) -> FixMessage:
        deadline = time.monotonic() + (timeout or self.timeout)
        seen = len(self.messages)
        while True:
            for m in self.messages[seen:]:
                if pred(m):
                    return m
            seen = len(self.messages)
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                raise TimeoutError("no matching FIX message")
            self.pump(min(left, 0.2))

    def close(self) -> None:
        self.sock.close()
        self.closed = True
