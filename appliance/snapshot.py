"""Snapshots: the full matching-engine state at sequence number N, written atomically.

A snapshot holds everything that determines the engine's future behaviour: the engine's
configuration (instruments, firms' self-trade prevention modes), its counters (order reference,
match number and any other integer counter), and per book its counters (last trade price), the
resting orders of each side in priority order and the pending stops of each side in trigger order,
each order with every field. Restoring gives an engine whose ``state_hash()`` equals the original's
and whose events for any further command are the same.

File ``snap-<seq, 20 digits>.snap``, integers little-endian::

    0       8   10  12      16              24              32              40      44      48
    +-------+---+---+-------+---------------+---------------+---------------+-------+-------+
    | magic |ver|hsz| epoch |      seq      |     ts_ns     |  payload_len  |pay crc| rsvd  |
    +-------+---+---+-------+---------------+---------------+---------------+-------+-------+
    |            state_hash (16 bytes, hex digest's bytes)  | hdr crc  (crc32 of bytes 0..64)
    +-------------------------------------------------------+-------+
    payload: meta length u32, meta JSON (spec, counters) | per book, ascending stock locate:
             BOOK (locate u16, bids u32, asks u32, buy stops u32, sell stops u32), then that many
             ORDER records: catalogue.ORDER_IMAGE, i.e. NewOrder.FIELDS as in the WAL, then ref u64,
             leaves i64, filled i64 (catalogue.ORDER_STATE);
             then the engine's triggered-stop queue: count u32, (ORDER, trigger price i64) each;
             version 2: then the market orders collected in call phases: count u32, ORDER each
             (per book ascending locate, buys then sells, in arrival order);
             version 3: then the ended orders the engine recalls (Engine.ended_orders): count u32,
             ENDED (order id u64, TOO_LATE_* reason u16, last reference u64, firm u32) each

The integer counters in the meta JSON are every int attribute of the engine (clock, schedule, ...) and
every int slot of each book (trading state, reference prices, timers, ...); the fields derived from
them are recomputed on restore (Engine.rederive). Version 1 files (no trading states) still restore.

Written as temp file, fsync, rename, fsync of the directory: a reader sees a whole snapshot or none.
Owned by the matching thread. A periodic snapshot is captured and written by a forked child
(SnapshotStore.submit): the matching thread pauses only for the fork, the child sees the engine as
it was at that instant (copy-on-write) while the parent goes on matching. The clean-shutdown
snapshot is captured and written in the matching thread (SnapshotStore.write).
"""
from __future__ import annotations

import dataclasses
import json
import operator
import os
import struct
import sys
import time
import zlib
from typing import Any, Callable, Final, Iterable, NamedTuple

from appliance.catalogue import ORDER_IMAGE, ORDER_STATE, NewOrder
from appliance.matching.book import Book, Level
from appliance.matching.engine import Engine
from appliance.matching.rules import TradingRules
from appliance.model import BUY, SELL, STP_CN, Instrument
from appliance.fsutil import atomic_write
from appliance.walcodec import LAYOUTS

SNAP_MAGIC: Final = b"MWSNAP01"
SNAP_VERSION: Final = 3
READABLE_VERSIONS: Final = (1, 2, 3)
SNAP_HEADER_FIELDS: Final = (
    ("magic", "8s"),
    ("version", "H"),
    ("header_size", "H"),
    ("epoch", "I"),
    ("seq", "Q"),
    ("ts_ns", "Q"),
    ("payload_len", "Q"),
    ("payload_crc", "I"),
    ("reserved", "I"),
    ("state_hash", "16s"),
    ("header_crc", "I"),
)
SNAP_HEADER: Final = struct.Struct("<" + "".join(code for _, code in SNAP_HEADER_FIELDS))
SNAP_HEADER_SIZE: Final = SNAP_HEADER.size  # 68
_BOOK: Final = struct.Struct("<HIIII")
_NEW: Final = LAYOUTS[NewOrder.KIND]
_NATIVE_ORDERS: Final = hasattr(NewOrder, "__mypyc_attrs__")   # the compiled build
# An order record is the whole catalogue ORDER_IMAGE: the WAL body (NewOrder.FIELDS, written by
# walcodec), then the engine's state (ORDER_STATE).
ORDER_FIELDS: Final = ORDER_IMAGE
_ORDER: Final = struct.Struct("<" + "".join(code for _, code in ORDER_FIELDS))
_ORDER_STATE: Final = struct.Struct("<" + "".join(code for _, code in ORDER_STATE))
_STATE_NAMES: Final = tuple(name for name, _ in ORDER_STATE)
_state_of: Final = operator.attrgetter(*_STATE_NAMES)
ENDED_FIELDS: Final = (("order_id", "Q"), ("reason", "H"), ("ref", "Q"), ("firm", "I"))
_ENDED: Final = struct.Struct("<" + "".join(code for _, code in ENDED_FIELDS))


class SnapshotError(Exception):
    """A snapshot that cannot be used (damaged, another partition's, or not matching its hash)."""


# ================================================================================================
# The engine's configuration
# ================================================================================================


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """What an Engine is built from: instruments, firms' STP modes, the default STP mode, and the
    trading rules (None: continuous trading all day, no safeguard)."""

    instruments: tuple[tuple[str, int, int, int], ...]   # (symbol, locate, tick, round_lot)
    firm_stp: tuple[tuple[int, int], ...] = ()          # (firm, mode), ascending firm
    default_stp: int = STP_CN
    rules: TradingRules | None = None

    @classmethod
    def of(cls, instruments: Iterable[Instrument], firm_stp: dict[int, int] | None = None,
           default_stp: int = STP_CN, rules: TradingRules | None = None) -> EngineSpec:
        return cls(
            tuple(sorted((i.symbol, i.locate, i.tick, i.round_lot) for i in instruments)),
            tuple(sorted((firm_stp or {}).items())),
            default_stp,
            rules,
        )

    @classmethod
    def of_engine(cls, engine: Engine) -> EngineSpec:
        return cls.of(engine.instruments(), engine.firm_stp, engine.default_stp, engine.rules)

    def build(self) -> Engine:
        return Engine(
            [Instrument(sym, locate, tick, lot) for sym, locate, tick, lot in self.instruments],
            dict(self.firm_stp),
            self.default_stp,
            self.rules,
        )

    def symbols(self) -> dict[int, str]:
        return {locate: sym for sym, locate, _, _ in self.instruments}

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "instruments": [list(i) for i in self.instruments],
            "firm_stp": [list(f) for f in self.firm_stp],
            "default_stp": self.default_stp,
        }
        if self.rules is not None:
            d["rules"] = self.rules.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EngineSpec:
        return cls(
            tuple((str(s), int(loc), int(t), int(lot)) for s, loc, t, lot in d["instruments"]),
            tuple((int(f), int(m)) for f, m in d["firm_stp"]),
            int(d["default_stp"]),
            TradingRules.from_json(d["rules"]) if d.get("rules") is not None else None,
        )


def _int_counters(obj: Any, names: Iterable[str], skip: frozenset[str]) -> dict[str, int]:
    out = {}
    for name in names:
        if name in skip or name.startswith("__"):
            continue
        v = getattr(obj, name, None)
        if type(v) is int:
            out[name] = v
    return out


# default_stp is in the spec; the recall ring's size and its lazy index are rebuilt on restore.
_ENGINE_SKIP: Final = frozenset({"default_stp", "_recall", "_indexed_to"})
_BOOK_SKIP: Final = frozenset({"locate", "tick"})


def attribute_names(klass: type, obj: Any = None) -> tuple[str, ...]:
    """The instance attributes of a class: its ``__slots__`` over the MRO, the compiled build's
    ``__mypyc_attrs__`` (a native class has neither slots nor a ``__dict__``), else ``vars(obj)``."""
    native = getattr(klass, "__mypyc_attrs__", None)
    if native is not None:
        return tuple(native)
    names: list[str] = []
    for k in klass.__mro__:
        slots = getattr(k, "__slots__", ())
        names.extend((slots,) if isinstance(slots, str) else slots)
    if not names and obj is not None:
        names = list(vars(obj))
    return tuple(names)


def _book_slots() -> tuple[str, ...]:
    return attribute_names(Book)


# ================================================================================================
# Capture and restore
# ================================================================================================


class SnapshotInfo(NamedTuple):
    path: str
    seq: int
    ts_ns: int
    epoch: int
    state_hash: str


def capture(engine: Engine, seq: int, ts_ns: int, epoch: int) -> bytes:
    """The whole snapshot file for the engine's state after command `seq` (runs in the caller's thread)."""
    spec = EngineSpec.of_engine(engine)
    book_names = _book_slots()
    books = [b for b in engine.books if b is not None]
    meta = {
        "spec": spec.to_json(),
        "engine": _int_counters(engine, sorted(attribute_names(type(engine), engine)), _ENGINE_SKIP),
        "books": {str(b.locate): _int_counters(b, book_names, _BOOK_SKIP) for b in books},
    }
    meta_bytes = json.dumps(meta, sort_keys=True).encode()
    parts = [struct.pack("<I", len(meta_bytes)), meta_bytes]
    encode = _NEW.encode_body
    state = _ORDER_STATE.pack
    state_of = _state_of
    bpack = _BOOK.pack
    for b in books:
        groups = (b.orders_in_priority(BUY), b.orders_in_priority(SELL), b.stops[BUY].in_order(),
                  b.stops[SELL].in_order())
        parts.append(bpack(b.locate, *(len(g) for g in groups)))
        for g in groups:
            for o in g:
                parts.append(encode(o))
                parts.append(state(*state_of(o)))
    # Stops triggered but not yet entered: empty between commands in a correct engine; kept so that
    # a snapshot is faithful whatever the engine leaves there.
    queue = list(getattr(engine, "_stop_queue", ()))
    parts.append(struct.pack("<I", len(queue)))
    for o, price in queue:
        parts.append(encode(o))
        parts.append(state(*state_of(o)))
        parts.append(struct.pack("<q", price))
    collected = [o for b in books for side in (BUY, SELL) for o in b.mkt[side]]
    parts.append(struct.pack("<I", len(collected)))
    for o in collected:
        parts.append(encode(o))
        parts.append(state(*state_of(o)))
    ended = engine.ended_orders()
    parts.append(struct.pack("<I", len(ended)))
    parts.extend(_ENDED.pack(*e) for e in ended)
    payload = b"".join(parts)
    digest = bytes.fromhex(engine.state_hash())
    head = SNAP_HEADER.pack(SNAP_MAGIC, SNAP_VERSION, SNAP_HEADER_SIZE, epoch, seq, ts_ns, len(payload),
                            zlib.crc32(payload), 0, digest, 0)
    head = head[:-4] + struct.pack("<I", zlib.crc32(head[:-4]))
    return head + payload


def read_header(data: bytes, path: str = "snapshot") -> SnapshotInfo:
    if len(data) < SNAP_HEADER_SIZE:
        raise SnapshotError(f"{path}: {len(data)} bytes, shorter than a snapshot header")
    magic, version, hsize, epoch, seq, ts_ns, plen, pcrc, _r, digest, hcrc = SNAP_HEADER.unpack_from(data)
    if magic != SNAP_MAGIC or zlib.crc32(data[:SNAP_HEADER_SIZE - 4]) != hcrc:
        raise SnapshotError(f"{path}: bad snapshot header")
    if version not in READABLE_VERSIONS or hsize != SNAP_HEADER_SIZE:
        raise SnapshotError(f"{path}: snapshot format version {version}, this reader knows {READABLE_VERSIONS}")
    return SnapshotInfo(path, seq, ts_ns, epoch, digest.hex())


def restore(data: bytes, spec: EngineSpec | None = None, path: str = "snapshot") -> tuple[Engine, SnapshotInfo]:
    """Rebuild the engine from a snapshot file's bytes; check it against the snapshot's state hash.

    With `spec`, the snapshot must be of an engine with that configuration.
    """
    info = read_header(data, path)
    _, _, _, _, _, _, plen, pcrc, _, _, _ = SNAP_HEADER.unpack_from(data)
    payload = memoryview(data)[SNAP_HEADER_SIZE:]
    if len(payload) != plen or zlib.crc32(payload) != pcrc:
        raise SnapshotError(f"{path}: snapshot payload damaged (length or CRC)")
    version = SNAP_HEADER.unpack_from(data)[1]
    try:
        engine = _restore_payload(payload, spec, path, version)
    except (ValueError, KeyError, struct.error, TypeError, UnicodeDecodeError) as e:
        raise SnapshotError(f"{path}: snapshot payload unreadable ({e})") from None
    got = engine.state_hash()
    if got != info.state_hash:
        raise SnapshotError(f"{path}: restored state hash {got} differs from the snapshot's {info.state_hash}")
    return engine, info


def _restore_payload(payload: memoryview, spec: EngineSpec | None, path: str, version: int = SNAP_VERSION) -> Engine:
    (mlen,) = struct.unpack_from("<I", payload)
    meta = json.loads(bytes(payload[4:4 + mlen]))
    snap_spec = EngineSpec.from_json(meta["spec"])
    if spec is not None and snap_spec != spec:
        raise SnapshotError(f"{path}: snapshot of another engine configuration")
    engine = snap_spec.build()
    for name, v in meta["engine"].items():
        setattr(engine, name, v)
    off = 4 + mlen
    size = _ORDER.size
    unpack = _ORDER.iter_unpack
    n_fields = len(NewOrder.FIELDS)
    names = [name for name, _ in NewOrder.FIELDS]
    str_idx = [i for i, (_, code) in enumerate(NewOrder.FIELDS) if code.endswith("s")]
    orders = engine.orders
    pending = engine.pending_stops
    for _ in range(len(meta["books"])):
        locate, nb, na, nbs, nss = _BOOK.unpack_from(payload, off)
        off += _BOOK.size
        book = engine.books[locate]
        if book is None:
            raise SnapshotError(f"{path}: book {locate} not in the configuration")
        for name, v in meta["books"][str(locate)].items():
            setattr(book, name, v)
        groups = []
        for n in (nb, na, nbs, nss):
            objs = []
            for vals in unpack(payload[off:off + n * size]):
                objs.append(_order_from(vals, names, str_idx, n_fields))
            off += n * size
            groups.append(objs)
        for side in (BUY, SELL):
            levels = book.levels[side]
            keys = book.keys[side]
            for o in groups[side]:
                lvl = levels.get(o.price)
                if lvl is None:
                    lvl = levels[o.price] = Level(o.price)
                    keys.append(o.price if side == BUY else -o.price)
                lvl.orders.append(o)
                lvl.total += o.leaves
                lvl.count += 1
                orders[o.order_id] = o
            keys.sort()
            for o in groups[2 + side]:
                book.stops[side].add(o)
                orders[o.order_id] = o
                pending.add(o.order_id)
        book.nstops = len(groups[2]) + len(groups[3])
    (nq,) = struct.unpack_from("<I", payload, off)
    off += 4
    queue = []
    for _ in range(nq):
        o = _order_from(_ORDER.unpack_from(payload, off), names, str_idx, n_fields)
        off += size
        (price,) = struct.unpack_from("<q", payload, off)
        off += 8
        queue.append((o, price))
    engine._stop_queue[:] = queue
    if version >= 2:
        (nm,) = struct.unpack_from("<I", payload, off)
        off += 4
        for _ in range(nm):
            o = _order_from(_ORDER.unpack_from(payload, off), names, str_idx, n_fields)
            off += size
            book = engine.books[o.locate]
            if book is None:
                raise SnapshotError(f"{path}: a collected market order of book {o.locate}, not in the configuration")
            book.mkt[o.side].append(o)
            orders[o.order_id] = o
    engine.rederive()
    if version >= 3:
        (ne,) = struct.unpack_from("<I", payload, off)
        off += 4
        engine.recall_ended(_ENDED.iter_unpack(payload[off:off + ne * _ENDED.size]))
        off += ne * _ENDED.size
    if off != len(payload):
        raise SnapshotError(f"{path}: {len(payload) - off} bytes left after the last book")
    return engine


def _order_from(vals: tuple[Any, ...], names: list[str], str_idx: list[int], n_fields: int) -> NewOrder:
    v = list(vals)
    for i in str_idx:
        v[i] = v[i].rstrip(b" ").decode("ascii")
    if _NATIVE_ORDERS:   # a compiled class is built by its constructor (its __new__ runs __init__)
        o = NewOrder(**dict(zip(names, v)))
    else:
        o = NewOrder.__new__(NewOrder)
        for name, x in zip(names, v):
            setattr(o, name, x)
    for name, x in zip(_STATE_NAMES, v[n_fields:]):
        setattr(o, name, x)
    return o


# ================================================================================================
# The snapshot directory
# ================================================================================================


def snapshot_name(seq: int) -> str:
    return "snap-%020d.snap" % seq


class SnapshotStore:
    """A directory of snapshots. Owned by the matching thread.

    ``submit(seq, capture)`` forks: the child lowers itself (SCHED_OTHER, nice 10, off the parent's
    CPUs when there are others), calls ``capture()`` on its copy-on-write image of the engine, writes
    the bytes as ``write`` does and exits; the parent returns at once (False, and nothing forked, while
    the previous child still runs: that snapshot is skipped, the next one will be taken). ``busy``
    reaps a finished child; ``wait`` waits for it. ``write`` is synchronous (clean shutdown, tests).
    The newest ``keep`` snapshots are kept.
    """

    def __init__(self, directory: str, keep: int = 3) -> None:
        self.directory = directory
        self.keep = keep
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".tmp"):
                os.unlink(os.path.join(directory, name))  # a write cut short by a crash
        self._child: tuple[int, int] | None = None   # (pid, seq) of the writer being run
        self.errors: list[str] = []
        self.written: list[int] = []
        self.fork_ns: list[int] = []                 # how long each fork held the matching thread

    def list(self) -> list[tuple[int, str]]:
        """(seq, path) of every snapshot file, newest first."""
        return list_snapshots(self.directory)

    def write(self, seq: int, data: bytes) -> str:
        path = os.path.join(self.directory, snapshot_name(seq))
        atomic_write(path, data)
        self.written.append(seq)
        self._prune()
        return path

    def submit(self, seq: int, capture: Callable[[], bytes]) -> bool:
        """Capture and write in a forked child; False if the previous child has not finished."""
        if self.busy:
            return False
        t0 = time.perf_counter_ns()
        try:
            pid = os.fork()
        except OSError as e:   # no memory or process slot: this snapshot is skipped, matching goes on
            msg = f"matchwire: snapshot at seq {seq} not taken: fork failed: {e}"
            self.errors.append(msg)
            print(msg, file=sys.stderr)
            return False
        if pid == 0:  # the child: never returns
            code = 1
            try:
                _lower_priority()
                self.write(seq, capture())
                code = 0
            except BaseException as e:  # noqa: B036 -- report anything, then leave without cleanup
                try:
                    os.write(2, f"matchwire: snapshot at seq {seq} not written: {e!r}\n".encode())
                except OSError:
                    pass
            finally:
                os._exit(code)   # no atexit, no flush of the parent's buffers
        self.fork_ns.append(time.perf_counter_ns() - t0)
        self._child = (pid, seq)
        return True

    def wait(self) -> None:
        """Until the child writer (if any) has finished."""
        if self._child is not None:
            self._reap(0)

    def close(self) -> None:
        self.wait()

    def _reap(self, flags: int) -> None:
        assert self._child is not None
        pid, seq = self._child
        try:
            done, status = os.waitpid(pid, flags)
        except ChildProcessError:   # reaped elsewhere: say so rather than wait forever
            done, status = pid, -1
        if not done:
            return
        self._child = None
        if status == 0:
            self.written.append(seq)
        else:
            self.errors.append(f"snapshot at seq {seq}: writer exited with status {status}")

    def _prune(self) -> None:
        for _seq, path in self.list()[self.keep:]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    @property
    def busy(self) -> bool:
        """A child writer is running (a finished one is reaped here)."""
        if self._child is not None:
            self._reap(os.WNOHANG)
        return self._child is not None


def _lower_priority() -> None:
    """In the snapshot child: out of the partition's way (its real-time class, its CPU)."""
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (OSError, AttributeError):
        pass
    try:
        os.nice(10)
    except OSError:
        pass
    try:
        mine = os.sched_getaffinity(0)
        others = set(range(os.cpu_count() or 1)) - mine
        if others:
            os.sched_setaffinity(0, others)
    except OSError:
        pass


def list_snapshots(directory: str) -> list[tuple[int, str]]:
    """(seq, path) of every snapshot file in a directory, newest first."""
    out = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith("snap-") and name.endswith(".snap"):
            try:
                out.append((int(name[5:-5]), os.path.join(directory, name)))
            except ValueError:
                continue
    out.sort(reverse=True)
    return out


def load_newest(
    directory: str, spec: EngineSpec | None, max_seq: int | None = None, notes: list[str] | None = None
) -> tuple[Engine, SnapshotInfo] | None:
    """The newest snapshot that restores and checks (seq <= max_seq), or None; notes say why not."""
    for seq, path in list_snapshots(directory):
        if max_seq is not None and seq > max_seq:
            continue
        try:
            with open(path, "rb") as f:
                data = f.read()
            return restore(data, spec, path)
        except (SnapshotError, OSError) as e:
            if notes is not None:
                notes.append(f"{path}: unusable snapshot ({e}): falling back to an older one")
    return None
