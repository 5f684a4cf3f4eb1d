"""`matchwire bench pcap FILE`: how fast the pcap tools read a capture, beside tshark on the same file.

Timed in this process, one after the other, the cyclic GC off (as in the other benchmarks):

    read        feeds.pcap: every frame parsed to a UDP/TCP packet (the reader under every tool)
    gap_check   `matchwire pcap gap-check` (tools.pcap_cli.gap_check)
    stats       `matchwire pcap stats` (tools.pcap_cli.stats: per-session receivers, per-type counts)
    scapy       scapy's PcapReader and our scapy layers on the first --scapy-limit packets (scaled)

then, as subprocesses on the same file (wall time, output to /dev/null):

    tshark_mold     tshark with its stock MoldUDP64 dissector on every feed port (-d udp.port==P,moldudp64),
                    printing sequence and count of every datagram (-T fields)
    tshark_lua      with --with-lua: tshark with our generated dissector (feeds/matchwire.lua),
                    printing the type of every message (-T fields -e mw_itch.type)

Rates are messages per second of wall time and of CPU time (this process; tshark: its user +
system time), counting every message copy in the file (A and B lines alike), so that each tool is
measured on the same work; CPU time is the fairer figure on a busy machine. gap-check walks the
blocks of the first datagram of each session on each line and judges the rest by their headers
(feeds.pcap_analysis.Classifier); stats walks every block (per-type counts, receivers). The last line is one JSON object, with the load
average (os.getloadavg) at the start and the end.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from typing import Any, Callable

from feeds.pcap import IPPROTO_UDP
from feeds.pcap_analysis import MOLD, classify
from tools import jsonio
from tools.pcap_cli import CaptureError, gap_check, packets, stats


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result)."""
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        c0 = time.process_time()
        result = fn()
        return time.perf_counter() - t0, time.process_time() - c0, result
    finally:
        gc.enable()


def _census(path: str) -> tuple[int, int, set[int]]:
    """(packets, MoldUDP64 messages, UDP destination ports of the feed datagrams) of a capture."""
    n = messages = 0
    ports: set[int] = set()
    for p in packets(path):
        n += 1
        if p.proto == IPPROTO_UDP:
            d = classify(p.payload)
            if d.kind == MOLD:
                messages += d.messages
                ports.add(p.dst_port)
    return n, messages, ports


def _read(path: str) -> int:
    n = 0
    for _ in packets(path):
        n += 1
    return n


def _scapy(path: str, limit: int, ports: set[int]) -> tuple[int, int]:
    """Packets and messages scapy decodes with our layers in the first ``limit`` packets (the
    feed ports bound to MoldUDP64)."""
    from scapy.utils import PcapReader as ScapyReader

    from feeds import scapy_layers
    scapy_layers.bind_ports(udp=tuple(sorted(ports)))
    n = messages = 0
    with ScapyReader(path) as reader:
        for pkt in reader:
            n += 1
            if pkt.haslayer(scapy_layers.MoldUDP64):
                messages += len(pkt[scapy_layers.MoldUDP64].blocks)
            if n >= limit:
                break
    return n, messages


def _tshark(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the child).

    getrusage(RUSAGE_CHILDREN), not psutil: it counts children already waited for, which is what
    tshark is once subprocess.run returns; psutil reads only processes that still exist."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=3600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cmd_pcap(args: argparse.Namespace) -> int:
    load_start = os.getloadavg()
    try:
        n_packets, n_messages, ports = _census(args.file)
    except CaptureError as e:
        print(f"matchwire bench pcap: {e}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {"bench": "pcap", "file": os.path.basename(args.file),
                              "bytes": os.path.getsize(args.file), "packets": n_packets, "messages": n_messages,
                              "python": platform.python_version(), "load_start": [round(x, 2) for x in load_start]}

    def rate(wall: float, cpu: float, messages: int = n_messages) -> dict[str, Any]:
        return {"seconds": round(wall, 3), "cpu_seconds": round(cpu, 3),
                "messages_per_s": int(messages / wall) if wall else None,
                "messages_per_cpu_s": int(messages / cpu) if cpu else None}

    wall, cpu, _ = _timed(lambda: _read(args.file))
    result["read"] = rate(wall, cpu)
    wall, cpu, report = _timed(lambda: gap_check(args.file))
    result["gap_check"] = rate(wall, cpu)
    result["gap_check"]["gap"] = report["gap"]
    wall, cpu, st = _timed(lambda: stats(args.file))
    result["stats"] = rate(wall, cpu)
    result["stats"]["unique_messages"] = st["messages"]
    if args.scapy_limit:
        try:
            wall, cpu, (n, m) = _timed(lambda: _scapy(args.file, args.scapy_limit, ports))
        except ImportError:
            result["scapy"] = "not installed"
        else:
            result["scapy"] = {"packets": n, **rate(wall, cpu, m)}
    tshark = shutil.which("tshark")
    if tshark and not args.no_tshark:
        decode = [a for port in sorted(ports) for a in ("-d", f"udp.port=={port},moldudp64")]
        result["tshark_mold"] = rate(*_tshark([tshark, "-r", args.file, *decode, "-T", "fields",
                                               "-e", "moldudp64.sequence", "-e", "moldudp64.count"]))
        if args.with_lua:
            from feeds.wireshark import LUA_PATH
            result["tshark_lua"] = rate(*_tshark([tshark, "-X", f"lua_script:{LUA_PATH}", "-r", args.file,
                                                  "-T", "fields", "-e", "mw_itch.type"]))
    else:
        result["tshark"] = "not run" if tshark else "not installed"
    result["load_end"] = [round(x, 2) for x in os.getloadavg()]
    for name in ("read", "gap_check", "stats", "scapy", "tshark_mold", "tshark_lua"):
        r = result.get(name)
        if isinstance(r, dict):
            print(f"{name:12} {r['seconds']:>9} s {r['cpu_seconds']:>9} cpu s  {r['messages_per_s'] or 0:>12,} "
                  f"messages/s  {r['messages_per_cpu_s'] or 0:>12,} messages/cpu s")
    print(jsonio.dumps(result))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("pcap", help="pcap gap-check and stats speed on a capture, beside tshark")
    p.add_argument("file", metavar="FILE", help="a capture, e.g. written by `matchwire bench feed FLOW --pcap FILE`")
    p.add_argument("--scapy-limit", type=int, default=20_000,
                   help="packets scapy decodes (it is slow; 0: skip; default 20000)")
    p.add_argument("--no-tshark", action="store_true", help="do not run tshark")
    p.add_argument("--with-lua", action="store_true",
                   help="also tshark with our Lua dissector (decodes every field in Lua: slow)")
    p.set_defaults(func=cmd_pcap)
