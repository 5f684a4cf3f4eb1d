"""The gateway's outbound stores: a session's sequenced messages of the day, on file, by sequence.

Owned by the gateway's event loop. One store per session: the OUCH session's sequenced stream
(replayed to a client that logs in again with SoupBinTCP) and the FIX session's sent messages
(resent on ResendRequest). The files are the feed store's (feeds/store.py: the same header, the
same ``u16 BE length | message`` blocks, the same 16-byte index entries), with one difference: the
index holds one entry per message, so entry N-1 (at byte 16 * (N - 1)) says where message N starts
and nothing of the index is kept in memory::

    <name>.feed   header (magic, version, 10-byte label) | len | msg 1 | len | msg 2 | ...
    <name>.idx    (1, offset of msg 1) (2, offset of msg 2) ...   16 bytes each, u64 LE pairs

Reading message N is two ``pread`` calls (its entry and its bytes), a range three; what a
session holds in memory is the messages appended since the last ``flush`` and a small read-ahead
window, whatever the length of the day.

Commit: the shell appends, then ``flush()`` writes the new blocks and their entries (one ``pwrite``
each) before it writes the journal record that counts them (appliance/gateway/journal.py). At
start-up ``truncate(count)`` cuts a store back to the count of the last journal mark, so that a
crash between the two writes leaves nothing the sessions do not know of. Like the feed store,
nothing here is fsynced: the files survive a crash of the process, not of the host.
"""
from __future__ import annotations

import os
from typing import Final, Iterable, Iterator

from feeds.moldudp64 import BLOCK_LENGTH, BLOCK_LENGTH_SIZE
from feeds.store import FILE_HEADER_SIZE, INDEX_ENTRY, FeedStore

__all__ = ["MessageStore", "FixSentStore", "STORE_MODE"]

STORE_MODE: Final = 0o600           # private to the service's user
READ_AHEAD: Final = 256             # messages read at once by get() and iteration
_ENTRY: Final = INDEX_ENTRY.size    # 16
_MAX_MESSAGE: Final = 0xFFFF
_BLOCK_LENGTH: Final = BLOCK_LENGTH.pack     # a block's u16 BE length
_INDEX_ENTRY: Final = INDEX_ENTRY.pack


class MessageStore(FeedStore):
    """One session's outbound messages, sequence 1 upward, on file with a dense index (see the
    module doc). Owned by the gateway's event loop. ``len(store)`` counts the messages appended,
    flushed or not; ``count`` the ones on file."""

    def __init__(self, directory: str, label: bytes, name: str) -> None:
        self.pending: list[bytes] = []      # appended, not yet on file (the next flush writes them)
        self._cache_first = 0
        self._cache: list[bytes] = []
        super().__init__(directory, label, name=name, mode=STORE_MODE)

    # -- opening: the index is checked against the data, its tail rebuilt, nothing kept in memory --
    def refresh(self) -> int:
        data_size = os.fstat(self._data_fd).st_size
        n = os.fstat(self._index_fd).st_size // _ENTRY
        base_seq, base_off = 1, FILE_HEADER_SIZE
        while n:   # the last entry that continues the chain and points inside the data
            seq, off = INDEX_ENTRY.unpack(os.pread(self._index_fd, _ENTRY, (n - 1) * _ENTRY))
            if seq == n and FILE_HEADER_SIZE <= off < data_size:
                base_seq, base_off = n, off
                break
            n -= 1
            self._notes.append(f"{self.index_path}: dropped index entry {n + 1}")
        walked, end, offsets = self._walk_offsets(base_off, data_size)
        self.count = base_seq - 1 + walked
        self.size = end
        if end < data_size:
            self._notes.append(f"{self.data_path}: cut {data_size - end} bytes of a torn block at offset {end}")
            os.ftruncate(self._data_fd, end)
        n = min(n, self.count)
        os.ftruncate(self._index_fd, n * _ENTRY)
        missing = offsets[(1 if n else 0):]          # blocks after the last good entry
        if missing:
            first = n + 1
            self._write(self._index_fd, b"".join(INDEX_ENTRY.pack(first + i, off) for i, off in enumerate(missing)),
                        n * _ENTRY)
            self._notes.append(f"{self.index_path}: rebuilt {len(missing)} entries from seq {first}")
        return self.count

    def _walk_offsets(self, off: int, end: int) -> tuple[int, int, list[int]]:
        """The whole blocks from ``off`` to ``end``: (how many, the offset after the last, their offsets).
        Only a tail that lost its index entries is walked (a crash between the two writes)."""
        chunk = os.pread(self._data_fd, end - off, off) if end > off else b""
        pos, size = 0, len(chunk)
        offsets: list[int] = []
        lb = BLOCK_LENGTH_SIZE
        while pos + lb <= size:
            length = (chunk[pos] << 8) | chunk[pos + 1]
            if not length or pos + lb + length > size:
                break
            offsets.append(off + pos)
            pos += lb + length
        return len(offsets), off + pos, offsets

    # -- appending -------------------------------------------------------------------------------
    def append(self, msg: bytes) -> None:
        """Append the next message (sequence ``len(self) + 1``); on file at the next ``flush``."""
        if not 0 < len(msg) <= _MAX_MESSAGE:
            raise ValueError(f"message store {self.data_path}: a message of {len(msg)} bytes")
        self.pending.append(msg)

    def flush(self) -> int:
        """Write the appended messages (blocks, then their index entries); return how many."""
        pending = self.pending
        if not pending:
            return 0
        self.pending = []
        if len(pending) == 1:   # one reply since the last flush (the usual order): the two writes here
            m = pending[0]
            off = self.size
            n = len(m)
            block = _BLOCK_LENGTH(n) + m
            entry = _INDEX_ENTRY(self.count + 1, off)
            if os.pwrite(self._data_fd, block, off) != n + BLOCK_LENGTH_SIZE or \
                    os.pwrite(self._index_fd, entry, self.count * _ENTRY) != _ENTRY:
                raise OSError(f"message store {self.data_path}: short write")
            self.count += 1
            self.size = off + BLOCK_LENGTH_SIZE + n
            return 1
        self.append_messages(pending)
        return len(pending)

    def append_messages(self, messages: list[bytes]) -> None:
        if not messages:
            return
        off = self.size
        blocks: list[bytes] = []
        entries: list[bytes] = []
        seq = self.count
        for m in messages:
            seq += 1
            blocks.append(len(m).to_bytes(BLOCK_LENGTH_SIZE, "big"))
            blocks.append(m)
            entries.append(INDEX_ENTRY.pack(seq, off))
            off += BLOCK_LENGTH_SIZE + len(m)
        self._write(self._data_fd, b"".join(blocks), self.size)
        self._write(self._index_fd, b"".join(entries), self.count * _ENTRY)
        self.count = seq
        self.size = off

    def append_packets(self, packets: list[bytes]) -> None:
        raise NotImplementedError("a message store is appended message by message")

    def truncate(self, count: int) -> None:
        """Keep messages 1 .. ``count`` (pending ones included); cut the rest from the files."""
        total = len(self)
        if count >= total:
            return
        if count >= self.count:
            del self.pending[count - self.count:]
            return
        self.pending = []
        self._cache = []
        off = self._offset(count + 1)
        os.ftruncate(self._data_fd, off)
        os.ftruncate(self._index_fd, count * _ENTRY)
        self.count = count
        self.size = off

    def clear(self) -> None:
        self.truncate(0)

    # -- reading ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.count + len(self.pending)

    def _offset(self, seq: int) -> int:
        """Where message ``seq`` (1 .. count + 1) starts in the data file."""
        if seq > self.count:
            return self.size
        off: int = INDEX_ENTRY.unpack(os.pread(self._index_fd, _ENTRY, (seq - 1) * _ENTRY))[1]
        return off

    def read(self, first: int, count: int) -> list[bytes]:
        """Messages ``first`` .. ``first + count - 1`` inclusive on file or pending (fewer if the
        store ends sooner)."""
        if first < 1 or count < 1 or first > len(self):
            return []
        last = min(len(self), first + count - 1)
        out: list[bytes] = []
        if first <= self.count:
            file_last = min(last, self.count)
            start = self._offset(first)
            chunk = os.pread(self._data_fd, self._offset(file_last + 1) - start, start)
            pos = 0
            lb = BLOCK_LENGTH_SIZE
            for _ in range(file_last - first + 1):
                length = (chunk[pos] << 8) | chunk[pos + 1]
                out.append(chunk[pos + lb:pos + lb + length])
                pos += lb + length
        if last > self.count:
            out.extend(self.pending[max(first, self.count + 1) - self.count - 1:last - self.count])
        return out

    def read_raw(self, first: int, count: int) -> bytes:
        return b"".join(len(m).to_bytes(BLOCK_LENGTH_SIZE, "big") + m for m in self.read(first, count))

    def get(self, seq: int) -> bytes | None:
        """Message ``seq``, or None if the store does not hold it (reads ahead READ_AHEAD messages)."""
        if seq < 1 or seq > len(self):
            return None
        if seq > self.count:
            return self.pending[seq - self.count - 1]
        i = seq - self._cache_first
        if not 0 <= i < len(self._cache):
            self._cache = self.read(seq, min(READ_AHEAD, self.count - seq + 1))
            self._cache_first = seq
            i = 0
        return self._cache[i]

    def iter_from(self, first: int) -> Iterator[bytes]:
        """Messages ``first`` .. the last (as of each step), READ_AHEAD at a time."""
        seq = max(1, first)
        while seq <= len(self):
            chunk = self.read(seq, READ_AHEAD)
            yield from chunk
            seq += len(chunk)

    def __iter__(self) -> Iterator[bytes]:
        return self.iter_from(1)

    def __getitem__(self, index: slice) -> Iterable[bytes]:
        """``store[i:]`` (read lazily) or ``store[i:j]``: the messages a list's slice would give."""
        if not isinstance(index, slice) or index.step is not None or (index.start or 0) < 0:
            raise TypeError("a message store is read as store[i:], store[i:j] or by get(seq)")
        start = index.start or 0
        if index.stop is None:
            return self.iter_from(start + 1)
        return self.read(start + 1, index.stop - start) if index.stop > start else []

    def memory_bytes(self) -> int:
        """What the store holds in memory beyond its fixed fields: pending and read-ahead messages."""
        return sum(len(m) for m in self.pending) + sum(len(m) for m in self._cache)

    def __repr__(self) -> str:
        return f"MessageStore({self.data_path}, count={self.count}, pending={len(self.pending)})"


class FixSentStore:
    """A FIX session's sent messages by MsgSeqNum (what ``FixSessionState.sent`` is in the gateway):
    the message store with the session's text (latin-1) in and out. Owned by the event loop."""

    __slots__ = ("store",)

    def __init__(self, store: MessageStore) -> None:
        self.store = store

    def __setitem__(self, seq: int, raw: str) -> None:
        if seq != len(self.store) + 1:
            raise ValueError(f"FIX store {self.store.data_path}: MsgSeqNum {seq} does not follow {len(self.store)}")
        self.store.append(raw.encode("latin-1"))

    def get(self, seq: int, default: str | None = None) -> str | None:
        m = self.store.get(seq)
        return default if m is None else m.decode("latin-1")

    def __contains__(self, seq: object) -> bool:
        return isinstance(seq, int) and 1 <= seq <= len(self.store)

    def __len__(self) -> int:
        return len(self.store)

    def clear(self) -> None:
        self.store.clear()

    def items(self) -> Iterator[tuple[int, str]]:
        for i, m in enumerate(self.store, 1):
            yield i, m.decode("latin-1")
