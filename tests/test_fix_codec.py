"""The FIX tag=value codec against simplefix: what one encodes the other reads, any chunking."""
from __future__ import annotations

import random

import pytest
import simplefix

from appliance.gateway.fixcodec import FixFramingError, FixMessage, FixParser, Garbled, checksum, encode


def simple(msg_type: str, pairs: list[tuple[int, str]]) -> bytes:
    m = simplefix.FixMessage()
    m.append_pair(8, "FIX.4.4", header=True)
    m.append_pair(35, msg_type, header=True)
    for tag, value in pairs:
        m.append_pair(tag, value)
    return bytes(m.encode())


PAIRS = [(49, "CLIENT"), (56, "VENUE"), (34, "12"), (52, "20240131-14:05:09.123"), (11, "ORD-1"),
         (55, "AAPL"), (54, "1"), (38, "100"), (40, "2"), (44, "150.10")]


def test_encoder_matches_simplefix() -> None:
    assert encode("D", PAIRS) == simple("D", PAIRS)
    raw = encode("0", [(49, "A"), (56, "B"), (34, 1), (52, "x")])
    body_len = int(raw.split(b"\x01")[1][2:])
    assert body_len == len(raw) - raw.index(b"35=") - 7
    assert int(raw[-4:-1]) == checksum(raw[:-7])


def test_encoder_refuses_soh_and_empty_values() -> None:
    with pytest.raises(ValueError):
        encode("D", [(58, "a\x01b")])
    with pytest.raises(ValueError):
        encode("D", [(58, "")])


@pytest.mark.parametrize("chunk", [1, 2, 7, 1000])
def test_parser_any_chunking(chunk: int) -> None:
    stream = simple("D", PAIRS) + simple("0", PAIRS[:4]) + simple("1", PAIRS[:4] + [(112, "T1")])
    parser = FixParser()
    got: list[FixMessage | Garbled] = []
    for i in range(0, len(stream), chunk):
        got += parser.feed(stream[i:i + chunk])
    assert parser.buffered == 0
    assert [m.msg_type for m in got if isinstance(m, FixMessage)] == ["D", "0", "1"]
    first = got[0]
    assert isinstance(first, FixMessage) and first.error is None
    assert first.get(44) == "150.10" and first.get(11) == "ORD-1" and first.get(999) is None
    assert first.raw == simple("D", PAIRS)


def test_bad_checksum_is_garbled_and_parsing_goes_on() -> None:
    good = simple("0", PAIRS[:4])
    bad = good[:-4] + (b"%03d" % ((int(good[-4:-1]) + 1) % 256)) + b"\x01"
    items = FixParser().feed(bad + good)
    assert isinstance(items[0], Garbled) and "CheckSum" in items[0].reason
    assert isinstance(items[1], FixMessage) and items[1].msg_type == "0"


@pytest.mark.parametrize("garbage", [
    b"hello world\r\n",
    b"8=FIX.4.2\x019=5\x01",
    b"8=FIX.4.4\x019=abc\x01",
    b"8=FIX.4.4\x019=123456789",
    b"8=FIX.4.4\x019=5\x0135=0\x01XXXXXXXXXX",   # 10= not where 9 says
])
def test_garbage_raises_and_stays_failed(garbage: bytes) -> None:
    parser = FixParser()
    with pytest.raises(FixFramingError) as exc:
        parser.feed(garbage)
    assert "FIX framing lost" in str(exc.value)
    with pytest.raises(FixFramingError):
        parser.feed(simple("0", PAIRS[:4]))


def test_field_errors_are_reported_not_raised() -> None:
    raw = encode("D", [(49, "C"), (34, 2)])
    bad_tag = raw.replace(b"49=C", b"4x=C")
    fixed = bad_tag[:-7] + b"10=%03d\x01" % checksum(bad_tag[:-7])
    (m,) = FixParser().feed(fixed)
    assert isinstance(m, FixMessage) and m.error is not None and m.error[0] == 0
    empty = encode("D", [(49, "C")]).replace(b"49=C", b"49=")
    body = empty[:-7]
    head, rest = body.split(b"\x019=", 1)
    rest = rest.split(b"\x01", 1)[1]
    rebuilt = head + b"\x019=" + str(len(rest)).encode() + b"\x01" + rest
    rebuilt += b"10=%03d\x01" % checksum(rebuilt)
    (m,) = FixParser().feed(rebuilt)
    assert isinstance(m, FixMessage) and m.error == (4, 49, "tag 49 has no value")


def test_random_bytes_never_escape_as_other_errors() -> None:
    rnd = random.Random(3)
    base = simple("D", PAIRS) * 3
    for _ in range(300):
        blob = bytearray(base)
        for _ in range(rnd.randrange(1, 5)):
            blob[rnd.randrange(len(blob))] = rnd.randrange(256)
        parser = FixParser()
        try:
            for i in range(0, len(blob), 13):
                parser.feed(bytes(blob[i:i + 13]))
        except FixFramingError:
            pass


def test_messages_before_lost_framing_are_returned_then_the_parser_stays_failed() -> None:
    good = encode("A", [(49, "C"), (56, "V"), (34, 1), (98, 0), (108, 30)])
    p = FixParser()
    items = p.feed(good + b"8=FIX.4.4\x019=12\x01this is not FIX at all\x01")
    assert len(items) == 1 and isinstance(items[0], FixMessage) and items[0].msg_type == "A"
    assert p.error is not None and "framing lost" in p.error
    with pytest.raises(FixFramingError):
        p.feed(b"")
    with pytest.raises(FixFramingError):
        FixParser().feed(b"garbage garbage")
    # limit: the first message only, the rest unexamined
    assert len(FixParser().feed(good + b"junk junk junk", limit=1)) == 1


def _framed(body: bytes) -> bytes:
    msg = b"8=FIX.4.4\x019=%d\x01" % len(body) + body
    return msg + b"10=%03d\x01" % checksum(msg)


def _fields_one_by_one(body: bytes) -> tuple[list[tuple[int, bytes]], tuple[int, int, str] | None]:
    """The parser's field rules, applied field by field (the reference for any body)."""
    fields: list[tuple[int, bytes]] = []
    error: tuple[int, int, str] | None = None
    for part in body[:-1].split(b"\x01"):
        tag_text, eq, value = part.partition(b"=")
        if not eq or not tag_text or not tag_text.isdigit() or tag_text.startswith(b"0"):
            error = error or (0, 0, f"field {part[:40]!r} has no valid tag number")
            continue
        if not value:
            error = error or (4, int(tag_text), f"tag {int(tag_text)} has no value")
        fields.append((int(tag_text), value))
    if error is None and (not fields or fields[0][0] != 35):
        error = ((14, 35, "MsgType (35) must be the third field") if any(t == 35 for t, _ in fields)
                 else (1, 35, "MsgType (35) missing"))
    return fields, error


def test_well_formed_and_malformed_bodies_split_by_the_same_rules() -> None:
    """A well-formed body is split in one pass, any other field by field: both give the fields in
    wire order (a value may hold '='), the first value of a repeated tag, and the first error."""
    pieces = [b"35=D", b"35=8", b"11=ORD-1", b"58=a=b", b"44=150.10", b"9999=v", b"55=\xe9", b"0=x",
              b"01=x", b"=x", b"x=1", b"44=", b"1\xb2=3", b"abc", b"", b"11=again"]
    rnd = random.Random(11)
    well_formed = 0
    for _ in range(3000):
        body = b"\x01".join(rnd.choice(pieces) for _ in range(rnd.randrange(1, 7))) + b"\x01"
        (m,) = FixParser().feed(_framed(body))
        assert isinstance(m, FixMessage)
        fields, error = _fields_one_by_one(body)
        assert (m.fields, m.error) == (fields, error), body
        for tag, value in fields:
            assert m.get(tag) == next(v for t, v in fields if t == tag).decode("latin-1")
        well_formed += error is None
    assert well_formed > 50


def test_reads_of_whole_messages_and_tails_keep_the_stream_offset() -> None:
    """A read taken straight from its bytes (nothing held back) and one appended to a held tail:
    same messages, only the incomplete tail kept, and a lost framing reported at its stream offset."""
    one = simple("0", PAIRS[:4])
    two = simple("D", PAIRS)
    p = FixParser()
    assert [m.msg_type for m in p.feed(one) if isinstance(m, FixMessage)] == ["0"]
    assert p.buffered == 0
    got = p.feed(two + one[:10])                 # a whole message and the start of the next
    assert [m.msg_type for m in got if isinstance(m, FixMessage)] == ["D"] and p.buffered == 10
    got = p.feed(one[10:] + one)                 # the tail completed, then one more whole
    assert [m.msg_type for m in got if isinstance(m, FixMessage)] == ["0", "0"] and p.buffered == 0
    at = 3 * len(one) + len(two)
    got = p.feed(one + b"8=FIX.4.2\x01")          # a message, then not FIX
    assert len(got) == 1 and p.error is not None
    assert f"stream offset {at + len(one)}:" in p.error
    assert p.buffered == len(b"8=FIX.4.2\x01")


def test_encode_as_text_and_field_by_field_agree() -> None:
    """The usual message is formatted as text at once; a value that is empty, holds SOH, ends
    with '=' or is not str/int goes field by field: same bytes, or the same refusal."""
    from appliance.gateway.fixcodec import _encode_fields
    values: list[str | bytes | int] = ["ALFA", "150.25", "a=", "==x", "é", b"raw", 0, -5, 12345678901234, True]
    rnd = random.Random(17)
    for _ in range(2000):
        fields = [(rnd.choice([11, 38, 44, 58, 9999]), rnd.choice(values)) for _ in range(rnd.randrange(0, 8))]
        body = b"35=8\x01" + _encode_fields(fields)
        head = b"8=FIX.4.4\x019=%d\x01" % len(body)
        assert encode("8", fields) == head + body + b"10=%03d\x01" % checksum(head + body)
        assert encode("8", iter(fields)) == encode("8", fields)
    assert b"\x0158=a=\x01" in encode("8", [(58, "a=")])
    assert b"\x0143=True\x01" in encode("8", [(43, True)])      # not an int: str(value), as before
    for bad in ("", "a\x01b", b"", b"\x01"):
        with pytest.raises(ValueError, match="empty or contains SOH"):
            encode("8", [(11, "ok"), (58, bad)])
    with pytest.raises(UnicodeEncodeError):
        encode("8", [(58, "€")])
