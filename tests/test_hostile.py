"""The trading day survives restarts, floods and hostile clients: `matchwire run` as a real subprocess
(tests/test_fullstack.Stack), probed the way an attacker or a fault injector would. Every wait is
bounded; no test asserts a timing."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
from typing import Any, Iterator

import pytest

from appliance.gateway import ouch
from tests.test_fullstack import P150, Fix, Stack
from tools.demo import loopback_config

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def stack(tmp_path: Any) -> Iterator[Stack]:
    cfg = loopback_config(str(tmp_path), rng=random.Random())
    s = Stack(str(tmp_path), cfg)
    s.start()
    try:
        yield s
    finally:
        if s.proc is not None and s.proc.poll() is None:
            try:
                s.stop(30)
            except subprocess.TimeoutExpired:
                os.killpg(s.proc.pid, signal.SIGKILL)


def _read_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        return dict(json.load(f))


# ------------------------------------------------------------------------------------------------
# Defect 1: OUCH order entry after a restart
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["orderly-stop", "partition-crash"])
def test_ouch_order_entry_works_after_a_restart(stack: Stack, how: str) -> None:
    a = stack.ouch("alfa", "alfa-pw")
    a.enter(1, b"B", 100, "ALPH", 1_400_000)
    a.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted) and m.user_ref_num == 1)
    if how == "orderly-stop":
        assert stack.stop() == 0
    else:   # the partition dies: the supervisor stops the gateways in order and exits non-zero
        pid = _read_json(os.path.join(stack.state, "run", "p0.ready.json"))["pid"]
        os.kill(pid, signal.SIGKILL)
        assert stack.proc is not None
        assert stack.proc.wait(60) != 0
        stack.log.close()
    a.sock.close()
    stack.start()
    b = stack.ouch("alfa", "alfa-pw", sequence=1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not b.closed:
        b.pump(0.2)
    assert any(isinstance(m, ouch.L.OrderAccepted) and m.user_ref_num == 1 for _, m in b.messages)
    assert not b.closed and soupbin_end_of_session not in [k for k, _ in b.other], b.other
    # The replay says the gateway stopped ('E') and came back ('S'); order entry is open again.
    events = [m.event_code for _, m in b.messages if isinstance(m, ouch.L.SystemEvent)]
    assert events[-2:] == [b"E", b"S"], events
    b.enter(2, b"B", 100, "ALPH", 1_410_000)
    acc = b.wait_for(lambda m: getattr(m, "user_ref_num", 0) == 2)
    assert isinstance(acc, ouch.L.OrderAccepted), acc
    # A UserRefNum of the day before the stop is still taken as used.
    b.enter(1, b"B", 100, "ALPH", 1_410_000)
    c = stack.ouch("brvo", "brvo-pw")
    c.enter(1, b"S", 100, "ALPH", 1_400_000)
    ex = b.wait_for(lambda m: isinstance(m, ouch.L.OrderExecuted))
    assert ex.quantity == 100 and ex.user_ref_num == 2
    b.close()
    c.close()


soupbin_end_of_session = b"Z"
