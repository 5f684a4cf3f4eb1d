"""`matchwire bench feed FLOW.bin` and `matchwire bench subscriber PCAP`: the market-data path."""
from __future__ import annotations

import argparse
from typing import Any


def cmd_feed(args: argparse.Namespace) -> int:
    raise SystemExit("matchwire bench feed: not available yet")


def cmd_subscriber(args: argparse.Namespace) -> int:
    raise SystemExit("matchwire bench subscriber: not available yet")


def register(sub: Any) -> None:
    p = sub.add_parser("feed", help="engine -> ITCH encoder -> MoldUDP64 packetizer -> transport")
    p.add_argument("flow")
    p.set_defaults(func=cmd_feed)
    s = sub.add_parser("subscriber", help="MoldUDP64 + ITCH decode and L3 book apply from a pcap")
    s.add_argument("pcap")
    s.set_defaults(func=cmd_subscriber)
