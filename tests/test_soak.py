"""Soak: legitimate OUCH and FIX sessions trade through `matchwire run` while a hostile client cycles
through the flood patterns of issue 11 (Account Query and heartbeat floods, a TestRequest flood,
wrong-password Logons, a client that asks for resends and never reads), with a kill -9 of the whole
appliance in the middle. Passes when every legitimate order is answered within a generous bound,
the gateway's RSS stays within a budget, and nothing acknowledged is lost across the kill.

Bounded in time: MATCHWIRE_SOAK_S seconds in all (default 40; longer by setting it)."""
from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import threading
import time
from typing import Any

import pytest

from appliance.gateway import ouch
from test_fullstack import Fix, Stack
from test_hostile import ACCOUNT_QUERY, _fix_block, _fix_raw, _read_json, _rss_kb
from feeds import soupbintcp as soup
from tools import audit
from tools.demo import OuchClient, loopback_config

SOAK_S = float(os.environ.get("MATCHWIRE_SOAK_S", "40"))
RSS_BUDGET_MB = 64            # gateway growth allowed over the run, whatever the hostile client does
ANSWER_BOUND_S = 15.0         # a legitimate order answered later than this fails the soak

pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(SOAK_S * 3 + 240))]


class Hostile:
    """Cycles through the flood patterns until stopped; each pattern ends when the gateway drops it
    or after a couple of seconds. Owned by its own thread."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.stop = threading.Event()
        self.rounds = 0
        self.dropped = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def _flood(self, sock: socket.socket, chunks: Any, seconds: float = 2.0) -> None:
        deadline = time.monotonic() + seconds
        sock.settimeout(0.5)
        i = 0
        try:
            while time.monotonic() < deadline and not self.stop.is_set():
                try:
                    sock.sendall(chunks(i))
                    i += 1
                except socket.timeout:
                    pass
        except OSError:
            self.dropped += 1
        finally:
            sock.close()

    def _connect(self, port: int) -> socket.socket | None:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            return None

    def run(self) -> None:
        gw = self.stack.gw
        while not self.stop.is_set():
            self.rounds += 1
            try:
                # 1. OUCH Account Queries and 2. heartbeats, never read
                for one in (ACCOUNT_QUERY, soup.encode_client_heartbeat()):
                    c = OuchClient("127.0.0.1", gw.ouch_port, timeout=5)
                    if c.login("chrl", "chrl-pw") == b"A":
                        block = one * (32768 // len(one))
                        self._flood(c.sock, lambda i, b=block: b)
                    else:
                        c.sock.close()
                # 3. FIX TestRequests (a fresh session day each time: ResetSeqNumFlag)
                s = self._connect(gw.fix_port)
                if s is not None:
                    s.sendall(_fix_raw("CHRL", 1, "A", (98, 0), (108, 30), (554, "chrl-pw"), (141, "Y")))
                    self._flood(s, lambda i: _fix_block("CHRL", 2 + i * 500, 500, "1", (112, "T")))
                # 4. wrong-password Logons for the legitimate FIX firm's CompID
                for k in range(5):
                    s = self._connect(gw.fix_port)
                    if s is not None:
                        s.sendall(_fix_raw("ALFA", 1, "A", (98, 0), (108, 30), (554, f"guess{k}")))
                        s.close()
                # 5. resends asked for and never read
                s = self._connect(gw.fix_port)
                if s is not None:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    s.sendall(_fix_raw("CHRL", 1, "A", (98, 0), (108, 30), (554, "chrl-pw"), (141, "Y")))
                    self._flood(s, lambda i: _fix_block("CHRL", 2 + i * 20, 20, "2", (7, 1), (16, 0)))
            except OSError:
                pass               # the appliance is being killed and restarted: go on
            self.stop.wait(0.5)


def test_legitimate_trading_survives_floods_and_a_kill(tmp_path: Any) -> None:
    cfg = loopback_config(str(tmp_path), rng=random.Random())
    st = Stack(str(tmp_path), cfg)
    st.start()
    hostile = Hostile(st)
    acked_fix: list[str] = []
    acked_ouch: list[int] = []
    peak_growth_kb = 0
    try:
        def gw_pid() -> int:
            return int(_read_json(os.path.join(st.state, "run", "gw0.ready.json"))["pid"])
        base_kb = _rss_kb(gw_pid())
        o = st.ouch("brvo", "brvo-pw")
        f = Fix(st.gw.fix_port, "ALFA")
        assert f.logon("alfa-pw").get(35) == b"A"
        hostile.thread.start()
        urn = 0
        n_fix = 0

        def trade(until: float) -> None:
            nonlocal urn, n_fix, peak_growth_kb
            while time.monotonic() < until:
                urn += 1
                o.enter(urn, b"B", 100, "ALPH", 1_400_000 + (urn % 50) * 100)
                m = o.wait_for(lambda m, u=urn: getattr(m, "user_ref_num", 0) == u, timeout=ANSWER_BOUND_S)
                assert isinstance(m, ouch.L.OrderAccepted), m
                acked_ouch.append(urn)
                n_fix += 1
                cl = f"S{n_fix}"
                f.order(cl, "2", 100, f"{160 + n_fix % 50}.00")
                r = f.wait(lambda m, c=cl: m.get(35) == b"8" and m.get(11) == c.encode(), timeout=ANSWER_BOUND_S)
                assert r.get(150) == b"0", r
                acked_fix.append(cl)
                peak_growth_kb = max(peak_growth_kb, _rss_kb(gw_pid()) - base_kb)
                time.sleep(0.05)

        trade(time.monotonic() + SOAK_S / 2)
        fix_next = f.seq
        st.kill()                              # kill -9 of the whole appliance, mid-flood
        o.sock.close()
        f.close()
        st.start()
        base_kb = _rss_kb(gw_pid())
        o = OuchClient("127.0.0.1", st.gw.ouch_port)
        assert o.login("brvo", "brvo-pw", sequence=1) == b"A"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not o.closed and {
                m.user_ref_num for _, m in o.messages if isinstance(m, ouch.L.OrderAccepted)} < set(acked_ouch):
            o.pump(0.2)
        replayed = {m.user_ref_num for _, m in o.messages if isinstance(m, ouch.L.OrderAccepted)}
        assert set(acked_ouch) <= replayed, sorted(set(acked_ouch) - replayed)[:10]
        f = Fix(st.gw.fix_port, "ALFA", next_out=fix_next)
        assert f.logon("alfa-pw").get(35) == b"A"
        trade(time.monotonic() + SOAK_S / 2)
        hostile.stop.set()
        hostile.thread.join(30)
        o.close()
        f.close()
        assert st.stop() == 0, st.output()
    finally:
        hostile.stop.set()
        if st.proc is not None and st.proc.poll() is None:
            os.killpg(st.proc.pid, signal.SIGKILL)
            st.proc.wait(10)
    print(f"soak {SOAK_S:.0f} s: {len(acked_ouch)} OUCH + {len(acked_fix)} FIX orders acked; hostile rounds "
          f"{hostile.rounds}, dropped {hostile.dropped}; gateway RSS peak growth {peak_growth_kb / 1024:.1f} MB")
    assert hostile.rounds >= 2 and hostile.dropped >= 1
    assert peak_growth_kb / 1024 < RSS_BUDGET_MB
    # Nothing acknowledged is lost: every acked FIX order is in the WAL's audit trail.
    out = io.StringIO()
    problems: list[str] = []
    audit.export(cfg.partitions[0].wal_dir, "jsonl", out, [], problems)
    accepted = {r["cl_ord_id"] for r in map(json.loads, out.getvalue().splitlines()) if r["event"] == "accepted"}
    assert not problems and set(acked_fix) <= accepted, sorted(set(acked_fix) - accepted)[:10]
