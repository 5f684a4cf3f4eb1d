"""The two ends of a feed over a veth pair (tools/netns.py), each run inside its namespace:

    python -m tools.feed_peer send FLOW --groups G --interface ADDR --transport udp|sendmmsg|afxdp
        engine -> Publisher -> the transport; prints one JSON line: the engine's book hashes, what
        was sent, the transport's notes. ``--bench``: the datagrams are made first (untimed) and
        only the transport's send_packets calls are timed, with the CPU time they took.
    python -m tools.feed_peer receive --groups G --interface ADDR [--books]
        prints "ready", then reads every group until each channel's End of Session (or
        ``--timeout`` seconds without data); prints one JSON line: datagrams and messages per
        channel, CPU time, and with ``--books`` the subscriber's book hashes (feeds/subscriber.py).

``G`` is JSON: {"l3": [["239.1.2.3", 30001], ["239.1.2.4", 30001]], ...}. The sender and receiver
of `bench feed --transport` and of tests/test_afxdp.py.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from typing import Any

from appliance.procinfo import difference, process_figures
from feeds.channels import CHANNELS, ChannelGroups, FeedConfig
from feeds.moldudp64 import END_OF_SESSION_COUNT, parse_packet
from tools import jsonio

MIDNIGHT_NS = 1_700_000_000 * 10**9 - (1_700_000_000 * 10**9) % (86_400 * 10**9)
T0_NS = MIDNIGHT_NS + 9 * 3600 * 10**9 + 30 * 60 * 10**9  # 09:30
BATCH = 256


def _cpu_ns() -> int:
    """This process's CPU time, user + system, in ns (CLOCK_PROCESS_CPUTIME_ID: the scheduler's own
    accounting). Not psutil's cpu_times: /proc counts clock ticks of 10 ms, too coarse for a timed
    window of a fraction of a second."""
    return time.process_time_ns()


def _switches(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """Context switches of this process between two readings (appliance.procinfo, psutil)."""
    d = difference(after, before)
    return {"ctx_voluntary": d.get("ctx_voluntary"), "ctx_involuntary": d.get("ctx_involuntary")}


def _groups(text: str) -> dict[str, ChannelGroups]:
    raw = jsonio.loads(text)
    return {ch: ChannelGroups((a[0], int(a[1])), (b[0], int(b[1]))) for ch, (a, b) in raw.items()}


def _config(args: argparse.Namespace, groups: dict[str, ChannelGroups]) -> FeedConfig:
    channels = tuple(ch for ch in CHANNELS if ch in groups)
    return FeedConfig(channels=channels, groups=groups, interface=args.interface, ttl=args.ttl,
                      transports=dict.fromkeys(channels, args.transport), afxdp_mode=args.afxdp_mode,
                      afxdp_required=True, end_of_session_ns=10**6)


def cmd_send(args: argparse.Namespace) -> int:
    from appliance.catalogue import Event
    from appliance.matching.engine import Engine
    from feeds.books import engine_l1_summary, engine_l2_summary, engine_l3_summary, summary_hash
    from feeds.publisher import Publisher
    from feeds.transport import MemoryTransport, transport_for
    from tools.flows import FLOW_FIRM_STP, flow_instrument_count, flow_instruments, read_flow

    cmds, meta = read_flow(args.flow)
    if args.limit:
        cmds = cmds[:args.limit]
    instruments = flow_instruments(flow_instrument_count(cmds, meta))
    engine = Engine(instruments, FLOW_FIRM_STP)
    batches: list[list[Any]] = []
    seq = 1
    batch = args.batch
    for start in range(0, len(cmds), batch):
        res = []
        for cmd in cmds[start:start + batch]:
            out: list[Event] = []
            engine.apply(cmd, out)
            res.append((seq, T0_NS + start * 1000, cmd, out))
            seq += 1
        batches.append(res)
    config = _config(args, _groups(args.groups))
    transport = transport_for(config, "udp")
    if args.python_checksums:
        transport.afxdp_checksum_offload = False      # type: ignore[attr-defined]
    result: dict[str, Any] = {"transport": args.transport, "commands": len(cmds)}
    try:
        if not args.bench:
            pub = Publisher(config, instruments, MIDNIGHT_NS, transport)
            pub.start(T0_NS - 10**9)
            for b in batches:
                pub.publish(b)
            end = T0_NS + len(cmds) * 1000 + 10**9
            pub.end_session(end)
            pub.poll(end + config.end_of_session_ns + 1)
            result["datagrams"] = {ch: c.packets for ch, c in pub.channels.items()}
            result["messages"] = {ch: c.next_seq - 1 for ch, c in pub.channels.items()}
        else:
            # the datagrams first (untimed), then only the transport's sends, batch by batch
            memory = MemoryTransport()
            pub = Publisher(config, instruments, MIDNIGHT_NS, memory)
            pub.start(T0_NS - 10**9)
            sends: list[tuple[str, list[bytes]]] = []
            for b in batches:
                mark = len(memory.sent)
                pub.publish(b)
                per: dict[str, list[bytes]] = {}
                for ch, leg, _, p in memory.sent[mark:]:
                    if leg == 0:
                        per.setdefault(ch, []).append(p)
                sends.extend(per.items())
            pub.end_session(T0_NS + len(cmds) * 1000 + 10**9)
            end_packets = [(ch, [p]) for ch, leg, _, p in memory.sent
                           if leg == 0 and parse_packet(p).message_count == END_OF_SESSION_COUNT]
            senders = {ch: transport.channel(ch, config.groups_of(ch)) for ch in config.channels}
            datagrams = sum(len(ps) for _, ps in sends)
            messages = sum(ch.next_seq - 1 for ch in pub.channels.values())
            gc.collect()
            gc.disable()
            figs0 = process_figures(os.getpid())
            cpu0, t0 = _cpu_ns(), time.perf_counter_ns()
            for ch, ps in sends:
                senders[ch].send_packets(ps, 0)
            wall, cpu = time.perf_counter_ns() - t0, _cpu_ns() - cpu0
            switches = _switches(process_figures(os.getpid()), figs0)
            gc.enable()
            for ch, ps in end_packets:
                senders[ch].send_packets(ps, 0)
            errors = sum(getattr(c, "errors", 0) for c in senders.values())
            result.update({
                "datagrams_per_group": datagrams, "messages": messages, "send_calls": len(sends),
                "seconds": round(wall / 1e9, 4), "datagrams_per_sec": round(datagrams / (wall / 1e9)),
                "wire_datagrams_per_sec": round(2 * datagrams / (wall / 1e9)),
                "messages_per_sec": round(messages / (wall / 1e9)),
                "cpu_ns_per_datagram": round(cpu / (2 * datagrams)), "send_errors": errors, **switches,
            })
        result["notes"] = list(getattr(transport, "notes", []))
        xsk = getattr(transport, "xsk", None)
        if xsk is not None:
            result["afxdp"] = {"mode": xsk.mode, "checksum_offload": xsk.checksum_offload, "kicks": xsk.kicks, "frames": xsk.frames_sent,
                               "dropped": xsk.dropped, **xsk.statistics()}
    finally:
        transport.close()
    result["l3_hash"] = summary_hash(engine_l3_summary(engine))
    result["l2_hash"] = summary_hash(engine_l2_summary(engine, config.depth_levels))
    result["l1_hash"] = summary_hash(engine_l1_summary(engine))
    print(jsonio.dumps(result), flush=True)
    return 0


def cmd_receive(args: argparse.Namespace) -> int:
    from feeds.subscriber import FeedSubscriber
    from feeds.transport import multicast_receiver

    groups = _groups(args.groups)
    config = _config(args, groups)
    result: dict[str, Any] = {}
    if args.books:
        sub = FeedSubscriber(config)
        shell = sub.open(args.interface, rcvbuf=args.rcvbuf)
        print("ready", flush=True)
        last, deadline = time.monotonic(), time.monotonic() + args.limit_s
        while not all(r.ended for r in sub.receivers.values()) and time.monotonic() < deadline:
            if shell.poll(0.2):
                last = time.monotonic()
            elif time.monotonic() - last > args.timeout and shell.datagrams:
                break
        from feeds.books import summary_hash
        result.update({
            "datagrams": shell.datagrams,
            "ended": {ch: r.ended for ch, r in sub.receivers.items()},
            "gaps": {ch: r.gaps for ch, r in sub.receivers.items()},
            "messages": {ch: r.messages for ch, r in sub.receivers.items()},
            "l3_hash": summary_hash(sub.l3.summary()) if "l3" in sub.books else None,
            "l2_hash": summary_hash(sub.l2.summary()) if "l2" in sub.books else None,
            "l1_hash": summary_hash(sub.l1.summary()) if "l1" in sub.books else None,
        })
        sub.close()
    else:
        # counting only: datagrams and MoldUDP64 message counts per group, End of Session ends it
        import selectors
        sel = selectors.DefaultSelector()
        socks = []
        for ch in config.channels:
            for leg, g in enumerate(config.groups_of(ch)):
                s = multicast_receiver(g, args.interface, args.rcvbuf)
                socks.append(s)
                sel.register(s, selectors.EVENT_READ, f"{ch}/{'AB'[leg]}")
        counts = {key.data: [0, 0] for key in sel.get_map().values()}
        open_legs = set(counts)
        print("ready", flush=True)
        cpu0 = t_first = t_last = 0
        figs0: dict[str, Any] = {}
        deadline, last = time.monotonic() + args.limit_s, time.monotonic()
        while open_legs and time.monotonic() < deadline:
            events = sel.select(0.2)
            if not events and counts and t_first and time.monotonic() - last > args.timeout:
                break
            for key, _ in events:
                recv = key.fileobj.recv   # type: ignore[union-attr]
                c = counts[key.data]
                while True:
                    try:
                        d = recv(65536)
                    except BlockingIOError:
                        break
                    if not t_first:
                        figs0 = process_figures(os.getpid())
                        t_first, cpu0 = time.perf_counter_ns(), _cpu_ns()
                    n = (d[18] << 8) | d[19]
                    if n == 0xFFFF:
                        open_legs.discard(key.data)
                        continue
                    c[0] += 1
                    c[1] += n
                t_last = time.perf_counter_ns()
                last = time.monotonic()
        cpu = _cpu_ns() - cpu0
        switches = _switches(process_figures(os.getpid()), figs0) if t_first else {}
        datagrams = sum(c[0] for c in counts.values())
        seconds = max(1, t_last - t_first) / 1e9
        result.update({
            "per_group": {k: {"datagrams": v[0], "messages": v[1]} for k, v in counts.items()},
            "datagrams": datagrams, "messages": sum(c[1] for c in counts.values()),
            "ended": sorted(set(counts) - open_legs), "seconds": round(seconds, 4),
            "datagrams_per_sec": round(datagrams / seconds),
            "cpu_ns_per_datagram": round(cpu / max(1, datagrams)), **switches,
        })
        for s in socks:
            s.close()
        sel.close()
    print(jsonio.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.feed_peer", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("send", "receive"):
        p = sub.add_parser(name)
        p.add_argument("--groups", required=True)
        p.add_argument("--interface", required=True, help="this end's IPv4 address")
        p.add_argument("--ttl", type=int, default=1)
        p.add_argument("--transport", default="udp", choices=("udp", "sendmmsg", "afxdp"))
        p.add_argument("--afxdp-mode", default="auto", choices=("auto", "copy", "zerocopy"))
    s = sub.choices["send"]
    s.add_argument("flow")
    s.add_argument("--limit", type=int)
    s.add_argument("--bench", action="store_true")
    s.add_argument("--batch", type=int, default=BATCH, help="commands per publisher batch")
    s.add_argument("--python-checksums", action="store_true",
                   help="afxdp: compute UDP checksums in Python even where the kernel can")
    s.set_defaults(func=cmd_send)
    r = sub.choices["receive"]
    r.add_argument("--books", action="store_true")
    r.add_argument("--rcvbuf", type=int, default=64 << 20)
    r.add_argument("--timeout", type=float, default=3.0, help="give up this long after the last datagram")
    r.add_argument("--limit-s", type=float, default=120.0, help="give up after this long in all")
    r.set_defaults(func=cmd_receive)
    args = ap.parse_args(argv)
    try:
        return int(args.func(args))
    except OSError as e:
        print(f"feed_peer {args.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
