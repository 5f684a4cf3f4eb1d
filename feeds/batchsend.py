"""Batched kernel sends: many UDP datagrams in one ``sendmmsg(2)`` call (Python has no sendmmsg).

The C library's ``sendmmsg`` is called through ctypes on the socket's descriptor, so it goes
through the dynamic libc like every other socket call (what Onload's LD_PRELOAD intercepts and
accelerates). Each datagram is one ``struct mmsghdr`` with one ``iovec`` pointing at the bytes
object itself (no copy on CPython)::

    struct mmsghdr (64 bytes on LP64)                 struct iovec (16 bytes)
    +------------------------------------+-----+      +-----------+-----------+
    | struct msghdr (56 bytes)           | len |      |   base    |    len    |
    |  name, namelen, iov -> iovec[i],   | u32 |      |   void*   |  size_t   |
    |  iovlen = 1, control, controllen,  |     |      +-----------+-----------+
    |  flags                             |     |
    +------------------------------------+-----+

A connected socket needs no ``name`` (``send``); a sender made with ``to_address=True`` points
every header at one ``sockaddr_in``, rewritten per call (``send_to``: an answer to one client). One ``BatchSender`` holds the arrays for up to ``capacity``
datagrams (the kernel takes at most UIO_MAXIOV = 1024 per call); longer lists go in several
calls. Owned by the thread that sends.
"""
from __future__ import annotations

import ctypes
import errno
import socket
import struct
import sys
from typing import Any

__all__ = ["BatchSender", "sendmmsg_available", "MAX_BATCH"]

MAX_BATCH = 1024          # UIO_MAXIOV: the most messages one sendmmsg call takes

#: errno values that lose one datagram rather than end the sender (as the udp transport counts them)
SOFT_ERRORS = (errno.ENOBUFS, errno.EAGAIN, errno.ECONNREFUSED, errno.ENOMEM)


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(_Iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


_SOCKADDR_IN = struct.Struct("=H2s4s8x")   # family (host order), port (network order), address

_libc: Any = None


def _bytes_data_offset() -> int:
    """Where a bytes object's data starts, from its address (``id``) on CPython; 0 where that does
    not hold (another implementation): then datagrams are joined into one buffer instead."""
    probe = b"matchwire sendmmsg probe"
    offset = bytes.__basicsize__ - 1
    try:
        if ctypes.string_at(id(probe) + offset, len(probe)) == probe:
            return offset
    except (OSError, ValueError):
        pass
    return 0


_DATA_OFFSET = _bytes_data_offset() if sys.implementation.name == "cpython" else 0
_IOV_LAYOUTS: dict[int, struct.Struct] = {}


def _iov_layout(n: int) -> struct.Struct:
    """``n`` iovecs as (base, len) pairs of native u64."""
    s = _IOV_LAYOUTS.get(n)
    if s is None:
        s = _IOV_LAYOUTS[n] = struct.Struct(f"={2 * n}Q")
    return s


def _sendmmsg() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fn = _libc.sendmmsg
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def sendmmsg_available() -> bool:
    """True where the C library has sendmmsg (glibc on Linux since 2.14)."""
    try:
        _sendmmsg()
    except (OSError, AttributeError):
        return False
    return True


class BatchSender:
    """The mmsghdr and iovec arrays for one sending thread; ``send`` and ``send_to`` fill them and
    call ``sendmmsg`` once per ``capacity`` datagrams. Counters are plain integers."""

    __slots__ = ("capacity", "to_address", "_iov", "_msgs", "_call", "_addr", "calls", "errors",
                 "last_error")

    def __init__(self, capacity: int = MAX_BATCH, *, to_address: bool = False) -> None:
        if not 1 <= capacity <= MAX_BATCH:
            raise ValueError(f"sendmmsg: capacity {capacity} outside 1..{MAX_BATCH}")
        self.capacity = capacity
        self._call = _sendmmsg()
        self._iov = (_Iovec * capacity)()
        self._msgs = (_Mmsghdr * capacity)()
        self.to_address = to_address
        self._addr = ctypes.create_string_buffer(16)
        iov0 = ctypes.addressof(self._iov)
        for i in range(capacity):
            h = self._msgs[i].hdr
            h.iov = ctypes.cast(iov0 + i * ctypes.sizeof(_Iovec), ctypes.POINTER(_Iovec))
            h.iovlen = 1
            if to_address:
                h.name = ctypes.addressof(self._addr)
                h.namelen = 16
        self.calls = 0            # sendmmsg calls made
        self.errors = 0           # datagrams the kernel refused (counted, not raised)
        self.last_error = 0

    def _load(self, payloads: list[bytes], start: int, n: int) -> object:
        """Point the first ``n`` iovecs at ``payloads[start:start + n]``; return what must stay
        alive until the call is made. On CPython the bytes objects' own buffers (no copy);
        elsewhere one joined copy."""
        chunk = payloads[start:start + n] if start or n != len(payloads) else payloads
        flat: list[int] = []
        add = flat.append
        keep: object = chunk
        if _DATA_OFFSET:
            for p in chunk:
                add(id(p) + _DATA_OFFSET)
                add(len(p))
        else:
            joined = b"".join(chunk)
            keep = joined
            at = ctypes.cast(ctypes.c_char_p(joined), ctypes.c_void_p).value or 0
            for p in chunk:
                size = len(p)
                add(at)
                add(size)
                at += size
        _iov_layout(n).pack_into(self._iov, 0, *flat)
        return keep

    def _flush(self, fd: int, n: int) -> int:
        """sendmmsg the first ``n`` loaded datagrams; on an error skip (and count) the datagram the
        kernel refused and go on with the rest. Returns how many went out."""
        call = self._call
        msgs = ctypes.addressof(self._msgs)
        size = ctypes.sizeof(_Mmsghdr)
        done = 0
        sent = 0
        while done < n:
            r = call(fd, msgs + done * size, n - done, 0)
            self.calls += 1
            if r < 0:
                e = ctypes.get_errno()
                if e == errno.EINTR:
                    continue
                if e not in SOFT_ERRORS:
                    raise OSError(e, "sendmmsg: " + errno.errorcode.get(e, str(e)))
                self.errors += 1
                self.last_error = e
                done += 1
                continue
            done += r
            sent += r
        return sent

    def send(self, sockets: tuple[socket.socket, ...], payloads: list[bytes]) -> int:
        """Send every datagram on each connected socket (one sendmmsg per socket per ``capacity``
        datagrams, each socket in turn); return how many datagrams went out on the first socket."""
        if self.to_address:
            raise ValueError("sendmmsg: this sender is for send_to")
        first = 0
        cap = self.capacity
        total = len(payloads)
        for start in range(0, total, cap):
            n = min(cap, total - start)
            keep = self._load(payloads, start, n)
            for k, s in enumerate(sockets):
                sent = self._flush(s.fileno(), n)
                if not k:
                    first += sent
            del keep
        return first

    def send_to(self, sock: socket.socket, payloads: list[bytes], addr: tuple[str, int]) -> int:
        """Send every datagram to ``addr`` (IPv4) on an unconnected socket; return how many went."""
        if not self.to_address:
            raise ValueError("sendmmsg: this sender is for connected sockets (send)")
        _SOCKADDR_IN.pack_into(self._addr, 0, socket.AF_INET, addr[1].to_bytes(2, "big"),
                               socket.inet_aton(addr[0]))
        sent = 0
        cap = self.capacity
        total = len(payloads)
        for start in range(0, total, cap):
            n = min(cap, total - start)
            keep = self._load(payloads, start, n)
            sent += self._flush(sock.fileno(), n)
            del keep
        return sent
