"""The matching process of one partition: recovery, then the duty cycle, then a clean shutdown.

Owned by its own process (``python -m appliance.daemon``, started by ``matchwire run``). One thread
does everything: drain the command rings, sequence + WAL commit + match (``Partition.process_batch``),
then release: event records to the gateways' rings first, then market data (``Publisher.publish``).
End of batch is the commit point; nothing leaves before ``process_batch`` returned::

    loop:
        now_ns = clock()                                    the clock (appliance.clock), once per cycle
        flush the event records a full ring refused last time (that gateway's commands wait)
        drain each gateway's command ring (poll_block, up to max_batch records in all)
        results = partition.process_batch(commands, now_ns) sequence, WAL append + commit, apply
        event records -> each gateway's ring (+ its doorbell when it had drained everything)
        publisher.publish(results)                          ITCH L3, L2, L1 -> MoldUDP64 A and B
        idle: partition.poll (interval policy), publisher.poll (heartbeats), idle strategy

A full event ring is back-pressure: the records wait in the partition (one batch's worth at most)
and that gateway's command ring is not drained until they are out; the loop never blocks.

Start-up is recovery (crash-only): one pass over the WAL (``open_partition(on_command=...)``: from
the newest snapshot when the feed checkpoint written with it is usable, else from the start of the
day) rebuilds the engine and regenerates the feed for the
publisher's store (same session, same sequence numbers), rebuilds each gateway's risk view (net
positions, last prices, open orders) and the events a gateway had not processed before a restart
(its journal says up to which seq it had). A DurabilityError exits with EXIT_DURABILITY_FAILURE.

Host tuning, each step logged as applied or refused: CPU pinning (config ``cpu``; -1: the last
CPU of the affinity mask), SCHED_FIFO, mlockall, the cyclic GC frozen after start-up and disabled
in the loop (a generation-0 collection at most once a second when idle).
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import signal
import sys
import time
from collections import deque
from typing import Any, Final, Sequence

from appliance import codec_ring as C
from appliance.build import build_kind
from appliance.catalogue import ClockTick, Close, Command, Ev, Event, Halt, Resume
from appliance.clock import Clock, wall_clock
from appliance.config import Config, PartitionConfig, load
from appliance import feedstage
from appliance import walstage
from appliance.stage import StageLink, stage_cpu
from appliance.fsutil import atomic_write
from appliance.idle import make_idle
from appliance.matching.engine import Engine
from appliance.metrics import DUTY_STAGES, S_DECODE, S_OTHER, S_RECORDS, STAGE_TIMING_ENV, Histogram, StageClock
from appliance.procinfo import process_figures, rusage_figures
from appliance.recovery import open_partition
from appliance.ring import Ring, check_platform, make_bell, remove_bell, ring_bell, wait_on_bells
from appliance.snapshot import EngineSpec, SnapshotInfo, list_snapshots, load_newest
from appliance.wal import (
    EXIT_DURABILITY_FAILURE,
    POLICY_INTERVAL,
    POLICY_NONE,
    DurabilityError,
    WalConfig,
    WalReader,
    WalWriter,
)
from feeds.afxdp import XdpUnavailable
from feeds.books import engine_l1_summary, engine_l2_summary, engine_l3_summary, summary_hash
from feeds.channels import CHANNELS, ChannelGroups, FeedConfig
from feeds.publisher import Publisher, read_checkpoint, session_opening, write_checkpoint
from feeds.transport import transport_for

MAX_BATCH: Final = 1024
TRADING_ACTIONS: Final = frozenset((Halt, Resume, Close))
EXIT_CONFIG: Final = 78          # EX_CONFIG
MCL_CURRENT: Final = 1
MCL_FUTURE: Final = 2
TICK_EVERY_NS: Final = 1_000_000_000   # a ClockTick at least this often while anything is timed


def log(name: str, text: str) -> None:
    sys.stderr.write(f"matchwire[{name}]: {text}\n")
    sys.stderr.flush()


# ================================================================================================
# Host tuning
# ================================================================================================

def isolated_cpus() -> set[int]:
    try:
        text = open("/sys/devices/system/cpu/isolated").read().strip()
    except OSError:
        return set()
    out: set[int] = set()
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.update(range(int(a), int(b) + 1))
        elif part:
            out.add(int(part))
    return out


def choose_cpu(configured: int) -> int:
    """The CPU to pin to: the configured one, else the last isolated CPU, else the last CPU allowed."""
    allowed = sorted(os.sched_getaffinity(0))
    if configured >= 0:
        return configured
    iso = sorted(isolated_cpus() & set(allowed))
    return (iso or allowed)[-1]


def apply_tuning(name: str, cpu: int, realtime: bool) -> dict[str, str]:
    """Pin, SCHED_FIFO, mlockall; every step says what happened (also in the returned dict)."""
    done: dict[str, str] = {}
    try:
        target = choose_cpu(cpu)
        os.sched_setaffinity(0, {target})
        done["affinity"] = f"pinned to CPU {target}"
    except (OSError, ValueError) as e:
        done["affinity"] = f"refused: {e}"
    if not realtime:
        done["sched_fifo"] = "not requested (--no-realtime)"
        done["mlockall"] = "not requested (--no-realtime)"
    else:
        try:
            prio = os.sched_get_priority_min(os.SCHED_FIFO) + 9
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio))
            done["sched_fifo"] = f"SCHED_FIFO priority {prio}"
        except PermissionError as e:
            done["sched_fifo"] = f"refused by the host (no privilege): {e}; running SCHED_OTHER"
        except (OSError, AttributeError) as e:
            done["sched_fifo"] = f"refused: {e}; running SCHED_OTHER"
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            if libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
                err = ctypes.get_errno()
                done["mlockall"] = f"refused by the host: {os.strerror(err)}; memory may be paged out"
            else:
                done["mlockall"] = "memory locked (current and future)"
        except (OSError, AttributeError) as e:
            done["mlockall"] = f"refused: {e}"
    for k, v in done.items():
        log(name, f"{k}: {v}")
    return done


def first_wal_ts(waldir: str) -> int | None:
    try:
        reader = WalReader(waldir)
        for _seq, ts, _epoch, _cmd in reader.records(0):
            return ts
    except Exception:  # an unreadable WAL is open_partition's to report
        return None
    return None


def feed_config(config: Config, p: PartitionConfig) -> FeedConfig:
    md = config.market_data
    groups = {ch: ChannelGroups((f.a_group, f.a_port), (f.b_group, f.b_port)) for ch, f in p.feeds.items()}
    return FeedConfig(partition=p.id, channels=tuple(ch for ch in CHANNELS if ch in p.feeds), groups=groups,
                      interface=md.interface, ttl=md.ttl, dscp=md.dscp, depth_levels=md.l2_depth,
                      max_payload=md.max_payload, directory=config.stock_directory(p.name), source_port=md.source_port,
                      transports={ch: f.transport or md.transport for ch, f in p.feeds.items()},
                      afxdp_mode=md.afxdp_mode, afxdp_required=md.afxdp_required, afxdp_queue=md.afxdp_queue,
                      source_port_a=md.source_port_a, source_port_b=md.source_port_b,
                      end_of_session_ns=md.end_of_session_ms * 1_000_000)


def wal_config(p: PartitionConfig) -> WalConfig:
    return WalConfig(dir=p.wal_dir, policy=p.durability, interval_ms=p.interval_ms, snapshot_dir=p.snapshot_dir,
                     snapshot_every_events=p.snapshot_every_events,
                     snapshot_every_seconds=p.snapshot_every_seconds)


def engine_spec(config: Config, p: PartitionConfig) -> EngineSpec:
    """The partition's engine: its instruments, STP modes and, with a [trading] section, its trading
    rules (without one: continuous trading all day, as before trading phases existed)."""
    return EngineSpec.of(config.partition_instruments(p.name), config.firm_stp(), p.default_stp,
                         config.trading_rules(p.name))


def feed_store_dir(state_dir: str, partition: str) -> str:
    return os.path.join(state_dir, "feed", partition)


def stage_figures(link: StageLink) -> dict[str, Any]:
    """A stage process's figures: now while it runs, its whole life once reaped."""
    if link.exit_status is None:
        return {"pid": link.pid, **process_figures(link.pid)}
    ended = rusage_figures(link.rusage) if link.rusage is not None else {"running": False}
    return {"pid": link.pid, **ended, "exit_status": link.exit_status}


def atomic_json(path: str, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True).encode(), durable=False)


# ================================================================================================
# The partition process
# ================================================================================================

class PartitionDaemon:
    """One partition's process state. Owned by the matching thread (the only thread)."""

    def __init__(self, config: Config, partition: str, state_dir: str, *, realtime: bool = True,
                 transport: str = "udp", max_batch: int = MAX_BATCH, stage_timing: bool = False,
                 clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or wall_clock()   # epoch ns; tests and rehearsals inject another
        self.p = config.partition(partition)
        self.name = partition
        self.state_dir = state_dir
        self.realtime = realtime
        self.transport_kind = transport
        self.max_batch = max_batch
        self.gateways = [g.name for g in config.gateways]
        firm_ids = {f.name: f.id for f in config.firms}
        self.gateway_of_firm = {firm_ids[f]: i for i, g in enumerate(config.gateways) for f in g.firms}
        self.stopping = False
        self.stats: dict[str, Any] = {"commands": 0, "batches": 0, "records_out": 0, "ring_full": 0,
                                      "bad_records": 0, "max_batch_seen": 0}
        self.in_engine = Histogram()      # per batch: command ring drained -> event records out
        self.records_out_ns = 0
        # Stage timing (out of band, off by default): one clock read per stage boundary.
        self.stages: StageClock | None = StageClock(DUTY_STAGES) if stage_timing else None
        self.tuning: dict[str, str] = {}
        self.notes: list[str] = []
        self.stop_after_commands = 0     # benchmarks: stop once this many commands were processed
        self.first_batch_ns = 0
        self.last_batch_ns = 0
        self.stats_requested = False
        self.admin_origin: dict[int, int] = {}   # id(Halt/Resume/Close command) -> the gateway that sent it
        self.feed: feedstage.FeedStage | None = None   # the feed stage's handle (feed_stage = "process")
        self.wal_stage: walstage.RemoteWal | None = None   # the WAL stage's (wal_stage = "process")
        # With the WAL stage: (the batch's last seq, its records per gateway) until durable
        self.held: deque[tuple[int, list[list[bytes]], int]] | None = None
        self.batch_ns = 0                # the clock when the current batch was drained

    # -- start-up -----------------------------------------------------------------------------------
    def start(self) -> None:
        p = self.p
        name = self.name
        for w in self.config.warnings:
            log(name, "WARNING: " + w)
        check_platform()
        slot_size = self.config.appliance.ring_slot_size
        if slot_size < C.MIN_SLOT_SIZE:
            raise ValueError(f"appliance.ring_slot_size {slot_size}: the event records need at least "
                             f"{C.MIN_SLOT_SIZE} bytes per slot")
        self.allowed_cpus = sorted(os.sched_getaffinity(0))   # before pinning: the feed stage's choice
        self.tuning = apply_tuning(name, p.cpu, self.realtime)
        log(name, f"build: {build_kind()} (hot path {'compiled by mypyc' if build_kind() == 'mypyc' else 'pure Python'}); "
                  f"idle strategy {p.idle}" + ("; stage timing on" if self.stages is not None else ""))
        t0 = time.perf_counter()
        spec = engine_spec(self.config, p)
        # One pass over the WAL rebuilds the engine and regenerates the feed, the gateways' positions
        # and catch-up: from the newest snapshot when the feed checkpoint written with it is usable,
        # else from the start of the day.
        first = first_wal_ts(p.wal_dir) if os.path.isdir(p.wal_dir) else None
        trading = self.config.trading is not None
        # A WAL directory is one trading day: the day of its first record, else today.
        day_ts = first if first is not None else self.clock()
        self.day = self.config.trading_day(day_ts)
        self.midnight_ns = self.config.midnight_of(day_ts)
        fcfg = feed_config(self.config, p)
        pcap = None
        if self.transport_kind == "pcap":
            os.makedirs(os.path.join(self.state_dir, "run"), exist_ok=True)
            pcap = os.path.join(self.state_dir, "run", f"{name}.pcap")
        self.transport = transport_for(fcfg, self.transport_kind, pcap)
        instruments = self.config.partition_instruments(name)
        store = feed_store_dir(self.state_dir, name)
        os.makedirs(store, exist_ok=True)
        pub = self.publisher = Publisher(fcfg, instruments, self.midnight_ns, self.transport, store)
        for n in getattr(self.transport, "notes", ()):
            log(name, "feed: " + n)
        for n in pub.notes:
            log(name, "feed: " + n)
        from appliance.gateway.server import resume_points  # the gateways' journals
        resume = [resume_points(self.state_dir, g).get(p.id, 0) for g in self.gateways]
        self.encoder = enc = C.EventEncoder(self.gateway_of_firm, len(self.gateways))
        self.feed_store = store
        self.published_seq = self.checkpoint_seq = 0
        start_from = self._feed_checkpoint(spec, resume)
        if start_from is not None:
            self.published_seq = self.checkpoint_seq = start_from[1].seq

        def start_feed() -> None:
            """The start of session (regenerated after a crash): once the WAL is fenced, before the
            first replayed command."""
            if trading:
                # The session opens from the engine as the WAL's first command finds it (every
                # instrument in its start state, no order): the same opening after a restart, so the
                # regenerated start of session is the one published.
                pub.start(self.clock(), session_opening(spec.build()))
            else:
                pub.start(self.clock())
        backlog: list[list[bytes]] = [[] for _ in self.gateways]
        tmp: list[list[bytes]] = [[] for _ in self.gateways]
        G = len(self.gateways)
        replay_cmd = pub.replay_command
        count_fills = enc.count_fills
        behind = min(resume, default=0)   # events after this seq go to some gateway's catch-up

        def on_command(seq: int, ts: int, cmd: Command, events: list[Event]) -> bool:
            if not pub.started:
                start_feed()
            replay_cmd(seq, ts, cmd, events)
            if seq > behind:
                enc.encode([(seq, ts, cmd, events)], tmp)   # counts the fills in enc.positions too
                for g in range(G):
                    if tmp[g]:
                        if seq > resume[g]:
                            backlog[g].extend(tmp[g])
                        tmp[g].clear()
            else:
                count_fills(events)
            return False

        opened = open_partition(wal_config(p), spec, use_snapshots=start_from is not None, on_command=on_command,
                                start_from=start_from)
        if not pub.started:
            start_feed()
        self.partition = part = opened.partition
        if self.stages is not None:
            part.stages = part.wal.stages = pub.stages = self.stages
        rec = opened.recovered
        self.notes = list(opened.notes)
        for n in opened.notes:
            log(name, "recovery: " + n)
        log(name, f"recovered to seq {rec.last_seq} (snapshot {rec.snapshot.seq if rec.snapshot else 'none'}, "
                  f"{rec.replayed} replayed, epoch {opened.epoch}, {rec.seconds:.3f} s)")
        log(name, f"feed: {rec.replayed} commands replayed " + (
            f"after the checkpoint at seq {start_from[1].seq}" if start_from else "from the start of the day"))
        pub.publish([])          # ends the replay: the feed goes on in the same session
        self.published_seq = max(self.published_seq, rec.last_seq)
        positions = enc.positions
        last = part.applied_seq
        log(name, f"feed: {json.dumps(pub.stats())}")
        # Rings, doorbells, and each gateway's bootstrap.
        slots = self.config.appliance.ring_slots
        self.rings: list[tuple[Ring, Ring]] = []
        self.consumers = []
        self.producers = []
        self.bells: list[int] = []       # the gateways' doorbells (we write)
        self.wake_fds: list[int] = []    # our doorbells, one per command ring (we wait on them)
        self.pending: list[list[bytes]] = []
        by_firm_gw = self.gateway_of_firm
        live = part.engine.orders
        for g, gw in enumerate(self.gateways):
            names = self.config.ring_names(name, gw)
            rc = Ring.create(names["cmd"], slots, slot_size, replace=True)
            re_ = Ring.create(names["evt"], slots, slot_size, replace=True)
            self.rings.append((rc, re_))
            self.consumers.append(rc.consumer())
            self.producers.append(re_.producer())
            # Two doorbells: the gateway's (rung when it sleeps and its event ring got records) and
            # ours (rung by the gateway when we sleep and our command ring got records).
            self.bells.append(make_bell(names["evt"]))
            self.wake_fds.append(make_bell(names["cmd"]))
            boot: list[bytes] = []
            for (firm, locate), pos in sorted(positions.items()):
                if pos and by_firm_gw.get(firm) == g:
                    boot.append(C.control_record(C.CTL_POSITION, last, firm, locate, pos))
            for book in part.engine.book_list:
                if book.last_price:
                    boot.append(C.control_record(C.CTL_LAST_PRICE, last, book.locate, book.last_price))
            for o in sorted(live.values(), key=lambda o: o.ref):
                if by_firm_gw.get(o.firm) == g:
                    boot.append(C.open_order_record(last, o))
            boot.append(C.control_record(C.CTL_REPLAY, last))
            boot.extend(backlog[g])
            boot.append(C.control_record(C.CTL_LIVE, last))
            if backlog[g]:
                log(name, f"gateway {gw}: {len(backlog[g])} event records after seq {resume[g]} to catch up")
            self.pending.append(boot)
        # Trading phases: the day's schedule, sequenced as the first command of the loop (its events
        # take the ordinary path), unless the WAL already holds this day's schedule.
        # Without [trading] nothing is timed until an admin action starts a timer (a reopening call);
        # a recovered engine may be inside one already.
        self.timed = trading or part.engine.next_deadline_ns() is not None
        self.last_tick_ns = 0
        self.startup_cmds: list[Command] = []
        if trading:
            sched = self.config.schedule_for(self.day)
            eng = part.engine
            if sched is not None and (eng.pre_open_ns, eng.opening_auction_ns, eng.open_ns,
                                      eng.closing_auction_ns, eng.close_ns) != (
                    sched.pre_open_ns, sched.opening_auction_ns, sched.open_ns, sched.closing_auction_ns,
                    sched.close_ns):
                self.startup_cmds.append(sched)
                log(name, f"trading day {self.day}: schedule {sched!r} to be sequenced")
            elif sched is not None:
                log(name, f"trading day {self.day}: schedule already in the WAL")
        self.last_gen0 = time.monotonic()
        gc.collect()
        gc.freeze()
        log(name, f"start-up {time.perf_counter() - t0:.3f} s; gc frozen ({gc.get_freeze_count()} objects), "
                  f"disabled in the loop; idle strategy {p.idle}; WAL policy {p.durability}")
        self.ready_info = {
            "partition": name, "pid": os.getpid(), "last_seq": last, "epoch": opened.epoch,
            "feed": pub.stats(), "tuning": self.tuning, "notes": self.notes,
            "state_hash": part.engine.state_hash(),
        }
        self._start_stages(fcfg)

    def _start_stages(self, fcfg: FeedConfig) -> None:
        """Fork the stage processes the config asks for: the WAL stage (appliance.walstage), then
        the feed stage (appliance.feedstage). From here on this process hands the feed stage the WAL
        records of every released batch instead of publishing them itself, and with the WAL stage it
        matches ahead of durability, holding what it releases until the durable seq covers it."""
        p = self.p
        if p.feed_stage != feedstage.PROCESS:
            return
        kinds = {self.transport_kind, *(fcfg.transports or {}).values()}
        if not kinds <= set(feedstage.TRANSPORTS_FORKABLE):
            log(self.name, f"feed stage: transport {', '.join(sorted(kinds))} stays in the matching process "
                           f"(a feed stage takes {', '.join(feedstage.TRANSPORTS_FORKABLE)}); so does the WAL")
            return
        mine = sorted(os.sched_getaffinity(0))
        cpu = stage_cpu(p.stage_cpu, mine[0] if len(mine) == 1 else -1, self.allowed_cpus)
        where = f" on CPU {cpu}" if cpu is not None else " on the matcher's CPU (the only one allowed)"
        tap: deque[tuple[int, int, list[bytes]]] = deque()
        part = self.partition
        prefix = self.config.appliance.name
        writer = part.wal
        assert isinstance(writer, WalWriter)   # recovery opened the partition's own writer
        if p.wal_stage == feedstage.PROCESS:
            remote = walstage.start(self.name, prefix, writer, p.stage_idle, cpu, self.clock, tap)
            remote.stages = self.stages
            part.wal = remote
            part.apply_ahead = True
            self.wal_stage = remote
            self.held = deque()
            self.ready_info["wal_stage_pid"] = remote.link.pid
            log(self.name, f"WAL stage: pid {remote.link.pid}{where}; matching runs ahead of durability, "
                           f"releases follow the durable seq")
        else:
            writer.tap = tap
        run = os.path.join(self.state_dir, "run")
        os.makedirs(run, exist_ok=True)
        self.feed = feedstage.start(
            self.name, feedstage.journal_ring_name(prefix, self.name), self.publisher,
            part.engine, p.stage_idle, cpu, self.clock, os.path.join(run, f"{self.name}.feed.json"),
            self.feed_store, self.stages is not None, tap)
        self.ready_info["feed_stage_pid"] = self.feed.pid
        log(self.name, f"feed stage: pid {self.feed.pid}{where}")

    def _feed_checkpoint(self, spec: EngineSpec, resume: list[int]) -> tuple[Engine, SnapshotInfo] | None:
        """Resume the publisher from the feed checkpoint of the newest snapshot that has a usable one
        (readable, the current sessions, a store holding what it says, and every gateway's journal
        reaching the last command whose events it was sent before it: their catch-up comes from the
        replay); returns that snapshot, restored, for the one replay to start from. None: nothing
        changed, the WAL is replayed from the start of the day."""
        if self.p.durability == POLICY_NONE:   # the WAL may end before the newest snapshot
            log(self.name, "feed: full replay (WAL policy none)")
            return None
        snapdir = wal_config(self.p).snapshots
        refused: list[str] = []
        for seq, _path in list_snapshots(snapdir):
            ckpt, where = read_checkpoint(self.feed_store, seq)
            why = where if ckpt is None else self.publisher.resume_problem(ckpt) or ""
            if ckpt is not None and not why:
                routed = ckpt["extra"].get("routed", {})
                for g, gw in enumerate(self.gateways):
                    need = int(routed.get(gw, seq))   # a gateway the checkpoint does not know: S itself
                    if resume[g] < need:
                        why = f"gateway {gw}'s journal ends at seq {resume[g]}, its events reach seq {need}"
                        break
            restored = None
            if ckpt is not None and not why:
                notes: list[str] = []
                restored = load_newest(snapdir, spec, seq, notes)
                if restored is None or restored[1].seq != seq:
                    why = f"the snapshot at seq {seq} is unusable ({'; '.join(notes)})"
            if why or ckpt is None or restored is None:
                refused.append(why)
                continue
            self.publisher.resume(ckpt)
            self.encoder.positions = {(int(f), int(loc)): int(q) for f, loc, q in ckpt["extra"]["positions"]}
            self.encoder.routed = {g: int(routed[gw]) for g, gw in enumerate(self.gateways) if gw in routed}
            log(self.name, f"feed: resumed from {where}" + (f" (newer ones refused: {'; '.join(refused)})"
                                                            if refused else ""))
            return restored
        log(self.name, "feed: full replay (" + ("; ".join(refused) if refused else "no snapshot") + ")")
        return None

    def _maybe_checkpoint(self) -> None:
        """A feed checkpoint for the newest snapshot, once the feed has published exactly through it."""
        s = self.partition.last_snapshot_seq
        if s == self.published_seq and s != self.checkpoint_seq:
            self.checkpoint_seq = s
            positions = [[f, loc, q] for (f, loc), q in sorted(self.encoder.positions.items()) if q]
            routed = {gw: self.encoder.routed.get(g, 0) for g, gw in enumerate(self.gateways)}
            if self.feed is not None:   # the feed stage writes it once it has published through s
                self.feed.send(b"K" + json.dumps({"seq": s, "extra": {"positions": positions,
                                                                          "routed": routed}}).encode())
                return
            try:
                write_checkpoint(self.feed_store, self.publisher.checkpoint(
                    s, {"positions": positions, "routed": routed}))
            except OSError as e:   # costs replay time at the next start, nothing else
                log(self.name, f"feed checkpoint at seq {s} not written: {e}")

    # -- the duty cycle -------------------------------------------------------------------------------
    def _flush(self, g: int) -> None:
        pend = self.pending[g]
        prod = self.producers[g]
        was_empty = prod.free() == prod._slots
        k = prod.try_publish_many(pend)
        if k:
            if was_empty and prod.consumer_waiting():   # a polling gateway needs no system call
                ring_bell(self.bells[g])
            del pend[:k]
        if pend:
            self.stats["ring_full"] += 1

    def _release(self, results: Sequence[Any], origin: dict[int, int] | None) -> None:
        out: list[list[bytes]] = [[] for _ in self.gateways]
        self.encoder.encode(results, out, origin)
        if self.admin_origin:
            self._admin_answers(results, out)
        if self.held is not None:   # ahead of durability: out waits for the durable seq
            self.held.append((self.partition.applied_seq, out, self.batch_ns))
            if self.stages is not None:
                self.stages.lap(S_RECORDS)
            self._release_durable()
            return
        self._to_gateways(out)
        self.records_out_ns = self.clock()   # ring in -> ring out ends here (the in-engine histogram)
        if self.stages is not None:
            self.stages.lap(S_RECORDS)
        if self.feed is not None:
            self.feed.hand(self.partition.applied_seq)    # the feed stage publishes them
        else:
            self.publisher.publish(results)
        self.published_seq = results[-1][0]
        if self.partition.last_snapshot_seq != self.checkpoint_seq:
            self._maybe_checkpoint()

    def _release_durable(self) -> None:
        """The sequence barrier: what the durable seq covers leaves, in sequence (the WAL stage).
        A snapshot's feed checkpoint is taken when the release passes exactly its seq."""
        held = self.held
        assert held is not None
        durable = self.partition.wal.durable_seq
        s = self.partition.last_snapshot_seq
        if s != self.checkpoint_seq and s <= durable:
            if self.published_seq < s:
                self._release_through(s)
            self._maybe_checkpoint()
        if held and held[0][0] <= durable:
            self._release_through(durable)

    def _release_through(self, seq: int) -> None:
        held = self.held
        assert held is not None and self.feed is not None
        t_in: list[int] = []
        while held and held[0][0] <= seq:
            _, out, t = held.popleft()
            self._to_gateways(out)
            t_in.append(t)
        t_out = self.clock()
        for t in t_in:    # in-engine: each batch from its drain to its records' release
            self.in_engine.record(t_out - t)
        self.feed.hand(seq)
        self.published_seq = seq

    def _to_gateways(self, out: list[list[bytes]]) -> None:
        pending = self.pending
        for g, recs in enumerate(out):
            if recs:
                self.stats["records_out"] += len(recs)
                if pending[g]:
                    pending[g].extend(recs)
                else:
                    pending[g] = recs
                    self._flush(g)

    def _admin_answers(self, results: Sequence[Any], out: list[list[bytes]]) -> None:
        """CTL_ADMIN to the gateway that sent an admin Halt/Resume/Close the engine applied (one it
        refused goes back as its CommandRejected), so that the admin request gets the outcome."""
        for seq, _ts, cmd, events in results:
            g = self.admin_origin.pop(id(cmd), None)
            if g is None or any(ev[0] == Ev.REJECTED for ev in events):
                continue
            changed = sum(1 for ev in events if ev[0] == Ev.TRADING_STATE)
            out[g].append(C.control_record(C.CTL_ADMIN, seq, cmd.KIND, cmd.locate, changed))

    def run(self, shutdown: bool = True) -> int:
        """The duty cycle until ``stopping``; then the clean shutdown, or with shutdown=False nothing
        more (the state a crash leaves: benchmarks of the restart)."""
        part = self.partition
        pub = self.publisher
        consumers = self.consumers
        pending = self.pending
        G = len(consumers)
        slot = self.config.appliance.ring_slot_size
        max_batch = self.max_batch
        idle = make_idle(self.p.idle, self._wait_for_commands)
        interval = part.wal.policy == POLICY_INTERVAL
        clock = self.clock
        hist = self.in_engine
        stats = self.stats
        decode = C.decode_command_block
        engine = part.engine
        timed = self.timed
        st = self.stages
        feed = self.feed
        inline_feed = feed is None
        remote = self.wal_stage
        held = self.held
        spin = self.p.idle == "busy_spin"
        next_check = 0.0
        gc.disable()
        try:
            while not self.stopping:
                now = clock()
                if st is not None:
                    st.start()
                for g in range(G):
                    if pending[g]:
                        self._flush(g)
                if held:
                    self._release_durable()
                if feed is not None and feed.backlog:
                    feed.flush()
                    if feed.backlog:   # back-pressure from the feed stage: no new commands meanwhile
                        self.stats["feed_full"] = self.stats.get("feed_full", 0) + 1
                        if feed.check() is not None:
                            return self._feed_stage_died()
                        idle.idle(0)
                        continue
                if remote is not None and (remote.backlog or part.snapshot_held):
                    # back-pressure from the WAL stage, or a snapshot waiting for the durable seq
                    remote.poll(now)
                    part.poll(now)
                    if remote.backlog or part.snapshot_held:
                        self.stats["wal_full"] = self.stats.get("wal_full", 0) + 1
                        remote.check_alive()
                        if not spin:
                            os.sched_yield()
                        continue
                cmds: list[Command] = []
                bodies: list[bytes | None] = []   # beside cmds: its WAL body off the ring, None: encode it
                # id(command) -> the gateway it came from; with one gateway, that one (the encoder knows)
                origin: dict[int, int] | None = {} if G > 1 else None
                if timed:
                    if self.startup_cmds:
                        # The day's schedule and at once a tick into its current phase, ahead of
                        # any order of the same batch.
                        cmds.extend(self.startup_cmds)
                        self.startup_cmds.clear()
                        cmds.append(ClockTick(now))
                        bodies.extend([None] * len(cmds))
                        self.last_tick_ns = now
                        stats["ticks"] = stats.get("ticks", 0) + 1
                    elif self.tick_due(engine, now):
                        # A sequenced ClockTick, ahead of the batch's orders: in the WAL, so that
                        # replay reproduces the day's transitions at the same points.
                        cmds.append(ClockTick(now))
                        bodies.append(None)
                        self.last_tick_ns = now
                        stats["ticks"] = stats.get("ticks", 0) + 1
                for g in range(G):
                    if pending[g]:
                        continue
                    block, n = consumers[g].poll_block(max_batch - len(cmds))
                    if n:
                        before = len(cmds)
                        stats["bad_records"] += decode(block, n, slot, cmds, bodies)
                        if origin is not None:
                            for c in cmds[before:]:
                                origin[id(c)] = g
                        if not TRADING_ACTIONS.isdisjoint(map(type, cmds[before:])):
                            self._admin_requests(cmds, bodies, before, g, now)
                            timed = self.timed
                        if len(cmds) >= max_batch:
                            break
                if cmds:
                    if st is not None:
                        st.lap(S_DECODE)
                    self.batch_ns = now
                    results = part.process_batch(cmds, now, bodies)
                    if results:
                        self._release(results, origin)
                    n = len(cmds)
                    stats["commands"] += n
                    stats["batches"] += 1
                    if n > stats["max_batch_seen"]:
                        stats["max_batch_seen"] = n
                    t_out = clock()
                    if self.records_out_ns:
                        hist.record(self.records_out_ns - now)     # one value per batch
                        self.records_out_ns = 0
                    if not self.first_batch_ns:
                        self.first_batch_ns = now
                    self.last_batch_ns = t_out
                    if self.stop_after_commands and stats["commands"] >= self.stop_after_commands:
                        self.stopping = True
                    if st is not None:
                        st.lap(S_OTHER)
                    idle.idle(n)
                    continue
                if interval:
                    results = part.poll(now)
                    if results:
                        self._release(results, None)
                else:
                    part.poll(now)
                if part.last_snapshot_seq != self.checkpoint_seq:
                    self._maybe_checkpoint()
                if inline_feed:
                    pub.poll(now)
                if self.stats_requested:
                    self.stats_requested = False
                    if feed is not None:
                        feed.send(b"S")
                    self.write_stats()
                t = time.monotonic()
                if t - self.last_gen0 >= 1.0:
                    gc.collect(0)
                    self.last_gen0 = t
                if feed is not None and t >= next_check:   # about ten system calls a second, idle only
                    next_check = t + 0.1
                    if feed.check() is not None:
                        return self._feed_stage_died()
                    if remote is not None:
                        remote.check_alive()
                if held:   # waiting for the durable seq: poll it, no park
                    if not spin:
                        os.sched_yield()
                    continue
                idle.idle(0)
        except DurabilityError as e:
            log(self.name, f"DURABILITY FAILURE: {e}; nothing more is acknowledged; exiting "
                           f"{EXIT_DURABILITY_FAILURE}")
            part.abandon()
            return EXIT_DURABILITY_FAILURE
        finally:
            gc.enable()
        if not shutdown and self.held:   # what the WAL stage makes durable still leaves (benchmarks)
            deadline = time.monotonic() + 30
            while self.held and time.monotonic() < deadline and self.wal_stage is not None \
                    and self.wal_stage.link.check() is None:
                self._release_durable()
                time.sleep(0.0005)
        return self.shutdown() if shutdown else 0

    def _admin_requests(self, cmds: list[Command], bodies: list[bytes | None], before: int, g: int,
                        now: int) -> None:
        """Halt, Resume or Close among gateway g's commands cmds[before:]: each waits for its outcome
        (``admin_origin``), and the engine's clock moves to now ahead of the first."""
        admin_at = -1
        for i, c in enumerate(cmds[before:], before):
            if type(c) in TRADING_ACTIONS:
                self.admin_origin[id(c)] = g
                if admin_at < 0:
                    admin_at = i
        if admin_at >= 0 and self.partition.engine.now_ns >= self.last_tick_ns and self.last_tick_ns != now:
            # The engine's clock to now, ahead of a halt, resume or close: a reopening call lasts its
            # configured time from the resume, with or without a schedule; from here on its end is timed.
            cmds.insert(admin_at, ClockTick(now))
            bodies.insert(admin_at, None)
            self.last_tick_ns = now
            self.stats["ticks"] = self.stats.get("ticks", 0) + 1
            self.timed = True

    def _feed_stage_died(self) -> int:
        """The feed stage ended on its own: stop as a crash would (start-up regenerates the feed)."""
        assert self.feed is not None
        log(self.name, f"feed stage (pid {self.feed.pid}) exited with {self.feed.exit_status}: "
                       f"nothing more is acknowledged; exiting {feedstage.EXIT_FEED_STAGE}")
        self.partition.abandon()
        self.feed.close()
        return feedstage.EXIT_FEED_STAGE

    def _wait_for_commands(self, ns: int) -> None:
        """Back-off's park: sleep on our doorbells for at most ``ns``, so that a command wakes us at
        once instead of at the end of the park (the gateways ring only while we say we wait)."""
        wait_on_bells(self.consumers, self.wake_fds, ns)

    def tick_due(self, engine: Any, now: int) -> bool:
        """Whether a ClockTick is due: a deadline of the engine (schedule time, timer, imbalance
        message) has passed, or a second went by while something is timed. Never while the previous
        tick is still on its way (sequenced, not yet applied: interval durability)."""
        if engine.now_ns < self.last_tick_ns:
            return False
        dl = engine.next_deadline_ns()
        if dl is None:
            return False
        return now >= dl or now - self.last_tick_ns >= TICK_EVERY_NS

    # -- shutdown ---------------------------------------------------------------------------------------
    def shutdown(self) -> int:
        """Drain, commit, release; final snapshot; End of Session on the feeds; unlink the rings."""
        part = self.partition
        pub = self.publisher
        name = self.name
        try:
            for _ in range(64):   # what the gateways put in before they stopped
                cmds: list[Command] = []
                for g, cons in enumerate(self.consumers):
                    block, n = cons.poll_block(self.max_batch)
                    if n:
                        C.decode_command_block(block, n, self.config.appliance.ring_slot_size, cmds)
                if not cmds:
                    break
                self.stats["commands"] += len(cmds)
                self._release(part.process_batch(cmds, self.clock()), None)
            results = part.close(self.clock())
            if results:
                self._release(results, None)
            if self.held:
                self._release_durable()   # everything is durable now
            self._maybe_checkpoint()   # the final snapshot's
        except DurabilityError as e:
            log(name, f"DURABILITY FAILURE at shutdown: {e}")
            part.abandon()
            return EXIT_DURABILITY_FAILURE
        log(name, f"final snapshot at seq {part.last_snapshot_seq}; WAL closed clean at seq {part.applied_seq}")
        now = self.clock()
        eng = part.engine
        # The engine's scheduled close published Market Close (M) already: not twice.
        market_close = not (eng.close_ns and eng.market_phase >= 3)
        if self.feed is not None:
            rc = self.feed.finish(now, market_close, pub.config.end_of_session_ns / 1e9 + 10)
            if rc != 0:
                log(name, f"feed stage exited with {rc} at shutdown")
        else:
            pub.end_session(now, market_close=market_close)
            deadline = time.monotonic() + pub.config.end_of_session_ns / 1e9 + 5
            while not pub.finished and time.monotonic() < deadline:
                time.sleep(0.02)
                pub.poll(self.clock())
        log(name, f"feed: end of session sent: {json.dumps(self.feed_stats())}")
        self.write_stats()
        self.release()
        return 0

    def release(self) -> None:
        """Close the feed and its transport; close and unlink the rings and their doorbells."""
        if self.feed is not None:   # still running after a crash-like stop: it goes with us
            self.feed.kill()
            self.feed.close()
        if self.wal_stage is not None:
            self.wal_stage.link.kill()
            self.wal_stage.link.close()
            self.wal_stage.word.close(unlink=True)
        self.publisher.close()
        self.transport.close()
        self.release_rings()

    def release_rings(self) -> None:
        """Close and unlink the rings and their doorbells (also after a failed start-up)."""
        for fd in getattr(self, "bells", []) + getattr(self, "wake_fds", []):
            os.close(fd)
        self.bells = []
        self.wake_fds = []
        rings, self.rings = getattr(self, "rings", []), []
        for (rc, re_) in rings:
            for r in (rc, re_):
                r.close()
                r.unlink()
                remove_bell(r.name)

    def summary(self) -> dict[str, Any]:
        eng = self.partition.engine
        return {
            "partition": self.name, "last_seq": self.partition.applied_seq, "state_hash": eng.state_hash(),
            "l3_hash": summary_hash(engine_l3_summary(eng)),
            "l2_hash": summary_hash(engine_l2_summary(eng, self.config.market_data.l2_depth)),
            "l1_hash": summary_hash(engine_l1_summary(eng)),
            "resting": eng.resting_count(), "stats": self.stats, "in_engine": self.in_engine.summary_us(),
            "in_engine_histogram": self.in_engine.to_json(), "feed": self.feed_stats(),
            "tuning": self.tuning, "snapshot_seq": self.partition.last_snapshot_seq,
            "build": build_kind(), "idle": self.p.idle,
            "stages": self.stages.report(self.stats["commands"]) if self.stages is not None else None,
            "feed_stage": self.feed.read_stats() if self.feed is not None else None,
            "processes": self.process_figures(),
        }

    def process_figures(self) -> dict[str, Any]:
        """The matcher's and its stages' process figures (appliance.procinfo), read when the stats
        are written (shutdown, SIGUSR1), never in the duty cycle. A stage that has ended: its whole
        life, from the wait4 that reaped it."""
        out = {"matcher": process_figures(os.getpid())}
        if self.wal_stage is not None:
            out["wal_stage"] = stage_figures(self.wal_stage.link)
        if self.feed is not None:
            out["feed_stage"] = stage_figures(self.feed)
        return out

    def feed_stats(self) -> dict[str, Any]:
        """Per channel: session, next seq, messages, packets, heartbeats (the feed stage's last word
        when publishing runs there)."""
        if self.feed is not None:
            got = self.feed.read_stats()
            if got is not None:
                return dict(got["feed"])
        return self.publisher.stats()

    def write_stats(self) -> None:
        run = os.path.join(self.state_dir, "run")
        os.makedirs(run, exist_ok=True)
        atomic_json(os.path.join(run, f"{self.name}.stats.json"), self.summary())


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.daemon", description="one partition's matching process")
    ap.add_argument("--config", required=True)
    ap.add_argument("--partition", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--no-realtime", action="store_true", help="no SCHED_FIFO, no mlockall (tests, laptops)")
    ap.add_argument("--transport", default="udp", choices=("udp", "pcap", "null"))
    args = ap.parse_args(argv)
    from appliance.process import setup_process
    setup_process()
    try:
        config = load(args.config)
        config.partition(args.partition)
    except (ValueError, KeyError, OSError) as e:
        log(args.partition, f"configuration: {e}")
        return EXIT_CONFIG
    d = PartitionDaemon(config, args.partition, args.state_dir, realtime=not args.no_realtime,
                        transport=args.transport, stage_timing=os.environ.get(STAGE_TIMING_ENV, "") == "1")

    def stop(signum: int, frame: Any) -> None:
        d.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        d.start()
        run = os.path.join(args.state_dir, "run")
        os.makedirs(run, exist_ok=True)
        atomic_json(os.path.join(run, f"{args.partition}.ready.json"), d.ready_info)
    except XdpUnavailable as e:          # market_data.afxdp_required and the host refuses AF_XDP
        log(args.partition, str(e))
        d.release_rings()
        return EXIT_CONFIG
    except (DurabilityError, OSError) as e:
        # A full disk, a read-only or failing file system: the state cannot be written, so nothing
        # may be acknowledged. One line; the operator makes room and starts again (recovery).
        log(args.partition, f"DURABILITY FAILURE at start-up: {e}; exiting {EXIT_DURABILITY_FAILURE}")
        d.release_rings()
        return EXIT_DURABILITY_FAILURE
    log(args.partition, f"ready: seq {d.ready_info['last_seq']}, rings for {', '.join(d.gateways)}")
    signal.signal(signal.SIGUSR1, lambda s, f: setattr(d, "stats_requested", True))
    return d.run()


if __name__ == "__main__":
    sys.exit(main())
