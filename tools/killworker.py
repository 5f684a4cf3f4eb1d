"""The crash test: a worker process driving a partition under load, killed at random and checked.

Worker (a real process writing real files with fdatasync)::

    python -m tools.killworker WALDIR [--seed S] [--policy batch] [--max-batch 64] [--snapshot-every N]
                                      [--segment-bytes N] [--stop-after SEQ] [--fsize-limit BYTES]

It starts the partition (start-up is recovery), then feeds it the deterministic command stream
``command_at(seq)`` from its next sequence number on, in batches of random size, as fast as it can.
After each batch has been committed and applied it writes one line to stdout (unbuffered, one
write):

    R <last recovered seq> <epoch>           once, when recovery is done
    A <first seq> <last seq> <next match>    an acknowledgement: seqs first..last are durable and
                                             applied; after `last` the engine's next match number
    C <last seq>                             a clean shutdown (--stop-after)

A write or fsync failure prints the error to stderr and exits with wal.EXIT_DURABILITY_FAILURE.

Checker: ``CrashChecker`` keeps an uninterrupted reference run of the same stream. After each kill
it recovers the directory and checks that every acknowledged command is in the WAL (record for
record equal to the stream), the sequence has no gap, fills are neither lost nor duplicated (the
acked next-match numbers agree with the reference) and the recovered state hash equals the
reference run over the durable prefix. ``crash_runs`` is the loop used by tests/test_kill.py and
`matchwire bench crash`.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import select
import signal
import subprocess
import sys
import time
from typing import Any

from appliance.catalogue import (
    CancelOrder,
    Command,
    Ev,
    Event,
    MassCancel,
    NewOrder,
    ReplaceOrder,
)
from appliance.model import (
    BUY,
    DAY,
    FOK,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    SELL,
    STOP,
    STOP_LIMIT,
    STP_CO,
    STP_DC,
    STP_NONE,
    Instrument,
)
from appliance.recovery import recover_state
from appliance.snapshot import EngineSpec
from appliance.wal import (
    EXIT_DURABILITY_FAILURE,
    SEGMENT_HEADER_SIZE,
    DurabilityError,
    WalConfig,
    WalReader,
    list_segments,
)
from appliance.walcodec import RECORD_HEADER_SIZE, encode_body

STREAM_SPEC = EngineSpec.of(
    [Instrument("KILLA", 1, tick=1), Instrument("KILLB", 2, tick=5)],
    {1: STP_NONE, 2: STP_CO, 3: STP_DC},
)
_M = (1 << 64) - 1
_MID = 10_000


def _mix(x: int) -> int:
    """splitmix64: a well-spread 64-bit value from a counter."""
    x = (x + 0x9E3779B97F4A7C15) & _M
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M
    return x ^ (x >> 31)


def command_at(seq: int, seed: int = 0) -> Command:
    """The command with sequence number `seq` of stream `seed`: a pure function of (seq, seed).

    A mix of resting and crossing limit orders, IOC, FOK, market, stop and stop-limit orders,
    cancels and replaces of recent orders (some of them unknown by then: rejects), mass cancels and
    invalid orders, over two instruments and three firms with different STP modes.
    """
    x = _mix(seq ^ (seed * 0x9E3779B97F4A7C15 & _M))
    r = x % 1000
    locate = 1 + ((x >> 10) & 1)
    tick = 1 if locate == 1 else 5
    firm = 1 + (x >> 11) % 3
    side = BUY if (x >> 13) & 1 else SELL
    off = (x >> 14) % 12
    qty = 100 * (1 + (x >> 20) % 5)
    acct = "ACC%d" % firm
    clid = "K%d" % seq
    if r < 600:
        if r < 420:
            price = _MID + (off - 8) * tick if side == BUY else _MID + (8 - off) * tick
            tif = GTC if (x >> 24) & 3 else DAY
            return NewOrder(seq, locate, side, qty, price, LIMIT, tif, 0, firm, firm * 10, acct, clid,
                            "MPA" if (x >> 26) & 7 == 0 else "")
        if r < 500:
            price = _MID + 6 * tick if side == BUY else _MID - 6 * tick
            return NewOrder(seq, locate, side, qty, price, LIMIT, IOC, 0, firm, firm * 10, acct, clid)
        if r < 520:
            price = _MID + 4 * tick if side == BUY else _MID - 4 * tick
            return NewOrder(seq, locate, side, qty * 3, price, LIMIT, FOK, 0, firm, firm * 10, acct, clid)
        if r < 540:
            return NewOrder(seq, locate, side, qty, 0, MARKET, IOC if (x >> 24) & 1 else DAY, 0, firm,
                            firm * 10, acct, clid)
        stop = _MID + (off - 6) * tick
        if (x >> 24) & 1:
            return NewOrder(seq, locate, side, qty, 0, STOP, DAY, stop, firm, firm * 10, acct, clid)
        price = stop + (2 * tick if side == BUY else -2 * tick)
        return NewOrder(seq, locate, side, qty, price, STOP_LIMIT, GTC, stop, firm, firm * 10, acct, clid)
    target = seq - 1 - (x >> 30) % 300
    tcmd = command_at(target, seed) if target >= 1 else None
    tfirm = tcmd.firm if isinstance(tcmd, NewOrder) else firm
    if r < 830:
        return CancelOrder(target if target >= 1 else seq, tfirm, tfirm * 10, "X%d" % seq)
    if r < 950:
        if isinstance(tcmd, NewOrder):
            t = tcmd.ord_type
            tt = 1 if tcmd.locate == 1 else 5
            price = 0 if t in (MARKET, STOP) else tcmd.price + ((x >> 40) % 3 - 1) * tt
            new_qty = tcmd.qty + ((x >> 44) % 3 - 1) * 100
            stop = tcmd.stop_price + tt if t in (STOP, STOP_LIMIT) and (x >> 48) & 1 else 0
            return ReplaceOrder(target, new_qty, price, tfirm, tfirm * 10, stop, "R%d" % seq)
        return ReplaceOrder(max(target, 1), qty, _MID, tfirm, tfirm * 10, 0, "R%d" % seq)
    if r < 960:
        return MassCancel(firm, 0 if (x >> 24) & 1 else locate, 255 if (x >> 25) & 1 else side, firm * 10,
                          "M%d" % seq)
    # invalid orders: rejected by the engine (they are still sequenced and logged)
    kind = (x >> 24) % 4
    if kind == 0:
        return NewOrder(seq, locate, side, 0, _MID, LIMIT, DAY, 0, firm)
    if kind == 1:
        return NewOrder(seq, 2, side, qty, _MID + 3, LIMIT, DAY, 0, firm)  # off tick on KILLB
    if kind == 2:
        return NewOrder(seq, 9, side, qty, _MID, LIMIT, DAY, 0, firm)      # unknown instrument
    return NewOrder(max(target, 1), locate, side, qty, _MID, LIMIT, DAY, 0, firm)  # maybe a duplicate id


# ================================================================================================
# Worker
# ================================================================================================


def worker_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.killworker")
    ap.add_argument("waldir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy", default="batch")
    ap.add_argument("--interval-ms", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--snapshot-every", type=int, default=3000)
    ap.add_argument("--segment-bytes", type=int, default=256 << 10)
    ap.add_argument("--seal-bytes", type=int, default=16 << 10)
    ap.add_argument("--stop-after", type=int, default=0, help="shut down cleanly after this seq (0: never)")
    ap.add_argument("--fsize-limit", type=int, default=0, help="RLIMIT_FSIZE in bytes (full-disk test)")
    args = ap.parse_args(argv)
    if args.fsize_limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize_limit, args.fsize_limit))
    from appliance.recovery import open_partition

    cfg = WalConfig(
        args.waldir, policy=args.policy, interval_ms=args.interval_ms, segment_bytes=args.segment_bytes,
        seal_bytes=args.seal_bytes, snapshot_every_events=args.snapshot_every, snapshot_every_seconds=1,
    )
    try:
        opened = open_partition(cfg, STREAM_SPEC)
    except DurabilityError as e:
        print(f"matchwire killworker: {e}", file=sys.stderr)
        return EXIT_DURABILITY_FAILURE
    for note in opened.notes:
        print(f"matchwire killworker: recovery: {note}", file=sys.stderr, flush=True)
    part = opened.partition
    engine = part.engine
    out = sys.stdout.fileno()
    os.write(out, b"R %d %d\n" % (part.sequencer.next_seq - 1, opened.epoch))
    rng = random.Random(os.getpid())
    seq = part.sequencer.next_seq
    seed = args.seed
    try:
        while not args.stop_after or seq <= args.stop_after:
            n = rng.randint(1, args.max_batch)
            if args.stop_after:
                n = min(n, args.stop_after - seq + 1)
            cmds = [command_at(s, seed) for s in range(seq, seq + n)]
            seq += n
            res = part.process_batch(cmds, time.time_ns())
            if not res:
                res = part.poll(time.time_ns())
            if res:
                os.write(out, b"A %d %d %d\n" % (res[0][0], res[-1][0], engine.next_match))
        res = part.close(time.time_ns())
        if res:
            os.write(out, b"A %d %d %d\n" % (res[0][0], res[-1][0], engine.next_match))
        os.write(out, b"C %d\n" % part.applied_seq)
    except DurabilityError as e:
        print(f"matchwire killworker: {e}", file=sys.stderr)
        return EXIT_DURABILITY_FAILURE
    return 0


# ================================================================================================
# Checker
# ================================================================================================


class CrashCheckFailed(AssertionError):
    pass


class CrashChecker:
    """The uninterrupted reference run of a stream, and the checks after each kill."""

    def __init__(self, waldir: str, seed: int = 0) -> None:
        self.waldir = waldir
        self.seed = seed
        self.reference = STREAM_SPEC.build()
        self.ref_seq = 0
        self.next_match_at: dict[int, int] = {}   # seq -> reference next_match after it (acked seqs)
        self.acks: list[tuple[int, int, int]] = []
        self.max_acked = 0
        self.durable = 0
        self._ack_ends: set[int] = set()

    def add_acks(self, lines: list[bytes]) -> int:
        n = 0
        for line in lines:
            parts = line.split()
            if parts and parts[0] == b"A":
                first, last, nm = int(parts[1]), int(parts[2]), int(parts[3])
                if first > last or (self.acks and first <= self.acks[-1][1]):
                    raise CrashCheckFailed(f"ack {first}..{last} overlaps an earlier ack (duplicate fills)")
                self.acks.append((first, last, nm))
                self._ack_ends.add(last)
                self.max_acked = max(self.max_acked, last)
                n += last - first + 1
        return n

    def check(self) -> dict[str, Any]:
        """Recover the directory (read-only) and check it against the acks and the reference run."""
        t0 = time.perf_counter()
        rec = recover_state(self.waldir, STREAM_SPEC)
        recovery_s = time.perf_counter() - t0
        last = rec.last_seq
        if last < self.durable:
            raise CrashCheckFailed(f"the durable log shrank: seq {self.durable} was recovered before, now {last}")
        if last < self.max_acked:
            raise CrashCheckFailed(f"acknowledged seq {self.max_acked} lost: the WAL ends at {last}")
        # The new records, each equal to the stream's command, without a gap.
        expect = self.durable + 1
        for seq, _ts, _epoch, cmd in WalReader(self.waldir).records(self.durable):
            if seq != expect:
                raise CrashCheckFailed(f"sequence gap: seq {seq} after {expect - 1}")
            if encode_body(cmd) != encode_body(command_at(seq, self.seed)):
                raise CrashCheckFailed(f"seq {seq}: the WAL holds another command than the one sent")
            expect += 1
        if expect - 1 != last:
            raise CrashCheckFailed(f"records end at {expect - 1}, recovery says {last}")
        self._advance_reference(last)
        for first, end, nm in self.acks:
            if end <= last and end in self.next_match_at and self.next_match_at[end] != nm:
                raise CrashCheckFailed(f"ack of {first}..{end} said next match {nm}; the log gives "
                                       f"{self.next_match_at[end]} (fills lost or duplicated)")
        got, want = rec.engine.state_hash(), self.reference.state_hash()
        if got != want:
            raise CrashCheckFailed(f"state hash after recovery {got} != uninterrupted run {want} at seq {last}")
        self.durable = last
        return {"durable": last, "acked": self.max_acked, "recovery_s": recovery_s,
                "snapshot": rec.snapshot.seq if rec.snapshot else 0, "replayed": rec.replayed}

    def _advance_reference(self, last: int) -> None:
        apply = self.reference.apply
        out: list[Event] = []
        nm = self.reference.next_match
        for s in range(self.ref_seq + 1, last + 1):
            apply(command_at(s, self.seed), out)
            for ev in out:
                if ev[0] == Ev.EXECUTED:
                    if ev[5] != nm:
                        raise CrashCheckFailed(f"reference match numbers not consecutive at seq {s}")
                    nm += 1
            out.clear()
            if s in self._ack_ends:
                self.next_match_at[s] = self.reference.next_match
        self.ref_seq = last

    def check_full_replay(self) -> str:
        """Replay the whole WAL without snapshots: every match number exactly once, same state."""
        seen = 0

        def on(seq: int, ts: int, cmd: Command, events: list[Event]) -> bool:
            nonlocal seen
            for ev in events:
                if ev[0] == Ev.EXECUTED:
                    if ev[5] != seen + 1:
                        raise CrashCheckFailed(f"match {ev[5]} at seq {seq}: expected {seen + 1}")
                    seen = ev[5]
            return False

        rec = recover_state(self.waldir, STREAM_SPEC, use_snapshots=False, on_command=on)
        if rec.engine.state_hash() != self.reference.state_hash() or rec.last_seq != self.ref_seq:
            raise CrashCheckFailed("full replay differs from the reference run")
        if seen != self.reference.next_match - 1:
            raise CrashCheckFailed(f"full replay made {seen} fills, the reference {self.reference.next_match - 1}")
        return rec.engine.state_hash()


def spawn_worker(waldir: str, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-m", "tools.killworker", waldir, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=root,
    )


def run_and_kill(waldir: str, delay_s: float, *extra: str) -> tuple[list[bytes], int, bytes]:
    """Start a worker, read its output for delay_s seconds, SIGKILL it; (lines, returncode, stderr)."""
    proc = spawn_worker(waldir, *extra)
    assert proc.stdout is not None and proc.stderr is not None
    buf = b""
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + delay_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            buf += chunk
    proc.send_signal(signal.SIGKILL)
    rest, err = proc.communicate()
    buf += rest
    lines = buf.split(b"\n")
    return lines[:-1], proc.returncode, err  # a line cut by the kill has no newline: dropped


def chop_unacked_tail(waldir: str, keep_seq: int, rng: random.Random) -> int:
    """Cut the last segment at a random byte after record keep_seq (a torn write of unacked data,
    as a power loss could leave). Returns the bytes cut (0: nothing after keep_seq in that file)."""
    segs = list_segments(waldir)
    if not segs:
        return 0
    seg = segs[-1]
    with open(seg.path, "rb") as f:
        data = f.read()
    lo = SEGMENT_HEADER_SIZE
    if seg.first_seq <= keep_seq:
        off = SEGMENT_HEADER_SIZE
        while off + RECORD_HEADER_SIZE <= len(data):
            length = int.from_bytes(data[off:off + 4], "little")
            seq = int.from_bytes(data[off + 8:off + 16], "little")
            if length < RECORD_HEADER_SIZE or off + length > len(data):
                break
            off += length
            if seq >= keep_seq:
                lo = off
                break
        else:
            return 0
        if lo == SEGMENT_HEADER_SIZE:
            return 0
    if lo >= len(data):
        return 0
    cut = rng.randrange(lo, len(data))
    with open(seg.path, "r+b") as f:
        f.truncate(cut)
    return len(data) - cut


def crash_runs(waldir: str, runs: int, seed: int = 0, max_delay_s: float = 0.4, rng_seed: int = 1,
               extra: tuple[str, ...] = (), log: Any = None, chop: float = 0.25) -> dict[str, Any]:
    """`runs` cycles of start, random SIGKILL, check; then a full replay check.

    After a fraction `chop` of the kills the unacknowledged end of the log is also cut at a random
    byte (a torn write, as a power loss could leave): the next start must truncate and go on.
    """
    rng = random.Random(rng_seed)
    checker = CrashChecker(waldir, seed)
    kills = 0
    torn = 0
    chopped = 0
    worst = 0.0
    t0 = time.perf_counter()
    for i in range(runs):
        lines, rc, err = run_and_kill(waldir, rng.uniform(0.0, max_delay_s), "--seed", str(seed), *extra)
        if rc != -signal.SIGKILL:
            raise CrashCheckFailed(f"run {i}: worker ended with {rc} before the kill: {err.decode()[-2000:]}")
        kills += 1
        torn += b"torn tail" in err and b"truncated" in err
        checker.add_acks(lines)
        if chop and rng.random() < chop:
            chopped += chop_unacked_tail(waldir, max(checker.durable, checker.max_acked), rng) > 0
        info = checker.check()
        worst = max(worst, info["recovery_s"])
        if log:
            log(f"run {i}: killed; acked up to {checker.max_acked}, durable {info['durable']}, "
                f"snapshot {info['snapshot']}, replayed {info['replayed']}")
    final_hash = checker.check_full_replay()
    return {
        "runs": runs,
        "kills": kills,
        "acked_commands": sum(b - a + 1 for a, b, _ in checker.acks),
        "durable_seq": checker.durable,
        "acked_seq": checker.max_acked,
        "tails_cut": chopped,
        "starts_that_truncated_a_torn_tail": torn,
        "fills": checker.reference.next_match - 1,
        "max_check_recovery_s": round(worst, 4),
        "seconds": round(time.perf_counter() - t0, 2),
        "state_hash": final_hash,
        "ok": True,
    }


if __name__ == "__main__":
    sys.exit(worker_main())
