"""The appliance config: the default loads, the documented example round-trips, every error names its key."""
from __future__ import annotations

import copy
import os
import re
import tomllib
from typing import Any, Callable

import pytest

from appliance import config as C
from appliance.matching.engine import Engine
from appliance.model import STP_CN, STP_CO, STP_DC, STP_NONE
from appliance.risk import FirmLimits, RiskChecker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "config.md")


def doc_text() -> str:
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def doc_example() -> str:
    m = re.search(r"## A full example.*?```toml\n(.*?)```", doc_text(), re.S)
    assert m, "docs/config.md has no full example"
    return m.group(1)


# -- the default ------------------------------------------------------------------------------------
def test_the_default_config_loads_without_warnings() -> None:
    c = C.default()
    assert c.warnings == ()
    assert [i.symbol for i in c.instruments] == ["ALPH", "MSFX", "ORCA"]
    assert c.instrument("ALPH").reference_price == 1_500_000 and c.instrument("ALPH").tick == 100
    (p,) = c.partitions
    assert p.instruments == ("ALPH", "MSFX", "ORCA") and p.durability == "batch"
    assert p.snapshot_dir == "var/p0/wal/snapshots"
    assert set(p.feeds) == {"l3", "l2", "l1"}
    for ch in p.feeds.values():
        assert ch.a_group.startswith("239.192.") and ch.b_group.startswith("239.192.")
    assert c.market_data.ttl == 0 and c.market_data.interface == "127.0.0.1"
    assert all(g.bind == "127.0.0.1" for g in c.gateways)
    assert c.retransmit.bind == c.admin.bind == "127.0.0.1"
    assert [f.name for f in c.firms] == ["ALFA", "BRVO", "CHRL"]
    assert c.gateways[0].firms == ("ALFA", "BRVO", "CHRL")          # one gateway: every firm


def test_the_default_config_builds_engine_risk_and_rings() -> None:
    c = C.default()
    engine = Engine(c.partition_instruments("p0"), c.firm_stp(), c.partitions[0].default_stp)
    assert [i.symbol for i in engine.instruments()] == ["ALPH", "MSFX", "ORCA"]
    assert c.firm_stp() == {1: STP_CN, 2: STP_CO, 3: STP_DC}
    limits = c.risk_limits("gw0")
    assert limits.firms[3] == FirmLimits(max_qty=10_000, max_notional=1_000_000 * 10_000, position_limit=50_000,
                                         rate_per_second=100, burst=20, collar_bps=500)
    assert limits.reference_prices == {1: 1_500_000, 2: 4_100_000, 3: 1_200_000}
    RiskChecker(limits)
    assert c.ring_names("p0", "gw0") == {"cmd": "mw.p0.gw0.cmd", "evt": "mw.p0.gw0.evt"}


# -- round trips ------------------------------------------------------------------------------------
def test_default_round_trips() -> None:
    c = C.default()
    assert C.loads(C.dumps(c)) == c
    assert C.dumps(C.loads(C.dumps(c))) == C.dumps(c)


def test_the_documented_full_example_loads_and_round_trips(tmp_path: Any) -> None:
    text = doc_example()
    c = C.loads(text)
    assert C.loads(C.dumps(c)) == c
    path = tmp_path / "appliance.toml"
    path.write_text(C.dumps(c))
    assert C.load(str(path)) == c
    # what the example says
    assert c.appliance == C.ApplianceConfig("mwx", 8192, 256)
    assert c.instrument("PENY").tick == 1 and c.instrument("PENY").reference_price == 5_123
    assert c.instrument("NEWCO").reference_price is None and c.instrument("NEWCO").tick == 500
    p0, p1 = c.partitions
    assert (p0.durability, p0.interval_ms, p0.idle, p0.default_stp, p0.cpu) == ("interval", 5, "busy_spin", STP_CO, 1)
    assert set(p0.feeds) == {"l3", "l1"} and set(p1.feeds) == {"l3", "l2"}
    assert p1.snapshot_dir == "/var/lib/matchwire/p1/wal/snapshots"
    assert [g.firms for g in c.gateways] == [("ALFA", "BRVO"), ("CHRL",)]
    assert c.firms[0].limits.max_notional == 5_000_000 * 10_000
    assert c.firms[1].limits == FirmLimits(max_qty=5000, position_limit=0)
    assert c.firms[2].limits == FirmLimits() and c.firms[2].stp == STP_NONE
    assert set(c.risk_limits("gw1").firms) == {3}
    assert c.ring_names("p1", "gw1")["cmd"] == "mwx.p1.gw1.cmd"
    assert c.warnings == ()


def test_the_stock_directory_carries_the_market_category_and_the_luld_tier() -> None:
    """instruments[].tier is the Market Category; the LULD Reference Price Tier comes from the
    instrument's [[trading.tiers]] (its luld_ref_price_tier), " " without one."""
    from appliance.daemon import feed_config
    c = C.loads(doc_example())
    assert c.stock_directory("p0") == {1: (b"Q", b"1"), 9: (b"G", b" ")}
    assert feed_config(c, c.partition("p0")).directory == {1: (b"Q", b"1"), 9: (b"G", b" ")}
    assert C.default().stock_directory("p0") == {1: (b"Q", b" "), 2: (b"Q", b" "), 3: (b"G", b" ")}
    tiers = C.loads(doc_example().replace('luld_ref_price_tier = "2"', 'luld_ref_price_tier = "1"'))
    assert tiers.trading is not None and tiers.trading.tier("2").luld_ref_price_tier == "1"
    with pytest.raises(C.ConfigError, match=r"trading.tiers\[1\].luld_ref_price_tier"):
        C.loads(doc_example().replace('luld_ref_price_tier = "2"', 'luld_ref_price_tier = "3"'))


def test_every_key_is_in_the_reference() -> None:
    C.loads(doc_example())
    C.default()
    doc = doc_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", doc, re.M))
    known = {re.sub(r"\.feeds\.l[123]\b", ".feeds.CH", k) for k in C.key_paths()}
    assert known - documented == set(), "keys the loader reads but docs/config.md does not describe"
    assert documented - known == set(), "keys docs/config.md describes but the loader does not read"


def _written_keys(node: Any, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in node.items():
        path = prefix + key
        out.add(path)
        if isinstance(value, dict):
            out |= _written_keys(value, path + ".")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                out |= _written_keys(item, path + "[].")
    return out


def test_the_schema_alone_lists_every_key_and_the_writer_writes_only_those() -> None:
    """key_paths() comes from the schema, not from what was loaded so far; dumps writes the same
    schema, so every key it writes is one the loader reads (and docs/config.md describes)."""
    import subprocess
    import sys
    fresh = subprocess.run([sys.executable, "-c", "from appliance import config; print(sorted(config.key_paths()))"],
                           capture_output=True, text=True, cwd=REPO, timeout=60, check=True)
    assert fresh.stdout.strip() == str(sorted(C.key_paths()))
    for c in (C.default(), C.loads(doc_example())):
        written = _written_keys(tomllib.loads(C.dumps(c)))
        assert written - C.key_paths() == set()
        assert {"session_limits.burst", "retransmit.snapshot_wait_ms", "partitions[].snapshot_dir"} <= written


def test_the_schema_choices_are_the_appliance_constants() -> None:
    """The Literal choices of the schema are the tuples the rest of the appliance uses."""
    from typing import get_args, get_type_hints

    from appliance.idle import IDLE_STRATEGIES

    def choices(struct: type, key: str) -> tuple[str, ...]:
        hint = get_type_hints(struct)[key]
        return tuple(a for a in get_args(hint) if isinstance(a, str)) or get_args(get_args(hint)[0])
    assert choices(C._Partition, "durability") == C.DURABILITY
    assert choices(C._Partition, "idle") == choices(C._Partition, "stage_idle") == IDLE_STRATEGIES
    assert choices(C._Partition, "default_stp") == choices(C._Firm, "stp") == tuple(C.STP_BY_NAME)
    assert choices(C._MarketData, "transport") == choices(C._Channel, "transport") == C.NETWORK_TRANSPORTS
    assert choices(C._MarketData, "afxdp_mode") == C.AFXDP_MODES
    assert choices(C._Instrument, "tier") == C.TIERS
    assert choices(C._Tier, "luld_ref_price_tier") == C.LULD_REF_PRICE_TIERS


# -- errors name the key ------------------------------------------------------------------------------
def base() -> dict[str, Any]:
    return tomllib.loads(C.DEFAULT)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting (or, for value DELETE, removing) the key at a dotted path with [i] indexes."""
    def apply(doc: dict[str, Any]) -> None:
        parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
        node: Any = doc
        for part in parts[:-1]:
            node = node[int(part[1:-1])] if part.startswith("[") else node[part]
        last = parts[-1]
        key: Any = int(last[1:-1]) if last.startswith("[") else last
        if value is DELETE:
            del node[key]
        else:
            node[key] = value
    return apply


DELETE = object()

ERRORS: list[tuple[str, Any, str]] = [
    # (key path, value (DELETE: remove it), expected message after "path: ")
    ("partitions[0].cpu", "x", "expected an integer, got 'x'"),
    ("partitions[0].cpu", 1.5, "expected an integer, got float 1.5"),
    ("partitions[0].cpu", -2, "-2 is outside -1..1023"),
    ("partitions[0].wal_stage", "process", "'process' needs feed_stage = 'process' too"),
    ("partitions[0].feed_stage", "thread", "'thread' is not one of"),
    ("partitions[0].stage_cpu", -3, "-3 is outside -1..1023"),
    ("partitions[0].cpus", 1, "unknown key (this table takes: "),
    ("partitions[0].id", 100, "100 is outside 0..99"),
    ("partitions[0].name", "p 0", "'p 0' must be 1-32 characters of A-Z a-z 0-9 _ -"),
    ("partitions[0].wal_dir", DELETE, "missing (a required key)"),
    ("partitions[0].instruments", "ALPH", "expected an array of strings, got 'ALPH'"),
    ("partitions[0].instruments[1]", "NOPE", "unknown instrument 'NOPE' (not in [[instruments]])"),
    ("partitions[0].instruments[2]", 3, "expected a string, got int 3"),
    ("partitions[0].durability", "sometimes", "'sometimes' is not one of 'batch', 'interval', 'none'"),
    ("partitions[0].interval_ms", 0, "0 is outside 1..60000"),
    ("partitions[0].idle", "nap", "'nap' is not one of 'busy_spin', 'yield', 'backoff'"),
    ("partitions[0].default_stp", "XX", "'XX' is not one of 'none', 'CN', 'CO', 'DC'"),
    ("partitions[0].snapshot_every_events", -1, "-1 is outside >= 0"),
    ("partitions[0].feeds", DELETE, "missing (a required key)"),
    ("partitions[0].feeds.l3", DELETE, "missing (a required key)"),
    ("partitions[0].feeds.l4", {"a_group": "239.192.9.9", "a_port": 1, "b_group": "239.192.9.8", "b_port": 1},
     "unknown key (this table takes: l1, l2, l3)"),
    ("partitions[0].feeds.l3.a_group", "10.0.0.1", "'10.0.0.1' is not a multicast group (224.0.0.0/4)"),
    ("partitions[0].feeds.l3.a_group", "239.192.0.300", "'239.192.0.300' is not an IPv4 address"),
    ("partitions[0].feeds.l2.b_group", "240.0.0.1", "'240.0.0.1' is not a multicast group (224.0.0.0/4)"),
    ("partitions[0].feeds.l3.b_port", 0, "0 is outside 1..65535"),
    ("partitions[0].feeds.l1.b_group", "239.192.0.33", "B must differ from A (239.192.0.33:30003)"),
    ("partitions[0].feeds.l3.color", "red", "unknown key"),
    ("partitions[0]", "p0", "expected a table, got 'p0'"),
    ("partitions", {"name": "p0"}, "expected an array of tables ([[partitions]]), got a table"),
    ("instruments[0].symbol", "TOOLONGSYM", "instrument symbol 'TOOLONGSYM': 1 to 8 ASCII characters"),
    ("instruments[1].symbol", "ALPH", "symbol 'ALPH' is already used by instruments[0].symbol"),
    ("instruments[1].locate", 1, "locate 1 is already used by instruments[0].locate"),
    ("instruments[0].locate", 70000, "70000 is outside 1..65535"),
    ("instruments[0].locate", True, "expected an integer, got true"),
    ("instruments[0].tick", 0.01, "expected decimal text such as \"150.25\", got float 0.01"),
    ("instruments[0].tick", "0.00001", "price '0.00001' has more than 4 decimals"),
    ("instruments[0].tick", "0", "'0' must be positive"),
    ("instruments[0].reference_price", "150.005", "price '150.005' is not a multiple of the tick 0.0100"),
    ("instruments[0].reference_price", "abc", "price 'abc' is not a decimal number"),
    ("instruments[0].tier", "X", "'X' is not one of"),
    ("instruments[0].round_lot", 0, "0 is outside >= 1"),
    ("gateways[0].fix_port", 15001, "TCP port 15001 is already used by gateways[0].ouch_port"),
    ("admin.port", 15002, "TCP port 15002 is already used by gateways[0].fix_port"),
    ("admin.port", "8080", "expected an integer, got '8080'"),
    ("gateways[0].bind", "localhost", "'localhost' is not an IPv4 address"),
    ("gateways[0].name", DELETE, "missing (a required key)"),
    ("market_data.ttl", 300, "300 is outside 0..255"),
    ("market_data.dscp", True, "expected an integer, got true"),
    ("market_data.l2_depth", 0, "0 is outside 1..1000"),
    ("market_data.interface", "127.0.0", "'127.0.0' is not an IPv4 address"),
    ("market_data.groups", [], "unknown key"),
    ("retransmit.username", "toolongname", "'toolongname' must be 1 to 6 characters"),
    ("retransmit.password", " pw", "' pw' must be printable ASCII with no leading or trailing spaces"),
    ("retransmit.replay_port", 15001, "TCP port 15001 is already used by gateways[0].ouch_port"),
    ("firms[0].limits.collar_bps", 20000, "20000 is outside 0..10000"),
    ("firms[0].limits.max_notional", 5e6, "expected decimal text such as \"150.25\", got float 5000000.0"),
    ("firms[0].limits.max_qtty", 5, "unknown key (this table takes: burst, collar_bps, max_notional, max_qty,"),
    ("firms[0].limits.rate_per_second", 0, "0 is outside >= 1"),
    ("firms[0].limits.position_limit", "lots", "expected an integer, got 'lots'"),
    ("firms[1].id", 1, "firm id 1 is already used by firms[0].id"),
    ("firms[0].id", 0, "0 is outside 1..4294967295"),
    ("firms[0].stp", "XX", "'XX' is not one of 'none', 'CN', 'CO', 'DC'"),
    ("firms[0].ouch", DELETE, "missing (a required key)"),
    ("firms[0].ouch.username", "alfa-long", "'alfa-long' must be 1 to 6 characters"),
    ("firms[1].ouch.username", "alfa", "OUCH username 'alfa' is already used by firms[0].ouch.username"),
    ("firms[2].fix.sender_comp_id", "ALFA", "FIX SenderCompID 'ALFA' is already used by firms[0].fix.sender_comp_id"),
    ("firms[0].fix.sender_comp_id", "A|B", "'A|B' must be printable ASCII without spaces or '|'"),
    ("firms[0].fix.user", "x", "unknown key"),
    ("appliance.ring_slots", 1000, "1000 is not a power of two"),
    ("appliance.ring_slot_size", 100, "100 is not a multiple of 8"),
    ("appliance.name", "m/w", "'m/w' must be 1-32 characters"),
    ("admin.token", 5, "expected a string, got int 5"),
    ("gateway", {"name": "gw1"}, "unknown key (this table takes: "),
    ("firms[0].ouch.cancel_on_disconnect", "yes", "expected true or false, got 'yes'"),
    ("market_data.afxdp_required", 1, "expected true or false, got int 1"),
    ("appliance.time_zone", 5, "expected a string, got int 5"),
    ("appliance.time_zone", "Mars/Base", "'Mars/Base' is not an IANA time zone"),
    ("firms[0].limits", 5, "expected a table, got int 5"),
    ("instruments[0]", [], "expected a table, got an array"),
    ("retransmit.rerequest_transport", "afxdp", "'afxdp' is not one of 'udp', 'sendmmsg'"),
    ("partitions[0].feeds.l3.transport", "tcp", "'tcp' is not one of 'udp', 'sendmmsg', 'afxdp'"),
    ("admin.max-port", 1, "unknown key (this table takes: bind, port, token)"),
]


@pytest.mark.parametrize("path, value, message", ERRORS, ids=[f"{p}={v!r}"[:60] for p, v, _ in ERRORS])
def test_every_error_names_the_key(path: str, value: Any, message: str) -> None:
    doc = base()
    _set(path, value)(doc)
    with pytest.raises(C.ConfigError) as info:
        C.from_dict(doc)
    text = str(info.value)
    assert text.startswith(path + ": "), text
    assert message in text, text


def _error_of(mutate: Callable[[dict[str, Any]], None]) -> str:
    doc = base()
    mutate(doc)
    with pytest.raises(C.ConfigError) as info:
        C.from_dict(doc)
    return str(info.value)


def test_cross_reference_errors_name_the_key() -> None:
    def unassigned(doc: dict[str, Any]) -> None:
        doc["instruments"].append({"symbol": "NEWS", "locate": 4})
    assert _error_of(unassigned) == "instruments[3].symbol: 'NEWS' is in no partition's instruments"

    def twice(doc: dict[str, Any]) -> None:
        p1 = copy.deepcopy(doc["partitions"][0])
        p1.update(name="p1", id=1, wal_dir="var/p1/wal", instruments=["ORCA"])
        for i, ch in enumerate(p1["feeds"].values()):
            ch.update(a_group=f"239.192.10.{i}", b_group=f"239.192.11.{i}")
        doc["partitions"].append(p1)
    assert _error_of(twice) == "partitions[1].instruments[0]: instrument 'ORCA' is already used by partitions[0].instruments[2]"

    def unknown_firm(doc: dict[str, Any]) -> None:
        doc["gateways"][0]["firms"] = ["ALFA", "ZED"]
    assert _error_of(unknown_firm) == "gateways[0].firms[1]: unknown firm 'ZED' (not in [[firms]])"

    def same_groups(doc: dict[str, Any]) -> None:
        doc["partitions"][0]["feeds"]["l2"] = dict(doc["partitions"][0]["feeds"]["l3"])
    assert _error_of(same_groups) == ("partitions[0].feeds.l2.a_group: multicast group and port "
                                      "('239.192.0.31', 30001) is already used by partitions[0].feeds.l3.a_group")

    def same_wal(doc: dict[str, Any]) -> None:
        twice(doc)
        doc["partitions"][0]["instruments"] = ["ALPH", "MSFX"]
        doc["partitions"][1]["wal_dir"] = "var/p0/wal"
    assert _error_of(same_wal) == "partitions[1].wal_dir: WAL directory 'var/p0/wal' is already used by partitions[0].wal_dir"

    def two_gateways(doc: dict[str, Any]) -> None:
        doc["gateways"].append({"name": "gw1", "ouch_port": 15011, "fix_port": 15012, "firms": ["ALFA"]})
    assert _error_of(two_gateways) == "gateways[0].firms: missing (a required key)"

    def firm_twice(doc: dict[str, Any]) -> None:
        two_gateways(doc)
        doc["gateways"][0]["firms"] = ["ALFA", "BRVO", "CHRL"]
    assert _error_of(firm_twice).startswith("gateways[1].firms[0]: firm 'ALFA' is already used by gateways[0].firms[0]")

    def firm_nowhere(doc: dict[str, Any]) -> None:
        two_gateways(doc)
        doc["gateways"][0]["firms"] = ["BRVO"]
    assert _error_of(firm_nowhere) == "firms[2].name: firm 'CHRL' is on no gateway's firms"

    def burst_alone(doc: dict[str, Any]) -> None:
        del doc["firms"][0]["limits"]["rate_per_second"]
    assert _error_of(burst_alone) == "firms[0].limits.burst: a burst needs rate_per_second"

    def no_instruments(doc: dict[str, Any]) -> None:
        doc["instruments"] = []
    assert _error_of(no_instruments).startswith("instruments: at least one")

    def no_gateways(doc: dict[str, Any]) -> None:
        del doc["gateways"]
    assert _error_of(no_gateways).startswith("gateways: at least one")


def test_toml_syntax_and_encoding_errors_name_the_source(tmp_path: Any) -> None:
    with pytest.raises(C.ConfigError, match=r"^<config>: TOML syntax: "):
        C.loads("[appliance\nname = 1")
    path = tmp_path / "bad.toml"
    path.write_bytes(b"[appliance]\nname = \"\xff\"\n")
    with pytest.raises(C.ConfigError, match=re.escape(str(path)) + ": not UTF-8"):
        C.load(str(path))


# -- loud warnings --------------------------------------------------------------------------------------
def test_dangerous_settings_load_with_warnings() -> None:
    doc = base()
    doc["partitions"][0]["durability"] = "none"
    doc["market_data"]["ttl"] = 1
    doc["market_data"]["interface"] = "10.1.2.3"
    doc["gateways"][0]["bind"] = "0.0.0.0"
    c = C.from_dict(doc)
    assert c.partitions[0].durability == "none"
    w = c.warnings
    assert len(w) == 4
    assert w[0].startswith("partitions[0].durability = 'none': partition p0 never fsyncs its WAL")
    assert "lost in a crash" in w[0]
    assert any(x.startswith("market_data.ttl = 1:") for x in w)
    assert any(x.startswith("market_data.interface = '10.1.2.3':") for x in w)
    assert any(x.startswith("gateways[0].bind = '0.0.0.0':") for x in w)
    assert C.loads(C.dumps(c)) == c


def test_optional_tables_take_their_defaults() -> None:
    doc = base()
    for key in ("appliance", "market_data", "retransmit", "admin"):
        del doc[key]
    del doc["firms"][2]["limits"]
    for key in ("tick", "round_lot", "reference_price", "tier"):
        del doc["instruments"][0][key]
    c = C.from_dict(doc)
    assert c.appliance == C.ApplianceConfig() and c.market_data == C.MarketDataConfig()
    assert c.retransmit == C.RetransmitConfig() and c.admin == C.AdminConfig()
    assert c.firms[2].limits == FirmLimits()
    ins = c.instruments[0]
    assert (ins.tick, ins.round_lot, ins.reference_price, ins.tier) == (100, 100, None, "Q")
    assert C.loads(C.dumps(c)) == c


def test_money_accepts_whole_dollars_and_decimal_text() -> None:
    doc = base()
    doc["firms"][0]["limits"]["max_notional"] = 2_500_000
    doc["instruments"][0]["reference_price"] = "150.1"
    c = C.from_dict(doc)
    assert c.firms[0].limits.max_notional == 25_000_000_000
    assert c.instruments[0].reference_price == 1_501_000
