"""`matchwire bench gateway`: the in-process gateway harness (a real GatewayServer, its journal and
stores on file, rings in shared memory, a real matching engine on the partition's side) runs, answers
every order, and writes the same OUCH bytes and the same journal from run to run (the figure it
prints is CPU time: printed, never asserted)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from feeds import ouch_layout as L

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(*args: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "gateway", *args], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_order_is_answered_and_the_ouch_bytes_and_journal_repeat() -> None:
    a = _bench("--orders", "300", "--protocol", "ouch")
    b = _bench("--orders", "300", "--protocol", "ouch")
    for r in (a, b):
        o = r["ouch"]
        assert o["us_per_order"] > 0
        # one write per read: the login's answer, then one Order Accepted (or more) per order
        assert o["writes"] == 301
        assert o["bytes_out"] >= 300 * (3 + L.ORDER_ACCEPTED.struct.size)   # a Sequenced Data 'A' per order
        assert o["journal_bytes"] > 0
    assert (a["ouch"]["out_sha256"], a["ouch"]["journal_sha256"]) == (b["ouch"]["out_sha256"],
                                                                      b["ouch"]["journal_sha256"])


def test_fix_and_batched_reads_and_the_profile_run() -> None:
    r = _bench("--orders", "200", "--per-read", "8", "--profile", "5")
    assert set(r) >= {"ouch", "fix"} and r["profiled"] is True and r["per_read"] == 8
    assert r["fix"]["writes"] == 1 + 200 // 8
    assert r["fix"]["bytes_out"] > 200 * 100      # an ExecutionReport per order
