"""The feed store: every published message of a channel session, in order, indexed by sequence.

The retransmission server reads messages N..M from here; the publisher appends each batch right
after sending it. One pair of files per MoldUDP64 session (all integers little-endian)::

    <session>.feed   header, then message blocks back to back (the MoldUDP64 block layout)
    +----------+---------+---------+------------+----------+----------------------------//--+
    |  magic   | version | hdr len |  session   | reserved | len u16 BE | message | len | ...  |
    | 8 bytes  |   u16   |   u16   |  10 alpha  | 10 bytes | (block of message seq 1, 2, ...)  |
    +----------+---------+---------+------------+----------+----------------------------//--+
      0          8         10        12           22         32

    <session>.idx    one 16-byte entry per appended datagram (a sparse index)
    +--------------------------+--------------------------+
    | first sequence u64       | offset in .feed u64      |   of the datagram's first block
    +--------------------------+--------------------------+

Reading message N: binary search of the index for the last entry with first sequence <= N, then a
walk over at most one datagram's blocks. On open the index is checked against the data file and
its tail is rebuilt by walking the blocks after the last good entry; a torn last block (the
process died inside a write) is cut off.

Durability: the store is NOT fsynced, not even before the send. Everything in it is regenerable:
the publisher's messages and sequence numbers are a pure function of the WAL, which is committed
before anything is published (feeds/publisher.py). After a crash the publisher regenerates the
session from the WAL, skips what the store holds and sends (and stores) the rest. If the OS lost
part of the store, the publisher sends those messages again: a receiver drops them as duplicates.

Owned by one thread per process: the publisher appends; a reader (``FeedStore.open_reader``) in
another process calls ``refresh()`` to see newer appends.
"""
from __future__ import annotations

import os
import struct
from array import array
from bisect import bisect_right
from typing import Final

from feeds.moldudp64 import BLOCK_LENGTH, BLOCK_LENGTH_SIZE
from feeds.moldudp64 import HEADER_SIZE as MOLD_HEADER_SIZE

__all__ = ["FeedStore", "StoreError", "FILE_MAGIC", "FILE_HEADER_SIZE", "INDEX_ENTRY"]

FILE_MAGIC: Final = b"MWFEED\x00\x01"
FILE_VERSION: Final = 1
FILE_HEADER: Final = struct.Struct("<8sHH10s10x")
FILE_HEADER_SIZE: Final = FILE_HEADER.size  # 32
INDEX_ENTRY: Final = struct.Struct("<QQ")
_U16BE: Final = BLOCK_LENGTH   # each message's u16 length prefix, as in a MoldUDP64 packet
_U16BE_FROM = _U16BE.unpack_from


class StoreError(Exception):
    """A store file that cannot be read as one (wrong magic, another session)."""


class FeedStore:
    """Owned by the publishing thread (or, read-only, by a reader): one channel session's store,
    ``<dir>/<session>.feed`` and ``.idx``.

    Sequence numbers start at 1; ``count`` is the number of messages held (the last sequence).
    """

    def __init__(self, directory: str, session: bytes, *, writable: bool = True, name: str = "",
                 mode: int = 0o644) -> None:
        if len(session) != 10:
            raise ValueError(f"feed store: session {session!r} is not 10 bytes")
        self.directory = directory
        self.session = session
        self.writable = writable
        name = name or session.decode("ascii").strip() or "session"
        self.data_path = os.path.join(directory, name + ".feed")
        self.index_path = os.path.join(directory, name + ".idx")
        self._seqs = array("Q")      # first sequence of each indexed datagram
        self._offs = array("Q")      # its offset in the data file
        self.count = 0
        self.size = FILE_HEADER_SIZE  # bytes of the data file that hold whole blocks
        self._notes: list[str] = []
        if writable:
            os.makedirs(directory, exist_ok=True)
            flags = os.O_RDWR | os.O_CREAT
            self._data_fd = os.open(self.data_path, flags, mode)
            self._index_fd = os.open(self.index_path, flags, mode)
            if os.fstat(self._data_fd).st_size == 0:
                os.write(self._data_fd, FILE_HEADER.pack(FILE_MAGIC, FILE_VERSION, FILE_HEADER_SIZE, session))
                os.ftruncate(self._index_fd, 0)
        else:
            self._data_fd = os.open(self.data_path, os.O_RDONLY)
            self._index_fd = os.open(self.index_path, os.O_RDONLY) if os.path.exists(self.index_path) else -1
        self._load()

    @classmethod
    def open_reader(cls, directory: str, session: bytes) -> FeedStore:
        """A read-only view (another process); ``refresh()`` picks up newer appends."""
        return cls(directory, session, writable=False)

    @property
    def notes(self) -> list[str]:
        """What opening repaired (a torn tail cut, index entries rebuilt)."""
        return list(self._notes)

    # -- opening ------------------------------------------------------------------------------
    def _load(self) -> None:
        head = os.pread(self._data_fd, FILE_HEADER_SIZE, 0)
        if len(head) < FILE_HEADER_SIZE:
            raise StoreError(f"{self.data_path}: {len(head)} bytes, no {FILE_HEADER_SIZE}-byte header")
        magic, version, hsize, session = FILE_HEADER.unpack(head)
        if magic != FILE_MAGIC or version != FILE_VERSION or hsize != FILE_HEADER_SIZE:
            raise StoreError(f"{self.data_path}: not a matchwire feed store (version {FILE_VERSION})")
        if session != self.session:
            raise StoreError(f"{self.data_path}: holds session {session!r}, not {self.session!r}")
        self.refresh()

    def refresh(self) -> int:
        """Read index entries and blocks appended since the last look; return the new count.

        The index is sparse and may lag the data (it is written second): the blocks after the last
        entry are walked. Entries that do not continue the chain or point past the data are
        ignored (and cut from a writable store), and so is a torn last block.
        """
        file_size = os.fstat(self._data_fd).st_size
        seqs, offs = self._seqs, self._offs
        if self._index_fd >= 0:
            have = len(seqs) * INDEX_ENTRY.size
            raw = os.pread(self._index_fd, max(0, os.fstat(self._index_fd).st_size - have), have)
            raw = raw[: len(raw) - len(raw) % INDEX_ENTRY.size]
            for seq, off in INDEX_ENTRY.iter_unpack(raw):
                if seqs:
                    ok = seq > seqs[-1] and off > offs[-1]
                else:
                    ok = seq == 1 and off == FILE_HEADER_SIZE
                if not ok or off >= file_size:
                    if self.writable:
                        self._notes.append(f"{self.index_path}: dropped index entries from seq {seq}")
                    break
                seqs.append(seq)
                offs.append(off)
        base_seq, base_off = (seqs[-1], offs[-1]) if seqs else (1, FILE_HEADER_SIZE)
        n, end = self._walk(base_off, file_size)
        self.count = base_seq - 1 + n
        self.size = end
        if self.writable:
            if end < file_size:
                self._notes.append(f"{self.data_path}: cut {file_size - end} bytes of a torn block at offset {end}")
                os.ftruncate(self._data_fd, end)
            want = len(seqs) * INDEX_ENTRY.size
            if os.fstat(self._index_fd).st_size != want:
                os.ftruncate(self._index_fd, want)
        return self.count

    def _walk(self, off: int, end: int) -> tuple[int, int]:
        """Count the whole blocks from ``off`` up to ``end``; return (n, offset after the last)."""
        n = 0
        chunk = os.pread(self._data_fd, end - off, off) if end > off else b""
        pos = 0
        size = len(chunk)
        lb = BLOCK_LENGTH_SIZE
        while pos + lb <= size:
            (length,) = _U16BE_FROM(chunk, pos)
            if not length or pos + lb + length > size:
                break
            pos += lb + length
            n += 1
        return n, off + pos

    # -- appending ----------------------------------------------------------------------------
    def append_packets(self, packets: list[bytes]) -> None:
        """Append the messages of MoldUDP64 datagrams whose sequence continues the store's: one
        write of their blocks, then one write of their index entries."""
        if not packets:
            return
        pack = INDEX_ENTRY.pack
        entries: list[bytes] = []
        firsts: list[int] = []
        offsets: list[int] = []
        off = self.size
        count = self.count
        for p in packets:
            (first,) = _SEQ_FROM(p, 10)
            if first != count + 1:
                raise ValueError(f"feed store {self.session!r}: datagram at seq {first}, the store holds {count}")
            firsts.append(first)
            offsets.append(off)
            entries.append(pack(first, off))
            count += _COUNT_FROM(p, 18)[0]
            off += len(p) - MOLD_HEADER_SIZE
        self._write(self._data_fd, b"".join([memoryview(p)[MOLD_HEADER_SIZE:] for p in packets]), self.size)
        self._write(self._index_fd, b"".join(entries), len(self._seqs) * INDEX_ENTRY.size)
        self._seqs.extend(firsts)
        self._offs.extend(offsets)
        self.count = count
        self.size = off

    @staticmethod
    def _write(fd: int, data: bytes, at: int) -> None:
        n = os.pwrite(fd, data, at)
        if n != len(data):
            raise OSError(f"feed store: short write ({n} of {len(data)} bytes)")

    def append_messages(self, messages: list[bytes]) -> None:
        """Append bare messages (tools, tests, session copies); one index entry for them all."""
        if not messages:
            return
        blob = b"".join(_U16BE.pack(len(m)) + m for m in messages)
        self._seqs.append(self.count + 1)
        self._offs.append(self.size)
        self._write(self._data_fd, blob, self.size)
        self._write(self._index_fd, INDEX_ENTRY.pack(self.count + 1, self.size),
                    (len(self._seqs) - 1) * INDEX_ENTRY.size)
        self.count += len(messages)
        self.size += len(blob)

    # -- reading ------------------------------------------------------------------------------
    def read(self, first: int, count: int) -> list[bytes]:
        """Messages ``first`` .. ``first + count - 1`` inclusive (fewer if the store ends sooner)."""
        if first < 1 or count < 1 or first > self.count:
            return []
        last = min(self.count, first + count - 1)
        seqs, offs = self._seqs, self._offs
        i = bisect_right(seqs, first) - 1
        seq, off = (seqs[i], offs[i]) if i >= 0 else (1, FILE_HEADER_SIZE)
        j = bisect_right(seqs, last)
        end = offs[j] if j < len(seqs) else self.size
        chunk = os.pread(self._data_fd, end - off, off)
        out: list[bytes] = []
        pos = 0
        lb = BLOCK_LENGTH_SIZE
        while seq <= last:
            (length,) = _U16BE_FROM(chunk, pos)
            if seq >= first:
                out.append(chunk[pos + lb: pos + lb + length])
            pos += lb + length
            seq += 1
        return out

    def read_blocks(self, first: int, count: int) -> bytes:
        """Like ``read`` but the ``u16 length + message`` blocks as one buffer (for packing)."""
        return b"".join(_U16BE.pack(len(m)) + m for m in self.read(first, count))

    def read_raw(self, first: int, count: int) -> bytes:
        """The stored ``u16 length + message`` blocks of messages ``first`` .. ``first + count - 1``
        inclusive, back to back, exactly as in the file (fewer if the store ends sooner; b"" if
        ``first`` is past the end). One pread of the span; only the first and the last indexed
        datagram are walked, so a long range costs no Python work per message (the retransmission
        servers' read)."""
        if first < 1 or count < 1 or first > self.count:
            return b""
        last = min(self.count, first + count - 1)
        seqs, offs = self._seqs, self._offs
        i = bisect_right(seqs, first) - 1
        seq, off = (seqs[i], offs[i]) if i >= 0 else (1, FILE_HEADER_SIZE)
        j = bisect_right(seqs, last) - 1
        end = offs[j + 1] if j + 1 < len(seqs) else self.size
        chunk = os.pread(self._data_fd, end - off, off)
        pos = 0
        lb = BLOCK_LENGTH_SIZE
        while seq < first:
            pos += lb + _U16BE_FROM(chunk, pos)[0]
            seq += 1
        if j > i:     # walk the last datagram from its own index entry
            seq, stop = seqs[j], offs[j] - off
        else:
            stop = pos
        while seq <= last:
            stop += lb + _U16BE_FROM(chunk, stop)[0]
            seq += 1
        return chunk[pos:stop]

    def last_message(self) -> bytes | None:
        return self.read(self.count, 1)[0] if self.count else None

    def close(self) -> None:
        for fd in (self._data_fd, self._index_fd):
            if fd >= 0:
                os.close(fd)
        self._data_fd = self._index_fd = -1

    def __enter__(self) -> FeedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeedStore({self.session!r}, count={self.count}, {self.data_path})"


_SEQ = struct.Struct(">Q")
_SEQ_FROM = _SEQ.unpack_from
_COUNT = struct.Struct(">H")
_COUNT_FROM = _COUNT.unpack_from
