"""The gateway's pieces without sockets: ring records rebuild the engine's event tuples well enough
that an OuchSession fed from the ring says byte for byte what one fed by the engine says; an
OuchSession rebuilt from its own stream has the same orders; the journal cuts unfinished flushes."""
from __future__ import annotations

import random
from typing import Any

from appliance import codec_ring as C
from appliance.catalogue import CancelOrder, NewOrder
from feeds import ouch_layout as L
from appliance.gateway.ouch import OuchSession
from appliance.gateway.journal import J_OUCH_COUNT, journal_record, mark_record, read_journal
from appliance.gateway.state import restore_ouch_session
from appliance.matching.engine import Engine
from appliance.model import Instrument
from feeds import soupbintcp as soup

INS = [Instrument("ALPH", 1, 100), Instrument("BETA", 2, 100)]


def _session(sid: int, user: str, firm: int) -> OuchSession:
    return OuchSession(sid, {user: ("pw", firm)}, INS)


def _login(s: OuchSession) -> None:
    s.connection_made(0)
    s.receive_data(soup.encode_login_request(next(iter(s.credentials)), "pw"), 0)
    s.data_to_send()


def _enter(urn: int, side: bytes, qty: int, sym: bytes, px: int, tif: bytes = b"0") -> bytes:
    m = L.EnterOrder(urn, side, qty, sym, px, tif, b"Y", b"A", b"N", b"N", b"C%d" % urn, 0)
    return soup.encode_unsequenced_data(L.encode(L.ENTER_ORDER, m))


def _cancel(urn: int, qty: int = 0) -> bytes:
    return soup.encode_unsequenced_data(L.encode(L.CANCEL_ORDER, L.CancelOrder(urn, qty)))


def test_sessions_fed_from_ring_records_say_what_engine_fed_ones_say() -> None:
    rng = random.Random(5)
    engine = Engine(INS)
    direct = [_session(1, "a", 1), _session(2, "b", 2)]
    via_ring = [_session(1, "a", 1), _session(2, "b", 2)]
    for s in direct + via_ring:
        _login(s)
    enc = C.EventEncoder({1: 0, 2: 0}, 1)
    dec = C.EventDecoder([1, 2])
    urns = [0, 0]
    for step in range(600):
        i = rng.randrange(2)
        if urns[i] and rng.random() < 0.25:
            data = _cancel(rng.randrange(1, urns[i] + 1), rng.choice((0, 0, 50)))
        else:
            urns[i] += 1
            side = rng.choice((b"B", b"S"))
            px = 1_000_000 + rng.randrange(-5, 6) * 100
            data = _enter(urns[i], side, rng.randrange(1, 5) * 100, rng.choice((b"ALPH", b"BETA")), px,
                          rng.choice((b"0", b"0", b"3")))
        direct[i].receive_data(data, step)
        via_ring[i].receive_data(data, step)
        cmds = direct[i].take_commands()
        assert [type(c) for c in via_ring[i].take_commands()] == [type(c) for c in cmds]
        for seq, cmd in enumerate(cmds, start=step * 10):
            events: list = []
            engine.apply(cmd, events)
            for s in direct:
                s.on_events(seq, events)
            out: list[list[bytes]] = [[]]
            enc.encode([(seq, seq, cmd, events)], out)
            assert all(len(r) <= 126 for r in out[0])
            for gseq, ts, evs in dec.feed(out[0]):
                for s in via_ring:
                    s.on_events(ts, evs)
    for a, b in zip(direct, via_ring):
        assert a.stream == b.stream
        assert len(a.stream) > 100


def test_ouch_session_rebuilt_from_its_stream() -> None:
    rng = random.Random(9)
    engine = Engine(INS)
    live = _session(1, "a", 1)
    other = _session(2, "b", 2)
    _login(live)
    _login(other)
    for urn in range(1, 300):
        s, u = (live, urn) if urn % 2 else (other, urn)
        s.receive_data(_enter(u, rng.choice((b"B", b"S")), 100 * rng.randrange(1, 4), b"ALPH",
                              1_000_000 + rng.randrange(-3, 4) * 100), urn)
        if urn % 7 == 0:
            live.receive_data(_cancel(urn - 6, 100), urn)
        for x in (live, other):
            for cmd in x.take_commands():
                ev: list = []
                engine.apply(cmd, ev)
                live.on_events(urn, ev)
                other.on_events(urn, ev)
    again = _session(1, "a", 1)
    restore_ouch_session(again, live.stream)
    assert again.next_sequence == live.next_sequence
    assert again.last_user_ref_num == live.last_user_ref_num
    assert again._by_urn == live._by_urn
    assert set(again.orders) == set(live.orders)
    for oid, o in live.orders.items():
        r = again.orders[oid]
        for f in ("urn", "locate", "side", "price", "leaves", "filled", "qty", "ref", "cl_ord_id", "tif"):
            assert getattr(r, f) == getattr(o, f), f


def test_journal_ignores_what_follows_the_last_mark(tmp_path) -> None:
    path = str(tmp_path / "journal.bin")
    with open(path, "wb") as f:
        f.write(journal_record(J_OUCH_COUNT, (1).to_bytes(4, "little") + (1).to_bytes(8, "little")))
        f.write(mark_record({0: 5}))
        f.write(journal_record(J_OUCH_COUNT, (1).to_bytes(4, "little") + (2).to_bytes(8, "little")))  # no mark
        f.write(b"\x99\x00")                                                  # torn
    st = read_journal(path)
    assert st.ouch == {1: 1} and st.marks == {0: 5}
    assert st.valid_end == len(journal_record(J_OUCH_COUNT, b"." * 12)) + len(mark_record({0: 5}))


def test_command_records_round_trip() -> None:
    cmds: list[NewOrder | CancelOrder] = [NewOrder(7 << 32 | 1, 1, 0, 100, 1_500_000, firm=7, session=7, cl_ord_id="X"),
                                          CancelOrder(9, 7, 7, "Y")]
    recs = [C.encode_command(c) for c in cmds]
    block = b"".join(len(r).to_bytes(2, "little") + r.ljust(126, b"\0") for r in recs)
    out: list[Any] = []
    assert C.decode_command_block(block, 2, 128, out) == 0
    assert [(type(c), c.order_id, c.cl_ord_id) for c in out] == [(type(c), c.order_id, c.cl_ord_id) for c in cmds]
    assert C.max_record_size() <= C.MIN_SLOT_SIZE - 2


def test_auction_fills_cross_the_ring_and_feed_only_events_stay_behind() -> None:
    from appliance.catalogue import Ev, Resume
    from appliance.matching.rules import TradingRules
    from appliance.model import TS_HALTED

    engine = Engine(INS, rules=TradingRules(start_state=TS_HALTED, reopen_call_ns=0))
    direct = [_session(1, "a", 1), _session(2, "b", 2)]
    via_ring = [_session(1, "a", 1), _session(2, "b", 2)]
    for s in direct + via_ring:
        _login(s)
    enc = C.EventEncoder({1: 0, 2: 0}, 1)
    dec = C.EventDecoder([1, 2])
    kinds: list[int] = []
    decoded: list = []

    def run(seq: int, cmd) -> None:
        events: list = []
        engine.apply(cmd, events)
        kinds.extend(ev[0] for ev in events)
        for s in direct:
            s.on_events(seq, events)
        out: list[list[bytes]] = [[]]
        enc.encode([(seq, seq, cmd, events)], out)
        for _gseq, ts, evs in dec.feed(out[0]):
            decoded.extend(evs)
            for s in via_ring:
                s.on_events(ts, evs)

    seq = 1
    for i, side in ((0, b"B"), (1, b"S")):
        direct[i].receive_data(_enter(1, side, 300, b"ALPH", 1_000_000), seq)
        via_ring[i].receive_data(_enter(1, side, 300, b"ALPH", 1_000_000), seq)
        via_ring[i].take_commands()
        for cmd in direct[i].take_commands():
            run(seq, cmd)
            seq += 1
    assert Ev.CROSS_EXECUTED not in kinds
    run(seq, Resume(1))
    assert Ev.CROSS_EXECUTED in kinds
    assert len([k for k in kinds if k > 8]) > 1           # state changes, the uncross...
    assert [ev[0] for ev in decoded].count(Ev.CROSS_EXECUTED) == 1
    assert all(ev[0] <= 8 or ev[0] == Ev.CROSS_EXECUTED for ev in decoded)
    for a, b in zip(direct, via_ring):
        assert a.stream == b.stream
    for s in direct:   # one 'E' each, liquidity flag 'H' (a halt/reopening cross)
        execs = [m for m in s.stream if m[:1] == b"E"]
        assert len(execs) == 1 and execs[0][25:26] == b"H"


def test_a_command_of_a_firm_no_gateway_owns_is_answered_where_it_came_from() -> None:
    """Its reject goes to the gateway it came from (``origin``); with one gateway there is no need
    to say which; with several and no origin it is counted as dropped."""
    from appliance import reasons as R
    from appliance.catalogue import Ev
    stray = NewOrder(7, 1, 1, 100, 1_000_000, firm=9)
    results = [(0, 5, stray, [(Ev.REJECTED, stray, R.SESSION_MALFORMED)])]
    one: list[list[bytes]] = [[]]
    C.EventEncoder({1: 0}, 1).encode(results, one)
    assert [r[0] for r in one[0]] == [Ev.REJECTED | C.LAST]
    two: list[list[bytes]] = [[], []]
    C.EventEncoder({1: 0}, 2).encode(results, two, {id(stray): 1})
    assert two[0] == [] and two[1] == one[0]
    enc = C.EventEncoder({1: 0}, 2)
    none: list[list[bytes]] = [[], []]
    enc.encode(results, none)
    assert none == [[], []] and enc.dropped == 1
