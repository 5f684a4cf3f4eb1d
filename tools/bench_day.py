"""`matchwire bench day`: a scripted full trading day through the matching engine.

    matchwire bench day [--seed 7] [--orders-per-minute 200] [--date 2026-01-05]

The demo's three instruments (appliance.config.DEFAULT) with safeguards (a 5% price band, a 3%
market-order collar, a 10% circuit breaker) and a schedule in New York time: pre-open from 04:00,
opening auction 09:25, open 09:30, closing auction 15:50, close 16:00. The script, all in sequenced
commands (a ClockTick each simulated second, orders between them):

    pre-open          orders collected, crossing ones too, and market orders
    opening auction   more of the same, imbalance messages every second
    open              the tick at 09:30: the opening uncross
    continuous        a random flow near the touch: limits, cancels, marketable orders, market orders
    halt, reopening   ALPH halted at 12:00 by admin command, resumed at 12:05: a reopening auction
    LULD pause        at 13:00 the offers of ORCA are cancelled and a bid placed at its upper band:
                      limit state, 15 s later a pause, 5 minutes later a reopening auction
    closing auction   orders collected, imbalance messages
    close             the tick at 16:00: the closing uncross, DAY orders expire

It prints, per phase, the commands applied, the engine's events by kind and the L3 ITCH messages
they make by type, then the final state hash: identical on every run (the flow is seeded, the engine
reads no clock). The last line is one JSON object of the same figures; the run time goes to stderr.
"""
from __future__ import annotations

import argparse
import datetime
import random
import sys
import time
from collections import Counter
from typing import Any

from appliance.catalogue import (
    EVENT_NAMES,
    CancelOrder,
    ClockTick,
    Command,
    Ev,
    Event,
    Halt,
    MassCancel,
    NewOrder,
    Resume,
    SetSchedule,
)
from appliance.config import default, local_time_ns
from appliance.matching.engine import Engine
from appliance.matching.rules import SECOND_NS, InstrumentRules, TradingRules
from appliance.model import BUY, DAY, GTC, IOC, LIMIT, MARKET, SELL, TRADING_STATE_NAMES, TS_CLOSED
from feeds.publisher import encode_l3
from tools import jsonio

ZONE = "America/New_York"
SCHEDULE = ("04:00", "09:25", "09:30", "15:50", "16:00")
PHASES = ("pre-open", "opening auction", "open", "continuous", "halt and reopening", "continuous 2", "LULD pause",
          "continuous 3", "closing auction", "close")
FIRMS = (1, 2, 3, 4)


class Day:
    """The scripted day: the engine, the seeded flow, and per-phase counters."""

    def __init__(self, seed: int, per_minute: int, date: datetime.date) -> None:
        cfg = default()
        self.instruments = cfg.partition_instruments("p0")
        refs = {i.locate: i.reference_price or 0 for i in cfg.instruments}
        rules = TradingRules.of(
            {loc: InstrumentRules(ref, band_bps=500, collar_bps=300, circuit_breaker_bps=1000)
             for loc, ref in refs.items()},
            start_state=TS_CLOSED)
        self.engine = Engine(self.instruments, {}, rules=rules)
        self.refs = refs
        self.rng = random.Random(seed)
        self.per_minute = per_minute
        self.date = date
        self.times = [local_time_ns(ZONE, date, t) for t in SCHEDULE]
        self.midnight = local_time_ns(ZONE, date, "00:00")
        self.stocks = [b"        "] * 0x10000
        for ins in self.instruments:
            self.stocks[ins.locate] = ins.stock8
        self.now = self.times[0] - 60 * SECOND_NS
        self.next_id = 1
        self.live: list[tuple[int, int]] = []   # (order id, firm)
        self.phase = PHASES[0]
        self.commands: Counter[str] = Counter()
        self.events: dict[str, Counter[str]] = {p: Counter() for p in PHASES}
        self.itch: dict[str, Counter[str]] = {p: Counter() for p in PHASES}
        self.applied: dict[str, int] = Counter()
        self.seq = 0

    # -- the driver ------------------------------------------------------------------------------
    def apply(self, cmd: Command) -> list[Event]:
        out: list[Event] = []
        self.engine.apply(cmd, out)
        self.seq += 1
        self.applied[self.phase] += 1
        counts = self.events[self.phase]
        for ev in out:
            counts[EVENT_NAMES[ev[0]]] += 1
            if ev[0] == Ev.REJECTED:
                counts[f"CommandRejected {ev[2]}"] += 1
        l3: list[bytes] = []
        encode_l3([(self.seq, self.now, cmd, out)], l3, self.midnight, self.stocks)
        itch = self.itch[self.phase]
        for m in l3:
            itch[chr(m[2])] += 1
        return out

    def run_until(self, t_ns: int, flow: str) -> None:
        """Simulated seconds up to t_ns: a tick each second, the flow's orders in between."""
        rng = self.rng
        while self.now < t_ns:
            self.now += SECOND_NS
            self.apply(ClockTick(self.now))
            n = self.per_minute // 60 + (1 if rng.random() < (self.per_minute % 60) / 60 else 0)
            for _ in range(n):
                self.apply(self.order(flow))

    def order(self, flow: str) -> Command:
        rng = self.rng
        ins = rng.choice(self.instruments)
        book = self.engine.book(ins.locate)
        ref = book.ref_price or self.refs[ins.locate]
        tick = ins.tick
        if flow != "call" and self.live and rng.random() < 0.35:
            oid, firm = self.live.pop(rng.randrange(len(self.live)))
            return CancelOrder(oid, firm)
        side = rng.choice((BUY, SELL))
        firm = rng.choice(FIRMS)
        qty = 100 * rng.randint(1, 10)
        oid = self.next_id
        self.next_id += 1
        r = rng.random()
        if r < 0.04:
            return NewOrder(oid, ins.locate, side, qty, 0, MARKET, DAY, firm=firm)
        if flow == "call":   # around the reference, both sides crossing
            away = rng.randint(-8, 12)
            tif = GTC if r < 0.2 else DAY
        else:                # near the touch; one in ten marketable, immediate-or-cancel
            away = rng.randint(1, 10) if r < 0.9 else -rng.randint(0, 3)
            tif = IOC if r >= 0.9 else (GTC if r < 0.1 else DAY)
        price = ref - away * tick if side == BUY else ref + away * tick
        if tif != IOC:
            self.live.append((oid, firm))
        return NewOrder(oid, ins.locate, side, qty, price, LIMIT, tif, firm=firm)

    def enter(self, phase: str) -> None:
        self.phase = phase

    def script(self) -> None:
        pre_open, opening, open_, closing, close = self.times
        self.apply(ClockTick(self.now))
        self.apply(SetSchedule(*self.times))
        self.enter("pre-open")
        self.run_until(pre_open + 5 * 60 * SECOND_NS, "call")   # a quiet night, then the early orders
        self.now = opening - 10 * 60 * SECOND_NS
        self.run_until(opening - SECOND_NS, "call")
        self.enter("opening auction")
        self.run_until(open_ - SECOND_NS, "call")
        self.enter("open")
        self.run_until(open_, "continuous")
        self.enter("continuous")
        self.run_until(self.at("12:00"), "continuous")
        self.enter("halt and reopening")
        alph = self.instruments[0].locate
        self.apply(Halt(alph))
        self.run_until(self.at("12:05"), "continuous")
        self.apply(Resume(alph))
        self.run_until(self.at("12:06"), "continuous")
        self.enter("continuous 2")
        self.run_until(self.at("13:00"), "continuous")
        self.enter("LULD pause")
        orca = self.instruments[2]
        for firm in FIRMS:
            self.apply(MassCancel(firm, orca.locate, SELL))
        upper = self.engine.book(orca.locate).band_hi
        # a bid at the band, big enough to stay there while the flow sells into it
        self.apply(NewOrder(self.next_id, orca.locate, BUY, 100_000, upper, LIMIT, DAY, firm=1))
        self.next_id += 1
        self.run_until(self.at("13:07"), "continuous")
        self.enter("continuous 3")
        self.run_until(closing - SECOND_NS, "continuous")
        self.enter("closing auction")
        self.run_until(close - SECOND_NS, "call")
        self.enter("close")
        self.now += SECOND_NS
        self.apply(ClockTick(self.now))

    def at(self, hhmm: str) -> int:
        return local_time_ns(ZONE, self.date, hhmm)


def run_day(seed: int, per_minute: int, date: datetime.date) -> dict[str, Any]:
    day = Day(seed, per_minute, date)
    day.script()
    day.engine.check_invariants()
    phases = []
    for p in PHASES:
        phases.append({"phase": p, "commands": day.applied[p], "events": dict(sorted(day.events[p].items())),
                       "itch": dict(sorted(day.itch[p].items()))})
    eng = day.engine
    return {
        "benchmark": "day",
        "seed": seed,
        "orders_per_minute": per_minute,
        "commands": day.seq,
        "phases": phases,
        "final_states": {b.instrument.symbol: TRADING_STATE_NAMES[b.state] for b in eng.book_list},
        "resting_end": eng.resting_count(),
        "traded_qty": eng.traded_qty,
        "matches": eng.next_match - 1,
        "state_hash": eng.state_hash(),
    }


def cmd_day(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    result = run_day(args.seed, args.orders_per_minute, datetime.date.fromisoformat(args.date))
    seconds = time.perf_counter() - t0
    for ph in result["phases"]:
        ev = ph["events"]
        print(f"{ph['phase']:<20} commands {ph['commands']:>7}  accepted {ev.get('OrderAccepted', 0):>6}  "
              f"rejected {ev.get('CommandRejected', 0):>5}  fills {ev.get('OrderExecuted', 0):>5}  "
              f"auction fills {ev.get('CrossExecuted', 0):>5}  cancels {ev.get('OrderCancelled', 0):>6}  "
              f"states {ev.get('TradingStateChanged', 0):>3}  NOII {ev.get('AuctionImbalance', 0):>4}")
        print(f"{'':<20} ITCH " + " ".join(f"{k}:{v}" for k, v in ph["itch"].items()))
    print(f"final states {result['final_states']}  resting {result['resting_end']}  traded {result['traded_qty']}"
          f"  matches {result['matches']}")
    print(f"state hash {result['state_hash']}")
    print(jsonio.dumps(result, sort_keys=True))
    print(f"bench day: {result['commands']} commands in {seconds:.2f} s", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("day", help="a scripted trading day through the engine: per-phase counts, final hash")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--orders-per-minute", type=int, default=200)
    p.add_argument("--date", default="2026-01-05", help="the trading day (its New York schedule)")
    p.set_defaults(func=cmd_day)
