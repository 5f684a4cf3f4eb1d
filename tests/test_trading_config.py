"""The [trading] configuration: the documented example, the engine rules and day schedules it gives
(times of day in the exchange's time zone to epoch nanoseconds, daylight saving time included), and
errors that name the key."""
from __future__ import annotations

import dataclasses
import datetime
import os
import subprocess
import sys
import time
import tomllib
from typing import Any

import pytest
from test_config import DELETE, _set, doc_example

from appliance import config as C
from appliance.matching.engine import Engine
from appliance.matching.rules import SECOND_NS, InstrumentRules
from appliance.model import TS_CLOSED, TS_CONTINUOUS

UTC = datetime.timezone.utc
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _epoch_ns(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return int(datetime.datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()) * SECOND_NS


def test_the_documented_trading_table() -> None:
    c = C.loads(doc_example())
    t = c.trading
    assert t is not None and t.time_zone == "America/New_York"
    assert t.schedule == ("04:00", "09:25", "09:30", "15:50", "16:00")
    assert (t.limit_state_seconds, t.pause_seconds, t.reopen_call_seconds, t.circuit_breaker_halt_seconds,
            t.noii_interval_ms) == (15, 300, 30, 600, 1000)
    assert [x.name for x in t.tiers] == ["1", "2"]
    assert c.instrument("ALPH").luld_tier == "1" and c.instrument("NEWCO").luld_tier is None
    rules = c.trading_rules("p0")
    assert rules is not None and rules.start_state == TS_CLOSED
    assert rules.instruments == ((1, InstrumentRules(1_500_000, 500, 300, 1000)),)   # NEWCO: no tier
    assert (rules.limit_state_ns, rules.pause_ns, rules.reopen_call_ns, rules.circuit_breaker_halt_ns,
            rules.noii_interval_ns) == (15 * SECOND_NS, 300 * SECOND_NS, 30 * SECOND_NS, 600 * SECOND_NS, SECOND_NS)
    p1 = c.trading_rules("p1")
    assert p1 is not None and p1.instruments == ((7, InstrumentRules(5_123, 1000, 500, 0)),)
    Engine(c.partition_instruments("p0"), c.firm_stp(), rules=rules).check_invariants()
    assert C.loads(C.dumps(c)) == c


def test_schedules_follow_the_exchange_time_zone_and_daylight_saving() -> None:
    c = C.loads(doc_example())
    winter = c.schedule_for(datetime.date(2026, 1, 5))        # EST, UTC-5
    summer = c.schedule_for(datetime.date(2026, 7, 6))        # EDT, UTC-4
    assert winter is not None and summer is not None
    assert winter.times() == (_epoch_ns(2026, 1, 5, 9, 0), _epoch_ns(2026, 1, 5, 14, 25), _epoch_ns(2026, 1, 5, 14, 30),
                              _epoch_ns(2026, 1, 5, 20, 50), _epoch_ns(2026, 1, 5, 21, 0))
    assert summer.open_ns == _epoch_ns(2026, 7, 6, 13, 30)
    assert c.midnight_ns(datetime.date(2026, 1, 5)) == _epoch_ns(2026, 1, 5, 5, 0)
    # the spring-forward day is 23 hours long: the open is still 09:30 local
    assert c.schedule_for(datetime.date(2026, 3, 8)).open_ns == _epoch_ns(2026, 3, 8, 13, 30)  # type: ignore[union-attr]
    assert C.local_time_ns("Europe/Berlin", datetime.date(2026, 1, 5), "09:00:30") == _epoch_ns(2026, 1, 5, 8, 0, 30)
    plain = C.default()
    assert plain.trading is None and plain.trading_rules("p0") is None and plain.schedule_for(datetime.date.today()) is None
    assert plain.midnight_ns(datetime.date(2026, 1, 5)) == _epoch_ns(2026, 1, 5, 5, 0)   # appliance.time_zone


def test_the_midnight_timestamps_count_from_is_the_exchanges_for_feed_and_order_entry_alike() -> None:
    # 02:30 UTC on 6 Jan is still 5 Jan in New York: ITCH and OUCH timestamps count from 05:00 UTC on the 5th.
    c = C.loads(doc_example())
    late = _epoch_ns(2026, 1, 6, 2, 30)
    assert c.trading_day(late) == datetime.date(2026, 1, 5)
    assert c.midnight_of(late) == _epoch_ns(2026, 1, 5, 5, 0)
    assert c.midnight_of(_epoch_ns(2026, 7, 6, 12, 0)) == _epoch_ns(2026, 7, 6, 4, 0)     # EDT
    # Without [trading]: still the exchange's midnight (appliance.time_zone, America/New_York by
    # default), never the host's.
    plain = C.default()
    assert plain.trading is None and plain.appliance.time_zone == "America/New_York"
    assert plain.trading_day(late) == datetime.date(2026, 1, 5)
    assert plain.midnight_of(late) == _epoch_ns(2026, 1, 5, 5, 0)
    tokyo = C.loads(C.dumps(plain).replace('time_zone = "America/New_York"', 'time_zone = "Asia/Tokyo"'))
    assert tokyo.trading_day(late) == datetime.date(2026, 1, 6)
    assert tokyo.midnight_of(late) == _epoch_ns(2026, 1, 5, 15, 0)


def test_the_host_time_zone_does_not_move_the_exchanges_midnight() -> None:
    late = _epoch_ns(2026, 1, 6, 2, 30)
    code = f"from appliance import config as C; c = C.default(); print(c.midnight_of({late}), c.trading_day({late}))"
    outs = set()
    for tz in ("UTC", "Asia/Tokyo", "America/Los_Angeles"):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, TZ=tz), cwd=REPO)
        assert r.returncode == 0, r.stderr
        outs.add(r.stdout)
    assert outs == {f"{_epoch_ns(2026, 1, 5, 5, 0)} 2026-01-05\n"}


def test_the_trading_time_zone_agrees_with_the_appliances() -> None:
    text = C.dumps(C.default())
    older = text.replace('time_zone = "America/New_York"\n', "")       # a config from before the key
    assert C.loads(older + '\n[trading]\ntime_zone = "Europe/Berlin"\n').time_zone == "Europe/Berlin"
    both = text.replace('time_zone = "America/New_York"', 'time_zone = "Europe/Berlin"')
    assert C.loads(both + '\n[trading]\ntime_zone = "Europe/Berlin"\n').time_zone == "Europe/Berlin"
    with pytest.raises(C.ConfigError, match="trading.time_zone"):
        C.loads(both + '\n[trading]\ntime_zone = "UTC"\n')
    with pytest.raises(C.ConfigError, match="appliance.time_zone"):
        C.loads(text.replace('time_zone = "America/New_York"', 'time_zone = "Mars/Olympus"'))


def test_a_gateway_counts_ouch_timestamps_from_the_exchanges_midnight(tmp_path: Any) -> None:
    from appliance.gateway.server import GatewayServer
    from tools.demo import loopback_config
    ny = C.loads(doc_example()).trading
    for trading in (ny, None):
        cfg = dataclasses.replace(loopback_config(str(tmp_path)), trading=trading)
        before = time.time_ns()
        gw = GatewayServer(cfg, cfg.gateways[0].name, str(tmp_path / "state"))
        assert gw.midnight_ns in (cfg.midnight_of(before), cfg.midnight_of(time.time_ns()))
        ouch = [slot.session for slot in gw.slots if slot.kind == "ouch"]
        assert ouch and all(s.midnight_ns == gw.midnight_ns for s in ouch)
        os.close(gw.journal_fd)
        gw.rejects.close()


def test_without_a_schedule_instruments_trade_continuously() -> None:
    doc = tomllib.loads(doc_example())
    for key in C.SCHEDULE_KEYS:
        del doc["trading"][key]
    c = C.from_dict(doc)
    assert c.trading is not None and c.trading.schedule is None
    assert c.trading_rules("p0").start_state == TS_CONTINUOUS  # type: ignore[union-attr]
    assert c.schedule_for(datetime.date(2026, 1, 5)) is None
    assert C.loads(C.dumps(c)) == c


ERRORS: list[tuple[str, Any, str]] = [
    ("trading.time_zone", "Mars/Olympus", "'Mars/Olympus' is not an IANA time zone"),
    ("trading.open", "9:30", "'9:30' is not a time of day HH:MM or HH:MM:SS"),
    ("trading.open", "24:00", "is not a time of day"),
    ("trading.close", DELETE, "missing (a schedule needs all of pre_open, opening_auction, open, closing_auction, close)"),
    ("trading.closing_auction", "09:00", "09:00:00 is before open 09:30:00"),
    ("trading.pause_seconds", 0, "0 is outside 1..86400"),
    ("trading.noii_interval_ms", "1s", "expected an integer, got '1s'"),
    ("trading.tiers[0].band_bps", 10000, "10000 is outside 0..9999"),
    ("trading.tiers[1].name", "1", "tier name '1' is already used by trading.tiers[0].name"),
    ("trading.tiers[0].width", 5, "unknown key (this table takes: "),
    ("trading.holidays", [], "unknown key (this table takes: "),
    ("instruments[0].luld_tier", "9", "unknown tier '9' (not in [[trading.tiers]])"),
]


@pytest.mark.parametrize("path, value, message", ERRORS, ids=[f"{p}={v!r}"[:60] for p, v, _ in ERRORS])
def test_every_trading_error_names_the_key(path: str, value: Any, message: str) -> None:
    doc = tomllib.loads(doc_example())
    _set(path, value)(doc)
    with pytest.raises(C.ConfigError) as info:
        C.from_dict(doc)
    text = str(info.value)
    where = path if not path.startswith("trading.close") or value is not DELETE else "trading.close"
    assert text.startswith(f"{where}: "), text
    assert message in text, text


def test_a_tier_without_the_trading_table_is_an_error() -> None:
    doc = tomllib.loads(doc_example())
    del doc["trading"]
    with pytest.raises(C.ConfigError, match=r"^instruments\[0\].luld_tier: unknown tier '1'"):
        C.from_dict(doc)


def test_post_only_reprice_is_a_per_instrument_key() -> None:
    import re
    plain = C.default()
    sym = plain.instruments[0].symbol
    raw = C.dumps(plain)
    # the instrument's table says reprice (the writer may or may not have written the default)
    block = re.compile(r'(symbol = "%s"\n(?:[^\[\n].*\n)*?)post_only = "reject"\n' % sym)
    if block.search(raw):
        raw = block.sub(r'\1post_only = "reprice"\n', raw, count=1)
    else:
        raw = re.sub(r'(symbol = "%s"\n)' % sym, r'\1post_only = "reprice"\n', raw, count=1)
    c = C.loads(raw)
    assert c.instrument(sym).post_only == "reprice" and C.loads(C.dumps(c)) == c
    part = next(p.name for p in c.partitions if sym in p.instruments)
    rules = c.trading_rules(part)
    assert rules is not None and rules.start_state == TS_CONTINUOUS
    assert dict(rules.instruments)[c.instrument(sym).locate] == InstrumentRules(post_only_reprice=1)
    assert plain.trading_rules(part) is None                      # default: rejected, no rules needed
    with pytest.raises(C.ConfigError, match="post_only"):
        C.loads(raw.replace('post_only = "reprice"', 'post_only = "maybe"'))
