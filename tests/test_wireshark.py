"""The generated Wireshark dissector: shipped as generated, and tshark with it decodes every field of
every message type (ITCH 5.0, our L2/L1, MoldUDP64, SoupBinTCP, OUCH 5.0) with no expert info; a
message of the wrong length is an expert error."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from feeds import ouch_layout
from feeds import soupbintcp, wireshark
from feeds.channels import ALL_LAYOUTS
from feeds.layout import Msg
from feeds.moldudp64 import PacketBuilder, Session
from feeds.pcap import PcapWriter, TcpStreamWriter
from feeds.moldudp64 import parse_packet
from tools import cli

from test_pcap_tools import feed  # noqa: F401  (the fixture)

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt-get install tshark)")
T0 = 1_700_000_000 * 10**9
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def sample(layout: Msg[Any], salt: int) -> Any:
    """A message of ``layout`` whose every field has its own value (signed fields negative)."""
    values: list[Any] = []
    for i, f in enumerate(layout.fields):
        if f.code == "c":
            values.append(LETTERS[(salt + i) % 26].encode())
        elif f.code.endswith("s"):
            values.append(LETTERS[(salt + i) % 26:][:f.size].encode().ljust(f.size, b"Z"))
        else:
            bits = 48 if f.code == "u48" else f.size * 8
            signed = f.code in "bhiq"
            v = (salt * 1_000_003 + i * 7919 + 1) % (1 << (bits - 1 if signed else bits))
            values.append(-v if signed else v)
    return layout.cls(*values)


def expected_fields(proto: str, layout: Msg[Any], msg: Any) -> dict[str, str]:
    out = {}
    for f, v in zip(layout.fields, msg):
        out[wireshark.field_name(proto, layout, f.name)] = v.decode() if isinstance(v, bytes) else str(v)
    return out


def flatten(node: Any, out: dict[str, list[str]]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(v, str):
                out.setdefault(k, []).append(v)
            elif isinstance(v, list) and all(isinstance(x, str) for x in v):
                out.setdefault(k, []).extend(v)
            else:
                flatten(v, out)
    elif isinstance(node, list):
        for x in node:
            flatten(x, out)


def tshark_json(path: Path, *extra: str) -> list[dict[str, list[str]]]:
    proc = subprocess.run([TSHARK or "tshark", "-X", f"lua_script:{wireshark.LUA_PATH}", "-r", str(path),
                           "-T", "json", "--no-duplicate-keys", *extra],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Lua" not in proc.stderr and "error" not in proc.stderr.lower(), proc.stderr
    packets = []
    for p in json.loads(proc.stdout):
        flat: dict[str, list[str]] = {}
        flatten(p["_source"]["layers"], flat)
        packets.append(flat)
    return packets


# expert severities below Warn: Chat (TCP's "Connection establish request (SYN)") and Note (an
# Ethernet trailer in a real capture)
BELOW_WARN = {str(0x00200000), str(0x00400000)}
OUR_EXPERTS = ("mw_itch.bad_length", "mw_itch.unknown_type", "mw_mold.bad_blocks", "mw_ouch.bad_length",
               "mw_ouch.unknown_type", "mw_soup.bad_packet")


def assert_no_expert_beyond_chat(packets: list[dict[str, list[str]]]) -> None:
    for p in packets:
        assert "_ws.malformed" not in p, p
        assert set(p.get("_ws.expert.severity", [])) <= BELOW_WARN, p.get("_ws.expert.message")
        assert not set(OUR_EXPERTS) & set(p), p.get("_ws.expert.message")


def test_the_shipped_dissector_is_the_generated_one() -> None:
    assert wireshark.LUA_PATH.read_text(encoding="ascii") == wireshark.generate()


def test_wireshark_command_prints_and_installs_the_dissector(tmp_path: Path) -> None:
    out = io.StringIO()
    old = sys.stdout
    sys.stdout = out
    try:
        assert cli.main(["wireshark", "path"]) == 0
        assert cli.main(["wireshark", "install", "--dir", str(tmp_path / "plugins")]) == 0
    finally:
        sys.stdout = old
    lines = out.getvalue().splitlines()
    assert Path(lines[0]) == wireshark.LUA_PATH
    installed = tmp_path / "plugins" / "matchwire.lua"
    assert lines[1].endswith(str(installed)) and installed.read_bytes() == wireshark.LUA_PATH.read_bytes()


@pytest.fixture(scope="module")
def every_message(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One frame per message of every layout: ITCH and L2/L1 in MoldUDP64 datagrams, OUCH in
    SoupBinTCP (with appendages where the layout has one), every SoupBinTCP packet type."""
    path = tmp_path_factory.mktemp("ws") / "every.pcap"
    expect: list[dict[str, str]] = []
    builder = PacketBuilder(Session(b"2311140131"))
    t = T0
    with PcapWriter.open(path) as w:
        for salt, layout in enumerate(ALL_LAYOUTS.values()):
            msg = sample(layout, salt)
            builder.add(layout.encode(msg))
            [datagram] = builder.flush()
            t += 1000
            w.write_udp(t, "10.0.0.1", 29101, "239.192.1.31", 30011, datagram)
            assert layout.type_byte is not None
            expect.append({**expected_fields("mw_itch", layout, msg), "mw_itch.type": layout.type_byte.decode()})
        tcp = TcpStreamWriter(w, ("10.0.0.2", 50000), ("10.0.0.1", 15001))
        tcp.handshake(t)
        login = soupbintcp.encode_login_request("user01", "secret", "", 0)
        accepted = soupbintcp.encode_login_accepted(b"SESSION001", 1)
        for from_client, packet, fields in (
                (True, login, {"mw_soup.type": "L", "mw_soup.login_request.username": "user01"}),
                (False, accepted, {"mw_soup.type": "A", "mw_soup.login_accepted.session": "SESSION001"}),
                (False, soupbintcp.encode_login_rejected(b"A"), {"mw_soup.type": "J", "mw_soup.reject_reason": "A"}),
                (False, soupbintcp.encode_debug(b"hello"), {"mw_soup.type": "+", "mw_soup.text": "hello"}),
                (False, soupbintcp.encode_server_heartbeat(), {"mw_soup.type": "H"}),
                (True, soupbintcp.encode_client_heartbeat(), {"mw_soup.type": "R"}),
                (False, soupbintcp.encode_end_of_session(), {"mw_soup.type": "Z"}),
                (True, soupbintcp.encode_logout_request(), {"mw_soup.type": "O"})):
            t += 1000
            tcp.send(t, from_client, packet)
            expect.append(fields)
        for table, from_client, wrap in ((ouch_layout.INBOUND, True, soupbintcp.encode_unsequenced_data),
                                         (ouch_layout.OUTBOUND, False, soupbintcp.encode_sequenced_data)):
            for salt, layout in enumerate(table.values()):
                msg = sample(layout, salt)
                options = [(2, b"FIRM"), (18, b"0")] if layout.name in ouch_layout.HAS_APPENDAGE else []
                body = ouch_layout.encode(layout, msg, options)
                msg, _ = ouch_layout.decode(body, table)
                t += 1000
                tcp.send(t, from_client, wrap(body))
                assert layout.type_byte is not None
                fields = {**expected_fields("mw_ouch", layout, msg), "mw_ouch.type": layout.type_byte.decode()}
                if options:
                    fields["mw_ouch.option.tag"] = "2"
                expect.append(fields)
        # one segment carrying two packets, and one packet cut over two segments (reassembly)
        two = soupbintcp.encode_server_heartbeat() + soupbintcp.encode_debug(b"split over segments")
        t += 1000
        tcp.send(t, False, two[:8])
        tcp.send(t + 1, False, two[8:])
    return {"path": path, "expect": expect}


@needs_tshark
def test_tshark_decodes_every_field_of_every_message_type(every_message: dict[str, Any]) -> None:
    packets = tshark_json(every_message["path"], "-d", "tcp.port==15001,mw_soup")
    decoded = [p for p in packets if "mw_itch.type" in p or "mw_soup.type" in p]
    expect = every_message["expect"]
    assert len(decoded) == len(expect) + 2
    for got, want in zip(decoded, expect):
        for name, value in want.items():
            assert name in got, (name, sorted(got))
            assert value in got[name], (name, value, got[name])
    first, second = decoded[-2:]     # the heartbeat, then the debug packet reassembled from both segments
    assert first["mw_soup.type"] == ["H"] and second["mw_soup.type"] == ["+"]
    assert second["mw_soup.text"] == ["split over segments"]
    assert_no_expert_beyond_chat(packets)
    itch_types = {v for p in decoded for v in p.get("mw_itch.type", [])}
    assert itch_types == {t.decode() for t in ALL_LAYOUTS}
    ouch_types = [v for p in decoded for v in p.get("mw_ouch.type", [])]
    assert len(ouch_types) == len(ouch_layout.INBOUND) + len(ouch_layout.OUTBOUND)


@needs_tshark
def test_the_real_captures_decode_without_expert_info() -> None:
    from test_pcap_tools import CAPTURES
    if not CAPTURES.is_dir():
        pytest.skip("no captures")
    for path in sorted(CAPTURES.glob("*/*.pcap")):
        extra = ("-d", "tcp.port==8001,mw_soup", "-d", "tcp.port==8003,mw_soup") if "Ouch" in path.parent.name else ()
        packets = tshark_json(path, *extra)
        assert packets and all(("mw_itch.type" in p) or ("mw_soup.type" in p) for p in packets), path
        assert_no_expert_beyond_chat(packets)


@needs_tshark
def test_a_message_of_the_wrong_length_is_an_expert_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.pcap"
    good = ALL_LAYOUTS[b"A"].encode(sample(ALL_LAYOUTS[b"A"], 1))
    datagram = b"2311140131" + (1).to_bytes(8, "big") + (1).to_bytes(2, "big") + (len(good) - 1).to_bytes(2, "big") + good[:-1]
    with PcapWriter.open(path) as w:
        w.write_udp(T0, "10.0.0.1", 29101, "239.192.1.31", 30011, datagram)
    [p] = tshark_json(path)
    assert p["mw_itch.type"] == ["A"] and p["_ws.expert.severity"] == [str(0x00800000)]
    assert p["_ws.expert.message"] == ["Add Order: 35 bytes, the layout has 36"] and "mw_itch.bad_length" in p


@needs_tshark
def test_tshark_decodes_a_capture_of_our_three_channels(feed: dict[str, Any]) -> None:
    """The run of test_pcap_tools (L3, L2, L1 on A and B, faults injected): every message of every
    datagram, heartbeats and End of Session, the re-request; nothing malformed."""
    packets = tshark_json(feed["path"])
    types = [t for p in packets for t in p.get("mw_itch.type", [])]
    sent = [m[:1].decode() for _, _, _, _, d in feed["events"] for m in parse_packet(d).messages]
    assert sorted(types) == sorted(sent)
    assert sum("mw_mold.header.session" in p for p in packets) == len(feed["events"]) + 1   # + the re-request
    ours = [p for p in packets if "mw_mold.header.session" in p]   # not the stray "DNS" datagram
    assert_no_expert_beyond_chat(ours)
