"""The feed stage (appliance/feedstage.py): publishing in a process of its own, fed by the journal ring.

What it publishes must be what the matcher would have published inline, i.e. what replaying the WAL
regenerates, byte for byte, across a kill -9 of either process; its death stops the partition (exit
70), the partition's takes it along.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
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
from test_fullstack import running_stack
from test_retransmit_harness import standard_flow
from tools.bench_pipeline import _drive, _flow_config
from tools.demo import loopback_config
from tools.flows import flow_instrument_count, read_flow


def _started(cfg: Config, state: str, **kw: Any) -> PartitionDaemon:
    d = PartitionDaemon(cfg, "p0", state, realtime=False, **kw)
    mask = os.sched_getaffinity(0)
    try:
        d.start()
    finally:
        os.sched_setaffinity(0, mask)
    return d


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
        d.feed.control(b"S")
        time.sleep(0.05)
        st = d.feed.read_stats()
        if st is not None and st["published_seq"] >= seq:
            return st
        assert d.feed.check() is None, f"the feed stage exited with {d.feed.exit_status}"
    pytest.fail(f"the feed stage did not publish through seq {seq} in {timeout} s")


def _crash(d: PartitionDaemon) -> None:
    """Stop as a crash does: no End of Session, no final snapshot; the feed stage is killed."""
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
    d = _started(inline, os.path.join(copy, "state"), transport="null")
    try:
        return _messages(store)
    finally:
        _crash(d)


def _flow(tmp_path: Path, n: int) -> tuple[list[bytes], int]:
    standard_flow(tmp_path, n)
    cmds, meta = read_flow(tmp_path / f"flow{n}.bin")
    return [C.encode_command(c) for c in cmds[:n]], flow_instrument_count(cmds, meta)


def test_the_feed_stage_publishes_what_replaying_the_wal_regenerates(tmp_path: Path) -> None:
    records, instruments = _flow(tmp_path, 4000)
    root = str(tmp_path / "run")
    cfg = _flow_config(root, instruments, "batch", "backoff", feed_stage="process")
    state = os.path.join(root, "state")
    d = _started(cfg, state)
    assert d.feed is not None and d.ready_info["feed_stage_pid"] == d.feed.pid != os.getpid()
    assert _run(d, cfg, root, records, shutdown=False) == 0
    st = _published_through(d, d.partition.applied_seq)
    assert st["commands"] == 4000
    live = _messages(os.path.join(state, "feed", "p0"))
    _crash(d)
    assert set(live) == {"l3", "l2", "l1"} and all(len(m) > 100 for m in live.values())
    assert {ch: v["messages_sent"] for ch, v in st["feed"].items()} == {ch: len(m) for ch, m in live.items()}
    assert _regenerated(cfg, state, str(tmp_path)) == live
    assert not os.path.exists(os.path.join("/dev/shm", feedstage.journal_ring_name(cfg.appliance.name, "p0")))


def test_a_killed_feed_stage_loses_nothing_and_the_session_goes_on_from_the_checkpoint(tmp_path: Path,
                                                                                       capfd: Any) -> None:
    """Snapshots every 1500 commands (each with a feed checkpoint the stage writes); the feed stage
    is killed mid-flight after 3000 commands; the restarted partition resumes the feed from the
    newest checkpoint and goes on with the next 1000. Every message of the one session is what the
    WAL regenerates."""
    records, instruments = _flow(tmp_path, 4000)
    root = str(tmp_path / "run")
    cfg = _flow_config(root, instruments, "batch", "backoff", snapshot_every=1500, feed_stage="process")
    state = os.path.join(root, "state")
    d = _started(cfg, state)
    assert _run(d, cfg, root, records[:3000], shutdown=False) == 0
    assert d.partition.snapshots is not None
    d.partition.snapshots.wait()
    _published_through(d, 3000)    # its checkpoint at the newest snapshot is written by then
    last = d.partition.applied_seq
    _crash(d)                      # SIGKILL to the feed stage
    store = os.path.join(state, "feed", "p0")
    assert [n for n in os.listdir(store) if n.startswith("CHECKPOINT-")], os.listdir(store)
    # The bench has no gateway: the journal mark of one that had processed every event.
    from appliance.gateway.server import gateway_dir, mark_record
    gwdir = gateway_dir(state, "bench")
    os.makedirs(gwdir, exist_ok=True)
    with open(os.path.join(gwdir, "journal.bin"), "wb") as f:
        f.write(mark_record({cfg.partitions[0].id: last}))
    capfd.readouterr()
    d2 = _started(cfg, state)
    assert "feed: resumed from" in capfd.readouterr().err
    assert _run(d2, cfg, root, records[3000:], shutdown=False) == 0
    _published_through(d2, 4000)
    live = _messages(store)
    _crash(d2)
    assert _regenerated(cfg, state, str(tmp_path)) == live
    with open(os.path.join(store, "CHANNEL-l3.json")) as f:
        assert json.load(f)["generation"] == 0     # one session all day: no gap, no new session


def test_killing_either_process_stops_the_partition_and_a_restart_loses_nothing(tmp_path: Path) -> None:
    """Under `matchwire run`: kill -9 of the feed stage stops the partition (exit 70) and the
    supervisor; kill -9 of the matcher takes the feed stage along. After each restart every acked
    order is still there and the L3 session continues."""
    root = str(tmp_path)
    base = loopback_config(root, rng=random.Random())
    cfg = dataclasses.replace(base, partitions=tuple(dataclasses.replace(p, feed_stage="process")
                                                     for p in base.partitions))
    with running_stack(root, cfg) as stack:
        ref = 0
        for victim in ("feed stage", "matcher"):
            ready = json.loads(Path(stack.state, "run", "p0.ready.json").read_text())
            matcher, stage = ready["pid"], ready["feed_stage_pid"]
            a = stack.ouch("alfa", "alfa-pw", sequence=1) if ref else stack.ouch("alfa", "alfa-pw")
            for _ in range(20):
                ref += 1
                a.enter(ref, b"B", 100, "ALPH", 1_300_000 + 100 * ref)
            a.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted) and m.user_ref_num == ref)
            os.kill(stage if victim == "feed stage" else matcher, signal.SIGKILL)
            assert stack.proc is not None
            assert stack.proc.wait(60) != 0
            stack.log.close()
            if victim == "feed stage":
                assert "exiting 70" in stack.output()
            else:
                deadline = time.monotonic() + 10
                while _alive(stage) and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert not _alive(stage), "the feed stage outlived its matcher"
            a.sock.close()
            stack.start()
        b = stack.ouch("alfa", "alfa-pw", sequence=1)     # the day's messages again, from the first
        deadline = time.monotonic() + 20
        accepted: set[int] = set()
        while len(accepted) < ref and time.monotonic() < deadline and not b.closed:
            b.pump(0.2)
            accepted = {m.user_ref_num for _, m in b.messages if isinstance(m, ouch.L.OrderAccepted)}
        assert accepted == set(range(1, ref + 1))
        b.close()
        store = os.path.join(stack.state, "feed", "p0")
        with open(os.path.join(store, "CHANNEL-l3.json")) as f:
            assert json.load(f)["generation"] == 0
        adds = [m for m in _messages(store)["l3"] if m[:1] == b"A"]
        assert len(adds) == ref


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

