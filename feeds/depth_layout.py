"""The wire layouts of the L2 and L1 channels' own messages ('d', 'q', 't'), declared as data.

They live apart from feeds/channels.py, whose encoders the compiled build compiles: a layout is read
from its NamedTuple's annotations (feeds/layout.py), and a class compiled by mypyc does not keep
them. feeds.channels re-exports every name here.
"""
from __future__ import annotations

from typing import NamedTuple

from feeds.layout import U16, U32, U48, U64, Char, Msg


class PriceLevelUpdate(NamedTuple):
    """'d' Price Level Update (33): the level's new total; shares 0 = the level left the top N."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    instrument_seq: U32
    side: Char
    price: U32
    shares: U64
    orders: U32
    end_of_update: Char


class BestBidOffer(NamedTuple):
    """'q' Best Bid and Offer (47): price 0, shares 0, orders 0 for an empty side."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    instrument_seq: U32
    bid_price: U32
    bid_shares: U64
    bid_orders: U32
    ask_price: U32
    ask_shares: U64
    ask_orders: U32


class LastTrade(NamedTuple):
    """'t' Last Trade (40): one per execution; volume = shares traded in the instrument so far."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    instrument_seq: U32
    price: U32
    shares: U32
    match_number: U64
    aggressor: Char
    volume: U64


PRICE_LEVEL_UPDATE = Msg(b"d", "Price Level Update", PriceLevelUpdate)
BEST_BID_OFFER = Msg(b"q", "Best Bid and Offer", BestBidOffer)
LAST_TRADE = Msg(b"t", "Last Trade", LastTrade)
