"""A real FIX engine as the counterparty: QuickFIX (the `quickfix` package) as initiator against the
FIX gateway of `matchwire run`, validating every message we send with its stock FIX44.xml data
dictionary. A message that fails validation makes QuickFIX send a session Reject (35=3) instead of
handing it to the application: the test records every message QuickFIX sends and receives and
asserts it never rejected one, and that each report the scenario expects reached the application.

Covered: logon (Password 554), limit/market/stop/stop-limit orders with DAY, GTC, IOC and FOK,
post-only (ExecInst 6), fills, a triggered stop (150=D 378=8), cancel, replace, mass cancel, order
and cancel rejects (unknown and too late), resend in both directions (QuickFIX asks us, we ask
QuickFIX), and sequence numbers carried across a restart of the appliance (no reset). OUCH (firm
ALFA) provides the other side of the trades. Every wait is bounded.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable, Iterator

import pytest
import quickfix as qf
from test_fullstack import Stack, running_stack


pytestmark = pytest.mark.timeout(240)

SOH = "\x01"
P = 10_000          # Price(4) units of $1
DICTIONARY = os.path.join(sys.prefix, "share", "quickfix", "FIX44.xml")


def fields(raw: str) -> dict[int, str]:
    """Tag -> value of a FIX message's text (the last occurrence of a tag wins; no groups here)."""
    out: dict[int, str] = {}
    for part in raw.split(SOH):
        if part:
            tag, _, value = part.partition("=")
            out[int(tag)] = value
    return out


class Client(qf.Application):
    """The QuickFIX application: records what passes through it (callbacks run on QuickFIX's thread)."""

    def __init__(self, password: str) -> None:
        super().__init__()
        self.password = password
        self.lock = threading.Lock()
        self.received: list[dict[int, str]] = []     # from us, after QuickFIX validated them
        self.sent: list[dict[int, str]] = []         # by QuickFIX (session and application)
        self.session: Any = None
        self.logons = 0
        self.errors: list[str] = []

    def onCreate(self, session_id: Any) -> None:
        self.session = session_id

    def onLogon(self, session_id: Any) -> None:
        with self.lock:
            self.logons += 1

    def onLogout(self, session_id: Any) -> None:
        pass

    def toAdmin(self, message: Any, session_id: Any) -> None:
        # An exception escaping a callback would end QuickFIX's thread: none may.
        try:
            if fields(message.toString()).get(35) == "A":
                message.setField(qf.StringField(554, self.password))
            with self.lock:
                self.sent.append(fields(message.toString()))
        except Exception as exc:    # noqa: BLE001 - recorded, the test fails on it
            self.errors.append(repr(exc))

    def fromAdmin(self, message: Any, session_id: Any) -> None:
        with self.lock:
            self.received.append(fields(message.toString()))

    def toApp(self, message: Any, session_id: Any) -> None:
        with self.lock:
            self.sent.append(fields(message.toString()))

    def fromApp(self, message: Any, session_id: Any) -> None:
        with self.lock:
            self.received.append(fields(message.toString()))

    # -- test side --------------------------------------------------------------------------------
    def send(self, msg_type: str, *pairs: tuple[int, Any]) -> None:
        m = qf.Message()
        m.getHeader().setField(qf.StringField(35, msg_type))
        for tag, value in pairs:
            m.setField(qf.StringField(tag, str(value)))
        assert qf.Session.sendToTarget(m, self.session)

    def order(self, cl: str, side: str, qty: int, ord_type: str = "2", price: str | None = None,
              stop: str | None = None, tif: str = "0", symbol: str = "ALPH", *extra: tuple[int, Any]) -> None:
        pairs: list[tuple[int, Any]] = [(11, cl), (55, symbol), (54, side), (60, "20260107-14:30:00.000"),
                                        (38, qty), (40, ord_type), (59, tif)]
        if price is not None:
            pairs.append((44, price))
        if stop is not None:
            pairs.append((99, stop))
        self.send("D", *pairs, *extra)

    def wait(self, pred: Callable[[dict[int, str]], bool], timeout: float = 15, start: int = 0) -> dict[int, str]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                for m in self.received[start:]:
                    if pred(m):
                        return m
            if time.monotonic() > deadline:
                with self.lock:
                    tail = self.received[-5:]
                raise TimeoutError(f"no such message from the gateway; last ones: {tail}")
            time.sleep(0.02)

    def report(self, cl: str, exec_type: str, timeout: float = 15) -> dict[int, str]:
        return self.wait(lambda m: m.get(35) == "8" and m.get(11) == cl and m.get(150) == exec_type, timeout)

    def mark(self) -> int:
        with self.lock:
            return len(self.received)


def settings_text(root: str, port: int) -> str:
    return "\n".join([
        "[DEFAULT]",
        "ConnectionType=initiator",
        "ReconnectInterval=1",
        f"FileStorePath={os.path.join(root, 'qf-store')}",
        f"FileLogPath={os.path.join(root, 'qf-log')}",
        "StartTime=00:00:00",
        "EndTime=00:00:00",
        "UseDataDictionary=Y",
        f"DataDictionary={DICTIONARY}",
        "ValidateFieldsOutOfOrder=Y",
        "ValidateFieldsHaveValues=Y",
        "ValidateUserDefinedFields=Y",
        "CheckLatency=N",
        "ResetOnLogon=N",
        "ResetOnLogout=N",
        "ResetOnDisconnect=N",
        "",
        "[SESSION]",
        "BeginString=FIX.4.4",
        "SenderCompID=BRVO",
        "TargetCompID=MATCHWIRE",
        "SocketConnectHost=127.0.0.1",
        f"SocketConnectPort={port}",
        "HeartBtInt=30",
        "",
    ])


@pytest.fixture
def stack(tmp_path: Any) -> Iterator[Stack]:
    with running_stack(str(tmp_path)) as s:
        yield s


def _wait_logons(c: Client, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while c.logons < n:
        assert time.monotonic() < deadline, "QuickFIX did not log on"
        time.sleep(0.05)


def test_quickfix_validates_every_message_we_send(stack: Stack, tmp_path: Any) -> None:
    assert os.path.exists(DICTIONARY), DICTIONARY
    path = os.path.join(str(tmp_path), "qf.cfg")
    with open(path, "w") as f:
        f.write(settings_text(str(tmp_path), stack.gw.fix_port))
    settings = qf.SessionSettings(path)
    client = Client("brvo-pw")
    initiator = qf.SocketInitiator(client, qf.FileStoreFactory(settings), settings, qf.FileLogFactory(settings))
    initiator.start()
    alfa = stack.ouch("alfa", "alfa-pw")
    try:
        _wait_logons(client, 1)
        _scenario(client, alfa, stack)
    finally:
        initiator.stop()
        alfa.close()
    assert not client.errors, client.errors
    rejects = [m for m in client.sent if m.get(35) == "3"]
    assert not rejects, f"QuickFIX rejected our messages: {rejects}"
    log = "".join(open(os.path.join(str(tmp_path), "qf-log", n), errors="replace").read()
                  for n in os.listdir(os.path.join(str(tmp_path), "qf-log")) if n.endswith(".event.log"))
    for bad in ("Invalid message", "rejected", "Message Rejected"):
        assert bad not in log, log[-3000:]


def _scenario(c: Client, alfa: Any, stack: Stack) -> None:
    # -- every order type and time in force ---------------------------------------------------------
    c.order("L-DAY", "1", 100, price="149.00")
    assert c.report("L-DAY", "0")[39] == "0"
    c.order("L-GTC", "1", 100, price="148.00", tif="1")
    c.report("L-GTC", "0")
    c.order("PO", "1", 10, "2", "147.00", None, "0", "ALPH", (18, "6"))          # post-only, rests
    c.report("PO", "0")
    alfa.enter(1, b"S", 60, "ALPH", 149 * P)                                      # fills L-DAY 60
    f = c.report("L-DAY", "F")
    assert (f[32], f[31], f[151], f[14], f[39]) == ("60", "149.0000", "40", "60", "1")
    alfa.enter(2, b"S", 5, "ALPH", 150 * P)
    c.order("IOC", "1", 10, price="150.00", tif="3")
    assert c.report("IOC", "F")[32] == "5" and c.report("IOC", "4")[151] == "0"
    c.order("FOK", "1", 1000, price="150.00", tif="4")
    assert c.report("FOK", "4")[14] == "0"
    alfa.enter(3, b"S", 5, "ALPH", 150 * P)
    c.order("MKT", "1", 5, "1")
    assert c.report("MKT", "F")[31] == "150.0000"
    c.order("STP", "1", 10, "3", None, "151.00")                                 # buy stop at 151
    c.report("STP", "0")
    c.order("STL", "1", 10, "4", "160.00", "160.00", "1")                       # stop-limit, GTC
    c.report("STL", "0")
    alfa.enter(4, b"S", 30, "ALPH", 151 * P)
    c.order("LIFT", "1", 10, price="151.00")                                     # trades at 151 ...
    c.report("LIFT", "F")
    d = c.report("STP", "D")                                                      # ... the stop triggers
    assert (d[378], d[39]) == ("8", "0")
    assert c.report("STP", "F")[31] == "151.0000"
    # -- rejects ---------------------------------------------------------------------------------
    c.order("BAD", "1", 10, price="150.00", symbol="NOPE")
    r = c.report("BAD", "8")
    assert (r[39], r[103]) == ("8", "1")
    c.order("POX", "1", 10, "2", "152.00", None, "0", "ALPH", (18, "6"))       # post-only would take
    assert c.report("POX", "8")[103] == "99"
    # -- cancel, replace, too late, unknown ------------------------------------------------------
    c.send("F", (41, "L-GTC"), (11, "C1"), (55, "ALPH"), (54, "1"), (60, "20260107-14:30:00.000"))
    x = c.report("C1", "4")
    assert (x[41], x[38], x[151]) == ("L-GTC", "100", "0")
    c.send("F", (41, "L-GTC"), (11, "C2"), (55, "ALPH"), (54, "1"), (60, "20260107-14:30:00.000"))
    late = c.wait(lambda m: m.get(35) == "9" and m.get(11) == "C2")
    assert (late[102], late[39], late[37]) == ("0", "4", x[37])
    c.send("F", (41, "NEVER"), (11, "C3"), (55, "ALPH"), (54, "1"), (60, "20260107-14:30:00.000"))
    unknown = c.wait(lambda m: m.get(35) == "9" and m.get(11) == "C3")
    assert (unknown[102], unknown[37]) == ("1", "NONE")
    c.send("G", (41, "L-DAY"), (11, "R1"), (55, "ALPH"), (54, "1"), (38, 80), (40, "2"), (44, "148.50"),
           (59, "0"), (60, "20260107-14:30:00.000"))
    rp = c.report("R1", "5")
    assert (rp[41], rp[38], rp[151], rp[14]) == ("L-DAY", "80", "20", "60")
    # -- mass cancel -----------------------------------------------------------------------------
    c.send("q", (11, "MC"), (530, "7"), (60, "20260107-14:30:00.000"))
    mc = c.wait(lambda m: m.get(35) == "r" and m.get(11) == "MC")
    assert (mc[531], mc[533]) == ("7", "3")                     # R1, PO and the pending STL
    # -- resend: QuickFIX asks us (it expects an older sequence number than we send next) --------
    sess = qf.Session.lookupSession(c.session)
    expected = sess.getExpectedTargetNum()
    sess.setNextTargetMsgSeqNum(expected - 4)
    start = c.mark()
    c.send("1", (112, "PING1"))                                  # our Heartbeat shows the gap
    c.wait(lambda m: m.get(43) == "Y", start=start)             # resent with PossDupFlag
    c.wait(lambda m: m.get(35) == "0" and m.get(112) == "PING1", start=start)
    assert any(m.get(35) == "2" for m in c.sent), "QuickFIX never sent a ResendRequest"
    # -- resend: we ask QuickFIX (it skips sequence numbers) --------------------------------------
    sess.setNextSenderMsgSeqNum(sess.getExpectedSenderNum() + 3)
    start = c.mark()
    c.order("GAP", "1", 10, price="140.00")
    c.wait(lambda m: m.get(35) == "2", start=start)             # our ResendRequest
    c.report("GAP", "0")                                         # after the gap fill, the order
    # -- a restart of the appliance: both sides keep their sequence numbers -----------------------
    last_in = max(int(m[34]) for m in c.received)
    assert stack.stop() == 0
    stack.start()
    _wait_logons(c, 2)
    logon = c.wait(lambda m: m.get(35) == "A" and int(m[34]) > last_in)
    assert logon.get(141) != "Y"
    c.order("AFTER", "1", 10, price="140.00")
    assert c.report("AFTER", "0")[39] == "0"
