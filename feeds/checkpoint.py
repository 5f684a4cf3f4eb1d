"""The feed checkpoint file's layout: a typed msgspec Struct, written and read as JSON.

``{store}/CHECKPOINT-<seq:012d>.json``, written by feeds.publisher.write_checkpoint with each
snapshot, is what Publisher.checkpoint returns: the channels' sessions and next sequence numbers
and the L2/L1 encoders' and the order tracker's state, so that a restart resumes the feed after
the snapshot instead of replaying the day. The envelope is typed here; the parts' insides
(``tracker``, ``l2``, ``l1``) are feeds.channels' to say, and ``extra`` the caller's.

The bytes are compact JSON in the field order below, the same as the standard library's
``json.dumps(ckpt, separators=(",", ":"))`` of the publisher's dict: a checkpoint written before
msgspec read it is read as it was.
"""
from __future__ import annotations

from typing import Any, Final

import msgspec


class ChannelPosition(msgspec.Struct, frozen=True):
    session: str       # the MoldUDP64 session (10 ASCII characters)
    next_seq: int      # the sequence number of the channel's next message


class Checkpoint(msgspec.Struct, frozen=True, omit_defaults=True):
    format: str
    seq: int                                   # the WAL seq everything was published through
    day: str
    channels: dict[str, ChannelPosition]
    tracker: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET   # absent: no L2/L1 channel
    l2: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    l1: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    extra: dict[str, Any] = {}


_ENCODE: Final = msgspec.json.Encoder().encode
_DECODE: Final = msgspec.json.Decoder(Checkpoint).decode


def encode(ckpt: dict[str, Any]) -> bytes:
    """The file's bytes of a checkpoint dict (Publisher.checkpoint's); msgspec.ValidationError if
    it is not one."""
    return _ENCODE(msgspec.convert(ckpt, Checkpoint))


def decode(data: bytes) -> dict[str, Any]:
    """The checkpoint dict of a file's bytes. msgspec.ValidationError: JSON, but not of this shape;
    msgspec.DecodeError (its base class): not JSON (a torn file)."""
    c = _DECODE(data)
    out = {k: v for k, v in msgspec.structs.asdict(c).items() if v is not msgspec.UNSET}
    # the typed parts back to plain dicts; the untyped ones were decoded as plain lists and dicts
    out["channels"] = {name: msgspec.structs.asdict(p) for name, p in c.channels.items()}
    return out
