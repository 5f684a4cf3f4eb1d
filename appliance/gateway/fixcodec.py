"""FIX tag=value codec: an encoder that computes BodyLength and CheckSum, an incremental parser.

A message on the wire::

    8=FIX.4.4|9=<body length>|35=<type>|...body fields...|10=<checksum>|      ('|' is SOH, 0x01)
              ^                ^----------- body length counts these bytes -----^
    checksum = sum of every byte before "10=" (the SOH before it included) mod 256, three digits

``FixParser.feed(chunk)`` accepts any chunking of the TCP stream and returns, in order, parsed
``FixMessage``s and ``Garbled`` frames (framed, but the checksum or the body does not add up: FIX
drops those without consuming a sequence number). A stream that does not start with
``8=FIX.4.4|9=<digits>|``, or whose ``10=nnn|`` is not where BodyLength puts it, has lost its
framing: ``FixFramingError``, and the parser stays failed. Field-level problems (a tag that is not a
number, an empty value, 35 not first) do not stop the parser: the message carries ``error`` =
(SessionRejectReason, RefTagID, text) for the session to answer with a Reject.

Data fields (RawData 96, Signature 89, XmlData 213 ...) that may contain SOH are not supported.
"""
from __future__ import annotations

import re
from typing import Final, Iterable, NamedTuple

__all__ = [
    "SOH", "BEGIN_STRING", "FixFramingError", "FixMessage", "Garbled", "FixParser", "encode",
    "checksum", "MAX_BODY_LENGTH",
]

SOH: Final = b"\x01"
BEGIN_STRING: Final = b"FIX.4.4"
MAX_BODY_LENGTH: Final = 65536

# SessionRejectReason (373) values used by the parser.
_INVALID_TAG_NUMBER: Final = 0
_REQUIRED_TAG_MISSING: Final = 1
_TAG_WITHOUT_VALUE: Final = 4
_TAG_OUT_OF_ORDER: Final = 14


class FixFramingError(ValueError):
    """The byte stream is not FIX framing; the connection cannot go on."""


class Garbled(NamedTuple):
    """A framed message that fails its checksum or body check; dropped, not answered."""

    reason: str
    raw: bytes


class FixMessage:
    """A parsed message: its fields in wire order, 8 / 9 / 10 excluded."""

    __slots__ = ("fields", "raw", "error", "_index")

    def __init__(self, fields: list[tuple[int, bytes]], raw: bytes = b"",
                 error: tuple[int, int, str] | None = None) -> None:
        self.fields = fields
        self.raw = raw
        self.error = error
        # tag -> its first value: built from the last field to the first, so the first one stays
        self._index: dict[int, bytes] = dict(reversed(fields))

    @property
    def msg_type(self) -> str | None:
        v = self._index.get(35)
        return v.decode("latin-1") if v is not None else None

    def get(self, tag: int) -> str | None:
        """The first value of ``tag`` as text, or None."""
        v = self._index.get(tag)
        return v.decode("latin-1") if v is not None else None

    def has(self, tag: int) -> bool:
        return tag in self._index

    def count(self, tag: int) -> int:
        return sum(1 for t, _ in self.fields if t == tag)

    def __repr__(self) -> str:
        return "FixMessage(" + "|".join(f"{t}={v.decode('latin-1')}" for t, v in self.fields) + ")"


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def _value(v: str | bytes | int) -> bytes:
    raw = v if isinstance(v, bytes) else str(v).encode("latin-1")
    if not raw or SOH in raw:
        raise ValueError(f"FIX: value {raw!r} is empty or contains SOH")
    return raw


_TAG_EQ: dict[int, bytes] = {}   # tag -> b"tag=" (the tags this process has written)


_TEXT_TYPES: Final = (str, int)   # values the usual message carries (bool, bytes and the rest: field by field)


def encode(msg_type: str, fields: Iterable[tuple[int, str | bytes | int]],
           begin_string: bytes = BEGIN_STRING) -> bytes:
    """A complete message: 8, 9 (computed), 35, ``fields`` in order, 10 (computed)."""
    if type(fields) is not list:
        fields = list(fields)
    # The usual message (int tags; str and int values) is formatted as text in one pass and checked
    # as a whole: one SOH per field (none inside a value) and no "=" right before an SOH (an empty
    # value; a value that ends with "=" takes the field-by-field path, which accepts it). Anything
    # else, or text that is not latin-1, is encoded field by field, which says what is wrong.
    parts = [f"{tag}={v}\x01" if type(v) in _TEXT_TYPES and type(tag) is int else None  # type: ignore[str-bytes-safe]
             for tag, v in fields]
    body: bytes | None = None
    if None not in parts:
        text = "".join(parts)  # type: ignore[arg-type]
        if text.count("\x01") == len(parts) and "=\x01" not in text:
            try:
                body = text.encode("latin-1")
            except UnicodeEncodeError:
                pass
    if body is None:
        body = _encode_fields(fields)
    body = b"35=" + msg_type.encode("latin-1") + SOH + body
    msg = b"8=%s\x019=%d\x01%s" % (begin_string, len(body), body)
    return msg + b"10=%03d\x01" % (sum(msg) & 0xFF)


def _encode_fields(fields: Iterable[tuple[int, str | bytes | int]]) -> bytes:
    """``tag=value SOH`` for each field; ValueError on an empty value or one holding SOH."""
    parts: list[bytes] = []
    append = parts.append
    tags = _TAG_EQ
    for tag, v in fields:
        t = tags.get(tag) if type(tag) is int else None
        if t is None:
            t = str(tag).encode("ascii") + b"="
            if type(tag) is int and len(tags) < 4096:
                tags[tag] = t
        tv = type(v)
        raw: bytes
        if tv is str:
            raw = v.encode("latin-1")  # type: ignore[union-attr]
        elif tv is int:
            raw = b"%d" % v  # type: ignore[str-format]
        elif tv is bytes:
            raw = v  # type: ignore[assignment]
        else:
            raw = _value(v)
        if not raw or SOH in raw:
            raise ValueError(f"FIX: value {raw!r} is empty or contains SOH")
        append(t + raw)
    append(b"")                                       # the SOH that ends the last field
    return SOH.join(parts)


# A body every field of which is well formed: a tag number not starting with 0, '=', a value
# without SOH of at least one byte, SOH (the usual message: split by one findall, no per-field checks).
_WELL_FORMED: Final = re.compile(rb"(?:[1-9][0-9]*=[^\x01]+\x01)+")
_FIELD: Final = re.compile(rb"([0-9]+)=([^\x01]*)\x01")


def _parse_body(raw: bytes, start: int, end: int) -> FixMessage:
    """Split the body raw[start:end] (which ends with SOH) into fields."""
    fields: list[tuple[int, bytes]]
    if _WELL_FORMED.fullmatch(raw, start, end):
        fields = [(int(tag), value) for tag, value in _FIELD.findall(raw, start, end)]
        if fields[0][0] == 35:
            return FixMessage(fields, raw, None)
        return FixMessage(fields, raw, (_TAG_OUT_OF_ORDER, 35, "MsgType (35) must be the third field") if any(
            t == 35 for t, _ in fields) else (_REQUIRED_TAG_MISSING, 35, "MsgType (35) missing"))
    fields = []
    error: tuple[int, int, str] | None = None
    for part in raw[start:end - 1].split(SOH):
        eq = part.find(b"=")
        tag_text = part[:eq] if eq >= 0 else part
        if eq <= 0 or not tag_text.isdigit() or tag_text[:1] == b"0":
            if error is None:
                error = (_INVALID_TAG_NUMBER, 0, f"field {part[:40]!r} has no valid tag number")
            continue
        tag = int(tag_text)
        value = part[eq + 1:]
        if not value and error is None:
            error = (_TAG_WITHOUT_VALUE, tag, f"tag {tag} has no value")
        fields.append((tag, value))
    if not fields or fields[0][0] != 35:
        if error is None:
            error = ((_TAG_OUT_OF_ORDER, 35, "MsgType (35) must be the third field") if any(
                t == 35 for t, _ in fields) else (_REQUIRED_TAG_MISSING, 35, "MsgType (35) missing"))
    return FixMessage(fields, raw, error)


class FixParser:
    """Splits a FIX byte stream into messages; owned by the connection's reading side."""

    __slots__ = ("begin_string", "max_body_length", "_buf", "_offset", "_error", "_prefix")

    def __init__(self, begin_string: bytes = BEGIN_STRING, max_body_length: int = MAX_BODY_LENGTH) -> None:
        self.begin_string = begin_string
        self.max_body_length = max_body_length
        self._buf = bytearray()
        self._offset = 0
        self._error: str | None = None
        self._prefix = b"8=" + begin_string + SOH + b"9="

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _fail(self, text: str, at: int = 0) -> FixFramingError:
        """``at``: bytes of the stream taken since ``_offset`` (where the lost message starts)."""
        self._error = f"FIX framing lost at stream offset {self._offset + at}: {text}"
        return FixFramingError(self._error)

    def feed(self, data: bytes, limit: int = 0) -> list[FixMessage | Garbled]:
        """Add bytes; return the messages (and garbled frames) now complete, in order: at most
        ``limit`` of them when it is not 0 (the bytes after them stay buffered, unexamined).

        Framing lost after some complete messages: those are returned and ``error`` says what was
        lost (the next call raises); lost before any: FixFramingError at once."""
        if self._error is not None:
            raise FixFramingError(self._error)
        out: list[FixMessage | Garbled] = []
        try:
            self._split(data, limit, out)
        except FixFramingError:
            if not out:
                raise
        return out

    @property
    def error(self) -> str | None:
        """Why the framing was lost (the parser is failed), or None."""
        return self._error

    def _split(self, data: bytes, limit: int, out: list[FixMessage | Garbled]) -> None:
        buf = self._buf
        # Nothing held back and a bytes chunk (a socket read): messages are cut from the chunk
        # itself; only an incomplete tail (or, framing lost, the rest) is kept.
        direct = not buf and type(data) is bytes
        src: bytes | bytearray = data if direct else buf
        if not direct:
            buf += data
        prefix = self._prefix
        plen = len(prefix)
        size = len(src)
        pos = 0                      # start of the next message in src
        try:
            while pos < size and not (limit and len(out) >= limit):
                n = min(size - pos, plen)
                if src[pos:pos + n] != prefix[:n]:
                    raise self._fail(f"expected {prefix.decode()!r}, got {bytes(src[pos:pos + n])!r}", pos)
                if size - pos <= plen:
                    break
                end9 = src.find(SOH, pos + plen, pos + plen + 8)
                if end9 < 0:
                    if size - pos >= plen + 8:
                        raise self._fail("BodyLength (9) is not a number of at most 7 digits", pos)
                    break
                digits = bytes(src[pos + plen:end9])
                if not digits.isdigit():
                    raise self._fail(f"BodyLength (9) {digits!r} is not a number", pos)
                length = int(digits)
                if length > self.max_body_length:
                    raise self._fail(f"BodyLength {length} exceeds {self.max_body_length}", pos)
                body_start = end9 + 1 - pos      # from here on, offsets within the message
                body_end = body_start + length
                total = body_end + 7
                if size - pos < total:
                    break
                raw = bytes(src[pos:pos + total])
                trailer = raw[body_end:]
                if trailer[:3] != b"10=" or not trailer[3:6].isdigit() or trailer[6:] != SOH:
                    raise self._fail(f"CheckSum (10) is not where BodyLength {length} puts it: {trailer!r}", pos)
                pos += total
                if checksum(raw[:body_end]) != int(trailer[3:6]):
                    out.append(Garbled(f"CheckSum {int(trailer[3:6])} != computed {checksum(raw[:body_end])}", raw))
                elif length == 0 or raw[body_end - 1:body_end] != SOH:
                    out.append(Garbled("the body does not end with SOH", raw))
                else:
                    out.append(_parse_body(raw, body_start, body_end))
        finally:   # what was taken leaves the buffer; the rest (a tail, or the lost framing) stays
            if direct:
                if pos < size:
                    buf += src[pos:]
            elif pos:
                del buf[:pos]
            self._offset += pos
