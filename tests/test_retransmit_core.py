"""The gap-fill servers' sans-IO parts on a fake clock: quotas, the store read they use, the
MoldUDP64 re-request core (every documented answer), the SoupBinTCP server session (login,
heartbeats, timeouts, back-pressure, malformed input) and the replay source over a growing store."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from feeds.moldudp64 import PacketBuilder, Session, encode_rerequest, parse_packet, split_blocks
from feeds.soupbintcp import (
    FrameParser,
    encode_client_heartbeat,
    encode_debug,
    encode_login_request,
    encode_logout_request,
    encode_packet,
    encode_unsequenced_data,
    parse_login_accepted,
)
from feeds.store import FeedStore
from retransmit.quota import DAY_NS, MINUTE_NS, SECOND_NS, ClientQuotas, QuotaLimits
from retransmit.replay import ReplaySource, blocks_to_sequenced
from retransmit.rerequest import OUTCOMES, RerequestCore
from retransmit.soupclient import SoupClientSession
from retransmit.soupserver import (
    CLOSED,
    LOGIN,
    STREAMING,
    WAITING,
    SoupServerSession,
    SoupServerSettings,
    parse_replay_only,
)
from retransmit.stores import StoreSet, valid_session

SESSION = b"2311140130"
S = 1_000_000_000
MS = 1_000_000


def messages(n: int, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    return [bytes([65 + i % 26]) + rnd.randbytes(rnd.randint(5, 40)) for i in range(n)]


def fill(store: FeedStore, msgs: list[bytes], max_payload: int = 400) -> None:
    b = PacketBuilder(Session(store.session, store.count + 1), max_payload)
    b.add_many(msgs)
    store.append_packets(b.flush())


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Path, list[bytes]]:
    msgs = messages(3000)
    with FeedStore(str(tmp_path), SESSION) as store:
        fill(store, msgs[:1000])
        store.append_messages(msgs[1000:1500])      # one index entry for many messages
        fill(store, msgs[1500:])
    return tmp_path, msgs


# ------------------------------------------------------------------------------------------------
# Quotas
# ------------------------------------------------------------------------------------------------

def test_quotas_per_second_minute_and_day_in_fixed_windows() -> None:
    q = ClientQuotas(QuotaLimits(per_second=100, per_minute=250, per_day=400))
    a, b = ("127.0.0.1", 1000), ("127.0.0.1", 1001)
    t = 10 * DAY_NS
    assert q.grant(a, 60, t) == 60
    assert q.grant(a, 60, t + 1) == 40              # the second's 100 used up: clipped
    assert q.grant(a, 5, t + 2) == 0
    assert q.grant(b, 100, t + 3) == 100            # per client
    assert q.grant(a, 100, t + SECOND_NS) == 100    # a new second
    assert q.grant(a, 100, t + 2 * SECOND_NS) == 50  # the minute's 250
    assert q.grant(a, 100, t + MINUTE_NS) == 100
    assert q.grant(a, 100, t + MINUTE_NS + SECOND_NS) == 50   # the day's 400
    assert q.grant(a, 1, t + 2 * MINUTE_NS) == 0
    assert q.grant(a, 1, t + DAY_NS) == 1           # a new day
    unlimited = ClientQuotas(QuotaLimits(0, 0, 0))
    assert unlimited.grant(a, 10**9, t) == 10**9


def test_a_full_client_table_refuses_new_clients_until_a_day_ends() -> None:
    q = ClientQuotas(QuotaLimits(), max_clients=2)
    t = 5 * DAY_NS
    assert q.grant(1, 10, t) == 10 and q.grant(2, 10, t) == 10
    assert q.grant(3, 10, t) == 0 and q.refused_table_full == 1
    assert q.grant(1, 10, t) == 10                   # known clients go on
    assert q.grant(3, 10, t + DAY_NS) == 10 and len(q) == 1


# ------------------------------------------------------------------------------------------------
# The store read of the servers
# ------------------------------------------------------------------------------------------------

def test_read_raw_is_the_stored_blocks_of_any_range(stored: tuple[Path, list[bytes]]) -> None:
    path, msgs = stored
    with FeedStore.open_reader(str(path), SESSION) as store:
        rnd = random.Random(3)
        ranges = [(1, 3000), (1, 1), (3000, 1), (2999, 10), (1000, 501), (1001, 500)]
        ranges += [(rnd.randint(1, 3000), rnd.randint(1, 700)) for _ in range(300)]
        for first, count in ranges:
            assert store.read_raw(first, count) == store.read_blocks(first, count), (first, count)
        assert store.read_raw(3001, 5) == b"" and store.read_raw(0, 5) == b"" and store.read_raw(5, 0) == b""


def test_a_reader_follows_a_store_that_grows(tmp_path: Path) -> None:
    msgs = messages(900)
    writer = FeedStore(str(tmp_path), SESSION)
    fill(writer, msgs[:100])
    stores = StoreSet([str(tmp_path)])
    reader = stores.get(SESSION, 0)
    assert reader is not None and reader.count == 100
    for k in range(100, 900, 80):
        fill(writer, msgs[k:k + 80])
        assert stores.available(reader, k + 80) == k + 80
        assert split_blocks(reader.read_raw(k - 5, 86)) == msgs[k - 6:k + 80]
    writer.close()
    stores.close()


def test_session_names_from_the_network_cannot_name_other_files(tmp_path: Path) -> None:
    (tmp_path / "x.feed").write_bytes(b"not a store")
    stores = StoreSet([str(tmp_path)])
    for bad in (b"../../etc/", b"x\x00       ", b"..        ", b"          ", b"\xff" * 10, b"x", b"abc/def   "):
        assert stores.get(bad, 0) is None
    assert not valid_session(b"x.feed    ") and valid_session(b"2311140130") and valid_session(b"ABC       ")
    assert stores.get(b"x         ", 0) is None         # a file that is no store: unknown
    assert stores.opened == 0


# ------------------------------------------------------------------------------------------------
# The re-request core: every documented answer
# ------------------------------------------------------------------------------------------------

def rerequest_core(path: Path, **kw: Any) -> RerequestCore:
    quotas = kw.pop("quotas", QuotaLimits())
    return RerequestCore(StoreSet([str(path)]), ClientQuotas(quotas), **kw)


def answer(core: RerequestCore, first: int, count: int, client: Any = ("127.0.0.1", 5), now: int = 0,
           session: bytes = SESSION) -> list[bytes]:
    return [m for d in core.handle(encode_rerequest(session, first, count), client, now)
            for m in parse_packet(d).messages]


def test_an_answer_is_ordinary_datagrams_with_the_messages_asked_for(stored: tuple[Path, list[bytes]]) -> None:
    path, msgs = stored
    core = rerequest_core(path, max_payload=300)
    datagrams = core.handle(encode_rerequest(SESSION, 990, 600), ("127.0.0.1", 5), 0)
    seq = 990
    for d in datagrams:
        p = parse_packet(d)
        assert p.session == SESSION and p.sequence == seq and len(d) <= 300
        assert p.messages == msgs[seq - 1:seq - 1 + p.message_count]
        seq += p.message_count
    assert seq == 1590
    c = core.counters
    assert (c["requests"], c["answered"], c["messages"], c["datagrams"]) == (1, 1, 600, len(datagrams))


def test_defined_answers_for_unknown_session_not_yet_published_purged_clipped_and_over_quota(
        stored: tuple[Path, list[bytes]]) -> None:
    path, msgs = stored
    core = rerequest_core(path, max_count=100, retain_messages=2000,
                          quotas=QuotaLimits(per_second=250, per_minute=0, per_day=0))
    c = core.counters
    assert answer(core, 5, 10, session=b"2311140199") == [] and c["unknown_session"] == 1
    assert answer(core, 3001, 10) == [] and c["not_yet_published"] == 1
    assert answer(core, 2995, 10) == msgs[2994:] and c["partial"] == 1          # what exists
    assert answer(core, 1000, 10) == [] and c["purged"] == 1                   # older than 3000 - 2000
    assert answer(core, 1001, 10) == msgs[1000:1010]
    assert answer(core, 1100, 65534) == msgs[1099:1199] and c["clipped"] == 1   # huge count: the first 100
    # the quota (250 a second) was charged 6 + 10 + 100; 134 left this second
    assert answer(core, 1200, 100) == msgs[1199:1299]
    assert answer(core, 1300, 100) == msgs[1299:1333] and c["over_quota"] == 1 and c["quota_refused_messages"] == 66
    assert answer(core, 1400, 100) == [] and c["over_quota"] == 2 and c["quota_refused"] == 1
    assert answer(core, 1400, 100, client=("127.0.0.2", 5)) == msgs[1399:1499]  # another client
    assert answer(core, 1400, 100, now=S) == msgs[1399:1499]                     # the next second
    assert set(c) == set(OUTCOMES)


def test_malformed_requests_random_bytes_wrong_lengths_and_huge_counts_never_raise(
        stored: tuple[Path, list[bytes]]) -> None:
    path, msgs = stored
    core = rerequest_core(path)
    rnd = random.Random(11)
    bad = [b"", b"x", SESSION + b"\x00" * 9, SESSION + b"\x00" * 11, encode_rerequest(SESSION, 1, 5) * 2,
           SESSION + (0).to_bytes(8, "big") + (5).to_bytes(2, "big"),       # sequence 0
           SESSION + (1).to_bytes(8, "big") + (0).to_bytes(2, "big"),       # count 0
           SESSION + (1).to_bytes(8, "big") + b"\xff\xff",                  # count 0xFFFF
           SESSION + b"\xff" * 8 + (5).to_bytes(2, "big")]                  # sequence 2^64-1
    bad += [rnd.randbytes(rnd.randint(0, 64)) for _ in range(2000)]
    bad += [rnd.randbytes(20) for _ in range(2000)]
    bad += [SESSION + rnd.randbytes(10) for _ in range(2000)]
    for d in bad:
        core.handle(d, ("127.0.0.1", 9), 0)
    c = core.counters
    assert c["requests"] == len(bad)
    assert c["malformed"] >= 1900 and c["unknown_session"] >= 1900 and c["not_yet_published"] > 1000
    # every request ends in exactly one outcome
    assert c["requests"] == sum(c[k] for k in ("malformed", "unknown_session", "purged", "not_yet_published",
                                                 "quota_refused", "answered"))
    assert answer(core, 1, 3) == msgs[:3]         # and it still answers


# ------------------------------------------------------------------------------------------------
# The SoupBinTCP server session
# ------------------------------------------------------------------------------------------------

class FakeStream:
    def __init__(self, msgs: list[bytes], end: bool = True) -> None:
        self.session = SESSION
        self.next_seq = 1
        self.finished = False
        self.msgs = list(msgs)
        self.end = end
        self.closed = False

    def produce(self, now_ns: int, max_bytes: int) -> bytes:
        out = b""
        while self.msgs and len(out) < max_bytes:
            m = self.msgs.pop(0)
            out += encode_packet(b"S", m)
            self.next_seq += 1
        if not self.msgs and self.end:
            self.finished = True
        return out

    def close(self) -> None:
        self.closed = True


class FakeSource:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: list[Any] = []

    def open_stream(self, request: Any, replay_only: int | None, now_ns: int) -> Any:
        self.asked.append((request, replay_only))
        return self.answer() if callable(self.answer) else self.answer


SETTINGS = SoupServerSettings("mdata", "secret", send_buffer_bytes=1000, chunk_bytes=1000)


def packets(data: bytes) -> list[tuple[bytes, bytes]]:
    return [(p.type, p.payload) for p in FrameParser().feed(data)]


def login(user: str = "mdata", pw: str = "secret", session: str = "", seq: int = 1) -> bytes:
    return encode_login_request(user, pw, session, seq)


def test_login_accepted_then_the_stream_then_end_of_session() -> None:
    stream = FakeStream([b"m%d" % i for i in range(100)])
    src = FakeSource(stream)
    s = SoupServerSession(SETTINGS, src, 0)
    s.receive_data(encode_debug(b"REPLAY-ONLY 100") + login()[:20], 0)
    assert s.state == LOGIN and s.data_to_send() == b""
    s.receive_data(login()[20:], 1)
    assert s.state == STREAMING and src.asked[0][1] == 100
    out = packets(s.data_to_send())
    assert out[0][0] == b"A" and parse_login_accepted(out[0][1]) == ("2311140130", 1)
    got: list[bytes] = []
    for t in range(2, 100):
        s.poll(t, buffered=0)
        got += [p for ty, p in packets(s.data_to_send()) if ty == b"S"]
        if s.closed:
            break
    assert got == [b"m%d" % i for i in range(100)]
    assert s.close_reason == "end_of_session" and s.close_mode == "flush" and stream.closed


def test_rejects_name_the_reason() -> None:
    cases = [
        (login(pw="wrong"), FakeSource(None), b"A", "reject_not_authorized"),
        (login(user="other"), FakeSource(None), b"A", "reject_not_authorized"),
        (encode_packet(b"L", b"x" * 45), FakeSource(None), b"A", "reject_malformed_login"),
        (encode_packet(b"L", b"mdata secret    " + b" " * 10 + b"12x".rjust(20)), FakeSource(None), b"A",
         "reject_malformed_login"),
        (login(session="NOSUCH"), FakeSource(b"S"), b"S", "reject_session"),
    ]
    for data, src, reason, why in cases:
        s = SoupServerSession(SETTINGS, src, 0)
        s.receive_data(data, 0)
        assert s.closed and s.close_reason == why and packets(s.data_to_send()) == [(b"J", reason)], why


def test_a_source_not_ready_makes_the_login_wait_then_reject() -> None:
    ready: list[Any] = [None]
    s = SoupServerSession(SETTINGS, FakeSource(lambda: ready[0]), 0)
    s.receive_data(login(), 0)
    assert s.state == WAITING and s.data_to_send() == b""
    s.poll(1 * S)
    assert s.state == WAITING
    ready[0] = FakeStream([b"x"])
    s.poll(2 * S)
    assert s.state in (STREAMING, CLOSED) and packets(s.data_to_send())[0][0] == b"A"
    late = SoupServerSession(SETTINGS, FakeSource(None), 0)
    late.receive_data(login(), 0)
    late.receive_data(encode_client_heartbeat(), 4 * S)
    late.poll(5 * S)
    assert late.close_reason == "reject_session" and packets(late.data_to_send()) == [(b"J", b"S")]


def test_heartbeats_after_a_second_of_silence_and_a_silent_client_is_dropped_after_15_s() -> None:
    s = SoupServerSession(SETTINGS, FakeSource(FakeStream([], end=False)), 0)
    s.receive_data(login(), 0)
    s.data_to_send()
    s.poll(S - 1)
    assert s.data_to_send() == b""
    s.poll(S)
    assert packets(s.data_to_send()) == [(b"H", b"")]
    s.poll(S + S // 2)
    assert s.data_to_send() == b""
    for t in range(2, 15):
        s.poll(t * S)
    assert not s.closed
    s.receive_data(encode_client_heartbeat(), 14 * S)
    s.poll(28 * S)
    assert not s.closed
    s.poll(29 * S)
    assert s.close_reason == "client_silent" and packets(s.data_to_send())[-1][0] == b"+"


def test_no_login_within_the_timeout_closes() -> None:
    s = SoupServerSession(SETTINGS, FakeSource(None), 0)
    for t in range(1, 16):
        s.receive_data(encode_client_heartbeat(), t * S - 1)
        s.poll(t * S - 1)
    s.poll(15 * S)
    assert s.close_reason == "login_timeout"


def test_a_client_that_does_not_read_is_dropped_instead_of_growing_memory() -> None:
    stream = FakeStream([b"y" * 50] * 10_000, end=False)
    s = SoupServerSession(SETTINGS, FakeSource(stream), 0)
    s.receive_data(login(), 0)
    s.data_to_send()
    s.poll(1, buffered=0)
    first = len(s.data_to_send())
    assert 1000 <= first < 1100                                  # one send buffer's worth
    for t in range(2, 60):
        s.receive_data(encode_client_heartbeat(), t * 100 * MS)
        s.poll(t * 100 * MS, buffered=1000)                      # nothing drains
        assert s.data_to_send() == b"" or s.closed
        if s.closed:
            break
    assert s.close_reason == "slow_client" and s.close_mode == "abort"
    assert t * 100 * MS >= SETTINGS.stall_timeout_ns
    assert len(stream.msgs) > 9000                               # the rest stayed in the source


def test_protocol_errors_close_the_session() -> None:
    for data, why in [(encode_unsequenced_data(b"x"), "protocol_error"),
                      (encode_packet(b"S", b"x"), "protocol_error"),
                      (encode_packet(b"?"), "protocol_error"),
                      (b"\x00\x00", "framing_error"),
                      (b"\xff\xff", "framing_error")]:
        s = SoupServerSession(SETTINGS, FakeSource(None), 0)
        s.receive_data(data, 0)
        assert s.close_reason == why and s.close_mode == "abort", data
    s = SoupServerSession(SETTINGS, FakeSource(FakeStream([], end=False)), 0)
    s.receive_data(login(), 0)
    s.receive_data(encode_unsequenced_data(b"ignored") + encode_debug(b"hi"), 1)
    assert s.state == STREAMING and s.ignored_packets == 1
    s.receive_data(login(), 2)
    assert s.close_reason == "protocol_error"
    s = SoupServerSession(SETTINGS, FakeSource(FakeStream([], end=False)), 0)
    s.receive_data(login() + encode_logout_request(), 0)
    assert s.close_reason == "logout" and s.close_mode == "flush"


def test_random_bytes_never_raise() -> None:
    rnd = random.Random(5)
    for i in range(3000):
        s = SoupServerSession(SETTINGS, FakeSource(FakeStream([b"z"] * 3)), 0)
        data = rnd.randbytes(rnd.randint(0, 80))
        if i % 3 == 0:
            data = (len(data) + 1).to_bytes(2, "big") + rnd.choice(b"LRO+US?") .to_bytes(1, "big") + data
        for k in range(0, len(data), 7):
            s.receive_data(data[k:k + 7], k)
        s.poll(10**9)
        s.data_to_send()
        assert s.state in (LOGIN, WAITING, STREAMING, CLOSED)


def test_replay_only_text() -> None:
    assert parse_replay_only(b"REPLAY-ONLY") == 0 and parse_replay_only(b"REPLAY-ONLY 12") == 12
    assert parse_replay_only(b"REPLAY-ONLY x") is None and parse_replay_only(b"hello") is None


# ------------------------------------------------------------------------------------------------
# The replay source over a store that grows, and the client that reads it
# ------------------------------------------------------------------------------------------------

def run_session(src: ReplaySource, data: bytes, ticks: int = 50, t0: int = 0) -> tuple[SoupServerSession, list[tuple[bytes, bytes]]]:
    s = SoupServerSession(SETTINGS, src, t0)
    s.receive_data(data, t0)
    out = s.data_to_send()
    for t in range(1, ticks):
        s.poll(t0 + t * MS, 0)
        out += s.data_to_send()
        if s.closed:
            break
    return s, packets(out)


def test_replay_logins_and_where_the_stream_starts(stored: tuple[Path, list[bytes]]) -> None:
    path, msgs = stored
    src = ReplaySource(StoreSet([str(path)]), retain_messages=2500)
    for seq, replay_only, first, n in [(600, 5, 600, 5), (0, None, 3001, 0), (9999, 0, 3001, 0),
                                       (2990, 0, 2990, 11)]:
        data = (encode_debug(b"REPLAY-ONLY" + (b" %d" % replay_only if replay_only else b""))
                if replay_only is not None else b"") + login(session="2311140130", seq=seq)
        s, out = run_session(src, data)
        assert parse_login_accepted(out[0][1]).sequence == first
        assert [p for t, p in out if t == b"S"] == msgs[first - 1:first - 1 + n]
        assert (out[-1][0] == b"Z") == (replay_only is not None)
    s, out = run_session(src, login(session="2311140130", seq=400))
    assert out == [(b"J", b"S")] and src.counters["purged"] == 1
    s, out = run_session(src, login(session="2311149999", seq=1))
    assert out == [(b"J", b"S")] and src.counters["unknown_session"] == 1


def test_a_live_replay_tails_the_store_and_a_blank_session_is_the_current_one(tmp_path: Path) -> None:
    msgs = messages(500)
    writer = FeedStore(str(tmp_path), SESSION)
    fill(writer, msgs[:100])
    (tmp_path / "CHANNEL-l3.json").write_text('{"session": "2311140130"}')
    src = ReplaySource(StoreSet([str(tmp_path)]))
    s = SoupServerSession(SETTINGS, src, 0)
    s.receive_data(login(seq=50), 0)
    got: list[bytes] = []
    for t in range(1, 200):
        if t % 20 == 0 and writer.count < 500:
            fill(writer, msgs[writer.count:writer.count + 100])
        s.poll(t * MS, 0)
        got += [p for ty, p in packets(s.data_to_send()) if ty == b"S"]
    assert got == msgs[49:] and not s.closed
    writer.close()


def test_the_client_reads_any_slicing_of_the_stream_as_blocks() -> None:
    msgs = messages(2000)
    raw = b"".join(len(m).to_bytes(2, "big") + m for m in msgs)
    stream = (encode_packet(b"A", b"2311140130" + b"7".rjust(20)) + encode_packet(b"H") + blocks_to_sequenced(raw)
              + encode_debug(b"note") + encode_packet(b"Z"))
    rnd = random.Random(2)
    c = SoupClientSession("mdata", "secret", SESSION, 7, replay_only=2000)
    c.start(0)
    sent = c.data_to_send()
    assert packets(sent) == [(b"+", b"REPLAY-ONLY 2000"), (b"L", login(seq=7, session="2311140130")[3:])]
    pos, blocks, first = 0, b"", None
    while pos < len(stream):
        k = rnd.randint(1, 300)
        c.receive_data(stream[pos:pos + k], 0)
        f, n, b = c.take_blocks()
        if n and first is None:
            first = f
        blocks += b
        pos += k
    assert first == 7 and split_blocks(blocks) == msgs and c.ended and c.heartbeats == 1
    assert c.debug == [b"note"] and c.next_seq == 2007


def test_an_answer_is_bounded_in_bytes_too_and_the_quota_is_charged_what_was_sent(
        stored: tuple[Path, list[bytes]]) -> None:
    path, msgs = stored
    core = rerequest_core(path, max_bytes=1000, quotas=QuotaLimits(per_second=500, per_minute=0, per_day=0))
    got = answer(core, 1, 4000)
    size = sum(2 + len(m) for m in got)
    assert got == msgs[:len(got)] and 0 < size <= 1000 and size + 2 + len(msgs[len(got)]) > 1000
    assert core.counters["clipped_bytes"] == 1
    # the quota (500 a second) was charged only what was sent: the same second still answers
    again = answer(core, 2000, 4000)
    assert again and again == msgs[1999:1999 + len(again)]
    big = rerequest_core(path, max_bytes=1)              # one message at least, whatever its size
    assert answer(big, 7, 100) == msgs[6:7]
