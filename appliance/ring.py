"""A bounded lock-free single-producer / single-consumer ring in shared memory (Disruptor shape).

One process publishes, one process consumes; nothing else touches the ring. The ring is a file in
/dev/shm (tmpfs), mapped by both processes with ``mmap``; it is created by name, attached by name
and unlinked by its owner. Layout (host byte order: little-endian on x86-64)::

    offset 0          64                128               192
    +-----------------+-----------------+-----------------+--------+--------+-----+------------+
    | header line     | producer line   | consumer line   | slot 0 | slot 1 | ... | slot N-1   |
    +-----------------+-----------------+-----------------+--------+--------+-----+------------+

    header line (64 bytes, written once by the creator, magic last)
    +----------+---------+-----------+-----------+--------------------------------------+
    | magic 8s | version | slot_size | slots     | reserved (zero)                      |
    |    @0    |  u32 @8 |  u32 @12  |  u32 @16  |  @20..63                             |
    +----------+---------+-----------+-----------+--------------------------------------+

    producer line: u64 @64  published  = records ever published (the next sequence to write)
    consumer line: u64 @128 consumed   = records ever consumed  (the next sequence to read)
                   u64 @136 waiting    = 1 while the consumer waits on its doorbell, 0 while it polls
    (the producer's and the consumer's words on separate 64-byte cache lines: the two sides never
    write the same line)

    slot k, at 192 + k * slot_size, holds sequence s when s & (slots - 1) == k
    +-------------+-------------------------+----------------+
    | length u16  | payload (length bytes)  | zero padding   |
    |     @0      |           @2            |                |
    +-------------+-------------------------+----------------+

``slots`` is a power of two; ``slot_size`` a multiple of 8 (default 128: payloads up to 126 bytes).
A record is one slot: a payload longer than ``slot_size - 2`` is refused with ValueError (commands
are small, and fixed slots keep both sides to one index computation per record). The ring holds
``published - consumed`` records, never more than ``slots``.

Publication ordering. The producer writes the slot(s), then stores ``published``; the consumer
loads ``published``, copies the records out, then stores ``consumed``; the producer reuses a slot
only after it has loaded a ``consumed`` beyond it. The counters are stored and loaded through a
``memoryview`` cast to 'Q' at 8-byte-aligned offsets, which CPython does with one 8-byte ``memcpy``,
i.e. one aligned 8-byte move: **on x86-64 an aligned 8-byte store is atomic and TSO keeps stores in
program order (and loads in program order)**, so a consumer that sees ``published = s`` sees every
slot below s complete, and the producer never overwrites a slot the consumer is still copying.
This needs x86-64 (or another total-store-order machine). On a weaker memory model (ARM64,
POWER) a store-release / load-acquire fence around the counters would be needed, which pure Python
cannot express: ``check_platform()`` refuses such machines unless told otherwise.

No locks and no system calls on the data path: a full ring is a value (``try_publish`` returns
False, ``try_publish_many`` a short count), an empty ring is an empty batch; what to do while
waiting is the caller's idle strategy (appliance.idle).

Doorbells. A consumer that sleeps instead of polling says so (``set_waiting(True)``), checks the
ring once more, then blocks on its doorbell, a FIFO beside the ring (``bell_name``) with a timeout.
A producer that published into a ring whose consumer is waiting writes one byte to the doorbell
(``consumer_waiting()``); to a polling consumer it writes nothing, so two spinning sides exchange
records with no system call at all. Without a fence a wake-up can be missed (the producer reads the
flag before the consumer's store is visible): the consumer's timeout bounds what that costs.

Naming: one ring per direction per (gateway, partition) pair, ``ring_name(prefix, partition,
gateway, direction)`` = ``"{prefix}.{partition}.{gateway}.{direction}"``, e.g. ``mw.p0.gw0.cmd``
(gateway -> partition: commands) and ``mw.p0.gw0.evt`` (partition -> gateway: execution
reports). The partition process creates and unlinks both rings of each of its gateways.
"""
from __future__ import annotations

import mmap
import os
import platform
import re
import select
import struct
import sys
from typing import Final, Sequence

SHM_DIR: Final = "/dev/shm"
MAGIC: Final = b"MWRING\x00\x01"
VERSION: Final = 2                       # 2: the consumer's waiting word
CACHE_LINE: Final = 64
HEADER = struct.Struct("=8sIII")       # magic, version, slot_size, slots
PUBLISHED_OFFSET: Final = 64           # u64, the producer's line
CONSUMED_OFFSET: Final = 128           # u64, the consumer's line
WAITING_OFFSET: Final = 136            # u64, the consumer's line: 1 while it waits on its doorbell
SLOTS_OFFSET: Final = 192              # slot 0
LENGTH_BYTES: Final = 2                # u16 record length at the start of each slot

DEFAULT_SLOTS: Final = 16384
DEFAULT_SLOT_SIZE: Final = 128
MAX_SLOT_SIZE: Final = 65536           # payload length is a u16
MAX_SLOTS: Final = 1 << 24

DIRECTION_COMMANDS: Final = "cmd"      # gateway -> partition
DIRECTION_EVENTS: Final = "evt"        # partition -> gateway
DIRECTIONS: Final = (DIRECTION_COMMANDS, DIRECTION_EVENTS)

_NAME_PART = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_TSO_MACHINES: Final = frozenset(("x86_64", "amd64", "AMD64", "i686", "i386"))


class RingError(Exception):
    """A ring file that does not exist, is not a ring, or was made by another version."""


def check_platform(allow_weak_memory: bool = False) -> None:
    """Refuse a machine whose memory model does not keep stores in order (see the module doc)."""
    machine = platform.machine()
    if machine not in _TSO_MACHINES and not allow_weak_memory:
        raise RingError(
            f"ring: machine {machine!r} is not x86 (total store order); the ring's publication "
            "ordering needs TSO or fences that pure Python cannot issue"
        )


def ring_name(prefix: str, partition: str, gateway: str, direction: str) -> str:
    """The ring of one direction between a gateway and a partition: "{prefix}.{partition}.{gateway}.{direction}"."""
    for what, part in (("prefix", prefix), ("partition", partition), ("gateway", gateway)):
        if not _NAME_PART.match(part):
            raise ValueError(f"ring name: {what} {part!r} must be 1-32 characters of A-Z a-z 0-9 _ -")
    if direction not in DIRECTIONS:
        raise ValueError(f"ring name: direction {direction!r} is not one of {DIRECTIONS}")
    return f"{prefix}.{partition}.{gateway}.{direction}"


def bell_name(ring: str) -> str:
    """The doorbell FIFO of a ring's consumer, beside the ring: "{prefix}.{partition}.{gateway}.{direction}.bell"."""
    return ring + ".bell"


def make_bell(ring: str, directory: str = SHM_DIR) -> int:
    """Create the ring's doorbell afresh (a FIFO; one left by a crash is replaced) and open it for the
    side that owns it: read and write, non-blocking (the consumer waits on it, the producer rings)."""
    path = os.path.join(directory, bell_name(ring))
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.mkfifo(path, 0o600)
    return os.open(path, os.O_RDWR | os.O_NONBLOCK)


def remove_bell(ring: str, directory: str = SHM_DIR) -> None:
    try:
        os.unlink(os.path.join(directory, bell_name(ring)))
    except FileNotFoundError:
        pass


def remove_ring(name: str, directory: str = SHM_DIR) -> None:
    """Unlink a ring and its doorbell left by an owner that could not (one killed with SIGKILL)."""
    try:
        os.unlink(_path(name, directory))
    except FileNotFoundError:
        pass
    remove_bell(name, directory)


def ring_bell(fd: int) -> None:
    """One byte to a doorbell; a full FIFO already says "wake up"."""
    try:
        os.write(fd, b"\x01")
    except BlockingIOError:
        pass


def wait_on_bells(consumers: Sequence[RingConsumer], bells: Sequence[int], ns: int) -> None:
    """A consumer's park: say it waits, look once more, then sleep on its doorbells for at most
    ``ns`` (its producers ring only while it says it waits; a lost wake-up costs the timeout)."""
    for c in consumers:
        c.set_waiting(True)
    try:
        if any(c.pending() for c in consumers):
            return
        ready, _, _ = select.select(bells, [], [], ns / 1e9)
        for fd in ready:
            try:
                os.read(fd, 4096)
            except BlockingIOError:
                pass
    finally:
        for c in consumers:
            c.set_waiting(False)


def ring_bytes(slots: int, slot_size: int) -> int:
    """The size of a ring file."""
    return SLOTS_OFFSET + slots * slot_size


def _check_geometry(slots: int, slot_size: int) -> None:
    if not 2 <= slots <= MAX_SLOTS or slots & (slots - 1):
        raise ValueError(f"ring: slots {slots} must be a power of two in 2..{MAX_SLOTS}")
    if not 16 <= slot_size <= MAX_SLOT_SIZE or slot_size % 8:
        raise ValueError(f"ring: slot_size {slot_size} must be a multiple of 8 in 16..{MAX_SLOT_SIZE}")


def _path(name: str, directory: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"ring: bad name {name!r}")
    return os.path.join(directory, name)


class Ring:
    """One mapped ring file. Owned by the process that opened it; hand out one role per process.

    ``Ring.create`` makes the file (refusing an existing one) and ``Ring.attach`` maps an existing
    one; ``producer()`` / ``consumer()`` give the role objects that move records. ``close()`` unmaps
    (the role objects become unusable); ``unlink()`` removes the name (the creator's job).
    """

    def __init__(self, name: str, directory: str, fd: int, creator: bool) -> None:
        self.name = name
        self.path = _path(name, directory)
        self.creator = creator
        try:
            size = os.fstat(fd).st_size
            if size < SLOTS_OFFSET:
                raise RingError(f"ring {name}: {size} bytes is too small to be a ring")
            self._mm: mmap.mmap | None = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        magic, version, slot_size, slots = HEADER.unpack_from(self._mm, 0)
        if magic != MAGIC:
            self._mm.close()
            raise RingError(f"ring {name}: bad magic {magic!r} (not a ring, or still being created)")
        if version != VERSION:
            self._mm.close()
            raise RingError(f"ring {name}: version {version}, this code reads {VERSION}")
        try:
            _check_geometry(slots, slot_size)
        except ValueError as exc:
            self._mm.close()
            raise RingError(f"ring {name}: {exc}") from None
        if size != ring_bytes(slots, slot_size):
            self._mm.close()
            raise RingError(f"ring {name}: file is {size} bytes, header says {ring_bytes(slots, slot_size)}")
        self.slots: int = slots
        self.slot_size: int = slot_size
        self.max_payload: int = slot_size - LENGTH_BYTES
        self._view: memoryview | None = memoryview(self._mm)
        self._roles: list[_Role] = []

    # -- opening and closing -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        name: str,
        slots: int = DEFAULT_SLOTS,
        slot_size: int = DEFAULT_SLOT_SIZE,
        directory: str = SHM_DIR,
        *,
        replace: bool = False,
    ) -> Ring:
        """Create a ring file (O_EXCL: an existing name is an error unless ``replace``)."""
        _check_geometry(slots, slot_size)
        path = _path(name, directory)
        if replace:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, ring_bytes(slots, slot_size))   # zero-filled: counters 0, slots empty
            os.pwrite(fd, HEADER.pack(b"\x00" * 8, VERSION, slot_size, slots), 0)
            os.pwrite(fd, MAGIC, 0)                           # last: an attacher sees a whole header
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        return cls(name, directory, fd, creator=True)

    @classmethod
    def attach(cls, name: str, directory: str = SHM_DIR) -> Ring:
        """Map an existing ring by name (from any process)."""
        try:
            fd = os.open(_path(name, directory), os.O_RDWR)
        except FileNotFoundError:
            raise RingError(f"ring {name}: no such ring in {directory}") from None
        return cls(name, directory, fd, creator=False)

    def close(self) -> None:
        """Unmap. Idempotent; the role objects of this mapping must not be used afterwards."""
        for role in self._roles:
            role._release()
        self._roles.clear()
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def unlink(self) -> None:
        """Remove the name (mappings stay valid until closed). Idempotent."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        if self.creator:
            self.unlink()

    # -- roles -----------------------------------------------------------------------------------------
    def producer(self) -> RingProducer:
        p = RingProducer(self._mapped(), self.slots, self.slot_size)
        self._roles.append(p)
        return p

    def consumer(self) -> RingConsumer:
        c = RingConsumer(self._mapped(), self.slots, self.slot_size)
        self._roles.append(c)
        return c

    def _mapped(self) -> memoryview:
        if self._view is None:
            raise RingError(f"ring {self.name} is closed")
        return self._view

    # -- reading out of band (tools, tests) ---------------------------------------------------------
    def counters(self) -> tuple[int, int]:
        """(published, consumed) as they are in memory now."""
        view = self._mapped()
        return (
            int.from_bytes(view[PUBLISHED_OFFSET:PUBLISHED_OFFSET + 8], sys.byteorder),
            int.from_bytes(view[CONSUMED_OFFSET:CONSUMED_OFFSET + 8], sys.byteorder),
        )

    def __repr__(self) -> str:
        return f"Ring({self.name!r}, slots={self.slots}, slot_size={self.slot_size})"


_CLOSED: Final = memoryview(bytearray())


class _Role:
    __slots__ = ("_view", "_pub", "_con", "_wait", "_slots", "_mask", "_size", "_max", "_seq", "_other")

    def __init__(self, view: memoryview, slots: int, slot_size: int) -> None:
        self._view = view
        self._pub = view[PUBLISHED_OFFSET:PUBLISHED_OFFSET + 8].cast("Q")
        self._con = view[CONSUMED_OFFSET:CONSUMED_OFFSET + 8].cast("Q")
        self._wait = view[WAITING_OFFSET:WAITING_OFFSET + 8].cast("Q")
        self._slots = slots
        self._mask = slots - 1
        self._size = slot_size
        self._max = slot_size - LENGTH_BYTES
        self._seq = 0
        self._other = 0

    def _release(self) -> None:
        self._pub.release()
        self._con.release()
        self._wait.release()
        self._view = _CLOSED   # any later slot access fails


class RingProducer(_Role):
    """The publishing side. Owned by the one producer thread of one process.

    ``_seq`` is the next sequence to publish (a private copy of ``published``: only we store it);
    ``_other`` the last ``consumed`` we loaded, refreshed only when the ring looks full.
    """

    __slots__ = ("_pack", "_pack_into")

    def __init__(self, view: memoryview, slots: int, slot_size: int) -> None:
        super().__init__(view, slots, slot_size)
        self._seq = self._pub[0]      # resume where the counters are (a restarted producer)
        self._other = self._con[0]
        # One slot's bytes: length, then the payload null-padded to the slot ("s" pads with zeros).
        slot = struct.Struct(f"=H{slot_size - LENGTH_BYTES}s")
        self._pack = slot.pack
        self._pack_into = slot.pack_into   # measured: faster than pack + slice store for one record

    def try_publish(self, payload: bytes) -> bool:
        """Publish one record. False: the ring is full (back-pressure; nothing was written)."""
        n = len(payload)
        if n > self._max:
            raise ValueError(f"ring: record of {n} bytes exceeds the slot payload of {self._max}")
        seq = self._seq
        if seq - self._other >= self._slots:
            self._other = self._con[0]
            if seq - self._other >= self._slots:
                return False
        self._pack_into(self._view, SLOTS_OFFSET + (seq & self._mask) * self._size, n, payload)
        seq += 1
        self._seq = seq
        self._pub[0] = seq            # publication: one aligned 8-byte store, after the slot
        return True

    def try_publish_many(self, payloads: Sequence[bytes]) -> int:
        """Publish as many of ``payloads`` as fit, in order, with one counter store. Returns how many.

        If one of the records that would go in now is longer than a slot payload, ValueError is
        raised and nothing of the batch is written.
        """
        want = len(payloads)
        if not want:
            return 0
        seq = self._seq
        slots = self._slots
        free = slots - (seq - self._other)
        if free < want:
            self._other = self._con[0]
            free = slots - (seq - self._other)
            if free <= 0:
                return 0
        k = want if want <= free else free
        batch = payloads if k == want else payloads[:k]
        pack = self._pack
        limit = self._max
        if max(map(len, batch)) > limit:
            raise ValueError(f"ring: a record exceeds the slot payload of {limit} bytes")
        block = b"".join([pack(len(p), p) for p in batch])
        size = self._size
        view = self._view
        idx = seq & self._mask
        first = slots - idx
        off = SLOTS_OFFSET + idx * size
        if k <= first:
            view[off:off + k * size] = block
        else:  # wraps: the tail of the ring, then its start
            cut = first * size
            view[off:off + cut] = block[:cut]
            view[SLOTS_OFFSET:SLOTS_OFFSET + (k - first) * size] = block[cut:]
        seq += k
        self._seq = seq
        self._pub[0] = seq
        return k

    def consumer_waiting(self) -> bool:
        """Whether the consumer sleeps on its doorbell (ring it after publishing) or polls (don't)."""
        return self._wait[0] != 0

    def free(self) -> int:
        """Slots free now (loads the consumer counter)."""
        self._other = self._con[0]
        return self._slots - (self._seq - self._other)

    @property
    def published(self) -> int:
        return self._seq


class RingConsumer(_Role):
    """The consuming side. Owned by the one consumer thread of one process.

    ``_seq`` is the next sequence to read (a private copy of ``consumed``); ``_other`` the last
    ``published`` we loaded, refreshed only when what we knew of is drained.
    """

    __slots__ = ("_lengths_step",)

    def __init__(self, view: memoryview, slots: int, slot_size: int) -> None:
        super().__init__(view, slots, slot_size)
        self._seq = self._con[0]      # resume where the counters are (a restarted consumer)
        self._other = self._pub[0]
        self._lengths_step = slot_size // LENGTH_BYTES

    def _available(self, max_n: int) -> int:
        """How many records to take now: at most max_n, never across the end of the slot array."""
        seq = self._seq
        avail = self._other - seq
        if avail <= 0:
            self._other = self._pub[0]    # acquire: slots below it are complete (TSO)
            avail = self._other - seq
            if avail <= 0:
                return 0
        if avail > max_n:
            avail = max_n
        idx = seq & self._mask
        room = self._slots - idx
        return avail if avail <= room else room

    def poll(self, max_n: int = 1024) -> list[bytes]:
        """Take up to ``max_n`` records, oldest first, as bytes; one counter store for the batch.

        An empty list: nothing was published. A batch stops at the end of the slot array, so a
        wrapping run comes back in two calls.
        """
        n = self._available(max_n)
        if n <= 0:
            return []
        size = self._size
        seq = self._seq
        start = SLOTS_OFFSET + (seq & self._mask) * size
        data = self._view[start:start + n * size].tobytes()
        lengths = memoryview(data).cast("H")[::self._lengths_step].tolist()
        out = [data[off:off + ln] for off, ln in zip(range(LENGTH_BYTES, n * size, size), lengths)]
        seq += n
        self._seq = seq
        self._con[0] = seq                # release the slots: after the copy
        return out

    def poll_block(self, max_n: int = 1024) -> tuple[bytes, int]:
        """The zero-copy-ish drain: up to ``max_n`` slots copied out as one block, with their count.

        Record k of the block has its u16 length at ``k * slot_size`` and its payload at
        ``k * slot_size + 2``: decode in place (``Struct.unpack_from(block, k * slot_size + 2)``)
        with no per-record bytes object. The slots are released before returning.
        """
        n = self._available(max_n)
        if n <= 0:
            return b"", 0
        size = self._size
        seq = self._seq
        start = SLOTS_OFFSET + (seq & self._mask) * size
        data = self._view[start:start + n * size].tobytes()
        seq += n
        self._seq = seq
        self._con[0] = seq
        return data, n

    def set_waiting(self, waiting: bool) -> None:
        """Say whether this consumer sleeps on its doorbell (True) or polls the ring (False)."""
        self._wait[0] = 1 if waiting else 0

    def pending(self) -> int:
        """Records published and not yet consumed (loads the producer counter)."""
        self._other = self._pub[0]
        return self._other - self._seq

    @property
    def consumed(self) -> int:
        return self._seq


def records_of_block(block: bytes, count: int, slot_size: int) -> list[bytes]:
    """The payloads of a ``poll_block`` result (tests and tools; the hot path decodes in place)."""
    lengths = memoryview(block).cast("H")[::slot_size // LENGTH_BYTES].tolist()
    return [block[off:off + ln] for off, ln in zip(range(LENGTH_BYTES, count * slot_size, slot_size), lengths)]
