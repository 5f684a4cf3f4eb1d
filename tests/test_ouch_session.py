"""OuchSession driven by bytes: SoupBinTCP login, OUCH messages in, a real Engine on the commands,
its events back, and the OUCH bytes out checked field by field (and byte for byte where it matters).
"""
from __future__ import annotations

import random
from typing import Any

import pytest

from appliance import reasons as R
from appliance.catalogue import CancelOrder, Command, MassCancel, NewOrder, ReplaceOrder
from appliance.gateway import events as E
from appliance.gateway import ouch
from feeds import ouch_layout as L
from appliance.matching.engine import Engine
from appliance.model import Instrument
from feeds import soupbintcp as soup

SEC = 1_000_000_000
MIDNIGHT = 1_700_000_000 * SEC
T0 = MIDNIGHT + 9 * 3600 * SEC
INSTRUMENTS = [Instrument("AAPL", 1, tick=100), Instrument("MSFT", 2, tick=1)]
CREDS_A = {"alice": ("secretA", 7)}
CREDS_B = {"bob": ("secretB", 8)}


# --- client-side encoders ----------------------------------------------------------------------

def enter(urn: int, side: bytes = b"B", qty: int = 100, symbol: bytes = b"AAPL", price: int = 1_500_000,
          tif: bytes = b"0", display: bytes = b"Y", cl: bytes = b"C1", options: tuple[L.Option, ...] = (),
          iso: bytes = b"N", cross: bytes = b"N") -> bytes:
    msg = L.EnterOrder(urn, side, qty, symbol, price, tif, display, b"A", iso, cross, cl, 0)
    return soup.encode_unsequenced_data(L.encode(L.ENTER_ORDER, msg, options))


def replace(orig: int, urn: int, qty: int, price: int, tif: bytes = b"0", cl: bytes = b"R1") -> bytes:
    msg = L.ReplaceOrder(orig, urn, qty, price, tif, b"Y", b"N", cl, 0)
    return soup.encode_unsequenced_data(L.encode(L.REPLACE_ORDER, msg))


def cancel(urn: int, qty: int = 0) -> bytes:
    return soup.encode_unsequenced_data(L.encode(L.CANCEL_ORDER, L.CancelOrder(urn, qty)))


def modify(urn: int, side: bytes, qty: int) -> bytes:
    return soup.encode_unsequenced_data(L.encode(L.MODIFY_ORDER, L.ModifyOrder(urn, side, qty)))


def decode_out(data: bytes) -> list[tuple[bytes, Any]]:
    """Server bytes -> [(packet type, decoded OUCH message or raw payload)]."""
    out: list[tuple[bytes, Any]] = []
    for kind, payload in soup.FrameParser().feed(data):
        out.append((kind, L.decode(payload, L.OUTBOUND)[0] if kind == b"S" else payload))
    return out


def ouch_msgs(data: bytes) -> list[Any]:
    return [m for kind, m in decode_out(data) if kind == b"S"]


class Venue:
    """Sessions and a real engine: commands applied in order, events fed back to every session."""

    def __init__(self) -> None:
        self.engine = Engine(INSTRUMENTS)
        self.sessions: list[ouch.OuchSession] = []
        self.ts = T0

    def session(self, sid: int, creds: dict[str, tuple[str, int]], **kw: Any) -> ouch.OuchSession:
        s = ouch.OuchSession(sid, creds, INSTRUMENTS, midnight_ns=MIDNIGHT, **kw)
        self.sessions.append(s)
        return s

    def apply(self, cmds: list[Command]) -> None:
        for cmd in cmds:
            self.ts += 1000
            out: list[Any] = []
            self.engine.apply(cmd, out)
            self.engine.check_invariants()
            for s in self.sessions:
                s.on_events(self.ts, out)

    def send(self, s: ouch.OuchSession, data: bytes, now: int | None = None) -> list[Any]:
        s.receive_data(data, self.ts if now is None else now)
        cmds = s.take_commands()
        while cmds:  # as the shell does: follow-up commands from on_events go in too
            self.apply(cmds)
            cmds = [c for x in self.sessions for c in x.take_commands()]
        return ouch_msgs(s.data_to_send())

    def login(self, s: ouch.OuchSession, user: str, password: str, seq: int = 0) -> list[tuple[bytes, Any]]:
        s.connection_made(self.ts)
        s.receive_data(soup.encode_login_request(user, password, "", seq), self.ts)
        return decode_out(s.data_to_send())


@pytest.fixture
def venue() -> Venue:
    return Venue()


@pytest.fixture
def alice(venue: Venue) -> ouch.OuchSession:
    s = venue.session(1, CREDS_A)
    assert venue.login(s, "alice", "secretA") == [(b"A", soup.encode_login_accepted("1", 1)[3:])]
    assert s.take_events() == [E.SessionEvent(E.LOGGED_IN, "user 'alice' from sequence 1")]
    return s


@pytest.fixture
def bob(venue: Venue) -> ouch.OuchSession:
    s = venue.session(2, CREDS_B)
    venue.login(s, "bob", "secretB")
    s.take_events()
    return s


# --- login ---------------------------------------------------------------------------------------

def test_login_rejected_bad_password(venue: Venue) -> None:
    s = venue.session(1, CREDS_A)
    assert venue.login(s, "alice", "wrong") == [(b"J", b"A")]
    assert s.should_close and s.take_events()[0].kind == E.LOGIN_REJECTED
    assert s.on_disconnect() == []


def test_login_rejected_unknown_session(venue: Venue) -> None:
    s = venue.session(1, CREDS_A, session_name="TODAY")
    s.connection_made(T0)
    s.receive_data(soup.encode_login_request("alice", "secretA", "YESTERDAY", 0), T0)
    assert decode_out(s.data_to_send()) == [(b"J", b"S")]
    assert s.should_close


def test_login_padding_either_side(venue: Venue) -> None:
    s = venue.session(1, CREDS_A, session_name="S1")
    s.connection_made(T0)
    payload = b" alice" + b"   secretA" + b"S1".ljust(10) + b"0".ljust(20)
    s.receive_data(soup.encode_packet(b"L", payload), T0)
    assert decode_out(s.data_to_send())[0] == (b"A", soup.encode_login_accepted("S1", 1)[3:])


def test_packets_before_login_close(venue: Venue) -> None:
    s = venue.session(1, CREDS_A)
    s.connection_made(T0)
    s.receive_data(enter(1), T0)
    assert s.should_close and s.take_events()[0].kind == E.PROTOCOL_ERROR
    assert s.data_to_send() == b""


def test_second_login_closes(venue: Venue, alice: ouch.OuchSession) -> None:
    alice.receive_data(soup.encode_login_request("alice", "secretA"), T0)
    assert alice.should_close


# --- orders --------------------------------------------------------------------------------------

def test_enter_accepted_bytes(venue: Venue, alice: ouch.OuchSession) -> None:
    alice.receive_data(enter(5, qty=300, price=1_501_000, cl=b"ABC"), T0)
    (cmd,) = alice.take_commands()
    assert isinstance(cmd, NewOrder)
    assert (cmd.order_id, cmd.locate, cmd.side, cmd.qty, cmd.price, cmd.firm, cmd.session, cmd.cl_ord_id) == (
        (1 << 32) | 5, 1, 0, 300, 1_501_000, 7, 1, "ABC")
    out: list[Any] = []
    venue.engine.apply(cmd, out)
    alice.on_events(T0 + 123, out)
    expected = L.encode(L.ORDER_ACCEPTED, L.OrderAccepted(
        9 * 3600 * SEC + 123, 5, b"B", 300, b"AAPL    ", 1_501_000, b"0", b"Y", 1, b"A", b"N", b"N", b"L",
        b"ABC           ", 0))
    assert alice.data_to_send() == soup.encode_sequenced_data(expected)
    assert alice.next_sequence == 2


def test_user_ref_num_must_increase(venue: Venue, alice: ouch.OuchSession) -> None:
    assert [m.user_ref_num for m in venue.send(alice, enter(10))] == [10]
    assert venue.send(alice, enter(10)) == []     # a retransmission: ignored
    assert venue.send(alice, enter(9)) == []
    assert [e.kind for e in alice.take_events()] == [E.IGNORED, E.IGNORED]
    assert [m.user_ref_num for m in venue.send(alice, enter(11))] == [11]


def test_stale_user_ref_num_rejected_when_asked(venue: Venue) -> None:
    s = venue.session(1, CREDS_A, reject_stale_user_ref_num=True)
    venue.login(s, "alice", "secretA")
    venue.send(s, enter(3))
    (msg,) = venue.send(s, enter(2, cl=b"OLD"))
    assert isinstance(msg, L.OrderRejected)
    assert (msg.user_ref_num, msg.reason, msg.cl_ord_id) == (2, ouch.REJECT_OTHER, b"OLD           ")


@pytest.mark.parametrize("kw, reason", [
    (dict(symbol=b"ZZZZ"), ouch.INVALID_SYMBOL),
    (dict(price=1_500_050), ouch.INVALID_PRICE),              # off the 0.01 tick: never rounded
    (dict(price=-100), ouch.INVALID_PRICE),
    (dict(qty=0), ouch.INVALID_QUANTITY),
    (dict(side=b"X"), ouch.INVALID_SIDE),
    (dict(tif=b"6"), ouch.REJECT_OTHER),                      # GTT
    (dict(display=b"N"), ouch.INVALID_DISPLAY),
    (dict(display=b"A"), ouch.INVALID_DISPLAY),               # no MPID configured
    (dict(iso=b"Y"), ouch.ISO_NOT_ALLOWED),
    (dict(cross=b"O"), ouch.INVALID_CROSS_ORDER),
    (dict(options=((3, (100).to_bytes(4, "big")),)), ouch.INVALID_MIN_QUANTITY),
    (dict(options=((5, (100).to_bytes(4, "big")),)), ouch.INVALID_MAX_FLOOR),
    (dict(options=((12, b"X"),)), ouch.REJECT_OTHER),         # PostOnly neither P nor N
    (dict(tif=b"3", options=((12, b"P"),)), ouch.REJECT_OTHER),   # a post-only IOC: the engine says no
])
def test_enter_rejects(venue: Venue, alice: ouch.OuchSession, kw: dict[str, Any], reason: int) -> None:
    (msg,) = venue.send(alice, enter(1, cl=b"REJ", **kw))
    assert isinstance(msg, L.OrderRejected)
    assert (msg.user_ref_num, msg.reason, msg.cl_ord_id) == (1, reason, b"REJ           ")
    assert msg.timestamp == venue.ts - MIDNIGHT
    assert venue.send(alice, enter(1)) == []                  # a rejected UserRefNum is consumed


def test_harmless_options_accepted(venue: Venue, alice: ouch.OuchSession) -> None:
    (msg,) = venue.send(alice, enter(1, options=((2, b"LIME"), (18, b"0"), (3, bytes(4)))))
    assert isinstance(msg, L.OrderAccepted)


def test_attributable_display_carries_mpid(venue: Venue) -> None:
    s = venue.session(1, CREDS_A, mpid="ALIC")
    venue.login(s, "alice", "secretA")
    s.receive_data(enter(1, display=b"A"), T0)
    (cmd,) = s.take_commands()
    assert isinstance(cmd, NewOrder) and cmd.mpid == "ALIC"


def test_execution_both_sides_and_ioc(venue: Venue, alice: ouch.OuchSession, bob: ouch.OuchSession) -> None:
    venue.send(alice, enter(1, side=b"S", qty=100, price=1_500_000))
    bob.receive_data(enter(1, side=b"B", qty=150, price=1_500_000, tif=b"3", cl=b"TAKE"), T0)
    venue.apply(bob.take_commands())
    a_msgs = ouch_msgs(alice.data_to_send())
    b_msgs = ouch_msgs(bob.data_to_send())
    (maker,) = a_msgs
    assert isinstance(maker, L.OrderExecuted)
    assert (maker.user_ref_num, maker.quantity, maker.price, maker.liquidity_flag, maker.match_number) == (
        1, 100, 1_500_000, b"A", 1)
    acc, taker, canceled = b_msgs
    assert isinstance(acc, L.OrderAccepted) and acc.order_state == b"D"  # IOC: will not rest
    assert acc.time_in_force == b"3"
    assert (taker.quantity, taker.liquidity_flag, taker.match_number) == (100, b"R", 1)
    assert isinstance(canceled, L.OrderCanceled)
    assert (canceled.quantity, canceled.reason) == (50, b"I")
    assert not alice.orders and not bob.orders


def test_cancel_all_and_unknown(venue: Venue, alice: ouch.OuchSession) -> None:
    venue.send(alice, enter(1, qty=100))
    (msg,) = venue.send(alice, cancel(1))
    assert isinstance(msg, L.OrderCanceled)
    assert (msg.user_ref_num, msg.quantity, msg.reason) == (1, 100, b"U")
    assert venue.send(alice, cancel(1)) == []  # no longer live: ignored
    assert alice.take_events()[-1].kind == E.IGNORED
    assert venue.engine.resting_count() == 0


def test_cancel_to_intended_size_keeps_priority(venue: Venue, alice: ouch.OuchSession,
                                                bob: ouch.OuchSession) -> None:
    venue.send(alice, enter(1, side=b"S", qty=500))
    venue.send(alice, enter(2, side=b"S", qty=100))
    venue.send(bob, enter(1, side=b"B", qty=100, tif=b"3"))   # executes 100 of urn 1
    alice.data_to_send()
    (msg,) = venue.send(alice, cancel(1, 300))                # at most 300 executed in total
    assert isinstance(msg, L.OrderCanceled)
    assert (msg.user_ref_num, msg.quantity, msg.reason) == (1, 200, b"U")   # leaves 400 -> 200
    book = venue.engine.book(1)
    first = book.orders_in_priority(1)[0]
    assert (first.order_id, first.leaves) == ((1 << 32) | 1, 200)
    assert venue.send(alice, cancel(1, 400)) == []            # does not reduce: ignored


def test_cancel_at_or_below_executed_cancels(venue: Venue, alice: ouch.OuchSession,
                                             bob: ouch.OuchSession) -> None:
    venue.send(alice, enter(1, side=b"S", qty=500))
    venue.send(bob, enter(1, side=b"B", qty=100, tif=b"3"))
    alice.data_to_send()
    (msg,) = venue.send(alice, cancel(1, 50))
    assert (msg.quantity, msg.reason) == (400, b"U")


def test_replace_quantity_is_chain_total(venue: Venue, alice: ouch.OuchSession, bob: ouch.OuchSession) -> None:
    # The spec's example: 500 entered, 100 executed; a replace for 500 leaves 400 exposed.
    venue.send(alice, enter(1, side=b"S", qty=500, price=1_500_000))
    venue.send(bob, enter(1, side=b"B", qty=100, tif=b"3"))
    alice.data_to_send()
    (msg,) = venue.send(alice, replace(1, 2, 500, 1_510_000, cl=b"NEW"))
    assert isinstance(msg, L.OrderReplaced)
    assert (msg.orig_user_ref_num, msg.user_ref_num, msg.quantity, msg.price, msg.order_state) == (
        1, 2, 400, 1_510_000, b"L")
    assert msg.order_ref == 3 and msg.cl_ord_id == b"NEW           " and msg.side == b"S"
    live = venue.engine.orders[(1 << 32) | 1]
    assert (live.qty, live.filled, live.leaves, live.price, live.cl_ord_id) == (500, 100, 400, 1_510_000, "NEW")
    assert venue.send(alice, cancel(1)) == []                 # the old UserRefNum is gone
    (c,) = venue.send(alice, cancel(2))
    assert (c.user_ref_num, c.quantity) == (2, 400)


def test_replace_rules(venue: Venue, alice: ouch.OuchSession, bob: ouch.OuchSession) -> None:
    venue.send(alice, enter(5, qty=100))
    assert venue.send(alice, replace(5, 5, 100, 1_510_000)) == []     # new UserRefNum not increasing
    assert venue.send(alice, replace(4, 6, 100, 1_510_000)) == []     # original not live
    (rej,) = venue.send(alice, replace(5, 6, 100, 1_510_000, tif=b"3", cl=b"X"))
    assert isinstance(rej, L.OrderRejected) and (rej.user_ref_num, rej.reason) == (6, ouch.REPLACE_NOT_ALLOWED)
    (rej,) = venue.send(alice, replace(5, 7, 100, 1_510_050))         # off tick: the engine says no
    assert isinstance(rej, L.OrderRejected) and (rej.user_ref_num, rej.reason) == (7, ouch.INVALID_PRICE)
    (ok,) = venue.send(alice, replace(5, 8, 100, 1_520_000))          # the order is still intact
    assert isinstance(ok, L.OrderReplaced) and ok.orig_user_ref_num == 5


def test_replace_to_executed_cancels_without_consuming(venue: Venue, alice: ouch.OuchSession,
                                                       bob: ouch.OuchSession) -> None:
    venue.send(alice, enter(1, side=b"S", qty=500))
    venue.send(bob, enter(1, side=b"B", qty=100, tif=b"3"))
    alice.data_to_send()
    (msg,) = venue.send(alice, replace(1, 2, 100, 1_500_000))
    assert isinstance(msg, L.OrderCanceled) and (msg.user_ref_num, msg.quantity) == (1, 400)
    assert [m.user_ref_num for m in venue.send(alice, enter(2))] == [2]   # 2 was not consumed


def test_replace_crossing_reports_dead_when_filled(venue: Venue, alice: ouch.OuchSession,
                                                   bob: ouch.OuchSession) -> None:
    venue.send(bob, enter(1, side=b"S", qty=100, price=1_510_000))
    venue.send(alice, enter(1, side=b"B", qty=100, price=1_500_000))
    msgs = venue.send(alice, replace(1, 2, 100, 1_510_000))
    assert [type(m) for m in msgs] == [L.OrderReplaced, L.OrderExecuted]
    assert msgs[0].order_state == b"D" and msgs[1].user_ref_num == 2 and msgs[1].liquidity_flag == b"R"
    assert not alice.orders


def test_modify(venue: Venue, alice: ouch.OuchSession) -> None:
    venue.send(alice, enter(1, side=b"S", qty=300))
    (m,) = venue.send(alice, modify(1, b"T", 300))            # side only: answered at once
    assert isinstance(m, L.OrderModified) and (m.side, m.quantity) == (b"T", 300)
    assert alice.take_commands() == []
    (m,) = venue.send(alice, modify(1, b"E", 200))            # and a reduction: through the engine
    assert isinstance(m, L.OrderModified) and (m.user_ref_num, m.side, m.quantity) == (1, b"E", 200)
    assert venue.engine.orders[(1 << 32) | 1].leaves == 200
    assert venue.send(alice, modify(1, b"B", 200)) == []      # a sell cannot become a buy
    assert venue.send(alice, modify(1, b"E", 250)) == []      # no increase
    (c,) = venue.send(alice, cancel(1))
    assert c.quantity == 200


def test_cancel_reduction_overtaken_by_fills(venue: Venue, alice: ouch.OuchSession,
                                             bob: ouch.OuchSession) -> None:
    venue.send(alice, enter(1, side=b"S", qty=100))
    alice.receive_data(cancel(1, 60), T0)                     # at most 60 executed in total ...
    reduce_cmds = alice.take_commands()
    assert [type(c) for c in reduce_cmds] == [ReplaceOrder]
    venue.send(bob, enter(1, side=b"B", qty=80, tif=b"3"))    # ... but 80 execute first
    venue.apply(reduce_cmds)                                  # qty 60 <= filled 80: rejected
    follow = alice.take_commands()
    assert [type(c) for c in follow] == [CancelOrder]         # so the rest is cancelled
    venue.apply(follow)
    msgs = ouch_msgs(alice.data_to_send())
    assert [type(m) for m in msgs] == [L.OrderExecuted, L.OrderCanceled]
    assert msgs[1].quantity == 20
    assert not alice.orders


def test_self_match_decrement_counts_in_replace(venue: Venue) -> None:
    from appliance.model import STP_DC
    venue.engine = Engine(INSTRUMENTS, firm_stp={7: STP_DC})
    s = venue.session(1, CREDS_A)
    venue.login(s, "alice", "secretA")
    venue.send(s, enter(1, side=b"S", qty=500))
    msgs = venue.send(s, enter(2, side=b"B", qty=100))        # decrements both by 100
    assert [(type(m), getattr(m, "reason", None)) for m in msgs] == [
        (L.OrderAccepted, None), (L.OrderCanceled, b"Q"), (L.OrderCanceled, b"Q")]
    (u,) = venue.send(s, replace(1, 3, 500, 1_510_000))       # 500 liable = 100 decremented + 400
    assert isinstance(u, L.OrderReplaced) and u.quantity == 400


def test_account_query(venue: Venue, alice: ouch.OuchSession) -> None:
    venue.send(alice, enter(41))
    (q,) = venue.send(alice, soup.encode_unsequenced_data(b"Q"))
    assert isinstance(q, L.AccountQueryResponse) and q.next_user_ref_num == 42


def test_events_of_other_sessions_are_ignored(venue: Venue, alice: ouch.OuchSession,
                                              bob: ouch.OuchSession) -> None:
    venue.send(bob, enter(1))
    assert alice.data_to_send() == b"" and alice.next_sequence == 1


# --- sequencing, replay, timers ------------------------------------------------------------------

def test_replay_from_requested_sequence(venue: Venue, alice: ouch.OuchSession) -> None:
    alice.start_of_day(T0)
    for urn in (1, 2, 3):
        venue.send(alice, enter(urn))
    assert alice.next_sequence == 5
    stream = list(alice.stream)
    assert alice.on_disconnect() != []                        # cancel-on-disconnect (default on)
    got = venue.login(alice, "alice", "secretA", seq=3)
    assert got[0] == (b"A", soup.encode_login_accepted("1", 3)[3:])
    assert [m for _, m in got[1:]] == [L.decode(b, L.OUTBOUND)[0] for b in stream[2:]]
    alice.on_disconnect()
    got = venue.login(alice, "alice", "secretA", seq=0)       # 0: only new messages
    assert got == [(b"A", soup.encode_login_accepted("1", 5)[3:])]
    alice.on_disconnect()
    got = venue.login(alice, "alice", "secretA", seq=99)      # beyond the end: from the next one
    assert got == [(b"A", soup.encode_login_accepted("1", 5)[3:])]


def test_cancel_on_disconnect_session_scope(venue: Venue, alice: ouch.OuchSession,
                                            bob: ouch.OuchSession) -> None:
    venue.send(alice, enter(1))
    venue.send(alice, enter(2))
    venue.send(bob, enter(1))
    cmds = alice.on_disconnect()
    assert [type(c) for c in cmds] == [CancelOrder, CancelOrder]
    venue.apply(cmds)
    assert venue.engine.resting_count() == 1                  # bob's order stays
    assert alice.data_to_send() == b""                        # not connected: nothing sent ...
    got = venue.login(alice, "alice", "secretA", seq=3)       # ... but in the stream
    assert [(type(m), m.reason) for _, m in got[1:]] == [(L.OrderCanceled, b"U")] * 2


def test_cancel_on_disconnect_firm_scope_and_off(venue: Venue) -> None:
    s = venue.session(1, CREDS_A, cancel_on_disconnect_scope="firm")
    venue.login(s, "alice", "secretA")
    venue.send(s, enter(1))
    (cmd,) = s.on_disconnect()
    assert isinstance(cmd, MassCancel) and (cmd.firm, cmd.session) == (7, 1)
    off = venue.session(3, {"carol": ("pw", 9)}, cancel_on_disconnect=False)
    venue.login(off, "carol", "pw")
    venue.send(off, enter(1))
    assert off.on_disconnect() == []


def test_cod_rejects_are_not_reported(venue: Venue, alice: ouch.OuchSession) -> None:
    venue.send(alice, enter(1))
    alice.receive_data(cancel(1), T0)
    user_cancel = alice.take_commands()
    cod = alice.on_disconnect()
    venue.apply(user_cancel + cod)                            # the second cancel finds nothing
    got = venue.login(alice, "alice", "secretA", seq=2)
    assert [type(m) for _, m in got[1:]] == [L.OrderCanceled]


def test_heartbeat_and_timeout(venue: Venue, alice: ouch.OuchSession) -> None:
    alice.poll(T0 + SEC - 1)
    assert alice.data_to_send() == b""
    alice.poll(T0 + SEC)
    assert alice.data_to_send() == soup.encode_server_heartbeat()
    alice.poll(T0 + SEC + 10)
    assert alice.data_to_send() == b""                        # not twice within a second
    alice.receive_data(soup.encode_client_heartbeat(), T0 + 10 * SEC)
    alice.poll(T0 + 24 * SEC)
    assert not alice.should_close
    alice.poll(T0 + 25 * SEC)
    assert alice.should_close and alice.take_events()[-1].kind == E.TIMED_OUT


def test_login_timeout(venue: Venue) -> None:
    s = venue.session(1, CREDS_A)
    s.connection_made(T0)
    s.poll(T0 + 14 * SEC)
    assert not s.should_close and s.data_to_send() == b""    # no heartbeats before login
    s.poll(T0 + 15 * SEC)
    assert s.should_close


def test_logout_and_end_of_session(venue: Venue, alice: ouch.OuchSession) -> None:
    alice.receive_data(soup.encode_logout_request(), T0)
    assert alice.should_close and alice.take_events()[-1].kind == E.LOGGED_OUT
    alice.on_disconnect()
    venue.login(alice, "alice", "secretA")
    alice.end_of_session(T0 + 5)
    out = decode_out(alice.data_to_send())
    assert out[0][1] == L.SystemEvent(9 * 3600 * SEC + 5, b"E") and out[1] == (b"Z", b"")
    assert alice.should_close
    alice.on_disconnect()
    got = venue.login(alice, "alice", "secretA", seq=1)      # later logins: replay, then 'Z'
    assert got[-1] == (b"Z", b"")
    alice.on_disconnect()
    venue.login(alice, "alice", "secretA")
    assert alice.should_close


# --- malformed input -----------------------------------------------------------------------------

def test_malformed_ouch_message_is_answered_with_debug(venue: Venue, alice: ouch.OuchSession) -> None:
    alice.receive_data(soup.encode_unsequenced_data(b"O" + bytes(10)), T0)
    ((kind, text),) = decode_out(alice.data_to_send())
    assert kind == b"+" and b"Enter Order" in text
    assert not alice.should_close and alice.take_events()[-1].kind == E.MALFORMED
    assert [m.user_ref_num for m in venue.send(alice, enter(1))] == [1]


def test_broken_framing_closes(venue: Venue, alice: ouch.OuchSession) -> None:
    alice.receive_data(b"\x00\x00U", T0)
    assert alice.should_close and alice.take_events()[-1].kind == E.PROTOCOL_ERROR
    alice.receive_data(enter(1), T0)                          # ignored once closing
    assert alice.take_commands() == []


def test_byte_by_byte_equals_whole(venue: Venue) -> None:
    data = soup.encode_login_request("alice", "secretA") + enter(1) + enter(2) + cancel(1)
    outs = []
    for chunking in (len(data), 1, 7):
        v = Venue()
        s = v.session(1, CREDS_A)
        s.connection_made(T0)
        for i in range(0, len(data), chunking):
            s.receive_data(data[i:i + chunking], T0)
            v.apply(s.take_commands())
        outs.append(s.data_to_send())
    assert outs[0] == outs[1] == outs[2]
    assert len(ouch_msgs(outs[0])) == 3


def test_fuzz_never_raises(venue: Venue) -> None:
    rnd = random.Random(7)
    good = [enter(1), enter(2, side=b"S"), cancel(1), replace(2, 3, 50, 1_500_000), modify(3, b"T", 40),
            soup.encode_client_heartbeat(), soup.encode_unsequenced_data(b"Q")]
    for round_ in range(200):
        s = venue.session(100 + round_, CREDS_A)
        venue.login(s, "alice", "secretA")
        blob = bytearray(b"".join(rnd.choice(good) for _ in range(6)))
        for _ in range(rnd.randrange(4)):
            blob[rnd.randrange(len(blob))] = rnd.randrange(256)
        s.receive_data(bytes(blob), T0)
        venue.apply(s.take_commands())
        s.data_to_send()
        s.on_disconnect()
        venue.sessions.remove(s)
    venue.engine.check_invariants()


def test_reason_tables_cover_every_reason() -> None:
    assert set(ouch.REJECT_REASON) == set(R.REJECT_REASONS)
    assert set(ouch.CANCEL_REASON) == set(R.CANCEL_REASONS)


def test_order_id_composition() -> None:
    assert ouch.order_id_for(3, 17) == (3 << 32) | 17


def test_too_late_cancel_and_replace(venue: Venue, alice: ouch.OuchSession, bob: ouch.OuchSession) -> None:
    """A Cancel overtaken by the fill that ended the order gets Cancel Reject 'I' (OUCH's answer to
    a cancel that cannot be done: it has no reason field); the engine's reason is TOO_LATE_FILLED,
    not UNKNOWN_ORDER. A Replace overtaken so is dropped and its UserRefNum not consumed."""
    venue.send(alice, enter(1, side=b"S", qty=100, price=1_500_000))
    venue.send(alice, enter(2, side=b"S", qty=100, price=1_510_000))
    alice.receive_data(cancel(1), T0)
    alice.receive_data(replace(2, 3, 100, 1_520_000), T0)
    late = alice.take_commands()
    venue.send(bob, enter(1, side=b"B", qty=200, price=1_510_000))     # fills both
    alice.data_to_send()
    out: list[Any] = []
    for cmd in late:
        venue.engine.apply(cmd, out)
    assert [ev[2] for ev in out] == [R.TOO_LATE_FILLED, R.TOO_LATE_FILLED]
    alice.on_events(venue.ts, out)
    (rej,) = ouch_msgs(alice.data_to_send())
    assert isinstance(rej, L.CancelReject) and rej.user_ref_num == 1
    assert alice.take_events()[-1].kind == E.IGNORED
    assert [m.user_ref_num for m in venue.send(alice, enter(3))] == [3]   # 3 was not consumed


def test_post_only_option(venue: Venue, alice: ouch.OuchSession, bob: ouch.OuchSession) -> None:
    """OUCH 5.0 PostOnly appendage option (tag 12) 'P': rejected when it would take (no rules:
    the instrument rejects), rests when it does not; 'N' is a plain order."""
    venue.send(bob, enter(1, side=b"S", qty=100, price=1_500_000))
    (rej,) = venue.send(alice, enter(1, qty=10, price=1_500_000, options=((12, b"P"),)))
    assert isinstance(rej, L.OrderRejected) and rej.reason == ouch.REJECT_OTHER
    (acc,) = venue.send(alice, enter(2, qty=10, price=1_490_000, options=((12, b"P"),)))
    assert isinstance(acc, L.OrderAccepted) and acc.price == 1_490_000
    assert venue.engine.orders[(1 << 32) | 2].post_only == 1
    msgs = venue.send(alice, enter(3, qty=10, price=1_500_000, options=((12, b"N"),)))
    assert [type(m) for m in msgs] == [L.OrderAccepted, L.OrderExecuted]


def test_post_only_repriced_reports_the_new_price() -> None:
    from appliance.matching.rules import InstrumentRules, TradingRules
    venue = Venue()
    venue.engine = Engine(INSTRUMENTS, rules=TradingRules.of({1: InstrumentRules(post_only_reprice=1)}))
    a = venue.session(1, CREDS_A)
    venue.login(a, "alice", "secretA")
    b = venue.session(2, CREDS_B)
    venue.login(b, "bob", "secretB")
    venue.send(b, enter(1, side=b"S", qty=100, price=1_500_000))
    (acc,) = venue.send(a, enter(1, qty=10, price=1_510_000, options=((12, b"P"),)))
    assert isinstance(acc, L.OrderAccepted) and acc.price == 1_499_900 and acc.order_state == b"L"   # ask - tick
