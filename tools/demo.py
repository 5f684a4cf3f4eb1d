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
feeds/ouch_layout.py and appliance/gateway/fixcodec.py (tests and benchmarks use them).
"""
from __future__ import annotations

import dataclasses
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
import textwrap
import time
from typing import Any, Final

from appliance.config import Config, FeedChannelConfig, default, dumps
from appliance.gateway import ouch as O
from appliance.gateway.fixcodec import FixMessage, FixParser, encode as fix_encode
from appliance.model import price_to_text
from feeds import itch
from feeds import ouch_layout as L
from feeds import soupbintcp as soup
from tools import jsonio

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
    # End of Session repeats for 200 ms, not a venue's seconds: a stop of the demo or a test is quick
    changes.setdefault("market_data", dataclasses.replace(
        c.market_data, end_of_session_ms=min(c.market_data.end_of_session_ms, 200)))
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
        self.send(self.enter_packet(urn, side, qty, symbol, price, tif, cl_ord_id))

    @staticmethod
    def enter_packet(urn: int, side: bytes, qty: int, symbol: str, price: int, tif: bytes = b"0",
                     cl_ord_id: str = "") -> bytes:
        """The SoupBinTCP packet of an Enter Order (join several to send them in one write)."""
        msg = L.EnterOrder(urn, side, qty, symbol.encode().ljust(8), price, tif, b"Y", b"A", b"N", b"N",
                           (cl_ord_id or f"C{urn}").encode().ljust(14), 0)
        return soup.encode_unsequenced_data(L.encode(L.ENTER_ORDER, msg))

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

    def send(self, msg_type: str, fields: list[tuple[int, str | bytes | int]]) -> None:
        head: list[tuple[int, str | bytes | int]] = [(49, self.sender), (56, self.target), (34, self.next_out),
                                                     (52, "20240131-14:05:09.123")]
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


# ================================================================================================
# The subscriber process: L3 and L2 books from the multicast feed, a trade tape
# ================================================================================================

def _subscriber_main(config_path: str, conn: Any, locate: int, stop_after_s: float) -> None:
    """Join the partition's L3 and L2 channels; every 0.2 s send the parent a view (ladder, tape,
    counters); after End of Session on L3 (or when told), send the final book hash and exit."""
    from appliance.config import load
    from appliance.daemon import feed_config
    from feeds.books import summary_hash
    from feeds.subscriber import FeedSubscriber, MessageTap

    cfg = load(config_path)
    sub = FeedSubscriber(feed_config(cfg, cfg.partitions[0]), ("l3", "l2"))
    l3 = sub.l3
    tape: list[tuple[int, int, int]] = []      # (price, shares, match) of ALPH trades, newest last
    counts = {"messages": 0, "trades": 0}

    def on_message(seq: int, msg: bytes) -> None:
        counts["messages"] += 1
        t = msg[:1]
        if t == b"E" or t == b"C":
            if t == b"C":
                c = itch.ORDER_EXECUTED_WITH_PRICE.decode_trusted(msg)
                ref, qty, match, px = c.order_ref, c.executed_shares, c.match_number, c.execution_price
            else:
                e = itch.ORDER_EXECUTED.decode_trusted(msg)
                ref, qty, match, px = e.order_ref, e.executed_shares, e.match_number, 0
            rec = l3.orders.get(ref)
            if rec is None:
                return
            lvl = rec[1]
            price = px if t == b"C" else lvl[2]
            counts["trades"] += 1
            if lvl[4] == locate:
                tape.append((price, qty, match))
                del tape[:-12]

    sub.receivers["l3"].sinks.insert(0, MessageTap(on_message))   # before the book: E of a filled order
    sub.open(interface="127.0.0.1")
    conn.send(("ready",))
    deadline = time.monotonic() + stop_after_s
    last = 0.0
    ended_at = None
    while time.monotonic() < deadline:
        sub.poll(0.02)
        now = time.monotonic()
        if conn.poll():
            if conn.recv() == "stop":
                break
        if sub.receivers["l3"].ended and ended_at is None:
            ended_at = now
        if ended_at is not None and now - ended_at > 0.3:
            break
        if now - last >= 0.2:
            last = now
            conn.send(("view", sub.l2.depth(locate, 0)[:5], sub.l2.depth(locate, 1)[:5], list(tape), dict(counts),
                       sub.receivers["l3"].expected - 1))
    rcv = sub.receivers["l3"]
    conn.send(("final", summary_hash(l3.summary()), len(l3.orders), dict(counts), rcv.expected - 1, rcv.gaps,
               rcv.session.decode() if rcv.session else "", rcv.ended))
    sub.close()


# ================================================================================================
# The demo
# ================================================================================================

WIDTH: Final = 100      # every line the demo prints fits this many columns


def fit(line: str, width: int = WIDTH) -> str:
    """The line, cut to ``width`` columns (with an ellipsis) if it is longer."""
    return line if len(line) <= width else line[:width - 3] + "..."


def wrap(items: list[str], indent: str, width: int = WIDTH) -> list[str]:
    """Comma-separated items on as few lines of ``width`` columns as they fit."""
    lines: list[str] = []
    cur = ""
    for item in items:
        add = item if not cur else cur + ", " + item
        if cur and len(indent + add) > width:
            lines.append(fit(indent + cur + ","))
            cur = item
        else:
            cur = add
    if cur:
        lines.append(fit(indent + cur))
    return lines


def duration(us: float) -> str:
    """Microseconds in the unit that reads best: "850 us", "85.5 ms", "1.25 s"."""
    if us < 1000:
        return f"{us:.0f} us" if us >= 10 else f"{us:.1f} us"
    if us < 1_000_000:
        return f"{us / 1000:.1f} ms"
    return f"{us / 1_000_000:.2f} s"


def latency_lines(ack: dict[str, Any], engine: dict[str, Any], counters: dict[str, Any], durability: str) -> list[str]:
    """One line saying what the order-to-ack time is mostly made of."""
    a, e = ack.get("p50_us") or 0.0, engine.get("p50_us") or 0.0
    if not a:
        return []
    batches = counters.get("batches") or 0
    mean = counters.get("commands", 0) / batches if batches else 0.0
    share = min(100, round(100 * e / a))
    if e >= a / 2:
        what = ("the partition's batch: sequencing, the WAL write and its fsync"
                + (" (durability batch: one fsync per batch)" if durability == "batch" else "") + " and matching")
    else:
        what = ("waiting: the load keeps up to 40 orders unanswered per session, so an order queues in the "
                "gateway, the ring and behind the partition's batches")
    text = f"mostly {what}; in the engine {share}% of the median (mean batch {mean:.1f} commands)"
    return textwrap.wrap(text, WIDTH, initial_indent="  ", subsequent_indent="    ")


def ouch_reject_key(reason: int) -> str:
    return f"OUCH {O.REJECT_NAMES.get(reason, 'reason')} (0x{reason:04X})"


def fix_reject_key(m: FixMessage) -> str:
    """FIX: Text (58) carries our reason code and its meaning ("2004 the order could breach ...")."""
    text = m.get(58) or ""
    return f"FIX {text}" if text else f"FIX OrdRejReason {m.get(103) or '?'}"


def demo_header(cfg: Config, root: str, config_path: str) -> list[str]:
    """The demo's first lines, kept at the top of the live view: where its state and ports are."""
    gw = cfg.gateways[0]
    p = cfg.partitions[0]
    feeds = ", ".join(f"{ch} {f.a_group}:{f.a_port}" for ch, f in p.feeds.items())
    return [
        fit(f"matchwire demo: state in {root}"),
        fit(f"  config {config_path} (matchwire admin|order --config it)"),
        fit(f"  OUCH 127.0.0.1:{gw.ouch_port}, FIX 127.0.0.1:{gw.fix_port}, admin 127.0.0.1:{cfg.admin.port}, "
            f"replay {cfg.retransmit.replay_port}, snapshot {cfg.retransmit.snapshot_port}"),
        "  feeds on 127.0.0.1, TTL 0 (the B group: the A group's last octet xor 1):",
        fit(f"    {feeds}"),
    ]


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = width * done // max(total, 1)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _ladder(bids: list[Any], asks: list[Any], symbol: str) -> list[str]:
    lines = [f"  {symbol} L2 (from the multicast feed)", "      bid qty    price | price    ask qty"]
    for i in range(5):
        b = f"{bids[i][1]:>11} {price_to_text(bids[i][0])[:-2]:>8}" if i < len(bids) else " " * 20
        a = f"{price_to_text(asks[i][0])[:-2]:<8} {asks[i][1]:<11}" if i < len(asks) else ""
        lines.append(f"  {b} | {a}")
    return lines


class _Load:
    """The load generator's view of its clients and orders. Owned by the demo's thread."""

    def __init__(self) -> None:
        from appliance.metrics import Histogram
        self.hist = Histogram()
        self.sent = 0
        self.acks = 0
        self.fills = 0
        self.rejects: dict[str, int] = {}
        self.cancels = 0
        self.pending: dict[tuple[int, str], int] = {}   # (client, order key) -> send time ns


def demo(orders: int = 3000, live_view: bool = True, keep: str | None = None, as_json: bool = False,
         seed: int = 7) -> int:
    """Run the demo (see the module docstring); 0 if everything ran and the books agree."""
    rng = random.Random(seed)
    root = keep or tempfile.mkdtemp(prefix="matchwire-demo-")
    os.makedirs(root, exist_ok=True)
    tty = live_view and sys.stdout.isatty()
    out = sys.stdout
    cfg = loopback_config(root, rng=rng)
    path = write_config(cfg, os.path.join(root, "config.toml"))
    state = os.path.join(root, "state")
    gw = cfg.gateways[0]
    symbols = {i.symbol: i for i in cfg.instruments}
    header = demo_header(cfg, root, path)
    print("\n".join(header), file=out)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    sub = ctx.Process(target=_subscriber_main, args=(path, child, symbols["ALPH"].locate, 120.0), daemon=True)
    sub.start()
    if not parent.poll(30) or parent.recv()[0] != "ready":
        print("matchwire demo: the subscriber did not start", file=sys.stderr)
        return 1
    log = open(os.path.join(root, "appliance.log"), "wb")
    t_start = time.monotonic()
    proc = subprocess.Popen([PYTHON, "-m", "tools.cli", "run", path, "--state-dir", state, "--no-realtime"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    rc = 1
    try:
        ready = os.path.join(state, "run", f"{gw.name}.ready.json")
        deadline = time.monotonic() + 60
        while not os.path.exists(ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                print(f"matchwire demo: the appliance did not start (log: {log.name})", file=sys.stderr)
                return 1
            time.sleep(0.05)
        print(f"matchwire demo: appliance up in {time.monotonic() - t_start:.1f} s; sending {orders} orders "
              f"from {len(cfg.firms)} firms over OUCH and FIX", file=out)
        load, clients_info, view = _drive(cfg, orders, rng, parent, tty, out, header)
        # Shutdown: SIGTERM, End of Session on the feed, final snapshot.
        t_stop = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc_run = proc.wait(60)
        stop_s = time.monotonic() - t_stop
        final = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if parent.poll(0.5):
                msg = parent.recv()
                if msg[0] == "final":
                    final = msg
                    break
        if final is None:
            parent.send("stop")
            if parent.poll(5):
                final = parent.recv()
        stats = jsonio.load_path(os.path.join(state, "run", f"{cfg.partitions[0].name}.stats.json"))
        match = final is not None and final[0] == "final" and final[1] == stats["l3_hash"]
        summary = _summary(cfg, load, clients_info, stats, final, rc_run, stop_s, match)
        print("\n".join(summary["lines"]), file=out)
        if as_json:
            print(jsonio.dumps({k: v for k, v in summary.items() if k != "lines"}), file=out)
        rc = 0 if (rc_run == 0 and match) else 1
        return rc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if sub.is_alive():
            sub.terminate()
        sub.join(5)
        log.close()
        if keep is None and rc == 0:
            shutil.rmtree(root, ignore_errors=True)


def _drive(cfg: Config, orders: int, rng: random.Random, view_conn: Any, tty: bool, out: Any,
           header: list[str]) -> tuple[_Load, dict[str, Any], Any]:
    """Send `orders` orders round-robin over an OUCH and a FIX session per firm; keep a window of
    at most 40 unanswered orders per session; print progress and the live view."""
    gw = cfg.gateways[0]
    refs = {i.symbol: (i.reference_price or 1_000_000, i.tick) for i in cfg.instruments}
    syms = [s for s in refs for _ in range(3 if s == "ALPH" else 1)]
    load = _Load()
    clients: list[tuple[str, Any, Any]] = []
    for f in cfg.firms:
        o = OuchClient("127.0.0.1", gw.ouch_port)
        if o.login(f.ouch.username, f.ouch.password) != b"A":
            raise RuntimeError(f"OUCH login of {f.name} refused")
        clients.append(("ouch", f, o))
        x = FixClient("127.0.0.1", gw.fix_port, f.fix.sender_comp_id, gw.fix_comp_id)
        if x.logon(f.fix.password).msg_type != "A":
            raise RuntimeError(f"FIX logon of {f.name} refused")
        clients.append(("fix", f, x))
    sel = selectors.DefaultSelector()
    for i, (_k, _f, c) in enumerate(clients):
        c.sock.setblocking(False)
        sel.register(c.sock, selectors.EVENT_READ, i)
    inflight = [0] * len(clients)
    live: list[list[Any]] = [[] for _ in clients]   # accepted, cancellable orders per client
    seen = [0] * len(clients)
    slow = {i for i, (_k, f, _c) in enumerate(clients) if (f.limits.rate_per_second or 10**9) < 1000}
    next_slow = 0.0
    urn = [0] * len(clients)
    rate = 600.0                                     # orders per second offered
    t0 = time.monotonic()
    last_view = 0.0
    latest_view = None
    i = 0
    while load.sent < orders or (sum(inflight) != 0 and time.monotonic() - t0 < orders / rate + 20):
        now = time.monotonic()
        budget = int((now - t0) * rate) - load.sent
        while budget > 0 and load.sent < orders:
            i = (i + 1) % len(clients)
            if inflight[i] >= 40 or (i in slow and now < next_slow):
                budget -= 1
                if all(n >= 40 for n in inflight):
                    break
                continue
            if i in slow:
                next_slow = now + 0.02      # 50/s: inside the bucket (100/s) of the small firm
            kind, firm, c = clients[i]
            if live[i] and rng.random() < 0.12:
                _cancel_one(kind, c, live[i], rng, urn, i)
                load.cancels += 1
            sym = rng.choice(syms)
            ref, tick = refs[sym]
            side = rng.randrange(2)
            px = ref + (rng.randrange(-6, 3) if side == 0 else rng.randrange(-2, 7)) * tick
            qty = rng.randrange(1, 6) * 100
            urn[i] += 1
            key = str(urn[i])
            if kind == "ouch":
                c.enter(urn[i], b"BS"[side:side + 1], qty, sym, px)
            else:
                key = f"D{urn[i]}"
                c.order(key, sym, "12"[side], qty, px)
            load.pending[(i, key)] = time.perf_counter_ns()
            inflight[i] += 1
            load.sent += 1
            budget -= 1
        for skey, _ev in sel.select(0.002):
            j = skey.data
            kind, firm, c = clients[j]
            c.pump(0.0)
            _answers(load, kind, c, j, seen, inflight, live)
        while view_conn.poll():
            msg = view_conn.recv()
            if msg[0] == "view":
                latest_view = msg
        if now - last_view >= (0.25 if tty else 1.0):
            last_view = now
            _show(load, orders, latest_view, tty, out, header=header)
        if load.sent >= orders and not sum(inflight):
            break
    _show(load, orders, latest_view, tty, out, final=True, header=header)
    info = {}
    for kind, firm, c in clients:
        if kind == "ouch":
            info[f"OUCH {firm.name}"] = f"next seq {c.next_seq}"
        else:
            info[f"FIX {firm.fix.sender_comp_id}"] = f"next out {c.next_out}"
        c.sock.setblocking(True)
        c.close()
    return load, info, latest_view


def _cancel_one(kind: str, c: Any, live: list[Any], rng: random.Random, urn: list[int], i: int) -> None:
    o = live.pop(rng.randrange(len(live)))
    if kind == "ouch":
        c.cancel(o)
    else:
        urn[i] += 1
        cl, sym, side, qty = o
        c.cancel(f"X{urn[i]}", cl, sym, side, qty)


def _answers(load: _Load, kind: str, c: Any, j: int, seen: list[int], inflight: list[int], live: list[list[Any]]) -> None:
    msgs = c.messages
    now = time.perf_counter_ns()
    for item in msgs[seen[j]:]:
        if kind == "ouch":
            m = item[1]
            t = type(m).__name__
            key = (j, str(getattr(m, "user_ref_num", "")))
            if t in ("OrderAccepted", "OrderRejected") and key in load.pending:
                load.hist.record(now - load.pending.pop(key))
                inflight[j] -= 1
                if t == "OrderAccepted":
                    load.acks += 1
                    if m.order_state == b"L":
                        live[j].append(m.user_ref_num)
                else:
                    k = ouch_reject_key(m.reason)
                    load.rejects[k] = load.rejects.get(k, 0) + 1
            elif t == "OrderExecuted":
                load.fills += 1
        else:
            m = item
            if m.msg_type != "8":
                continue
            cl = m.get(11) or ""
            et = m.get(150)
            key = (j, cl)
            if et in ("0", "8") and key in load.pending:
                load.hist.record(now - load.pending.pop(key))
                inflight[j] -= 1
                if et == "0":
                    load.acks += 1
                    live[j].append((cl, m.get(55), m.get(54), int(m.get(38) or 0)))
                else:
                    k = fix_reject_key(m)
                    load.rejects[k] = load.rejects.get(k, 0) + 1
            elif et == "F":
                load.fills += 1
    seen[j] = len(msgs)


def _show(load: _Load, total: int, view: Any, tty: bool, out: Any, final: bool = False,
          header: list[str] | None = None) -> None:
    line = (f"{_bar(load.sent, total)} {load.sent}/{total} orders  acks {load.acks}  fills {load.fills}  "
            f"rejects {sum(load.rejects.values())}  cancels {load.cancels}")
    if not tty:
        if final or load.sent % 500 < 300:
            print(line, file=out)
        if final and view is not None:
            print("\n".join(_ladder(view[1], view[2], "ALPH")), file=out)
        out.flush()
        return
    lines = ["\x1b[H\x1b[J" + (header or ["matchwire demo"])[0], *(header or [])[1:], "", line, ""]
    if view is not None:
        _, bids, asks, tape, counts, feed_seq = view
        lines += _ladder(bids, asks, "ALPH")
        lines += ["", f"  trade tape (ALPH, newest last)    feed: L3 seq {feed_seq}, {counts['trades']} executions"]
        for price, qty, match in tape[-8:]:
            lines.append(f"    match {match:>7}  {qty:>5} @ {price_to_text(price)[:-2]}")
    out.write("\n".join(lines) + "\n")
    out.flush()


def _summary(cfg: Config, load: _Load, clients: dict[str, Any], stats: dict[str, Any], final: Any, rc_run: int,
             stop_s: float, match: bool) -> dict[str, Any]:
    lat = load.hist.summary_us()
    feed = stats["feed"]
    eng = stats["in_engine"]
    lines = [
        "",
        "=" * 72,
        "matchwire demo: summary",
        f"  orders sent {load.sent}, acknowledged {load.acks}, rejected {sum(load.rejects.values())}, "
        f"cancels sent {load.cancels}, fill reports {load.fills}",
    ]
    if load.rejects:
        lines.append("  rejects, by reason:")
        lines += [fit(f"    {n:>6}  {k}") for k, n in sorted(load.rejects.items(), key=lambda kv: (-kv[1], kv[0]))]
    else:
        lines.append("  rejects: none")
    lines += [
        f"  partition {stats['partition']}: {stats['last_seq']} commands sequenced, {stats['resting']} orders resting,"
        f" final snapshot at seq {stats['snapshot_seq']}",
        f"  order to ack (client, loopback): p50 {duration(lat['p50_us'])}, p99 {duration(lat['p99_us'])}, "
        f"max {duration(lat['max_us'])} over {lat['count']}",
        f"  in the engine (ring in to ring out, per batch): p50 {duration(eng['p50_us'])}, "
        f"p99 {duration(eng['p99_us'])}",
        *latency_lines(lat, eng, stats.get("stats", {}), cfg.partitions[0].durability),
        "  feed:",
        *(fit(f"    {ch} session {d['session']}: next seq {d['next_seq']}, {d['messages_sent']} messages in "
              f"{d['packets']} packets") for ch, d in feed.items()),
        "  sessions:",
        *wrap([f"{k} {v}" for k, v in clients.items()], "    "),
    ]
    if final is not None and final[0] == "final":
        _, h, n, counts, last_seq, gaps, session, ended = final
        lines += textwrap.wrap(f"subscriber: {counts['messages']} L3 messages to seq {last_seq} of {session}, "
                               f"{gaps} gaps, {n} orders on its book, End of Session "
                               f"{'seen' if ended else 'NOT seen'}", WIDTH, initial_indent="  ",
                               subsequent_indent="    ")
    lines.append(f"  subscriber's L3 book {'EQUALS' if match else 'DIFFERS FROM'} the partition's "
                 f"({stats['l3_hash'][:16]})")
    lines.append(f"  clean shutdown in {stop_s:.1f} s (exit {rc_run})")
    lines.append("=" * 72)
    return {"lines": lines, "orders": load.sent, "acks": load.acks, "fills": load.fills,
            "rejects": load.rejects, "latency_us": lat, "match": match, "exit": rc_run,
            "last_seq": stats["last_seq"], "feed": feed}
