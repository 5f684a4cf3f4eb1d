"""A rig for the gap-fill tests: the standard flow through the real engine and publisher (real feed
store, loopback multicast), and the retransmission and snapshot servers as the processes the
appliance starts (`matchwire retransmit serve`, `matchwire snapshot serve`, same arguments).

Used by tests/test_recovery_client.py and tests/test_retransmit_servers.py; its own test checks
that the servers start from a config and stop on SIGTERM with their counters.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from appliance import config as C
from appliance.catalogue import Event
from appliance.daemon import feed_config, feed_store_dir
from appliance.gcpolicy import NEVER
from appliance.matching.engine import Engine
from feeds.books import engine_l1_summary, engine_l2_summary, engine_l3_summary, summary_hash
from feeds.channels import FeedConfig
from feeds.publisher import Publisher
from feeds.transport import UdpTransport
from test_feed_e2e import random_groups
from tools.flowgen import write_flow
from tools.flows import FLOW_FIRM_STP, decode_records, flow_instrument_count, flow_instruments, read_flow_bytes

ROOT = Path(__file__).resolve().parents[1]
FLOW_EVENTS = 20_000
DAY_NS = 86_400 * 10**9
MIDNIGHT = 1_700_000_000 * 10**9 - (1_700_000_000 * 10**9) % DAY_NS
T0 = MIDNIGHT + 9 * 3600 * 10**9 + 30 * 60 * 10**9
USERNAME, PASSWORD = "mdata", "md-pw"


def standard_flow(directory: Path, events: int = FLOW_EVENTS) -> bytes:
    """FLOW.bin of the standard flow (`matchwire flow generate --seed 42 --target 300`); made once per
    directory."""
    out = directory / f"flow{events}"
    if not out.with_suffix(".bin").exists():
        write_flow(str(out), events, seed=42, target=300)
    data, _meta = read_flow_bytes(out.with_suffix(".bin"))
    return data


def write_config(root: Path, partitions: int = 4, max_payload: int = 1472, **retransmit: Any) -> Path:
    """The demo config with ``partitions`` partitions (ids 1..n, random loopback groups, WALs under
    root) and [retransmit] changed by ``retransmit``; returns its path."""
    doc = tomllib.loads(C.DEFAULT)
    doc["instruments"] = [{"symbol": f"X{i}", "locate": i + 1, "tick": "0.0001", "round_lot": 100}
                          for i in range(partitions)]
    doc["partitions"] = []
    for i in range(partitions):
        groups = random_groups()
        doc["partitions"].append({
            "name": f"p{i + 1}", "id": i + 1, "instruments": [f"X{i}"], "wal_dir": str(root / f"wal{i + 1}"),
            "feeds": {ch: {"a_group": g.a[0], "a_port": g.a[1], "b_group": g.b[0], "b_port": g.b[1]}
                      for ch, g in groups.items()}})
    doc["market_data"]["max_payload"] = max_payload
    doc["retransmit"].update({"username": USERNAME, "password": PASSWORD}, **retransmit)
    path = root / "appliance.toml"
    path.write_text(C.dumps(C.from_dict(doc)))
    return path


class ServerProcess:
    """One `matchwire ... serve` process; ``info`` is its "listening" line."""

    def __init__(self, argv: list[str], timeout_s: float = 30.0) -> None:
        self.argv = argv
        self.proc = subprocess.Popen([sys.executable, "-m", "tools.cli", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            _, err = self.proc.communicate(timeout=timeout_s)
            raise AssertionError(f"{argv[:2]} did not start: {err}")
        self.info: dict[str, Any] = json.loads(line)
        assert self.info["event"] == "listening"
        self.stats: dict[str, Any] | None = None
        self.stderr = ""

    def address(self, key: str) -> tuple[str, int]:
        host, port = self.info[key]
        return host, int(port)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 20.0) -> dict[str, Any]:
        """SIGTERM, then the counters it prints as it stops."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, self.stderr = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, self.stderr = self.proc.communicate()
            raise AssertionError(f"{self.argv[:2]} did not stop on SIGTERM")
        assert self.proc.returncode == 0, self.stderr
        last = json.loads(out.strip().splitlines()[-1])
        assert last["event"] == "stopped"
        # full collections wait for a quiet tick (appliance.gcpolicy), never the allocator's
        assert last["gc"]["gc_threshold"][2] == NEVER and "gc_full_collections" in last["gc"], last["gc"]
        self.stats = last["stats"]
        return self.stats


class Rig:
    """Config, state directory and the two server processes, for one test module."""

    def __init__(self, root: Path, partitions: int = 4, max_payload: int = 1472, **retransmit: Any) -> None:
        self.root = root
        self.state_dir = root / "state"
        self.config_path = write_config(root, partitions, max_payload, **retransmit)
        self.config = C.load(str(self.config_path))
        self.retransmit: ServerProcess | None = None
        self.snapshot: ServerProcess | None = None
        self.used: set[str] = set()

    def start(self) -> Rig:
        self.retransmit = ServerProcess(["retransmit", "serve", "--config", str(self.config_path), "--state-dir",
                                         str(self.state_dir), "--rerequest-port", "0", "--replay-port", "0"])
        rr, rp = self.retransmit.address("rerequest"), self.retransmit.address("replay")
        self.snapshot = ServerProcess(["snapshot", "serve", "--config", str(self.config_path), "--state-dir",
                                       str(self.state_dir), "--port", "0", "--rerequest", f"{rr[0]}:{rr[1]}",
                                       "--replay", f"{rp[0]}:{rp[1]}"])
        return self

    def stop(self) -> None:
        for p in (self.snapshot, self.retransmit):
            if p is not None and p.alive():
                p.stop()

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        assert self.retransmit is not None and self.snapshot is not None
        return {"rerequest": self.retransmit.address("rerequest"), "replay": self.retransmit.address("replay"),
                "snapshot": self.snapshot.address("snapshot")}

    def partition(self) -> C.PartitionConfig:
        """A partition no test of this rig used yet (each test its own sessions and groups)."""
        for p in self.config.partitions:
            if p.name not in self.used:
                self.used.add(p.name)
                return p
        raise AssertionError("rig: every partition is used; give the rig more")

    def feed(self, p: C.PartitionConfig) -> FeedConfig:
        return feed_config(self.config, p)

    def store_dir(self, p: C.PartitionConfig) -> str:
        return feed_store_dir(str(self.state_dir), p.name)


class FlowRun:
    """The standard flow through the engine and a publisher with a real store, over loopback
    multicast, batch by batch: ``step()`` publishes one batch; ``finish()`` ends the session."""

    def __init__(self, rig: Rig, p: C.PartitionConfig, flow: bytes, batch: int = 100) -> None:
        self.feed = rig.feed(p)
        cmds = decode_records(flow)
        self.cmds = cmds
        instruments = flow_instruments(flow_instrument_count(cmds, {}))
        self.engine = Engine(instruments, FLOW_FIRM_STP)
        self.transport = UdpTransport(self.feed.interface, self.feed.ttl, self.feed.dscp)
        self.pub = Publisher(self.feed, instruments, MIDNIGHT, self.transport, rig.store_dir(p))
        self.pub.start(T0)
        self.batch = batch
        self.next = 0
        self.seq = 1
        self.now = T0

    @property
    def done(self) -> bool:
        return self.next >= len(self.cmds)

    def step(self) -> None:
        res = []
        apply = self.engine.apply
        for cmd in self.cmds[self.next:self.next + self.batch]:
            out: list[Event] = []
            apply(cmd, out)
            self.now = T0 + self.seq * 1000
            res.append((self.seq, self.now, cmd, out))
            self.seq += 1
        self.next += self.batch
        self.pub.publish(res)

    def idle(self) -> None:
        """A second of silence: a heartbeat on every channel (tail losses show up)."""
        self.now += 10**9
        self.pub.poll(self.now)

    def finish(self) -> None:
        self.now += 10**9
        self.pub.end_session(self.now)
        self.now += 10**9
        self.pub.poll(self.now)

    def next_seqs(self) -> dict[str, int]:
        return {ch: c.next_seq for ch, c in self.pub.channels.items()}

    def assert_books_equal_engine(self, books: Any) -> None:
        levels = self.feed.depth_levels
        assert summary_hash(books.l3.summary()) == summary_hash(engine_l3_summary(self.engine)), "L3"
        assert summary_hash(books.l2.summary()) == summary_hash(engine_l2_summary(self.engine, levels)), "L2"
        assert summary_hash(books.l1.summary()) == summary_hash(engine_l1_summary(self.engine)), "L1"

    def close(self) -> None:
        self.pub.close()
        self.transport.close()


def drive(run: FlowRun, poll: Callable[[], Any], *, pace_s: float = 0.001,
          before_batch: Callable[[int], Any] | None = None) -> None:
    """Publish every batch, letting the subscriber poll between batches (a market's pace)."""
    k = 0
    while not run.done:
        if before_batch is not None:
            before_batch(k)
        run.step()
        poll()
        time.sleep(pace_s)
        k += 1


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return standard_flow(tmp_path_factory.getbasetemp())


def rig_fixture(tmp_path_factory: pytest.TempPathFactory, **kw: Any) -> Iterator[Rig]:
    rig = Rig(tmp_path_factory.mktemp("rig"), **kw).start()
    try:
        yield rig
    finally:
        rig.stop()


def test_the_servers_start_from_the_config_and_stop_on_sigterm_with_their_counters(tmp_path: Path) -> None:
    rig = Rig(tmp_path, partitions=2).start()
    try:
        assert rig.retransmit is not None and rig.snapshot is not None
        assert rig.retransmit.info["stores"] == [rig.store_dir(p) for p in rig.config.partitions]
        ready = json.loads((rig.state_dir / "run" / "snapshot-server.ready.json").read_text())
        assert ready["snapshot"] == rig.snapshot.info["snapshot"] and ready["pid"] == rig.snapshot.proc.pid
        assert os.path.exists(rig.state_dir / "run" / "retransmit-server.ready.json")
    finally:
        rig.stop()
    assert rig.retransmit.stats is not None and rig.snapshot.stats is not None
    assert rig.retransmit.stats["rerequest"]["requests"] == 0
    assert len(rig.snapshot.stats["feeds"]) == 2
