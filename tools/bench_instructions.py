"""`matchwire bench instructions FLOW.bin`: instructions per command on the hot path, by callgrind.

    matchwire bench instructions flows/f1.bin [--commands 20000] [--against REV] [--workload engine ...]

Wall-clock figures move with the neighbours' load; instruction counts do not. Each workload runs the
first N commands of the flow in batches of 1,024 under ``valgrind --tool=callgrind``, once with N and
once with none (start-up, imports and reading the flow); the difference over N is the instructions
per command, repeatable to a few parts in ten thousand. With ``--against REV`` the same workloads
run in a temporary worktree of that revision, and both are printed side by side: the check that a
change to the hot path costs nothing.

Workloads (``python -m tools.bench_instructions WORKLOAD N`` runs one without valgrind):

    engine      Engine.apply_batch alone
    partition   Partition.process_batch: WAL records, commit (policy batch, on /dev/shm), apply
    feed        the feed's encoding of the results: ITCH L3, L2/L1, packetize, store (null transport)
    cycle       the inline partition's duty cycle without its system calls to rings and sockets:
                command ring blocks decoded, process_batch (as partition), the gateway's event
                records, the feed's encoding (as feed)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Callable

WORKLOADS = ("engine", "partition", "feed", "cycle")
BATCH = 1024


def register(sub: Any) -> None:
    p = sub.add_parser("instructions", help="instructions per command on the hot path (callgrind), "
                                            "optionally beside another revision")
    p.add_argument("flow")
    p.add_argument("--commands", type=int, default=20_000, help="commands of the flow (default 20000)")
    p.add_argument("--workload", action="append", choices=WORKLOADS, help="repeatable; default all")
    p.add_argument("--against", metavar="REV", help="a git revision to measure beside this tree")
    p.set_defaults(func=_instructions)


# ================================================================================================
# The workloads (run in a child process, under valgrind)
# ================================================================================================

def _commands(flow: str, n: int) -> tuple[list[Any], int]:
    from tools.flows import FLOW_RECORD, decode_records, read_flow_bytes
    data, meta = read_flow_bytes(flow)
    cmds = decode_records(memoryview(data)[:n * FLOW_RECORD.size])
    instruments = int(meta["instruments"]) if "instruments" in meta else 1 + max(
        (getattr(c, "locate", 0) for c in cmds), default=1)
    return cmds, instruments


def _engine(cmds: list[Any], instruments: int) -> Callable[[], None]:
    from appliance.matching.engine import Engine
    from tools.flows import FLOW_FIRM_STP, flow_instruments
    engine = Engine(flow_instruments(instruments), FLOW_FIRM_STP)

    def run() -> None:
        for i in range(0, len(cmds), BATCH):
            out: list[Any] = []
            engine.apply_batch(cmds[i:i + BATCH], out, [])
    return run


def _partition(cmds: list[Any], instruments: int, root: str) -> Callable[[], None]:
    from appliance.recovery import open_partition
    from appliance.snapshot import EngineSpec
    from appliance.wal import WalConfig
    from tools.flows import FLOW_FIRM_STP, flow_instruments
    ins = flow_instruments(instruments)
    spec = EngineSpec(tuple((i.symbol, i.locate, i.tick, i.round_lot) for i in ins),
                      tuple(sorted(dict(FLOW_FIRM_STP).items())))
    part = open_partition(WalConfig(os.path.join(root, "wal"), policy="batch"), spec).partition

    def run() -> None:
        t = 1_000_000_000
        for i in range(0, len(cmds), BATCH):
            part.process_batch(cmds[i:i + BATCH], t)
            t += 1_000_000
    return run


def _feed(cmds: list[Any], instruments: int, root: str) -> Callable[[], None]:
    from appliance.catalogue import Event
    from appliance.config import default
    from appliance.daemon import feed_config
    from appliance.matching.engine import Engine
    from feeds.publisher import Publisher
    from feeds.transport import NullTransport
    from tools.flows import FLOW_FIRM_STP, flow_instruments
    ins = flow_instruments(instruments)
    engine = Engine(ins, FLOW_FIRM_STP)
    results: list[list[Any]] = []
    seq = 1
    for i in range(0, len(cmds), BATCH):     # the events, made before the measured part
        batch = cmds[i:i + BATCH]
        out: list[Event] = []
        ends: list[int] = []
        engine.apply_batch(batch, out, ends)
        start = 0
        res = []
        ts = 1_000_000_000 + i      # one timestamp per batch, as the sequencer stamps them
        for c, e in zip(batch, ends):
            # the events' orders as they were after the batch (as the publisher sees them live)
            res.append((seq, ts, c, out[start:e]))
            start = e
            seq += 1
        results.append(res)
    cfg = default()
    pub = Publisher(feed_config(cfg, cfg.partitions[0]), ins, 0, NullTransport(), os.path.join(root, "feed"))
    pub.start(1_000_000_000)

    def run() -> None:
        for res in results:
            pub.publish(res)
    return run


def _cycle(cmds: list[Any], instruments: int, root: str) -> Callable[[], None]:
    from appliance import codec_ring as C
    from appliance.config import default
    from appliance.daemon import feed_config
    from appliance.recovery import open_partition
    from appliance.ring import LENGTH_BYTES
    from appliance.snapshot import EngineSpec
    from appliance.wal import WalConfig
    from feeds.publisher import Publisher
    from feeds.transport import NullTransport
    from tools.flows import FLOW_FIRM_STP, flow_instruments
    ins = flow_instruments(instruments)
    spec = EngineSpec(tuple((i.symbol, i.locate, i.tick, i.round_lot) for i in ins),
                      tuple(sorted(dict(FLOW_FIRM_STP).items())))
    part = open_partition(WalConfig(os.path.join(root, "wal"), policy="batch"), spec).partition
    slot = 128
    blocks = []
    for i in range(0, len(cmds), BATCH):   # the ring's blocks, made before the measured part
        recs = [C.encode_command(c) for c in cmds[i:i + BATCH]]
        blocks.append((b"".join(len(r).to_bytes(LENGTH_BYTES, "little") + r.ljust(slot - LENGTH_BYTES, b"\0")
                                for r in recs), len(recs)))
    encoder = C.EventEncoder({firm: 0 for firm in FLOW_FIRM_STP}, 1)
    cfg = default()
    pub = Publisher(feed_config(cfg, cfg.partitions[0]), ins, 0, NullTransport(), os.path.join(root, "feed"))
    pub.start(1_000_000_000)
    decode = C.decode_command_block
    try:                                  # a revision before the ring's bodies: encode them again
        decode(b"", 0, slot, [], [])
        given = True
    except TypeError:
        given = False

    def run() -> None:
        t = 1_000_000_000
        for block, count in blocks:
            batch: list[Any] = []
            if given:
                bodies: list[Any] = []
                decode(block, count, slot, batch, bodies)
                results = part.process_batch(batch, t, bodies)
            else:
                decode(block, count, slot, batch)
                results = part.process_batch(batch, t)
            out: list[list[bytes]] = [[]]
            encoder.encode(results, out)
            pub.publish(results)
            t += 1_000_000
    return run


def _workload(name: str, n: int, flow: str) -> None:
    root = tempfile.mkdtemp(prefix="mw-instr-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        cmds, instruments = _commands(flow, n)
        run = {"engine": lambda: _engine(cmds, instruments),
               "partition": lambda: _partition(cmds, instruments, root),
               "feed": lambda: _feed(cmds, instruments, root),
               "cycle": lambda: _cycle(cmds, instruments, root)}[name]()
        if n:
            run()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ================================================================================================
# The driver
# ================================================================================================

def _count(tree: str, name: str, n: int, flow: str) -> int:
    """Instructions of one run of the workload in ``tree`` (callgrind's total)."""
    with tempfile.TemporaryDirectory(prefix="mw-callgrind-") as tmp:
        proc = subprocess.run(
            # this file's workloads, the measured tree's packages (PYTHONPATH comes first)
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out", sys.executable,
             os.path.abspath(__file__), name, str(n), flow],
            cwd=tree, env=dict(os.environ, PYTHONPATH=tree), capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} under callgrind failed: {proc.stderr[-1500:]}")
        m = re.search(r"Collected : (\d+)", proc.stderr)
        if m is None:
            raise RuntimeError(f"callgrind printed no total: {proc.stderr[-500:]}")
        return int(m.group(1))


def _per_command(tree: str, name: str, n: int, flow: str) -> float:
    return (_count(tree, name, n, flow) - _count(tree, name, 0, flow)) / n


def _instructions(args: argparse.Namespace) -> int:
    if args.commands <= 0:
        sys.stderr.write("matchwire bench instructions: --commands must be positive\n")
        return 2
    if shutil.which("valgrind") is None:
        sys.stderr.write("matchwire bench instructions: valgrind is not installed (apt-get install valgrind)\n")
        return 2
    flow = os.path.abspath(args.flow)
    try:
        _commands(flow, args.commands)      # what the workloads will read: refused here, in one line
    except (OSError, ValueError) as e:
        sys.stderr.write(f"matchwire bench instructions: {args.flow}: {getattr(e, 'strerror', None) or e}\n")
        return 2
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = [("this tree", here)]
    cleanup = None
    if args.against:
        cleanup = tempfile.mkdtemp(prefix="mw-against-")
        wt = os.path.join(cleanup, "tree")
        proc = subprocess.run(["git", "-C", here, "worktree", "add", "--detach", wt, args.against],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(cleanup, ignore_errors=True)
            sys.stderr.write(f"matchwire bench instructions: --against {args.against}: "
                             f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'git worktree failed'}\n")
            return 2
        trees.append((args.against, wt))
    try:
        out: dict[str, Any] = {"benchmark": "instructions", "flow": os.path.basename(flow),
                               "commands": args.commands, "per_command": {}}
        for name in args.workload or WORKLOADS:
            row = {label: round(_per_command(tree, name, args.commands, flow)) for label, tree in trees}
            out["per_command"][name] = row
            cells = "; ".join(f"{label}: {v:,}" for label, v in row.items())
            change = ""
            if len(row) == 2:
                a, b = row["this tree"], row[args.against]
                change = f" ({100 * (a - b) / b:+.2f}%)" if b else ""
            print(f"{name}: instructions per command, {cells}{change}")
        print(json.dumps(out))
        return 0
    finally:
        if cleanup is not None:
            subprocess.run(["git", "-C", here, "worktree", "remove", "--force", os.path.join(cleanup, "tree")],
                           capture_output=True)
            shutil.rmtree(cleanup, ignore_errors=True)


if __name__ == "__main__":
    _workload(sys.argv[1], int(sys.argv[2]), sys.argv[3])
