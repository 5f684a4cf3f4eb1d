"""`matchwire retransmit serve` and `matchwire snapshot serve`: the gap-fill servers, one process each.

    matchwire retransmit serve --config FILE [--partition NAME]... [overrides]
    matchwire snapshot serve   --config FILE [--partition NAME]... [overrides]

See docs/retransmit.md for what they answer and the keys of the config they read.
"""
from __future__ import annotations

import argparse
from typing import Any


def cmd_retransmit_serve(args: argparse.Namespace) -> int:
    print("matchwire retransmit serve: not available yet")
    return 2


def cmd_snapshot_serve(args: argparse.Namespace) -> int:
    print("matchwire snapshot serve: not available yet")
    return 2


def register(sub: Any) -> None:
    r = sub.add_parser("retransmit", help="the MoldUDP64 re-request (UDP) and SoupBinTCP replay (TCP) server")
    rsub = r.add_subparsers(dest="retransmit_command", metavar="ACTION")
    rsub.required = True
    rs = rsub.add_parser("serve", help="serve the feed stores of the partitions until SIGTERM")
    rs.add_argument("--config", help="the appliance TOML config")
    rs.set_defaults(func=cmd_retransmit_serve)
    s = sub.add_parser("snapshot", help="the GLIMPSE-style snapshot server (SoupBinTCP)")
    ssub = s.add_subparsers(dest="snapshot_command", metavar="ACTION")
    ssub.required = True
    ss = ssub.add_parser("serve", help="subscribe to the partitions' feeds and serve snapshots until SIGTERM")
    ss.add_argument("--config", help="the appliance TOML config")
    ss.set_defaults(func=cmd_snapshot_serve)
