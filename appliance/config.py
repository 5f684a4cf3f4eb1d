"""The appliance's one configuration file: TOML, read with tomllib, checked into typed dataclasses.

The file's schema is data: one closed msgspec Struct per TOML table (``_Document`` and the Structs
it holds) declares every key, its type, bounds, choices and default. msgspec converts the parsed
document into it; what one key cannot say alone (addresses, money, references between tables,
uniqueness) is checked after, and the result is the frozen dataclasses below. ``dumps`` writes the
same Structs back, and ``key_paths()`` lists their keys.

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

This module reads no clock and opens no socket; ``dumps(config)`` writes a config back as TOML,
every key written out (``loads(dumps(c)) == c``).
"""
from __future__ import annotations

import calendar
import dataclasses
import datetime
import ipaddress
import re
import tomllib
import zoneinfo
from typing import Annotated, Any, Final, Iterable, Literal, get_args, get_origin, get_type_hints

import msgspec
import msgspec.inspect as mi
import tomli_w
from msgspec import Meta

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
    cpu_dma_latency_us: int = -1        # held on /dev/cpu_dma_latency while `matchwire run` runs; -1: not


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
    busy_poll_us: int = 0               # after publishing commands, poll for their answers this long before sleeping


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
    end_of_session_ms: int = 3000       # how long End of Session packets repeat at the session's end


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
# The file's schema: every TOML table a closed msgspec Struct (keys, types, bounds, choices, defaults)
# ================================================================================================
# msgspec converts the parsed document into these and refuses, with the key's path, a wrong type,
# a value out of bounds, a missing required key or a key the table does not take; _complaint turns
# its message into the form "partitions[0].cpu: expected an integer, got 'x'". What one key cannot
# say alone (addresses, money, a time zone, references between tables, uniqueness) is checked after,
# in _resolve. The defaults are the public dataclasses' own.
_Port = Annotated[int, Meta(ge=1, le=65535)]
_Port0 = Annotated[int, Meta(ge=0, le=65535)]          # 0: the kernel picks one
_Cpu = Annotated[int, Meta(ge=-1, le=1023)]             # -1: chosen at start
_Bps = Annotated[int, Meta(ge=0, le=9999)]
_Name = Annotated[str, Meta(pattern=_NAME.pattern)]
_Money = Annotated[str | int | None, Meta(extra={"kind": "money"})]   # dollars as text, or whole dollars
_Idle = Literal["busy_spin", "yield", "backoff"]
_Stage = Literal["inline", "process"]
_Stp = Literal["none", "CN", "CO", "DC"]
_Transport = Literal["udp", "sendmmsg", "afxdp"]


_Text6 = Annotated[str, Meta(min_length=1, max_length=6)]      # SoupBinTCP username
_Text8 = Annotated[str, Meta(min_length=1, max_length=8)]
_Text10 = Annotated[str, Meta(min_length=1, max_length=10)]    # SoupBinTCP password
_Text32 = Annotated[str, Meta(min_length=1, max_length=32)]    # FIX CompID
_Text64 = Annotated[str, Meta(min_length=1, max_length=64)]


class _Table(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One closed TOML table."""


_A: Final = ApplianceConfig()
_M: Final = MarketDataConfig()
_R: Final = RetransmitConfig()
_AD: Final = AdminConfig()
_S: Final = SessionLimits()
_T: Final = TradingConfig()


class _Appliance(_Table, kw_only=True, frozen=True):
    name: _Name = _A.name
    ring_slots: Annotated[int, Meta(ge=2, le=1 << 24)] = _A.ring_slots
    ring_slot_size: Annotated[int, Meta(ge=16, le=65536)] = _A.ring_slot_size
    time_zone: str | None = None                        # None: _A.time_zone
    cpu_dma_latency_us: Annotated[int, Meta(ge=-1, le=10_000_000)] = _A.cpu_dma_latency_us


class _Instrument(_Table, kw_only=True, frozen=True):
    symbol: str
    locate: Annotated[int, Meta(ge=1, le=0xFFFF)]
    tick: _Money = None                                  # None: $0.01
    round_lot: Annotated[int, Meta(ge=1)] = 100
    reference_price: _Money = None
    tier: Literal["Q", "G", "S", "N", "A", "P", "Z", "V", " "] = "Q"
    luld_tier: str | None = None                        # None (or ""): none
    post_only: Literal["reject", "reprice"] = "reject"


class _Tier(_Table, kw_only=True, frozen=True):
    name: _Text8
    band_bps: _Bps = 0
    market_collar_bps: _Bps = 0
    circuit_breaker_bps: _Bps = 0
    luld_ref_price_tier: Literal["1", "2"] | None = None  # None: "1" for the tier named "1", else "2"


class _Trading(_Table, kw_only=True, frozen=True):
    time_zone: str | None = None                        # None: appliance.time_zone
    pre_open: str = ""                                  # SCHEDULE_KEYS: all or none
    opening_auction: str = ""
    open: str = ""
    closing_auction: str = ""
    close: str = ""
    noii_interval_ms: Annotated[int, Meta(ge=0, le=3_600_000)] = _T.noii_interval_ms
    limit_state_seconds: Annotated[int, Meta(ge=1, le=3600)] = _T.limit_state_seconds
    pause_seconds: Annotated[int, Meta(ge=1, le=86_400)] = _T.pause_seconds
    reopen_call_seconds: Annotated[int, Meta(ge=0, le=86_400)] = _T.reopen_call_seconds
    circuit_breaker_halt_seconds: Annotated[int, Meta(ge=0, le=86_400)] = _T.circuit_breaker_halt_seconds
    tiers: tuple[_Tier, ...] = ()


class _Channel(_Table, kw_only=True, frozen=True):
    a_group: str
    a_port: _Port
    b_group: str
    b_port: _Port
    transport: _Transport | None = None


class _Feeds(_Table, kw_only=True, frozen=True):
    l3: _Channel
    l2: _Channel | None = None
    l1: _Channel | None = None


class _Partition(_Table, kw_only=True, frozen=True):
    name: _Name
    id: Annotated[int, Meta(ge=0, le=99)]
    instruments: tuple[str, ...]
    cpu: _Cpu = -1
    wal_dir: str
    snapshot_dir: str | None = None                     # None: wal_dir/snapshots
    durability: Literal["batch", "interval", "none"] = "batch"
    interval_ms: Annotated[int, Meta(ge=1, le=60_000)] = 2
    snapshot_every_events: Annotated[int, Meta(ge=0)] = 1_000_000
    snapshot_every_seconds: Annotated[int, Meta(ge=0)] = 300
    idle: _Idle = BACKOFF
    feed_stage: _Stage = "inline"
    wal_stage: _Stage = "inline"
    stage_cpu: _Cpu = -1
    stage_idle: _Idle = BACKOFF
    default_stp: _Stp = "CN"
    feeds: _Feeds


class _Gateway(_Table, kw_only=True, frozen=True):
    name: _Name
    bind: str = "127.0.0.1"
    ouch_port: _Port
    fix_port: _Port
    fix_comp_id: _Text32 = "MATCHWIRE"
    firms: tuple[str, ...] | None = None                # None: every firm (one gateway only)
    busy_poll_us: Annotated[int, Meta(ge=0, le=10_000_000)] = 0


class _MarketData(_Table, kw_only=True, frozen=True):
    interface: str = _M.interface
    ttl: Annotated[int, Meta(ge=0, le=255)] = _M.ttl
    dscp: Annotated[int, Meta(ge=0, le=63)] = _M.dscp
    max_payload: Annotated[int, Meta(ge=64, le=65507)] = _M.max_payload
    l2_depth: Annotated[int, Meta(ge=1, le=1000)] = _M.l2_depth
    transport: _Transport = "udp"
    source_port: _Port = _M.source_port
    afxdp_mode: Literal["auto", "copy", "zerocopy"] = "auto"
    afxdp_required: bool = _M.afxdp_required
    afxdp_queue: Annotated[int, Meta(ge=0, le=4095)] = _M.afxdp_queue
    source_port_a: _Port0 = _M.source_port_a
    source_port_b: _Port0 = _M.source_port_b
    end_of_session_ms: Annotated[int, Meta(ge=0, le=600_000)] = _M.end_of_session_ms


class _Retransmit(_Table, kw_only=True, frozen=True):
    bind: str = _R.bind
    rerequest_port: _Port = _R.rerequest_port
    replay_port: _Port = _R.replay_port
    snapshot_port: _Port = _R.snapshot_port
    username: _Text6 = _R.username
    password: _Text10 = _R.password
    max_request_messages: Annotated[int, Meta(ge=1, le=65534)] = _R.max_request_messages
    max_request_bytes: Annotated[int, Meta(ge=1024, le=1 << 24)] = _R.max_request_bytes
    quota_per_second: Annotated[int, Meta(ge=0)] = _R.quota_per_second
    quota_per_minute: Annotated[int, Meta(ge=0)] = _R.quota_per_minute
    quota_per_day: Annotated[int, Meta(ge=0)] = _R.quota_per_day
    retain_messages: Annotated[int, Meta(ge=0)] = _R.retain_messages
    max_sessions: Annotated[int, Meta(ge=1, le=100_000)] = _R.max_sessions
    send_buffer_bytes: Annotated[int, Meta(ge=65536, le=1 << 30)] = _R.send_buffer_bytes
    slow_client_ms: Annotated[int, Meta(ge=100, le=600_000)] = _R.slow_client_ms
    snapshot_wait_ms: Annotated[int, Meta(ge=0, le=600_000)] = _R.snapshot_wait_ms
    rerequest_transport: Literal["udp", "sendmmsg"] = "udp"


class _Ouch(_Table, kw_only=True, frozen=True):
    username: _Text6
    password: _Text10
    cancel_on_disconnect: bool = True


class _Fix(_Table, kw_only=True, frozen=True):
    sender_comp_id: _Text32
    password: _Text64


class _Limits(_Table, kw_only=True, frozen=True):
    """None: not checked."""

    max_qty: Annotated[int, Meta(ge=1)] | None = None
    max_notional: _Money = None
    position_limit: Annotated[int, Meta(ge=0)] | None = None
    rate_per_second: Annotated[int, Meta(ge=1)] | None = None
    burst: Annotated[int, Meta(ge=1)] | None = None
    collar_bps: Annotated[int, Meta(ge=0, le=10_000)] | None = None


class _Firm(_Table, kw_only=True, frozen=True):
    name: _Name
    id: Annotated[int, Meta(ge=1, le=0xFFFF_FFFF)]
    stp: _Stp = "CN"
    ouch: _Ouch
    fix: _Fix
    limits: _Limits | None = None


class _Admin(_Table, kw_only=True, frozen=True):
    bind: str = _AD.bind
    port: _Port = _AD.port
    token: str = _AD.token


class _SessionLimits(_Table, kw_only=True, frozen=True):
    max_queued_bytes: Annotated[int, Meta(ge=65536, le=1 << 30)] = _S.max_queued_bytes
    messages_per_second: Annotated[int, Meta(ge=1, le=10_000_000)] = _S.messages_per_second
    burst: Annotated[int, Meta(ge=1, le=100_000_000)] | None = None          # None: 2 x the rate
    throttled_before_disconnect: Annotated[int, Meta(ge=1, le=10_000_000)] = _S.throttled_before_disconnect
    login_timeout_ms: Annotated[int, Meta(ge=100, le=600_000)] = _S.login_timeout_ms
    connections_per_second: Annotated[int, Meta(ge=1, le=100_000)] = _S.connections_per_second
    connection_burst: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None  # None: 2 x the rate
    listen_backlog: Annotated[int, Meta(ge=1, le=65535)] = _S.listen_backlog


class _Document(_Table, kw_only=True, frozen=True):
    appliance: _Appliance | None = None
    instruments: tuple[_Instrument, ...] = ()
    partitions: tuple[_Partition, ...] = ()
    gateways: tuple[_Gateway, ...] = ()
    market_data: _MarketData | None = None
    retransmit: _Retransmit | None = None
    firms: tuple[_Firm, ...] = ()
    admin: _Admin | None = None
    session_limits: _SessionLimits | None = None
    trading: _Trading | None = None


def _schema() -> mi.StructType:
    t = mi.type_info(_Document)
    assert isinstance(t, mi.StructType)
    return t


def key_paths() -> frozenset[str]:
    """Every key path of the schema ("partitions[].feeds.l3.a_group", ...): tables and arrays of
    tables too, their items indexed as []."""
    out: set[str] = set()

    def walk(t: mi.StructType, prefix: str) -> None:
        for f in t.fields:
            path = prefix + f.encode_name
            out.add(path)
            inner = _unwrap(f.type)[0]
            if isinstance(inner, mi.StructType):
                walk(inner, path + ".")
            elif isinstance(inner, (mi.VarTupleType, mi.ListType)) and isinstance(inner.item_type, mi.StructType):
                walk(inner.item_type, path + "[].")
    walk(_schema(), "")
    return frozenset(out)


# ================================================================================================
# msgspec's complaints in the form of the key's path
# ================================================================================================
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


def _unwrap(t: mi.Type) -> tuple[mi.Type, str | None]:
    """(the type without Annotated metadata and without None, its extra "kind")."""
    kind = None
    while True:
        if isinstance(t, mi.Metadata):
            kind = (t.extra or {}).get("kind", kind)
            t = t.type
        elif isinstance(t, mi.UnionType):
            types = [x for x in t.types if not isinstance(x, mi.NoneType)]
            if len(types) != 1:
                return t, kind
            t = types[0]
        else:
            return t, kind


_AT = re.compile(r" - at `\$(.*)`$")
_PART = re.compile(r"\.(\w+)|\[(\d+)\]")


def _complaint(exc: msgspec.ValidationError, doc: dict[str, Any]) -> ConfigError:
    """The ConfigError of one msgspec.ValidationError: "path: what is wrong with the value"."""
    text = str(exc)
    m = _AT.search(text)
    parts: list[str | int] = []
    if m:
        for key, index in _PART.findall(m.group(1)):
            parts.append(key if key else int(index))
        text = text[:m.start()]
    path = ""
    t: mi.Type = _schema()
    v: Any = doc
    declared: Any = None                                # the key's annotation, where it is a Struct's field
    for p in parts:
        path += f"[{p}]" if isinstance(p, int) else (f".{p}" if path else p)
        inner = _unwrap(t)[0]
        if isinstance(p, int):
            assert isinstance(inner, (mi.VarTupleType, mi.ListType))
            t = inner.item_type
        else:
            assert isinstance(inner, mi.StructType)
            t = next(f.type for f in inner.fields if f.encode_name == p)
            declared = get_type_hints(inner.cls)[p]
        v = v[p]

    def at(key: str) -> str:
        return f"{path}.{key}" if path else key

    if (m := re.fullmatch(r"Object missing required field `(.+)`", text)) is not None:
        return ConfigError(f"{at(m.group(1))}: missing (a required key)")
    if (m := re.fullmatch(r"Object contains unknown field `(.+)`", text)) is not None:
        table = _unwrap(t)[0]
        assert isinstance(table, mi.StructType)
        known = ", ".join(sorted(f.encode_name for f in table.fields))
        return ConfigError(f"{at(m.group(1))}: unknown key (this table takes: {known})")
    return ConfigError(f"{path}: {_wrong(t, v, parts[-1] if parts else '', declared, text)}")


def _choices(declared: Any) -> tuple[str, ...]:
    """The values of a Literal annotation (also within Optional), in their declared order."""
    for arg in (declared, *get_args(declared)):
        if get_origin(arg) is Literal:
            return get_args(arg)
    return ()


def _wrong(t: mi.Type, v: Any, key: str | int, declared: Any, text: str) -> str:
    """What is wrong with value v of type t, declared as `declared` (msgspec's text: the last resort)."""
    t, kind = _unwrap(t)
    got = _describe(v)
    if kind == "money":
        hint = f" (write it as text: \"{v!r}\")" if isinstance(v, float) else ""
        return f"expected decimal text such as \"150.25\", got {got}{hint}"
    if isinstance(t, mi.IntType):
        if isinstance(v, bool) or not isinstance(v, int):
            return f"expected an integer, got {got}"
        return f"{v} is outside {_range(t.ge, t.le)}"
    if isinstance(t, mi.BoolType):
        return f"expected true or false, got {got}"
    if isinstance(t, (mi.StrType, mi.LiteralType)) and not isinstance(v, str):
        return f"expected a string, got {got}"
    if isinstance(t, mi.LiteralType):
        return f"{v!r} is not one of {', '.join(repr(c) for c in _choices(declared) or t.values)}"
    if isinstance(t, mi.StrType) and t.pattern is not None and not re.search(t.pattern, v):
        return f"{v!r} must be 1-32 characters of A-Z a-z 0-9 _ -"
    if isinstance(t, mi.StrType) and t.max_length is not None:
        return f"{v!r} must be 1 to {t.max_length} characters"
    if isinstance(t, (mi.VarTupleType, mi.ListType)):
        if isinstance(t.item_type, mi.StructType):
            return f"expected an array of tables ([[{key}]]), got {got}"
        return f"expected an array of strings, got {got}"
    if isinstance(t, mi.StructType):
        return f"expected a table, got {got}"
    return text[:1].lower() + text[1:]


# ================================================================================================
# Reading: what one key cannot say alone
# ================================================================================================
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


def _address(path: str, v: str, multicast: bool = False) -> str:
    try:
        addr = ipaddress.IPv4Address(v)
    except ValueError:
        raise ConfigError(f"{path}: {v!r} is not an IPv4 address") from None
    if multicast and addr not in _MULTICAST:
        raise ConfigError(f"{path}: {v!r} is not a multicast group (224.0.0.0/4)")
    return v


def _price(path: str, v: str | int | None, tick: int = 1) -> int | None:
    """Decimal text in dollars (or an integer of whole dollars) -> Price(4) units."""
    if v is None:
        return None
    try:
        units = price_from_text(str(v), tick)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if units <= 0:
        raise ConfigError(f"{path}: {v!r} must be positive")
    return units


def _soup_text(path: str, v: str) -> str:
    if not v.isascii() or not v.isprintable() or v != v.strip():
        raise ConfigError(f"{path}: {v!r} must be printable ASCII with no leading or trailing spaces")
    return v


def _time_zone(path: str, zone: str) -> str:
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{path}: {zone!r} is not an IANA time zone (such as 'America/New_York')") from None
    return zone


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
    try:
        d = msgspec.convert(doc, _Document)
    except msgspec.ValidationError as exc:
        raise _complaint(exc, doc) from None
    return _resolve(d)


def _resolve(d: _Document) -> Config:
    """The checks between keys and tables, in the order of the document's sections; the Config."""
    warnings: list[str] = []
    appliance = _appliance(d.appliance)
    instruments = tuple(_instrument(f"instruments[{i}]", x) for i, x in enumerate(d.instruments))
    if not instruments:
        raise ConfigError("instruments: at least one [[instruments]] table is required")
    _unique(((f"instruments[{i}].symbol", x.symbol) for i, x in enumerate(instruments)), "symbol")
    _unique(((f"instruments[{i}].locate", x.locate) for i, x in enumerate(instruments)), "locate")
    symbols = {x.symbol for x in instruments}

    partitions = tuple(_partition(f"partitions[{i}]", p, symbols, warnings) for i, p in enumerate(d.partitions))
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

    market_data = _market_data(d.market_data or _MarketData(), warnings)
    retransmit = _retransmit(d.retransmit or _Retransmit(), warnings)

    firms = tuple(_firm(f"firms[{i}]", f) for i, f in enumerate(d.firms))
    _unique(((f"firms[{i}].name", f.name) for i, f in enumerate(firms)), "firm name")
    _unique(((f"firms[{i}].id", f.id) for i, f in enumerate(firms)), "firm id")
    _unique(((f"firms[{i}].ouch.username", f.ouch.username) for i, f in enumerate(firms)), "OUCH username")
    _unique(((f"firms[{i}].fix.sender_comp_id", f.fix.sender_comp_id) for i, f in enumerate(firms)),
            "FIX SenderCompID")
    firm_names = tuple(f.name for f in firms)

    if not d.gateways:
        raise ConfigError("gateways: at least one [[gateways]] table is required")
    gateways = tuple(_gateway(f"gateways[{i}]", g, firm_names, len(d.gateways), warnings)
                     for i, g in enumerate(d.gateways))
    _unique(((f"gateways[{i}].name", g.name) for i, g in enumerate(gateways)), "gateway name")
    _unique(((f"gateways[{i}].firms[{j}]", f) for i, g in enumerate(gateways) for j, f in enumerate(g.firms)),
            "firm", " (a firm trades through one gateway, whose risk checker sees all its orders)")
    on_a_gateway = {f for g in gateways for f in g.firms}
    for i, fm in enumerate(firms):
        if fm.name not in on_a_gateway:
            raise ConfigError(f"firms[{i}].name: firm {fm.name!r} is on no gateway's firms")

    admin = _admin(d.admin or _Admin(), warnings)
    session_limits = _session_limits(d.session_limits or _SessionLimits())
    zone_given = d.appliance is not None and d.appliance.time_zone is not None
    trading = None if d.trading is None else _trading(d.trading, appliance, zone_given)
    for i, ins in enumerate(instruments):
        if ins.luld_tier is not None and (trading is None or ins.luld_tier not in {t.name for t in trading.tiers}):
            raise ConfigError(f"instruments[{i}].luld_tier: unknown tier {ins.luld_tier!r} (not in [[trading.tiers]])")

    tcp: list[tuple[str, int]] = []
    for i, g in enumerate(gateways):
        tcp += [(f"gateways[{i}].ouch_port", g.ouch_port), (f"gateways[{i}].fix_port", g.fix_port)]
    tcp += [("retransmit.replay_port", retransmit.replay_port), ("retransmit.snapshot_port", retransmit.snapshot_port),
            ("admin.port", admin.port)]
    _unique(tcp, "TCP port")
    return Config(appliance, instruments, partitions, gateways, market_data, retransmit, firms, admin,
                  tuple(warnings), trading, session_limits)


def _appliance(t: _Appliance | None) -> ApplianceConfig:
    if t is None:
        return ApplianceConfig()
    if t.ring_slots & (t.ring_slots - 1):
        raise ConfigError(f"appliance.ring_slots: {t.ring_slots} is not a power of two")
    if t.ring_slot_size % 8:
        raise ConfigError(f"appliance.ring_slot_size: {t.ring_slot_size} is not a multiple of 8")
    zone = _A.time_zone if t.time_zone is None else _time_zone("appliance.time_zone", t.time_zone)
    return ApplianceConfig(t.name, t.ring_slots, t.ring_slot_size, zone, t.cpu_dma_latency_us)


def _instrument(path: str, t: _Instrument) -> InstrumentConfig:
    tick = _price(f"{path}.tick", t.tick) or 100
    ref = _price(f"{path}.reference_price", t.reference_price, tick)
    try:
        Instrument(t.symbol, t.locate, tick, t.round_lot)
    except ValueError as exc:
        raise ConfigError(f"{path}.symbol: {exc}") from None
    return InstrumentConfig(t.symbol, t.locate, tick, t.round_lot, ref, t.tier, t.luld_tier or None, t.post_only)


def _trading(t: _Trading, appliance: ApplianceConfig, zone_given: bool) -> TradingConfig:
    """[trading]; its time_zone (kept for older configs) defaults to appliance.time_zone and, when
    both are written, must name the same zone."""
    zone = appliance.time_zone if t.time_zone is None else _time_zone("trading.time_zone", t.time_zone)
    if zone_given and t.time_zone is not None and zone != appliance.time_zone:
        raise ConfigError(f"trading.time_zone: {zone!r} is not appliance.time_zone "
                          f"{appliance.time_zone!r} (one exchange, one time zone: write it once)")
    times = [getattr(t, k) for k in SCHEDULE_KEYS]
    schedule: tuple[str, ...] | None = None
    if any(times):
        parsed = []
        for key, text in zip(SCHEDULE_KEYS, times):
            if not text:
                raise ConfigError(f"trading.{key}: missing (a schedule needs all of {', '.join(SCHEDULE_KEYS)})")
            try:
                parsed.append(_time_of_day(text))
            except ValueError as exc:
                raise ConfigError(f"trading.{key}: {exc}") from None
        for (k1, a), (k2, b) in zip(zip(SCHEDULE_KEYS, parsed), zip(SCHEDULE_KEYS[1:], parsed[1:])):
            if b < a:
                raise ConfigError(f"trading.{k2}: {b} is before {k1} {a}")
        schedule = tuple(times)
    tiers = tuple(TierConfig(x.name, x.band_bps, x.market_collar_bps, x.circuit_breaker_bps,
                             x.luld_ref_price_tier or ("1" if x.name == "1" else "2")) for x in t.tiers)
    _unique(((f"trading.tiers[{i}].name", x.name) for i, x in enumerate(tiers)), "tier name")
    return TradingConfig(zone, schedule, t.noii_interval_ms, t.limit_state_seconds, t.pause_seconds,
                         t.reopen_call_seconds, t.circuit_breaker_halt_seconds, tiers)


def _partition(path: str, t: _Partition, symbols: set[str], warnings: list[str]) -> PartitionConfig:
    if not t.instruments:
        raise ConfigError(f"{path}.instruments: a partition needs at least one instrument")
    for j, s in enumerate(t.instruments):
        if s not in symbols:
            raise ConfigError(f"{path}.instruments[{j}]: unknown instrument {s!r} (not in [[instruments]])")
    if t.wal_stage == "process" and t.feed_stage != "process":
        raise ConfigError(f"{path}.wal_stage: 'process' needs feed_stage = 'process' too (matching runs "
                          "ahead of durability, so publishing must replay the released commands itself)")
    feeds: dict[str, FeedChannelConfig] = {}
    for ch in CHANNELS:
        c = getattr(t.feeds, ch)
        if c is not None:
            feeds[ch] = _channel(f"{path}.feeds.{ch}", c)
    if t.durability == "none":
        warnings.append(
            f"{path}.durability = 'none': partition {t.name} never fsyncs its WAL; acknowledged orders "
            "and trades can be lost in a crash. Development only."
        )
    snapshot_dir = t.wal_dir.rstrip("/") + "/snapshots" if t.snapshot_dir is None else t.snapshot_dir
    return PartitionConfig(t.name, t.id, t.instruments, t.cpu, t.wal_dir, snapshot_dir, t.durability,
                           t.interval_ms, t.snapshot_every_events, t.snapshot_every_seconds, t.idle,
                           STP_BY_NAME[t.default_stp], feeds, t.feed_stage, t.wal_stage, t.stage_idle, t.stage_cpu)


def _channel(path: str, t: _Channel) -> FeedChannelConfig:
    _address(f"{path}.a_group", t.a_group, multicast=True)
    _address(f"{path}.b_group", t.b_group, multicast=True)
    if (t.a_group, t.a_port) == (t.b_group, t.b_port):
        raise ConfigError(f"{path}.b_group: B must differ from A ({t.a_group}:{t.a_port})")
    return FeedChannelConfig(t.a_group, t.a_port, t.b_group, t.b_port, t.transport)


def _market_data(t: _MarketData, warnings: list[str]) -> MarketDataConfig:
    _address("market_data.interface", t.interface)
    if t.source_port_a and t.source_port_a == t.source_port_b:
        raise ConfigError(f"market_data.source_port_b: the A and B senders need different source ports "
                          f"(both {t.source_port_a}), so that a filter tells them apart")
    if t.ttl > 0:
        warnings.append(f"market_data.ttl = {t.ttl}: market data multicast can leave this host")
    if not _is_loopback(t.interface):
        warnings.append(f"market_data.interface = {t.interface!r}: market data is sent beyond loopback")
    return MarketDataConfig(**msgspec.structs.asdict(t))


def _retransmit(t: _Retransmit, warnings: list[str]) -> RetransmitConfig:
    _address("retransmit.bind", t.bind)
    _soup_text("retransmit.username", t.username)
    _soup_text("retransmit.password", t.password)
    if not _is_loopback(t.bind):
        warnings.append(f"retransmit.bind = {t.bind!r}: retransmission servers listen beyond loopback")
    return RetransmitConfig(**msgspec.structs.asdict(t))


def _firm(path: str, t: _Firm) -> FirmConfig:
    ouch = OuchCredentials(_soup_text(f"{path}.ouch.username", t.ouch.username),
                           _soup_text(f"{path}.ouch.password", t.ouch.password), t.ouch.cancel_on_disconnect)
    comp = t.fix.sender_comp_id
    if not comp.isascii() or not comp.isprintable() or "|" in comp or " " in comp:
        raise ConfigError(f"{path}.fix.sender_comp_id: {comp!r} must be printable ASCII without spaces or '|'")
    limits = FirmLimits()
    if (lt := t.limits) is not None:
        if lt.burst is not None and lt.rate_per_second is None:
            raise ConfigError(f"{path}.limits.burst: a burst needs rate_per_second")
        limits = FirmLimits(lt.max_qty, _price(f"{path}.limits.max_notional", lt.max_notional), lt.position_limit,
                            lt.rate_per_second, lt.burst, lt.collar_bps)
    return FirmConfig(t.name, t.id, STP_BY_NAME[t.stp], ouch, FixCredentials(comp, t.fix.password), limits)


def _gateway(path: str, t: _Gateway, firm_names: tuple[str, ...], n_gateways: int,
             warnings: list[str]) -> GatewayConfig:
    _address(f"{path}.bind", t.bind)
    firms = t.firms
    if firms is None:
        if n_gateways > 1:  # with several gateways each says which firms it admits
            raise ConfigError(f"{path}.firms: missing (a required key)")
        firms = firm_names
    for j, f in enumerate(firms):
        if f not in firm_names:
            raise ConfigError(f"{path}.firms[{j}]: unknown firm {f!r} (not in [[firms]])")
    if not _is_loopback(t.bind):
        warnings.append(f"{path}.bind = {t.bind!r}: order entry listens beyond loopback")
    return GatewayConfig(t.name, t.bind, t.ouch_port, t.fix_port, t.fix_comp_id, firms, t.busy_poll_us)


def _session_limits(t: _SessionLimits) -> SessionLimits:
    burst = 2 * t.messages_per_second if t.burst is None else t.burst
    connection_burst = 2 * t.connections_per_second if t.connection_burst is None else t.connection_burst
    return SessionLimits(t.max_queued_bytes, t.messages_per_second, burst, t.throttled_before_disconnect,
                         t.login_timeout_ms, t.connections_per_second, connection_burst, t.listen_backlog)


def _admin(t: _Admin, warnings: list[str]) -> AdminConfig:
    _address("admin.bind", t.bind)
    if not _is_loopback(t.bind):
        warnings.append(f"admin.bind = {t.bind!r}: the admin interface listens beyond loopback")
    return AdminConfig(t.bind, t.port, t.token)


# ================================================================================================
# Writing back (round trip): the Config as the schema's document, encoded by tomli_w
# ================================================================================================
def _dollars(units: int) -> str:
    """Price(4) units as dollars text with at least 2 decimals: 1500000 -> "150.00"."""
    text = price_to_text(units)
    while text.endswith("0") and len(text) - text.index(".") > 3:
        text = text[:-1]
    return text


def _fields(obj: Any, **changes: Any) -> dict[str, Any]:
    """A dataclass's fields as keyword arguments (not recursing), some of them changed."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)} | changes


def _document(c: Config) -> _Document:
    """The document that loads as c, every key written out (derived defaults too)."""
    def opt_dollars(units: int | None) -> str | None:
        return None if units is None else _dollars(units)

    trading = None
    if (t := c.trading) is not None:
        kw = _fields(t, time_zone=None, tiers=tuple(_Tier(**_fields(x)) for x in t.tiers))  # zone: appliance's
        del kw["schedule"]
        kw.update(zip(SCHEDULE_KEYS, t.schedule or ()))
        trading = _Trading(**kw)
    return _Document(
        appliance=_Appliance(**_fields(c.appliance, time_zone=c.time_zone)),
        instruments=tuple(_Instrument(**_fields(i, tick=_dollars(i.tick), reference_price=opt_dollars(i.reference_price)))
                          for i in c.instruments),
        partitions=tuple(_Partition(**_fields(
            p, default_stp=STP_NAME[p.default_stp], feeds=_Feeds(**{ch: _Channel(**_fields(f)) for ch, f in p.feeds.items()}),
        )) for p in c.partitions),
        gateways=tuple(_Gateway(**_fields(g)) for g in c.gateways),
        market_data=_MarketData(**_fields(c.market_data)),
        retransmit=_Retransmit(**_fields(c.retransmit)),
        firms=tuple(_Firm(**_fields(
            f, stp=STP_NAME[f.stp], ouch=_Ouch(**_fields(f.ouch)), fix=_Fix(**_fields(f.fix)),
            limits=_Limits(**_fields(f.limits, max_notional=opt_dollars(f.limits.max_notional))),
        )) for f in c.firms),
        admin=_Admin(**_fields(c.admin)),
        session_limits=_SessionLimits(**_fields(c.session_limits)),
        trading=trading,
    )


def _without_none(v: Any) -> Any:
    """TOML has no null: an absent key is None."""
    if isinstance(v, dict):
        return {k: _without_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        return [_without_none(x) for x in v]
    return v


def dumps(c: Config) -> str:
    """The config as TOML text, every key written out: ``loads(dumps(c)) == c``."""
    return tomli_w.dumps(_without_none(msgspec.to_builtins(_document(c))))


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

