"""The appliance's one configuration file: TOML, read with tomllib, checked into typed dataclasses.

``load(path)`` / ``loads(text)`` return a frozen ``Config`` or raise ``ConfigError`` whose message
starts with the path of the offending key, e.g. ``partitions[0].cpu: expected an integer, got 'x'``.
Every table is closed: a key the loader does not know is an error naming it. docs/config.md is the
reference (every key, its type, default and meaning); ``DEFAULT`` below is the demo's config:
loopback everything, TTL 0, multicast groups in 239.192.0.0/16.

Conventions:
- Money (prices, ticks, notional) is decimal text in dollars, ``"150.25"`` (an integer means whole
  dollars). It is converted once, here, to integer Price(4) units (model.price_from_text); a TOML
  float is refused (binary floats are not exact), and so is an off-tick reference price.
- Times carry their unit in the key name (``interval_ms``, ``snapshot_every_seconds``).
- A configuration that works but is dangerous loads with an entry in ``Config.warnings``, which
  the daemon prints before anything else: durability ``none``, multicast TTL above 0, a sender
  interface or a listener bound beyond loopback.

This module reads no clock and opens no socket; ``dumps(config)`` writes a config back as TOML
(``loads(dumps(c)) == c``).
"""
from __future__ import annotations

import calendar
import dataclasses
import datetime
import ipaddress
import re
import tomllib
import zoneinfo
from typing import Any, Final, Iterable

from appliance.idle import BACKOFF, IDLE_STRATEGIES
from appliance.model import (
    STP_CN,
    STP_CO,
    STP_DC,
    STP_NONE,
    Instrument,
    price_from_text,
    price_to_text,
)
from appliance.catalogue import SetSchedule
from appliance.matching.rules import SECOND_NS, InstrumentRules, TradingRules
from appliance.model import TS_CLOSED, TS_CONTINUOUS
from appliance.ring import DIRECTIONS, ring_name
from appliance.risk import FirmLimits, RiskLimits

DURABILITY: Final = ("batch", "interval", "none")          # appliance.wal.POLICIES
CHANNELS: Final = ("l3", "l2", "l1")                       # feeds.channels.CHANNELS
NETWORK_TRANSPORTS: Final = ("udp", "sendmmsg", "afxdp")   # feeds.channels.NETWORK_TRANSPORTS
AFXDP_MODES: Final = ("auto", "copy", "zerocopy")           # feeds.channels.AFXDP_MODES
STP_BY_NAME: Final = {"none": STP_NONE, "CN": STP_CN, "CO": STP_CO, "DC": STP_DC}
STP_NAME: Final = {v: k for k, v in STP_BY_NAME.items()}
# ITCH 5.0 Stock Directory market category.
TIERS: Final = ("Q", "G", "S", "N", "A", "P", "Z", "V", " ")
# ITCH 5.0 Stock Directory LULD Reference Price Tier of an instrument with a [[trading.tiers]].
LULD_REF_PRICE_TIERS: Final = ("1", "2")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_MULTICAST = ipaddress.IPv4Network("224.0.0.0/4")


class ConfigError(ValueError):
    """A configuration that cannot be used. The message starts with the key's path."""


# ================================================================================================
# The schema, as typed dataclasses
# ================================================================================================
@dataclasses.dataclass(frozen=True)
class ApplianceConfig:
    name: str = "matchwire"             # ring name prefix, process titles
    ring_slots: int = 16384             # slots per ring (power of two)
    ring_slot_size: int = 128           # bytes per slot (multiple of 8; a record is one slot)
    time_zone: str = "America/New_York"  # IANA zone of the exchange: its midnight and trading day


@dataclasses.dataclass(frozen=True)
class InstrumentConfig:
    symbol: str
    locate: int
    tick: int                           # Price(4) units
    round_lot: int
    reference_price: int | None         # Price(4) units; None: no reference until the first trade
    tier: str                           # ITCH market category
    luld_tier: str | None = None        # [[trading.tiers]] name: price band, collar, breaker; None: none
    post_only: str = "reject"           # a post-only order that would take: "reject" or "reprice"

    def instrument(self) -> Instrument:
        return Instrument(self.symbol, self.locate, self.tick, self.round_lot)


@dataclasses.dataclass(frozen=True)
class TierConfig:
    """The safeguards of an instrument tier (basis points of the reference price; 0: none)."""

    name: str
    band_bps: int = 0
    market_collar_bps: int = 0
    circuit_breaker_bps: int = 0
    luld_ref_price_tier: str = "2"      # ITCH Stock Directory byte: "1" Tier 1, "2" Tier 2 NMS stocks


SCHEDULE_KEYS: Final = ("pre_open", "opening_auction", "open", "closing_auction", "close")


@dataclasses.dataclass(frozen=True)
class TradingConfig:
    """Trading states: the day's schedule in the exchange's time zone, timers, instrument tiers."""

    time_zone: str = "America/New_York"  # IANA zone of the schedule and of the feed's midnight
    schedule: tuple[str, ...] | None = None  # "HH:MM[:SS]" per SCHEDULE_KEYS; None: no schedule
    noii_interval_ms: int = 1000
    limit_state_seconds: int = 15
    pause_seconds: int = 300
    reopen_call_seconds: int = 30
    circuit_breaker_halt_seconds: int = 300
    tiers: tuple[TierConfig, ...] = ()

    def tier(self, name: str) -> TierConfig:
        for t in self.tiers:
            if t.name == name:
                return t
        raise KeyError(name)


@dataclasses.dataclass(frozen=True)
class FeedChannelConfig:
    a_group: str
    a_port: int
    b_group: str
    b_port: int
    transport: str | None = None        # udp | sendmmsg | afxdp; None: market_data.transport


@dataclasses.dataclass(frozen=True)
class PartitionConfig:
    name: str
    id: int                             # 0..99: part of the feed session names
    instruments: tuple[str, ...]        # symbols
    cpu: int                            # -1: the last CPU of the affinity mask
    wal_dir: str
    snapshot_dir: str
    durability: str                     # batch | interval | none
    interval_ms: int
    snapshot_every_events: int          # 0: never by count
    snapshot_every_seconds: int         # 0: never by time
    idle: str                           # busy_spin | yield | backoff
    default_stp: int                    # model.STP_*: for firms without their own mode
    feeds: dict[str, FeedChannelConfig]  # channel (l3, l2, l1) -> groups; l3 always present
    feed_stage: str = "inline"          # inline | process: publishing in the matcher or its own process
    wal_stage: str = "inline"           # inline | process: the WAL write + fsync in the matcher or its own
    stage_idle: str = "backoff"         # the stage processes' idle strategy (spin only on cores of their own)
    stage_cpu: int = -1                 # the stage processes' CPU; -1: the first allowed one not the matcher's

    def __hash__(self) -> int:
        return hash((self.name, self.id))


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    name: str
    bind: str
    ouch_port: int
    fix_port: int
    fix_comp_id: str                    # our CompID (the firms' TargetCompID)
    firms: tuple[str, ...]              # firm names admitted here


@dataclasses.dataclass(frozen=True)
class MarketDataConfig:
    interface: str = "127.0.0.1"        # IP_MULTICAST_IF of every sender
    ttl: int = 0                        # IP_MULTICAST_TTL: 0 never leaves the host
    dscp: int = 0                       # IP_TOS = dscp << 2 (46: EF)
    max_payload: int = 1472             # MoldUDP64 datagram payload limit
    l2_depth: int = 10                  # L2 price levels per side
    transport: str = "udp"              # every channel's unless it names its own: udp | sendmmsg | afxdp
    source_port: int = 29999            # UDP source port of AF_XDP frames (and of pcaps)
    afxdp_mode: str = "auto"            # auto (zero-copy, else copy) | copy | zerocopy
    afxdp_required: bool = False        # no AF_XDP: refuse to start instead of falling back to udp
    afxdp_queue: int = 0                # interface queue of the AF_XDP socket
    source_port_a: int = 0              # UDP source port of every A sender (0: ephemeral)
    source_port_b: int = 0              # UDP source port of every B sender (0: ephemeral)


@dataclasses.dataclass(frozen=True)
class RetransmitConfig:
    bind: str = "127.0.0.1"
    rerequest_port: int = 31001         # MoldUDP64 re-request, UDP
    replay_port: int = 31002            # SoupBinTCP replay, TCP
    snapshot_port: int = 31003          # snapshot server, TCP
    username: str = "mdata"             # SoupBinTCP login of the replay and snapshot servers
    password: str = "mdata"
    max_request_messages: int = 4096    # re-request: larger counts are clipped to this
    max_request_bytes: int = 16384      # re-request: message bytes answered per request, at most
    quota_per_second: int = 100_000     # re-request: messages answered per client (0: no limit)
    quota_per_minute: int = 2_000_000
    quota_per_day: int = 100_000_000
    retain_messages: int = 0            # serve only the last N messages of a session (0: all)
    max_sessions: int = 64              # concurrent SoupBinTCP sessions per server
    send_buffer_bytes: int = 4 << 20    # per client; full for slow_client_ms: dropped
    slow_client_ms: int = 5000
    snapshot_wait_ms: int = 5000        # a snapshot login waits this long for a fresh book
    rerequest_transport: str = "udp"    # re-request answers: udp (sendto each) | sendmmsg (one call each)


@dataclasses.dataclass(frozen=True)
class OuchCredentials:
    username: str                       # SoupBinTCP: up to 6 characters
    password: str                       # SoupBinTCP: up to 10 characters
    cancel_on_disconnect: bool = True   # the port cancels its live orders when its connection ends


@dataclasses.dataclass(frozen=True)
class FixCredentials:
    sender_comp_id: str
    password: str


@dataclasses.dataclass(frozen=True)
class FirmConfig:
    name: str
    id: int
    stp: int                            # model.STP_*
    ouch: OuchCredentials
    fix: FixCredentials
    limits: FirmLimits


@dataclasses.dataclass(frozen=True)
class AdminConfig:
    bind: str = "127.0.0.1"
    port: int = 8080
    token: str = ""                     # bearer token; empty: admin disabled


@dataclasses.dataclass(frozen=True)
class SessionLimits:
    """What one client may make a gateway hold or do (docs/operations.md, "Session budgets")."""

    max_queued_bytes: int = 4 << 20        # outbound bytes waiting for a connection; beyond: disconnect
    messages_per_second: int = 2000        # every inbound message, of every kind: a token bucket ...
    burst: int = 4000                      # ... this deep (default 2 x the rate); beyond: throttled
    throttled_before_disconnect: int = 200  # throttled messages in one second; beyond: disconnect
    login_timeout_ms: int = 10_000         # a connection must log in within this
    connections_per_second: int = 20       # new connections per source address: a token bucket ...
    connection_burst: int = 40             # ... this deep (default 2 x the rate); beyond: closed at once
    listen_backlog: int = 128              # the order-entry listeners' accept queue


@dataclasses.dataclass(frozen=True)
class Config:
    appliance: ApplianceConfig
    instruments: tuple[InstrumentConfig, ...]
    partitions: tuple[PartitionConfig, ...]
    gateways: tuple[GatewayConfig, ...]
    market_data: MarketDataConfig
    retransmit: RetransmitConfig
    firms: tuple[FirmConfig, ...]
    admin: AdminConfig
    warnings: tuple[str, ...] = ()      # loud: printed before anything else by whoever loads it
    trading: TradingConfig | None = None  # None: continuous trading all day, no safeguard
    session_limits: SessionLimits = SessionLimits()

    # -- derived views ------------------------------------------------------------------------------
    def instrument(self, symbol: str) -> InstrumentConfig:
        for ins in self.instruments:
            if ins.symbol == symbol:
                return ins
        raise KeyError(symbol)

    def partition(self, name: str) -> PartitionConfig:
        for p in self.partitions:
            if p.name == name:
                return p
        raise KeyError(name)

    def partition_instruments(self, partition: str) -> list[Instrument]:
        """The engine's instruments of one partition."""
        return [self.instrument(s).instrument() for s in self.partition(partition).instruments]

    def stock_directory(self, partition: str) -> dict[int, tuple[bytes, bytes]]:
        """stock locate -> (Market Category, LULD Reference Price Tier) of the partition's Stock
        Directory messages: `instruments[].tier`, and the `luld_ref_price_tier` of the instrument's
        [[trading.tiers]] (" ": none)."""
        out: dict[int, tuple[bytes, bytes]] = {}
        for symbol in self.partition(partition).instruments:
            ins = self.instrument(symbol)
            luld = " "
            if ins.luld_tier is not None and self.trading is not None:
                luld = self.trading.tier(ins.luld_tier).luld_ref_price_tier
            out[ins.locate] = (ins.tier.encode("ascii"), luld.encode("ascii"))
        return out

    def firm_stp(self) -> dict[int, int]:
        """firm id -> STP mode, for Engine(firm_stp=...)."""
        return {f.id: f.stp for f in self.firms}

    def risk_limits(self, gateway: str | None = None) -> RiskLimits:
        """The RiskChecker configuration: the firms of one gateway (all: None), reference prices."""
        names = None
        if gateway is not None:
            names = set(next(g for g in self.gateways if g.name == gateway).firms)
        return RiskLimits(
            {f.id: f.limits for f in self.firms if names is None or f.name in names},
            {i.locate: i.reference_price for i in self.instruments if i.reference_price is not None},
        )

    def trading_rules(self, partition: str) -> TradingRules | None:
        """The matching engine's trading rules for one partition (Engine(rules=...)); None without
        [trading] and without an instrument that re-prices post-only orders. Instruments start
        closed when there is a schedule, else trading continuously."""
        t = self.trading
        rules: dict[int, InstrumentRules] = {}
        for symbol in self.partition(partition).instruments:
            ins = self.instrument(symbol)
            reprice = 1 if ins.post_only == "reprice" else 0
            if t is not None and ins.luld_tier is not None:
                tier = t.tier(ins.luld_tier)
                rules[ins.locate] = InstrumentRules(ins.reference_price or 0, tier.band_bps,
                                                    tier.market_collar_bps, tier.circuit_breaker_bps,
                                                    reprice)
            elif reprice:
                rules[ins.locate] = InstrumentRules(post_only_reprice=1)
        if t is None:
            return TradingRules.of(rules) if rules else None
        return TradingRules.of(
            rules,
            start_state=TS_CLOSED if t.schedule else TS_CONTINUOUS,
            limit_state_ns=t.limit_state_seconds * SECOND_NS,
            pause_ns=t.pause_seconds * SECOND_NS,
            reopen_call_ns=t.reopen_call_seconds * SECOND_NS,
            circuit_breaker_halt_ns=t.circuit_breaker_halt_seconds * SECOND_NS,
            noii_interval_ns=t.noii_interval_ms * 1_000_000,
        )

    def schedule_for(self, day: datetime.date) -> SetSchedule | None:
        """The SetSchedule command of one trading day: the configured times of day in the exchange's
        time zone as epoch nanoseconds (daylight saving time included). None: no schedule."""
        t = self.trading
        if t is None or t.schedule is None:
            return None
        return SetSchedule(*(local_time_ns(t.time_zone, day, hhmmss) for hhmmss in t.schedule))

    @property
    def time_zone(self) -> str:
        """The exchange's IANA time zone: appliance.time_zone (a [trading] section's own
        time_zone, which the loader makes agree with it, wins where a caller built them apart)."""
        return self.trading.time_zone if self.trading is not None else self.appliance.time_zone

    def trading_day(self, ts_ns: int) -> datetime.date:
        """The exchange's calendar day of ts_ns, in its time zone (never the host's)."""
        return datetime.datetime.fromtimestamp(ts_ns // 1_000_000_000, zoneinfo.ZoneInfo(self.time_zone)).date()

    def midnight_of(self, ts_ns: int) -> int:
        """The epoch nanoseconds of the midnight that starts ts_ns's day in the exchange's time zone,
        from which ITCH and OUCH timestamps count, with or without a [trading] section. The
        partitions and the gateways both use it, so that their timestamps agree."""
        return self.midnight_ns(self.trading_day(ts_ns))

    def midnight_ns(self, day: datetime.date) -> int:
        """The epoch nanoseconds of the day's midnight in the exchange's time zone (ITCH timestamps
        count from it)."""
        return local_time_ns(self.time_zone, day, "00:00")

    def ring_names(self, partition: str, gateway: str) -> dict[str, str]:
        """direction (cmd, evt) -> the ring name between one gateway and one partition."""
        return {d: ring_name(self.appliance.name, partition, gateway, d) for d in DIRECTIONS}


# ================================================================================================
# Reading: a closed table with typed accessors whose errors name the key
# ================================================================================================
_KEY_PATHS: set[str] = set()   # every key path the loader knows, indexes as [] (docs test)


def key_paths() -> frozenset[str]:
    """Every key path the loader has read so far ("partitions[].feeds.l3.a_group", ...)."""
    return frozenset(_KEY_PATHS)


def _describe(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, float):
        return f"float {v!r}"
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return "an array"
    return f"{type(v).__name__} {v!r}"


class _Table:
    """One TOML table being read. Accessors record the keys they read; ``done()`` refuses the rest."""

    def __init__(self, path: str, data: Any, schema: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a table, got {_describe(data)}")
        self.path = path
        self.schema = schema
        self.data: dict[str, Any] = data
        self.read: list[str] = []

    def key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _get(self, key: str, required: bool) -> Any:
        self.read.append(key)
        _KEY_PATHS.add(f"{self.schema}.{key}" if self.schema else key)
        if key not in self.data:
            if required:
                raise ConfigError(f"{self.key(key)}: missing (a required key)")
            return None
        return self.data[key]

    def integer(self, key: str, default: int | None = None, lo: int | None = None, hi: int | None = None) -> int:
        v = self._get(key, default is None)
        if v is None:
            assert default is not None
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{self.key(key)}: expected an integer, got {_describe(v)}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ConfigError(f"{self.key(key)}: {v} is outside {_range(lo, hi)}")
        return v

    def opt_int(self, key: str, lo: int = 0, hi: int | None = None) -> int | None:
        v = self._get(key, False)
        if v is None:
            return None
        self.read.pop()
        return self.integer(key, 0, lo, hi)

    def text(self, key: str, default: str | None = None, choices: Iterable[str] | None = None,
            pattern: re.Pattern[str] | None = None, max_len: int | None = None) -> str:
        v = self._get(key, default is None)
        if v is None:
            assert default is not None
            return default
        if not isinstance(v, str):
            raise ConfigError(f"{self.key(key)}: expected a string, got {_describe(v)}")
        if choices is not None:
            options = tuple(choices)
            if v not in options:
                raise ConfigError(f"{self.key(key)}: {v!r} is not one of {', '.join(repr(c) for c in options)}")
        if pattern is not None and not pattern.match(v):
            raise ConfigError(f"{self.key(key)}: {v!r} must be 1-32 characters of A-Z a-z 0-9 _ -")
        if max_len is not None and not 1 <= len(v) <= max_len:
            raise ConfigError(f"{self.key(key)}: {v!r} must be 1 to {max_len} characters")
        return v

    def opt_text(self, key: str, choices: Iterable[str] | None = None) -> str | None:
        if self._get(key, False) is None:
            return None
        self.read.pop()
        return self.text(key, "", choices)

    def boolean(self, key: str, default: bool) -> bool:
        v = self._get(key, False)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise ConfigError(f"{self.key(key)}: expected true or false, got {_describe(v)}")
        return v

    def money(self, key: str, tick: int = 1, required: bool = False) -> int | None:
        """Decimal text in dollars (or an integer of whole dollars) -> Price(4) units."""
        v = self._get(key, required)
        if v is None:
            return None
        if isinstance(v, bool) or isinstance(v, float) or not isinstance(v, (str, int)):
            hint = f" (write it as text: \"{v!r}\")" if isinstance(v, float) else ""
            raise ConfigError(f"{self.key(key)}: expected decimal text such as \"150.25\", got {_describe(v)}{hint}")
        try:
            units = price_from_text(str(v), tick)
        except ValueError as exc:
            raise ConfigError(f"{self.key(key)}: {exc}") from None
        if units <= 0:
            raise ConfigError(f"{self.key(key)}: {v!r} must be positive")
        return units

    def address(self, key: str, default: str | None = None, multicast: bool = False) -> str:
        v = self.text(key, default)
        try:
            addr = ipaddress.IPv4Address(v)
        except ValueError:
            raise ConfigError(f"{self.key(key)}: {v!r} is not an IPv4 address") from None
        if multicast and addr not in _MULTICAST:
            raise ConfigError(f"{self.key(key)}: {v!r} is not a multicast group (224.0.0.0/4)")
        return v

    def port(self, key: str, default: int | None = None) -> int:
        return self.integer(key, default, 1, 65535)

    def str_list(self, key: str, default: tuple[str, ...] | None = None) -> tuple[str, ...]:
        v = self._get(key, default is None)
        if v is None:
            assert default is not None
            return default
        if not isinstance(v, list):
            raise ConfigError(f"{self.key(key)}: expected an array of strings, got {_describe(v)}")
        for i, item in enumerate(v):
            if not isinstance(item, str):
                raise ConfigError(f"{self.key(key)}[{i}]: expected a string, got {_describe(item)}")
        return tuple(v)

    def table(self, key: str, required: bool = False) -> _Table | None:
        v = self._get(key, required)
        if v is None:
            return None
        return _Table(self.key(key), v, f"{self.schema}.{key}" if self.schema else key)

    def tables(self, key: str) -> list[_Table]:
        """An array of tables ([[key]]); absent: empty."""
        v = self._get(key, False)
        if v is None:
            return []
        if not isinstance(v, list):
            raise ConfigError(f"{self.key(key)}: expected an array of tables ([[{key}]]), got {_describe(v)}")
        schema = f"{self.schema}.{key}[]" if self.schema else f"{key}[]"
        return [_Table(f"{self.key(key)}[{i}]", item, schema) for i, item in enumerate(v)]

    def done(self) -> None:
        """Refuse keys nobody read."""
        for k in self.data:
            if k not in self.read:
                known = ", ".join(sorted(set(self.read)))
                raise ConfigError(f"{self.key(k)}: unknown key (this table takes: {known})")


_TIME_OF_DAY = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])(?::([0-5][0-9]))?$")


def _time_of_day(text: str) -> datetime.time:
    m = _TIME_OF_DAY.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a time of day HH:MM or HH:MM:SS")
    return datetime.time(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def local_time_ns(time_zone: str, day: datetime.date, hhmmss: str) -> int:
    """Epoch nanoseconds of a time of day ("HH:MM[:SS]") on a date in an IANA time zone, in integers
    (a time that daylight saving skips or repeats: its first occurrence)."""
    local = datetime.datetime.combine(day, _time_of_day(hhmmss), tzinfo=zoneinfo.ZoneInfo(time_zone))
    return calendar.timegm(local.utctimetuple()) * 1_000_000_000


def _range(lo: int | None, hi: int | None) -> str:
    if hi is None:
        return f">= {lo}"
    if lo is None:
        return f"<= {hi}"
    return f"{lo}..{hi}"


def _unique(items: Iterable[tuple[str, Any]], what: str, why: str = "") -> None:
    """Raise on the first repeated value: items are (key path, value)."""
    seen: dict[Any, str] = {}
    for path, value in items:
        if value in seen:
            raise ConfigError(f"{path}: {what} {value!r} is already used by {seen[value]}{why}")
        seen[value] = path


def _is_loopback(addr: str) -> bool:
    return ipaddress.IPv4Address(addr).is_loopback


# ================================================================================================
# Loading
# ================================================================================================
def load(path: str) -> Config:
    """Read and check a config file."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 ({exc})") from None
    return loads(text, source=path)


def loads(text: str, source: str = "<config>") -> Config:
    """Parse and check config text."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: TOML syntax: {exc}") from None
    return from_dict(doc)


def from_dict(doc: dict[str, Any]) -> Config:
    """Check a parsed TOML document (a dict) and build the Config."""
    top = _Table("", doc, "")
    warnings: list[str] = []
    appliance = _appliance(top.table("appliance"))
    instruments = tuple(_instrument(t) for t in top.tables("instruments"))
    if not instruments:
        raise ConfigError("instruments: at least one [[instruments]] table is required")
    _unique(((f"instruments[{i}].symbol", x.symbol) for i, x in enumerate(instruments)), "symbol")
    _unique(((f"instruments[{i}].locate", x.locate) for i, x in enumerate(instruments)), "locate")
    symbols = {x.symbol for x in instruments}

    partitions = tuple(_partition(t, symbols, warnings) for t in top.tables("partitions"))
    if not partitions:
        raise ConfigError("partitions: at least one [[partitions]] table is required")
    _unique(((f"partitions[{i}].name", p.name) for i, p in enumerate(partitions)), "partition name")
    _unique(((f"partitions[{i}].id", p.id) for i, p in enumerate(partitions)), "partition id")
    _unique(((f"partitions[{i}].wal_dir", p.wal_dir) for i, p in enumerate(partitions)), "WAL directory")
    _unique(((f"partitions[{i}].instruments[{j}]", s) for i, p in enumerate(partitions)
             for j, s in enumerate(p.instruments)), "instrument")
    assigned = {s for p in partitions for s in p.instruments}
    for i, ins in enumerate(instruments):
        if ins.symbol not in assigned:
            raise ConfigError(f"instruments[{i}].symbol: {ins.symbol!r} is in no partition's instruments")
    _unique(((f"partitions[{i}].feeds.{ch}.{ab}_group", (getattr(f, ab + "_group"), getattr(f, ab + "_port")))
             for i, p in enumerate(partitions) for ch, f in p.feeds.items() for ab in ("a", "b")),
            "multicast group and port")

    market_data = _market_data(top.table("market_data"), warnings)
    retransmit = _retransmit(top.table("retransmit"), warnings)

    firms = tuple(_firm(t) for t in top.tables("firms"))
    _unique(((f"firms[{i}].name", f.name) for i, f in enumerate(firms)), "firm name")
    _unique(((f"firms[{i}].id", f.id) for i, f in enumerate(firms)), "firm id")
    _unique(((f"firms[{i}].ouch.username", f.ouch.username) for i, f in enumerate(firms)), "OUCH username")
    _unique(((f"firms[{i}].fix.sender_comp_id", f.fix.sender_comp_id) for i, f in enumerate(firms)),
            "FIX SenderCompID")
    firm_names = tuple(f.name for f in firms)

    gateway_tables = top.tables("gateways")
    if not gateway_tables:
        raise ConfigError("gateways: at least one [[gateways]] table is required")
    gateways = tuple(_gateway(t, firm_names, len(gateway_tables), warnings) for t in gateway_tables)
    _unique(((f"gateways[{i}].name", g.name) for i, g in enumerate(gateways)), "gateway name")
    _unique(((f"gateways[{i}].firms[{j}]", f) for i, g in enumerate(gateways) for j, f in enumerate(g.firms)),
            "firm", " (a firm trades through one gateway, whose risk checker sees all its orders)")
    on_a_gateway = {f for g in gateways for f in g.firms}
    for i, f in enumerate(firms):
        if f.name not in on_a_gateway:
            raise ConfigError(f"firms[{i}].name: firm {f.name!r} is on no gateway's firms")

    admin = _admin(top.table("admin"), warnings)
    session_limits = _session_limits(top.table("session_limits"))
    trading = _trading(top.table("trading"), appliance, "time_zone" in (top.data.get("appliance") or {}))
    for i, ins in enumerate(instruments):
        if ins.luld_tier is not None and (trading is None or ins.luld_tier not in {t.name for t in trading.tiers}):
            raise ConfigError(f"instruments[{i}].luld_tier: unknown tier {ins.luld_tier!r} (not in [[trading.tiers]])")
    top.done()

    tcp: list[tuple[str, int]] = []
    for i, g in enumerate(gateways):
        tcp += [(f"gateways[{i}].ouch_port", g.ouch_port), (f"gateways[{i}].fix_port", g.fix_port)]
    tcp += [("retransmit.replay_port", retransmit.replay_port), ("retransmit.snapshot_port", retransmit.snapshot_port),
            ("admin.port", admin.port)]
    _unique(tcp, "TCP port")
    return Config(appliance, instruments, partitions, gateways, market_data, retransmit, firms, admin,
                  tuple(warnings), trading, session_limits)


def _appliance(t: _Table | None) -> ApplianceConfig:
    if t is None:
        return ApplianceConfig()
    d = ApplianceConfig()
    c = ApplianceConfig(
        name=t.text("name", d.name, pattern=_NAME),
        ring_slots=t.integer("ring_slots", d.ring_slots, 2, 1 << 24),
        ring_slot_size=t.integer("ring_slot_size", d.ring_slot_size, 16, 65536),
        time_zone=_time_zone(t, d.time_zone),
    )
    if c.ring_slots & (c.ring_slots - 1):
        raise ConfigError(f"{t.key('ring_slots')}: {c.ring_slots} is not a power of two")
    if c.ring_slot_size % 8:
        raise ConfigError(f"{t.key('ring_slot_size')}: {c.ring_slot_size} is not a multiple of 8")
    t.done()
    return c


def _instrument(t: _Table) -> InstrumentConfig:
    symbol = t.text("symbol")
    locate = t.integer("locate", None, 1, 0xFFFF)
    tick = t.money("tick") or 100
    round_lot = t.integer("round_lot", 100, 1)
    ref = t.money("reference_price", tick)
    tier = t.text("tier", "Q", choices=TIERS)
    luld_tier = t.text("luld_tier", "") or None
    post_only = t.text("post_only", "reject", choices=("reject", "reprice"))
    t.done()
    try:
        Instrument(symbol, locate, tick, round_lot)
    except ValueError as exc:
        raise ConfigError(f"{t.key('symbol')}: {exc}") from None
    return InstrumentConfig(symbol, locate, tick, round_lot, ref, tier, luld_tier, post_only)


def _time_zone(t: _Table, default: str) -> str:
    zone = t.text("time_zone", default)
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{t.key('time_zone')}: {zone!r} is not an IANA time zone (such as 'America/New_York')") from None
    return zone


def _trading(t: _Table | None, appliance: ApplianceConfig, zone_given: bool) -> TradingConfig | None:
    """[trading]; its time_zone (kept for older configs) defaults to appliance.time_zone and, when
    both are written, must name the same zone."""
    if t is None:
        return None
    d = TradingConfig()
    zone = _time_zone(t, appliance.time_zone)
    if zone_given and "time_zone" in t.data and zone != appliance.time_zone:
        raise ConfigError(f"{t.key('time_zone')}: {zone!r} is not appliance.time_zone "
                          f"{appliance.time_zone!r} (one exchange, one time zone: write it once)")
    times = [t.text(k, "") for k in SCHEDULE_KEYS]
    schedule: tuple[str, ...] | None = None
    if any(times):
        parsed = []
        for key, text in zip(SCHEDULE_KEYS, times):
            if not text:
                raise ConfigError(f"{t.key(key)}: missing (a schedule needs all of {', '.join(SCHEDULE_KEYS)})")
            try:
                parsed.append(_time_of_day(text))
            except ValueError as exc:
                raise ConfigError(f"{t.key(key)}: {exc}") from None
        for (k1, a), (k2, b) in zip(zip(SCHEDULE_KEYS, parsed), zip(SCHEDULE_KEYS[1:], parsed[1:])):
            if b < a:
                raise ConfigError(f"{t.key(k2)}: {b} is before {k1} {a}")
        schedule = tuple(times)
    c = TradingConfig(
        time_zone=zone,
        schedule=schedule,
        noii_interval_ms=t.integer("noii_interval_ms", d.noii_interval_ms, 0, 3_600_000),
        limit_state_seconds=t.integer("limit_state_seconds", d.limit_state_seconds, 1, 3600),
        pause_seconds=t.integer("pause_seconds", d.pause_seconds, 1, 86_400),
        reopen_call_seconds=t.integer("reopen_call_seconds", d.reopen_call_seconds, 0, 86_400),
        circuit_breaker_halt_seconds=t.integer("circuit_breaker_halt_seconds", d.circuit_breaker_halt_seconds, 0,
                                               86_400),
        tiers=tuple(_tier(x) for x in t.tables("tiers")),
    )
    _unique(((f"{t.key('tiers')}[{i}].name", x.name) for i, x in enumerate(c.tiers)), "tier name")
    t.done()
    return c


def _tier(t: _Table) -> TierConfig:
    name = t.text("name", max_len=8)
    c = TierConfig(
        name=name,
        band_bps=t.integer("band_bps", 0, 0, 9999),
        market_collar_bps=t.integer("market_collar_bps", 0, 0, 9999),
        circuit_breaker_bps=t.integer("circuit_breaker_bps", 0, 0, 9999),
        luld_ref_price_tier=t.text("luld_ref_price_tier", "1" if name == "1" else "2",
                                   choices=LULD_REF_PRICE_TIERS),
    )
    t.done()
    return c


def _partition(t: _Table, symbols: set[str], warnings: list[str]) -> PartitionConfig:
    name = t.text("name", pattern=_NAME)
    pid = t.integer("id", None, 0, 99)
    instruments = t.str_list("instruments")
    if not instruments:
        raise ConfigError(f"{t.key('instruments')}: a partition needs at least one instrument")
    for j, s in enumerate(instruments):
        if s not in symbols:
            raise ConfigError(f"{t.key('instruments')}[{j}]: unknown instrument {s!r} (not in [[instruments]])")
    cpu = t.integer("cpu", -1, -1, 1023)
    wal_dir = t.text("wal_dir")
    snapshot_dir = t.text("snapshot_dir", wal_dir.rstrip("/") + "/snapshots")
    durability = t.text("durability", "batch", choices=DURABILITY)
    interval_ms = t.integer("interval_ms", 2, 1, 60_000)
    every_events = t.integer("snapshot_every_events", 1_000_000, 0)
    every_seconds = t.integer("snapshot_every_seconds", 300, 0)
    idle = t.text("idle", BACKOFF, choices=IDLE_STRATEGIES)
    feed_stage = t.text("feed_stage", "inline", choices=("inline", "process"))
    wal_stage = t.text("wal_stage", "inline", choices=("inline", "process"))
    if wal_stage == "process" and feed_stage != "process":
        raise ConfigError(f"{t.key('wal_stage')}: 'process' needs feed_stage = 'process' too (matching runs "
                          "ahead of durability, so publishing must replay the released commands itself)")
    stage_cpu = t.integer("stage_cpu", -1, -1, 1023)
    stage_idle = t.text("stage_idle", BACKOFF, choices=IDLE_STRATEGIES)
    stp = STP_BY_NAME[t.text("default_stp", "CN", choices=STP_BY_NAME)]
    ft = t.table("feeds", required=True)
    assert ft is not None
    feeds: dict[str, FeedChannelConfig] = {}
    for ch in CHANNELS:
        ct = ft.table(ch, required=ch == "l3")
        if ct is not None:
            feeds[ch] = _channel(ct)
    ft.done()
    t.done()
    if durability == "none":
        warnings.append(
            f"{t.key('durability')} = 'none': partition {name} never fsyncs its WAL; acknowledged orders "
            "and trades can be lost in a crash. Development only."
        )
    return PartitionConfig(name, pid, instruments, cpu, wal_dir, snapshot_dir, durability, interval_ms,
                           every_events, every_seconds, idle, stp, feeds, feed_stage, wal_stage, stage_idle, stage_cpu)


def _channel(t: _Table) -> FeedChannelConfig:
    c = FeedChannelConfig(
        a_group=t.address("a_group", multicast=True),
        a_port=t.port("a_port"),
        b_group=t.address("b_group", multicast=True),
        b_port=t.port("b_port"),
        transport=t.opt_text("transport", choices=NETWORK_TRANSPORTS),
    )
    t.done()
    if (c.a_group, c.a_port) == (c.b_group, c.b_port):
        raise ConfigError(f"{t.key('b_group')}: B must differ from A ({c.a_group}:{c.a_port})")
    return c


def _market_data(t: _Table | None, warnings: list[str]) -> MarketDataConfig:
    d = MarketDataConfig()
    if t is None:
        return d
    c = MarketDataConfig(
        interface=t.address("interface", d.interface),
        ttl=t.integer("ttl", d.ttl, 0, 255),
        dscp=t.integer("dscp", d.dscp, 0, 63),
        max_payload=t.integer("max_payload", d.max_payload, 64, 65507),
        l2_depth=t.integer("l2_depth", d.l2_depth, 1, 1000),
        transport=t.text("transport", d.transport, choices=NETWORK_TRANSPORTS),
        source_port=t.port("source_port", d.source_port),
        afxdp_mode=t.text("afxdp_mode", d.afxdp_mode, choices=AFXDP_MODES),
        afxdp_required=t.boolean("afxdp_required", d.afxdp_required),
        afxdp_queue=t.integer("afxdp_queue", d.afxdp_queue, 0, 4095),
        source_port_a=t.integer("source_port_a", d.source_port_a, 0, 65535),
        source_port_b=t.integer("source_port_b", d.source_port_b, 0, 65535),
    )
    t.done()
    if c.source_port_a and c.source_port_a == c.source_port_b:
        raise ConfigError(f"{t.key('source_port_b')}: the A and B senders need different source ports "
                          f"(both {c.source_port_a}), so that a filter tells them apart")
    if c.ttl > 0:
        warnings.append(f"{t.key('ttl')} = {c.ttl}: market data multicast can leave this host")
    if not _is_loopback(c.interface):
        warnings.append(f"{t.key('interface')} = {c.interface!r}: market data is sent beyond loopback")
    return c


def _retransmit(t: _Table | None, warnings: list[str]) -> RetransmitConfig:
    d = RetransmitConfig()
    if t is None:
        return d
    c = RetransmitConfig(
        bind=t.address("bind", d.bind),
        rerequest_port=t.port("rerequest_port", d.rerequest_port),
        replay_port=t.port("replay_port", d.replay_port),
        snapshot_port=t.port("snapshot_port", d.snapshot_port),
        username=_soup_text(t, "username", 6, d.username),
        password=_soup_text(t, "password", 10, d.password),
        max_request_messages=t.integer("max_request_messages", d.max_request_messages, 1, 65534),
        max_request_bytes=t.integer("max_request_bytes", d.max_request_bytes, 1024, 1 << 24),
        quota_per_second=t.integer("quota_per_second", d.quota_per_second, 0),
        quota_per_minute=t.integer("quota_per_minute", d.quota_per_minute, 0),
        quota_per_day=t.integer("quota_per_day", d.quota_per_day, 0),
        retain_messages=t.integer("retain_messages", d.retain_messages, 0),
        max_sessions=t.integer("max_sessions", d.max_sessions, 1, 100_000),
        send_buffer_bytes=t.integer("send_buffer_bytes", d.send_buffer_bytes, 65536, 1 << 30),
        slow_client_ms=t.integer("slow_client_ms", d.slow_client_ms, 100, 600_000),
        snapshot_wait_ms=t.integer("snapshot_wait_ms", d.snapshot_wait_ms, 0, 600_000),
        rerequest_transport=t.text("rerequest_transport", d.rerequest_transport, choices=("udp", "sendmmsg")),
    )
    t.done()
    if not _is_loopback(c.bind):
        warnings.append(f"{t.key('bind')} = {c.bind!r}: retransmission servers listen beyond loopback")
    return c


def _soup_text(t: _Table, key: str, n: int, default: str | None = None) -> str:
    v = t.text(key, default, max_len=n)
    if not v.isascii() or not v.isprintable() or v != v.strip():
        raise ConfigError(f"{t.key(key)}: {v!r} must be printable ASCII with no leading or trailing spaces")
    return v


def _firm(t: _Table) -> FirmConfig:
    name = t.text("name", pattern=_NAME)
    fid = t.integer("id", None, 1, 0xFFFF_FFFF)
    stp = STP_BY_NAME[t.text("stp", "CN", choices=STP_BY_NAME)]
    ot = t.table("ouch", required=True)
    assert ot is not None
    ouch = OuchCredentials(_soup_text(ot, "username", 6), _soup_text(ot, "password", 10),
                           ot.boolean("cancel_on_disconnect", True))
    ot.done()
    xt = t.table("fix", required=True)
    assert xt is not None
    comp = xt.text("sender_comp_id", max_len=32)
    if not comp.isascii() or not comp.isprintable() or "|" in comp or " " in comp:
        raise ConfigError(f"{xt.key('sender_comp_id')}: {comp!r} must be printable ASCII without spaces or '|'")
    fix = FixCredentials(comp, xt.text("password", max_len=64))
    xt.done()
    lt = t.table("limits")
    limits = FirmLimits()
    if lt is not None:
        rate = lt.opt_int("rate_per_second", 1)
        burst = lt.opt_int("burst", 1)
        if burst is not None and rate is None:
            raise ConfigError(f"{lt.key('burst')}: a burst needs rate_per_second")
        limits = FirmLimits(
            max_qty=lt.opt_int("max_qty", 1),
            max_notional=lt.money("max_notional"),
            position_limit=lt.opt_int("position_limit", 0),
            rate_per_second=rate,
            burst=burst,
            collar_bps=lt.opt_int("collar_bps", 0, 10_000),
        )
        lt.done()
    t.done()
    return FirmConfig(name, fid, stp, ouch, fix, limits)


def _gateway(t: _Table, firm_names: tuple[str, ...], n_gateways: int, warnings: list[str]) -> GatewayConfig:
    name = t.text("name", pattern=_NAME)
    bind = t.address("bind", "127.0.0.1")
    ouch_port = t.port("ouch_port")
    fix_port = t.port("fix_port")
    comp = t.text("fix_comp_id", "MATCHWIRE", max_len=32)
    if n_gateways == 1:
        firms = t.str_list("firms", firm_names)
    else:
        firms = t.str_list("firms")  # with several gateways each says which firms it admits
    for j, f in enumerate(firms):
        if f not in firm_names:
            raise ConfigError(f"{t.key('firms')}[{j}]: unknown firm {f!r} (not in [[firms]])")
    t.done()
    if not _is_loopback(bind):
        warnings.append(f"{t.key('bind')} = {bind!r}: order entry listens beyond loopback")
    return GatewayConfig(name, bind, ouch_port, fix_port, comp, firms)


def _session_limits(t: _Table | None) -> SessionLimits:
    d = SessionLimits()
    if t is None:
        return d
    rate = t.integer("messages_per_second", d.messages_per_second, 1, 10_000_000)
    conns = t.integer("connections_per_second", d.connections_per_second, 1, 100_000)
    c = SessionLimits(
        max_queued_bytes=t.integer("max_queued_bytes", d.max_queued_bytes, 65536, 1 << 30),
        messages_per_second=rate,
        burst=t.integer("burst", 2 * rate, 1, 100_000_000),
        throttled_before_disconnect=t.integer("throttled_before_disconnect", d.throttled_before_disconnect,
                                              1, 10_000_000),
        login_timeout_ms=t.integer("login_timeout_ms", d.login_timeout_ms, 100, 600_000),
        connections_per_second=conns,
        connection_burst=t.integer("connection_burst", 2 * conns, 1, 1_000_000),
        listen_backlog=t.integer("listen_backlog", d.listen_backlog, 1, 65535),
    )
    t.done()
    return c


def _admin(t: _Table | None, warnings: list[str]) -> AdminConfig:
    d = AdminConfig()
    if t is None:
        return d
    c = AdminConfig(bind=t.address("bind", d.bind), port=t.port("port", d.port), token=t.text("token", d.token))
    t.done()
    if not _is_loopback(c.bind):
        warnings.append(f"{t.key('bind')} = {c.bind!r}: the admin interface listens beyond loopback")
    return c


# ================================================================================================
# Writing back (round trip)
# ================================================================================================
def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _money(units: int) -> str:
    """Price(4) units as dollars text with at least 2 decimals: 1500000 -> "150.00"."""
    text = price_to_text(units)
    while text.endswith("0") and len(text) - text.index(".") > 3:
        text = text[:-1]
    return _q(text)


def dumps(c: Config) -> str:
    """The config as TOML text, every key written out: ``loads(dumps(c)) == c``."""
    out: list[str] = []
    w = out.append
    a = c.appliance
    w("[appliance]")
    w(f"name = {_q(a.name)}")
    w(f"ring_slots = {a.ring_slots}")
    w(f"ring_slot_size = {a.ring_slot_size}")
    w(f"time_zone = {_q(c.time_zone)}")
    for ins in c.instruments:
        w("")
        w("[[instruments]]")
        w(f"symbol = {_q(ins.symbol)}")
        w(f"locate = {ins.locate}")
        w(f"tick = {_money(ins.tick)}")
        w(f"round_lot = {ins.round_lot}")
        if ins.reference_price is not None:
            w(f"reference_price = {_money(ins.reference_price)}")
        w(f"tier = {_q(ins.tier)}")
        if ins.luld_tier is not None:
            w(f"luld_tier = {_q(ins.luld_tier)}")
        if ins.post_only != "reject":
            w(f"post_only = {_q(ins.post_only)}")
    for p in c.partitions:
        w("")
        w("[[partitions]]")
        w(f"name = {_q(p.name)}")
        w(f"id = {p.id}")
        w("instruments = [" + ", ".join(_q(s) for s in p.instruments) + "]")
        w(f"cpu = {p.cpu}")
        w(f"wal_dir = {_q(p.wal_dir)}")
        w(f"snapshot_dir = {_q(p.snapshot_dir)}")
        w(f"durability = {_q(p.durability)}")
        w(f"interval_ms = {p.interval_ms}")
        w(f"snapshot_every_events = {p.snapshot_every_events}")
        w(f"snapshot_every_seconds = {p.snapshot_every_seconds}")
        w(f"idle = {_q(p.idle)}")
        if p.feed_stage != "inline":
            w(f"feed_stage = {_q(p.feed_stage)}")
        if p.wal_stage != "inline":
            w(f"wal_stage = {_q(p.wal_stage)}")
        if p.stage_idle != BACKOFF:
            w(f"stage_idle = {_q(p.stage_idle)}")
        if p.stage_cpu != -1:
            w(f"stage_cpu = {p.stage_cpu}")
        w(f"default_stp = {_q(STP_NAME[p.default_stp])}")
        for ch, f in p.feeds.items():
            w("")
            w(f"[partitions.feeds.{ch}]")
            w(f"a_group = {_q(f.a_group)}")
            w(f"a_port = {f.a_port}")
            w(f"b_group = {_q(f.b_group)}")
            w(f"b_port = {f.b_port}")
            if f.transport is not None:
                w(f"transport = {_q(f.transport)}")
    for g in c.gateways:
        w("")
        w("[[gateways]]")
        w(f"name = {_q(g.name)}")
        w(f"bind = {_q(g.bind)}")
        w(f"ouch_port = {g.ouch_port}")
        w(f"fix_port = {g.fix_port}")
        w(f"fix_comp_id = {_q(g.fix_comp_id)}")
        w("firms = [" + ", ".join(_q(s) for s in g.firms) + "]")
    m = c.market_data
    w("")
    w("[market_data]")
    w(f"interface = {_q(m.interface)}")
    w(f"ttl = {m.ttl}")
    w(f"dscp = {m.dscp}")
    w(f"max_payload = {m.max_payload}")
    w(f"l2_depth = {m.l2_depth}")
    w(f"transport = {_q(m.transport)}")
    w(f"source_port = {m.source_port}")
    w(f"afxdp_mode = {_q(m.afxdp_mode)}")
    w(f"afxdp_required = {'true' if m.afxdp_required else 'false'}")
    w(f"afxdp_queue = {m.afxdp_queue}")
    w(f"source_port_a = {m.source_port_a}")
    w(f"source_port_b = {m.source_port_b}")
    r = c.retransmit
    w("")
    w("[retransmit]")
    w(f"bind = {_q(r.bind)}")
    w(f"rerequest_port = {r.rerequest_port}")
    w(f"replay_port = {r.replay_port}")
    w(f"snapshot_port = {r.snapshot_port}")
    w(f"username = {_q(r.username)}")
    w(f"password = {_q(r.password)}")
    for key in ("max_request_messages", "max_request_bytes", "quota_per_second", "quota_per_minute", "quota_per_day", "retain_messages",
                "max_sessions", "send_buffer_bytes", "slow_client_ms", "snapshot_wait_ms"):
        w(f"{key} = {getattr(r, key)}")
    w(f"rerequest_transport = {_q(r.rerequest_transport)}")
    for fm in c.firms:
        w("")
        w("[[firms]]")
        w(f"name = {_q(fm.name)}")
        w(f"id = {fm.id}")
        w(f"stp = {_q(STP_NAME[fm.stp])}")
        w("[firms.ouch]")
        w(f"username = {_q(fm.ouch.username)}")
        w(f"password = {_q(fm.ouch.password)}")
        w(f"cancel_on_disconnect = {'true' if fm.ouch.cancel_on_disconnect else 'false'}")
        w("[firms.fix]")
        w(f"sender_comp_id = {_q(fm.fix.sender_comp_id)}")
        w(f"password = {_q(fm.fix.password)}")
        lim = fm.limits
        w("[firms.limits]")
        for key, fmt in (("max_qty", str), ("max_notional", _money), ("position_limit", str),
                         ("rate_per_second", str), ("burst", str), ("collar_bps", str)):
            v = getattr(lim, key)
            if v is not None:
                w(f"{key} = {fmt(v)}")
    ad = c.admin
    w("")
    w("[admin]")
    w(f"bind = {_q(ad.bind)}")
    w(f"port = {ad.port}")
    w(f"token = {_q(ad.token)}")
    sl = c.session_limits
    w("")
    w("[session_limits]")
    for fld in dataclasses.fields(sl):
        w(f"{fld.name} = {getattr(sl, fld.name)}")
    tr = c.trading
    if tr is not None:
        w("")
        w("[trading]")
        for key, text in zip(SCHEDULE_KEYS, tr.schedule or ()):
            w(f"{key} = {_q(text)}")
        for key in ("noii_interval_ms", "limit_state_seconds", "pause_seconds", "reopen_call_seconds",
                    "circuit_breaker_halt_seconds"):
            w(f"{key} = {getattr(tr, key)}")
        for tier in tr.tiers:
            w("")
            w("[[trading.tiers]]")
            w(f"name = {_q(tier.name)}")
            w(f"band_bps = {tier.band_bps}")
            w(f"market_collar_bps = {tier.market_collar_bps}")
            w(f"circuit_breaker_bps = {tier.circuit_breaker_bps}")
            w(f"luld_ref_price_tier = {_q(tier.luld_ref_price_tier)}")
    return "\n".join(out) + "\n"


# ================================================================================================
# The demo's config
# ================================================================================================
DEFAULT: Final = '''\
# matchwire demo: three instruments on one partition, three firms, everything on loopback.
[appliance]
name = "mw"

[[instruments]]
symbol = "ALPH"
locate = 1
tick = "0.01"
round_lot = 100
reference_price = "150.00"
tier = "Q"

[[instruments]]
symbol = "MSFX"
locate = 2
tick = "0.01"
round_lot = 100
reference_price = "410.00"
tier = "Q"

[[instruments]]
symbol = "ORCA"
locate = 3
tick = "0.01"
round_lot = 100
reference_price = "120.00"
tier = "G"

[[partitions]]
name = "p0"
id = 0
instruments = ["ALPH", "MSFX", "ORCA"]
cpu = -1                      # the last CPU of the affinity mask
wal_dir = "var/p0/wal"
durability = "batch"
snapshot_every_events = 1000000
snapshot_every_seconds = 300
idle = "backoff"

[partitions.feeds.l3]
a_group = "239.192.0.31"
a_port = 30001
b_group = "239.192.1.31"
b_port = 30001

[partitions.feeds.l2]
a_group = "239.192.0.32"
a_port = 30002
b_group = "239.192.1.32"
b_port = 30002

[partitions.feeds.l1]
a_group = "239.192.0.33"
a_port = 30003
b_group = "239.192.1.33"
b_port = 30003

[[gateways]]
name = "gw0"
bind = "127.0.0.1"
ouch_port = 15001
fix_port = 15002

[market_data]
interface = "127.0.0.1"
ttl = 0
dscp = 0
max_payload = 1472
l2_depth = 10
source_port_a = 0             # UDP source port of the A senders (0: the kernel picks one)
source_port_b = 0

[retransmit]
bind = "127.0.0.1"
rerequest_port = 31001
replay_port = 31002
snapshot_port = 31003
username = "mdata"
password = "mdata"

[[firms]]
name = "ALFA"
id = 1
stp = "CN"
ouch = { username = "alfa", password = "alfa-pw" }
fix = { sender_comp_id = "ALFA", password = "alfa-pw" }
limits = { max_qty = 100000, max_notional = "5000000", position_limit = 1000000, rate_per_second = 5000, burst = 500, collar_bps = 1000 }

[[firms]]
name = "BRVO"
id = 2
stp = "CO"
ouch = { username = "brvo", password = "brvo-pw" }
fix = { sender_comp_id = "BRVO", password = "brvo-pw" }
limits = { max_qty = 100000, max_notional = "5000000", position_limit = 1000000, rate_per_second = 5000, burst = 500, collar_bps = 1000 }

[[firms]]
name = "CHRL"
id = 3
stp = "DC"
ouch = { username = "chrl", password = "chrl-pw" }
fix = { sender_comp_id = "CHRL", password = "chrl-pw" }
limits = { max_qty = 10000, max_notional = "1000000", position_limit = 50000, rate_per_second = 100, burst = 20, collar_bps = 500 }

[admin]
bind = "127.0.0.1"
port = 18080
token = "demo"
'''


def default() -> Config:
    """The demo's config (DEFAULT)."""
    return loads(DEFAULT, source="appliance.config.DEFAULT")

