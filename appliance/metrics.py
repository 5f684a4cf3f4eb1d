"""Measurement, out of band: latency histograms (HdrHistogram) and the duty cycle's stage clock.

Nothing here changes what the appliance does; the matching core never imports it. Owned by the
thread that records (a histogram or a stage clock is never shared between threads).

    Histogram    integer ns values in an HdrHistogram (3 significant digits, 1 ns .. 1 h):
                 record(v, count), percentile(p), summary_us(), to_json()/from_json() (the HDR
                 compressed encoding, so a report can carry the whole distribution), hdr_log()
    StageClock   one clock read per stage boundary; ns and laps per named stage, summed. The duty
                 cycle calls start() where a batch begins and lap(STAGE) where each stage ends, so
                 the stages partition the busy time (idle time is not in any stage).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Final, Sequence

from hdrh.histogram import HdrHistogram

LOWEST_NS: Final = 1
HIGHEST_NS: Final = 3_600_000_000_000     # one hour: anything longer is clamped (and says so in max)
DIGITS: Final = 3
PERCENTILES: Final = (50.0, 90.0, 99.0, 99.9, 99.99)


def _pkey(p: float) -> str:
    return "p" + f"{p:g}".replace(".", "_")


class Histogram:
    """Latency values in ns (HdrHistogram, 3 significant digits). Owned by one thread."""

    __slots__ = ("h", "max", "clamped")

    def __init__(self) -> None:
        self.h = HdrHistogram(LOWEST_NS, HIGHEST_NS, DIGITS)
        self.max = 0          # exact, as recorded (the HDR max is rounded to its bucket)
        self.clamped = 0      # values above HIGHEST_NS, recorded as HIGHEST_NS

    @property
    def total(self) -> int:
        return int(self.h.get_total_count())

    def record(self, v: int, count: int = 1) -> None:
        if v < LOWEST_NS:
            v = LOWEST_NS
        elif v > HIGHEST_NS:
            self.clamped += count
            if v > self.max:
                self.max = v
            v = HIGHEST_NS
        if v > self.max:
            self.max = v
        self.h.record_value(v, count)

    def merge(self, other: "Histogram") -> None:
        self.h.add(other.h)
        self.max = max(self.max, other.max)
        self.clamped += other.clamped

    def percentile(self, p: float) -> int:
        if not self.total:
            return 0
        return min(int(self.h.get_value_at_percentile(p)), self.max)

    def summary_us(self) -> dict[str, Any]:
        """count, p50 .. p99.99 and max in µs (one decimal)."""
        out: dict[str, Any] = {"count": self.total}
        for p in PERCENTILES:
            out[_pkey(p) + "_us"] = round(self.percentile(p) / 1000, 1)
        out["max_us"] = round(self.max / 1000, 1)
        if self.clamped:
            out["clamped_above_1h"] = self.clamped
        return out

    def to_json(self) -> dict[str, Any]:
        return {"hdr": self.h.encode().decode("ascii") if self.total else "", "max": self.max,
                "clamped": self.clamped}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Histogram":
        out = cls()
        if d.get("hdr"):
            out.h = HdrHistogram.decode(d["hdr"].encode("ascii"))
        out.max = int(d.get("max", 0))
        out.clamped = int(d.get("clamped", 0))
        return out

    def percentile_table(self) -> list[tuple[float, int]]:
        """(percentile, value ns) points for a percentile plot: 0 .. 99.9999 on a log scale of 1/(1-p)."""
        if not self.total:
            return []
        pts: list[tuple[float, int]] = []
        for p in (0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999,
                  99.9995, 99.9999, 100.0):
            pts.append((p, self.percentile(p) if p < 100.0 else self.max))
        return pts

    def hdr_log(self, tag: str) -> str:
        """One histogram in the HdrHistogram log format (readable by HdrHistogram's log tools)."""
        enc = self.h.encode().decode("ascii") if self.total else ""
        return ("#[Histogram log format version 1.3]\n"
                "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n"
                f"Tag={tag},0.000,0.000,{self.max / 1e6:.3f},{enc}\n")


class StageClock:
    """Busy time split by duty-cycle stage: ns and laps per stage. Owned by the thread that laps.

    ``start()`` where a batch begins; ``lap(i)`` where stage i ends (its time is since the last
    start or lap). Stages that are not reached in a batch get no lap.
    """

    __slots__ = ("names", "ns", "laps", "t", "clock")

    def __init__(self, names: Sequence[str], clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.names = tuple(names)
        self.ns = [0] * len(self.names)
        self.laps = [0] * len(self.names)
        self.clock = clock
        self.t = 0

    def start(self) -> None:
        self.t = self.clock()

    def lap(self, i: int) -> None:
        t = self.clock()
        self.ns[i] += t - self.t
        self.laps[i] += 1
        self.t = t

    def report(self, commands: int) -> dict[str, Any]:
        """Per stage: total µs, laps, ns per lap and ns per command; and each stage's share."""
        busy = sum(self.ns) or 1
        out: dict[str, Any] = {}
        for name, ns, laps in zip(self.names, self.ns, self.laps):
            if not laps:
                continue
            out[name] = {"total_us": round(ns / 1000, 1), "laps": laps, "ns_per_lap": round(ns / laps),
                         "ns_per_command": round(ns / commands) if commands else 0,
                         "share": round(ns / busy, 4)}
        return out


def format_stages(report: dict[str, Any], order: Sequence[str] = (), width: int = 28) -> list[str]:
    """A stage report as aligned lines, in ``order`` (then any others): name, ns per command, ns per
    lap, share of the busy time."""
    lines = []
    names = [n for n in order if n in report] + [n for n in report if n not in order]
    for name in names:
        r = report[name]
        lines.append(f"  {name:<{width}} {r['ns_per_command']:>8} ns/command {r['ns_per_lap']:>9} ns/lap "
                     f"{100 * r['share']:5.1f} %")
    return lines


STAGE_TIMING_ENV: Final = "MATCHWIRE_STAGE_TIMING"   # "1": the processes time their stages (benchmarks)

# The gateway's two paths, stage by stage (an order in: socket -> command ring; its answer out:
# event ring -> socket). docs/performance.md explains each.
GATEWAY_STAGES: Final = (
    "in: session parse",                      # SoupBinTCP/OUCH or FIX bytes -> commands
    "in: risk + command ring + replies",      # pre-trade risk, ring publish, doorbell, journal, socket
    "out: event ring read + decode",          # poll the event rings, records -> the engine's events
    "out: sessions + risk",                   # OUCH/FIX messages for each event, positions
    "out: journal + socket writes",           # the flush: journal and stores, then each socket
)
G_PARSE, G_SUBMIT, G_RING_READ, G_SESSIONS, G_FLUSH = range(len(GATEWAY_STAGES))

# The partition's duty cycle, stage by stage (StageClock indices; docs/performance.md explains each).
DUTY_STAGES: Final = (
    "ring poll + decode",        # drain the gateways' command rings, decode records into commands
    "validate + sequence",       # WAL body per command, seq and ts_ns stamped, records buffered
    "WAL write",                 # one write() of the batch's records
    "fdatasync",                 # the commit (policy batch; interval: when due)
    "match",                     # engine.apply_batch: the events
    "event records -> gateways",  # encode the gateways' records, ring publish, doorbell
    "L3 encode",                 # events -> ITCH 5.0 messages
    "L2/L1 depth + encode",      # depth tracker, price-level and BBO messages
    "packetize",                 # MoldUDP64 datagrams (all channels)
    "send A+B",                  # one send per datagram per line (all channels)
    "feed store",                # the retransmission store's append (all channels)
    "checkpoint + bookkeeping",  # feed checkpoint, histogram, counters
)
S_DECODE, S_SEQUENCE, S_WAL_WRITE, S_FSYNC, S_MATCH, S_RECORDS, S_L3, S_L2L1, S_PACKETIZE, S_SEND, S_STORE, \
    S_OTHER = range(len(DUTY_STAGES))
