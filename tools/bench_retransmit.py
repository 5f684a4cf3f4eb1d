"""`matchwire bench retransmit`: TCP replay and snapshot throughput; the last line is one JSON object."""
from __future__ import annotations

import argparse
from typing import Any


def cmd_retransmit(args: argparse.Namespace) -> int:
    print("matchwire bench retransmit: not available yet")
    return 2


def register(sub: Any) -> None:
    p = sub.add_parser("retransmit", help="TCP replay of 1M messages and a 100,000-order snapshot over loopback")
    p.set_defaults(func=cmd_retransmit)
