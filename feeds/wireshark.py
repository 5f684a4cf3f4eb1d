"""A Wireshark dissector (Lua) for every channel we publish and for order entry, generated from the
layouts declared once in the code; ``python -m feeds.wireshark`` rewrites ``matchwire.lua``.

    protocol   carries                                  from
    mw_mold    MoldUDP64 header, message blocks          feeds.moldudp64.HEADER
    mw_itch    ITCH 5.0 and our L2/L1 messages           feeds.channels.ALL_LAYOUTS
    mw_soup    SoupBinTCP packets (TCP, reassembled)     feeds.soupbintcp (types, login layouts)
    mw_ouch    OUCH 5.0 in Unsequenced/Sequenced Data    feeds.ouch_layout (INBOUND,
                                                          OUTBOUND, appendage options)

Field names are ``<protocol>.<message>.<field>`` with the layout's names (``mw_itch.add_order.price``,
``mw_ouch.enter_order.cl_ord_id``); prices also show as decimals (Price(4); the MWCB levels
Price(8)). MoldUDP64 is found on any UDP port by a heuristic (the blocks must fill the datagram
exactly) and SoupBinTCP by a heuristic on TCP; both also offer Decode As (``-d
udp.port==30011,mw_mold``, ``-d tcp.port==15001,mw_soup``). A message whose length differs from
its layout, an unknown type and a datagram whose blocks do not add up are expert errors.

Use: ``tshark -X lua_script:$(matchwire wireshark path) -r feed.pcap`` or ``matchwire wireshark
install`` (copies it to the personal Lua plugins folder of Wireshark).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Iterable

from feeds import ouch_layout
from feeds import soupbintcp
from feeds.channels import ALL_LAYOUTS
from feeds.layout import Msg
from feeds.moldudp64 import HEADER

__all__ = ["LUA_PATH", "generate", "slug", "field_name"]

#: The generated dissector shipped in the package.
LUA_PATH = Path(__file__).with_name("matchwire.lua")
_PRICE8 = frozenset({"level1", "level2", "level3"})


def slug(name: str) -> str:
    """A layout name as a filter-name part: "Add Order with MPID" -> "add_order_with_mpid"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def field_name(proto: str, layout: Msg[Any], field: str) -> str:
    """The display-filter name of a layout's field."""
    return f"{proto}.{slug(layout.name)}.{field}"


def _lua_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _kind(code: str, name: str) -> tuple[str, str]:
    """(ProtoField constructor, reader kind) of a field code."""
    if code == "u48":
        return "uint64", "u64"
    if code in ("B", "H", "I"):
        return {"B": "uint8", "H": "uint16", "I": "uint32"}[code], "u"
    if code == "Q":
        return "uint64", "u64"
    if code in ("b", "h", "i"):
        return {"b": "int8", "h": "int16", "i": "int32"}[code], "i"
    if code == "q":
        return "int64", "i64"
    return "string", "s"


def _price(name: str, code: str) -> int:
    if code in ("c",) or code.endswith("s"):
        return 0
    if name in _PRICE8:
        return 8
    return 4 if "price" in name else 0


def _table(proto: str, var: str, layouts: Iterable[Msg[Any]], appendage: frozenset[str] = frozenset()) -> list[str]:
    """Lua: ``var[type byte] = {name=, size=, appendage=, fields={{ProtoField, offset, size, kind,
    decimals}}}``; ``appendage``: names of the layouts followed by OUCH appendage options."""
    out = []
    for m in layouts:
        assert m.type_byte is not None
        rows = []
        for f in m.fields:
            ctor, kind = _kind(f.code, f.name)
            label = f.name.replace("_", " ").title()
            rows.append(f"    {{ProtoField.{ctor}({_lua_str(field_name(proto, m, f.name))}, {_lua_str(label)}), "
                        f"{f.offset}, {f.size}, {_lua_str(kind)}, {_price(f.name, f.code)}}},")
        out.append(f"{var}[{m.type_byte[0]}] = {{name = {_lua_str(m.name)}, size = {m.size}, "
                   f"appendage = {'true' if m.name in appendage else 'false'}, fields = {{")
        out += rows
        out.append("}}")
    return out


_RUNTIME = r'''
-- ------------------------------------------------------------------------------------------------
-- runtime (the same for every layout)
-- ------------------------------------------------------------------------------------------------

local function collect(list, specs)
    for _, spec in pairs(specs) do
        for _, f in ipairs(spec.fields) do list[#list + 1] = f[1] end
    end
end

local function decimals(v, places)
    local s = tostring(v)
    local neg = ""
    if s:sub(1, 1) == "-" then neg = "-"; s = s:sub(2) end
    while #s <= places do s = "0" .. s end
    return neg .. s:sub(1, #s - places) .. "." .. s:sub(#s - places + 1)
end

local function add_fields(tree, tvb, base, fields)
    for _, f in ipairs(fields) do
        local r = tvb(base + f[2], f[3])
        local kind = f[4]
        local item, v
        if kind == "u" then
            v = r:uint(); item = tree:add(f[1], r, v)
        elseif kind == "u64" then
            v = r:uint64(); item = tree:add(f[1], r, v)
        elseif kind == "i" then
            v = r:int(); item = tree:add(f[1], r, v)
        elseif kind == "i64" then
            v = r:int64(); item = tree:add(f[1], r, v)
        else
            item = tree:add(f[1], r, r:string())
        end
        if f[5] > 0 then item:append_text(" (" .. decimals(v, f[5]) .. ")") end
    end
end

local function type_char(t)
    if t >= 32 and t < 127 then return string.char(t) end
    return string.format("0x%02x", t)
end

-- one message of a table: checks the length against the layout (with an OUCH appendage)
local function dissect_message(proto, specs, f_type, e_len, e_type, f_opt, tvb, pinfo, tree)
    local n = tvb:len()
    local t = tvb(0, 1):uint()
    local spec = specs[t]
    if spec == nil then
        local item = tree:add(proto, tvb(), "Unknown message " .. type_char(t))
        item:add(f_type, tvb(0, 1))
        item:add_proto_expert_info(e_type, "unknown message type " .. type_char(t))
        return "?"
    end
    local item = tree:add(proto, tvb(), spec.name)
    item:add(f_type, tvb(0, 1))
    local want = spec.size
    if spec.appendage and n >= spec.size then want = spec.size + tvb(spec.size - 2, 2):uint() end
    if n ~= want or n < spec.size then
        item:add_proto_expert_info(e_len, spec.name .. ": " .. n .. " bytes, the layout has " .. want)
        return spec.name
    end
    add_fields(item, tvb, 0, spec.fields)
    if spec.appendage and f_opt ~= nil then
        local pos = spec.size
        while pos < n do
            local len = tvb(pos, 1):uint()
            if len < 1 or pos + 1 + len > n then
                item:add_proto_expert_info(e_len, "appendage option of length " .. len .. " overruns the message")
                break
            end
            local o = item:add(f_opt.option, tvb(pos, 1 + len))
            o:add(f_opt.tag, tvb(pos + 1, 1))
            if len > 1 then o:add(f_opt.value, tvb(pos + 2, len - 1)) end
            pos = pos + 1 + len
        end
    end
    return spec.name
end

-- ------------------------------------------------------------------------------------------------
-- ITCH 5.0 and our L2/L1 messages
-- ------------------------------------------------------------------------------------------------

local itch = Proto("mw_itch", "ITCH 5.0 and matchwire L2/L1")
local itch_type = ProtoField.string("mw_itch.type", "Message Type")
local itch_bad_length = ProtoExpert.new("mw_itch.bad_length", "ITCH message length differs from its layout",
                                        expert.group.MALFORMED, expert.severity.ERROR)
local itch_unknown = ProtoExpert.new("mw_itch.unknown_type", "Unknown ITCH message type",
                                     expert.group.MALFORMED, expert.severity.ERROR)
do
    local list = {itch_type}
    collect(list, ITCH)
    itch.fields = list
    itch.experts = {itch_bad_length, itch_unknown}
end

-- ------------------------------------------------------------------------------------------------
-- MoldUDP64
-- ------------------------------------------------------------------------------------------------

local mold = Proto("mw_mold", "MoldUDP64 (matchwire)")
local mold_len = ProtoField.uint16("mw_mold.message_length", "Message Length")
local mold_bad = ProtoExpert.new("mw_mold.bad_blocks", "MoldUDP64 message blocks do not fill the datagram",
                                 expert.group.MALFORMED, expert.severity.ERROR)
do
    local list = {mold_len}
    for _, f in ipairs(MOLD_HEADER) do list[#list + 1] = f[1] end
    mold.fields = list
    mold.experts = {mold_bad}
end

local function printable(tvb)
    for i = 0, tvb:len() - 1 do
        local b = tvb(i, 1):uint()
        if b < 32 or b > 126 then return false end
    end
    return true
end

-- "data", "heartbeat", "end", "rerequest" or nil (not MoldUDP64)
local function mold_kind(tvb)
    local len = tvb:len()
    if len < 20 then return nil end
    local count = tvb(18, 2):uint()
    if len == 20 then
        if not printable(tvb(0, 10)) then return nil end
        if count == 0 then return "heartbeat" end
        if count == 0xFFFF then return "end" end
        return "rerequest"
    end
    if count == 0 or count == 0xFFFF then return nil end
    local pos = 20
    for _ = 1, count do
        if pos + 2 > len then return nil end
        pos = pos + 2 + tvb(pos, 2):uint()
    end
    if pos ~= len then return nil end
    return "data"
end

function mold.dissector(tvb, pinfo, tree)
    local kind = mold_kind(tvb)
    pinfo.cols.protocol = "MoldUDP64"
    local len = tvb:len()
    if len < 20 then return 0 end
    local root = tree:add(mold, tvb(), "MoldUDP64")
    add_fields(root, tvb, 0, MOLD_HEADER)
    local seq = tvb(10, 8):uint64()
    local count = tvb(18, 2):uint()
    if kind == "heartbeat" then
        pinfo.cols.info = "Heartbeat, next " .. tostring(seq); return len
    elseif kind == "end" then
        pinfo.cols.info = "End of Session, next " .. tostring(seq); return len
    elseif kind == "rerequest" then
        pinfo.cols.info = "Re-request " .. count .. " from " .. tostring(seq); return len
    elseif kind == nil then
        root:add_proto_expert_info(mold_bad)
        return len
    end
    local names = {}
    local pos = 20
    for i = 1, count do
        local n = tvb(pos, 2):uint()
        root:add(mold_len, tvb(pos, 2))
        if n > 0 then
            names[#names + 1] = dissect_message(itch, ITCH, itch_type, itch_bad_length, itch_unknown, nil,
                                                tvb(pos + 2, n):tvb(), pinfo, root)
        end
        pos = pos + 2 + n
    end
    pinfo.cols.info = "seq " .. tostring(seq) .. " count " .. count .. ": " .. table.concat(names, ", ")
    return len
end

local function mold_heuristic(tvb, pinfo, tree)
    if mold_kind(tvb) == nil then return false end
    mold.dissector(tvb, pinfo, tree)
    return true
end
mold:register_heuristic("udp", mold_heuristic)
DissectorTable.get("udp.port"):add_for_decode_as(mold)

-- ------------------------------------------------------------------------------------------------
-- SoupBinTCP and OUCH 5.0
-- ------------------------------------------------------------------------------------------------

local ouch = Proto("mw_ouch", "OUCH 5.0 (matchwire)")
local ouch_type = ProtoField.string("mw_ouch.type", "Message Type")
local ouch_opt = {
    option = ProtoField.bytes("mw_ouch.option", "Appendage Option"),
    tag = ProtoField.uint8("mw_ouch.option.tag", "Tag"),
    value = ProtoField.bytes("mw_ouch.option.value", "Value"),
}
local ouch_bad_length = ProtoExpert.new("mw_ouch.bad_length", "OUCH message length differs from its layout",
                                        expert.group.MALFORMED, expert.severity.ERROR)
local ouch_unknown = ProtoExpert.new("mw_ouch.unknown_type", "Unknown OUCH message type",
                                     expert.group.MALFORMED, expert.severity.ERROR)
do
    local list = {ouch_type, ouch_opt.option, ouch_opt.tag, ouch_opt.value}
    collect(list, OUCH_IN)
    collect(list, OUCH_OUT)
    ouch.fields = list
    ouch.experts = {ouch_bad_length, ouch_unknown}
end

local soup = Proto("mw_soup", "SoupBinTCP (matchwire)")
local soup_len = ProtoField.uint16("mw_soup.length", "Packet Length")
local soup_type = ProtoField.string("mw_soup.type", "Packet Type")
local soup_text = ProtoField.string("mw_soup.text", "Text")
local soup_reason = ProtoField.string("mw_soup.reject_reason", "Reject Reason")
local soup_bad = ProtoExpert.new("mw_soup.bad_packet", "SoupBinTCP packet does not match its type",
                                 expert.group.MALFORMED, expert.severity.ERROR)
do
    local list = {soup_len, soup_type, soup_text, soup_reason}
    for _, f in ipairs(SOUP_LOGIN_REQUEST) do list[#list + 1] = f[1] end
    for _, f in ipairs(SOUP_LOGIN_ACCEPTED) do list[#list + 1] = f[1] end
    soup.fields = list
    soup.experts = {soup_bad}
end

local function soup_packet(tvb, pinfo, tree)
    local n = tvb(0, 2):uint()
    local t = tvb(2, 1):string()
    local name = SOUP_TYPES[t] or ("Unknown " .. t)
    local item = tree:add(soup, tvb(), "SoupBinTCP " .. name)
    item:add(soup_len, tvb(0, 2))
    item:add(soup_type, tvb(2, 1))
    local body = n - 1
    if t == "L" or t == "A" then
        local fields = (t == "L") and SOUP_LOGIN_REQUEST or SOUP_LOGIN_ACCEPTED
        local size = (t == "L") and SOUP_LOGIN_REQUEST_SIZE or SOUP_LOGIN_ACCEPTED_SIZE
        if body ~= size then item:add_proto_expert_info(soup_bad, name .. ": " .. body .. " bytes, expected " .. size)
        else add_fields(item, tvb, 3, fields) end
    elseif t == "J" then
        if body ~= 1 then item:add_proto_expert_info(soup_bad) else item:add(soup_reason, tvb(3, 1)) end
    elseif t == "U" or t == "S" then
        if body < 1 then item:add_proto_expert_info(soup_bad, name .. " without a message"); return name end
        local specs = (t == "U") and OUCH_IN or OUCH_OUT
        return dissect_message(ouch, specs, ouch_type, ouch_bad_length, ouch_unknown, ouch_opt,
                               tvb(3, body):tvb(), pinfo, item)
    elseif t == "+" then
        if body > 0 then item:add(soup_text, tvb(3, body)) end
    elseif SOUP_TYPES[t] == nil then
        item:add_proto_expert_info(soup_bad, "unknown packet type " .. t)
    elseif body ~= 0 then
        item:add_proto_expert_info(soup_bad, name .. " has " .. body .. " payload bytes")
    end
    return name
end

function soup.dissector(tvb, pinfo, tree)
    local len = tvb:len()
    local pos = 0
    local names = {}
    while pos < len do
        if len - pos < 2 then
            pinfo.desegment_offset = pos
            pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
            return len
        end
        local n = tvb(pos, 2):uint()
        if n < 1 then
            tree:add(soup, tvb(pos)):add_proto_expert_info(soup_bad, "packet length 0")
            return len
        end
        if len - pos < 2 + n then
            pinfo.desegment_offset = pos
            pinfo.desegment_len = 2 + n - (len - pos)
            return len
        end
        names[#names + 1] = soup_packet(tvb(pos, 2 + n):tvb(), pinfo, tree)
        pos = pos + 2 + n
    end
    pinfo.cols.protocol = "SoupBinTCP"
    pinfo.cols.info = table.concat(names, ", ")
    return pos
end

local function soup_heuristic(tvb, pinfo, tree)
    if tvb:len() < 3 then return false end
    local n = tvb(0, 2):uint()
    local t = tvb(2, 1):string()
    if n < 1 or SOUP_TYPES[t] == nil then return false end
    if (t == "U" or t == "S") then
        if n < 2 or tvb:len() < 4 then return false end
        local specs = (t == "U") and OUCH_IN or OUCH_OUT
        if specs[tvb(3, 1):uint()] == nil then return false end
    elseif t == "L" then
        if n - 1 ~= SOUP_LOGIN_REQUEST_SIZE then return false end
    elseif t == "A" then
        if n - 1 ~= SOUP_LOGIN_ACCEPTED_SIZE then return false end
    elseif t ~= "+" and t ~= "J" and n ~= 1 then
        return false
    end
    soup.dissector(tvb, pinfo, tree)
    return true
end
soup:register_heuristic("tcp", soup_heuristic)
DissectorTable.get("tcp.port"):add_for_decode_as(soup)
'''


def generate() -> str:
    """The whole Lua dissector, from the layouts."""
    out = [
        "-- matchwire.lua: Wireshark dissector for matchwire's MoldUDP64 + ITCH 5.0 + L2/L1 feeds and",
        "-- SoupBinTCP + OUCH 5.0 order entry. Generated by `python -m feeds.wireshark` from the layouts",
        "-- declared in feeds/layout.py users (feeds/itch.py, feeds/depth_layout.py, feeds/moldudp64.py,",
        "-- feeds/soupbintcp.py, feeds/ouch_layout.py): do not edit by hand.",
        "-- Use: tshark -X lua_script:matchwire.lua ... (or copy into Wireshark's personal Lua plugins).",
        "",
        "-- {ProtoField, offset, size, reader, implied decimals}",
        "local MOLD_HEADER = {",
        *_soup_rows(HEADER, "header", "mw_mold"),
        "}",
        "local ITCH = {}",
        *_table("mw_itch", "ITCH", ALL_LAYOUTS.values()),
        "local OUCH_IN = {}",
        *_table("mw_ouch", "OUCH_IN", ouch_layout.INBOUND.values(), ouch_layout.HAS_APPENDAGE),
        "local OUCH_OUT = {}",
        *_table("mw_ouch", "OUCH_OUT", ouch_layout.OUTBOUND.values(), ouch_layout.HAS_APPENDAGE),
        "local SOUP_LOGIN_REQUEST = {",
        *_soup_rows(soupbintcp.LOGIN_REQUEST_LAYOUT, "login_request"),
        "}",
        f"local SOUP_LOGIN_REQUEST_SIZE = {soupbintcp.LOGIN_REQUEST_LAYOUT.size}",
        "local SOUP_LOGIN_ACCEPTED = {",
        *_soup_rows(soupbintcp.LOGIN_ACCEPTED_LAYOUT, "login_accepted"),
        "}",
        f"local SOUP_LOGIN_ACCEPTED_SIZE = {soupbintcp.LOGIN_ACCEPTED_LAYOUT.size}",
        "local SOUP_TYPES = {",
        *(f"    [{_lua_str(t.decode('ascii'))}] = {_lua_str(name)}," for t, name in sorted(_SOUP_TYPE_NAMES.items())),
        "}",
    ]
    return "\n".join(out) + "\n" + _RUNTIME


_SOUP_TYPE_NAMES = {
    soupbintcp.DEBUG: "Debug", soupbintcp.LOGIN_ACCEPTED: "Login Accepted",
    soupbintcp.LOGIN_REJECTED: "Login Rejected", soupbintcp.SEQUENCED_DATA: "Sequenced Data",
    soupbintcp.SERVER_HEARTBEAT: "Server Heartbeat", soupbintcp.END_OF_SESSION: "End of Session",
    soupbintcp.LOGIN_REQUEST: "Login Request", soupbintcp.UNSEQUENCED_DATA: "Unsequenced Data",
    soupbintcp.CLIENT_HEARTBEAT: "Client Heartbeat", soupbintcp.LOGOUT_REQUEST: "Logout Request",
}
assert set(_SOUP_TYPE_NAMES) == soupbintcp.PACKET_TYPES


def _soup_rows(layout: Msg[Any], prefix: str, proto: str = "mw_soup") -> list[str]:
    """Rows of a SoupBinTCP payload layout (offsets from the payload; the dissector adds 3 for the
    length and type)."""
    rows = []
    for f in layout.fields:
        ctor, kind = _kind(f.code, f.name)
        label = f.name.replace("_", " ").title()
        rows.append(f"    {{ProtoField.{ctor}({_lua_str(f'{proto}.{prefix}.{f.name}')}, {_lua_str(label)}), "
                    f"{f.offset}, {f.size}, {_lua_str(kind)}, 0}},")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Write the generated dissector to ``LUA_PATH`` (or the path given)."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else LUA_PATH
    path.write_text(generate(), encoding="ascii")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
