"""`matchwire feed dump`: one line per market-data message, from a pcap or a live multicast group."""
from __future__ import annotations

import argparse
from typing import Any


def cmd_dump(args: argparse.Namespace) -> int:
    raise SystemExit("matchwire feed dump: not available yet")


def register(sub: Any) -> None:
    p = sub.add_parser("feed", help="market-data feed tools")
    fsub = p.add_subparsers(dest="feed_command", metavar="FEEDCOMMAND")
    fsub.required = True
    d = fsub.add_parser("dump", help="print one line per message (pcap file or live group)")
    d.set_defaults(func=cmd_dump)
