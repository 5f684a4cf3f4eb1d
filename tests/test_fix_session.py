"""FixSession driven by bytes that simplefix builds (acting as the client), a real Engine on the
commands it emits, and every byte it sends read back by simplefix (BodyLength and CheckSum checked by
re-encoding each message with simplefix and comparing bytes).
"""
from __future__ import annotations

import json
from typing import Any

import pytest
import simplefix

from appliance import reasons as R
from appliance.catalogue import Close, Command, MassCancel, NewOrder, ReplaceOrder
from appliance.gateway import events as E
from appliance.gateway import fix
from appliance.gateway.fixcodec import FixFramingError, encode
from appliance.matching.engine import Engine
from appliance.model import STP_CO, Instrument

SEC = 1_000_000_000
T0 = 1_706_709_909_123_000_000          # 2024-01-31 14:05:09.123 UTC
INSTRUMENTS = [Instrument("AAPL", 1, tick=100), Instrument("MSFT", 2, tick=1)]


def config(sid: int = 1, comp: str = "CLIENT", firm: int = 7, **kw: Any) -> fix.FixSessionConfig:
    return fix.FixSessionConfig(sid, "VENUE", comp, firm, password="pw", **kw)


def verify(data: bytes) -> list[simplefix.FixMessage]:
    """Parse our bytes with simplefix; each message re-encoded by simplefix must equal ours."""
    parser = simplefix.FixParser()
    parser.append_buffer(data)
    out: list[simplefix.FixMessage] = []
    again = b""
    while True:
        m = parser.get_message()
        if m is None:
            break
        copy = simplefix.FixMessage()
        for tag, value in m.pairs:
            if int(tag) not in (9, 10):
                copy.append_pair(tag, value, header=int(tag) in (8, 35))
        again += bytes(copy.encode())
        out.append(m)
    assert again == data, "BodyLength or CheckSum differ from simplefix's"
    return out


def g(m: simplefix.FixMessage, tag: int) -> str | None:
    v = m.get(tag)
    return v.decode() if v is not None else None


def text(m: simplefix.FixMessage, tag: int) -> str:
    """A field the message must carry."""
    v = g(m, tag)
    assert v is not None, f"tag {tag} missing"
    return v


class Client:
    """The counterparty, built on simplefix."""

    def __init__(self, comp: str = "CLIENT") -> None:
        self.comp = comp
        self.seq = 1

    def msg(self, msg_type: str, *pairs: tuple[int, Any], seq: int | None = None,
            poss_dup: bool = False) -> bytes:
        m = simplefix.FixMessage()
        m.append_pair(8, "FIX.4.4", header=True)
        m.append_pair(35, msg_type, header=True)
        m.append_pair(49, self.comp, header=True)
        m.append_pair(56, "VENUE", header=True)
        m.append_pair(34, self.seq if seq is None else seq, header=True)
        if poss_dup:
            m.append_pair(43, "Y", header=True)
            m.append_pair(122, "20240131-14:00:00.000", header=True)
        m.append_pair(52, "20240131-14:05:09.123", header=True)
        for tag, value in pairs:
            m.append_pair(tag, value)
        if seq is None:
            self.seq += 1
        return bytes(m.encode())

    def logon(self, password: str = "pw", hb: int = 30, reset: bool = False) -> bytes:
        pairs: list[tuple[int, Any]] = [(98, 0), (108, hb), (554, password)]
        if reset:
            pairs.append((141, "Y"))
        return self.msg("A", *pairs)

    def order(self, cl: str, side: str = "1", qty: int = 100, ord_type: str = "2", price: str | None = "150.00",
              stop: str | None = None, tif: str | None = "0", symbol: str = "AAPL", **extra: str) -> bytes:
        pairs: list[tuple[int, Any]] = [(11, cl), (55, symbol), (54, side), (60, "20240131-14:05:09.123"),
                                        (38, qty), (40, ord_type)]
        if price is not None:
            pairs.append((44, price))
        if stop is not None:
            pairs.append((99, stop))
        if tif is not None:
            pairs.append((59, tif))
        pairs += [(int(k[1:]), v) for k, v in extra.items()]
        return self.msg("D", *pairs)


class Venue:
    def __init__(self) -> None:
        self.engine = Engine(INSTRUMENTS)
        self.sessions: list[fix.FixSession] = []
        self.ts = T0

    def session(self, sid: int = 1, comp: str = "CLIENT", firm: int = 7,
                state: fix.FixSessionState | None = None, **kw: Any) -> fix.FixSession:
        s = fix.FixSession(config(sid, comp, firm, **kw), state, INSTRUMENTS)
        self.sessions.append(s)
        return s

    def apply(self, cmds: list[Command]) -> None:
        for cmd in cmds:
            self.ts += 1_000_000
            out: list[Any] = []
            self.engine.apply(cmd, out)
            self.engine.check_invariants()
            for s in self.sessions:
                s.on_events(self.ts, out, self.ts)

    def send(self, s: fix.FixSession, data: bytes, now: int | None = None) -> list[simplefix.FixMessage]:
        s.receive_data(data, self.ts if now is None else now)
        cmds = s.take_commands()
        while cmds:
            self.apply(cmds)
            cmds = [c for x in self.sessions for c in x.take_commands()]
        return verify(s.data_to_send())

    def connect(self, s: fix.FixSession, client: Client, **kw: Any) -> list[simplefix.FixMessage]:
        s.connection_made(self.ts)
        return self.send(s, client.logon(**kw))


@pytest.fixture
def venue() -> Venue:
    return Venue()


@pytest.fixture
def client() -> Client:
    return Client()


@pytest.fixture
def session(venue: Venue, client: Client) -> fix.FixSession:
    s = venue.session()
    (logon,) = venue.connect(s, client)
    assert (g(logon, 35), g(logon, 34), g(logon, 98), g(logon, 108), g(logon, 49), g(logon, 56)) == (
        "A", "1", "0", "30", "VENUE", "CLIENT")
    assert s.logged_on and s.take_events() == [E.SessionEvent(E.LOGGED_IN, "CLIENT")]
    return s


def types(msgs: list[simplefix.FixMessage]) -> list[tuple[str | None, ...]]:
    return [(g(m, 35), g(m, 150), g(m, 39)) for m in msgs]


# --- logon ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, text", [
    (dict(hb=0), "HeartBtInt"),
])
def test_logon_refused(venue: Venue, client: Client, kw: dict[str, Any], text: str) -> None:
    s = venue.session()
    (out,) = venue.connect(s, client, **kw)
    assert g(out, 35) == "5" and text in (g(out, 58) or "")
    assert s.should_close and s.take_events()[-1].kind == E.LOGIN_REJECTED


def test_logon_with_a_wrong_password_changes_nothing_and_gets_no_answer(venue: Venue, client: Client) -> None:
    s = venue.session()
    before = s.state.to_json_obj()
    assert venue.connect(s, client, password="nope") == []
    assert s.should_close and s.take_events()[-1].kind == E.LOGIN_REJECTED
    assert s.state.to_json_obj() == before and not s.state.dirty
    identity = fix.logon_identity(client.logon(password="nope"))
    assert identity is not None and identity[3] == "nope"


def test_logon_wrong_comp_id(venue: Venue) -> None:
    s = venue.session()
    (out,) = venue.connect(s, Client("SOMEONE"))
    assert g(out, 35) == "5" and s.should_close


def test_first_message_must_be_logon(venue: Venue, client: Client) -> None:
    s = venue.session()
    s.connection_made(T0)
    assert venue.send(s, client.order("X1")) == []
    assert s.should_close


def test_garbage_before_logon_closes_silently(venue: Venue) -> None:
    s = venue.session()
    s.connection_made(T0)
    assert venue.send(s, b"GET / HTTP/1.1\r\n\r\n") == []
    assert s.should_close and s.take_events()[-1].kind == E.PROTOCOL_ERROR


def test_logon_comp_ids_helper(client: Client) -> None:
    logon = client.logon()
    assert fix.logon_comp_ids(logon[:20]) is None
    assert fix.logon_comp_ids(logon) == ("CLIENT", "VENUE")
    with pytest.raises(FixFramingError):
        fix.logon_comp_ids(b"garbage garbage garbage")
    with pytest.raises(FixFramingError):
        fix.logon_comp_ids(Client().order("X"))


def test_logon_timeout(venue: Venue) -> None:
    s = venue.session()
    s.connection_made(T0)
    s.poll(T0 + 9 * SEC)
    assert not s.should_close
    s.poll(T0 + 10 * SEC)
    assert s.should_close


# --- orders of every type and time in force --------------------------------------------------------

CASES = [
    # (OrdType, TIF, Price, StopPx, expected (150, 39) after the ack)
    ("1", "0", None, None, [("F", "2")]),
    ("1", "3", None, None, [("F", "2")]),
    ("1", "4", None, None, [("F", "2")]),
    ("2", "0", "150.00", None, [("F", "2")]),
    ("2", "1", "150.00", None, [("F", "2")]),
    ("2", "3", "150.00", None, [("F", "2")]),
    ("2", "4", "150.00", None, [("F", "2")]),
    ("2", "0", "149.99", None, []),                       # rests
    ("3", "0", None, "151.00", []),                       # pending stop
    ("3", "1", None, "151.00", []),
    ("4", "0", "151.00", "151.00", []),
    ("4", "4", "151.00", "151.00", []),
]


@pytest.mark.parametrize("ord_type, tif, price, stop, after", CASES)
def test_new_order_every_type_and_tif(venue: Venue, client: Client, session: fix.FixSession, ord_type: str,
                                      tif: str, price: str | None, stop: str | None,
                                      after: list[tuple[str, str]]) -> None:
    other = venue.session(2, "OTHER", 8)
    oc = Client("OTHER")
    venue.connect(other, oc)
    venue.send(other, oc.order("S1", side="2", qty=200, price="150.00"))
    session.receive_data(client.order("B1", qty=50, ord_type=ord_type, price=price, stop=stop, tif=tif), venue.ts)
    (cmd,) = session.take_commands()
    assert isinstance(cmd, NewOrder)
    assert (cmd.ord_type, cmd.tif, cmd.qty, cmd.firm, cmd.session, cmd.cl_ord_id) == (
        int(ord_type), int(tif), 50, 7, 1, "B1")
    assert cmd.price == (0 if price is None else int(price.replace(".", "")) * 100)
    assert cmd.stop_price == (0 if stop is None else int(stop.replace(".", "")) * 100)
    venue.apply([cmd])
    msgs = verify(session.data_to_send())
    assert [(g(m, 150), g(m, 39)) for m in msgs] == [("0", "0")] + after
    ack = msgs[0]
    assert (g(ack, 37), g(ack, 11), g(ack, 55), g(ack, 54), g(ack, 38), g(ack, 40), g(ack, 59),
            g(ack, 151), g(ack, 14), g(ack, 6)) == ("2", "B1", "AAPL", "1", "50", ord_type, tif, "50", "0", "0")
    if after:
        fill = msgs[1]
        assert (g(fill, 32), g(fill, 31), g(fill, 151), g(fill, 14), g(fill, 6), g(fill, 17)) == (
            "50", "150.0000", "0", "50", "150", "T1B")


def test_market_and_ioc_without_liquidity(venue: Venue, client: Client, session: fix.FixSession) -> None:
    msgs = venue.send(session, client.order("M1", ord_type="1", price=None))
    assert types(msgs) == [("8", "0", "0"), ("8", "4", "4")]
    assert "no more liquidity" in (g(msgs[1], 58) or "")
    msgs = venue.send(session, client.order("I1", tif="3", price="100.00"))
    assert types(msgs) == [("8", "0", "0"), ("8", "4", "4")]


def test_stop_triggers(venue: Venue, client: Client, session: fix.FixSession) -> None:
    venue.send(session, client.order("STP", qty=50, ord_type="3", price=None, stop="150.00"))
    other = venue.session(2, "OTHER", 8)
    oc = Client("OTHER")
    venue.connect(other, oc)
    venue.send(other, oc.order("S1", side="2", qty=100, price="150.00"))
    third = venue.session(3, "THIRD", 9)
    tc = Client("THIRD")
    venue.connect(third, tc)
    session.data_to_send()
    venue.send(third, tc.order("B1", side="1", qty=10, price="150.00"))    # trades at 150: triggers
    msgs = verify(session.data_to_send())
    # FIX 4.4 has no ExecType L (triggered): the trigger is a restatement by the market (378=8)
    assert types(msgs) == [("8", "D", "0"), ("8", "F", "2")]
    assert (g(msgs[0], 378), g(msgs[0], 58), g(msgs[0], 38), g(msgs[0], 151)) == (
        "8", "stop triggered at 150.0000", "50", "50")
    assert (g(msgs[1], 32), g(msgs[1], 99), g(msgs[1], 40)) == ("50", "150.0000", "3")


def test_avg_px_integer_arithmetic(venue: Venue, client: Client, session: fix.FixSession) -> None:
    other = venue.session(2, "OTHER", 8)
    oc = Client("OTHER")
    venue.connect(other, oc)
    venue.send(other, oc.order("S1", side="2", qty=10, price="150.00"))
    venue.send(other, oc.order("S2", side="2", qty=20, price="150.01"))
    msgs = venue.send(session, client.order("B", qty=30, price="150.01"))
    assert types(msgs) == [("8", "0", "0"), ("8", "F", "1"), ("8", "F", "2")]
    assert [g(m, 6) for m in msgs] == ["0", "150", "150.00666667"]
    assert fix.avg_px_text(3 * 1_500_050, 3) == "150.005"


@pytest.mark.parametrize("kw, ord_rej, text", [
    (dict(price="150.00001"), "99", "more than 4 decimals"),
    (dict(price="150.001"), "99", "not a multiple of the tick"),
    (dict(symbol="ZZZZ"), "1", "unknown symbol"),
    (dict(side="3"), "11", "Side"),
    (dict(ord_type="P"), "11", "OrdType"),
    (dict(tif="6"), "11", "TimeInForce"),
    (dict(qty=0), "13", "quantity"),
    (dict(t7928="XX"), "11", "SelfTradePrevention"),
    (dict(t110="100"), "11", "MinQty"),
    (dict(ord_type="1"), "11", "unknown order type"),          # a market order with a price
])
def test_new_order_rejects(venue: Venue, client: Client, session: fix.FixSession, kw: dict[str, Any],
                           ord_rej: str, text: str) -> None:
    (er,) = venue.send(session, client.order("R1", **kw))
    assert (g(er, 35), g(er, 150), g(er, 39), g(er, 103), g(er, 37), g(er, 11)) == ("8", "8", "8", ord_rej, "NONE", "R1")
    assert text in (g(er, 58) or "")
    assert venue.engine.resting_count() == 0


def test_duplicate_cl_ord_id(venue: Venue, client: Client, session: fix.FixSession) -> None:
    venue.send(session, client.order("DUP", price="100.00"))
    (er,) = venue.send(session, client.order("DUP", price="100.00"))
    assert (g(er, 150), g(er, 103)) == ("8", "6")
    assert venue.engine.resting_count() == 1


def test_stp_tag_and_account(venue: Venue, client: Client, session: fix.FixSession) -> None:
    session.receive_data(client.order("A1", t7928="CO", t1="ACC-9"), T0)
    (cmd,) = session.take_commands()
    assert isinstance(cmd, NewOrder) and (cmd.stp, cmd.account) == (STP_CO, "ACC-9")


def test_malformed_fields_get_session_reject(venue: Venue, client: Client, session: fix.FixSession) -> None:
    (rej,) = venue.send(session, client.msg("D", (11, "X"), (55, "AAPL"), (38, 5), (40, "2")))  # no 54
    assert (g(rej, 35), g(rej, 373), g(rej, 371), g(rej, 372), g(rej, 45)) == ("3", "1", "54", "D", "2")
    (rej,) = venue.send(session, client.order("Y", price="abc"))
    assert (g(rej, 35), g(rej, 373), g(rej, 371)) == ("3", "6", "44")
    (rej,) = venue.send(session, client.order("Z", qty="ten"))  # type: ignore[arg-type]
    assert (g(rej, 35), g(rej, 373), g(rej, 371)) == ("3", "6", "38")
    (er,) = venue.send(session, client.order("OK", price="100.00"))
    assert g(er, 150) == "0" and g(er, 34) == "5"


# --- cancel, replace, mass cancel ----------------------------------------------------------------

def test_cancel(venue: Venue, client: Client, session: fix.FixSession) -> None:
    venue.send(session, client.order("O1", price="100.00"))
    (er,) = venue.send(session, client.msg("F", (41, "O1"), (11, "C1"), (55, "AAPL"), (54, "1")))
    assert (g(er, 150), g(er, 39), g(er, 11), g(er, 41), g(er, 151), g(er, 14)) == ("4", "4", "C1", "O1", "0", "0")
    (ocr,) = venue.send(session, client.msg("F", (41, "O1"), (11, "C2"), (55, "AAPL"), (54, "1")))
    assert (g(ocr, 35), g(ocr, 102), g(ocr, 434), g(ocr, 39), g(ocr, 37)) == (
        "9", "0", "1", "4", g(er, 37))                                                 # too late
    (ocr,) = venue.send(session, client.msg("F", (41, "NOPE"), (11, "C3"), (55, "AAPL"), (54, "1")))
    assert (g(ocr, 35), g(ocr, 102), g(ocr, 37)) == ("9", "1", "NONE")                # unknown order
    (ocr,) = venue.send(session, client.msg("F", (41, "O1"), (11, "C3"), (55, "AAPL"), (54, "1")))
    assert (g(ocr, 35), g(ocr, 102)) == ("9", "6")                                    # duplicate ClOrdID


def test_cancel_overtaken_by_fill(venue: Venue, client: Client, session: fix.FixSession) -> None:
    venue.send(session, client.order("O1", side="2", price="150.00"))
    session.receive_data(client.msg("F", (41, "O1"), (11, "C1"), (55, "AAPL"), (54, "2")), venue.ts)
    cancel = session.take_commands()
    other = venue.session(2, "OTHER", 8)
    oc = Client("OTHER")
    venue.connect(other, oc)
    venue.send(other, oc.order("B", qty=100, price="150.00"))
    venue.apply(cancel)
    msgs = verify(session.data_to_send())
    assert types(msgs) == [("8", "F", "2"), ("9", None, "2")]
    assert (g(msgs[1], 102), g(msgs[1], 11), g(msgs[1], 41), g(msgs[1], 37)) == ("0", "C1", "O1", g(msgs[0], 37))
    assert "filled" in text(msgs[1], 58)
    assert not session.state.orders


def test_too_late_is_not_unknown(venue: Venue, client: Client, session: fix.FixSession) -> None:
    """A cancel or replace of a filled, cancelled or expired order: OrderCancelReject with the real
    OrderID, the order's OrdStatus and CxlRejReason 0; an id never used: 37=NONE, 102=1."""
    other = venue.session(2, "OTHER", 8)
    oc = Client("OTHER")
    venue.connect(other, oc)
    (acc,) = venue.send(session, client.order("F1", side="2", qty=100, price="150.00"))
    venue.send(other, oc.order("B", qty=100, price="150.00"))
    session.data_to_send()
    (acc2,) = venue.send(session, client.order("C1", qty=100, price="100.00"))
    venue.send(session, client.msg("F", (41, "C1"), (11, "X1"), (55, "AAPL"), (54, "1")))
    (acc3,) = venue.send(session, client.order("E1", qty=100, price="100.00", symbol="MSFT"))
    venue.apply([Close(2)])
    (exp,) = verify(session.data_to_send())
    assert (g(exp, 150), g(exp, 39), g(exp, 38), g(exp, 151)) == ("C", "C", "100", "0")
    for n, (orig, status, ref) in enumerate((("F1", "2", g(acc, 37)), ("C1", "4", g(acc2, 37)),
                                             ("X1", "4", g(acc2, 37)), ("E1", "C", g(acc3, 37)))):
        (ocr,) = venue.send(session, client.msg("F", (41, orig), (11, f"K{n}"), (55, "AAPL"), (54, "1")))
        assert (g(ocr, 35), g(ocr, 37), g(ocr, 39), g(ocr, 102), g(ocr, 434)) == ("9", ref, status, "0", "1"), orig
        (ocr,) = venue.send(session, client.msg("G", (41, orig), (11, f"R{n}"), (55, "AAPL"), (54, "1"), (38, 50),
                                                (40, "2"), (44, "100.00")))
        assert (g(ocr, 35), g(ocr, 37), g(ocr, 39), g(ocr, 102), g(ocr, 434)) == ("9", ref, status, "0", "2"), orig
        assert text(ocr, 58).startswith("too late")
    (ocr,) = venue.send(session, client.msg("F", (41, "NEVER"), (11, "K9"), (55, "AAPL"), (54, "1")))
    assert (g(ocr, 37), g(ocr, 39), g(ocr, 102)) == ("NONE", "8", "1")


def test_engine_too_late_reasons_map_to_the_order_status(venue: Venue, client: Client,
                                                        session: fix.FixSession) -> None:
    """The engine's TOO_LATE_* answer gives OrdStatus even when the session's view lagged."""
    venue.send(session, client.order("O1", qty=100, price="100.00"))
    session.receive_data(client.msg("F", (41, "O1"), (11, "C1"), (55, "AAPL"), (54, "1")), venue.ts)
    first = session.take_commands()
    session.receive_data(client.msg("G", (41, "O1"), (11, "O2"), (55, "AAPL"), (54, "1"), (38, 50), (40, "2"),
                                    (44, "100.00")), venue.ts)
    second = session.take_commands()
    venue.apply(first + second)
    msgs = verify(session.data_to_send())
    assert [(g(m, 35), g(m, 39), g(m, 102)) for m in msgs] == [("8", "4", None), ("9", "4", "0")]
    assert text(msgs[1], 58).startswith(f"{R.TOO_LATE_CANCELLED} too late")


def test_cancel_keeps_order_qty(venue: Venue, client: Client, session: fix.FixSession) -> None:
    other = venue.session(2, "OTHER", 8)
    oc = Client("OTHER")
    venue.connect(other, oc)
    venue.send(session, client.order("O1", side="2", qty=300, price="150.00"))
    venue.send(session, client.order("O2", side="2", qty=200, price="151.00"))
    venue.send(other, oc.order("B", qty=100, price="150.00"))
    session.data_to_send()
    (er,) = venue.send(session, client.msg("F", (41, "O1"), (11, "C1"), (55, "AAPL"), (54, "2")))
    assert (g(er, 150), g(er, 39), g(er, 38), g(er, 151), g(er, 14)) == ("4", "4", "300", "0", "100")
    msgs = venue.send(session, client.msg("q", (11, "MC"), (530, "7")))
    assert [(g(m, 150), g(m, 38), g(m, 151), g(m, 14)) for m in msgs[:1]] == [("4", "200", "0", "0")]


def test_replace(venue: Venue, client: Client, session: fix.FixSession) -> None:
    venue.send(session, client.order("O1", qty=100, price="100.00"))
    g_msg = client.msg("G", (41, "O1"), (11, "O2"), (55, "AAPL"), (54, "1"), (38, 80), (40, "2"), (44, "101.00"),
                       (59, "0"))
    session.receive_data(g_msg, venue.ts)
    (cmd,) = session.take_commands()
    assert isinstance(cmd, ReplaceOrder) and (cmd.qty, cmd.price, cmd.cl_ord_id) == (80, 1_010_000, "O2")
    venue.apply([cmd])
    (er,) = verify(session.data_to_send())
    assert (g(er, 150), g(er, 39), g(er, 11), g(er, 41), g(er, 38), g(er, 44), g(er, 151), g(er, 37)) == (
        "5", "0", "O2", "O1", "80", "101.0000", "80", "2")
    (er,) = venue.send(session, client.msg("F", (41, "O2"), (11, "C"), (55, "AAPL"), (54, "1")))
    assert (g(er, 150), g(er, 41), g(er, 151)) == ("4", "O2", "0")


def test_replace_refusals(venue: Venue, client: Client, session: fix.FixSession) -> None:
    venue.send(session, client.order("O1", qty=100, price="100.00"))
    (ocr,) = venue.send(session, client.msg("G", (41, "O1"), (11, "O2"), (55, "AAPL"), (54, "2"), (38, 80),
                                            (40, "2"), (44, "100.00")))
    assert (g(ocr, 35), g(ocr, 434), g(ocr, 102)) == ("9", "2", "2")     # a change of side
    (ocr,) = venue.send(session, client.msg("G", (41, "O1"), (11, "O3"), (55, "AAPL"), (54, "1"), (38, 80),
                                            (40, "2"), (44, "100.001")))
    assert (g(ocr, 35), g(ocr, 434)) == ("9", "2") and "tick" in (g(ocr, 58) or "")
    (ocr,) = venue.send(session, client.msg("G", (41, "O1"), (11, "O4"), (55, "AAPL"), (54, "1"), (38, 0),
                                            (40, "2"), (44, "100.00")))
    assert (g(ocr, 35), g(ocr, 434), g(ocr, 39)) == ("9", "2", "0")     # the engine: invalid quantity
    assert venue.engine.orders[(1 << 32) | 1].qty == 100


def test_mass_cancel(venue: Venue, client: Client, session: fix.FixSession) -> None:
    for cl, sym in (("A1", "AAPL"), ("A2", "AAPL"), ("M1", "MSFT")):
        venue.send(session, client.order(cl, symbol=sym, price="100.00"))
    msgs = venue.send(session, client.msg("q", (11, "MC1"), (530, "1"), (55, "AAPL")))
    assert types(msgs) == [("8", "4", "4"), ("8", "4", "4"), ("r", None, None)]
    assert [(g(m, 11), g(m, 41)) for m in msgs[:2]] == [("MC1", "A1"), ("MC1", "A2")]
    assert (g(msgs[2], 11), g(msgs[2], 530), g(msgs[2], 531), g(msgs[2], 533)) == ("MC1", "1", "1", "2")
    msgs = venue.send(session, client.msg("q", (11, "MC2"), (530, "7")))
    assert types(msgs) == [("8", "4", "4"), ("r", None, None)] and g(msgs[1], 533) == "1"
    (r,) = venue.send(session, client.msg("q", (11, "MC3"), (530, "3")))
    assert (g(r, 35), g(r, 531), g(r, 532)) == ("r", "0", "0")
    (r,) = venue.send(session, client.msg("q", (11, "MC4"), (530, "1"), (55, "ZZZ")))
    assert (g(r, 531), g(r, 532)) == ("0", "1")


def test_events_of_other_sessions_ignored(venue: Venue, client: Client, session: fix.FixSession) -> None:
    other = venue.session(2, "OTHER", 8)
    oc = Client("OTHER")
    venue.connect(other, oc)
    venue.send(other, oc.order("X", price="100.00"))
    assert session.data_to_send() == b""


def test_self_trade_decrement_is_restated(venue: Venue, client: Client) -> None:
    s = venue.session()
    venue.connect(s, client)
    venue.send(s, client.order("S", side="2", qty=100, price="150.00"))
    msgs = venue.send(s, client.order("B", side="1", qty=40, price="150.00", t7928="DC"))
    assert [(g(m, 11), g(m, 150), g(m, 39), g(m, 38), g(m, 151)) for m in msgs] == [
        ("B", "0", "0", "40", "40"), ("S", "D", "0", "60", "60"), ("B", "4", "4", "40", "0")]


# --- session layer -------------------------------------------------------------------------------

def test_test_request_and_heartbeat(venue: Venue, client: Client, session: fix.FixSession) -> None:
    (hb,) = venue.send(session, client.msg("1", (112, "PING")))
    assert (g(hb, 35), g(hb, 112)) == ("0", "PING")
    (rej,) = venue.send(session, client.msg("1"))
    assert (g(rej, 35), g(rej, 373), g(rej, 371)) == ("3", "1", "112")


def test_timers(venue: Venue, client: Client, session: fix.FixSession) -> None:
    t = venue.ts
    session.poll(t + 29 * SEC)
    assert session.data_to_send() == b""
    session.poll(t + 30 * SEC)
    (hb,) = verify(session.data_to_send())
    assert g(hb, 35) == "0"
    session.poll(t + 36 * SEC)                                  # HeartBtInt + 20% of silence
    (tr,) = verify(session.data_to_send())
    assert g(tr, 35) == "1" and g(tr, 112)
    session.receive_data(client.msg("0", (112, g(tr, 112))), t + 37 * SEC)
    session.poll(t + 70 * SEC)
    assert not session.should_close
    session.data_to_send()
    session.poll(t + 80 * SEC)                                  # silent again: TestRequest ...
    assert g(verify(session.data_to_send())[0], 35) == "1"
    session.poll(t + 110 * SEC)                                 # ... unanswered: Logout, close
    (lo,) = verify(session.data_to_send())
    assert g(lo, 35) == "5" and session.should_close and session.take_events()[-1].kind == E.TIMED_OUT


def test_sequence_too_high_asks_resend(venue: Venue, client: Client, session: fix.FixSession) -> None:
    client.seq = 5                                              # 2, 3, 4 lost
    (rr,) = venue.send(session, client.order("LATE", price="100.00"))
    assert (g(rr, 35), g(rr, 7), g(rr, 16)) == ("2", "2", "0")
    assert session.take_commands() == [] and venue.engine.resting_count() == 0
    assert venue.send(session, client.order("LATER", price="100.00")) == []   # no second request
    gap = client.msg("4", (123, "Y"), (36, 5), seq=2, poss_dup=True)
    assert venue.send(session, gap) == []
    msgs = venue.send(session, client.msg("D", (11, "LATE"), (55, "AAPL"), (54, "1"), (38, 1), (40, "2"),
                                          (44, "100.00"), seq=5, poss_dup=True))
    assert types(msgs) == [("8", "0", "0")]
    msgs = venue.send(session, client.msg("D", (11, "LATER"), (55, "AAPL"), (54, "1"), (38, 1), (40, "2"),
                                          (44, "100.00"), seq=6, poss_dup=True))
    assert types(msgs) == [("8", "0", "0")]
    client.seq = 7
    (hb,) = venue.send(session, client.msg("1", (112, "X")))
    assert g(hb, 35) == "0"


def test_sequence_too_low(venue: Venue, client: Client, session: fix.FixSession) -> None:
    venue.send(session, client.msg("0"))
    assert venue.send(session, client.msg("0", seq=2, poss_dup=True)) == []   # a duplicate: ignored
    (lo,) = venue.send(session, client.msg("0", seq=2))
    assert g(lo, 35) == "5" and "MsgSeqNum too low, expecting 3 but received 2" in (g(lo, 58) or "")
    assert session.should_close


def test_resend_request_and_gap_fill(venue: Venue, client: Client, session: fix.FixSession) -> None:
    venue.send(session, client.order("O1", price="100.00"))      # our 2: ER
    venue.send(session, client.msg("1", (112, "T")))             # our 3: Heartbeat
    venue.send(session, client.order("O2", price="100.00"))      # our 4: ER
    session.poll(venue.ts + 30 * SEC)                             # our 5: Heartbeat
    session.data_to_send()
    msgs = venue.send(session, client.msg("2", (7, 1), (16, 0)))
    got = [(g(m, 35), g(m, 34), g(m, 43), g(m, 123), g(m, 36), g(m, 11)) for m in msgs]
    assert got == [
        ("4", "1", "Y", "Y", "2", None),      # Logon: gap-filled
        ("8", "2", "Y", None, None, "O1"),
        ("4", "3", "Y", "Y", "4", None),      # Heartbeat: gap-filled
        ("8", "4", "Y", None, None, "O2"),
        ("4", "5", "Y", "Y", "6", None),
    ]
    assert g(msgs[1], 122) == "20240131-14:05:09.124"           # OrigSendingTime: when first sent
    (hb,) = venue.send(session, client.msg("1", (112, "after")))
    assert g(hb, 34) == "6"                                      # resends took no new numbers


def test_sequence_reset_modes(venue: Venue, client: Client, session: fix.FixSession) -> None:
    assert venue.send(session, client.msg("4", (36, 50), seq=99)) == []   # Reset: any MsgSeqNum
    assert session.state.next_in == 50
    client.seq = 50
    (rej,) = venue.send(session, client.msg("4", (123, "Y"), (36, 10)))
    assert (g(rej, 35), g(rej, 373)) == ("3", "5")


def test_garbage_after_logon(venue: Venue, client: Client, session: fix.FixSession) -> None:
    good = client.msg("0")
    bad = good[:-4] + b"000\x01" if not good.endswith(b"000\x01") else good[:-4] + b"001\x01"
    assert venue.send(session, bad) == []                         # bad checksum: dropped
    assert session.take_events()[-1].kind == E.GARBLED
    assert not session.should_close
    client.seq -= 1
    assert venue.send(session, client.msg("0")) == []             # the same number again: accepted
    (rej,) = venue.send(session, client.msg("ZZ"))
    assert (g(rej, 35), g(rej, 373)) == ("3", "11")
    (bmr,) = venue.send(session, client.msg("H", (11, "X")))
    assert (g(bmr, 35), g(bmr, 380), g(bmr, 372)) == ("j", "3", "H")
    (lo,) = venue.send(session, b"\x00\x01garbage that is not FIX")
    assert g(lo, 35) == "5" and session.should_close
    assert session.take_events()[-1].kind == E.PROTOCOL_ERROR


def test_logout_both_ways(venue: Venue, client: Client, session: fix.FixSession) -> None:
    (lo,) = venue.send(session, client.msg("5"))
    assert g(lo, 35) == "5" and session.should_close
    s2 = venue.session(3, "C2", 9)
    c2 = Client("C2")
    venue.connect(s2, c2)
    s2.logout(venue.ts, "end of day")
    (lo,) = verify(s2.data_to_send())
    assert (g(lo, 35), g(lo, 58)) == ("5", "end of day") and not s2.should_close
    venue.send(s2, c2.msg("5"))
    assert s2.should_close and s2.take_events()[-1].kind == E.LOGGED_OUT


def test_state_survives_restart_and_gap_is_recovered(venue: Venue, client: Client,
                                                     session: fix.FixSession) -> None:
    venue.send(session, client.order("O1", side="2", price="150.00"))
    session.connection_lost(venue.ts)
    other = venue.session(2, "OTHER", 8)
    oc = Client("OTHER")
    venue.connect(other, oc)
    venue.send(other, oc.order("B", qty=40, price="150.00"))      # fills O1 while we are away
    assert session.data_to_send() == b""                           # stored, not sent
    saved = json.dumps(session.state.to_json_obj())
    venue.sessions.remove(session)
    restored = venue.session(state=fix.FixSessionState.from_json_obj(json.loads(saved)))
    (logon,) = venue.connect(restored, client)
    assert g(logon, 34) == "4"                                     # 1 logon, 2 ack, 3 fill (missed)
    msgs = venue.send(restored, client.msg("2", (7, 3), (16, 0)))
    assert [(g(m, 35), g(m, 150), g(m, 43)) for m in msgs] == [("8", "F", "Y"), ("4", None, "Y")]
    (er,) = venue.send(restored, client.msg("F", (41, "O1"), (11, "C1"), (55, "AAPL"), (54, "2")))
    assert (g(er, 150), g(er, 14), g(er, 151)) == ("4", "40", "0")  # the order survived too


def test_reset_seq_num_flag(venue: Venue, client: Client, session: fix.FixSession) -> None:
    venue.send(session, client.order("O1", price="100.00"))
    session.connection_lost(venue.ts)
    c = Client()
    (logon,) = venue.connect(session, c, reset=True)
    assert (g(logon, 34), g(logon, 141)) == ("1", "Y")
    assert session.state.next_in == 2


def test_reject_table_covers_every_reason() -> None:
    assert set(fix.FIX_REJECT) == set(R.REJECT_REASONS)


def test_utc_timestamp() -> None:
    assert fix.utc_timestamp(T0) == "20240131-14:05:09.123"
    assert fix.utc_timestamp(0) == "19700101-00:00:00.000"


def test_utc_timestamp_of_two_clocks_and_many_seconds() -> None:
    """A report's SendingTime and TransactTime come from two clocks: alternating between their
    seconds, and across more seconds than are remembered, every text is the formatted one."""
    import datetime
    epoch = datetime.datetime(1970, 1, 1)
    other = 1_000_000_000_000_000_000          # 2001-09-09T01:46:40Z
    for i in range(40):
        for ns in (T0 + i * 1_000_000_007, other + i * 999_999_937):
            sec, milli = divmod(ns // 1_000_000, 1000)
            want = (epoch + datetime.timedelta(seconds=sec)).strftime("%Y%m%d-%H:%M:%S") + ".%03d" % milli
            assert fix.utc_timestamp(ns) == want
    assert fix.utc_timestamp(other) == "20010909-01:46:40.000"



def test_reports_wait_for_the_logon(venue: Venue, client: Client, session: fix.FixSession) -> None:
    venue.send(session, client.order("O1", side="2", price="150.00"))
    session.connection_lost(venue.ts)
    session.connection_made(venue.ts)                              # reconnected, no Logon yet
    other = venue.session(2, "OTHER", 8)
    oc = Client("OTHER")
    venue.connect(other, oc)
    venue.send(other, oc.order("B", qty=10, price="150.00"))
    assert session.data_to_send() == b""                           # the fill is stored, not sent
    (logon,) = venue.send(session, client.logon())
    assert (g(logon, 35), g(logon, 34)) == ("A", "4")


def test_header_checks(venue: Venue, client: Client, session: fix.FixSession) -> None:
    raw = encode("0", [(49, "CLIENT"), (56, "VENUE"), (34, 2)])     # no SendingTime
    (rej,) = venue.send(session, raw)
    assert (g(rej, 35), g(rej, 373), g(rej, 371)) == ("3", "1", "52")
    client.seq = 3
    raw = encode("0", [(49, "CLIENT"), (56, "VENUE"), (34, 3), (43, "Y"), (52, "20240131-14:05:09.123")])
    (rej,) = venue.send(session, raw)
    assert (g(rej, 373), g(rej, 371)) == ("1", "122")
    raw = encode("0", [(49, "INTRUDER"), (56, "VENUE"), (34, 4), (52, "20240131-14:05:09.123")])
    rej, lo = venue.send(session, raw)
    assert (g(rej, 35), g(rej, 373), g(lo, 35)) == ("3", "9", "5") and session.should_close


def test_fuzz_never_raises(venue: Venue) -> None:
    import random
    rnd = random.Random(11)
    for round_ in range(150):
        c = Client(f"F{round_}")
        s = venue.session(100 + round_, c.comp, 50 + round_)
        s.connection_made(venue.ts)
        msgs = [c.logon(), c.order("A", price="100.00"), c.order("B", side="2", price="100.00"),
                c.msg("F", (41, "A"), (11, "C"), (55, "AAPL"), (54, "1")),
                c.msg("G", (41, "B"), (11, "D"), (55, "AAPL"), (54, "2"), (38, 5), (40, "2"), (44, "99.00")),
                c.msg("q", (11, "E"), (530, "7")), c.msg("2", (7, 1), (16, 0)), c.msg("1", (112, "x"))]
        blob = bytearray(b"".join(msgs))
        for _ in range(rnd.randrange(3)):
            blob[rnd.randrange(len(blob))] = rnd.randrange(256)
        step = rnd.randrange(1, 64)
        for i in range(0, len(blob), step):
            s.receive_data(bytes(blob[i:i + step]), venue.ts)
        venue.apply(s.take_commands())
        verify(s.data_to_send())
        s.poll(venue.ts + 100 * SEC)
        s.connection_lost(venue.ts)
        venue.sessions.remove(s)
    venue.engine.check_invariants()


def test_auction_fill_is_an_execution_report_for_both_orders(client: Client) -> None:
    from appliance.catalogue import Resume
    from appliance.matching.rules import TradingRules
    from appliance.model import TS_HALTED

    venue = Venue()
    venue.engine = Engine(INSTRUMENTS, rules=TradingRules(start_state=TS_HALTED, reopen_call_ns=0))
    s = venue.session()
    venue.connect(s, client)
    msgs = venue.send(s, client.order("B", side="1", qty=100, price="150.00"))
    msgs += venue.send(s, client.order("S", side="2", qty=40, price="150.00"))
    assert [(g(m, 11), g(m, 150)) for m in msgs] == [("B", "0"), ("S", "0")]   # collected, not matched
    venue.apply([Resume(1)])
    msgs = verify(s.data_to_send())
    assert sorted((g(m, 11), g(m, 150), g(m, 39), g(m, 32), g(m, 151)) for m in msgs) == [
        ("B", "F", "1", "40", "60"), ("S", "F", "2", "40", "0")]


def test_a_mass_cancel_sent_to_several_partitions_reports_once_with_the_sum(client: Client) -> None:
    # Two partitions (AAPL in one, MSFT in the other): the shell sends 530=7 to both and tells the
    # session; one OrderMassCancelReport comes, after both answers, with 533 = every order cancelled.
    parts = [Engine([i for i in INSTRUMENTS if i.symbol == sym]) for sym in ("AAPL", "MSFT")]
    s = fix.FixSession(config(1, "CLIENT", 7), None, INSTRUMENTS)
    ts = T0

    def route(cmds: list[Command], fanout: bool = False) -> list[simplefix.FixMessage]:
        nonlocal ts
        for cmd in cmds:
            loc = getattr(cmd, "locate", 0)
            targets = parts if loc == 0 else [p for p in parts if loc < len(p.books) and p.books[loc] is not None]
            if fanout:
                assert isinstance(cmd, MassCancel)
                s.mass_cancel_fanout(cmd.cl_ord_id, len(targets))
            for eng in targets:
                ts += 1_000
                out: list[Any] = []
                eng.apply(cmd, out)
                s.on_events(ts, out, ts)
        return verify(s.data_to_send())

    s.connection_made(ts)
    s.receive_data(client.logon(), ts)
    verify(s.data_to_send())
    for cl, sym in (("A1", "AAPL"), ("A2", "AAPL"), ("M1", "MSFT")):
        s.receive_data(client.order(cl, symbol=sym, price="100.00"), ts)
        route(s.take_commands())
    s.receive_data(client.msg("q", (11, "MC7"), (530, "7")), ts)
    msgs = route(s.take_commands(), fanout=True)
    assert types(msgs) == [("8", "4", "4"), ("8", "4", "4"), ("8", "4", "4"), ("r", None, None)]
    assert (g(msgs[3], 11), g(msgs[3], 531), g(msgs[3], 533)) == ("MC7", "7", "3")


def test_post_only_exec_inst(venue: Venue, client: Client, session: fix.FixSession) -> None:
    """ExecInst 6 (participate don't initiate): a post-only order; one that would take is rejected
    (150=8, 103=99) and a post-only IOC is refused by the engine (103=11)."""
    other = venue.session(2, "OTHER", 8)
    oc = Client("OTHER")
    venue.connect(other, oc)
    venue.send(other, oc.order("S", side="2", qty=100, price="150.00"))
    (rej,) = venue.send(session, client.order("P1", qty=10, price="150.00", t18="6"))
    assert (g(rej, 150), g(rej, 39), g(rej, 103)) == ("8", "8", "99") and "post-only" in text(rej, 58)
    (acc,) = venue.send(session, client.order("P2", qty=10, price="149.00", t18="1 6"))
    assert (g(acc, 150), g(acc, 44)) == ("0", "149.0000")
    assert venue.engine.orders[(1 << 32) | 2].post_only == 1
    (rej,) = venue.send(session, client.order("P3", qty=10, price="140.00", tif="3", t18="6"))
    assert (g(rej, 150), g(rej, 103)) == ("8", "11")
    msgs = venue.send(session, client.order("P4", qty=10, price="150.00", t18="1"))   # not post-only
    assert types(msgs) == [("8", "0", "0"), ("8", "F", "2")]
