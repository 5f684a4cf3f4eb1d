"""The whole appliance over real sockets and processes: `matchwire run` as a subprocess on a loopback
config (temp dirs, free ports, random multicast groups, idle=backoff, no realtime), OUCH clients
(tools/demo.py: feeds/soupbintcp + ouch_layout) and a FIX client on simplefix, a multicast
subscriber (feeds.subscriber) checking the fills. Every wait is bounded."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any, Iterator

import pytest
import simplefix

from appliance.config import Config
from appliance.daemon import feed_config
from appliance.gateway import ouch
from appliance.gateway.state import resume_points
from appliance.model import BUY
from feeds.subscriber import FeedSubscriber
from tools import audit
from tools.demo import OuchClient, free_tcp_port, loopback_config, write_config

pytestmark = pytest.mark.timeout(120)

ALPH = 1
P150 = 1_500_000  # $150.00


class Stack:
    """`matchwire run` in its own process group; start, stop (SIGTERM), kill (SIGKILL the group)."""

    def __init__(self, root: str, config: Config, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.env = None if env is None else {**os.environ, **env}   # e.g. an injected clock
        self.config = config
        self.path = write_config(config, os.path.join(root, "config.toml"))
        self.state = os.path.join(root, "state")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(root, "run.log")
        self.gw = config.gateways[0]

    def start(self, timeout: float = 60) -> None:
        ready = os.path.join(self.state, "run", f"{self.gw.name}.ready.json")
        if os.path.exists(ready):
            os.unlink(ready)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "run", self.path, "--state-dir", self.state, "--no-realtime"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root, env=self.env)
        deadline = time.monotonic() + timeout
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("appliance did not start:\n" + self.output())
            time.sleep(0.05)

    def output(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-6000:]

    def stop(self, timeout: float = 40) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self.log.close()
        return rc

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()
        time.sleep(0.3)   # let the kernel release the ports

    def ouch(self, user: str, password: str, sequence: int = 0) -> OuchClient:
        c = OuchClient("127.0.0.1", self.gw.ouch_port)
        assert c.login(user, password, sequence=sequence) == b"A"
        return c

    def admin(self, method: str, path: str) -> dict[str, Any]:
        a = self.config.admin
        req = urllib.request.Request(f"http://{a.bind}:{a.port}{path}", method=method,
                                     headers={"Authorization": f"Bearer {a.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return dict(json.loads(r.read()))


class Fix:
    """A FIX initiator on simplefix."""

    def __init__(self, port: int, comp: str, target: str = "MATCHWIRE", next_out: int = 1) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.comp = comp
        self.target = target
        self.seq = next_out
        self.parser = simplefix.FixParser()
        self.msgs: list[simplefix.FixMessage] = []

    def send(self, msg_type: str, *pairs: tuple[int, Any]) -> None:
        m = simplefix.FixMessage()
        m.append_pair(8, "FIX.4.4", header=True)
        m.append_pair(35, msg_type, header=True)
        m.append_pair(49, self.comp, header=True)
        m.append_pair(56, self.target, header=True)
        m.append_pair(34, self.seq, header=True)
        m.append_utc_timestamp(52, header=True)
        for tag, v in pairs:
            m.append_pair(tag, v)
        self.seq += 1
        self.sock.sendall(m.encode())

    def logon(self, password: str) -> simplefix.FixMessage:
        self.send("A", (98, 0), (108, 30), (554, password))
        return self.wait(lambda m: m.get(35) in (b"A", b"5"))

    def order(self, cl: str, side: str, qty: int, price: str, symbol: str = "ALPH") -> None:
        self.send("D", (11, cl), (55, symbol), (54, side), (60, "20240131-14:05:09.123"), (38, qty), (40, "2"),
                  (44, price), (59, "0"))

    def wait(self, pred: Any, timeout: float = 10) -> simplefix.FixMessage:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for m in self.msgs[seen:]:
                if pred(m):
                    return m
            seen = len(self.msgs)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching FIX message")
            self.sock.settimeout(min(left, 0.5))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise ConnectionError("FIX connection closed")
            self.parser.append_buffer(data)
            while (m := self.parser.get_message()) is not None:
                self.msgs.append(m)

    def close(self) -> None:
        self.sock.close()


def subscriber(config: Config) -> FeedSubscriber:
    sub = FeedSubscriber(feed_config(config, config.partitions[0]), ("l3",))
    sub.open(interface="127.0.0.1")
    return sub


def poll_until(sub: FeedSubscriber, pred: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("the feed did not show it")
        sub.poll(0.05)


@contextlib.contextmanager
def running_stack(root: str, config: Config | None = None) -> Iterator[Stack]:
    """A started Stack (the loopback config unless given), stopped (or killed) on the way out."""
    s = Stack(root, config or loopback_config(root, rng=random.Random()))
    s.start()
    try:
        yield s
    finally:
        if s.proc is not None and s.proc.poll() is None:
            try:
                s.stop(30)
            except subprocess.TimeoutExpired:
                os.killpg(s.proc.pid, signal.SIGKILL)


@pytest.fixture
def stack(tmp_path: Any) -> Iterator[Stack]:
    with running_stack(str(tmp_path)) as s:
        yield s


def test_placement_keeps_the_matchers_cpu_and_the_servers_behind_the_gateways(stack: Stack) -> None:
    """The running processes as the host sees them: the partition pinned to its CPU, nothing else of
    the appliance on it (when there is another), the retransmission and snapshot servers SCHED_BATCH
    at nice 10, the gateway at the normal policy."""
    import psutil

    assert stack.proc is not None
    kids = {p.pid: " ".join(p.cmdline()) for p in psutil.Process(stack.proc.pid).children()}
    part = next(pid for pid, cmd in kids.items() if "appliance.daemon" in cmd)
    gw = next(pid for pid, cmd in kids.items() if "appliance.gateway.server" in cmd)
    servers = stack.admin("GET", "/status")["servers"]
    assert len(servers) == 2 and all(v["running"] for v in servers.values()), servers
    matcher_cpus = os.sched_getaffinity(part)
    assert len(matcher_cpus) == 1
    others = [stack.proc.pid, gw] + [v["pid"] for v in servers.values()]
    if (os.cpu_count() or 1) > 1:
        for pid in others:
            assert not os.sched_getaffinity(pid) & matcher_cpus, (pid, kids.get(pid))
    base = os.getpriority(os.PRIO_PROCESS, stack.proc.pid)      # nice is relative to the supervisor's
    for v in servers.values():
        assert os.sched_getscheduler(v["pid"]) == os.SCHED_BATCH
        assert os.getpriority(os.PRIO_PROCESS, v["pid"]) == min(19, base + 10)
    assert os.sched_getscheduler(gw) == os.SCHED_OTHER and os.getpriority(os.PRIO_PROCESS, gw) == base


def test_ouch_and_fix_trade_and_the_feed_shows_the_fills(stack: Stack) -> None:
    sub = subscriber(stack.config)
    a = stack.ouch("alfa", "alfa-pw")
    f = Fix(stack.gw.fix_port, "BRVO")
    assert f.logon("brvo-pw").get(35) == b"A"
    a.enter(1, b"B", 100, "ALPH", P150)
    acc = a.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted))
    assert acc.quantity == 100 and acc.order_state == b"L"
    f.order("F1", "2", 60, "150.00")
    new = f.wait(lambda m: m.get(35) == b"8" and m.get(150) == b"F")
    assert new.get(32) == b"60" and new.get(31) == b"150.0000" and new.get(151) == b"0"
    ex = a.wait_for(lambda m: isinstance(m, ouch.L.OrderExecuted))
    assert (ex.quantity, ex.price, ex.liquidity_flag) == (60, P150, b"A")
    # The L3 feed: the resting buy, then its execution with the same match number.
    poll_until(sub, lambda: sub.l3.last_trade.get(ALPH) is not None)
    assert sub.l3.last_trade[ALPH] == (P150, 60, ex.match_number)
    assert sub.l3.depth(ALPH, BUY) == [(P150, 40, 1)]
    # A firm sees only its own reports: BRVO's FIX session got nothing about ALFA's order id.
    assert all(m.get(11) in (b"F1", None) for m in f.msgs if m.get(35) == b"8")
    a.close()
    f.close()
    sub.close()
    assert stack.stop() == 0
    stats = json.load(open(os.path.join(stack.state, "run", "p0.stats.json")))
    # ALFA's logout cancelled its resting 40 (cancel-on-disconnect): 3 commands, an empty book.
    assert stats["resting"] == 0 and stats["last_seq"] == 3


@pytest.mark.parametrize("snapshots", [False, True], ids=["full-replay", "from-checkpoint"])
def test_restart_after_sigkill_keeps_book_sequences_and_feed(tmp_path: Any, snapshots: bool) -> None:
    cfg = loopback_config(str(tmp_path), rng=random.Random())
    if snapshots:   # a snapshot (and its feed checkpoint) every 2 commands: the restart resumes from one
        # CHRL on a second gateway that is sent no event: its journal mark stays 0, which must not
        # force the full replay (nothing was routed to it before the checkpoint).
        gw0 = cfg.gateways[0]
        gw1 = dataclasses.replace(gw0, name="gw1", ouch_port=free_tcp_port(), fix_port=free_tcp_port(),
                                  firms=("CHRL",))
        cfg = dataclasses.replace(cfg, gateways=(dataclasses.replace(gw0, firms=("ALFA", "BRVO")), gw1),
                                  partitions=tuple(dataclasses.replace(p, snapshot_every_events=2)
                                                   for p in cfg.partitions))
    st = Stack(str(tmp_path), cfg)
    st.start()
    try:
        sub = subscriber(cfg)
        gaps: list[Any] = []
        sub.receivers["l3"].on_gap = lambda *a: gaps.append(a)
        a = st.ouch("alfa", "alfa-pw")
        for urn, px in ((1, 1_490_000), (2, 1_480_000), (3, 1_510_000)):
            a.enter(urn, b"B" if urn < 3 else b"S", 100, "ALPH", px)
        a.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted) and m.user_ref_num == 3)
        f = Fix(st.gw.fix_port, "BRVO")
        f.logon("brvo-pw")
        f.order("K1", "2", 30, "149.00")
        f.wait(lambda m: m.get(35) == b"8" and m.get(150) == b"F")
        a.wait_for(lambda m: isinstance(m, ouch.L.OrderExecuted))
        if snapshots:   # two more commands, none of them sent to gw1: a snapshot after its last event
            for urn in (4, 5):
                a.enter(urn, b"S", 100, "ALPH", 1_600_000 + urn * 100)
            a.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted) and m.user_ref_num == 5)
        ouch_next = a.next_seq
        fix_next_in = f.seq
        fix_last_out = max(int(m.get(34)) for m in f.msgs)
        poll_until(sub, lambda: sub.l3.last_trade.get(ALPH) is not None)
        session = sub.receivers["l3"].session
        feed_next = sub.receivers["l3"].expected
        book_before = sub.l3.summary()
        gaps_before = len(gaps)      # joined late: the start of session is a gap of its own
        if snapshots:    # the newest snapshot on disk, its checkpoint beside the feed store
            p0 = cfg.partitions[0]
            store = os.path.join(st.state, "feed", p0.name)

            def written() -> bool:
                # a snapshot after seq 4 (the trade: gw1's last event) with its checkpoint, and gw0's
                # resume point past it (its idle FIX session BRVO catches up within a second)
                snaps = [int(n[5:-5]) for n in os.listdir(p0.snapshot_dir) if n.endswith(".snap")] \
                    if os.path.isdir(p0.snapshot_dir) else []
                return bool(snaps) and max(snaps) > 4 and os.path.exists(
                    os.path.join(store, "CHECKPOINT-%012d.json" % max(snaps))) and resume_points(
                    st.state, "gw0").get(p0.id, 0) >= max(snaps)
            deadline = time.monotonic() + 10
            while not written() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert written()
            newest = max(int(n[5:-5]) for n in os.listdir(p0.snapshot_dir) if n.endswith(".snap"))
        st.kill()          # a crash: the clients are still logged in (no logout, no cancel-on-disconnect)
        a.sock.close()
        f.close()
        assert not [p for p in os.listdir("/dev/shm") if p.startswith(cfg.appliance.name) and p.endswith(".ready")]
        st.start()
        # OUCH: the whole stream again from 1, then the same next sequence number.
        b = st.ouch("alfa", "alfa-pw", sequence=1)
        deadline = time.monotonic() + 10
        while b.next_seq < ouch_next and time.monotonic() < deadline:
            b.pump(0.2)
        assert b.next_seq == ouch_next
        assert [type(m).__name__ for _, m in b.messages][:3] == ["OrderAccepted"] * 3
        b.cancel(1)   # the book survived: the resting buy at 149.00 is still cancellable
        c = b.wait_for(lambda m: isinstance(m, ouch.L.OrderCanceled))
        assert c.user_ref_num == 1 and c.quantity == 70
        # FIX: the sequence numbers continue.
        g = Fix(st.gw.fix_port, "BRVO", next_out=fix_next_in)
        logon = g.logon("brvo-pw")
        assert logon.get(35) == b"A" and int(logon.get(34)) == fix_last_out + 1
        # The feed: same session, no gap, the book as before plus the cancel.
        poll_until(sub, lambda: 1_490_000 not in dict((p, s) for p, s, _ in sub.l3.depth(ALPH, BUY)))
        assert sub.receivers["l3"].session == session
        assert sub.receivers["l3"].expected > feed_next
        assert len(gaps) == gaps_before, gaps
        assert book_before[0][1][1] == (1_480_000, 100, 1)
        # The risk view came back too: net positions from the trade before the crash (in the
        # checkpoint variant they come from the checkpoint, the trade being before its seq).
        firms = st.admin("GET", "/status")["gateways"]["gw0"]["firms"]
        assert (firms["ALFA"]["positions"]["1"], firms["BRVO"]["positions"]["1"]) == (30, -30)
        log = st.output()
        assert ("feed: resumed from" in log) == snapshots, log
        if snapshots:   # from the newest snapshot, though gw1's journal stops at the trade (seq 4)
            assert "feed: resumed from " + os.path.join(store, "CHECKPOINT-%012d.json" % newest) in log, log
        b.close()
        g.close()
        sub.close()
    finally:
        if st.proc is not None and st.proc.poll() is None:
            st.stop()
    assert st.proc is not None and st.proc.returncode == 0, st.output()


def test_risk_limits_and_kill_switch_reject_as_documented(stack: Stack) -> None:
    c = stack.ouch("chrl", "chrl-pw")
    urn = iter(range(1, 1000))

    def reject(qty: int, price: int, side: bytes = b"B") -> int:
        u = next(urn)
        c.enter(u, side, qty, "ALPH", price)
        m = c.wait_for(lambda m: getattr(m, "user_ref_num", None) == u)
        return m.reason if isinstance(m, ouch.L.OrderRejected) else 0

    assert reject(10_001, P150) == ouch.SHARES_EXCEED_THRESHOLD        # 2002 max_qty
    assert reject(100, 1_580_000) == ouch.FAT_FINGER                   # 2001 collar (500 bps of 150)
    assert reject(9_000, P150) == ouch.EXCEEDS_MAX_NOTIONAL           # 2003 $1.35M > $1M
    for _ in range(5):
        assert reject(9_000, 1_000_000) == 0                           # 45,000 open buys at $100
    assert reject(9_000, 1_000_000) == ouch.AGGREGATE_EXPOSURE_EXCEEDED  # 2004 position 54,000 > 50,000
    # FIX shows its own reason: OrdRejReason 103 and the code in Text 58.
    f = Fix(stack.gw.fix_port, "CHRL")
    f.logon("chrl-pw")
    f.order("X1", "1", 10_001, "150.00")
    r = f.wait(lambda m: m.get(35) == b"8")
    assert r.get(150) == b"8" and r.get(103) == b"3" and r.get(58).startswith(b"2002")
    # 2005 rate: CHRL's bucket holds 20 (100/s): a burst runs it dry. The burst goes out in one
    # write, so that however slowly a loaded machine lets the gateway read it, it arrives at once.
    burst = [next(urn) for _ in range(60)]
    c.send(b"".join(c.enter_packet(u, b"B", 10, "ALPH", 1_000_000) for u in burst))
    c.wait_for(lambda m: getattr(m, "user_ref_num", None) == burst[-1])
    reasons = [m.reason for _, m in c.messages if isinstance(m, ouch.L.OrderRejected) and m.user_ref_num in burst]
    assert ouch.PORT_MESSAGE_RATE in reasons
    # Kill switch (admin HTTP): resting orders mass-cancelled, new ones refused 2006.
    a = stack.ouch("alfa", "alfa-pw")
    a.enter(1, b"B", 100, "ALPH", 1_400_000)
    a.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted))
    ans = stack.admin("POST", "/kill-switch/ALFA/on")
    assert ans["ok"] and ans["mass_cancel"]
    cx = a.wait_for(lambda m: isinstance(m, ouch.L.OrderCanceled))
    assert cx.user_ref_num == 1 and cx.quantity == 100
    a.enter(2, b"B", 100, "ALPH", 1_400_000)
    rj = a.wait_for(lambda m: isinstance(m, ouch.L.OrderRejected))
    assert rj.reason == ouch.FIRM_NOT_AUTHORIZED
    assert stack.admin("POST", "/kill-switch/ALFA/off")["kill_switch"] is False
    a.enter(3, b"B", 100, "ALPH", 1_400_000)
    assert isinstance(a.wait_for(lambda m: getattr(m, "user_ref_num", 0) == 3), ouch.L.OrderAccepted)
    # The audit trail of the gateway's refusals: one row per reject, with its reason.
    rejects = os.path.join(stack.state, "gateways", "gw0", "rejects.jsonl")
    rows = [json.loads(x) for x in open(rejects)]
    assert {2001, 2002, 2003, 2004, 2005, 2006} <= {r["reason"] for r in rows}
    for x in (a, c, f):
        x.close()
    # `audit export --rejects`: the WAL's rows and the gateway's refusals in one trail, by time.
    assert stack.stop() == 0
    out = io.StringIO()
    problems: list[str] = []
    audit.export(stack.config.partitions[0].wal_dir, "jsonl", out, [rejects], problems)
    trail = [json.loads(x) for x in out.getvalue().splitlines()]
    refused = [r for r in trail if r["seq"] == ""]
    assert not problems and len(refused) == len(rows)
    assert [r["ts_ns"] for r in trail] == sorted(r["ts_ns"] for r in trail)
    fat = next(r for r in refused if r["outcome"].startswith("rejected 2001 "))
    assert (fat["firm"], fat["instrument"], fat["side"], fat["price"], fat["qty"]) == (3, "ALPH", "B", "158.0000", 100)
    assert fat["outcome"].endswith("(gateway gw0)") and fat["ord_type"] == "LIMIT"
    assert any(r["event"] == "accepted" and r["seq"] for r in trail)


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    bytes(range(256)) * 4,
    b"\x00\x00" + b"L" * 60,
    b"\x00\x2fL" + b"nobody" + b" " * 40,
])
def test_garbage_on_either_port_leaves_other_sessions_alone(stack: Stack, garbage: bytes) -> None:
    a = stack.ouch("alfa", "alfa-pw")
    a.enter(1, b"B", 100, "ALPH", 1_400_000)
    a.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted))
    f = Fix(stack.gw.fix_port, "BRVO")
    f.logon("brvo-pw")
    for port in (stack.gw.ouch_port, stack.gw.fix_port):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(garbage)
        s.settimeout(5)
        try:
            data = s.recv(4096)
            while data and s.recv(4096):
                pass
        except (socket.timeout, ConnectionResetError):
            pytest.fail("the gateway did not close a connection that sent garbage")
        s.close()
    # The logged-in sessions did not notice: no cancel, orders go on.
    f.order("G1", "2", 100, "140.00")
    assert f.wait(lambda m: m.get(35) == b"8" and m.get(150) == b"F").get(32) == b"100"
    ex = a.wait_for(lambda m: isinstance(m, ouch.L.OrderExecuted))
    assert ex.quantity == 100
    assert not [m for _, m in a.messages if isinstance(m, ouch.L.OrderCanceled)]
    a.close()
    f.close()
