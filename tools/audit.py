"""`matchwire audit export WALDIR --format csv|jsonl`: every order lifecycle event, from the WAL.

Replays the whole WAL (read-only, no snapshot: the lifecycle starts at the first record) and writes
one row per order per event: an execution gives two rows (maker and taker; an auction fill: buy and
sell), a mass cancel one row per cancelled order plus one for the request; trading state changes,
market-wide events, auction results and limit states one row each (imbalance messages and collars
none). Columns (COLUMNS), in both formats:

    ts_ns, time (UTC), seq, event, outcome, firm, account, session, cl_ord_id, order_id, ref,
    instrument, side, ord_type, tif, price, stop_price, qty, exec_qty, exec_price, match, leaves,
    filled, role, prev_ref

Prices are decimal text with 4 decimals (exact Price(4) units); quantities are shares.

``--rejects FILE`` (repeatable; each gateway's ``STATE/gateways/<gw>/rejects.jsonl``) adds the
commands the gateways refused before sequencing (risk limits, kill switch, rate, back-pressure,
malformed): event ``rejected``, empty seq (they were never sequenced), outcome ``rejected <code>
<name> (gateway <gw>)``, merged by time into the WAL's rows, so that the trail of every order a
firm sent is in one file. A line of such a file that is not a reject row is reported and skipped.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import IO, Any, Iterable, Iterator, Sequence

from appliance import reasons as R
from appliance.catalogue import (
    REPL_HIDDEN,
    REPL_IN_PLACE,
    REPL_REMOVE,
    REPL_REPOST,
    CancelOrder,
    Close,
    Command,
    Ev,
    Event,
    Halt,
    MassCancel,
    NewOrder,
    ReplaceOrder,
    Resume,
)
from appliance.model import (
    DAY,
    FOK,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    STOP,
    STOP_LIMIT,
    TRADING_STATE_NAMES,
    price_to_text,
)
from appliance.recovery import read_manifest, recover_state
from appliance.wal import WalError
from tools import jsonio
from tools.replay import format_ts

Row = dict[str, str | int]   # one audit row: COLUMNS -> text or an integer ("" where it does not apply)
COLUMNS = (
    "ts_ns", "time", "seq", "event", "outcome", "firm", "account", "session", "cl_ord_id", "order_id",
    "ref", "instrument", "side", "ord_type", "tif", "price", "stop_price", "qty", "exec_qty",
    "exec_price", "match", "leaves", "filled", "role", "prev_ref",
)
_ORD_TYPES = {MARKET: "MARKET", LIMIT: "LIMIT", STOP: "STOP", STOP_LIMIT: "STOP_LIMIT"}
_TIFS = {DAY: "DAY", GTC: "GTC", IOC: "IOC", FOK: "FOK"}
_REPL = {REPL_IN_PLACE: "in place", REPL_REPOST: "repost", REPL_REMOVE: "remove", REPL_HIDDEN: "hidden"}
_REJECT_NAMES = {v: k for k, v in vars(R).items() if k.isupper() and isinstance(v, int) and v in R.REJECT_REASONS}
_CANCEL_NAMES = {v: k[len("CANCEL_"):] for k, v in vars(R).items()
                 if k.startswith("CANCEL_") and isinstance(v, int) and v in R.CANCEL_REASONS}


def _px(p: int) -> str:
    return price_to_text(p) if p else ""


class AuditRows:
    """Turns one command's events into rows. Read the orders right after the command was applied."""

    def __init__(self, symbols: dict[int, str]) -> None:
        self.symbols = symbols

    def order_row(self, seq: int, ts: int, event: str, o: NewOrder) -> Row:
        return {
            "ts_ns": ts, "time": format_ts(ts), "seq": seq, "event": event, "outcome": "",
            "firm": o.firm, "account": o.account, "session": o.session, "cl_ord_id": o.cl_ord_id,
            "order_id": o.order_id, "ref": o.ref or "", "instrument": self.symbols.get(o.locate, str(o.locate)),
            "side": "B" if o.side == 0 else "S" if o.side == 1 else str(o.side),
            "ord_type": _ORD_TYPES.get(o.ord_type, str(o.ord_type)), "tif": _TIFS.get(o.tif, str(o.tif)),
            "price": _px(o.price), "stop_price": _px(o.stop_price), "qty": o.qty, "exec_qty": "",
            "exec_price": "", "match": "", "leaves": o.leaves, "filled": o.filled, "role": "",
            "prev_ref": "",
        }

    def command_row(self, seq: int, ts: int, event: str, c: Command) -> Row:
        if isinstance(c, NewOrder):
            row = self.order_row(seq, ts, event, c)
            row["ref"] = ""
            row["leaves"] = row["filled"] = ""
            return row
        row = {k: "" for k in COLUMNS}
        row.update({"ts_ns": ts, "time": format_ts(ts), "seq": seq, "event": event})
        if not isinstance(c, (CancelOrder, ReplaceOrder, MassCancel)):  # an admin command
            row["outcome"] = repr(c)
            if isinstance(c, (Halt, Resume, Close)):
                row["instrument"] = self.symbols.get(c.locate, "ALL" if c.locate == 0 else str(c.locate))
            return row
        row.update({"firm": c.firm, "session": c.session, "cl_ord_id": c.cl_ord_id})
        if isinstance(c, (CancelOrder, ReplaceOrder)):
            row["order_id"] = c.order_id
        if isinstance(c, ReplaceOrder):
            row.update({"qty": c.qty, "price": _px(c.price), "stop_price": _px(c.stop_price)})
        if isinstance(c, MassCancel):
            row["instrument"] = self.symbols.get(c.locate, "ALL" if c.locate == 0 else str(c.locate))
            row["side"] = "B" if c.side == 0 else "S" if c.side == 1 else "BOTH"
        return row

    def rows(self, seq: int, ts: int, cmd: Command, events: list[Event]) -> Iterator[Row]:
        for ev in events:
            kind = ev[0]
            if kind == Ev.ACCEPTED:
                row = self.order_row(seq, ts, "accepted", ev[1])
                row.update(qty=ev[2], leaves=ev[2], filled=0, outcome="accepted")
                yield row
            elif kind == Ev.REJECTED:
                row = self.command_row(seq, ts, "rejected", ev[1])
                row["outcome"] = f"rejected {ev[2]} {_REJECT_NAMES.get(ev[2], '')}".rstrip()
                yield row
            elif kind == Ev.ADDED:
                row = self.order_row(seq, ts, "added", ev[1])
                row.update(leaves=ev[2], outcome="resting")
                yield row
            elif kind == Ev.EXECUTED:
                _, maker, taker, q, price, match, ml, mf, tl, tf = ev
                for role, o, leaves, filled in (("maker", maker, ml, mf), ("taker", taker, tl, tf)):
                    row = self.order_row(seq, ts, "executed", o)
                    row.update(exec_qty=q, exec_price=_px(price), match=match, leaves=leaves, filled=filled,
                               role=role, outcome="filled" if not leaves else "partially filled")
                    yield row
            elif kind == Ev.CANCELLED:
                _, o, q, leaves, filled, reason, on_book = ev
                row = self.order_row(seq, ts, "cancelled", o)
                row.update(exec_qty=q, leaves=leaves, filled=filled,
                           outcome=f"cancelled {_CANCEL_NAMES.get(reason, reason)}"
                           + ("" if leaves == 0 else " (partly)"))
                yield row
            elif kind == Ev.REPLACED:
                _, old, new, old_leaves, new_leaves, filled, action, command = ev
                row = self.order_row(seq, ts, "replaced", new)
                row.update(leaves=new_leaves, filled=filled, prev_ref=old.ref,
                           outcome=f"replaced {_REPL.get(action, action)}")
                yield row
            elif kind == Ev.STOP_TRIGGERED:
                row = self.order_row(seq, ts, "stop_triggered", ev[1])
                row.update(exec_price=_px(ev[2]), outcome=f"stop triggered at {price_to_text(ev[2])}")
                yield row
            elif kind == Ev.MASS_CANCELLED:
                row = self.command_row(seq, ts, "mass_cancelled", ev[1])
                row["outcome"] = f"mass cancel: {ev[2]} orders"
                yield row
            elif kind == Ev.CROSS_EXECUTED:
                _, buy, sell, q, price, match, bl, bf, sl, sf = ev
                for role, o, leaves, filled in (("buy", buy, bl, bf), ("sell", sell, sl, sf)):
                    row = self.order_row(seq, ts, "auction_executed", o)
                    row.update(exec_qty=q, exec_price=_px(price), match=match, leaves=leaves, filled=filled,
                               role=role, outcome="filled" if not leaves else "partially filled")
                    yield row
            elif kind in (Ev.TRADING_STATE, Ev.UNCROSSED, Ev.LIMIT_STATE):
                row = {k: "" for k in COLUMNS}
                row.update(ts_ns=ts, time=format_ts(ts), seq=seq, instrument=self.symbols.get(ev[1], str(ev[1])))
                if kind == Ev.TRADING_STATE:
                    row.update(event="trading_state", outcome=f"{TRADING_STATE_NAMES[ev[2]]} (cause {ev[3]})")
                elif kind == Ev.UNCROSSED:
                    row.update(event="auction_uncrossed", exec_qty=ev[4], exec_price=_px(ev[3]), match=ev[5] or "",
                               outcome=f"cross type {ev[2]}")
                else:
                    row.update(event="limit_state", outcome=f"{'on' if ev[2] else 'off'} "
                                                            f"{price_to_text(ev[3])}-{price_to_text(ev[4])}")
                yield row
            elif kind == Ev.MARKET_EVENT:
                row = {k: "" for k in COLUMNS}
                row.update(ts_ns=ts, time=format_ts(ts), seq=seq, event="market_event", instrument="ALL",
                           outcome=f"market event {ev[1]}")
                yield row


_GATEWAY_KEYS = ("ts_ns", "reason", "gateway", "command")


def gateway_reject_rows(paths: Iterable[str], symbols: dict[int, str],
                        problems: list[str] | None = None) -> list[Row]:
    """The rows of gateways' rejects.jsonl files, in COLUMNS, sorted by time."""
    out: list[Row] = []
    for path in paths:
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                try:
                    r = jsonio.loads(line)
                    if not isinstance(r, dict) or any(k not in r for k in _GATEWAY_KEYS):
                        raise ValueError("not a reject row")
                    ts = int(r["ts_ns"])
                    reason = int(r["reason"])
                except ValueError as e:
                    if problems is not None:
                        problems.append(f"{path}:{lineno}: {e}: skipped")
                    continue
                row: Row = {k: "" for k in COLUMNS}
                side = r.get("side", "")
                locate = int(r.get("locate") or 0)
                row.update({
                    "ts_ns": ts, "time": format_ts(ts), "event": "rejected",
                    "outcome": " ".join(x for x in ("rejected", str(reason), _REJECT_NAMES.get(reason, ""),
                                                    f"(gateway {r['gateway']})") if x),
                    "firm": r.get("firm", ""), "account": r.get("account", ""), "session": r.get("session", ""),
                    "cl_ord_id": r.get("cl_ord_id", ""), "order_id": r.get("order_id") or "",
                    "instrument": symbols.get(locate, str(locate)) if locate else "",
                    "side": "B" if side == 0 else "S" if side == 1 else "",
                    "ord_type": _ORD_TYPES.get(r.get("ord_type", -1), ""), "tif": _TIFS.get(r.get("tif", -1), ""),
                    "price": _px(int(r.get("price") or 0)), "stop_price": _px(int(r.get("stop_price") or 0)),
                    "qty": r.get("qty") or "",
                })
                out.append(row)
    out.sort(key=lambda row: row["ts_ns"])
    return out


def export(waldir: str, fmt: str, out: IO[str], rejects: Sequence[str] = (),
           problems: list[str] | None = None) -> int:
    """Write the audit rows of a WAL directory (and of gateways' reject files, merged by time);
    returns the number of rows."""
    spec = read_manifest(waldir)
    rows = AuditRows(spec.symbols())
    refused = gateway_reject_rows(rejects, spec.symbols(), problems)
    refused_ts = [int(row["ts_ns"]) for row in refused]
    r_next = 0
    n = 0
    w = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    if fmt == "csv":
        w.writeheader()
    dumps = jsonio.dumps

    def write(row: Row) -> None:
        if fmt == "csv":
            w.writerow(row)
        else:
            out.write(dumps(row))
            out.write("\n")

    def on(seq: int, ts: int, cmd: Command, events: list[Event]) -> bool:
        nonlocal n, r_next
        while r_next < len(refused) and refused_ts[r_next] < ts:   # refused before this command
            write(refused[r_next])
            r_next += 1
            n += 1
        for row in rows.rows(seq, ts, cmd, events):
            write(row)
            n += 1
        return False

    recover_state(waldir, spec, use_snapshots=False, on_command=on)
    for row in refused[r_next:]:
        write(row)
        n += 1
    return n


def cmd_audit_export(args: argparse.Namespace) -> int:
    problems: list[str] = []
    try:
        if args.out and args.out != "-":
            with open(args.out, "w", newline="") as f:
                n = export(args.waldir, args.format, f, args.rejects, problems)
            print(f"{n} rows written to {args.out}", file=sys.stderr)
        else:
            export(args.waldir, args.format, sys.stdout, args.rejects, problems)
    except BrokenPipeError:  # `matchwire audit export ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (WalError, OSError) as e:
        print(f"matchwire audit export: {e}", file=sys.stderr)
        return 2
    for p in problems:
        print(f"matchwire audit export: {p}", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("audit", help="audit tools over a WAL directory")
    asub = p.add_subparsers(dest="audit", metavar="ACTION")
    asub.required = True
    e = asub.add_parser("export", help="every order lifecycle event, as CSV or JSON lines")
    e.add_argument("waldir")
    e.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    e.add_argument("--out", default="-", help="output file (default: standard output)")
    e.add_argument("--rejects", action="append", default=[], metavar="FILE",
                   help="a gateway's rejects.jsonl (repeatable): its refusals merged in by time")
    e.set_defaults(func=cmd_audit_export)
