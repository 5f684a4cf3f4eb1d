"""Replay regenerates the event stream byte for byte; `matchwire replay` and `audit export`."""
from __future__ import annotations

import csv
import io
import json
from contextlib import redirect_stdout

import pytest

from appliance.catalogue import EVENT_FIELD_CODES, EVENT_LAYOUTS, Ev, Event
from appliance.eventcodec import StreamHasher, encode_event
from appliance.recovery import open_partition, recover_state
from appliance.wal import WalConfig
from tools.audit import COLUMNS
from tools.cli import main as cli
from tools.killworker import STREAM_SPEC, command_at
from tools.replay import format_ts, parse_time_of_day

MS = 1_000_000
T0 = 1_767_610_800_000_000_000  # 2026-01-05 11:00:00 UTC


def test_every_event_field_has_a_canonical_encoding() -> None:
    for kind, (name, fields) in EVENT_LAYOUTS.items():
        assert fields[0] == "kind"
        for f in fields[1:]:
            assert f in EVENT_FIELD_CODES, f"{name}.{f} has no encoding"


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """A partition fed 6000 commands in batches; the stream hash of what it released, per seq."""
    d = str(tmp_path_factory.mktemp("replay") / "wal")
    cfg = WalConfig(d, segment_bytes=128 << 10, seal_bytes=16 << 10, snapshot_every_events=2500,
                    snapshot_every_seconds=0)
    op = open_partition(cfg, STREAM_SPEC)
    p = op.partition
    frames: dict[int, bytes] = {}
    s = 1
    n = 6000
    while s <= n:
        k = min(1 + s % 37, n - s + 1)
        now = T0 + s * MS
        for seq, ts, _cmd, events in p.process_batch([command_at(x) for x in range(s, s + k)], now):
            frames[seq] = b"".join(encode_event(seq, ts, ev) for ev in events)
        s += k
    assert p.snapshots is not None
    p.snapshots.wait()
    state = p.engine.state_hash()
    p.close(T0 + (n + 1) * MS)
    return d, frames, state


def _hash(frames: dict[int, bytes], after: int = 0) -> str:
    h = StreamHasher()
    for seq in sorted(frames):
        if seq > after:
            h._h.update(frames[seq])
    return h.hexdigest()


def test_replay_regenerates_the_event_stream_byte_for_byte(live_run) -> None:
    d, frames, state = live_run
    replayed: dict[int, bytes] = {}

    def on(seq: int, ts: int, cmd, events: list[Event]) -> bool:
        replayed[seq] = b"".join(encode_event(seq, ts, ev) for ev in events)
        return False

    rec = recover_state(d, use_snapshots=False, on_command=on)
    assert rec.engine.state_hash() == state
    assert sorted(replayed) == list(range(1, 6001))
    assert _hash(replayed) == _hash(frames)
    assert replayed == frames


def test_replay_from_a_snapshot_regenerates_the_rest_of_the_stream(live_run) -> None:
    d, frames, state = live_run
    replayed: dict[int, bytes] = {}

    def on(seq: int, ts: int, cmd, events: list[Event]) -> bool:
        replayed[seq] = b"".join(encode_event(seq, ts, ev) for ev in events)
        return False

    rec = recover_state(d, on_command=on, until_seq=5999)  # the shutdown snapshot is at 6000
    assert rec.snapshot is not None and 0 < rec.snapshot.seq < 5999
    assert sorted(replayed) == list(range(rec.snapshot.seq + 1, 6000))
    assert _hash(replayed) == _hash({s: f for s, f in frames.items() if s < 6000}, rec.snapshot.seq)
    rec = recover_state(d)
    assert rec.snapshot is not None and rec.snapshot.seq == 6000 and rec.replayed == 0 and rec.engine.state_hash() == state


def _run_cli(*argv: str) -> tuple[int, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli(list(argv))
    return rc, buf.getvalue()


def test_matchwire_replay_until_seq_prints_books_and_the_state_hash(live_run) -> None:
    d, _frames, state = live_run
    rc, out = _run_cli("replay", d)
    assert rc == 0 and out.strip().splitlines()[-1] == f"state_hash {state}"
    assert "KILLA (locate 1)" in out and "KILLB (locate 2)" in out
    want = recover_state(d, use_snapshots=False, until_seq=3210).engine.state_hash()
    for extra in ((), ("--no-snapshot",)):
        rc, out = _run_cli("replay", d, "--until-seq", "3210", "--book", "KILLB", *extra)
        assert rc == 0 and out.strip().splitlines()[-1] == f"state_hash {want}"
        assert "KILLB" in out and "KILLA" not in out and "state at seq 3210" in out
    rc, out = _run_cli("replay", d, "--until-seq", "3210", "--json", "--depth", "3")
    doc = json.loads(out)
    assert doc["seq"] == 3210 and doc["state_hash"] == want and len(doc["books"]) == 2
    assert all(len(b["bids"]) <= 3 for b in doc["books"])


def test_matchwire_replay_until_time(live_run) -> None:
    d, _frames, _state = live_run
    # command s is stamped at T0 + (first seq of its batch) ms; 11:00:02.000000000 is seq 2000's ms
    at = format_ts(T0 + 2000 * MS)
    assert at == "11:00:02.000000000" and parse_time_of_day(at) == (11 * 3600 + 2) * 10**9
    rc, out = _run_cli("replay", d, "--until-time", at, "--json")
    doc = json.loads(out)
    from appliance.wal import WalReader

    stamps = [(s, ts) for s, ts, _e, _c in WalReader(d).records()]
    last = max(s for s, ts in stamps if ts <= T0 + 2000 * MS)
    assert doc["seq"] == last and doc["ts_ns"] <= T0 + 2000 * MS
    assert doc["state_hash"] == recover_state(d, until_seq=last).engine.state_hash()


def test_matchwire_replay_until_seq_past_the_end_says_so(live_run, capsys) -> None:
    d, frames, _state = live_run
    last = max(frames)
    assert _run_cli("replay", d, "--until-seq", str(last))[0] == 0
    capsys.readouterr()
    for extra in ((), ("--no-snapshot",), ("--json",)):
        rc, out = _run_cli("replay", d, "--until-seq", str(last + 1), *extra)
        err = capsys.readouterr().err
        assert rc == 2 and out == ""
        assert err.splitlines() == [f"matchwire replay: --until-seq {last + 1} is past the end of {d}: "
                                    f"its last command is seq {last}"]
    assert _run_cli("replay", d, "--until-seq", "-1")[0] == 2
    assert "0 or more" in capsys.readouterr().err


def test_matchwire_replay_unknown_book_or_directory(live_run, tmp_path, capsys) -> None:
    d, _frames, _state = live_run
    assert _run_cli("replay", d, "--book", "NOPE")[0] == 2
    assert "no instrument 'NOPE'" in capsys.readouterr().err
    assert _run_cli("replay", str(tmp_path))[0] == 2


def test_audit_export_csv_and_jsonl(live_run, tmp_path) -> None:
    d, _frames, _state = live_run
    counts = {"accepted": 0, "executed": 0}

    def on(seq: int, ts: int, cmd, events: list[Event]) -> bool:
        for ev in events:
            if ev[0] == Ev.ACCEPTED:
                counts["accepted"] += 1
            elif ev[0] == Ev.EXECUTED:
                counts["executed"] += 1
        return False

    recover_state(d, use_snapshots=False, on_command=on)
    out_csv = str(tmp_path / "audit.csv")
    out_jsonl = str(tmp_path / "audit.jsonl")
    assert _run_cli("audit", "export", d, "--format", "csv", "--out", out_csv)[0] == 0
    assert _run_cli("audit", "export", d, "--format", "jsonl", "--out", out_jsonl)[0] == 0
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(out_jsonl) as f:
        jrows = [json.loads(line) for line in f]
    assert len(rows) == len(jrows) > 0
    assert tuple(rows[0]) == COLUMNS and tuple(jrows[0]) == COLUMNS
    assert [r["seq"] for r in rows] == [str(j["seq"]) for j in jrows]
    assert sum(r["event"] == "accepted" for r in rows) == counts["accepted"]
    assert sum(r["event"] == "executed" for r in rows) == 2 * counts["executed"]
    assert {r["role"] for r in rows if r["event"] == "executed"} == {"maker", "taker"}
    seqs = [int(r["seq"]) for r in rows]
    assert seqs == sorted(seqs) and max(seqs) == 6000
    first = rows[0]
    cmd = command_at(1)
    from appliance.catalogue import NewOrder
    assert isinstance(cmd, NewOrder)
    assert first["seq"] == "1" and first["ts_ns"] == str(T0 + MS) and first["time"] == "11:00:00.001000000"
    assert first["firm"] == str(cmd.firm) and first["account"] == cmd.account
    assert first["cl_ord_id"] == cmd.cl_ord_id and first["instrument"] in ("KILLA", "KILLB")
    assert first["side"] in ("B", "S") and first["qty"] == str(cmd.qty)
    assert any(r["outcome"].startswith("rejected 3") for r in rows)
    assert any(r["outcome"].startswith("cancelled ") for r in rows)
    assert any(r["outcome"].startswith("replaced ") for r in rows)
    # one order's lifecycle, in order
    oid = next(r["order_id"] for r in rows if r["event"] == "executed" and r["leaves"] == "0")
    life = [r["event"] for r in rows if r["order_id"] == oid]
    assert life[0] == "accepted" and life[-1] == "executed"


def test_gateway_reject_rows_are_converted_and_bad_lines_reported(tmp_path) -> None:
    from tools.audit import gateway_reject_rows
    path = tmp_path / "rejects.jsonl"
    good = {"ts_ns": 2_000, "seq": 0, "event": "CommandRejected", "reason": 2002, "gateway": "gw1",
            "command": "NewOrder", "firm": 4, "session": 9, "cl_ord_id": "C7", "order_id": 11, "locate": 1,
            "side": 1, "price": 1_501_000, "qty": 20_000, "account": "ACC", "ord_type": 1, "tif": 0,
            "stop_price": 0}
    early = dict(good, ts_ns=1_000, command="CancelOrder", reason=2006, locate=0, side="", price=0, qty=0)
    path.write_text(json.dumps(good) + "\n" + "not json\n" + json.dumps({"ts_ns": 5}) + "\n" + json.dumps(early) + "\n")
    problems: list[str] = []
    rows = gateway_reject_rows([str(path)], {1: "ALPH"}, problems)
    assert [r["ts_ns"] for r in rows] == [1_000, 2_000]          # sorted by time
    assert len(problems) == 2 and problems[0].startswith(f"{path}:2:") and problems[1].startswith(f"{path}:3:")
    r = rows[1]
    assert set(r) == set(COLUMNS) and r["seq"] == "" and r["event"] == "rejected"
    assert str(r["outcome"]).startswith("rejected 2002 ") and str(r["outcome"]).endswith("(gateway gw1)")
    assert (r["instrument"], r["side"], r["price"], r["qty"], r["account"], r["cl_ord_id"]) == (
        "ALPH", "S", "150.1000", 20_000, "ACC", "C7")
    assert rows[0]["instrument"] == "" and rows[0]["side"] == "" and rows[0]["price"] == ""


def test_audit_rows_tell_too_late_from_unknown() -> None:
    from appliance.catalogue import CancelOrder, NewOrder
    from appliance.matching.engine import Engine
    from appliance.model import BUY, SELL, Instrument
    from tools.audit import AuditRows
    eng = Engine([Instrument("AAA", 1, tick=1)])
    rows = AuditRows({1: "AAA"})
    outcomes = []
    cmds: list[NewOrder | CancelOrder] = [NewOrder(1, 1, SELL, 10, 100, firm=1), NewOrder(2, 1, BUY, 10, 100, firm=2),
                                          CancelOrder(1, 1), CancelOrder(5, 1)]
    for seq, cmd in enumerate(cmds, 1):
        out: list[Event] = []
        eng.apply(cmd, out)
        outcomes += [r["outcome"] for r in rows.rows(seq, seq, cmd, out) if str(r["outcome"]).startswith("rejected")]
    assert outcomes == ["rejected 3017 TOO_LATE_FILLED", "rejected 3006 UNKNOWN_ORDER"]


def test_audit_command_rows_name_firm_or_instrument_by_command_kind() -> None:
    from appliance.catalogue import ALL_INSTRUMENTS, CancelOrder, ClockTick, Halt, MassCancel, ReplaceOrder, Resume
    from tools.audit import AuditRows
    rows = AuditRows({1: "AAA"})
    for cmd in (CancelOrder(5, firm=3, session=8, cl_ord_id="X1"), ReplaceOrder(5, 10, 100, firm=3, session=8),
                MassCancel(3, locate=1, session=8)):
        r = rows.command_row(7, 7, "rejected", cmd)
        assert (r["firm"], r["session"], r["outcome"]) == (3, 8, ""), cmd
    assert rows.command_row(7, 7, "rejected", MassCancel(3, locate=1))["instrument"] == "AAA"
    halt = rows.command_row(7, 7, "rejected", Halt(1))
    assert (halt["instrument"], halt["firm"], halt["outcome"]) == ("AAA", "", "Halt(locate=1)")
    assert rows.command_row(7, 7, "rejected", Resume(ALL_INSTRUMENTS))["instrument"] == "ALL"
    tick = rows.command_row(7, 7, "rejected", ClockTick(T0))
    assert (tick["instrument"], tick["firm"], tick["outcome"]) == ("", "", f"ClockTick({T0})")
