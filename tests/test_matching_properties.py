"""Differential tests: random command sequences through the fast and the reference engine.

After every command both engines must have emitted the same events (normalized), left the orders
those events name with the same field values, and reached the same state hash; both must pass their
own check_invariants(). Commands are drawn so that things happen: a few firms with every STP mode,
prices in a narrow band around the touch, order ids from a small pool (so cancels and replaces hit
live, filled and cancelled orders, and new orders sometimes reuse a live id), and now and then a
field outside its valid range.

The last test replays a standard benchmark flow (`matchwire flow generate`) through both engines and
checks the totals that the flow generator computed with its own book.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.catalogue import (
    MASS_ANY_INSTRUMENT,
    MASS_ANY_SIDE,
    CancelOrder,
    Ev,
    Event,
    MassCancel,
    NewOrder,
    ReplaceOrder,
)
from appliance.matching.engine import Engine
from appliance.matching.reference import ReferenceEngine
from appliance.model import (
    BUY,
    DAY,
    FOK,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    MAX_PRICE,
    MAX_QTY,
    SELL,
    STOP,
    STOP_LIMIT,
    STP_CN,
    STP_CO,
    STP_DC,
    STP_DEFAULT,
    STP_NONE,
    Instrument,
)
from tools.flowgen import write_flow
from tools.flows import FLOW_FIRM_STP, flow_instrument_count, flow_instruments, read_flow

Spec = tuple[str, tuple[Any, ...]]

# Instrument 1 trades in steps of 100 around 10000, instrument 2 in steps of 1 around 10000.
AAA = Instrument("AAA", 1, tick=100)
BBB = Instrument("BBB", 2, tick=1)
BANDS = {1: [10000 + 100 * k for k in range(-3, 4)], 2: [10000 + k for k in range(-3, 4)]}
ALL_PRICES = sorted(set(BANDS[1]) | set(BANDS[2]))
FIRMS = (1, 2, 3, 4)
FIRM_STP = {2: STP_CO, 3: STP_DC, 4: STP_NONE}  # firm 1: the engine default
ORDER_IDS = st.integers(1, 16)
BAD_TIFS = (-1, 2, 5)
ORDER_FIELDS = ("order_id", "locate", "side", "ord_type", "tif", "stp", "price", "stop_price", "qty",
                "firm", "session", "account", "cl_ord_id", "mpid", "ref", "leaves", "filled")


def _spec(cmd: Any) -> Spec:
    return cmd.NAME, tuple(getattr(cmd, name) for name, _ in cmd.FIELDS)


def _pick(draw: st.DrawFn, valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any], one_in: int) -> Any:
    """A draw from `valid`, and about once in `one_in` draws one from `invalid`."""
    ok = draw(st.integers(0, one_in - 1)) != one_in - 1
    return draw(valid if ok else invalid)


def _owner(oid: int) -> int:
    return FIRMS[oid % len(FIRMS)]


def _firm(draw: st.DrawFn, oid: int) -> int:
    """Mostly the firm that owns the id (so cancels and replaces find their order), now and then another."""
    return _pick(draw, st.just(_owner(oid)), st.sampled_from(FIRMS), 8)


def _new_order(draw: st.DrawFn, locates: tuple[int, ...]) -> Spec:
    oid = draw(ORDER_IDS)
    locate = _pick(draw, st.sampled_from(locates), st.sampled_from((0, 3)), 60)
    band = BANDS.get(locate, BANDS[1])
    side = _pick(draw, st.sampled_from((BUY, SELL)), st.just(2), 80)
    ord_type = _pick(draw, st.sampled_from((LIMIT,) * 5 + (MARKET, STOP, STOP, STOP_LIMIT, STOP_LIMIT)),
                     st.sampled_from((0, 5)), 80)
    tif = _pick(draw, st.sampled_from((DAY, DAY, GTC, GTC, IOC, FOK)), st.sampled_from(BAD_TIFS), 80)
    stp = _pick(draw, st.sampled_from((STP_DEFAULT,) * 6 + (STP_NONE, STP_CN, STP_CO, STP_DC)),
                st.sampled_from((-1, 5)), 80)
    good_price = st.sampled_from(band)
    bad_price = st.sampled_from((0, -100, 10050, 10001, 1 << 32))
    if ord_type in (LIMIT, STOP_LIMIT):
        price = _pick(draw, good_price, bad_price, 40)
    else:
        price = _pick(draw, st.just(0), good_price, 60)
    if ord_type in (STOP, STOP_LIMIT):
        stop_price = _pick(draw, good_price, bad_price, 40)
    else:
        stop_price = _pick(draw, st.just(0), good_price, 60)
    qty = _pick(draw, st.integers(1, 8).map(lambda n: 10 * n), st.sampled_from((0, -10, 1, MAX_QTY, MAX_QTY + 1)), 40)
    firm = _firm(draw, oid)
    cl = draw(st.sampled_from(("", "", "a", "b")))
    post_only = _pick(draw, st.sampled_from((0, 0, 0, 1)), st.sampled_from((2, 255)), 80)
    return _spec(NewOrder(oid, locate, side, qty, price, ord_type, tif, stop_price, firm, 0, "", cl, "", stp,
                          post_only))


def _target(draw: st.DrawFn) -> tuple[int, int]:
    """(order id, firm) of a cancel or replace. Mostly a marker, -k, for "the id of the k-th latest new
    order before this command", with firm 0 for "the owner of that id"; `sessions` resolves both."""
    if draw(st.integers(0, 5)) == 5:
        oid = draw(ORDER_IDS)
        return oid, _firm(draw, oid)
    return -draw(st.integers(1, 6)), _pick(draw, st.just(0), st.sampled_from(FIRMS), 8)


def _cancel(draw: st.DrawFn) -> Spec:
    oid, firm = _target(draw)
    return _spec(CancelOrder(oid, firm))


def _replace(draw: st.DrawFn) -> Spec:
    """A replace; its qty and price may be "same" or "down" (from the order's NewOrder), see `_resolve`."""
    oid, firm = _target(draw)
    qty = _pick(draw, st.sampled_from(("same", "down", "down") + tuple(range(10, 110, 10))),
                st.sampled_from((0, -10, MAX_QTY + 1)), 30)
    price = _pick(draw, st.sampled_from(("same", "same") + tuple(ALL_PRICES)),
                  st.sampled_from((0, 0, -100, 10050, 1 << 32)), 5)
    stop_price = _pick(draw, st.just(0), st.sampled_from(ALL_PRICES + [-100, 10050]), 4)
    cl = draw(st.sampled_from(("", "", "r")))
    # A spec, not an object: qty and price may still be the "same"/"down" markers (which the compiled
    # build's typed constructor would refuse); FIELDS order.
    return ReplaceOrder.NAME, (oid, firm, 0, qty, price, stop_price, cl)


def _resolve(specs: list[Spec]) -> list[Spec]:
    """Replace the (-k, 0) markers of cancels and replaces by real order ids and firms, and a
    replace's "same"/"down" quantity and "same" price by the values of the id's latest NewOrder."""
    recent: list[int] = []
    latest: dict[int, tuple[Any, ...]] = {}
    out: list[Spec] = []
    for name, values in specs:
        if name == "NewOrder":
            recent.append(values[0])
            latest[values[0]] = values
        elif name in ("CancelOrder", "ReplaceOrder") and values[0] < 0:
            k = -values[0]
            oid = recent[-k] if len(recent) >= k else 1
            firm = values[1] or _owner(oid)
            values = (oid, firm) + values[2:]
        if name == "ReplaceOrder":
            order_id, firm, session, qty, price, stop_price, cl = values
            new = latest.get(order_id, (0,) * 14)
            if qty in ("same", "down"):
                qty = max(new[8], 1) - (10 if qty == "down" else 0)
            if price == "same":
                price = new[6]
            values = (order_id, firm, session, qty, price, stop_price, cl)
        out.append((name, values))
    return out


def _mass_cancel(draw: st.DrawFn, locates: tuple[int, ...]) -> Spec:
    firm = draw(st.sampled_from(FIRMS))
    locate = draw(st.sampled_from((MASS_ANY_INSTRUMENT,) + locates))
    side = draw(st.sampled_from((MASS_ANY_SIDE, BUY, SELL)))
    return _spec(MassCancel(firm, locate, side))


KINDS = ("new",) * 12 + ("cancel",) * 3 + ("replace",) * 4 + ("mass",)


@st.composite
def commands(draw: st.DrawFn, locates: tuple[int, ...]) -> Spec:
    kind = draw(st.sampled_from(KINDS))
    if kind == "new":
        return _new_order(draw, locates)
    if kind == "cancel":
        return _cancel(draw)
    if kind == "replace":
        return _replace(draw)
    return _mass_cancel(draw, locates)


@st.composite
def sessions(draw: st.DrawFn, max_size: int = 60) -> tuple[tuple[Instrument, ...], int, list[Spec]]:
    """(instruments, engine default STP mode, commands).

    The commands are drawn as a list of short lists: Hypothesis keeps lists short on average, and
    this shape gives sequences of ~25 commands (up to `max_size`) that still shrink command by command.
    """
    instruments = draw(st.sampled_from(((AAA,), (AAA, BBB), (BBB,))))
    default_stp = draw(st.sampled_from((STP_CN, STP_CO, STP_DC, STP_NONE)))
    cmd = commands(tuple(i.locate for i in instruments))
    chunks = draw(st.lists(st.lists(cmd, min_size=1, max_size=12), min_size=1, max_size=10))
    return instruments, default_stp, _resolve([spec for chunk in chunks for spec in chunk][:max_size])


# ==================================================================================================
# Running both engines
# ==================================================================================================
def _order_details(events: list[Event]) -> list[tuple[Any, ...]]:
    """Every field of every order object the events carry, as it is now."""
    return [
        tuple(getattr(v, f) for f in ORDER_FIELDS)
        for ev in events for v in ev[1:] if isinstance(v, NewOrder)
    ]


def run_both(kit: Any, instruments: tuple[Instrument, ...], default_stp: int, specs: list[Spec],
             firm_stp: dict[int, int] = FIRM_STP, rules: Any = None) -> tuple[Engine, ReferenceEngine]:
    fast = Engine(instruments, firm_stp, default_stp, rules)
    ref = ReferenceEngine(instruments, firm_stp, default_stp, rules)
    for i, spec in enumerate(specs):
        out_fast: list[Event] = []
        out_ref: list[Event] = []
        fast.apply(kit.build(spec), out_fast)
        ref.apply(kit.build(spec), out_ref)
        where = f"command {i}: {spec}"
        assert [kit.normalize(e) for e in out_fast] == [kit.normalize(e) for e in out_ref], where
        assert _order_details(out_fast) == _order_details(out_ref), where
        fast.check_invariants()
        ref.check_invariants()
        assert fast.state_hash() == ref.state_hash(), where
        assert fast.resting_count() == ref.resting_count(), where
    return fast, ref


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(session=sessions())
def test_engines_agree_on_random_sessions(session: tuple[Any, int, list[Spec]], kit: Any) -> None:
    instruments, default_stp, specs = session
    run_both(kit, instruments, default_stp, specs)


# -- validation at the edges ------------------------------------------------------------------------
EDGE_PRICES = (-100, -1, 0, 1, 100, 10001, 10050, (1 << 30) - 24, (1 << 30) + 76, MAX_PRICE - 95, MAX_PRICE,
               MAX_PRICE + 1, MAX_PRICE + 5, 1 << 40)
EDGE_QTYS = (-1, 0, 1, (1 << 30) - 1, 1 << 30, MAX_QTY - 1, MAX_QTY, MAX_QTY + 1, 1 << 40)


@st.composite
def edge_commands(draw: st.DrawFn) -> Spec:
    """Commands valid but for, now and then, a field at or just beyond an edge of the validation table."""
    def field(typical: tuple[int, ...], edge: tuple[int, ...]) -> int:
        return _pick(draw, st.sampled_from(typical), st.sampled_from(edge), 6)

    oid = draw(st.integers(1, 6))
    firm = field((_owner(oid),), (0, 2, 0xFFFF_FFFF))
    locate = field((1, 2), (0, 3, 0xFFFF, 0x10000, -1))
    ord_type = field((LIMIT, LIMIT, MARKET, STOP, STOP_LIMIT), (-1, 0, 5))
    priced = ord_type in (LIMIT, STOP_LIMIT)
    stopped = ord_type in (STOP, STOP_LIMIT)
    band = tuple(BANDS.get(locate, BANDS[1])[2:5])
    price = field(band if priced else (0,), EDGE_PRICES)
    stop_price = field(band if stopped else (0,), EDGE_PRICES)
    qty = field((10, 50, 100), EDGE_QTYS)
    kind = draw(st.sampled_from(("new",) * 4 + ("cancel", "replace")))
    if kind == "cancel":
        return _spec(CancelOrder(oid, firm))
    if kind == "replace":
        return _spec(ReplaceOrder(oid, qty, price, firm, 0, stop_price))
    side = field((BUY, SELL), (-1, 2, 255))
    tif = field((DAY, GTC, IOC, FOK), (-1, 2, 5, 255))
    stp = field((STP_DEFAULT, STP_NONE, STP_CN, STP_CO, STP_DC), (-1, 5, 255))
    post_only = field((0, 1), (2, 255))
    return _spec(NewOrder(oid, locate, side, qty, price, ord_type, tif, stop_price, firm, stp=stp,
                          post_only=post_only))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(edge_commands(), min_size=1, max_size=20))
def test_engines_agree_at_the_edges_of_validation(specs: list[Spec], kit: Any) -> None:
    setup = [_spec(NewOrder(i, 1, i % 2, 50, 9900 + 100 * (i % 2) * 2, firm=_owner(i))) for i in (1, 2, 3, 4)]
    run_both(kit, (AAA, BBB), STP_CN, setup + specs)


@st.composite
def limit_only_sessions(draw: st.DrawFn) -> list[Spec]:
    """Valid limit orders, cancels and in-place or repriced replaces: the common flow, longer runs."""
    specs: list[Spec] = []
    for _ in range(draw(st.integers(0, 120))):
        oid = draw(st.integers(1, 40))
        kind = draw(st.integers(0, 9))
        firm = FIRMS[oid % len(FIRMS)]
        if kind < 6:
            side = draw(st.sampled_from((BUY, SELL)))
            tif = draw(st.sampled_from((DAY, GTC, GTC, IOC)))
            specs.append(_spec(NewOrder(oid, 1, side, 10 * draw(st.integers(1, 6)), draw(st.sampled_from(BANDS[1])),
                                        LIMIT, tif, 0, firm)))
        elif kind < 8:
            specs.append(_spec(CancelOrder(oid, firm)))
        else:
            specs.append(_spec(ReplaceOrder(oid, 10 * draw(st.integers(1, 6)), draw(st.sampled_from(BANDS[1])), firm)))
    return specs


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=limit_only_sessions())
def test_engines_agree_on_limit_order_flow(specs: list[Spec], kit: Any) -> None:
    run_both(kit, (AAA,), STP_NONE, specs, firm_stp={})


def _long_session(seed: int, n: int, locates: tuple[int, ...]) -> list[Spec]:
    """A seeded sequence of `n` mostly valid commands on three prices per instrument and side, with
    many cancels of live ids: deep levels, dead entries in level queues (compaction), long stop
    cascades. Plain `random`, so it does not shrink; it complements the short Hypothesis sessions."""
    rng = random.Random(seed)
    ids = iter(range(1, 10 * n))
    live: list[int] = []
    specs: list[Spec] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.55 or not live:
            oid = next(ids) if rng.random() < 0.97 or not live else rng.choice(live)
            locate = rng.choice(locates)
            mid = 10000
            step = 100 if locate == 1 else 1
            side = rng.choice((BUY, SELL))
            # mostly passive prices (bids below 10000, asks above), one in ten through the touch
            away = rng.choice((1, 1, 2, 3)) if rng.random() < 0.9 else -rng.choice((1, 2, 3))
            price = mid - step * away if side == BUY else mid + step * away
            kind = rng.choices((LIMIT, MARKET, STOP, STOP_LIMIT), (80, 4, 8, 8))[0]
            tif = rng.choices((DAY, GTC, IOC, FOK), (45, 40, 10, 5))[0]
            stop = mid + step * rng.choice((-2, -1, 0, 1, 2)) if kind in (STOP, STOP_LIMIT) else 0
            if kind in (MARKET, STOP):
                price = 0
            stp = rng.choices((STP_DEFAULT, STP_NONE, STP_CN, STP_CO, STP_DC), (80, 5, 5, 5, 5))[0]
            specs.append(_spec(NewOrder(oid, locate, side, 10 * rng.randint(1, 10), price, kind, tif, stop,
                                        _owner(oid), stp=stp)))
            live.append(oid)
        elif r < 0.85:
            oid = live.pop(rng.randrange(len(live)))
            specs.append(_spec(CancelOrder(oid, _owner(oid))))
        elif r < 0.99:
            oid = rng.choice(live)
            step = 100 if rng.random() < 0.5 else 1
            specs.append(_spec(ReplaceOrder(oid, 10 * rng.randint(1, 12), 10000 + step * rng.randint(-2, 2),
                                            _owner(oid))))
        else:
            specs.append(_spec(MassCancel(rng.choice(FIRMS))))
        if len(live) > 300:
            del live[:100]
    return specs


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_engines_agree_on_long_sessions(seed: int, kit: Any) -> None:
    run_both(kit, (AAA, BBB), (STP_CN, STP_CO, STP_DC)[seed % 3], _long_session(seed, 2500, (1, 2)))


def test_engines_agree_when_a_level_is_mostly_cancelled(kit: Any) -> None:
    """Level queues keep cancelled orders until they reach the head or the level is compacted."""
    specs = [_spec(NewOrder(i, 1, SELL, 10, 10000, firm=1)) for i in range(1, 61)]
    specs += [_spec(CancelOrder(i, 1)) for i in range(1, 60, 2)]          # every other one
    specs += [_spec(ReplaceOrder(i, 5, 10000, 1)) for i in range(2, 30, 2)]  # in place
    specs += [_spec(CancelOrder(i, 1)) for i in range(30, 58, 2)]
    specs += [_spec(NewOrder(100 + i, 1, BUY, 15, 10000, firm=2, tif=IOC)) for i in range(8)]
    specs += [_spec(NewOrder(200, 1, BUY, 1000, 10000, firm=2))]
    run_both(kit, (AAA,), STP_CN, specs)


# ==================================================================================================
# A standard benchmark flow
# ==================================================================================================
FLOW_EVENTS = 20_000


@pytest.fixture(scope="module")
def flow_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("flow") / "f"
    write_flow(str(out), FLOW_EVENTS, seed=7, target=300)
    return out.with_suffix(".bin")


def test_flow_through_both_engines(flow_path: Path, kit: Any) -> None:
    cmds, meta = read_flow(flow_path)
    cmds = cmds[:FLOW_EVENTS]
    specs = [_spec(c) for c in cmds]
    instruments = flow_instruments(flow_instrument_count(cmds, meta))
    fast = Engine(instruments, FLOW_FIRM_STP)
    ref = ReferenceEngine(instruments, FLOW_FIRM_STP)
    fills = filled_qty = 0
    for i, spec in enumerate(specs):
        out_fast: list[Event] = []
        out_ref: list[Event] = []
        fast.apply(kit.build(spec), out_fast)
        ref.apply(kit.build(spec), out_ref)
        assert [kit.normalize(e) for e in out_fast] == [kit.normalize(e) for e in out_ref], f"command {i}: {spec}"
        for ev in out_fast:
            if ev[0] == Ev.EXECUTED:
                fills += 1
                filled_qty += ev[3]
        if i % 2000 == 0:
            fast.check_invariants()
            ref.check_invariants()
            assert fast.state_hash() == ref.state_hash(), f"command {i}"
    fast.check_invariants()
    ref.check_invariants()
    assert fast.state_hash() == ref.state_hash()
    assert meta["events"] == len(specs)
    assert (fills, filled_qty) == (meta["fills"], meta["filled_qty"])
    assert fast.resting_count() == ref.resting_count() == meta["resting_end"]
    book = fast.book(1)
    assert [book.best_bid(), book.best_ask()] == meta["bbo_end_instr0"]
    assert [len(book.depth(BUY)), len(book.depth(SELL))] == meta["levels_end_instr0"]
