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
    matchwire pcap book FILE [--seq N | --time HH:MM:SS[.f] | --at-ns NS] [--stock S] [--levels N]
        the L3 (order by order) and L2 books at that point, as a ladder.

The analysis is feeds.pcap_analysis (sans-IO); this module reads the file and prints.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Iterator

from feeds.pcap import IPPROTO_UDP, Packet, capture_reader
from feeds.pcap_analysis import (
    CaptureStats,
    GapChecker,
    SessionDemux,
    classify,
    session_text,
)
from feeds.subscriber import MessageTap


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
    sys.stdout.write(json.dumps(obj, indent=1) + "\n")


# ------------------------------------------------------------------------------------------------
# gap-check
# ------------------------------------------------------------------------------------------------

def gap_check(path: str, a_groups: frozenset[str] = frozenset()) -> dict[str, Any]:
    counters: dict[str, int] = {}
    checker = GapChecker(a_groups)
    for p in packets(path, counters):
        checker.add(p)
    report = checker.report()
    report["other"]["not_ipv4_udp_tcp"] = counters.get("not_ip", 0)
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
    demux = SessionDemux(lambda session: [MessageTap(st.message_counter(session))])
    tcp = 0
    counters: dict[str, int] = {}
    for p in packets(path, counters):
        if p.proto != IPPROTO_UDP:
            tcp += 1
            continue
        line = (p.dst_ip, p.dst_port)
        d = classify(p.payload)
        st.add_datagram(p.ts_ns, line, p.payload, d)
        demux.add(p.ts_ns, line, p.payload, d)
    demux.finish()
    report = st.report()
    report["tcp_segments"] = tcp
    report["not_ipv4_udp_tcp"] = counters.get("not_ip", 0)
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
