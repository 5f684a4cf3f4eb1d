"""The gateway's storage at constant cost and bounded memory: the outbound message stores (file
format, torn tails, truncation, nothing of the day held in memory), the FIX state journalled as
increments (constant bytes per message, compaction, recovery), the bounded ClOrdID window, and a
FIX session surviving kill -9 of `matchwire run` with its sequence numbers, resend ability and
ClOrdIDs. Sizes and object counts are asserted, never timings."""
from __future__ import annotations

import dataclasses
import gc
import os
import random
import stat
import time
import tracemalloc
from typing import Any

import pytest

from appliance.catalogue import Ev
from appliance.catalogue import NewOrder
from appliance.gateway import fix
from appliance.gateway.journal import (
    J_FIX_CLORD,
    J_FIX_ORDER,
    fix_increments,
    fix_snapshot,
    journal_record,
    mark_record,
    read_journal,
    write_journal,
)
from appliance.gateway.store import READ_AHEAD, FixSentStore, MessageStore
from appliance.model import Instrument
from feeds.store import FILE_HEADER_SIZE, INDEX_ENTRY, FeedStore

LABEL = b"0000000042"
INS = [Instrument("AAPL", 1, 100)]


def _messages(n: int, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    return [bytes([65 + i % 26]) + rnd.randbytes(rnd.randint(0, 90)) for i in range(n)]


# ================================================================================================
# The message store
# ================================================================================================

def test_store_reads_any_range_by_sequence_and_is_a_feed_store_on_file(tmp_path: Any) -> None:
    msgs = _messages(3000)
    s = MessageStore(str(tmp_path), LABEL, "ouch-X")
    for i, m in enumerate(msgs):
        s.append(m)
        if i % 7 == 0:
            s.flush()
    assert len(s) == 3000 and s.count < 3000              # the last appends are pending
    assert s.get(3000) == msgs[-1] and s.read(2990, 50) == msgs[2989:]
    s.flush()
    rnd = random.Random(3)
    for _ in range(300):
        first = rnd.randint(1, 3000)
        n = rnd.randint(1, 400)
        assert s.read(first, n) == msgs[first - 1:first - 1 + n]
        assert s.get(first) == msgs[first - 1]
    assert list(s[1500:]) == msgs[1500:] and list(s) == msgs
    assert s.get(0) is None and s.get(3001) is None
    s.close()
    for suffix in (".feed", ".idx"):   # private to the service's user
        assert stat.S_IMODE(os.stat(tmp_path / ("ouch-X" + suffix)).st_mode) == 0o600
    # The same files read by the feed store: one index entry per message.
    assert os.path.getsize(tmp_path / "ouch-X.idx") == 3000 * INDEX_ENTRY.size
    with FeedStore(str(tmp_path), LABEL, writable=False, name="ouch-X") as f:
        assert f.count == 3000 and f.read(1, 3000) == msgs


def test_store_repairs_a_torn_tail_and_a_lagging_index_and_truncates(tmp_path: Any) -> None:
    msgs = _messages(500, seed=2)
    s = MessageStore(str(tmp_path), LABEL, "fix-A")
    for m in msgs:
        s.append(m)
    s.flush()
    s.close()
    idx = tmp_path / "fix-A.idx"
    data = tmp_path / "fix-A.feed"
    with open(idx, "r+b") as f:             # the index lost its last 40 entries (died between writes)
        f.truncate(460 * INDEX_ENTRY.size)
    with open(data, "ab") as f:             # and a torn block after the last whole one
        f.write(b"\x00\x30abc")
    s = MessageStore(str(tmp_path), LABEL, "fix-A")
    assert s.count == 500 and s.read(1, 500) == msgs
    assert any("rebuilt 40" in n for n in s.notes) and any("torn" in n for n in s.notes)
    assert os.path.getsize(idx) == 500 * INDEX_ENTRY.size
    s.truncate(321)                          # the journal committed 321
    assert s.count == 321 and s.get(321) == msgs[320] and s.get(322) is None
    s.append(b"new")
    s.flush()
    assert s.read(320, 5) == [msgs[319], msgs[320], b"new"]
    s.clear()
    assert len(s) == 0 and os.path.getsize(data) == FILE_HEADER_SIZE and os.path.getsize(idx) == 0
    s.close()


def test_store_memory_does_not_grow_with_the_messages_it_holds(tmp_path: Any) -> None:
    """200k messages appended, flushed and read back at random: what the store holds in memory
    (and what Python allocated for it) is the same after 20k and after 200k."""
    s = MessageStore(str(tmp_path), LABEL, "ouch-M")
    msg = b"A" + b"x" * 47
    rnd = random.Random(4)

    def run(n: int) -> None:
        for i in range(n):
            s.append(msg)
            if i % 4 == 3:
                s.flush()
            if i % 1000 == 0:
                s.get(rnd.randint(1, len(s)))
        s.flush()

    tracemalloc.start()
    try:
        run(20_000)
        gc.collect()
        after_20k = tracemalloc.get_traced_memory()[0]
        run(180_000)
        gc.collect()
        after_200k = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(s) == 200_000 and s.get(123_456) == msg
    assert s.memory_bytes() <= READ_AHEAD * len(msg)
    # 180k more messages of 48 bytes would be 8.6 MB in a list; a few KB of noise is allowed.
    assert after_200k - after_20k < 64 * 1024, (after_20k, after_200k)
    s.close()


def test_fix_sent_store_is_what_the_session_expects(tmp_path: Any) -> None:
    sent = FixSentStore(MessageStore(str(tmp_path), LABEL, "fix-S"))
    sent[1] = "8=FIX.4.4\x019=5\x0135=A\x01"
    sent[2] = "8=FIX.4.4\x01\xe9\x01"
    assert sent.get(2) == "8=FIX.4.4\x01\xe9\x01" and sent.get(3) is None and 2 in sent and 3 not in sent
    with pytest.raises(ValueError):
        sent[5] = "gap"
    sent.clear()
    assert len(sent) == 0
    sent[1] = "again"
    assert dict(sent.items()) == {1: "again"}


# ================================================================================================
# ClOrdIDs: live orders always, done ones in a bounded window
# ================================================================================================

class _Peer:
    def __init__(self) -> None:
        self.seq = 1

    def msg(self, mt: str, *fields: tuple[int, Any]) -> bytes:
        from appliance.gateway.fixcodec import encode
        raw = encode(mt, [(49, "CLNT"), (56, "MWX"), (34, self.seq), (52, "20240131-14:05:09.123"), *fields])
        self.seq += 1
        return raw


def _fix_session(state: fix.FixSessionState | None = None, window: int = 50) -> tuple[fix.FixSession, _Peer]:
    s = fix.FixSession(fix.FixSessionConfig(7 | 1 << 30, "MWX", "CLNT", 7, cl_ord_id_window=window), state, INS)
    p = _Peer()
    s.connection_made(0)
    s.receive_data(p.msg("A", (98, 0), (108, 30)), 0)
    s.data_to_send()
    return s, p


def _order(p: _Peer, cl: str, price: str = "100.00") -> bytes:
    return p.msg("D", (11, cl), (55, "AAPL"), (54, "1"), (60, "20240131-14:05:09.123"), (38, 10), (40, "2"),
                 (44, price), (59, "0"))


def _answers(s: fix.FixSession) -> list[dict[int, str]]:
    from appliance.gateway.fixcodec import FixParser
    return [{t: v.decode("latin-1") if isinstance(v, bytes) else v for t, v in m.fields}  # type: ignore[union-attr]
            for m in FixParser().feed(s.data_to_send())]


def _accept_all(s: fix.FixSession) -> None:
    for cmd in s.take_commands():
        assert isinstance(cmd, NewOrder)
        cmd.ref = cmd.order_id & 0xFFFF
        s.on_events(1, [(Ev.ACCEPTED, cmd, cmd.qty)])


def test_cl_ord_ids_of_live_orders_are_kept_and_of_done_ones_a_bounded_window() -> None:
    s, p = _fix_session(window=50)
    st = s.state
    for i in range(30):                       # 30 live orders
        s.receive_data(_order(p, f"LIVE{i}"), 1)
    _accept_all(s)
    for i in range(2000):                     # 2000 orders refused at once (unknown symbol): done
        s.receive_data(p.msg("D", (11, f"GONE{i}"), (55, "ZZZZ"), (54, "1"), (60, "20240131-14:05:09.123"),
                             (38, 10), (40, "2"), (44, "1.00")), 2)
    s.data_to_send()
    assert len(st.orders) == 30
    assert len(st.cl_ord_ids) <= st.cl_window + 30          # bounded whatever the day's count
    assert all(f"LIVE{i}" in st.cl_ord_ids for i in range(30))
    # A live order's ClOrdID: a duplicate, however long ago it was entered.
    s.receive_data(_order(p, "LIVE0"), 3)
    (er,) = _answers(s)
    assert (er[35], er[150], er[103]) == ("8", "8", "6")
    # A recent done one: a duplicate; one that fell out of the window: new again (documented).
    s.receive_data(_order(p, "GONE1999"), 4)
    (er,) = _answers(s)
    assert (er[150], er[103]) == ("8", "6")
    s.receive_data(_order(p, "GONE0"), 5)
    assert not _answers(s) and len(s.take_commands()) == 1
    # The live orders still answer to their ClOrdIDs (cancel by OrigClOrdID).
    s.receive_data(p.msg("F", (41, "LIVE3"), (11, "CXL3"), (55, "AAPL"), (54, "1"),
                         (60, "20240131-14:05:09.123")), 6)
    assert [type(c).__name__ for c in s.take_commands()] == ["CancelOrder"]


# ================================================================================================
# The journal: increments of constant size, compaction, recovery
# ================================================================================================

def _journal_bytes_per_order(tmp_path: Any, n: int) -> float:
    """Bytes the journal takes per order (entered, accepted: 2 reports), one flush per order."""
    s, p = _fix_session(window=1000)
    recs: list[bytes] = []
    seqs = fix_increments(s.config.session_id, s.state, None, recs)
    start = sum(map(len, recs))
    total = 0
    for i in range(n):
        s.receive_data(_order(p, f"O{i:07d}"), i)
        _accept_all(s)
        if i % 2:                              # half of them done: cancelled by the engine
            from appliance.catalogue import Ev
            o = s.state.orders[(s.config.session_id << 32) | (i + 1)]
            s.on_events(2, [(Ev.CANCELLED, _Stub(o.order_id, s.config.session_id), 10, 0, 0, 0)])
        s.data_to_send()
        out: list[bytes] = []
        seqs = fix_increments(s.config.session_id, s.state, seqs, out)
        out.append(mark_record({0: i}))
        total += sum(map(len, out))
    path = str(tmp_path / f"j{n}.bin")
    fd = write_journal(path, [])
    os.close(fd)
    return (total - start) / n


class _Stub:
    def __init__(self, order_id: int, session: int) -> None:
        self.order_id = order_id
        self.session = session


def test_journal_bytes_per_message_are_constant(tmp_path: Any) -> None:
    small = _journal_bytes_per_order(tmp_path, 1_000)
    large = _journal_bytes_per_order(tmp_path, 20_000)
    # Constant: the 20x longer day costs the same per order (the ids grow by a digit or two).
    assert abs(large - small) / small < 0.05, (small, large)
    assert small < 600


def test_journal_snapshot_and_increments_recover_the_same_state(tmp_path: Any) -> None:
    s, p = _fix_session(window=40)
    sid = s.config.session_id
    path = str(tmp_path / "journal.bin")
    recs: list[bytes] = []
    seqs = fix_snapshot(sid, s.state, recs)
    recs.append(mark_record({}))
    fd = write_journal(path, recs)
    for i in range(300):
        s.receive_data(_order(p, f"C{i}"), i)
        if i % 3:
            _accept_all(s)
        else:
            s.take_commands()
            s.state.orders.pop((sid << 32) | (i + 1), None)   # gone before it was accepted
            s.state.touch((sid << 32) | (i + 1))
        s.data_to_send()
        out: list[bytes] = []
        seqs = fix_increments(sid, s.state, seqs, out)
        out.append(mark_record({0: i + 1}))
        os.write(fd, b"".join(out))
        if i == 150:   # compaction in the middle of the day
            os.close(fd)
            out = []
            seqs = fix_snapshot(sid, s.state, out)
            out.append(mark_record({0: i + 1}))
            fd = write_journal(path, out)
    os.write(fd, b"".join(fix_increments_after_change(s, seqs)))   # unmarked: ignored
    os.close(fd)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    js = read_journal(path)
    assert js.marks == {0: 300} and any("after the last mark" in n for n in js.notes)
    back = js.fix[sid].state()
    back.set_cl_window(40)
    st = s.state
    assert (back.next_in, back.next_out, back.next_order, back.next_exec) == (
        st.next_in, st.next_out, st.next_order, st.next_exec - 0)
    assert {k: o.to_list() for k, o in back.orders.items()} == {k: o.to_list() for k, o in st.orders.items()}
    assert "LATE" not in back.cl_ord_ids
    assert {o.cl_ord_id for o in st.orders.values()} <= set(back.cl_ord_ids)    # every live order's
    assert [f"C{i}" for i in range(290, 300)] == [c for c in back.cl_ord_ids if c in {f"C{i}" for i in range(290, 300)}]
    assert len(back.cl_ord_ids) <= 40 + len(back.orders)


def test_a_journalled_fix_order_is_the_compact_json_array_and_one_written_as_before_is_read(tmp_path: Any) -> None:
    import json

    s, p = _fix_session(window=40)
    sid = s.config.session_id
    s.receive_data(_order(p, "C\u00e9-1"), 0)   # a ClOrdID outside ASCII (FIX: latin-1)
    _accept_all(s)
    s.data_to_send()
    recs: list[bytes] = []
    fix_snapshot(sid, s.state, recs)
    (order,) = s.state.orders.values()
    rec = next(r for r in recs if r[8] == J_FIX_ORDER)
    assert json.loads(rec[13:]) == order.to_list()          # any JSON reader reads it
    # a journal whose order record the standard library wrote (ASCII escapes) is read the same
    old = journal_record(J_FIX_ORDER, rec[9:13] + json.dumps(order.to_list(), separators=(",", ":")).encode())
    assert old != rec and b"\\u00e9" in old
    for records in ([rec], [old]):
        path = str(tmp_path / "journal.bin")
        os.close(write_journal(path, [*(r for r in recs if r[8] != J_FIX_ORDER), *records, mark_record({0: 1})]))
        back = read_journal(path).fix[sid].state()
        assert [o.to_list() for o in back.orders.values()] == [order.to_list()]
        assert back.orders[order.order_id].cl_ord_id == "C\u00e9-1"


def fix_increments_after_change(s: fix.FixSession, seqs: Any) -> list[bytes]:
    s.state.remember_cl_ord_id("LATE", 0)
    out: list[bytes] = []
    fix_increments(s.config.session_id, s.state, seqs, out)
    assert any(r[8] == J_FIX_CLORD for r in out)
    return out


# ================================================================================================
# Through `matchwire run`: kill -9, restart, the FIX session goes on
# ================================================================================================

@pytest.mark.timeout(180)
def test_fix_session_survives_kill_9_with_sequences_resend_and_cl_ord_ids(tmp_path: Any) -> None:
    import simplefix

    from appliance.gateway import ouch
    from test_fullstack import Fix, Stack
    from tools.demo import loopback_config

    cfg = loopback_config(str(tmp_path), rng=random.Random())
    st = Stack(str(tmp_path), cfg)
    st.start()
    try:
        f = Fix(st.gw.fix_port, "BRVO")
        assert f.logon("brvo-pw").get(34) == b"1"                          # ours 1, theirs 1
        f.order("K1", "1", 10, "100.00")                                     # 2 -> 2 ER new
        f.wait(lambda m: m.get(35) == b"8" and m.get(11) == b"K1")
        f.order("K2", "1", 10, "101.00")                                     # 3 -> 3 ER new
        f.wait(lambda m: m.get(35) == b"8" and m.get(11) == b"K2")
        f.send("1", (112, "PING"))                                           # 4 -> 4 Heartbeat
        f.wait(lambda m: m.get(35) == b"0")
        f.send("F", (41, "K2"), (11, "X2"), (55, "ALPH"), (54, "1"), (60, "20240131-14:05:09.123"))  # 5 -> 5
        f.wait(lambda m: m.get(35) == b"8" and m.get(150) == b"4")
        f.order("K1", "1", 10, "100.00")                                     # 6 -> 6 duplicate
        dup = f.wait(lambda m: m.get(35) == b"8" and m.get(150) == b"8")
        assert dup.get(103) == b"6"
        sent_before = {int(m.get(34)): m for m in f.msgs}
        assert sorted(sent_before) == [1, 2, 3, 4, 5, 6]
        a = st.ouch("alfa", "alfa-pw")
        a.enter(1, b"S", 100, "ALPH", 1_600_000)
        a.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted))
        n_ouch = a.next_seq - 1
        st.kill()                                                            # kill -9, no logout

        gwdir = os.path.join(st.state, "gateways", st.gw.name)
        for fn in ("journal.bin", "fix-BRVO.feed", "fix-BRVO.idx", "ouch-ALFA.feed", "ouch-ALFA.idx"):
            assert stat.S_IMODE(os.stat(os.path.join(gwdir, fn)).st_mode) == 0o600, fn
        st.start()
        f2 = Fix(st.gw.fix_port, "BRVO", next_out=7)
        logon = f2.logon("brvo-pw")
        assert (logon.get(35), logon.get(34), logon.get(141)) == (b"A", b"7", None)   # no reset, no gap
        f2.send("2", (7, 1), (16, 0))                                        # everything, across the restart
        f2.wait(lambda m: m.get(35) == b"4" and m.get(34) == b"7")
        resent = [(int(m.get(34)), m.get(35), m.get(43), m.get(36) and int(m.get(36)))
                  for m in f2.msgs[1:]]
        assert resent == [(1, b"4", b"Y", 2), (2, b"8", b"Y", None), (3, b"8", b"Y", None), (4, b"4", b"Y", 5),
                          (5, b"8", b"Y", None), (6, b"8", b"Y", None), (7, b"4", b"Y", 8)]
        for m in f2.msgs[1:]:
            seq = int(m.get(34))
            if m.get(35) == b"8":       # the very reports, with their original SendingTime
                before: simplefix.FixMessage = sent_before[seq]
                assert (m.get(11), m.get(150), m.get(17), m.get(122)) == (
                    before.get(11), before.get(150), before.get(17), before.get(52))
        # ClOrdIDs and orders survived: K1 is a duplicate, and still cancellable.
        f2.order("K1", "1", 10, "100.00")
        dup = f2.wait(lambda m: m.get(35) == b"8" and m.get(150) == b"8" and m.get(43) is None)
        assert (dup.get(34), dup.get(103)) == (b"8", b"6")
        f2.send("F", (41, "K1"), (11, "X1"), (55, "ALPH"), (54, "1"), (60, "20240131-14:05:09.123"))
        done = f2.wait(lambda m: m.get(35) == b"8" and m.get(150) == b"4" and m.get(43) is None)
        assert (done.get(11), done.get(41), done.get(34)) == (b"X1", b"K1", b"9")
        # The OUCH stream of the day is replayed from its store after the restart.
        c = st.ouch("alfa", "alfa-pw", sequence=1)
        deadline = time.monotonic() + 10
        while len(c.messages) < n_ouch and time.monotonic() < deadline:
            c.pump(0.2)
        assert [seq for seq, _ in c.messages][:n_ouch] == list(range(1, n_ouch + 1))
        assert any(isinstance(m, ouch.L.OrderAccepted) and m.user_ref_num == 1 for _, m in c.messages)
        f2.close()
        c.close()
        assert st.stop() == 0
    finally:
        if st.proc is not None and st.proc.poll() is None:
            os.killpg(st.proc.pid, 9)


# ================================================================================================
# A login's replay goes out a chunk at a time
# ================================================================================================

@pytest.mark.parametrize("on_file", [False, True], ids=["list", "store"])
def test_ouch_replay_of_a_long_day_is_paced_and_complete(tmp_path: Any, on_file: bool) -> None:
    from appliance.gateway import ouch
    from feeds import soupbintcp as soup

    s = ouch.OuchSession(1, {"u": ("pw", 1)}, INS, session_name="S1")
    if on_file:
        store = MessageStore(str(tmp_path), LABEL, "ouch-S1")
        s.stream = store
    for i in range(5000):                       # the day so far, sequenced while nobody was logged in
        s.start_of_day(i)
    if on_file:
        store.flush()
    s.connection_made(0)
    s.receive_data(soup.encode_login_request("u", "pw", "", 1), 0)
    got: list[bytes] = []
    parser = soup.FrameParser()
    first = s.data_to_send()
    assert len(first) < 3 * ouch.REPLAY_CHUNK * 20 and s.replaying       # not the whole day at once
    pieces = [first]
    s.start_of_day(9999)                        # sequenced during the replay: it comes after, in order
    s.end_of_session(10_000)                    # 'E' in the stream, 'Z' only after the replay
    while s.replaying:
        pieces.append(s.data_to_send())
        assert len(pieces) < 100
    pieces.append(s.data_to_send())
    for kind, payload in parser.feed(b"".join(pieces)):
        got.append(kind + payload[:1] if kind == soup.SEQUENCED_DATA else kind)
    assert got[0] == soup.LOGIN_ACCEPTED
    assert got[1:-1] == [soup.SEQUENCED_DATA + b"S"] * 5002 and got[-1] == soup.END_OF_SESSION
    assert s.should_close


def test_fix_resend_of_a_long_day_is_paced_and_what_is_sent_meanwhile_follows(tmp_path: Any) -> None:
    from appliance.gateway.fixcodec import FixParser

    st = fix.FixSessionState()
    st.sent = FixSentStore(MessageStore(str(tmp_path), LABEL, "fix-R"))
    s, p = _fix_session(st)                   # our Logon: MsgSeqNum 1
    for i in range(3000):                      # 3000 reports (orders refused at once), sent while connected
        s.receive_data(p.msg("D", (11, f"R{i}"), (55, "ZZZZ"), (54, "1"), (60, "20240131-14:05:09.123"),
                             (38, 10), (40, "2"), (44, "1.00")), 2)
    s.data_to_send()
    st.sent.store.flush()
    assert st.next_out == 3002
    s.receive_data(p.msg("2", (7, 1), (16, 0)), 3)
    first = s.data_to_send()
    assert s.replaying and first.count(b"\x0143=Y\x01") < 3 * fix.RESEND_CHUNK       # not the whole day at once
    s.receive_data(p.msg("1", (112, "DURING")), 4)          # answered after the resend, in order
    pieces = [first]
    while s.replaying:
        pieces.append(s.data_to_send())
        assert len(pieces) < 100
    pieces.append(s.data_to_send())
    msgs = [m for m in FixParser().feed(b"".join(pieces))]
    seqs = [int(m.get(34) or 0) for m in msgs]
    assert seqs == [1] + list(range(2, 3002)) + [3002]      # gap fill for the Logon, 3000 resent, the Heartbeat
    assert msgs[0].msg_type == "4" and msgs[0].get(36) == "2"
    assert all(m.get(43) == "Y" for m in msgs[1:-1])
    last = msgs[-1]
    assert (last.msg_type, last.get(112), last.get(43)) == ("0", "DURING", None)


# ================================================================================================
# The gateway itself (in process, an engine behind the ring codecs): bounded journal, restart
# ================================================================================================

class _EngineRing:
    """The command ring's producer side, applying each command to an engine at once; the event
    records wait in ``queue`` for the gateway to poll."""

    def __init__(self, gw: Any, cfg: Any) -> None:
        from appliance import codec_ring as C
        from appliance.matching.engine import Engine
        self.C = C
        self.engine = Engine([i.instrument() for i in cfg.instruments])
        self.enc = C.EventEncoder({f.id: 0 for f in cfg.firms}, 1)
        self.queue: list[bytes] = []
        self.seq = 0

    def try_publish(self, rec: bytes) -> bool:
        cmd = self.C.decode_command(rec)
        ev: list[Any] = []
        self.seq += 1
        self.engine.apply(cmd, ev)
        out: list[list[bytes]] = [[]]
        self.enc.encode([(self.seq, self.seq, cmd, ev)], out)
        self.queue.extend(out[0])
        return True

    def consumer_waiting(self) -> bool:
        return False          # applied at once, as by a spinning partition: no doorbell


class _Sink:
    closed = False
    write_paused = False
    transport = None

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)

    def close(self) -> None:
        pass


def _gateway(cfg: Any, state: str) -> tuple[Any, _EngineRing]:
    from appliance.gateway.server import GatewayServer
    gw = GatewayServer(cfg, cfg.gateways[0].name, state)
    ring = _EngineRing(gw, cfg)
    gw.cmd_out = [ring]   # type: ignore[list-item]  # a stand-in for the command ring's producer
    gw.evt_in = []
    gw.live = [True]
    return gw, ring


def test_gateway_journal_stays_bounded_and_a_restart_restores_every_session(tmp_path: Any,
                                                                            monkeypatch: Any) -> None:
    from appliance.gateway import state as gwstate
    from appliance.gateway.fixcodec import encode
    from feeds import soupbintcp as soup
    from tools.demo import OuchClient, loopback_config

    monkeypatch.setattr(gwstate, "COMPACT_BYTES", 64 * 1024)
    cfg = loopback_config(str(tmp_path), rng=random.Random(1))
    # The firms' order-rate limits count wall-clock time, and this loop enters orders as fast as
    # the host runs it: without them every order is accepted on any host, fast or loaded.
    cfg = dataclasses.replace(cfg, firms=tuple(
        dataclasses.replace(f, limits=dataclasses.replace(f.limits, rate_per_second=None, burst=None))
        for f in cfg.firms))
    state = str(tmp_path / "state")
    gw, ring = _gateway(cfg, state)
    ou = next(s for s in gw.slots if s.kind == "ouch" and s.firm.name == "ALFA")
    fx = next(s for s in gw.slots if s.kind == "fix" and s.firm.name == "BRVO")
    for slot in (ou, fx):
        slot.conn = _Sink()
        slot.session.connection_made(1)
    ou.session.receive_data(soup.encode_login_request("alfa", "alfa-pw"), 1)
    fseq = [1]

    def fmsg(mt: str, *f: tuple[int, Any]) -> bytes:
        raw = encode(mt, [(49, "BRVO"), (56, cfg.gateways[0].fix_comp_id), (34, fseq[0]),
                          (52, "20240131-14:05:09.123"), *f])
        fseq[0] += 1
        return raw

    fx.session.receive_data(fmsg("A", (98, 0), (108, 30), (554, "brvo-pw")), 1)
    gw.flush()
    jpath = os.path.join(gw.dir, "journal.bin")
    biggest = 0
    for i in range(1, 4001):
        if i % 2:   # OUCH IOC and FIX IOC buys against an empty book: accepted, then cancelled
            ou.session.receive_data(OuchClient.enter_packet(i, b"B", 100, "ALPH", 1_400_000, tif=b"3"), i)
            gw.after_input(ou)
        else:
            fx.session.receive_data(fmsg("D", (11, f"F{i}"), (55, "ALPH"), (54, "1"), (60, "20240131-14:05:09.123"),
                                         (38, 100), (40, "2"), (44, "140.00"), (59, "3")), i)
            gw.after_input(fx)
        recs = ring.queue[:]
        ring.queue.clear()
        gw.handle_groups(0, gw.decoders[0].feed(recs))
        gw.flush()
        biggest = max(biggest, os.path.getsize(jpath))
    assert gw.counters["journal_compactions"] > 2
    assert biggest < 64 * 1024 + 4096                              # the size bound, plus one flush
    ost, fst = ou.session, fx.session.state
    assert len(ost.stream) == 4000 and fst.next_out == 1 + 1 + 4000  # A + C per OUCH order; Logon + 2 ERs per FIX
    assert ost.stream.memory_bytes() < 64 * 1024 and fst.sent.store.memory_bytes() < 128 * 1024
    expect = (ost.next_sequence, len(ost.orders), fst.next_in, fst.next_out, fst.next_order, fst.next_exec,
              dict(fst.cl_ord_ids), gw.marks)
    tail = ost.stream.read(3999, 2)
    gw.close()   # as a kill would leave it: no orderly stop, nothing more written

    again, _ = _gateway(cfg, state)
    o2 = next(s for s in again.slots if s.kind == "ouch" and s.firm.name == "ALFA").session
    f2 = next(s for s in again.slots if s.kind == "fix" and s.firm.name == "BRVO").session.state
    assert (o2.next_sequence, len(o2.orders), f2.next_in, f2.next_out, f2.next_order, f2.next_exec,
            dict(f2.cl_ord_ids), again.marks) == expect
    assert f2.sent.get(3).startswith("8=FIX.4.4") and "\x0135=8\x01" in f2.sent.get(3)
    assert list(o2.stream[3998:]) == tail
    again.close()
