"""The write-ahead log: record layout, writer, reader, torn tails, corruption, policies, fencing."""
from __future__ import annotations

import errno
import os
import random
import struct
import subprocess
import sys
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance import wal, walcodec
from appliance.catalogue import (
    COMMANDS,
    Command,
    CancelOrder,
    ClockTick,
    Close,
    Halt,
    MassCancel,
    NewOrder,
    ReplaceOrder,
    Resume,
    SetSchedule,
)
from appliance.sequencer import SequenceError, Sequencer

from appliance.wal import (
    SEGMENT_HEADER_SIZE,
    DurabilityError,
    EpochFile,
    EpochState,
    StaleEpochError,
    WalConfig,
    WalCorruptError,
    WalError,
    WalReader,
    WalWriter,
)
from appliance.walcodec import SEAL_SIZE, MalformedCommand, encode_body, encode_record
from tools.killworker import command_at
from conftest import compiled_build

# ------------------------------------------------------------------------------------------------
# helpers


def fields_of(cmd: object) -> tuple[object, ...]:
    return tuple(getattr(cmd, name) for name, _ in cmd.FIELDS)  # type: ignore[attr-defined]


def write_stream(d: str, n: int, *, epoch: int = 1, first: int = 1, batch: int = 7, seed: int = 3,
                 segment_bytes: int = 8192, seal_bytes: int = 2048, close: bool = True,
                 policy: str = "batch") -> WalWriter:
    """n commands of the kill-test stream, in batches, through a writer; returns it."""
    w = WalWriter(d, epoch, first, policy=policy, segment_bytes=segment_bytes, seal_bytes=seal_bytes)
    seq = first
    rng = random.Random(seed)
    while seq < first + n:
        k = min(rng.randint(1, batch), first + n - seq)
        for s in range(seq, seq + k):
            kind, body = encode_body(command_at(s))
            w.append(s, 1_000 + s, epoch, kind, body)
        seq += k
        w.commit(seq)
    if close:
        w.close()
    return w


def read_all(d: str, repair: bool = False) -> list[tuple[int, int, int, Command]]:
    return list(WalReader(d, repair=repair).records())


def segments(d: str) -> list[str]:
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".seg"))


def record_offsets(path: str) -> list[tuple[int, int, int]]:
    """(offset, length, kind) of every record of a segment file."""
    data = open(path, "rb").read()
    off = SEGMENT_HEADER_SIZE
    out = []
    while off < len(data):
        length = struct.unpack_from("<I", data, off)[0]
        out.append((off, length, data[off + 28]))
        off += length
    return out


# ------------------------------------------------------------------------------------------------
# layout


def test_every_catalogue_command_has_a_record_layout_derived_from_its_fields() -> None:
    for kind, cls in COMMANDS.items():
        layout = walcodec.LAYOUTS[kind]
        assert layout.cls is cls
        assert layout.names == tuple(n for n, _ in cls.FIELDS)
        assert layout.size == walcodec.RECORD_HEADER_SIZE + struct.calcsize("<" + "".join(c for _, c in cls.FIELDS))
    assert walcodec.RECORD_HEADER_SIZE == 32 and SEGMENT_HEADER_SIZE == 32 and SEAL_SIZE == 48
    assert {k: lay.size for k, lay in walcodec.LAYOUTS.items()} == {1: 119, 2: 68, 3: 92, 4: 63, 5: 40, 6: 72, 7: 34,
                                                                8: 34, 9: 34}


DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "wal.md")
DOC_NAMES = {"knd": "kind", "chk crc": "chunk_crc"}   # the diagrams' abbreviations
DOC_TYPES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "3 bytes": "3x"}


def doc_diagram(first_ruler: str) -> dict[str, tuple[int, int]]:
    """{field: (offset, end)} of the docs/wal.md diagram whose ruler line starts with first_ruler: the
    ruler's numbers are the field boundaries, the names line the fields between them."""
    lines = open(DOC).read().split("\n")
    i = next(n for n, line in enumerate(lines) if line.startswith(first_ruler))
    ruler = [int(x) for x in lines[i].split()]
    names = [DOC_NAMES.get(c.strip(), c.strip()) for c in lines[i + 2].split("|")[1:-1]]
    return {name: (ruler[k], ruler[k + 1]) for k, name in enumerate(names) if k + 1 < len(ruler)}


def test_the_record_header_and_seal_derived_from_one_table_match_docs_wal_md() -> None:
    # the record header: every field's offset and width as the diagram draws it, its type as the table says
    doc = doc_diagram("0       4       8               16")
    fields = walcodec.RECORD_HEADER_FIELDS
    assert [n for n, _ in fields] == list(doc)
    for name, code in fields:
        at, end = doc[name]
        assert walcodec.RECORD_OFFSETS[name] == at, name
        assert struct.calcsize("<" + code) == end - at, name
    table = {row.split("|")[1].strip(): row.split("|")[2].strip() for row in open(DOC).read().split("\n")
             if row.startswith("| ") and row.split("|")[1].strip() in dict(fields)}
    assert {n: DOC_TYPES[t] for n, t in table.items()} == dict(fields)
    # what the codec derives from it
    assert walcodec.RECORD_HEADER_SIZE == doc["pad"][1] == 32
    assert walcodec.KIND_OFFSET == doc["kind"][0]
    assert walcodec.PREFIX.size == walcodec.CRC_START == doc["seq"][0]   # "crc covers bytes 8 .. length"
    assert walcodec.PREFIX.size + walcodec.HEAD.size == walcodec.RECORD_HEADER_SIZE
    assert walcodec.SEQ_OFFSET == doc["seq"][0] and walcodec.SIGNATURE_OFFSET == doc["epoch"][0]
    assert walcodec.SEQ_TS_EPOCH.size == doc["epoch"][1] - doc["seq"][0]
    assert walcodec.SIGNATURE.size == walcodec.RECORD_HEADER_SIZE - doc["epoch"][0]
    # the seal: the header, then its body as drawn
    seal = doc_diagram("32              40      44      48")
    assert [n for n, _ in walcodec.SEAL_FIELDS] == list(seal)
    assert walcodec.SEAL_OFFSETS == {n: at for n, (at, _) in seal.items()}
    assert walcodec.SEAL_SIZE == max(end for _, end in seal.values()) == 48
    # and the bytes: a seal frame read back at the documented offsets
    frame = walcodec.seal_frame(77, 5, 3, 4096, 0xDEADBEEF, 12)
    assert struct.unpack_from("<IIQQIB", frame) == (48, zlib.crc32(frame[8:]), 77, 5, 3, walcodec.KIND_SEAL)
    assert frame[29:32] == bytes(3)
    assert struct.unpack_from("<QII", frame, seal["chunk_start"][0]) == (4096, 0xDEADBEEF, 12)


def test_the_segment_header_crc_covers_the_bytes_before_it() -> None:
    head = wal.segment_header(9, 1234)
    magic, version, hsize, epoch, first, _r, hcrc = struct.unpack("<8sHHIQII", head)
    assert (magic, version, hsize, epoch, first) == (b"MWWALSEG", walcodec.FORMAT_VERSION, 32, 9, 1234)
    assert hcrc == zlib.crc32(head[:28])


def test_record_bytes_follow_the_documented_layout() -> None:
    o = NewOrder(7, 3, 1, 500, 1_501_000, firm=9, session=4, account="ACC", cl_ord_id="c-1", mpid="MPX")
    rec = encode_record(42, 1_700_000_000_123_456_789, 5, o)
    length, crc, seq, ts, epoch, kind = struct.unpack_from("<IIQQIB", rec)
    assert (length, seq, ts, epoch, kind) == (119, 42, 1_700_000_000_123_456_789, 5, 1)
    assert rec[29:32] == b"\0\0\0"
    assert crc == zlib.crc32(rec[8:])
    body = struct.unpack_from("<QHBBBBqqqII16s20s4s", rec, 32)
    assert body == (7, 3, 1, 2, 0, 0, 1_501_000, 0, 500, 9, 4, b"ACC".ljust(16), b"c-1".ljust(20), b"MPX ")


commands = st.one_of(
    st.builds(
        NewOrder,
        order_id=st.integers(0, 2**64 - 1), locate=st.integers(0, 65535), side=st.integers(0, 255),
        qty=st.integers(-(2**63), 2**63 - 1), price=st.integers(-(2**63), 2**63 - 1),
        ord_type=st.integers(0, 255), tif=st.integers(0, 255), stop_price=st.integers(-(2**63), 2**63 - 1),
        firm=st.integers(0, 2**32 - 1), session=st.integers(0, 2**32 - 1),
        account=st.text("ABCxyz019-_ .", max_size=16).map(str.rstrip),
        cl_ord_id=st.text("ABCxyz019-_", max_size=20), mpid=st.text("ABCD", max_size=4),
        stp=st.integers(0, 255),
    ),
    st.builds(CancelOrder, order_id=st.integers(0, 2**64 - 1), firm=st.integers(0, 2**32 - 1),
              session=st.integers(0, 2**32 - 1), cl_ord_id=st.text("ab1", max_size=20)),
    st.builds(ReplaceOrder, order_id=st.integers(0, 2**64 - 1), qty=st.integers(-(2**63), 2**63 - 1),
              price=st.integers(-(2**63), 2**63 - 1), firm=st.integers(0, 2**32 - 1),
              session=st.integers(0, 2**32 - 1), stop_price=st.integers(-(2**63), 2**63 - 1),
              cl_ord_id=st.text("ab1", max_size=20)),
    st.builds(MassCancel, firm=st.integers(0, 2**32 - 1), locate=st.integers(0, 65535),
              side=st.integers(0, 255), session=st.integers(0, 2**32 - 1), cl_ord_id=st.text("z", max_size=20)),
    st.builds(ClockTick, now_ns=st.integers(0, 2**64 - 1)),
    st.builds(SetSchedule, *[st.integers(-(2**63), 2**63 - 1)] * 5),
    st.builds(Halt, locate=st.integers(0, 65535)),
    st.builds(Resume, locate=st.integers(0, 65535)),
    st.builds(Close, locate=st.integers(0, 65535)),
)


@settings(max_examples=300, deadline=None)
@given(cmd=commands, seq=st.integers(1, 2**64 - 1), ts=st.integers(0, 2**64 - 1), epoch=st.integers(1, 2**32 - 1))
def test_record_round_trip_and_generated_decoder_equals_the_table_walking_one(cmd, seq, ts, epoch) -> None:
    rec = encode_record(seq, ts, epoch, cmd)
    s, t, e, back = walcodec.decode_record(rec)
    assert (s, t, e) == (seq, ts, epoch)
    assert type(back) is type(cmd) and fields_of(back) == fields_of(cmd)
    generic = walcodec.decoder_generic(walcodec.LAYOUTS[cmd.KIND])(rec, 0)
    assert fields_of(generic) == fields_of(back)


@settings(max_examples=100, deadline=None)
@given(cmds=st.lists(commands, min_size=1, max_size=12), seq=st.integers(1, 2**63), ts=st.integers(0, 2**63))
def test_the_record_walker_decodes_what_the_bulk_decoder_decodes(cmds, seq, ts) -> None:
    """decode_run (the feed stage's) walks a run of records by their kinds' sizes; it agrees with
    decode_many at the records' offsets and reads each record's seq and ts_ns."""
    recs = [encode_record(seq + i, ts + i, 7, c) for i, c in enumerate(cmds)]
    buf = b"W" + b"".join(recs)
    offsets = [1 + sum(map(len, recs[:i])) for i in range(len(recs))]
    seqs: list[int] = []
    stamps: list[int] = []
    walked = walcodec.decode_run(buf, 1, len(buf), seqs, stamps)
    assert [fields_of(c) for c in walked] == [fields_of(c) for c in walcodec.decode_many(buf, offsets)]
    assert [type(c) for c in walked] == [type(c) for c in cmds]
    assert seqs == [seq + i for i in range(len(cmds))] and stamps == [ts + i for i in range(len(cmds))]


@pytest.mark.parametrize("make, what", [
    (lambda: NewOrder(1, 1, 0, 100, 5, account="é"), "not ASCII"),
    (lambda: NewOrder(1, 1, 0, 100, 5, account="x" * 17), "longer than 16"),
    (lambda: NewOrder(1, 1, 0, 100, 5, mpid="AB "), "ends with a space"),
    (lambda: NewOrder(1, 1, 0, 100, 5, cl_ord_id=None), "not a string"),  # type: ignore[arg-type]
    (lambda: NewOrder(-1, 1, 0, 100, 5), "out of range"),
    (lambda: NewOrder(1, 70000, 0, 100, 5), "NewOrder"),
    (lambda: NewOrder(1, 1, 0, 1.5, 5), "integer"),  # type: ignore[arg-type]
    (lambda: CancelOrder(1, firm=2**32), "CancelOrder"),
])
def test_a_command_that_cannot_be_written_as_declared_is_malformed(make, what) -> None:
    try:
        cmd = make()
    except TypeError:
        if not compiled_build():
            raise
        pytest.skip("the compiled build refuses this command at construction already")
    with pytest.raises(MalformedCommand, match=what):
        encode_body(cmd)


def test_not_a_command_is_malformed() -> None:
    # The compiled build checks the argument's declared type at the call already.
    with pytest.raises((MalformedCommand, TypeError) if compiled_build() else MalformedCommand):
        encode_body("hello")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# sequencer


def test_sequencer_is_gap_free_and_stamps_a_non_decreasing_time_once_per_batch() -> None:
    s = Sequencer(next_seq=10, epoch=3)
    assert s.stamp(3, 1_000) == (10, 1_000)
    assert s.stamp(1, 900) == (13, 1_000)   # the clock stepped back: the stamp does not
    assert s.stamp(2, 2_000) == (14, 2_000)
    assert s.next_seq == 16 and s.last_seq == 15 and s.epoch == 3
    with pytest.raises(SequenceError):
        Sequencer(next_seq=0)
    with pytest.raises(SequenceError):
        Sequencer(next_seq=2**64 - 1).stamp(2, 1)


# ------------------------------------------------------------------------------------------------
# writer and reader


def test_writer_and_reader_round_trip_across_segments_and_seals(tmp_path) -> None:
    d = str(tmp_path)
    write_stream(d, 3000)
    assert len(segments(d)) > 5
    recs = read_all(d)
    assert [r[0] for r in recs] == list(range(1, 3001))
    for seq, ts, epoch, cmd in recs:
        assert ts == 1_000 + seq and epoch == 1
        assert encode_body(cmd) == encode_body(command_at(seq))
    # the fast path gives the same commands, in verified chunks
    reader = WalReader(d)
    fast = [c for _, cmds in reader.batches() for c in cmds]
    assert [encode_body(c) for c in fast] == [encode_body(r[3]) for r in recs]
    assert reader.last_seq == 3000 and reader.tail_sealed and reader.notes == []
    kinds = [k for p in segments(d) for _, _, k in record_offsets(p)]
    assert kinds.count(walcodec.KIND_SEAL) > len(segments(d))  # seals inside segments, and at each end


@pytest.mark.parametrize("after", [0, 1, 57, 999, 1000, 1001, 2999, 3000])
def test_batches_after_a_seq_start_exactly_after_it(tmp_path, after) -> None:
    d = str(tmp_path)
    write_stream(d, 3000)
    reader = WalReader(d)
    got: list[int] = []
    for first, cmds in reader.batches(after):
        got.extend(range(first, first + len(cmds)))
        for i, c in enumerate(cmds):
            assert encode_body(c) == encode_body(command_at(first + i))
    assert got == list(range(after + 1, 3001))
    assert reader.last_seq == 3000
    recs = list(WalReader(d).records(after))
    assert [r[0] for r in recs] == list(range(after + 1, 3001))
    stamps = [st for _, piece in WalReader(d).stamps(after) for st in piece]
    assert stamps == [(r[0], r[1]) for r in recs]


def test_writer_refuses_gaps_and_records_of_an_older_epoch(tmp_path) -> None:
    w = WalWriter(str(tmp_path), 5, 1)
    kind, body = encode_body(command_at(1))
    with pytest.raises(StaleEpochError):
        w.append(1, 0, 4, kind, body)
    with pytest.raises(WalError, match="sequence gap"):
        w.append(2, 0, 5, kind, body)
    w.append(1, 0, 5, kind, body)
    assert w.commit(0) == 1
    w.close()


def test_an_unsealed_tail_is_read_record_by_record(tmp_path) -> None:
    d = str(tmp_path)
    w = write_stream(d, 500, seal_bytes=1 << 20, segment_bytes=1 << 20, close=False)  # no seal yet
    reader = WalReader(d)
    assert sum(len(c) for _, c in reader.batches()) == 500
    assert not reader.tail_sealed
    w.close()
    reader = WalReader(d)
    assert sum(len(c) for _, c in reader.batches()) == 500 and reader.tail_sealed


# ------------------------------------------------------------------------------------------------
# torn tails and corruption


def test_a_torn_tail_is_truncated_after_the_last_whole_record_and_said_so(tmp_path) -> None:
    d = str(tmp_path)
    write_stream(d, 400, segment_bytes=1 << 20, seal_bytes=1 << 20, close=False)
    path = segments(d)[-1]
    offs = record_offsets(path)
    full = open(path, "rb").read()
    last_off, last_len, _ = offs[-1]
    rng = random.Random(5)
    cuts = sorted({last_off + 1, last_off + 31, last_off + 32, last_off + last_len - 1}
                  | {rng.randrange(offs[-3][0] + 1, len(full)) for _ in range(12)})
    for cut in cuts:
        with open(path, "wb") as f:
            f.write(full[:cut])
        whole = [o for o in offs if o[0] + o[1] <= cut]
        expect_last = len(whole)
        # read-only: noted, not changed
        reader = WalReader(d)
        assert [r[0] for r in reader.records()][-1] == expect_last
        assert any("torn tail" in n and "ignored" in n for n in reader.notes) or cut == whole[-1][0] + whole[-1][1]
        assert os.path.getsize(path) == cut
        # start-up: truncated
        reader = WalReader(d, repair=True)
        assert [r[0] for r in reader.records()][-1] == expect_last
        end = whole[-1][0] + whole[-1][1]
        assert os.path.getsize(path) == end
        if cut != end:
            assert any(f"torn tail at offset {end}" in n and "truncated" in n for n in reader.notes)


def test_a_zero_filled_tail_is_a_torn_tail(tmp_path) -> None:
    d = str(tmp_path)
    write_stream(d, 100, segment_bytes=1 << 20, seal_bytes=1 << 20)
    path = segments(d)[-1]
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(b"\0" * 5000)
    reader = WalReader(d, repair=True)
    assert [r[0] for r in reader.records()][-1] == 100
    assert os.path.getsize(path) == size


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes((b[0] ^ 0x5A,)))


@pytest.mark.parametrize("where", ["header", "body", "crc", "length"])
def test_a_flipped_byte_in_the_middle_stops_start_up_naming_file_and_offset(tmp_path, where) -> None:
    d = str(tmp_path)
    write_stream(d, 600, segment_bytes=1 << 20, seal_bytes=4096)
    path = segments(d)[-1]
    off, length, kind = [o for o in record_offsets(path) if o[2] != walcodec.KIND_SEAL][250]
    flip(path, off + {"header": 12, "body": 50, "crc": 5, "length": 1}[where])
    for repair in (False, True):
        with pytest.raises(WalCorruptError) as ei:
            for _ in WalReader(d, repair=repair).batches():
                pass
        assert ei.value.path == path and ei.value.offset == off
        assert path in str(ei.value) and f"offset {off}" in str(ei.value)
    assert os.path.getsize(path) > off + length  # nothing was truncated


def test_a_flipped_byte_in_an_older_segment_stops_start_up(tmp_path) -> None:
    d = str(tmp_path)
    write_stream(d, 2000)
    path = segments(d)[1]
    off = record_offsets(path)[3][0]
    flip(path, off + 40)
    with pytest.raises(WalCorruptError, match="not at the tail") as ei:
        list(WalReader(d, repair=True).records())
    assert ei.value.path == path and ei.value.offset == off


def test_a_flipped_byte_in_the_last_record_is_a_corrupt_tail(tmp_path) -> None:
    d = str(tmp_path)
    write_stream(d, 300, segment_bytes=1 << 20, seal_bytes=1 << 20, close=False)
    path = segments(d)[-1]
    off, length, _ = record_offsets(path)[-1]
    flip(path, off + 60)
    reader = WalReader(d, repair=True)
    assert [r[0] for r in reader.records()][-1] == 299
    assert os.path.getsize(path) == off
    assert any("CRC mismatch" in n for n in reader.notes)


def test_a_missing_segment_is_a_gap(tmp_path) -> None:
    d = str(tmp_path)
    write_stream(d, 2000)
    os.unlink(segments(d)[2])
    with pytest.raises(WalCorruptError, match="missing"):
        list(WalReader(d).records())


def test_a_newest_segment_whose_header_never_reached_the_disk_is_removed(tmp_path) -> None:
    d = str(tmp_path)
    write_stream(d, 200)
    with open(os.path.join(d, wal.segment_name(201, 2)), "wb") as f:
        f.write(b"MWWAL")
    reader = WalReader(d, repair=True)
    assert [r[0] for r in reader.records()][-1] == 200
    assert any("header incomplete" in n for n in reader.notes)
    assert not os.path.exists(os.path.join(d, wal.segment_name(201, 2)))


# ------------------------------------------------------------------------------------------------
# policies and failures


def count_syncs(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = wal._fdatasync

    def sync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(wal, "_fdatasync", sync)
    return calls


def test_batch_policy_fsyncs_once_per_commit(tmp_path, monkeypatch) -> None:
    calls = count_syncs(monkeypatch)
    w = WalWriter(str(tmp_path), 1, 1, policy="batch")
    for b in range(5):
        for i in range(10):
            s = b * 10 + i + 1
            w.append(s, 0, 1, *encode_body(command_at(s)))
        assert w.commit(0) == (b + 1) * 10
    assert len(calls) == 5
    w.close()


def test_interval_policy_makes_acks_wait_for_the_fsync(tmp_path, monkeypatch) -> None:
    calls = count_syncs(monkeypatch)
    w = WalWriter(str(tmp_path), 1, 1, policy="interval", interval_ms=5)
    ms = 1_000_000
    w.append(1, 0, 1, *encode_body(command_at(1)))
    assert w.commit(100 * ms) == 1 and len(calls) == 1   # first write: nothing pending, fsync now
    w.append(2, 0, 1, *encode_body(command_at(2)))
    assert w.commit(101 * ms) == 1 and len(calls) == 1   # written, not durable yet
    assert w.poll(103 * ms) == 1
    assert w.poll(105 * ms) == 2 and len(calls) == 2
    w.close()


def test_none_policy_never_fsyncs_on_commit(tmp_path, monkeypatch, capsys) -> None:
    calls = count_syncs(monkeypatch)
    w = WalWriter(str(tmp_path), 1, 1, policy="none")
    assert "policy 'none'" in capsys.readouterr().err
    w.append(1, 0, 1, *encode_body(command_at(1)))
    assert w.commit(0) == 1 and calls == []
    w.close()  # an explicit sync (shutdown) still fsyncs
    with pytest.raises(ValueError):
        WalConfig(str(tmp_path), policy="sometimes")


def test_none_policy_warning_text(tmp_path, capsys) -> None:
    WalWriter(str(tmp_path), 1, 1, policy="none").close()
    err = capsys.readouterr().err
    assert "policy 'none'" in err and "LOST" in err and "development only" in err.lower()


def test_an_fsync_failure_fails_closed(tmp_path, monkeypatch) -> None:
    w = WalWriter(str(tmp_path), 1, 1)
    w.append(1, 0, 1, *encode_body(command_at(1)))
    assert w.commit(0) == 1

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(wal, "_fdatasync", eio)
    w.append(2, 0, 1, *encode_body(command_at(2)))
    with pytest.raises(DurabilityError, match="Input/output error"):
        w.commit(0)
    assert w.durable_seq == 1
    monkeypatch.undo()
    with pytest.raises(DurabilityError):      # and stays failed
        w.commit(0)
    with pytest.raises(DurabilityError):
        w.append(3, 0, 1, *encode_body(command_at(3)))
    w.close()


def test_a_write_failure_fails_closed(tmp_path, monkeypatch) -> None:
    w = WalWriter(str(tmp_path), 1, 1)

    def enospc(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    w.append(1, 0, 1, *encode_body(command_at(1)))
    monkeypatch.setattr(wal.os, "write", enospc)
    with pytest.raises(DurabilityError, match="No space left on device") as ei:
        w.commit(0)
    assert w.path in str(ei.value) and w.durable_seq == 0


# ------------------------------------------------------------------------------------------------
# fencing


def test_a_newer_start_fences_off_the_running_writer(tmp_path) -> None:
    d = str(tmp_path)
    mine = EpochFile(d)
    mine.write(EpochState(1, False, 0, "A"))
    w = WalWriter(d, 1, 1, fence=mine)
    w.append(1, 0, 1, *encode_body(command_at(1)))
    assert w.commit(0) == 1
    EpochFile(d).write(EpochState(2, False, 0, "B"))      # another process starts
    w.append(2, 0, 1, *encode_body(command_at(2)))
    with pytest.raises(DurabilityError, match="fenced"):
        w.commit(0)
    with pytest.raises(DurabilityError):
        w.commit(0)
    w.close()


def test_a_newer_start_in_another_process_fences_the_writer_through_the_mapped_word(tmp_path) -> None:
    """The per-commit check reads FENCE through a shared mapping: a start in another process
    stores its word there and the running writer's next commit fails closed, with no system call
    of its own to notice."""
    d = str(tmp_path)
    mine = EpochFile(d)
    mine.write(EpochState(1, False, 0, "A"))
    w = WalWriter(d, 1, 1, fence=mine)
    w.append(1, 0, 1, *encode_body(command_at(1)))
    assert w.commit(0) == 1 and mine.claimed()
    code = ("import sys; from appliance.wal import EpochFile, EpochState; "
            "EpochFile(sys.argv[1]).write(EpochState(2, False, 0, 'B'))")
    subprocess.run([sys.executable, "-c", code, d], check=True, timeout=60)
    assert not mine.claimed() and not mine.still_mine()
    assert os.path.getsize(os.path.join(d, EpochFile.FENCE_NAME)) == 8
    w.append(2, 0, 1, *encode_body(command_at(2)))
    with pytest.raises(DurabilityError, match="fenced"):
        w.commit(0)
    w.close()
    again = EpochFile(d)                         # a later start claims it again
    again.write(EpochState(3, False, 0, "C"))
    assert again.claimed() and not mine.claimed()


def test_records_of_a_fenced_epoch_after_the_newer_epoch_began_are_refused(tmp_path) -> None:
    d = str(tmp_path)
    old = write_stream(d, 120, epoch=3, segment_bytes=1 << 20, close=False)   # stale process: 1..120
    new = write_stream(d, 30, epoch=4, first=101, segment_bytes=1 << 20)        # newer start read 1..100
    old.close()
    reader = WalReader(d)
    recs = list(reader.records())
    assert [r[0] for r in recs] == list(range(1, 131))
    assert [r[2] for r in recs] == [3] * 100 + [4] * 30
    assert reader.last_seq == 130 and new.epoch == 4
    # a stale segment started after the fence is refused entirely
    stale = WalWriter(d, 3, 121, segment_bytes=1 << 20)
    stale.append(121, 0, 3, *encode_body(command_at(121)))
    stale.commit(0)
    stale.close()
    reader = WalReader(d)
    assert [r[0] for r in reader.records()] == list(range(1, 131))
    assert any("fenced off" in n for n in reader.notes)
