"""`matchwire order`: enter, cancel or replace an order, or show its status, over OUCH 5.0 or FIX 4.4,
as one of the config's firms (its credentials, at the gateway that admits it).

    matchwire order enter SYMBOL buy|sell QTY PRICE [--tif day|ioc|gtc|fok] [--type limit|market|stop|stop-limit]
                          [--stop PRICE] [--cl-ord-id ID]
    matchwire order cancel REF [--qty N]          # --qty: reduce to N shares (executions included)
    matchwire order replace REF QTY PRICE
    matchwire order status REF
    options of each: --firm NAME (default: the config's first firm), --config CONFIG (default: the
    built-in default config, appliance.config.DEFAULT), --via ouch|fix (default ouch), --timeout SECONDS (default 10), --json

REF names the order: over OUCH its UserRefNum (the number `enter` prints; a replaced order keeps
answering to the first one), over FIX its ClOrdID (any ClOrdID of its chain).

Each command is one short session: log in, do one thing, log out. The tool learns what it needs
from the session itself, as a reconnecting client does: over OUCH an Account Query gives the next
UserRefNum and a login from sequence 1 replays the day's messages (the order's status); over FIX
the Logon's answer gives the sequence numbers and a ResendRequest replays the session's
ExecutionReports. An OUCH port that cancels on disconnect (firms[].ouch.cancel_on_disconnect, on by
default) cancels the order at the tool's logout, and the tool says so; FIX orders stay.

Exit: 0 the exchange accepted (or the status was found), 1 it refused (the reason printed), 2 bad
input or no answer (one line on stderr).
"""
from __future__ import annotations

import argparse
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from appliance.config import Config, FirmConfig, default, load
from appliance.gateway import ouch as O
from appliance.gateway.fixcodec import FixMessage, FixParser, encode
from appliance.model import price_from_text, price_to_text
from feeds import ouch_layout as L
from feeds import soupbintcp as soup
from tools import jsonio
from tools.usage import UsageError
from tools.demo import OuchClient

SIDES = {"buy": (b"B", "1"), "sell": (b"S", "2")}
OUCH_TIF = {"day": b"0", "ioc": b"3"}
FIX_TIF = {"day": "0", "gtc": "1", "ioc": "3", "fok": "4"}
FIX_TIF_NAME = {v: k for k, v in FIX_TIF.items()}
FIX_ORD_TYPE = {"market": "1", "limit": "2", "stop": "3", "stop-limit": "4"}
FIX_ORD_STATUS = {"0": "new", "1": "partially filled", "2": "filled", "4": "cancelled", "5": "replaced",
                  "8": "rejected", "C": "expired"}
# OUCH 5.0 Order Canceled reasons by name (the Order Rejected ones: appliance.gateway.ouch.REJECT_NAMES).
OUCH_CANCEL_NAMES = {b"U": "user requested", b"I": "immediate or cancel", b"Q": "self-match prevention",
                     b"T": "time in force expired", b"S": "supervisory", b"K": "market collar",
                     b"D": "regulatory restriction", b"Z": "system cancel"}
SETTLE_S = 0.3          # after the answer, what else the same batch brought (fills of an aggressive order)


@dataclass
class Target:
    """Where and as whom: the firm's gateway and credentials, the instruments' ticks."""

    firm: FirmConfig
    host: str
    ouch_port: int
    fix_port: int
    fix_target: str
    ticks: dict[str, int]
    timeout: float

    @classmethod
    def of(cls, config: Config, firm_name: str | None, timeout: float) -> Target:
        firms = {f.name: f for f in config.firms}
        if not firms:
            raise UsageError("the config has no [[firms]]")
        firm = firms.get(firm_name) if firm_name else config.firms[0]
        if firm is None:
            raise UsageError(f"--firm {firm_name}: not a firm of the config ({', '.join(firms)})")
        gw = next((g for g in config.gateways if firm.name in g.firms), None)
        if gw is None:
            raise UsageError(f"firm {firm.name}: no gateway admits it")
        host = "127.0.0.1" if gw.bind in ("0.0.0.0", "") else gw.bind
        return cls(firm, host, gw.ouch_port, gw.fix_port, gw.fix_comp_id,
                   {i.symbol: i.tick for i in config.instruments}, timeout)

    def price(self, symbol: str, text: str) -> int:
        if symbol not in self.ticks:
            raise UsageError(f"{symbol}: not an instrument of the config ({', '.join(self.ticks)})")
        return price_from_text(text, self.ticks[symbol])


@dataclass
class Result:
    """What a command found out: lines to print, a JSON-ready summary, and whether it was refused."""

    lines: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    refused: bool = False


# ================================================================================================
# OUCH 5.0
# ================================================================================================
class OuchOrderSession:
    """One short OUCH session for one command. Owned by the calling thread."""

    def __init__(self, t: Target, from_sequence: int) -> None:
        self.t = t
        try:
            self.c = OuchClient(t.host, t.ouch_port, timeout=t.timeout)
        except OSError as e:
            raise UsageError(f"no OUCH gateway answers at {t.host}:{t.ouch_port}: {e.strerror or e}") from None
        answer = self.c.login(t.firm.ouch.username, t.firm.ouch.password, sequence=from_sequence)
        if answer != b"A":
            self.c.close()
            why = {b"JA": "not authorized", b"JS": "session not available"}.get(answer[:2], repr(answer))
            raise UsageError(f"OUCH login as {t.firm.ouch.username!r} refused: {why}")

    def send(self, msg_type: Any, msg: Any) -> None:
        self.c.send(soup.encode_unsequenced_data(L.encode(msg_type, msg)))

    def next_user_ref_num(self) -> int:
        """An Account Query: its answer comes after every message sequenced before it."""
        self.send(L.ACCOUNT_QUERY, L.AccountQuery())
        q = self.c.wait_for(lambda m: isinstance(m, L.AccountQueryResponse), self.t.timeout)
        return int(q.next_user_ref_num)

    def wait(self, pred: Callable[[Any], bool], what: str) -> Any:
        try:
            return self.c.wait_for(pred, self.t.timeout)
        except TimeoutError:
            debug = [p.decode(errors="replace") for k, p in self.c.other if k == soup.DEBUG]
            raise UsageError(f"no answer to the {what} within {self.t.timeout:g} s"
                             + (f" (the gateway said: {debug[-1]})" if debug else "")) from None

    def settle(self) -> None:
        end = time.monotonic() + SETTLE_S
        while time.monotonic() < end and not self.c.closed:
            self.c.pump(end - time.monotonic())

    def close(self) -> None:
        self.c.close()


def ouch_line(m: Any) -> str:
    if isinstance(m, (L.OrderAccepted, L.OrderReplaced)):
        head = (f"replaced user_ref_num {m.orig_user_ref_num} by {m.user_ref_num}"
                if isinstance(m, L.OrderReplaced) else f"accepted user_ref_num {m.user_ref_num}")
        side = "buy" if m.side == b"B" else "sell"
        state = "live" if m.order_state == b"L" else "done"
        return (f"{head}: {side} {m.quantity} {m.symbol.decode().strip()} @ {price_to_text(m.price)} "
                f"tif {m.time_in_force.decode()} order_ref {m.order_ref} ({state}) "
                f"cl_ord_id {m.cl_ord_id.decode().strip()}")
    if isinstance(m, L.OrderExecuted):
        flag = {b"A": "added liquidity", b"R": "removed liquidity"}.get(m.liquidity_flag,
                                                                          f"liquidity {m.liquidity_flag.decode()}")
        return f"executed {m.quantity} @ {price_to_text(m.price)} ({flag}), match {m.match_number}"
    if isinstance(m, L.OrderCanceled):
        return (f"cancelled {m.quantity} shares of user_ref_num {m.user_ref_num}: "
                f"{OUCH_CANCEL_NAMES.get(m.reason, m.reason.decode())}")
    if isinstance(m, L.OrderRejected):
        return (f"rejected user_ref_num {m.user_ref_num}: {O.REJECT_NAMES.get(m.reason, 'reason')} "
                f"(0x{m.reason:04X})")
    if isinstance(m, L.CancelReject):
        return f"cancel rejected for user_ref_num {m.user_ref_num}: no live order to cancel"
    if isinstance(m, L.OrderModified):
        return f"modified user_ref_num {m.user_ref_num}: {m.quantity} shares open"
    return repr(m)


def _ouch_refs(msgs: list[Any], ref: int) -> set[int]:
    """The UserRefNums of ref's order chain (ref and every replacement of it)."""
    chain = {ref}
    for m in msgs:
        if isinstance(m, L.OrderReplaced) and m.orig_user_ref_num in chain:
            chain.add(m.user_ref_num)
    return chain


def ouch_status(msgs: list[Any], ref: int) -> dict[str, Any] | None:
    """The state of ref's order from the day's replayed messages (None: the session never had it).
    Open shares: the last Accepted/Replaced quantity (a Replaced one is the replacing order's), less
    executions and cancelled shares after it; a Modified gives them anew."""
    chain = _ouch_refs(msgs, ref)
    mine = [m for m in msgs if getattr(m, "user_ref_num", None) in chain]
    head = next((m for m in mine if isinstance(m, (L.OrderAccepted, L.OrderRejected))), None)
    if head is None:
        return None
    if isinstance(head, L.OrderRejected):
        return {"user_ref_num": ref, "state": "rejected", "reason": O.REJECT_NAMES.get(head.reason, "other")}
    last: Any = head
    executed = cancelled = open_qty = 0
    dead = False
    for m in mine:
        if isinstance(m, (L.OrderAccepted, L.OrderReplaced)):
            last, open_qty, dead = m, m.quantity, m.order_state != b"L"
        elif isinstance(m, L.OrderExecuted):
            executed += m.quantity
            open_qty -= m.quantity
        elif isinstance(m, L.OrderCanceled):
            cancelled += m.quantity
            open_qty -= m.quantity
        elif isinstance(m, L.OrderModified):
            open_qty = m.quantity
    open_qty = 0 if dead else max(0, open_qty)
    state = "live" if open_qty else ("filled" if executed and not cancelled else "done")
    return {"user_ref_num": ref, "current_user_ref_num": last.user_ref_num,
            "side": "buy" if head.side == b"B" else "sell", "symbol": head.symbol.decode().strip(),
            "price": price_to_text(last.price), "quantity": last.quantity, "executed": executed,
            "cancelled": cancelled, "open": open_qty, "state": state,
            "tif": last.time_in_force.decode(), "display": last.display.decode()}


def _ouch_replay(t: Target) -> tuple[OuchOrderSession, list[Any], int]:
    """Log in from sequence 1: the day's messages, up to an Account Query's answer (its number)."""
    s = OuchOrderSession(t, 1)
    nxt = s.next_user_ref_num()
    msgs = [m for _, m in s.c.messages if not isinstance(m, L.AccountQueryResponse)]
    return s, msgs, nxt


def ouch_command(args: argparse.Namespace, t: Target) -> Result:
    r = Result()
    if args.action == "enter":
        if args.type != "limit" or args.stop is not None:
            raise UsageError("OUCH enters limit orders only (market, stop and stop-limit: --via fix)")
        if args.tif not in OUCH_TIF:
            raise UsageError(f"--tif {args.tif}: OUCH has day and ioc (gtc and fok: --via fix)")
        symbol = args.symbol
        price = t.price(symbol, args.price)
        side = SIDES[args.side][0]
        s = OuchOrderSession(t, 0)
        try:
            urn = s.next_user_ref_num()
            cl = args.cl_ord_id or f"MW{urn}"
            if len(cl) > 14:
                raise UsageError(f"--cl-ord-id {cl}: OUCH takes at most 14 characters")
            s.send(L.ENTER_ORDER, L.EnterOrder(urn, side, args.qty, symbol.encode().ljust(8), price,
                                               OUCH_TIF[args.tif], b"Y", b"A", b"N", b"N", cl.encode().ljust(14), 0))
            first = len(s.c.messages)
            ans = s.wait(lambda m: getattr(m, "user_ref_num", None) == urn
                         and isinstance(m, (L.OrderAccepted, L.OrderRejected)), "Enter Order")
            s.settle()
            r.refused = isinstance(ans, L.OrderRejected)
            mine = [m for _, m in s.c.messages[first:] if getattr(m, "user_ref_num", None) == urn]
            r.lines = [ouch_line(m) for m in mine]
            r.summary = {"user_ref_num": urn, "accepted": not r.refused}
            st = ouch_status(mine, urn)
            if t.firm.ouch.cancel_on_disconnect and st is not None and st["state"] == "live":
                r.lines.append(f"note: {t.firm.name}'s OUCH port cancels on disconnect: the order is cancelled "
                               f"at logout (firms.ouch.cancel_on_disconnect = false keeps it; FIX orders stay)")
                r.summary["cancelled_at_logout"] = True
        finally:
            s.close()
        return r
    ref = _int_ref(args.ref)
    s, msgs, nxt = _ouch_replay(t)
    try:
        st = ouch_status(msgs, ref)
        if args.action == "status":
            if st is None:
                raise UsageError(f"user_ref_num {ref}: no such order in this session today")
            r.summary = st
            r.lines = [_status_line(st)]
            return r
        if st is None or st["state"] not in ("live",):
            what = "no such order in this session today" if st is None else f"the order is {st['state']}"
            r.refused = True
            r.lines = [f"not sent: user_ref_num {ref}: {what}"]
            r.summary = {"user_ref_num": ref, "sent": False, "status": st}
            return r
        cur = int(st["current_user_ref_num"])
        first = len(s.c.messages)
        if args.action == "cancel":
            s.send(L.CANCEL_ORDER, L.CancelOrder(cur, args.qty or 0))
            ans = s.wait(lambda m: getattr(m, "user_ref_num", None) == cur
                         and isinstance(m, (L.OrderCanceled, L.CancelReject)), "Cancel Order")
            r.refused = isinstance(ans, L.CancelReject)
            watch = {cur}
        else:
            price = t.price(st["symbol"], args.price)
            s.send(L.REPLACE_ORDER, L.ReplaceOrder(cur, nxt, args.qty, price, st["tif"].encode(),
                                                   st["display"].encode(), b"N", f"MW{nxt}".encode().ljust(14), 0))
            ans = s.wait(lambda m: (isinstance(m, L.OrderReplaced) and m.user_ref_num == nxt)
                         or (isinstance(m, L.OrderRejected) and m.user_ref_num == nxt)
                         or (isinstance(m, L.OrderCanceled) and m.user_ref_num == cur), "Replace Order")
            r.refused = isinstance(ans, L.OrderRejected)
            watch = {cur, nxt}
        s.settle()
        r.lines = [ouch_line(m) for _, m in s.c.messages[first:] if getattr(m, "user_ref_num", None) in watch]
        r.summary = {"user_ref_num": ref, "done": not r.refused}
        return r
    finally:
        s.close()


def _int_ref(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 1 << 32:
        raise UsageError(f"{text}: over OUCH an order is named by its UserRefNum, a number (see `order enter`)")
    return int(text)


def _status_line(st: dict[str, Any]) -> str:
    ref = st.get("user_ref_num", st.get("cl_ord_id"))
    if st["state"] == "rejected":
        return f"{ref}: rejected ({st.get('reason', '')})"
    return (f"{ref}: {st['state']}: {st['side']} {st['quantity']} {st['symbol']} @ {st['price']}, "
            f"executed {st['executed']}, open {st['open']}")


# ================================================================================================
# FIX 4.4
# ================================================================================================
class FixOrderSession:
    """One short FIX session for one command (initiator). Owned by the calling thread."""

    def __init__(self, t: Target) -> None:
        self.t = t
        self.msgs: list[FixMessage] = []
        self.seq = 1
        self.test_id = 0
        for _ in range(2):   # MsgSeqNum 1 first; "too low, expecting N": log on again with N
            self._connect()
            self._send("A", [(98, 0), (108, 30), (554, t.firm.fix.password)])
            ans = self.wait(lambda m: m.msg_type in ("A", "5"), "Logon")
            if ans.msg_type == "A":
                return
            text = ans.get(58) or ""
            self.sock.close()
            expecting = _expected_seq(text)
            if expecting is None:
                raise UsageError(f"FIX logon as {t.firm.fix.sender_comp_id} refused: {text or 'Logout'}")
            self.seq = expecting
        raise UsageError("FIX logon: the gateway keeps refusing the sequence number")

    def _connect(self) -> None:
        try:
            self.sock = socket.create_connection((self.t.host, self.t.fix_port), timeout=self.t.timeout)
        except OSError as e:
            raise UsageError(f"no FIX gateway answers at {self.t.host}:{self.t.fix_port}: "
                             f"{e.strerror or e}") from None
        self.parser = FixParser()
        self.seen = len(self.msgs)

    def _send(self, msg_type: str, fields: list[tuple[int, str | int]]) -> None:
        head: list[tuple[int, str | int]] = [(49, self.t.firm.fix.sender_comp_id), (56, self.t.fix_target),
                                             (34, self.seq), (52, _utc_now())]
        self.sock.sendall(encode(msg_type, head + fields))
        self.seq += 1

    def wait(self, pred: Callable[[FixMessage], bool], what: str, timeout: float | None = None) -> FixMessage:
        deadline = time.monotonic() + (self.t.timeout if timeout is None else timeout)
        i = self.seen
        while True:
            while i < len(self.msgs):
                m = self.msgs[i]
                i += 1
                if m.msg_type == "1":   # TestRequest: answered, as any FIX engine does
                    self._send("0", [(112, m.get(112) or "")] if m.get(112) else [])
                if pred(m):
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise UsageError(f"no answer to the {what} within {self.t.timeout:g} s")
            self.sock.settimeout(min(left, 0.5))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise UsageError(f"the FIX gateway closed the connection (waiting for the {what})")
            self.msgs += [m for m in self.parser.feed(data) if isinstance(m, FixMessage)]

    def sync(self) -> None:
        """A TestRequest's Heartbeat: everything the gateway sent before it has arrived."""
        self.test_id += 1
        tid = f"MW{self.test_id}"
        self._send("1", [(112, tid)])
        self.wait(lambda m: m.msg_type == "0" and m.get(112) == tid, "TestRequest")

    def settle(self) -> None:
        try:
            self.wait(lambda m: False, "settle", SETTLE_S)
        except UsageError:
            pass

    def close(self) -> None:
        try:
            self._send("5", [])
            self.wait(lambda m: m.msg_type == "5", "Logout", 2)
        except (UsageError, OSError):
            pass
        self.sock.close()


def _expected_seq(text: str) -> int | None:
    words = text.replace(",", " ").split()
    for i, w in enumerate(words[:-1]):
        if w == "expecting" and words[i + 1].isdigit():
            return int(words[i + 1])
    return None


def _utc_now() -> str:
    t = time.time_ns()
    return time.strftime("%Y%m%d-%H:%M:%S", time.gmtime(t // 10**9)) + ".%03d" % (t // 10**6 % 1000)


def fix_line(m: FixMessage) -> str:
    t = m.msg_type
    if t == "8":
        et = m.get(150) or ""
        what = {"0": "new", "4": "cancelled", "5": "replaced", "8": "rejected", "C": "expired", "F": "trade",
                "D": "restated", "L": "triggered"}.get(et, f"exec type {et}")
        line = (f"{what}: cl_ord_id {m.get(11)} order_id {m.get(37)}: {FIX_ORD_STATUS.get(m.get(39) or '', m.get(39))}"
                f", {m.get(54) == '1' and 'buy' or 'sell'} {m.get(38)} {m.get(55)}")
        if m.get(44):
            line += f" @ {m.get(44)}"
        if et == "F":
            line += f"; filled {m.get(32)} @ {m.get(31)}"
        line += f"; leaves {m.get(151)}, cum {m.get(14)}"
        if et == "8" or m.get(58):
            line += f" ({m.get(58) or ''})"
        return line
    if t == "9":
        return f"cancel rejected: cl_ord_id {m.get(11)} (orig {m.get(41)}): {m.get(58) or m.get(102)}"
    if t == "j":
        return f"business reject: {m.get(58)}"
    if t == "3":
        return f"session reject: {m.get(58)}"
    return repr(m)


def fix_status(msgs: list[FixMessage], ref: str) -> dict[str, Any] | None:
    """The state of the order whose chain holds ClOrdID ref, from the session's ExecutionReports."""
    reports = [m for m in msgs if m.msg_type == "8"]
    ids = {m.get(37) for m in reports if (m.get(11) == ref or m.get(41) == ref) and m.get(37) not in (None, "NONE")}
    mine = [m for m in reports if m.get(37) in ids] or [m for m in reports if m.get(11) == ref]
    if not mine:
        return None
    last = mine[-1]
    status = FIX_ORD_STATUS.get(last.get(39) or "", last.get(39) or "")
    return {"cl_ord_id": ref, "current_cl_ord_id": last.get(11), "order_id": last.get(37),
            "symbol": last.get(55), "side": "buy" if last.get(54) == "1" else "sell", "side_code": last.get(54),
            "quantity": int(last.get(38) or 0), "price": last.get(44) or "", "ord_type": last.get(40) or "2",
            "tif": last.get(59) or "0", "executed": int(last.get(14) or 0), "open": int(last.get(151) or 0),
            "state": "live" if last.get(39) in ("0", "1", "5") and int(last.get(151) or 0) else status}


def _fix_history(s: FixOrderSession) -> list[FixMessage]:
    """The session's messages from the start of the day: a ResendRequest, then a TestRequest."""
    first = len(s.msgs)
    s._send("2", [(7, 1), (16, 0)])
    s.sync()
    return s.msgs[first:]


def fix_command(args: argparse.Namespace, t: Target) -> Result:
    r = Result()
    s = FixOrderSession(t)
    try:
        if args.action == "enter":
            symbol = args.symbol
            cl = args.cl_ord_id or f"MW{time.time_ns():x}"
            fields: list[tuple[int, str | int]] = [(11, cl), (55, symbol), (54, SIDES[args.side][1]),
                                                   (60, _utc_now()), (38, args.qty), (40, FIX_ORD_TYPE[args.type])]
            if args.type in ("limit", "stop-limit"):
                fields.append((44, price_to_text(t.price(symbol, args.price))))
            if args.type in ("stop", "stop-limit"):
                if args.stop is None:
                    raise UsageError(f"--type {args.type} needs --stop PRICE")
                fields.append((99, price_to_text(t.price(symbol, args.stop))))
            fields.append((59, FIX_TIF[args.tif]))
            first = len(s.msgs)
            s._send("D", fields)
            ans = s.wait(lambda m: (m.msg_type == "8" and m.get(11) == cl) or m.msg_type in ("3", "j"),
                         "NewOrderSingle")
            s.settle()
            r.refused = ans.msg_type != "8" or ans.get(150) == "8"
            r.lines = [fix_line(m) for m in s.msgs[first:] if m.get(11) == cl or m.msg_type in ("3", "j")]
            r.summary = {"cl_ord_id": cl, "accepted": not r.refused}
            return r
        ref = args.ref
        st = fix_status(_fix_history(s), ref)
        if args.action == "status":
            if st is None:
                raise UsageError(f"cl_ord_id {ref}: no such order in this FIX session today")
            r.summary = st
            r.lines = [_status_line(st)]
            return r
        if st is None or st["state"] != "live":
            what = "no such order in this FIX session today" if st is None else f"the order is {st['state']}"
            r.refused = True
            r.lines = [f"not sent: cl_ord_id {ref}: {what}"]
            r.summary = {"cl_ord_id": ref, "sent": False, "status": st}
            return r
        cl = f"MW{time.time_ns():x}"
        common: list[tuple[int, str | int]] = [(41, st["current_cl_ord_id"]), (11, cl), (55, st["symbol"]),
                                               (54, st["side_code"]), (60, _utc_now())]
        first = len(s.msgs)
        if args.action == "cancel":
            if args.qty:
                raise UsageError("--qty: over FIX reduce an order with `order replace REF QTY PRICE`")
            s._send("F", common + [(38, st["quantity"])])
            what = "OrderCancelRequest"
        else:
            price = price_to_text(t.price(st["symbol"], args.price))
            s._send("G", common + [(38, args.qty), (40, st["ord_type"]), (44, price), (59, st["tif"])])
            what = "OrderCancelReplaceRequest"
        ans = s.wait(lambda m: m.get(11) == cl and m.msg_type in ("8", "9") or m.msg_type in ("3", "j"), what)
        s.settle()
        r.refused = ans.msg_type != "8" or ans.get(150) == "8"
        r.lines = [fix_line(m) for m in s.msgs[first:] if m.get(11) == cl or m.msg_type in ("3", "j")]
        r.summary = {"cl_ord_id": ref, "new_cl_ord_id": cl, "done": not r.refused}
        return r
    finally:
        s.close()


# ================================================================================================
# the command line
# ================================================================================================
def cmd_order(args: argparse.Namespace) -> int:
    qty = getattr(args, "qty", None)
    if qty is not None and (qty < 0 or (qty == 0 and args.action != "cancel")):
        raise UsageError(f"quantity {qty}: a positive number of shares")
    if args.action == "enter" and args.price is None and args.type in ("limit", "stop-limit"):
        raise UsageError(f"a {args.type} order needs a PRICE")
    if args.timeout <= 0:
        raise UsageError(f"--timeout {args.timeout}: a positive number of seconds")
    config = load(args.config) if args.config else default()
    t = Target.of(config, args.firm, args.timeout)
    r = (ouch_command if args.via == "ouch" else fix_command)(args, t)
    who = f"{args.via.upper()} {t.firm.name}"
    if args.json:
        print(jsonio.dumps({"via": args.via, "firm": t.firm.name, "action": args.action, "refused": r.refused,
                            **r.summary, "lines": r.lines}))
    else:
        for line in r.lines:
            print(f"{who}: {line}")
    return 1 if r.refused else 0


def register(sub: Any) -> None:
    p = sub.add_parser("order", help="enter, cancel or replace an order, or show its status (OUCH or FIX)")
    osub = p.add_subparsers(dest="order", metavar="ACTION")
    osub.required = True

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", default=None, help="the appliance's config (default: the built-in default config)")
        q.add_argument("--firm", default=None, help="trade as this firm (default: the config's first)")
        q.add_argument("--via", default="ouch", choices=("ouch", "fix"), help="protocol (default ouch)")
        q.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer (default 10)")
        q.add_argument("--json", action="store_true", help="print one JSON object instead")

    e = osub.add_parser("enter", help="enter an order; prints its UserRefNum (OUCH) or ClOrdID (FIX)")
    e.add_argument("symbol")
    e.add_argument("side", choices=tuple(SIDES))
    e.add_argument("qty", type=int)
    e.add_argument("price", nargs="?", default=None, help="limit price, decimal text (not for market/stop)")
    e.add_argument("--tif", default="day", choices=tuple(FIX_TIF), help="time in force (default day)")
    e.add_argument("--type", default="limit", choices=tuple(FIX_ORD_TYPE), help="order type (default limit)")
    e.add_argument("--stop", default=None, metavar="PRICE", help="stop price (stop, stop-limit; FIX)")
    e.add_argument("--cl-ord-id", default=None, help="client order id (default: generated)")
    common(e)
    e.set_defaults(func=cmd_order, action="enter")
    c = osub.add_parser("cancel", help="cancel an order (or, over OUCH, reduce it with --qty)")
    c.add_argument("ref", help="UserRefNum (OUCH) or ClOrdID (FIX)")
    c.add_argument("--qty", type=int, default=None, help="OUCH: reduce the order to this size instead")
    common(c)
    c.set_defaults(func=cmd_order, action="cancel")
    r = osub.add_parser("replace", help="replace an order's quantity and price")
    r.add_argument("ref", help="UserRefNum (OUCH) or ClOrdID (FIX)")
    r.add_argument("qty", type=int, help="new total quantity (executions included)")
    r.add_argument("price", help="new limit price")
    common(r)
    r.set_defaults(func=cmd_order, action="replace")
    s = osub.add_parser("status", help="an order's state, from the session's record of the day")
    s.add_argument("ref", help="UserRefNum (OUCH) or ClOrdID (FIX)")
    common(s)
    s.set_defaults(func=cmd_order, action="status")
