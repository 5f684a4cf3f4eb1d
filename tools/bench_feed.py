"""`matchwire bench feed FLOW.bin` and `matchwire bench subscriber PCAP`: the market-data path.

bench feed: the flow goes through the engine first, in batches of 1024 commands, and each batch's
(seq, ts_ns, cmd, events) is kept, as the partition hands them over. Then, timed separately:

    encode_packetize   Publisher (L3 only) over the batches: ITCH encode + MoldUDP64 packing, the
                       datagrams handed to a transport that drops them (no syscall)
    all_channels       the same with L3, L2 and L1
    multicast_send     L3 again, sent for real to its A and B groups on loopback (TTL 0)
    --pcap OUT         L3, L2 and L1 written by the pcap transport (untimed)

bench feed --transport udp,sendmmsg,afxdp: instead, the L3 channel (A and B) over a veth pair
between two network namespaces made for the run (tools/netns.py; root): for each transport in
turn, a counting receiver in one namespace and the sender in the other (tools/feed_peer.py). The
datagrams are made first; only the transport's send calls are timed, with the sender's CPU time
(CLOCK_PROCESS_CPUTIME_ID) per datagram on the wire and its context switches (psutil); the
receiver reports what arrived and its own CPU per datagram and context switches. Ratios are
against udp (one send per datagram per group) of the same run.

bench subscriber: the L3 datagrams of a pcap (read first, untimed) through a ChannelReceiver
(A/B arbitration, gap check) into an L3Book: MoldUDP64 + ITCH decode and book apply.

bench depth FLOW.bin: the flow's L3 and L2 datagrams (engine and publisher first, untimed) through
ChannelReceivers into an L3Book and an L2Book (timed: the apply), then depth queries, the top
--levels of each side of every instrument, --queries rounds: once by the books' own ``depth`` and
once by sorting the side's prices on every query (the way depth was answered before the books kept
their levels sorted), on the same levels; the two must agree. The flows make books about 20-40
levels deep; --pad-levels K adds K levels per L3 side beyond the far end to see a deeper book.

The cyclic GC is off during timed parts, as in the matching daemon. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import sys
import time
from typing import Any

import psutil

from appliance.catalogue import Event
from appliance.matching.engine import Engine
from feeds import itch
from feeds.books import L2Book, L3Book
from feeds.channels import CHANNELS, L2, L3, ChannelGroups, FeedConfig, channel_of_session
from feeds.pcap import IPPROTO_UDP, PcapReader
from feeds.publisher import Publisher
from feeds.subscriber import ChannelReceiver
from feeds.transport import MemoryTransport, NullTransport, PcapTransport, UdpTransport
from tools import jsonio
from tools.flows import FLOW_FIRM_STP, flow_instrument_count, flow_instruments, read_flow

BATCH = 1024
MIDNIGHT_NS = 1_700_000_000 * 10**9 - (1_700_000_000 * 10**9) % (86_400 * 10**9)
T0_NS = MIDNIGHT_NS + 9 * 3600 * 10**9 + 30 * 60 * 10**9  # 09:30


def _batches(path: str, limit: int | None) -> tuple[list[Any], list[Any], Engine, float]:
    cmds, meta = read_flow(path)
    if limit:
        cmds = cmds[:limit]
    instruments = flow_instruments(flow_instrument_count(cmds, meta))
    engine = Engine(instruments, FLOW_FIRM_STP)
    apply = engine.apply
    batches: list[list[tuple[int, int, Any, list[Event]]]] = []
    seq = 1
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for start in range(0, len(cmds), BATCH):
            ts = T0_NS + start * 1000   # one stamp per batch, as the sequencer does
            res = []
            for cmd in cmds[start:start + BATCH]:
                out: list[Event] = []
                apply(cmd, out)
                res.append((seq, ts, cmd, out))
                seq += 1
            batches.append(res)
        seconds = time.perf_counter() - t0
    finally:
        gc.enable()
    return batches, instruments, engine, seconds


def _run(batches: list[Any], instruments: list[Any], config: FeedConfig, transport: Any) -> tuple[float, Publisher]:
    pub = Publisher(config, instruments, MIDNIGHT_NS, transport)
    pub.start(T0_NS - 10**9)
    publish = pub.publish
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for res in batches:
            publish(res)
        seconds = time.perf_counter() - t0
    finally:
        gc.enable()
    return seconds, pub


def _bench_groups() -> dict[str, ChannelGroups]:
    rnd = random.Random(os.getpid() ^ time.time_ns())
    base = rnd.randrange(20000, 60000, 10)
    return {ch: ChannelGroups((f"239.255.{200 + i}.1", base + i), (f"239.255.{200 + i}.2", base + i))
            for i, ch in enumerate(CHANNELS)}


def cmd_feed_transports(args: argparse.Namespace) -> int:
    import subprocess
    import sys

    from tools.netns import VethPair, in_netns, unavailable

    kinds = [k for k in args.transport.split(",") if k]
    bad = [k for k in kinds if k not in ("udp", "sendmmsg", "afxdp")]
    if bad or not kinds:
        print(f"matchwire bench feed: --transport takes udp, sendmmsg, afxdp (comma-separated), not {bad}",
              file=sys.stderr)
        return 2
    why = unavailable()
    if why is not None:
        print(f"matchwire bench feed --transport: {why}", file=sys.stderr)
        return 2
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    groups = jsonio.dumps({L3: [["239.255.40.1", 31400], ["239.255.40.2", 31400]]})
    flow = os.path.abspath(args.flow)
    runs: dict[str, Any] = {}
    every: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    load = [f"{x:.2f}" for x in psutil.getloadavg()]
    with VethPair() as v:
        for kind in kinds * args.repeat:    # interleaved: a change of load hits every transport
            common = ["--groups", groups, "--transport", kind]
            recv = subprocess.Popen(in_netns(v.b, [sys.executable, "-m", "tools.feed_peer", "receive", *common,
                                                   "--interface", v.addr_b, "--timeout", "3", "--limit-s", "300"]),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root)
            try:
                assert recv.stdout is not None
                if recv.stdout.readline().strip() != "ready":
                    raise RuntimeError("receiver did not start: " + (recv.stderr.read() if recv.stderr else ""))
                argv = [sys.executable, "-m", "tools.feed_peer", "send", flow, *common, "--interface", v.addr_a,
                        "--bench", "--batch", str(args.batch)]
                if args.limit:
                    argv += ["--limit", str(args.limit)]
                send = subprocess.run(in_netns(v.a, argv), capture_output=True, text=True, env=env, cwd=root,
                                      timeout=600)
                if send.returncode != 0:
                    print(f"matchwire bench feed: {kind}: {send.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                    every[kind].append({"error": send.stderr.strip().splitlines()[-1:]})
                    recv.kill()
                    continue
                out, _ = recv.communicate(timeout=320)
            finally:
                if recv.poll() is None:
                    recv.kill()
                    recv.wait()
            sent = jsonio.loads(send.stdout.strip().splitlines()[-1])
            got = jsonio.loads(out.strip().splitlines()[-1])
            run: dict[str, Any] = {
                "sent_datagrams_per_group": sent["datagrams_per_group"],
                "sent_datagrams_per_sec": sent["wire_datagrams_per_sec"],
                "sent_messages_per_sec": sent["messages_per_sec"],
                "send_seconds": sent["seconds"],
                "send_cpu_ns_per_datagram": sent["cpu_ns_per_datagram"],
                "send_errors": sent["send_errors"],
                "received_datagrams": got["datagrams"],
                "received_messages": got["messages"],
                "received_datagrams_per_sec": got["datagrams_per_sec"],
                "receive_cpu_ns_per_datagram": got["cpu_ns_per_datagram"],
                # context switches over the timed window (blocked in a send or read / preempted)
                "send_context_switches": [sent.get("ctx_voluntary"), sent.get("ctx_involuntary")],
                "receive_context_switches": [got.get("ctx_voluntary"), got.get("ctx_involuntary")],
                "lost_datagrams": 2 * sent["datagrams_per_group"] - got["datagrams"],
                "notes": sent["notes"],
            }
            if "afxdp" in sent:
                run["afxdp"] = {k: sent["afxdp"][k] for k in ("mode", "checksum_offload", "kicks", "dropped")}
            every[kind].append(run)
            print(f"{kind}: {jsonio.dumps(run)}", file=sys.stderr)
    load_after = [f"{x:.2f}" for x in psutil.getloadavg()]
    for kind, done in every.items():
        ok = [r for r in done if "error" not in r]
        if not ok:
            runs[kind] = done[-1] if done else {"error": "not run"}
            continue
        # the run of median send rate stands for the transport; every rate is listed too
        ok.sort(key=lambda r: r["sent_datagrams_per_sec"])
        runs[kind] = dict(ok[len(ok) // 2], runs=len(ok),
                          all_sent_datagrams_per_sec=[r["sent_datagrams_per_sec"] for r in ok])
    base = runs.get("udp", {}).get("sent_datagrams_per_sec")
    result: dict[str, Any] = {
        "benchmark": "feed_transport", "flow": os.path.basename(args.flow), "channel": "l3 (A and B)",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "batch_commands": args.batch, "load_average_before": load, "load_average_after": load_after,
        "cpu_count": os.cpu_count(),
        "transports": runs,
    }
    if base:
        result["speedup_vs_udp"] = {k: round(r["sent_datagrams_per_sec"] / base, 2)
                                    for k, r in runs.items() if "sent_datagrams_per_sec" in r}
        # on a busy machine the wall-clock rate measures the scheduler; the sender's CPU time per
        # datagram does not: the rate one core could sustain, and its ratio to udp
        cpu_base = runs["udp"]["send_cpu_ns_per_datagram"]
        result["cpu_bound_datagrams_per_sec"] = {k: round(1e9 / r["send_cpu_ns_per_datagram"])
                                                 for k, r in runs.items() if r.get("send_cpu_ns_per_datagram")}
        result["speedup_vs_udp_by_cpu"] = {k: round(cpu_base / r["send_cpu_ns_per_datagram"], 2)
                                           for k, r in runs.items() if r.get("send_cpu_ns_per_datagram")}
    print(jsonio.dumps(result))
    return 0


def cmd_feed(args: argparse.Namespace) -> int:
    if args.transport:
        return cmd_feed_transports(args)
    batches, instruments, engine, engine_s = _batches(args.flow, args.limit)
    commands = sum(len(b) for b in batches)
    groups = _bench_groups()
    l3_only = FeedConfig(channels=(L3,), groups=groups)
    everything = FeedConfig(groups=groups)

    enc_s, pub = _run(batches, instruments, l3_only, NullTransport())
    l3 = pub.channels[L3]
    messages = l3.next_seq - 1
    packets = l3.packets
    all_s, pub_all = _run(batches, instruments, everything, NullTransport())
    all_msgs = sum(ch.next_seq - 1 for ch in pub_all.channels.values())
    udp = UdpTransport(l3_only.interface, l3_only.ttl, l3_only.dscp)
    try:
        send_s, pub_udp = _run(batches, instruments, l3_only, udp)
        send_errors = sum(ch.errors for ch in udp.channels.values())
    finally:
        udp.close()
    result: dict[str, Any] = {
        "benchmark": "feed",
        "flow": os.path.basename(args.flow),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "commands": commands,
        "engine_seconds": round(engine_s, 4),
        "messages": messages,
        "packets": packets,
        "msgs_per_packet": round(messages / max(1, packets), 1),
        "encode_packetize_seconds": round(enc_s, 4),
        "msgs_per_sec": round(messages / enc_s),
        "multicast_send_seconds": round(send_s, 4),
        "msgs_per_sec_multicast_send": round(messages / send_s),
        "datagrams_sent_per_group": pub_udp.channels[L3].packets,
        "send_errors": send_errors,
        "all_channels_messages": all_msgs,
        "all_channels_msgs_per_sec": round(all_msgs / all_s),
        "cpu_count": os.cpu_count(),
    }
    if args.pcap:
        pcap = PcapTransport(args.pcap, ttl=everything.ttl, src_port=everything.source_port)
        try:
            _, pub_pcap = _run(batches, instruments, everything, pcap)
            pub_pcap.end_session(batches[-1][-1][1] + 10**9) if batches else None
        finally:
            pcap.close()
        result["pcap"] = args.pcap
        result["pcap_groups"] = {ch: list(map(list, g)) for ch, g in groups.items()}
    print(jsonio.dumps(result))
    return 0


def cmd_subscriber(args: argparse.Namespace) -> int:
    packets: list[tuple[int, bytes, int]] = []
    legs: dict[bytes, dict[tuple[str, int], int]] = {}
    with open(args.pcap, "rb") as f:
        for p in PcapReader(f):
            if p.proto != IPPROTO_UDP or len(p.payload) < 20:
                continue
            session = p.payload[:10]
            ch = channel_of_session(session)
            if ch is not None and ch != L3:
                continue
            seen = legs.setdefault(session, {})
            leg = seen.setdefault((p.dst_ip, p.dst_port), min(len(seen), 1))
            packets.append((p.ts_ns, p.payload, leg))
    book = L3Book()
    receiver = ChannelReceiver(L3, [book])
    receive = receiver.receive
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for ts, data, leg in packets:
            receive(ts, data, leg)
        seconds = time.perf_counter() - t0
    finally:
        gc.enable()
    result = {
        "benchmark": "subscriber",
        "pcap": os.path.basename(args.pcap),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "datagrams": len(packets),
        "duplicates_dropped": receiver.duplicates,
        "gaps": receiver.gaps,
        "messages": receiver.messages,
        "seconds": round(seconds, 4),
        "msgs_per_sec": round(receiver.messages / seconds) if seconds else 0,
        "resting_orders": len(book.orders),
        "l3_hash": book.state_hash(),
    }
    print(jsonio.dumps(result))
    return 0


def _sorted_per_query(book: dict[int, Any], side: int, n: int) -> list[tuple[int, int, int]]:
    """Depth as it was answered before: sort the side's prices on every query."""
    return [(p, book[p][0], book[p][1]) for p in sorted(book, reverse=side == 0)[:n]]


def _as_plain_dict(side_levels: Any) -> dict[int, Any]:
    """The levels as the plain dict the books kept before, in a shuffled insertion order (a dict
    filled as levels appear is not in price order; a sorted one would flatter the sort)."""
    prices = list(side_levels)
    random.Random(len(prices)).shuffle(prices)
    return {p: side_levels[p] for p in prices}


def cmd_depth(args: argparse.Namespace) -> int:
    if args.levels < 1 or args.queries < 1 or args.pad_levels < 0:
        print("matchwire bench depth: --levels and --queries take a positive number, --pad-levels zero or more",
              file=sys.stderr)
        return 2
    batches, instruments, _engine, _ = _batches(args.flow, args.limit)
    memory = MemoryTransport()
    _run(batches, instruments, FeedConfig(channels=(L3, L2), groups=_bench_groups()), memory)
    l3 = L3Book()
    l2 = L2Book()
    timings: dict[str, float] = {}
    for name, ch, book in (("l3", L3, l3), ("l2", L2, l2)):
        datagrams = memory.of(ch)
        receive = ChannelReceiver(ch, [book]).receive
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            for data in datagrams:
                receive(0, data, 0)
            timings[f"{name}_apply_seconds"] = time.perf_counter() - t0
        finally:
            gc.enable()
    if args.pad_levels:     # a deeper book than the flow makes: more Add Orders beyond the far end
        ref = max(l3.orders, default=0)
        for loc in l3.locates():
            bids, asks = l3.sides[loc]
            low = min(bids, default=min(asks, default=1_000_000))
            high = max(asks, default=low)
            for i in range(1, args.pad_levels + 1):
                for side_byte, price in ((b"B", low - i), (b"S", high + i)):
                    if price > 0:
                        ref += 1
                        l3.apply(itch.encode_add_order(loc, 0, 0, ref, side_byte, 100, b"PAD     ", price))
    n = args.levels
    sides = {"l3": [(loc, side, _as_plain_dict(l3.sides[loc][side])) for loc in l3.locates() for side in (0, 1)],
             "l2": [(loc, side, _as_plain_dict(l2.levels[loc][side])) for loc in sorted(l2.levels) for side in (0, 1)]}

    def l3_depth(loc: int, side: int) -> list[tuple[int, int, int]]:
        return l3.depth(loc, side, n)

    def l2_depth(loc: int, side: int) -> list[tuple[int, int, int]]:
        return l2.depth(loc, side)[:n]

    own = {"l3": l3_depth, "l2": l2_depth}
    result: dict[str, Any] = {
        "benchmark": "depth", "flow": os.path.basename(args.flow),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "levels": n, "queries_per_side": args.queries, "pad_levels": args.pad_levels,
        "l3_resting_orders": len(l3.orders),
        "l3_price_levels": sum(len(lv) for _, _, lv in sides["l3"]),
        "l2_price_levels": sum(len(lv) for _, _, lv in sides["l2"]),
    }
    for name in ("l3", "l2"):
        depth = own[name]
        for loc, side, lv in sides[name]:   # the same answer both ways, or the figures mean nothing
            if depth(loc, side) != _sorted_per_query(lv, side, n):
                print(f"matchwire bench depth: {name} depth of locate {loc} side {side} differs", file=sys.stderr)
                return 1
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            for _ in range(args.queries):
                for loc, side, _lv in sides[name]:
                    depth(loc, side)
            books_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(args.queries):
                for _loc, side, lv in sides[name]:
                    _sorted_per_query(lv, side, n)
            sort_s = time.perf_counter() - t0
        finally:
            gc.enable()
        queries = args.queries * len(sides[name])
        result[f"{name}_apply_seconds"] = round(timings[f"{name}_apply_seconds"], 4)
        result[f"{name}_depth_queries"] = queries
        result[f"{name}_depth_us_books"] = round(books_s / max(1, queries) * 1e6, 3)
        result[f"{name}_depth_us_sort_per_query"] = round(sort_s / max(1, queries) * 1e6, 3)
    print(f"{'':>4} {'levels':>8} {'apply s':>9} {'depth us (books)':>17} {'depth us (sort per query)':>26}")
    for name in ("l3", "l2"):
        print(f"{name:>4} {result[f'{name}_price_levels']:>8} {result[f'{name}_apply_seconds']:>9} "
              f"{result[f'{name}_depth_us_books']:>17} {result[f'{name}_depth_us_sort_per_query']:>26}")
    print(jsonio.dumps(result))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("feed", help="engine -> ITCH encoder -> MoldUDP64 packetizer -> transport")
    p.add_argument("flow", help="FLOW.bin made by `matchwire flow generate`")
    p.add_argument("--pcap", metavar="OUT", help="also write L3, L2 and L1 to this pcap (A and B)")
    p.add_argument("--limit", type=int, help="only the first N commands of the flow")
    p.add_argument("--transport", metavar="T,T", help="udp,sendmmsg,afxdp (any of them): L3 over a veth pair "
                   "between two namespaces made for the run, per transport (root)")
    p.add_argument("--batch", type=int, default=BATCH, help="with --transport: commands per publisher batch")
    p.add_argument("--repeat", type=int, default=1, choices=range(1, 10), metavar="N",
                   help="with --transport: run each transport N times, interleaved; report the median")
    p.set_defaults(func=cmd_feed)
    s = sub.add_parser("subscriber", help="MoldUDP64 + ITCH decode and L3 book apply from a pcap")
    s.add_argument("pcap")
    s.set_defaults(func=cmd_subscriber)
    d = sub.add_parser("depth", help="L3 and L2 book apply, then depth queries: the books' own vs sort per query")
    d.add_argument("flow", help="FLOW.bin made by `matchwire flow generate`")
    d.add_argument("--limit", type=int, help="only the first N commands of the flow")
    d.add_argument("--levels", type=int, default=10, help="levels per side a query asks for (default 10)")
    d.add_argument("--queries", type=int, default=20, help="query rounds over every side of every instrument")
    d.add_argument("--pad-levels", type=int, default=0, metavar="K",
                   help="then K more levels per L3 side beyond the far end (a deeper book than the flow's)")
    d.set_defaults(func=cmd_depth)
