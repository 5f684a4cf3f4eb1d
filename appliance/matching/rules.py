"""Trading rules of an engine: per-instrument price bands, collars and circuit breakers, and the timers.

Immutable configuration, shared by the fast and the reference engine and saved with snapshots and the
WAL manifest (``to_json``/``from_json``). An engine built without rules behaves as before trading
states existed: every instrument trades continuously all day, with no band, collar or breaker.
docs/matching.md ("Trading states", "Safeguards") says what each value does; appliance.config builds
the rules from the configuration file.

All prices are Price(4) integers, all durations integer nanoseconds; widths are basis points of the
reference price (1 bp = 1/10000).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from appliance.model import TRADING_STATES, TS_CONTINUOUS

SECOND_NS = 1_000_000_000
BPS = 10_000
#: How far back a cancel or replace of an ended order is told "too late" (TOO_LATE_*) rather than
#: "unknown" (UNKNOWN_ORDER): the order's last reference is among the latest RECALL_REFS references
#: the engine assigned (docs/matching.md, Cancel). Both engines follow it.
RECALL_REFS = 1 << 16


@dataclasses.dataclass(frozen=True)
class InstrumentRules:
    """One instrument's safeguards. Zero switches a safeguard off."""

    reference_price: int = 0        # the reference at start (0: none until the first auction or trade)
    band_bps: int = 0               # LULD-style price band: reference +- band_bps
    collar_bps: int = 0             # market orders trade as limits at reference +- collar_bps
    circuit_breaker_bps: int = 0    # a trade beyond static reference +- this halts the instrument
    post_only_reprice: int = 0      # a post-only order that would take: 0 rejected, 1 re-priced
                                    # one tick away from the other side's best price

    def __post_init__(self) -> None:
        if self.post_only_reprice not in (0, 1):
            raise ValueError(f"instrument rules: post_only_reprice {self.post_only_reprice!r} must be 0 or 1")
        for name in ("reference_price", "band_bps", "collar_bps", "circuit_breaker_bps"):
            v = getattr(self, name)
            if type(v) is not int or v < 0:
                raise ValueError(f"instrument rules: {name} {v!r} must be a non-negative integer")
        for name in ("band_bps", "collar_bps", "circuit_breaker_bps"):
            if getattr(self, name) >= BPS:
                raise ValueError(f"instrument rules: {name} {getattr(self, name)} must be below {BPS}")

    @property
    def active(self) -> bool:
        """Has the instrument any safeguard (so that it needs a reference price)?"""
        return bool(self.band_bps or self.collar_bps or self.circuit_breaker_bps)


NO_RULES = InstrumentRules()


@dataclasses.dataclass(frozen=True)
class TradingRules:
    """The engine-wide timers and the per-instrument safeguards (by stock locate)."""

    instruments: tuple[tuple[int, InstrumentRules], ...] = ()   # (locate, rules), ascending locate
    start_state: int = TS_CONTINUOUS            # every instrument's state when the engine is built
    limit_state_ns: int = 15 * SECOND_NS        # a limit state that lasts this long becomes a pause
    pause_ns: int = 300 * SECOND_NS             # LULD trading pause, before its reopening auction
    reopen_call_ns: int = 30 * SECOND_NS        # call phase of a reopening auction (0: uncross at once)
    circuit_breaker_halt_ns: int = 300 * SECOND_NS  # circuit breaker halt (0: until an admin Resume)
    noii_interval_ns: int = SECOND_NS           # imbalance messages during auctions (0: none)

    def __post_init__(self) -> None:
        if self.start_state not in TRADING_STATES:
            raise ValueError(f"trading rules: start state {self.start_state} is not a trading state")
        for name in ("limit_state_ns", "pause_ns", "reopen_call_ns", "circuit_breaker_halt_ns",
                     "noii_interval_ns"):
            v = getattr(self, name)
            if type(v) is not int or v < 0:
                raise ValueError(f"trading rules: {name} {v!r} must be a non-negative integer")
        locates = [loc for loc, _ in self.instruments]
        if locates != sorted(set(locates)):
            raise ValueError("trading rules: instruments must be in ascending, distinct stock locate order")

    @classmethod
    def of(cls, instruments: dict[int, InstrumentRules] | None = None, **timers: Any) -> TradingRules:
        return cls(tuple(sorted((instruments or {}).items())), **timers)

    def for_locate(self, locate: int) -> InstrumentRules:
        for loc, r in self.instruments:
            if loc == locate:
                return r
        return NO_RULES

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["instruments"] = [[loc, dataclasses.asdict(r)] for loc, r in self.instruments]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TradingRules:
        d = dict(d)
        ins = tuple((int(loc), InstrumentRules(**{k: int(v) for k, v in r.items()})) for loc, r in d.pop("instruments"))
        return cls(ins, **{k: int(v) for k, v in d.items()})


def band_of(ref: int, bps: int, tick: int) -> tuple[int, int]:
    """(lower, upper) of a band of +- bps around ref, on tick and inside it: the lower rounded up, the
    upper down, the lower at least one tick. ref 0 or bps 0: no band, (0, 0)."""
    if not ref or not bps:
        return 0, 0
    d = ref * bps // BPS
    lo = -(-(ref - d) // tick) * tick
    hi = (ref + d) // tick * tick
    return max(lo, tick), hi
