"""The standard benchmark flows (`matchwire flow generate`, tools/flowgen.py): reading them into commands.

FLOW.bin holds 16-byte little-endian records '<BBHIii': kind (0 new GTC limit, 1 cancel,
2 marketable IOC limit), side (0 buy, 1 sell), instrument (0..K-1), order id, price (ticks), qty.
FLOW.json holds what a correct price-time engine must produce (fills, filled_qty, resting_end).
Flow prices are ticks: we run them on instruments whose tick is one price unit.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from appliance.catalogue import CancelOrder, Command, NewOrder
from appliance.model import GTC, IOC, LIMIT, STP_NONE, Instrument
from tools import jsonio

FLOW_RECORD = struct.Struct("<BBHIii")
FLOW_FIRM = 1


def flow_instruments(count: int) -> list[Instrument]:
    """Instruments for a flow of `count` instruments: locate i+1, tick 1, symbol F0000, F0001, ..."""
    return [Instrument(f"F{i:04d}", i + 1, tick=1, round_lot=100) for i in range(count)]


def decode_records(data: bytes | memoryview) -> list[Command]:
    """Decode FLOW.bin records into commands (firm FLOW_FIRM, tick-1 instruments locate i+1)."""
    cmds: list[Command] = []
    append = cmds.append
    for kind, side, ins, oid, price, qty in FLOW_RECORD.iter_unpack(data):
        if kind == 1:
            append(CancelOrder(oid, FLOW_FIRM))
        elif kind == 0 or kind == 2:
            append(NewOrder(oid, ins + 1, side, qty, price, LIMIT, GTC if kind == 0 else IOC, 0, FLOW_FIRM))
        else:
            raise ValueError(f"unknown flow record kind {kind}")
    return cmds


def read_flow_bytes(path: str | Path) -> tuple[bytes, dict[str, Any]]:
    """FLOW.bin's records (checked for size) and FLOW.json's expectations (or {})."""
    p = Path(path)
    data = p.read_bytes()
    if len(data) % FLOW_RECORD.size:
        raise ValueError(f"{p}: size {len(data)} is not a multiple of {FLOW_RECORD.size}-byte records")
    meta_path = p.with_suffix(".json")
    meta: dict[str, Any] = jsonio.loads(meta_path.read_text()) if meta_path.exists() else {}
    return data, meta


def read_flow(path: str | Path) -> tuple[list[Command], dict[str, Any]]:
    """Decode FLOW.bin into commands; return them with FLOW.json's expectations (or {})."""
    data, meta = read_flow_bytes(path)
    return decode_records(data), meta


def flow_instrument_count(cmds: list[Command], meta: dict[str, Any]) -> int:
    if "instruments" in meta:
        return int(meta["instruments"])
    return max((c.locate for c in cmds if isinstance(c, NewOrder)), default=1)


FLOW_FIRM_STP = {FLOW_FIRM: STP_NONE}  # flows have no firms: one firm that may trade with itself
