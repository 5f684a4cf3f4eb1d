"""`matchwire feed dump`: one line per market-data message, from a pcap file or a live multicast group.

    matchwire feed dump --pcap FILE [--channel l3|l2|l1] [--format text|jsonl]
    matchwire feed dump --group 239.192.1.31:30011 --iface 127.0.0.1 [--count N] [--seconds S]

Each line: capture time (ns), session, sequence number, message type and its fields. Copies of a
message (the A and B groups carry the same datagrams) are shown once, the first copy winning, as a
subscriber sees them (feeds.subscriber.ChannelReceiver per session). ITCH 5.0 and our L2/L1
messages are decoded (feeds.channels.decode_any). ``--channel`` keeps the sessions of one channel
(by the channel digit of our session names). A summary goes to stderr at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, TextIO

from feeds.channels import CHANNELS, channel_of_session, decode_any
from feeds.moldudp64 import HEADER_SIZE
from feeds.pcap import IPPROTO_UDP, PcapReader
from feeds.subscriber import ChannelReceiver, MessageTap
from feeds.transport import multicast_receiver


def _fields(msg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in zip(msg._fields, msg):
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace").rstrip()
        out[name] = value
    return out


class Dumper:
    """Prints the messages of every session it is fed, arbitrated per session."""

    def __init__(self, out: TextIO, fmt: str = "text", channel: str | None = None) -> None:
        self.out = out
        self.fmt = fmt
        self.channel = channel
        self.receivers: dict[bytes, ChannelReceiver] = {}
        self.legs: dict[bytes, dict[tuple[str, int], int]] = {}
        self.ts_ns = 0
        self.lines = 0
        self.not_mold = 0
        self.errors = 0

    def _receiver(self, session: bytes) -> ChannelReceiver | None:
        r = self.receivers.get(session)
        if r is None:
            ch = channel_of_session(session)
            if self.channel is not None and ch is not None and ch != self.channel:
                return None
            r = ChannelReceiver(session.decode("ascii", "replace"),
                                [MessageTap(self._printer(session))])
            self.receivers[session] = r
        return r

    def _printer(self, session: bytes) -> Callable[[int, bytes], None]:
        name = session.decode("ascii", "replace")

        def emit(seq: int, message: bytes) -> None:
            try:
                msg = decode_any(message)
            except ValueError as e:
                self.errors += 1
                fields: dict[str, Any] = {"error": str(e), "hex": message.hex()}
                mtype = message[:1].decode("ascii", "replace")
            else:
                fields = _fields(msg)
                mtype = message[:1].decode("ascii")
            if self.fmt == "jsonl":
                line = json.dumps({"ts_ns": self.ts_ns, "session": name, "seq": seq, "type": mtype, **fields})
            else:
                line = f"{self.ts_ns} {name} {seq} {mtype} " + " ".join(f"{k}={v}" for k, v in fields.items())
            self.out.write(line + "\n")
            self.lines += 1
        return emit

    def feed(self, ts_ns: int, payload: bytes, dst: tuple[str, int]) -> None:
        if len(payload) < HEADER_SIZE:
            self.not_mold += 1
            return
        session = payload[:10]
        r = self._receiver(session)
        if r is None:
            return
        legs = self.legs.setdefault(session, {})
        leg = legs.setdefault(dst, min(len(legs), 1))
        self.ts_ns = ts_ns
        r.receive(ts_ns, payload, leg)

    def summary(self) -> dict[str, Any]:
        return {
            "messages": self.lines,
            "sessions": {s.decode("ascii", "replace"): {
                "delivered": r.messages, "duplicates": r.duplicates, "gaps": r.gaps, "missing": r.missing,
                "heartbeats": r.heartbeats, "end_of_session": r.ended, "malformed": r.malformed}
                for s, r in self.receivers.items()},
            "undecodable": self.errors,
        }


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected ADDR:PORT")
    return host, int(port)


def cmd_dump(args: argparse.Namespace) -> int:
    out = sys.stdout
    dumper = Dumper(out, args.format, args.channel)
    try:
        if args.pcap:
            with open(args.pcap, "rb") as f:
                for packet in PcapReader(f):
                    if packet.proto != IPPROTO_UDP:
                        continue
                    dumper.feed(packet.ts_ns, packet.payload, (packet.dst_ip, packet.dst_port))
        else:
            sock = multicast_receiver(args.group, args.iface, blocking=True)
            sock.settimeout(0.2)
            deadline = time.monotonic() + args.seconds if args.seconds else None
            try:
                while (args.count is None or dumper.lines < args.count) and \
                        (deadline is None or time.monotonic() < deadline):
                    try:
                        data = sock.recv(65536)
                    except TimeoutError:
                        continue
                    dumper.feed(time.time_ns(), data, args.group)
            finally:
                sock.close()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        return 0
    print(json.dumps(dumper.summary()), file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("feed", help="market-data feed tools")
    fsub = p.add_subparsers(dest="feed_command", metavar="FEEDCOMMAND")
    fsub.required = True
    d = fsub.add_parser("dump", help="print one line per message (pcap file or live group)")
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--pcap", metavar="FILE", help="a pcap of MoldUDP64 datagrams")
    src.add_argument("--group", metavar="ADDR:PORT", type=_endpoint, help="join this multicast group")
    d.add_argument("--iface", default="127.0.0.1", help="interface address to join on (default 127.0.0.1)")
    d.add_argument("--channel", choices=CHANNELS, help="only this channel's sessions")
    d.add_argument("--format", choices=("text", "jsonl"), default="text")
    d.add_argument("--count", type=int, help="live: stop after N messages")
    d.add_argument("--seconds", type=float, help="live: stop after S seconds")
    d.set_defaults(func=cmd_dump)
