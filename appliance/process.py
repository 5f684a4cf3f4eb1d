"""What every long-running process of the appliance (supervisor, partitions, gateways, servers) sets
up first: ``setup_process()`` = private files (``private_files``) + output that outlives its reader
(``survive_lost_output``).

Private files: the WAL, snapshots, the gateways' journals and FIX state files, rejects, the feed
stores, run files and the admin control sockets hold every firm's orders and credentials' effects;
they are created readable by the service's user only (umask 077: files 0600, directories 0700;
the rings in /dev/shm too). A group of readers (an audit job) is given access by the operator,
with a group-owned, setgid state directory and ACLs: docs/operations.md.

Lost output: 
A process of the appliance is often started as ``matchwire run CONFIG | tee log``. Ctrl-C sends
SIGINT to the whole pipeline: ``tee`` dies at once, and every later write to the pipe (a log line
of the orderly stop, a server's final counters) fails with EPIPE. Those lines are worth less than
the stop itself (final snapshot, End of Session on the feeds, rings removed, stats written), so
after the first such failure the stream's file descriptor is pointed at /dev/null and the process
carries on. Only the appliance's long-running processes do this; a tool whose output is its
product (``feed dump | head``) keeps Python's usual behaviour.

Owned by the process's main thread (installed once, before anything is written).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Final, TextIO

STATE_UMASK: Final = 0o077
_LOST = (BrokenPipeError, ConnectionResetError)


class _Survivor:
    """A text stream that, when its reader has gone, writes to /dev/null from then on."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.lost = False

    def _lose(self) -> None:
        if self.lost:
            return
        self.lost = True
        try:
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, self._stream.fileno())
            os.close(fd)
        except OSError:
            pass

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except _LOST:
            self._lose()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except _LOST:
            self._lose()
            try:
                self._stream.flush()   # what was buffered goes to /dev/null now
            except OSError:
                pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def survive_lost_output() -> None:
    """Make sys.stdout and sys.stderr survive a reader that went away (see the module doc)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _Survivor):
            setattr(sys, name, _Survivor(stream))


def private_files() -> None:
    """Every file and directory this process (and its children) creates: the user's only."""
    os.umask(STATE_UMASK)


def setup_process() -> None:
    private_files()
    survive_lost_output()


# ------------------------------------------------------------------------------------------------
# CPU idle states (PM QoS)
# ------------------------------------------------------------------------------------------------
CPU_DMA_LATENCY: Final = "/dev/cpu_dma_latency"


def hold_cpu_dma_latency(us: int, path: str = CPU_DMA_LATENCY) -> tuple[int | None, str]:
    """Ask the kernel to keep every CPU out of idle states whose exit latency exceeds ``us`` for as
    long as the returned file descriptor stays open (Linux PM QoS; what tuned's latency-performance
    profile sets). A CPU that idles in a deep state takes tens of µs to wake for a packet, a doorbell
    or a timer (about 40 µs on a KVM guest's halt-polling idle; docs/performance.md). The request
    ends when the descriptor is closed or the process exits: nothing on the host outlives it.

    Returns (fd, what happened) or (None, why not): a missing device or no permission is a line
    in the log, not a failure."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        return None, f"CPU idle states left alone: {path}: {e.strerror or e}"
    try:
        os.write(fd, int(us).to_bytes(4, sys.byteorder, signed=True))
    except OSError as e:
        os.close(fd)
        return None, f"CPU idle states left alone: writing {path}: {e.strerror or e}"
    return fd, f"CPU idle states: exit latency at most {us} µs while the appliance runs ({path})"
