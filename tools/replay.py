"""`matchwire replay WALDIR ...` and `matchwire audit export WALDIR ...`: the WAL tools."""
from __future__ import annotations

import argparse
from typing import Any


def cmd_replay(args: argparse.Namespace) -> int:
    raise SystemExit("matchwire replay: not available yet")


def register(sub: Any) -> None:
    p = sub.add_parser("replay", help="replay a WAL directory; print the book(s) and the state hash")
    p.add_argument("waldir")
    p.set_defaults(func=cmd_replay)
