"""`matchwire feed dump`: one line per market-data message, from a capture or a live multicast group.

    matchwire feed dump --pcap FILE [--channel l3|l2|l1] [--format text|jsonl] [--raw] [--human]
    matchwire feed dump --group 239.192.1.31:30011 --iface 127.0.0.1 [--count N] [--seconds S]

Each line: capture time (ns), session, sequence number, message type and its fields. Copies of a
message (the A and B groups carry the same datagrams) are shown once, the first copy winning, as a
subscriber sees them (feeds.subscriber.ChannelReceiver per session). ``--raw`` shows every message
of every datagram as captured, on every line (no arbitration), with its group. Datagrams whose
sequence number is 0 (captures with zeroed sequence numbers) are shown as they come, sequence 0.
ITCH 5.0 and our L2/L1 messages are decoded (feeds.channels.decode_any); ``--channel`` keeps the
sessions of one channel (by the channel digit of our session names). A session that is not
printable ASCII shows as ``hex:...``. ``--human`` shows prices as decimals (Price(4), the MWCB
levels Price(8)), ITCH/OUCH timestamps as HH:MM:SS.nnnnnnnnn after midnight and capture times as
UTC. The file may be pcap or pcapng, of any link type feeds.pcap reads.

TCP in a capture is read as SoupBinTCP (each direction of each connection reassembled): one line
per SoupBinTCP packet, OUCH 5.0 decoded inside Unsequenced ('U', client) and Sequenced ('S',
server) Data. A summary goes to stderr at the end. A file that is missing, not a capture or cut
short gives one line on stderr and exit status 2 (after the messages before the cut).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable, TextIO

from feeds import ouch_layout
from feeds import soupbintcp
from feeds.channels import CHANNELS, channel_of_session, decode_any
from feeds.moldudp64 import HEADER_SIZE
from feeds.pcap import IPPROTO_TCP, IPPROTO_UDP
from feeds.pcap_analysis import MOLD, OTHER, REREQUEST, SoupStreams, classify, session_text
from feeds.subscriber import ChannelReceiver, MessageTap
from feeds.transport import multicast_receiver
from tools import jsonio
from tools.pcap_cli import CaptureError, packets

_PRICE8_FIELDS = frozenset({"level1", "level2", "level3"})   # MWCB Decline Level: Price(8)
_SOUP_NAMES = {b"+": "debug", b"A": "login_accepted", b"J": "login_rejected", b"S": "sequenced_data",
               b"H": "server_heartbeat", b"Z": "end_of_session", b"L": "login_request",
               b"U": "unsequenced_data", b"R": "client_heartbeat", b"O": "logout_request"}


def decimal(value: int, places: int) -> str:
    """An integer with ``places`` implied decimals as text (no float): 1234500, 4 -> '123.4500'."""
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), 10 ** places)
    return f"{sign}{whole}.{frac:0{places}d}"


def clock_time(ns_since_midnight: int) -> str:
    """HH:MM:SS.nnnnnnnnn of a timestamp in ns after midnight."""
    s, ns = divmod(ns_since_midnight, 1_000_000_000)
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.{ns:09d}"


def utc_time(ts_ns: int) -> str:
    """An epoch time in ns as ISO 8601 UTC with nanoseconds."""
    s, ns = divmod(ts_ns, 1_000_000_000)
    t = time.gmtime(s)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{ns:09d}Z"


def _fields(msg: Any, human: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in zip(msg._fields, msg):
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace").rstrip()
        elif human and isinstance(value, int):
            if name in _PRICE8_FIELDS:
                value = decimal(value, 8)
            elif "price" in name:
                value = decimal(value, 4)
            elif name == "timestamp":
                value = clock_time(value)
        out[name] = value
    return out


class Dumper:
    """Prints the messages of every session it is fed, arbitrated per session."""

    def __init__(self, out: TextIO, fmt: str = "text", channel: str | None = None, *,
                 raw: bool = False, human: bool = False) -> None:
        self.out = out
        self.fmt = fmt
        self.channel = channel
        self.raw = raw
        self.human = human
        self.receivers: dict[bytes, ChannelReceiver] = {}
        self.taps: dict[bytes, MessageTap] = {}
        self.legs: dict[bytes, dict[tuple[str, int], int]] = {}
        self.ts_ns = 0
        self.dst: tuple[str, int] = ("", 0)
        self.lines = 0
        self.not_mold = 0
        self.unsequenced = 0
        self.errors = 0
        self.soup = SoupStreams()
        self.soup_packets = 0

    def _wanted(self, session: bytes) -> bool:
        ch = channel_of_session(session)
        return self.channel is None or ch is None or ch == self.channel

    def _tap(self, session: bytes) -> MessageTap:
        tap = self.taps.get(session)
        if tap is None:
            tap = self.taps[session] = MessageTap(self._printer(session))
        return tap

    def _receiver(self, session: bytes) -> ChannelReceiver:
        r = self.receivers.get(session)
        if r is None:
            r = ChannelReceiver(session_text(session), [self._tap(session)])
            self.receivers[session] = r
        return r

    def _time(self) -> Any:
        return utc_time(self.ts_ns) if self.human else self.ts_ns

    def _write(self, head: dict[str, Any], fields: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            line = jsonio.dumps({**head, **fields})
        else:
            line = " ".join([*(str(v) for v in head.values()), *(f"{k}={v}" for k, v in fields.items())])
        self.out.write(line + "\n")
        self.lines += 1

    def _printer(self, session: bytes) -> Callable[[int, bytes], None]:
        name = session_text(session)

        def emit(seq: int, message: bytes) -> None:
            try:
                msg = decode_any(message)
            except ValueError as e:
                self.errors += 1
                fields: dict[str, Any] = {"error": str(e), "hex": message.hex()}
                mtype = message[:1].decode("ascii", "replace")
            else:
                fields = _fields(msg, self.human)
                mtype = message[:1].decode("ascii")
            head = {"ts_ns": self._time(), "session": name, "seq": seq, "type": mtype}
            if self.raw:
                head["group"] = f"{self.dst[0]}:{self.dst[1]}"
            self._write(head, fields)
        return emit

    def feed(self, ts_ns: int, payload: bytes, dst: tuple[str, int]) -> None:
        d = classify(payload)
        if d.kind == OTHER or d.kind == REREQUEST:
            self.not_mold += 1
            return
        session = d.session
        if not self._wanted(session):
            return
        self.ts_ns = ts_ns
        self.dst = dst
        if self.raw or (d.kind == MOLD and d.seq == 0):
            if d.kind == MOLD:      # raw: heartbeats and End of Session are in gap-check's report
                self.unsequenced += not self.raw
                self._tap(session).apply_blocks(payload, HEADER_SIZE, d.messages, d.seq)
            return
        legs = self.legs.setdefault(session, {})
        leg = legs.setdefault(dst, min(len(legs), 1))
        self._receiver(session).receive(ts_ns, payload, leg)

    def feed_tcp(self, packet: Any) -> None:
        """A TCP segment: print the SoupBinTCP packets it completes, OUCH decoded inside."""
        for flow, sp in self.soup.add(packet):
            self.soup_packets += 1
            self.ts_ns = packet.ts_ns
            head: dict[str, Any] = {"ts_ns": self._time(), "flow": f"{flow[0]}:{flow[1]}>{flow[2]}:{flow[3]}",
                                    "soup": _SOUP_NAMES.get(sp.type, sp.type.hex())}
            fields: dict[str, Any] = {}
            table = {b"U": ouch_layout.INBOUND, b"S": ouch_layout.OUTBOUND}.get(sp.type)
            if table is not None and sp.payload:
                try:
                    msg, options = ouch_layout.decode(sp.payload, table)
                except ValueError as e:
                    self.errors += 1
                    fields = {"error": str(e), "hex": sp.payload.hex()}
                else:
                    head["type"] = sp.payload[:1].decode("ascii")
                    fields = _fields(msg, self.human)
                    if options:
                        fields["options"] = ",".join(f"{tag}:{value.hex()}" for tag, value in options)
            elif sp.type == soupbintcp.LOGIN_REQUEST:
                try:
                    fields = _fields(soupbintcp.parse_login_request(sp.payload))
                except ValueError as e:
                    fields = {"error": str(e)}
                fields.pop("password", None)
            elif sp.payload:
                fields = {"payload": sp.payload.decode("ascii", "replace").rstrip()}
            self._write(head, fields)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "messages": self.lines,
            "sessions": {session_text(s): {
                "delivered": r.messages, "duplicates": r.duplicates, "gaps": r.gaps, "missing": r.missing,
                "heartbeats": r.heartbeats, "end_of_session": r.ended, "malformed": r.malformed}
                for s, r in self.receivers.items()},
            "undecodable": self.errors,
        }
        if self.unsequenced:
            out["unsequenced_packets"] = self.unsequenced
        if self.not_mold:
            out["not_moldudp64"] = self.not_mold
        if self.soup.segments:
            out["soupbintcp"] = {"packets": self.soup_packets, "segments": self.soup.segments,
                                 "missing_bytes": self.soup.missing_bytes,
                                 "framing_errors": self.soup.framing_errors}
        return out


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected ADDR:PORT")
    return host, int(port)


def cmd_dump(args: argparse.Namespace) -> int:
    out = sys.stdout
    dumper = Dumper(out, args.format, args.channel, raw=args.raw, human=args.human)
    try:
        if args.pcap:
            for packet in packets(args.pcap):
                if packet.proto == IPPROTO_UDP:
                    dumper.feed(packet.ts_ns, packet.payload, (packet.dst_ip, packet.dst_port))
                elif packet.proto == IPPROTO_TCP:
                    dumper.feed_tcp(packet)
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
    except CaptureError as e:
        out.flush()
        print(f"matchwire feed dump: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            return 0
        print(f"matchwire feed dump: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    print(jsonio.dumps(dumper.summary()), file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("feed", help="market-data feed tools")
    fsub = p.add_subparsers(dest="feed_command", metavar="FEEDCOMMAND")
    fsub.required = True
    d = fsub.add_parser("dump", help="print one line per message (pcap file or live group)")
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--pcap", metavar="FILE", help="a capture (pcap or pcapng) of the feeds or of OUCH")
    src.add_argument("--group", metavar="ADDR:PORT", type=_endpoint, help="join this multicast group")
    d.add_argument("--iface", default="127.0.0.1", help="interface address to join on (default 127.0.0.1)")
    d.add_argument("--channel", choices=CHANNELS, help="only this channel's sessions")
    d.add_argument("--format", choices=("text", "jsonl"), default="text")
    d.add_argument("--raw", action="store_true",
                   help="every message of every datagram as captured, A and B alike (no arbitration)")
    d.add_argument("--human", action="store_true",
                   help="prices as decimals, timestamps as HH:MM:SS.nnnnnnnnn, capture times as UTC")
    d.add_argument("--count", type=int, help="live: stop after N messages")
    d.add_argument("--seconds", type=float, help="live: stop after S seconds")
    d.set_defaults(func=cmd_dump)
