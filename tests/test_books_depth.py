"""Depth of the subscriber's L3 book: price levels kept sorted, answered best first, the best N.

A random run of Add / Replace / Execute / Cancel / Delete messages against an obviously correct
model (sum the resting orders by price, sort): after every message the book's depth, for every N,
is the model's. And `matchwire bench depth` runs on a small flow (it fails when the books' depth and
a sort per query disagree).
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from feeds import itch
from feeds.books import L3Book
from tools.cli import main as cli
from tools.flowgen import write_flow

LOC = 3


def model_depth(orders: dict[int, tuple[int, int, int]], side: int, n: int | None) -> list[tuple[int, int, int]]:
    levels: dict[int, list[int]] = {}
    for s, price, shares in orders.values():
        if s == side:
            lvl = levels.setdefault(price, [0, 0])
            lvl[0] += shares
            lvl[1] += 1
    prices = sorted(levels, reverse=side == 0)[:n]
    return [(p, levels[p][0], levels[p][1]) for p in prices]


step = st.tuples(st.sampled_from("AAAUEXD"), st.integers(0, 1), st.integers(9_990, 10_010),
                 st.integers(1, 500), st.integers(0, 10**6))


@settings(max_examples=60, deadline=None)
@given(st.lists(step, min_size=1, max_size=120))
def test_depth_is_the_sorted_sum_of_resting_orders(steps: list[tuple[str, int, int, int, int]]) -> None:
    book = L3Book()
    orders: dict[int, tuple[int, int, int]] = {}    # ref -> (side, price, shares)
    next_ref = 1
    for kind, side, price, shares, pick in steps:
        live = sorted(orders)
        if kind == "A" or not live:
            book.apply(itch.encode_add_order(LOC, 0, 0, next_ref, b"BS"[side:side + 1], shares, b"ALPH    ", price))
            orders[next_ref] = (side, price, shares)
            next_ref += 1
            continue
        ref = live[pick % len(live)]
        s, p, left = orders[ref]
        if kind == "U":
            book.apply(itch.encode_order_replace(LOC, 0, 0, ref, next_ref, shares, price))
            del orders[ref]
            orders[next_ref] = (s, price, shares)
            next_ref += 1
        elif kind == "D":
            book.apply(itch.encode_order_delete(LOC, 0, 0, ref))
            del orders[ref]
        else:
            qty = min(left, shares)
            if kind == "E":
                book.apply(itch.encode_order_executed(LOC, 0, 0, ref, qty, pick))
            else:
                book.apply(itch.encode_order_cancel(LOC, 0, 0, ref, qty))
            if qty == left:
                del orders[ref]
            else:
                orders[ref] = (s, p, left - qty)
        for side_ in (0, 1):
            for n in (None, 0, 1, 3, 50):
                assert book.depth(LOC, side_, n) == model_depth(orders, side_, n), (side_, n)
        bid, ask = model_depth(orders, 0, 1), model_depth(orders, 1, 1)
        assert book.best_bid(LOC) == (bid[0] if bid else None)
        assert book.best_ask(LOC) == (ask[0] if ask else None)
    assert book.unknown_refs == 0


def test_bench_depth_runs_and_both_ways_agree(tmp_path: Path) -> None:
    flow = tmp_path / "f"
    write_flow(str(flow), 3000, instruments=2, seed=5, target=300)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli(["bench", "depth", str(flow) + ".bin", "--queries", "2", "--pad-levels", "40"])
    assert rc == 0, out.getvalue()
    result = json.loads(out.getvalue().splitlines()[-1])
    assert result["benchmark"] == "depth" and result["l3_depth_queries"] == 2 * 2 * 2
    assert result["l3_price_levels"] >= 2 * 2 * 40        # the padding went through the book's apply
    assert result["l2_price_levels"] > 0 and result["l3_resting_orders"] > 0
