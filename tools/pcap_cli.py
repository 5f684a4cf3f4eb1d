"""`matchwire pcap ...`: what a capture (pcap or pcapng, Ethernet/VLAN/SLL/SLL2/raw IP) says about
the feeds in it.

    matchwire pcap gap-check FILE [--a-group ADDR ...] [--json] [--any-line]
        per channel, session and line: gaps (first, last, count), duplicates, out-of-order and
        late datagrams, A/B arbitration (who was first, skew t(B) - t(A) p50/p99/max),
        heartbeats, End of Session. Exit 1 when messages are missing from the session (from
        every line; with --any-line, from any one line), 2 for a file that cannot be read.
    matchwire pcap stats FILE [--json]
        messages per type, packets and bytes per group, messages per second and the peaks in
        any 1 s, 1 ms and 100 us window, datagram-size histogram.
    matchwire pcap latency FILE [--json] [--plot PNG]
        capture time minus ITCH timestamp per message, inter-arrival times per line, and for
        orders entered over OUCH in the same capture: Enter Order to the first ITCH message.
    matchwire pcap book FILE [--seq N | --time HH:MM:SS[.f]] [--stock S] [--levels N] [--json]
        the L3 (order by order, feeds.books.L3Book) and L2 (feeds.books.L2Book) books after L3
        message N (the L2 books up to its ITCH timestamp) or up to an ITCH timestamp, as a ladder.

The analysis is feeds.pcap_analysis (sans-IO); this module reads the file and prints.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Iterator, TypedDict

from appliance.model import price_to_text
from feeds.books import L2Book, L3Book
from feeds.itch import HEADER_SIZE, TIMESTAMP_AT
from feeds.moldudp64 import BLOCK_LENGTH_SIZE
from feeds.channels import L1, L2, channel_of_session
from feeds.pcap import IPPROTO_TCP, IPPROTO_UDP, Packet, capture_reader, udp_datagrams
from feeds.pcap_analysis import (
    CaptureStats,
    Classifier,
    GapChecker,
    Latency,
    SessionDemux,
    SoupStreams,
    classify,
    session_text,
)
from feeds.subscriber import MessageTap
from tools import jsonio


class CaptureError(Exception):
    """A capture that cannot be read: one line for the user."""


def packets(path: str, counters: dict[str, int] | None = None) -> Iterator[Packet]:
    """Every IPv4 UDP/TCP packet of a pcap or pcapng file; CaptureError for a file that is missing,
    not a capture, or cut short (after the packets before the cut). ``counters["not_ip"]``
    gets the frames that were not IPv4 UDP/TCP."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CaptureError(f"{path}: {e.strerror or e}") from None
    reader = None
    with f:
        try:
            reader = capture_reader(f)
            yield from reader
        except ValueError as e:
            raise CaptureError(f"{path}: {e}") from None
        except OSError as e:
            raise CaptureError(f"{path}: {e.strerror or e}") from None
        finally:
            if counters is not None and reader is not None:
                counters["not_ip"] = reader.skipped


def _fail(prog: str, err: CaptureError) -> int:
    print(f"matchwire {prog}: {err}", file=sys.stderr)
    return 2


def _dump_json(obj: Any) -> None:
    sys.stdout.write(jsonio.dumps(obj, indent=1) + "\n")


# ------------------------------------------------------------------------------------------------
# gap-check
# ------------------------------------------------------------------------------------------------

def datagrams(path: str, counts: dict[str, int]) -> Iterator[tuple[int, tuple[str, int], bytes]]:
    """The fast path: ``(ts_ns, (group, port), payload)`` of every UDP datagram of a capture
    (feeds.pcap.udp_datagrams); CaptureError as ``packets``. ``counts``: tcp, not_ip."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CaptureError(f"{path}: {e.strerror or e}") from None
    with f:
        try:
            yield from udp_datagrams(capture_reader(f), counts)
        except ValueError as e:
            raise CaptureError(f"{path}: {e}") from None
        except OSError as e:
            raise CaptureError(f"{path}: {e.strerror or e}") from None


def gap_check(path: str, a_groups: frozenset[str] = frozenset()) -> dict[str, Any]:
    counts: dict[str, int] = {}
    checker = GapChecker(a_groups)
    add = checker.add_datagram
    for ts_ns, line, payload in datagrams(path, counts):
        add(ts_ns, line, payload)
    checker.tcp = counts.get("tcp", 0)
    report = checker.report()
    report["other"]["not_ipv4_udp_tcp"] = counts.get("not_ip", 0)
    return report


def _gaps_text(g: dict[str, Any]) -> str:
    if not g["count"]:
        return "no gaps"
    return f"{g['count']} gaps, {g['missing']} missing, first {g['first']} last {g['last']}"


def print_gap_check(report: dict[str, Any], out: Any = None) -> None:
    w = (out or sys.stdout).write
    for s in report["sessions"]:
        w(f"session {s['session']} channel {s['channel'] or '-'}: messages {s['messages']} "
          f"seq {s['first_seq'] or '-'}..{(s['next_seq'] or 1) - 1 if s['next_seq'] else '-'}, {_gaps_text(s['gaps'])}, late {s['late']}, "
          f"heartbeats {s['heartbeats']}, end of session {s['end_of_session']}\n")
        if s.get("note"):
            w(f"  {s['note']} ({s['unsequenced_packets']} packets)\n")
        for ln in s["lines"]:
            w(f"  line {ln['line']} {ln['group']}: packets {ln['packets']} messages {ln['messages']}, "
              f"{_gaps_text(ln['gaps'])}, duplicates {ln['duplicates']}, out of order {ln['out_of_order']}, "
              f"heartbeats {ln['heartbeats']}, end of session {ln['end_of_session']}\n")
        a = s["arbitration"]
        if a:
            sk = a["skew_b_minus_a_ns"]
            skew = (f"skew B-A ns p50 {sk['p50']} p99 {sk['p99']} max {sk['max']} min {sk['min']}"
                    if sk else "no pairs")
            w(f"  arbitration: pairs {a['pairs']}, first {a['first']}, ties {a['ties']}, "
              f"one line only {a['one_line_only']}, {skew}\n")
    o = report["other"]
    w(f"other: udp {o['udp']} re-requests {o['rerequests']} tcp segments {o['tcp_segments']} "
      f"not ipv4 udp/tcp {o['not_ipv4_udp_tcp']}\n")


def cmd_gap_check(args: argparse.Namespace) -> int:
    try:
        report = gap_check(args.file, frozenset(args.a_group or ()))
    except CaptureError as e:
        return _fail("pcap gap-check", e)
    if args.json:
        _dump_json(report)
    else:
        print_gap_check(report)
    if report["gap"]:
        return 1
    if args.any_line and any(ln["gaps"]["count"] for s in report["sessions"] for ln in s["lines"]):
        return 1
    return 0


# ------------------------------------------------------------------------------------------------
# stats
# ------------------------------------------------------------------------------------------------

def stats(path: str) -> dict[str, Any]:
    st = CaptureStats()
    demux = SessionDemux(lambda session: [st.type_counter(session)])
    classify_line = Classifier()
    counts: dict[str, int] = {}
    for ts_ns, line, payload in datagrams(path, counts):
        d = classify_line(line, payload)
        st.add_datagram(ts_ns, line, payload, d)
        demux.add(ts_ns, line, payload, d)
    demux.finish()
    report = st.report()
    report["tcp_segments"] = counts.get("tcp", 0)
    report["not_ipv4_udp_tcp"] = counts.get("not_ip", 0)
    return report


def print_stats(r: dict[str, Any], out: Any = None) -> None:
    w = (out or sys.stdout).write
    w(f"duration {r['duration_ns']} ns, messages {r['messages']} ({r['messages_per_s']}/s), "
      f"other udp {r['other_udp']}, tcp segments {r['tcp_segments']}\n")
    for session, types in r["types"].items():
        w(f"session {session}: " + " ".join(f"{t}={n}" for t, n in types.items()) + "\n")
    for g in r["groups"]:
        w(f"group {g['group']} {','.join(g['sessions'])}: packets {g['packets']} bytes {g['bytes']} "
          f"messages {g['messages']} ({g['messages_per_s']}/s), size min {g['size']['min']} "
          f"mean {g['size']['mean']} max {g['size']['max']}\n")
        w("  sizes " + " ".join(f"{b}:{n}" for b, n in g["size"]["histogram"].items()) + "\n")
        for name, pk in g["peaks"].items():
            w(f"  peak in {name}: {pk['messages']} messages, {pk['packets']} packets, {pk['bytes']} bytes\n")


def cmd_stats(args: argparse.Namespace) -> int:
    try:
        report = stats(args.file)
    except CaptureError as e:
        return _fail("pcap stats", e)
    if args.json:
        _dump_json(report)
    else:
        print_stats(report)
    return 0


# ------------------------------------------------------------------------------------------------
# latency
# ------------------------------------------------------------------------------------------------

def latency(path: str, midnight_ns: int | None = None) -> tuple[dict[str, Any], Latency]:
    lat = Latency(midnight_ns)
    soup = SoupStreams()
    for p in packets(path):
        if p.proto == IPPROTO_UDP:
            lat.add_datagram(p.ts_ns, (p.dst_ip, p.dst_port), p.payload, classify(p.payload))
        elif p.proto == IPPROTO_TCP:
            for flow, sp in soup.add(p):
                lat.add_soup(p.ts_ns, flow, sp)
    return lat.report(), lat


def plot_latency(lat: Latency, out: str) -> None:
    """Capture time minus message timestamp over the capture, one series per line, and the
    inter-arrival histogram, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7))
    t0 = min((s[0][0] for s in lat.series.values() if s), default=0)
    for line, series in sorted(lat.series.items()):
        if series:
            top.plot([(t - t0) / 1e9 for t, _ in series], [v / 1e3 for _, v in series], ".", markersize=2,
                     label=f"{line[0]}:{line[1]}")
    top.set_xlabel("capture time (s from the first message)")
    top.set_ylabel("capture - ITCH timestamp (us)")
    top.legend(fontsize="small")
    for line, gaps in sorted(lat.gaps.items()):
        if gaps:
            bottom.hist([g / 1e3 for g in gaps], bins=100, histtype="step", label=f"{line[0]}:{line[1]}")
    bottom.set_xlabel("inter-arrival (us)")
    bottom.set_ylabel("datagrams")
    bottom.set_yscale("log")
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)


def print_latency(r: dict[str, Any]) -> None:
    w = sys.stdout.write

    def pct(d: dict[str, Any]) -> str:
        return " ".join(f"{k} {v}" for k, v in d.items())
    for line, d in r["wire_minus_timestamp_ns"].items():
        w(f"capture - timestamp {line}: {pct(d)}\n")
    for line, d in r["inter_arrival_ns"].items():
        w(f"inter-arrival {line}: {pct(d)}\n")
    w(f"order entry to market data: {pct(r['order_entry_to_market_data_ns'])}\n")


def cmd_latency(args: argparse.Namespace) -> int:
    try:
        report, lat = latency(args.file, args.midnight_ns)
    except CaptureError as e:
        return _fail("pcap latency", e)
    if args.plot:
        try:
            plot_latency(lat, args.plot)
        except ImportError:
            print("matchwire pcap latency: --plot needs matplotlib (pip install 'matchwire[plot]')", file=sys.stderr)
            return 2
        except OSError as e:
            print(f"matchwire pcap latency: {args.plot}: {e.strerror or e}", file=sys.stderr)
            return 2
    if args.json:
        _dump_json(report)
    else:
        print_latency(report)
    return 0


# ------------------------------------------------------------------------------------------------
# book
# ------------------------------------------------------------------------------------------------

class _Until:
    """A sink that passes messages to ``inner`` while ``keep(seq, message)`` holds, then none."""

    def __init__(self, inner: Any, keep: Any) -> None:
        self.inner = inner
        self.keep = keep
        self.stopped = False

    def apply_blocks(self, buf: Any, pos: int, count: int, first_seq: int) -> int:
        lb = BLOCK_LENGTH_SIZE
        for i in range(count):
            n = (buf[pos] << 8) | buf[pos + 1]
            if not self.stopped:
                message = bytes(buf[pos + lb:pos + lb + n])
                if self.keep(first_seq + i if first_seq else 0, message):
                    self.inner.apply_blocks(buf, pos, 1, first_seq + i if first_seq else 0)
                else:
                    self.stopped = True
            pos += lb + n
        return pos

    def on_gap(self, first_seq: int, count: int) -> None:
        self.inner.on_gap(first_seq, count)

    def on_filled(self) -> None:
        self.inner.on_filled()

    def reset(self) -> None:
        self.inner.reset()


def _stamp(message: bytes) -> int:
    return int.from_bytes(message[TIMESTAMP_AT:HEADER_SIZE], "big") if len(message) >= HEADER_SIZE else 0


def parse_clock(text: str) -> int:
    """HH:MM:SS[.fraction] after midnight -> ns."""
    hms, _, frac = text.partition(".")
    parts = hms.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or (frac and not frac.isdigit()) or len(frac) > 9:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HH:MM:SS[.fraction]")
    h, m, sec = (int(p) for p in parts)
    return ((h * 60 + m) * 60 + sec) * 1_000_000_000 + int(frac.ljust(9, "0") or 0)


class LadderRow(TypedDict):
    """One instrument of a book's ladder; a level is [price, shares, orders], best first."""
    locate: int
    stock: str
    stale: bool
    bids: list[list[int]]
    asks: list[list[int]]


class BookReport(TypedDict):
    """One session's book in ``matchwire pcap book``."""
    kind: str                     # "L3" or "L2"
    instruments: list[LadderRow]


def book(path: str, seq: int | None = None, stamp: int | None = None) -> dict[bytes, L2Book | L3Book]:
    """The books of every L3 (and foreign ITCH) and L2 session of a capture, up to L3 message
    ``seq`` (the L2 books to the same ITCH timestamp), or up to ITCH timestamp ``stamp``."""
    if seq is not None:
        # the timestamp of L3 message ``seq``: where the L2 books stop
        found: list[int] = []

        def find(session: bytes) -> list[Any] | None:
            if channel_of_session(session) in (L2, L1):
                return None
            return [MessageTap(lambda q, m: found.append(_stamp(m)) if q == seq and not found else None)]
        demux = SessionDemux(find)
        for p in packets(path):
            if p.proto == IPPROTO_UDP:
                d = classify(p.payload)
                demux.add(p.ts_ns, (p.dst_ip, p.dst_port), p.payload, d)
        demux.finish()
        if not found:
            raise CaptureError(f"{path}: no L3 message with sequence number {seq}")
        stamp = found[0]
    books: dict[bytes, L2Book | L3Book] = {}

    def sinks(session: bytes) -> list[Any] | None:
        ch = channel_of_session(session)
        if ch == L1:
            return None
        b = books[session] = L2Book() if ch == L2 else L3Book()
        if seq is not None and ch != L2:
            keep = (lambda q, m: q <= seq)
        elif stamp is not None:
            keep = (lambda q, m: _stamp(m) <= stamp)
        else:
            keep = (lambda q, m: True)
        return [_Until(b, keep)]
    demux = SessionDemux(sinks)
    for p in packets(path):
        if p.proto == IPPROTO_UDP:
            demux.add(p.ts_ns, (p.dst_ip, p.dst_port), p.payload, classify(p.payload))
    demux.finish()
    return books


def ladder(b: L2Book | L3Book, levels: int, stock: str | None = None) -> list[LadderRow]:
    """Per instrument: symbol, bids and asks (price, shares, orders), best first, ``levels`` deep."""
    out: list[LadderRow] = []
    locates = b.locates() if isinstance(b, L3Book) else sorted(b.levels)
    for loc in locates:
        symbol = b.directory.symbols.get(loc, str(loc))
        if stock is not None and symbol != stock:
            continue
        if isinstance(b, L3Book):
            bids, asks = b.depth(loc, 0, levels), b.depth(loc, 1, levels)
        else:
            bids, asks = b.depth(loc, 0)[:levels], b.depth(loc, 1)[:levels]
        if bids or asks:
            stale = b.stale if isinstance(b, L3Book) else b.is_stale(loc)
            out.append({"locate": loc, "stock": symbol, "stale": bool(stale), "bids": [list(x) for x in bids],
                        "asks": [list(x) for x in asks]})
    return out


def print_ladder(session: str, kind: str, rows: list[LadderRow]) -> None:
    w = sys.stdout.write
    w(f"{kind} book, session {session}\n")
    for r in rows:
        note = "  STALE: messages before this point are missing from the capture" if r["stale"] else ""
        w(f"  {r['stock']} (locate {r['locate']}){note}\n")
        w(f"    {'orders':>7} {'shares':>10} {'bid':>12} | {'ask':<12} {'shares':>10} {'orders':>7}\n")
        for i in range(max(len(r["bids"]), len(r["asks"]))):
            bid = r["bids"][i] if i < len(r["bids"]) else None
            ask = r["asks"][i] if i < len(r["asks"]) else None
            left = f"{bid[2]:>7} {bid[1]:>10} {price_to_text(bid[0]):>12}" if bid else " " * 31
            right = f"{price_to_text(ask[0]):<12} {ask[1]:>10} {ask[2]:>7}" if ask else ""
            w(f"    {left} | {right}\n")


def cmd_book(args: argparse.Namespace) -> int:
    try:
        books = book(args.file, args.seq, args.time)
    except CaptureError as e:
        return _fail("pcap book", e)
    report: dict[str, BookReport] = {
        session_text(s): {"kind": "L3" if isinstance(b, L3Book) else "L2",
                          "instruments": ladder(b, args.levels, args.stock)}
        for s, b in sorted(books.items())}
    if args.json:
        _dump_json(report)
    else:
        for session, r in report.items():
            print_ladder(session, r["kind"], r["instruments"])
    return 0


# ------------------------------------------------------------------------------------------------

def register(sub: Any) -> None:
    p = sub.add_parser("pcap", help="analyse a capture (pcap/pcapng) of the feeds and order entry")
    psub = p.add_subparsers(dest="pcap_command", metavar="PCAPCOMMAND")
    psub.required = True
    g = psub.add_parser("gap-check", help="gaps, duplicates, reordering and A/B arbitration per line")
    g.add_argument("file", metavar="FILE")
    g.add_argument("--a-group", action="append", metavar="ADDR",
                   help="a multicast group of the A line (default: the lowest address of a session)")
    g.add_argument("--any-line", action="store_true", help="exit 1 on a gap of any single line too")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_gap_check)
    s = psub.add_parser("stats", help="messages per type, rates, microburst peaks, packet sizes")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)
    lt = psub.add_parser("latency", help="capture time vs ITCH timestamps, inter-arrival, OUCH to ITCH")
    lt.add_argument("file", metavar="FILE")
    lt.add_argument("--midnight-ns", type=int, help="epoch ns of the midnight the timestamps count from "
                    "(default: inferred to the quarter hour)")
    lt.add_argument("--plot", metavar="PNG", help="write a plot (needs matplotlib)")
    lt.add_argument("--json", action="store_true")
    lt.set_defaults(func=cmd_latency)
    b = psub.add_parser("book", help="the L3 and L2 books at a sequence number or a time, as a ladder")
    b.add_argument("file", metavar="FILE")
    at = b.add_mutually_exclusive_group()
    at.add_argument("--seq", type=int, help="after L3 message N (L2: up to its ITCH timestamp)")
    at.add_argument("--time", type=parse_clock, metavar="HH:MM:SS[.f]", help="up to this ITCH timestamp")
    b.add_argument("--stock", help="only this symbol")
    b.add_argument("--levels", type=int, default=10, help="price levels per side (default 10)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_book)
