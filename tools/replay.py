"""`matchwire replay WALDIR ...`: rebuild the books from a WAL directory and print them with the hash.

    matchwire replay WALDIR [--until-seq N | --until-time HH:MM:SS.nnnnnnnnn] [--book SYMBOL]
                            [--depth N] [--no-snapshot] [--json]

Read-only: nothing in WALDIR is changed (a torn tail is reported, not truncated). Starts from the
newest usable snapshot at or before the point asked for, then replays the WAL. --until-seq is
inclusive; --until-time is a UTC time of day on the day of the WAL's first record, inclusive (the
last command stamped at or before it). The last line printed is the state hash.

This module also registers `matchwire audit export` (tools.audit).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from appliance.matching.engine import Engine
from appliance.model import BUY, SELL, price_to_text
from appliance.recovery import Recovered, read_manifest, recover_state
from appliance.wal import WalError, WalReader
from tools import jsonio

NS_PER_DAY = 86_400 * 1_000_000_000
_TIME = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?$")


def parse_time_of_day(text: str) -> int:
    """"HH:MM:SS[.fraction]" -> nanoseconds since midnight."""
    m = _TIME.match(text.strip())
    if not m:
        raise ValueError(f"time {text!r}: expected HH:MM:SS.nnnnnnnnn")
    h, mi, s, frac = m.groups()
    if int(h) > 23 or int(mi) > 59 or int(s) > 59:
        raise ValueError(f"time {text!r} out of range")
    return ((int(h) * 60 + int(mi)) * 60 + int(s)) * 1_000_000_000 + int((frac or "").ljust(9, "0"))


def format_ts(ts_ns: int) -> str:
    """ns since the Unix epoch -> "HH:MM:SS.nnnnnnnnn" (UTC time of day)."""
    tod = ts_ns % NS_PER_DAY
    s, ns = divmod(tod, 1_000_000_000)
    return "%02d:%02d:%02d.%09d" % (s // 3600, s // 60 % 60, s % 60, ns)


def seq_at_time(waldir: str, tod_ns: int) -> tuple[int, int]:
    """(last seq stamped at or before the time of day, its ts_ns) on the day of the first record."""
    limit = None
    last = (0, 0)
    for _first, stamps in WalReader(waldir).stamps():
        for seq, ts in stamps:
            if limit is None:
                limit = ts - ts % NS_PER_DAY + tod_ns
            if ts > limit:
                return last
            last = (seq, ts)
    return last


def book_lines(engine: Engine, locate: int, symbol: str, depth: int) -> list[str]:
    book = engine.book(locate)
    bids = book.depth(BUY, depth)
    asks = book.depth(SELL, depth)
    last = price_to_text(book.last_price) if book.last_price else "-"
    lines = [f"{symbol} (locate {locate})  last trade {last}  levels {len(book.keys[BUY])} bid / "
             f"{len(book.keys[SELL])} ask  pending stops {book.nstops}"]
    lines.append("  %10s %6s %12s | %-12s %10s %6s" % ("bid qty", "orders", "bid", "ask", "ask qty", "orders"))
    for i in range(max(len(bids), len(asks))):
        b = "  %10d %6d %12s" % (bids[i][1], bids[i][2], price_to_text(bids[i][0])) if i < len(bids) else " " * 32
        a = " | %-12s %10d %6d" % (price_to_text(asks[i][0]), asks[i][1], asks[i][2]) if i < len(asks) else " |"
        lines.append(b + a)
    return lines


def book_json(engine: Engine, locate: int, symbol: str, depth: int) -> dict[str, Any]:
    book = engine.book(locate)
    return {
        "symbol": symbol,
        "locate": locate,
        "last_price": book.last_price,
        "bids": book.depth(BUY, depth),
        "asks": book.depth(SELL, depth),
        "pending_stops": book.nstops,
    }


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        return _replay(args)
    except BrokenPipeError:  # `matchwire replay ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _replay(args: argparse.Namespace) -> int:
    try:
        spec = read_manifest(args.waldir)
        symbols = spec.symbols()
        until_seq = args.until_seq
        until_ts = None
        if args.until_time is not None:
            until_seq, until_ts = seq_at_time(args.waldir, parse_time_of_day(args.until_time))
        if args.until_seq is not None and args.until_seq < 0:
            raise ValueError(f"--until-seq {args.until_seq}: a sequence number is 0 or more")
        rec: Recovered = recover_state(args.waldir, spec, use_snapshots=not args.no_snapshot,
                                       until_seq=until_seq)
    except (WalError, ValueError) as e:
        print(f"matchwire replay: {e}", file=sys.stderr)
        return 2
    if args.until_seq is not None and rec.last_seq < args.until_seq:
        print(f"matchwire replay: --until-seq {args.until_seq} is past the end of {args.waldir}: "
              f"its last command is seq {rec.last_seq}", file=sys.stderr)
        return 2
    locates = sorted(symbols)
    if args.book:
        wanted = [loc for loc in locates if symbols[loc] == args.book]
        if not wanted:
            print(f"matchwire replay: no instrument {args.book!r} in {args.waldir} "
                  f"({', '.join(symbols[loc] for loc in locates)})", file=sys.stderr)
            return 2
        locates = wanted
    h = rec.engine.state_hash()
    if args.json:
        print(jsonio.dumps({
            "waldir": args.waldir, "seq": rec.last_seq, "ts_ns": until_ts,
            "snapshot_seq": rec.snapshot.seq if rec.snapshot else None, "replayed": rec.replayed,
            "notes": rec.notes, "books": [book_json(rec.engine, loc, symbols[loc], args.depth) for loc in locates],
            "state_hash": h,
        }))
        return 0
    for note in rec.notes:
        print(f"note: {note}")
    at = f"seq {rec.last_seq}"
    if until_ts:
        at += f" (stamped {format_ts(until_ts)} UTC)"
    src = f"snapshot at seq {rec.snapshot.seq} + {rec.replayed} commands" if rec.snapshot else \
        f"{rec.replayed} commands from the start"
    print(f"{args.waldir}: state at {at}, from {src}")
    for loc in locates:
        print()
        print("\n".join(book_lines(rec.engine, loc, symbols[loc], args.depth)))
    print()
    print(f"state_hash {h}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("replay", help="rebuild the books from a WAL directory; print them and the state hash")
    p.add_argument("waldir", help="the partition's WAL directory")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--until-seq", type=int, default=None, metavar="N", help="stop after seq N (inclusive)")
    g.add_argument("--until-time", default=None, metavar="HH:MM:SS.nnnnnnnnn",
                   help="stop after the last command stamped at or before this UTC time of day")
    p.add_argument("--book", default=None, metavar="SYMBOL", help="print this instrument only")
    p.add_argument("--depth", type=int, default=10, help="price levels per side to print (default 10)")
    p.add_argument("--no-snapshot", action="store_true", help="replay the whole WAL, ignoring snapshots")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.set_defaults(func=cmd_replay)
