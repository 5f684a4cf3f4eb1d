"""Reason codes, numbered by stage: 1xxx session, 2xxx risk, 3xxx matching, 4xxx admin.

One table, each code with a one-line meaning. Protocol mappings (OUCH reject letters, FIX
OrdRejReason/CxlRejReason, HTTP) are made in one place per protocol from these codes.
Cancel reasons are a separate, small vocabulary carried by OrderCancelled events.
"""
from __future__ import annotations

from typing import Final

# --- reject reasons -----------------------------------------------------------------------------
# 1xxx: session / gateway
SESSION_NOT_LOGGED_IN: Final = 1001
SESSION_MALFORMED: Final = 1002
SESSION_THROTTLED: Final = 1003
SESSION_DUPLICATE_CLIENT_ID: Final = 1004
SESSION_BACK_PRESSURE: Final = 1005

# 2xxx: pre-trade risk
RISK_PRICE_COLLAR: Final = 2001
RISK_MAX_QTY: Final = 2002
RISK_MAX_NOTIONAL: Final = 2003
RISK_POSITION_LIMIT: Final = 2004
RISK_RATE_LIMIT: Final = 2005
RISK_KILL_SWITCH: Final = 2006

# 3xxx: matching engine
UNKNOWN_INSTRUMENT: Final = 3001
PRICE_OFF_TICK: Final = 3002
INVALID_QUANTITY: Final = 3003
INVALID_PRICE: Final = 3004
DUPLICATE_ORDER_ID: Final = 3005
UNKNOWN_ORDER: Final = 3006
REPLACE_BELOW_FILLED: Final = 3007
INVALID_ORDER_TYPE: Final = 3008
INVALID_STOP_PRICE: Final = 3009
INVALID_TIME_IN_FORCE: Final = 3010
INVALID_SIDE: Final = 3011
INVALID_STP_MODE: Final = 3012
REPLACE_NOT_ALLOWED: Final = 3013
INSTRUMENT_CLOSED: Final = 3014
PRICE_OUTSIDE_BAND: Final = 3015
TIF_NOT_ALLOWED_IN_STATE: Final = 3016
# "Too late": the order existed and has ended (FIX CxlRejReason 0), unlike UNKNOWN_ORDER (1).
TOO_LATE_FILLED: Final = 3017
TOO_LATE_CANCELLED: Final = 3018
TOO_LATE_EXPIRED: Final = 3019
POST_ONLY_WOULD_TAKE: Final = 3020

# 4xxx: admin
ADMIN_UNKNOWN_COMMAND: Final = 4001
ADMIN_CLOCK_BACKWARDS: Final = 4002
ADMIN_INVALID_TRANSITION: Final = 4003
ADMIN_INVALID_SCHEDULE: Final = 4004

REJECT_REASONS: Final[dict[int, str]] = {
    SESSION_NOT_LOGGED_IN: "session is not logged in",
    SESSION_MALFORMED: "malformed message",
    SESSION_THROTTLED: "session is throttled",
    SESSION_DUPLICATE_CLIENT_ID: "client order id already used in this session",
    SESSION_BACK_PRESSURE: "the partition is busy: ring full, order not taken",
    RISK_PRICE_COLLAR: "price outside the collar around the reference price",
    RISK_MAX_QTY: "order quantity above the maximum",
    RISK_MAX_NOTIONAL: "order notional above the maximum",
    RISK_POSITION_LIMIT: "the order could breach the firm's position limit",
    RISK_RATE_LIMIT: "the firm's order rate limit is exceeded",
    RISK_KILL_SWITCH: "the firm's kill switch is on",
    UNKNOWN_INSTRUMENT: "unknown instrument (stock locate)",
    PRICE_OFF_TICK: "price is not a multiple of the instrument's tick",
    INVALID_QUANTITY: "quantity must be a positive integer that fits in 32 bits",
    INVALID_PRICE: "limit price must be positive and fit Price(4) u32",
    DUPLICATE_ORDER_ID: "an order with this order id is live",
    UNKNOWN_ORDER: "no order with this id for this firm (never entered, or ended too long ago to recall)",
    REPLACE_BELOW_FILLED: "replace quantity at or below the quantity already filled",
    INVALID_ORDER_TYPE: "unknown order type, or fields that do not fit the order type",
    INVALID_STOP_PRICE: "stop price must be positive, on tick, and given only for stop orders",
    INVALID_TIME_IN_FORCE: "unknown time in force",
    INVALID_SIDE: "side must be buy or sell",
    INVALID_STP_MODE: "unknown self-trade prevention mode",
    REPLACE_NOT_ALLOWED: "this order cannot be replaced so (e.g. a market order, or a change of type)",
    INSTRUMENT_CLOSED: "the instrument is closed: no new orders or replaces until it reopens",
    PRICE_OUTSIDE_BAND: "limit price through the price band (a buy above the upper, a sell below the lower)",
    TIF_NOT_ALLOWED_IN_STATE: "IOC and FOK orders are accepted only in continuous trading",
    TOO_LATE_FILLED: "too late: the order has filled",
    TOO_LATE_CANCELLED: "too late: the order was cancelled",
    TOO_LATE_EXPIRED: "too late: the order expired",
    POST_ONLY_WOULD_TAKE: "post-only order would take liquidity (its price crosses the other side)",
    ADMIN_UNKNOWN_COMMAND: "unknown admin command",
    ADMIN_CLOCK_BACKWARDS: "clock tick earlier than the engine's clock",
    ADMIN_INVALID_TRANSITION: "the instrument's trading state does not allow this admin command",
    ADMIN_INVALID_SCHEDULE: "schedule times must be all zero or positive and non-decreasing",
}

# --- cancel reasons (OrderCancelled.reason) ------------------------------------------------------
CANCEL_USER: Final = 1
CANCEL_IOC_REMAINDER: Final = 2
CANCEL_FOK: Final = 3
CANCEL_MARKET_NO_LIQUIDITY: Final = 4
CANCEL_STP: Final = 5
CANCEL_EXPIRED: Final = 6
CANCEL_MASS: Final = 7
CANCEL_KILL_SWITCH: Final = 8
CANCEL_MARKET_COLLAR: Final = 9
CANCEL_OUTSIDE_BAND: Final = 10

CANCEL_REASONS: Final[dict[int, str]] = {
    CANCEL_USER: "cancelled by the user",
    CANCEL_IOC_REMAINDER: "immediate-or-cancel remainder",
    CANCEL_FOK: "fill-or-kill could not fill completely",
    CANCEL_MARKET_NO_LIQUIDITY: "market order remainder: no more liquidity",
    CANCEL_STP: "self-trade prevention",
    CANCEL_EXPIRED: "expired (end of its time in force)",
    CANCEL_MASS: "mass cancel",
    CANCEL_KILL_SWITCH: "the firm's kill switch",
    CANCEL_MARKET_COLLAR: "market order remainder: nothing more within its collar",
    CANCEL_OUTSIDE_BAND: "limit price through the price band after the band moved",
}


def describe(code: int) -> str:
    """One line for a reject reason code: "3002 price is not a multiple of ..."."""
    return f"{code} {REJECT_REASONS.get(code, 'unknown reason')}"
