"""Trading phases through the whole appliance: `matchwire run` with a [trading] section (UTC) on an
injected clock (MATCHWIRE_CLOCK_OFFSET_NS: a fixed Monday, whatever the host's date and hour) whose
schedule opens the instrument a few seconds after start. Orders entered in pre-open are collected,
not matched; the opening auction uncrosses at one price; the L3 multicast feed shows Stock Trading
Action (H) and Cross Trade (Q); OUCH (E, liquidity 'O') and FIX (35=8 150=F) clients get their
fills. Then `matchwire admin halt ALPH`: H 'H' and no matching; `matchwire admin resume ALPH`: a
reopening auction (Q cross type 'H') and trading again. Every wait is bounded."""
from __future__ import annotations

import calendar
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from appliance.clock import OFFSET_ENV, offset_to
from appliance.config import TradingConfig
from appliance.gateway import ouch
from feeds import itch
from feeds import soupbintcp as soup
from test_fullstack import ALPH, P150, Fix, Stack, poll_until, subscriber
from tools.demo import loopback_config

pytestmark = pytest.mark.timeout(90)

OPEN_AFTER_S = 10      # from starting the stack: start-up, then orders in pre-open, then the open
MONDAY_0929 = calendar.timegm((2026, 1, 5, 9, 29, 0))    # the injected clock's time at the stack's start


class Recorder:
    """A sink of the L3 channel's receiver: every delivered ITCH message, decoded."""

    def __init__(self) -> None:
        self.msgs: list[Any] = []

    def apply_blocks(self, buf: Any, pos: int, count: int, first_seq: int = 0) -> int:
        for _ in range(count):
            n = (buf[pos] << 8) | buf[pos + 1]
            self.msgs.append(itch.decode(bytes(buf[pos + 2:pos + 2 + n])))
            pos += 2 + n
        return pos

    def actions(self) -> list[bytes]:
        return [m.trading_state for m in self.msgs
                if type(m) is itch.StockTradingAction and m.stock_locate == ALPH]

    def crosses(self) -> list[Any]:
        return [m for m in self.msgs if type(m) is itch.CrossTrade and m.stock_locate == ALPH]


def _admin_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.cli", "admin", *args, "--config", stack.path],
                          capture_output=True, text=True, timeout=30, cwd=stack.root)


def test_opening_auction_halt_and_reopening_through_the_stack(tmp_path: Any) -> None:
    # 09:29:00 at the start; the opening auction at 09:29:09, the open at 09:29:10
    sched = ("04:00:00", f"09:29:{OPEN_AFTER_S - 1:02d}", f"09:29:{OPEN_AFTER_S:02d}", "15:50:00", "16:00:00")
    cfg = loopback_config(str(tmp_path), rng=random.Random())
    cfg = dataclasses.replace(cfg, trading=TradingConfig(time_zone="UTC", schedule=sched, reopen_call_seconds=1,
                                                         noii_interval_ms=500))
    started = time.monotonic()
    st = Stack(str(tmp_path), cfg, env={OFFSET_ENV: str(offset_to(MONDAY_0929 * 10**9))})
    at = started + OPEN_AFTER_S
    sub = subscriber(cfg)
    rec = Recorder()
    sub.receivers["l3"].sinks.append(rec)
    st.start()
    try:
        assert time.monotonic() < at - 1, "start-up took too long for the schedule"
        a = st.ouch("alfa", "alfa-pw")
        f = Fix(st.gw.fix_port, "BRVO")
        assert f.logon("brvo-pw").get(35) == b"A"
        # Pre-open: both accepted, nothing matches although they cross.
        a.enter(1, b"B", 100, "ALPH", P150)
        assert a.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted)).quantity == 100
        f.order("F1", "2", 60, "150.00")
        assert f.wait(lambda m: m.get(35) == b"8" and m.get(150) == b"0").get(11) == b"F1"
        time.sleep(0.3)
        assert not any(isinstance(m, ouch.L.OrderExecuted) for _, m in a.messages)
        # The open: one uncross at one price, both sides filled.
        ex = a.wait_for(lambda m: isinstance(m, ouch.L.OrderExecuted), timeout=OPEN_AFTER_S + 10)
        assert (ex.quantity, ex.price, ex.liquidity_flag) == (60, P150, b"O")
        fill = f.wait(lambda m: m.get(35) == b"8" and m.get(150) == b"F")
        assert fill.get(32) == b"60" and fill.get(31) == b"150.0000" and fill.get(151) == b"0"
        poll_until(sub, lambda: bool(rec.crosses()) and rec.actions()[-1:] == [b"T"], 10)
        opening = rec.crosses()
        assert [(q.shares, q.cross_price, q.cross_type) for q in opening] == [(60, P150, b"O")]
        # the injected clock's day and time: the session of 5 January 2026, the cross just after 09:29:10
        assert (sub.receivers["l3"].session or b"").startswith(b"260105")
        open_s = 9 * 3600 + 29 * 60 + OPEN_AFTER_S
        assert open_s * 10**9 <= opening[0].timestamp < (open_s + 30) * 10**9
        assert rec.actions()[0] != b"T"             # the session opened before trading did
        # Halt by admin: H 'H' on the feed, crossing orders collected, not matched.
        r = _admin_cli(st, "halt", "ALPH")
        assert r.returncode == 0, r.stdout + r.stderr
        # the answer is the partition's outcome, not just "sent"
        assert json.loads(r.stdout)["partitions"] == {"p0": {"applied": True, "instruments_changed": 1}}
        poll_until(sub, lambda: rec.actions()[-1:] == [b"H"], 10)
        # halting a halted instrument: the engine refuses it, and the admin answer says why (HTTP 409)
        again = json.loads(_admin_cli(st, "halt", "ALPH").stdout)
        assert again["ok"] is False and again["refused"] and again["http_status"] == 409
        assert again["partitions"]["p0"]["applied"] is False and again["partitions"]["p0"]["reason"] == 4003
        f.order("F2", "2", 40, "150.00")            # crosses ALFA's resting 40
        assert f.wait(lambda m: m.get(35) == b"8" and m.get(11) == b"F2" and m.get(150) == b"0")
        time.sleep(0.5)
        assert not any(m.get(11) == b"F2" and m.get(150) == b"F" for m in f.msgs)
        assert len(rec.crosses()) == 1
        # Resume: a reopening auction (1 s call), its cross, then trading again.
        r = _admin_cli(st, "resume", "ALPH")
        assert r.returncode == 0, r.stdout + r.stderr
        fill2 = f.wait(lambda m: m.get(35) == b"8" and m.get(11) == b"F2" and m.get(150) == b"F", timeout=10)
        assert fill2.get(32) == b"40"
        ex2 = a.wait_for(lambda m: isinstance(m, ouch.L.OrderExecuted), timeout=10)
        assert (ex2.quantity, ex2.liquidity_flag) == (40, b"H")
        poll_until(sub, lambda: len(rec.crosses()) == 2 and rec.actions()[-1:] == [b"T"], 10)
        assert (rec.crosses()[1].shares, rec.crosses()[1].cross_type) == (40, b"H")
        # An unknown symbol is refused by the admin path.
        assert _admin_cli(st, "halt", "NOPE").returncode == 1
        a.close()
        f.close()
        assert st.stop() == 0
    finally:
        sub.close()
        if st.proc is not None and st.proc.poll() is None:
            os.killpg(st.proc.pid, signal.SIGKILL)
            st.proc.wait(10)


@pytest.mark.timeout(180)
@pytest.mark.pure_only   # waits out the default 30 s reopening call; the halt, the call and the uncross are
def test_admin_halt_and_resume_without_a_trading_section(tmp_path: Any) -> None:   # tested with short calls too
    """No [trading] section (continuous trading all day, no schedule): `matchwire admin halt ALPH`
    then `admin resume ALPH` starts the reopening call (30 s, the default), which ends by itself in an
    uncross (Q cross type 'H') and trading again (H 'T')."""
    pytest.importorskip("simplefix")
    cfg = loopback_config(str(tmp_path), rng=random.Random())
    assert cfg.trading is None
    st = Stack(str(tmp_path), cfg)
    sub = subscriber(cfg)
    rec = Recorder()
    sub.receivers["l3"].sinks.append(rec)
    st.start()
    try:
        a = st.ouch("alfa", "alfa-pw")
        f = Fix(st.gw.fix_port, "BRVO")
        assert f.logon("brvo-pw").get(35) == b"A"
        a.enter(1, b"B", 100, "ALPH", P150)
        assert a.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted)).quantity == 100
        r = _admin_cli(st, "halt", "ALPH")
        assert r.returncode == 0, r.stdout + r.stderr
        poll_until(sub, lambda: rec.actions()[-1:] == [b"H"], 10)
        f.order("F1", "2", 40, "150.00")            # crosses: collected while halted
        assert f.wait(lambda m: m.get(35) == b"8" and m.get(11) == b"F1" and m.get(150) == b"0")
        r = _admin_cli(st, "resume", "ALPH")
        assert r.returncode == 0, r.stdout + r.stderr
        resumed = time.monotonic()
        poll_until(sub, lambda: len(rec.actions()) >= 2 and rec.actions()[-1] != b"H", 10)
        assert rec.actions()[-1] != b"T" and not rec.crosses()        # the reopening call
        # Both clients stay logged in through the call: a heartbeat each second, as a client would.
        deadline = time.monotonic() + 70
        fill = None
        while fill is None:
            assert time.monotonic() < deadline, "the reopening call did not end:\n" + st.output()
            a.send(soup.encode_client_heartbeat())
            f.send("0")
            try:
                fill = f.wait(lambda m: m.get(35) == b"8" and m.get(11) == b"F1" and m.get(150) == b"F",
                              timeout=1)
            except TimeoutError:
                a.pump()
        assert fill.get(32) == b"40"
        assert time.monotonic() - resumed > 20      # the call lasted (about 30 s), it did not end at once
        ex = a.wait_for(lambda m: isinstance(m, ouch.L.OrderExecuted), timeout=10)
        assert (ex.quantity, ex.liquidity_flag) == (40, b"H")
        poll_until(sub, lambda: len(rec.crosses()) == 1 and rec.actions()[-1:] == [b"T"], 10)
        assert (rec.crosses()[0].shares, rec.crosses()[0].cross_type) == (40, b"H")
        # trading again: an order matches on entry
        f.order("F2", "2", 10, "150.00")
        assert f.wait(lambda m: m.get(11) == b"F2" and m.get(150) == b"F", timeout=10).get(32) == b"10"
        a.close()
        f.close()
        assert st.stop() == 0
    finally:
        sub.close()
        if st.proc is not None and st.proc.poll() is None:
            os.killpg(st.proc.pid, signal.SIGKILL)
            st.proc.wait(10)
