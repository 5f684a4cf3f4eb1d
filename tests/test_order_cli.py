"""`matchwire order` against `matchwire run` (a real subprocess): enter, status, replace, cancel over
OUCH and FIX with the config's credentials; fills between the two; the exchange's refusals by name
(exit 1); bad input in one line (exit 2). Every wait is bounded."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
from typing import Any

import pytest

from test_fullstack import Stack
from tools.demo import loopback_config

pytestmark = pytest.mark.timeout(300)


class Order:
    """Runs `matchwire order ...` with the stack's config."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def run(self, *args: str, json_out: bool = True) -> tuple[int, Any, str]:
        argv = [sys.executable, "-m", "tools.cli", "order", *args, "--config", self.stack.path, "--timeout", "20"]
        if json_out:
            argv.append("--json")
        r = subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd=self.stack.root)
        assert "Traceback" not in r.stderr, r.stderr
        if json_out and r.returncode in (0, 1):
            lines = r.stdout.strip().splitlines()
            assert len(lines) == 1, r.stdout
            return r.returncode, json.loads(lines[0]), r.stderr
        return r.returncode, r.stdout, r.stderr


@pytest.fixture(scope="module")
def stack(tmp_path_factory: Any) -> Any:
    root = str(tmp_path_factory.mktemp("order"))
    cfg = loopback_config(root, rng=random.Random())
    # ALFA's and BRVO's orders outlive the tool's session; CHRL's OUCH port cancels on disconnect.
    firms = tuple(dataclasses.replace(f, ouch=dataclasses.replace(f.ouch, cancel_on_disconnect=f.name == "CHRL"))
                  for f in cfg.firms)
    st = Stack(root, dataclasses.replace(cfg, firms=firms))
    st.start()
    try:
        yield st
        assert st.stop() == 0
    finally:
        if st.proc is not None and st.proc.poll() is None:
            os.killpg(st.proc.pid, signal.SIGKILL)
            st.proc.wait(10)


def test_ouch_enter_status_replace_fill_cancel(stack: Stack) -> None:
    o = Order(stack)
    rc, ans, _ = o.run("enter", "ALPH", "buy", "100", "150.00", "--firm", "ALFA")
    assert rc == 0 and ans["accepted"] and ans["lines"][0].startswith(f"accepted user_ref_num {ans['user_ref_num']}")
    ref = str(ans["user_ref_num"])
    rc, st, _ = o.run("status", ref, "--firm", "ALFA")
    assert rc == 0 and (st["state"], st["open"], st["price"], st["side"]) == ("live", 100, "150.0000", "buy")
    rc, ans, _ = o.run("replace", ref, "80", "150.01", "--firm", "ALFA")
    assert rc == 0 and ans["lines"][0].startswith(f"replaced user_ref_num {ref} by ")
    rc, st, _ = o.run("status", ref, "--firm", "ALFA")
    assert (st["state"], st["open"], st["price"]) == ("live", 80, "150.0100")
    # another firm sells into it over FIX: the FIX answer shows the trade
    rc, ans, _ = o.run("enter", "ALPH", "sell", "30", "150.01", "--firm", "BRVO", "--via", "fix")
    assert rc == 0 and any("trade" in line and "filled 30 @ 150.0100" in line for line in ans["lines"]), ans
    rc, st, _ = o.run("status", ref, "--firm", "ALFA")
    assert (st["state"], st["executed"], st["open"]) == ("live", 30, 50)
    rc, ans, _ = o.run("cancel", ref, "--firm", "ALFA")
    assert rc == 0 and ans["lines"] == [f"cancelled 50 shares of user_ref_num {st['current_user_ref_num']}: "
                                        "user requested"]
    rc, st, _ = o.run("status", ref, "--firm", "ALFA")
    assert (st["state"], st["executed"], st["open"]) == ("done", 30, 0)
    rc, ans, _ = o.run("cancel", ref, "--firm", "ALFA")                 # nothing left to cancel
    assert rc == 1 and ans["lines"] == [f"not sent: user_ref_num {ref}: the order is done"]
    # human-readable output: one line per answer, the firm and protocol in front
    rc, out, _ = o.run("status", ref, "--firm", "ALFA", json_out=False)
    assert rc == 0 and out == f"OUCH ALFA: {ref}: done: buy 80 ALPH @ 150.0100, executed 30, open 0\n"


def test_ouch_refusals_by_name(stack: Stack) -> None:
    o = Order(stack)
    rc, ans, _ = o.run("enter", "ALPH", "buy", "20000", "150.00", "--firm", "CHRL")     # max_qty 10000
    assert rc == 1 and not ans["accepted"]
    assert ans["lines"] == [f"rejected user_ref_num {ans['user_ref_num']}: shares exceed threshold (0x001E)"]
    rc, ans, _ = o.run("enter", "ORCA", "buy", "10", "100.00", "--firm", "CHRL")       # cancel on disconnect
    assert rc == 0 and ans["cancelled_at_logout"] and ans["lines"][-1].startswith("note: CHRL's OUCH port cancels")
    rc, st, _ = o.run("status", str(ans["user_ref_num"]), "--firm", "CHRL")
    assert (st["state"], st["open"], st["cancelled"]) == ("done", 0, 10)
    rc, out, err = o.run("status", "999999", "--firm", "CHRL")
    assert rc == 2 and err.strip() == "matchwire order status: user_ref_num 999999: no such order in this session today"


def test_fix_enter_status_replace_cancel(stack: Stack) -> None:
    o = Order(stack)
    rc, ans, _ = o.run("enter", "MSFX", "buy", "10", "400.00", "--firm", "CHRL", "--via", "fix",
                       "--cl-ord-id", "T1", "--tif", "gtc")
    assert rc == 0 and ans["cl_ord_id"] == "T1" and ans["lines"][0].startswith("new: cl_ord_id T1 ")
    rc, st, _ = o.run("status", "T1", "--firm", "CHRL", "--via", "fix")
    assert rc == 0 and (st["state"], st["open"], st["price"], st["tif"]) == ("live", 10, "400.0000", "1")
    rc, ans, _ = o.run("replace", "T1", "20", "400.50", "--firm", "CHRL", "--via", "fix")
    assert rc == 0 and ans["lines"][0].startswith("replaced: cl_ord_id ")
    rc, st, _ = o.run("status", "T1", "--firm", "CHRL", "--via", "fix")      # any ClOrdID of the chain
    assert (st["state"], st["open"], st["price"]) == ("live", 20, "400.5000")
    rc, ans, _ = o.run("cancel", st["current_cl_ord_id"], "--firm", "CHRL", "--via", "fix")
    assert rc == 0 and ans["lines"][0].startswith("cancelled: ")
    rc, st, _ = o.run("status", "T1", "--firm", "CHRL", "--via", "fix")
    assert st["state"] == "cancelled" and st["open"] == 0
    # a refusal: a price off the tick is refused by the tool before anything is sent
    rc, out, err = o.run("enter", "MSFX", "buy", "10", "400.001", "--firm", "CHRL", "--via", "fix")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "tick" in err


def test_bad_input_and_no_gateway(stack: Stack, tmp_path: Any) -> None:
    o = Order(stack)
    for args, text in ((("enter", "NOPE", "buy", "1", "1.00"), "NOPE: not an instrument"),
                       (("enter", "ALPH", "buy", "1", "1.00", "--firm", "ZULU"), "--firm ZULU"),
                       (("enter", "ALPH", "buy", "1", "1.00", "--tif", "gtc"), "--via fix"),
                       (("enter", "ALPH", "buy", "0", "1.00"), "quantity 0"),
                       (("cancel", "abc"), "UserRefNum")):
        rc, out, err = o.run(*args)
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and text in err, (args, err)
    down = loopback_config(str(tmp_path))
    from tools.demo import write_config
    path = write_config(down, str(tmp_path / "down.toml"))
    for via in ("ouch", "fix"):
        r = subprocess.run([sys.executable, "-m", "tools.cli", "order", "status", "1", "--config", path, "--via", via],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "gateway answers at 127.0.0.1:" in r.stderr
