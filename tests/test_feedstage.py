"""The stage processes: the feed stage (appliance/feedstage.py: publishing, fed by the journal ring)
and the WAL stage (appliance/walstage.py: write + fdatasync, the durable seq as the sequence barrier).

What the feed stage publishes must be what the matcher would have published inline, i.e. what
replaying the WAL regenerates, byte for byte, across a kill -9 of any process; a stage's death stops
the partition (exit 70 or 74), the matcher's takes its stages along; with the WAL stage stalled,
nothing about a command past the durable seq leaves the box, and all of it leaves in order after.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from appliance import codec_ring as C
from appliance import feedstage
from appliance.config import Config
from appliance.daemon import PartitionDaemon
from appliance.gateway import ouch
from feeds.store import FeedStore
from test_daemon import started
from test_fullstack import running_stack
from test_retransmit_harness import standard_flow
from tools.bench_pipeline import _drive, _flow_config
from tools.demo import loopback_config
from tools.flows import flow_instrument_count, read_flow


def _run(d: PartitionDaemon, cfg: Config, root: str, records: list[bytes], shutdown: bool) -> int:
    mask = os.sched_getaffinity(0)
    try:
        return _drive(d, cfg, root, records, shutdown)
    finally:
        os.sched_setaffinity(0, mask)


def _published_through(d: PartitionDaemon, seq: int, timeout: float = 120) -> dict[str, Any]:
    """The feed stage's stats once it says it has published through ``seq``."""
    assert d.feed is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d.feed.send(b"S")
        time.sleep(0.05)
        st = d.feed.read_stats()
        if st is not None and st["published_seq"] >= seq:
            return st
        assert d.feed.check() is None, f"the feed stage exited with {d.feed.exit_status}"
    pytest.fail(f"the feed stage did not publish through seq {seq} in {timeout} s")


def _crash(d: PartitionDaemon) -> None:
    """Stop as a crash does: no End of Session, no final snapshot; the stages are killed."""
    if getattr(d, "crashed", False):
        return
    d.crashed = True  # type: ignore[attr-defined]
    d.partition.abandon()
    d.release()


def _messages(store_dir: str) -> dict[str, list[bytes]]:
    """channel -> every message of its current session's store."""
    out = {}
    for name in sorted(os.listdir(store_dir)):
        if name.startswith("CHANNEL-") and name.endswith(".json"):
            with open(os.path.join(store_dir, name)) as f:
                state = json.load(f)
            with FeedStore(store_dir, state["session"].encode("ascii"), writable=False) as store:
                out[state["channel"]] = store.read(1, store.count) if store.count else []
    return out


def _regenerated(cfg: Config, state: str, scratch: str) -> dict[str, list[bytes]]:
    """What replaying the WAL publishes, into an empty store: the state's copy started inline with
    no feed store but the channels' session files (the same sessions, the same start time)."""
    copy = os.path.join(scratch, "regen")
    shutil.copytree(state, os.path.join(copy, "state"))
    store = os.path.join(copy, "state", "feed", "p0")
    for name in os.listdir(store):
        if not name.startswith("CHANNEL-"):
            os.unlink(os.path.join(store, name))
    p = cfg.partitions[0]
    inline = dataclasses.replace(cfg, partitions=(dataclasses.replace(p, feed_stage="inline"),))
    d = started(inline, os.path.join(copy, "state"), transport="null")
    try:
        return _messages(store)
    finally:
        _crash(d)


def _flow(tmp_path: Path, n: int) -> tuple[list[bytes], int]:
    standard_flow(tmp_path, n)
    cmds, meta = read_flow(tmp_path / f"flow{n}.bin")
    return [C.encode_command(c) for c in cmds[:n]], flow_instrument_count(cmds, meta)


LAYOUTS: dict[str, dict[str, Any]] = {"feed": {"feed_stage": "process"}, "feed+wal": {"feed_stage": "process", "wal_stage": "process"}}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_feed_stage_publishes_what_replaying_the_wal_regenerates(tmp_path: Path, layout: str,
                                                                     request: Any) -> None:
    records, instruments = _flow(tmp_path, 4000)
    root = str(tmp_path / "run")
    cfg = _flow_config(root, instruments, "batch", "backoff", **LAYOUTS[layout])
    state = os.path.join(root, "state")
    d = started(cfg, state)
    request.addfinalizer(lambda: _crash(d))      # a failing test leaves no stage or ring behind
    assert d.feed is not None and d.ready_info["feed_stage_pid"] == d.feed.pid != os.getpid()
    assert (d.wal_stage is not None) == (layout == "feed+wal")
    assert _run(d, cfg, root, records, shutdown=False) == 0
    st = _published_through(d, d.partition.applied_seq)
    assert st["commands"] == 4000
    # a matcher batch crosses as several journal items, published together: no more batches than its
    assert 0 < st["batches"] <= d.stats["batches"]
    live = _messages(os.path.join(state, "feed", "p0"))
    _crash(d)
    assert set(live) == {"l3", "l2", "l1"} and all(len(m) > 100 for m in live.values())
    assert {ch: v["messages_sent"] for ch, v in st["feed"].items()} == {ch: len(m) for ch, m in live.items()}
    assert _regenerated(cfg, state, str(tmp_path)) == live
    assert not os.path.exists(os.path.join("/dev/shm", feedstage.journal_ring_name(cfg.appliance.name, "p0")))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_killed_feed_stage_loses_nothing_and_the_session_goes_on_from_the_checkpoint(tmp_path: Path,
                                                                                       capfd: Any, layout: str,
                                                                                       request: Any) -> None:
    """Snapshots every 1500 commands (each with a feed checkpoint the stage writes); the feed stage
    is killed mid-flight after 3000 commands; the restarted partition resumes the feed from the
    newest checkpoint and goes on with the next 1000. Every message of the one session is what the
    WAL regenerates."""
    records, instruments = _flow(tmp_path, 4000)
    root = str(tmp_path / "run")
    cfg = _flow_config(root, instruments, "batch", "backoff", snapshot_every=1500, **LAYOUTS[layout])
    state = os.path.join(root, "state")
    d = started(cfg, state)
    request.addfinalizer(lambda: _crash(d))
    assert _run(d, cfg, root, records[:3000], shutdown=False) == 0
    assert d.partition.snapshots is not None
    d.partition.snapshots.wait()
    _published_through(d, 3000)    # its checkpoint at the newest snapshot is written by then
    last = d.partition.applied_seq
    _crash(d)                      # SIGKILL to the feed stage
    store = os.path.join(state, "feed", "p0")
    assert [n for n in os.listdir(store) if n.startswith("CHECKPOINT-")], os.listdir(store)
    # The bench has no gateway: the journal mark of one that had processed every event.
    from appliance.gateway.journal import mark_record
    from appliance.gateway.state import gateway_dir
    gwdir = gateway_dir(state, "bench")
    os.makedirs(gwdir, exist_ok=True)
    with open(os.path.join(gwdir, "journal.bin"), "wb") as f:
        f.write(mark_record({cfg.partitions[0].id: last}))
    capfd.readouterr()
    d2 = started(cfg, state)
    request.addfinalizer(lambda: _crash(d2))
    assert "feed: resumed from" in capfd.readouterr().err
    assert _run(d2, cfg, root, records[3000:], shutdown=False) == 0
    _published_through(d2, 4000)
    live = _messages(store)
    _crash(d2)
    assert _regenerated(cfg, state, str(tmp_path)) == live
    with open(os.path.join(store, "CHANNEL-l3.json")) as f:
        assert json.load(f)["generation"] == 0     # one session all day: no gap, no new session


def _pipelined(root: str) -> Config:
    base = loopback_config(root, rng=random.Random())
    return dataclasses.replace(base, partitions=tuple(
        dataclasses.replace(p, feed_stage="process", wal_stage="process") for p in base.partitions))


@pytest.mark.pure_only   # 30 s of supervision and restarts; tests/test_kill.py covers the compiled partition
def test_killing_any_process_stops_the_partition_and_a_restart_loses_nothing(tmp_path: Path) -> None:
    """Under `matchwire run`, orders in flight: kill -9 of the feed stage stops the partition
    (exit 70), of the WAL stage too (exit 74), and the supervisor with it; kill -9 of the matcher
    takes both stages along. After each restart every acked order is still there and the L3
    session continues without a gap."""
    root = str(tmp_path)
    with running_stack(root, _pipelined(root)) as stack:
        ref = 0
        acked: set[int] = set()
        for victim in ("feed stage", "wal stage", "matcher"):
            ready = json.loads(Path(stack.state, "run", "p0.ready.json").read_text())
            matcher, stage, wal = ready["pid"], ready["feed_stage_pid"], ready["wal_stage_pid"]
            a = stack.ouch("alfa", "alfa-pw", sequence=1) if ref else stack.ouch("alfa", "alfa-pw")
            for _ in range(20):
                ref += 1
                a.enter(ref, b"B", 100, "ALPH", 1_300_000 + 100 * ref)
            a.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted) and m.user_ref_num == ref)
            for _ in range(20):     # and more in flight as the victim dies
                ref += 1
                a.enter(ref, b"B", 100, "ALPH", 1_300_000 + 100 * ref)
            os.kill({"feed stage": stage, "wal stage": wal, "matcher": matcher}[victim], signal.SIGKILL)
            assert stack.proc is not None
            assert stack.proc.wait(60) != 0
            stack.log.close()
            if victim == "feed stage":
                assert "exiting 70" in stack.output()
            elif victim == "wal stage":
                assert "exiting 74" in stack.output()
            else:
                deadline = time.monotonic() + 10
                while (_alive(stage) or _alive(wal)) and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert not _alive(stage) and not _alive(wal), "a stage outlived its matcher"
            a.pump(0.5)
            acked |= {m.user_ref_num for _, m in a.messages if isinstance(m, ouch.L.OrderAccepted)}
            a.sock.close()
            stack.start()
        b = stack.ouch("alfa", "alfa-pw", sequence=1)     # the day's messages again, from the first
        deadline = time.monotonic() + 20
        accepted: set[int] = set()
        while len(accepted) < ref and time.monotonic() < deadline and not b.closed:
            b.pump(0.2)
            accepted = {m.user_ref_num for _, m in b.messages if isinstance(m, ouch.L.OrderAccepted)}
        assert acked <= accepted, acked - accepted                  # nothing acked is lost
        assert set(range(1, 21)) | set(range(41, 61)) | set(range(81, 101)) <= accepted
        b.close()
        store = os.path.join(stack.state, "feed", "p0")
        with open(os.path.join(store, "CHANNEL-l3.json")) as f:
            assert json.load(f)["generation"] == 0
        adds = [m for m in _messages(store)["l3"] if m[:1] == b"A"]
        assert len(adds) == len(accepted)           # every accepted order on the feed, once


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie (exited, not yet reaped by its parent) is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False



def test_a_stalled_wal_stage_holds_every_ack_and_datagram_then_all_leave_in_order(tmp_path: Path) -> None:
    """The sequence barrier: with the WAL stage stopped (SIGSTOP) the matcher matches on, but no
    acknowledgement and no market data about those commands leaves; on SIGCONT everything leaves,
    acks in the order sent and the feed in sequence."""
    from test_fullstack import subscriber
    root = str(tmp_path)
    with running_stack(root, _pipelined(root)) as stack:
        ready = json.loads(Path(stack.state, "run", "p0.ready.json").read_text())
        wal = ready["wal_stage_pid"]
        if (os.cpu_count() or 1) > 1:    # the stages run on a CPU the matcher does not use
            matcher_cpus = os.sched_getaffinity(ready["pid"])
            for stage in (wal, ready["feed_stage_pid"]):
                assert not os.sched_getaffinity(stage) & matcher_cpus, (stage, matcher_cpus)
        sub = subscriber(stack.config)
        a = stack.ouch("alfa", "alfa-pw")
        a.enter(1, b"B", 100, "ALPH", 1_300_000)
        a.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted) and m.user_ref_num == 1)
        _pump_until(sub, lambda: _adds(sub) == 1)
        gaps = sub.receivers["l3"].gaps     # joined late: the start of session is one
        os.kill(wal, signal.SIGSTOP)
        try:
            for ref in range(2, 12):
                a.enter(ref, b"B", 100, "ALPH", 1_300_000 + 100 * ref)
            a.pump(1.5)
            sub.poll(0.5)
            assert not [m for _, m in a.messages if getattr(m, "user_ref_num", 1) != 1], "an ack left early"
            assert _adds(sub) == 1, "market data left before durability"
        finally:
            os.kill(wal, signal.SIGCONT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(_refs(a)) < 11:
            a.pump(0.2)
        assert _refs(a) == list(range(1, 12))        # every ack, in the order sent
        _pump_until(sub, lambda: _adds(sub) == 11)
        assert sub.receivers["l3"].gaps == gaps      # and nothing lost since
        a.close()
        assert stack.stop() == 0, stack.output()[-3000:]      # a clean stop through both stages
        out = stack.output()
        assert "WAL closed clean at seq" in out and "feed: end of session sent" in out


def _refs(client: Any) -> list[int]:
    return [m.user_ref_num for _, m in client.messages if isinstance(m, ouch.L.OrderAccepted)]


def _adds(sub: Any) -> int:
    return len(sub.l3.orders)     # buys at distinct prices: every order rests


def _pump_until(sub: Any, pred: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        sub.poll(0.05)
    assert pred()


STAGE_POLICY = r"""
import os, sys
from appliance.stage import fork_stage
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))       # as a realtime matcher runs
out = sys.argv[1]
def main(consumer, bell):
    with open(out + ("-spin" if spins else "-share"), "w") as f:
        f.write(str(os.sched_getscheduler(0)))
    return 0
for spins in (False, True):
    ring, pid, bell = fork_stage("t", "probe", "mwprobe%d.%d" % (os.getpid(), spins), 2, 64, None, main, 9, spins)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    os.close(bell)
    ring.close()
    ring.unlink()
    os.unlink("/dev/shm/mwprobe%d.%d.bell" % (os.getpid(), spins))
"""


def test_a_stage_on_a_shared_core_drops_the_matchers_realtime_policy(tmp_path: Path) -> None:
    """A fork inherits SCHED_FIFO: a stage that parks (it shares a core with gateways) runs
    SCHED_OTHER; a spinning one, on a core of its own, keeps the matcher's policy."""
    import sys
    probe = subprocess.run([sys.executable, "-c", STAGE_POLICY, str(tmp_path / "policy")], capture_output=True,
                           text=True, timeout=60, cwd=str(Path(__file__).resolve().parent.parent))
    if "PermissionError" in probe.stderr:
        pytest.skip("no privilege to set SCHED_FIFO here")
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert int((tmp_path / "policy-share").read_text()) == os.SCHED_OTHER
    assert int((tmp_path / "policy-spin").read_text()) == os.SCHED_FIFO


def test_a_full_wal_ring_holds_the_matcher_back_and_nothing_is_lost(tmp_path: Path, request: Any) -> None:
    """Back-pressure as a value: with the WAL stage stopped, one command per batch fills the WAL ring
    (1,024 items); the matcher then stops draining its command ring instead of holding more (the
    ring's slots plus the stage's one poll of items read but not yet fsynced), and
    once the stage runs again every command is published, as replaying the WAL regenerates it."""
    import threading
    from appliance.walstage import WAL_POLL, WAL_SLOTS
    records, instruments = _flow(tmp_path, 3000)
    root = str(tmp_path / "run")
    cfg = _flow_config(root, instruments, "batch", "backoff", **LAYOUTS["feed+wal"])
    state = os.path.join(root, "state")
    d = started(cfg, state, max_batch=1)
    request.addfinalizer(lambda: _crash(d))
    assert d.wal_stage is not None and d.held is not None
    wal = d.wal_stage.link.pid
    os.kill(wal, signal.SIGSTOP)
    held = [0]
    stop = threading.Event()

    def watch() -> None:      # the matcher's held batches, sampled while it runs
        while not stop.wait(0.005):
            held[0] = max(held[0], len(d.held or ()))
            if d.stats.get("wal_full", 0) > 1000:
                os.kill(wal, signal.SIGCONT)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        assert _run(d, cfg, root, records, shutdown=False) == 0
    finally:
        stop.set()
        os.kill(wal, signal.SIGCONT)
        t.join(10)
    assert d.stats["wal_full"] > 1000                  # it waited on the full ring ...
    assert 0 < held[0] <= WAL_SLOTS + WAL_POLL + 1     # ... holding no more than the ring bounds
    _published_through(d, 3000)
    live = _messages(os.path.join(state, "feed", "p0"))
    _crash(d)
    assert _regenerated(cfg, state, str(tmp_path)) == live


def test_a_transport_a_fork_cannot_share_keeps_publishing_in_the_matcher(tmp_path: Path, capfd: Any,
                                                                          request: Any) -> None:
    records, instruments = _flow(tmp_path, 200)
    root = str(tmp_path / "run")
    cfg = _flow_config(root, instruments, "batch", "backoff", **LAYOUTS["feed+wal"])
    d = started(cfg, os.path.join(root, "state"), transport="pcap")
    request.addfinalizer(lambda: _crash(d))
    assert d.feed is None and d.wal_stage is None and "feed_stage_pid" not in d.ready_info
    assert "stays in the matching process" in capfd.readouterr().err
    assert _run(d, cfg, root, records, shutdown=False) == 0
    assert d.publisher.stats()["l3"]["messages_sent"] > 200
