"""A partition's stage processes (the feed stage, the WAL stage): forked from the matching process
once recovery is done, each the consumer of one shared-memory ring the matcher produces into.

    matcher ──ring──> stage        items: bytes whose first byte says what they are (the stage's module)

``fork_stage`` creates the ring and its doorbell and forks; the child arms PR_SET_PDEATHSIG (it
dies with the matcher), ignores the signals the matcher answers (the matcher drives its end with an
item), pins itself and runs its loop; ``StageLink`` is the matcher's handle: publish items with
back-pressure as a value (``backlog``), ring the doorbell only for a stage that sleeps, see whether
the stage still runs (one ``wait4`` per call: the matcher calls it when idle, about ten times a
second; the resource usage it returns for an ended stage is kept for the partition's stats), kill
it, close and unlink the ring.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import signal
import sys
from typing import Callable, Final

from appliance.ring import Ring, RingConsumer, RingProducer, make_bell, remove_bell, ring_bell

PR_SET_PDEATHSIG: Final = 1


def log(name: str, stage: str, text: str) -> None:
    sys.stderr.write(f"matchwire[{name} {stage}]: {text}\n")
    sys.stderr.flush()


def stage_cpu(configured: int, matcher_cpu: int, allowed: list[int]) -> int | None:
    """A stage's CPU: the configured one, else the first allowed CPU (of the process's mask before
    pinning) that is not the matcher's (None: share the matcher's, the only one allowed)."""
    if configured >= 0:
        return configured
    others = sorted(set(allowed) - {matcher_cpu})
    return others[0] if others else None


class StageLink:
    """The matcher's handle on one stage process. Owned by the matching thread."""

    def __init__(self, name: str, ring: Ring, pid: int, bell: int) -> None:
        self.name = name
        self.ring = ring
        self.producer: RingProducer = ring.producer()
        self.pid = pid
        self.bell = bell
        self.backlog: list[bytes] = []     # items the ring could not take yet, in order
        self.exit_status: int | None = None
        self.rusage: resource.struct_rusage | None = None   # the ended stage's, from wait4
        self.max_payload = ring.max_payload

    def send(self, item: bytes) -> None:
        self.backlog.append(item)
        self.flush()

    def flush(self) -> None:
        items = self.backlog
        if not items:
            return
        prod = self.producer
        was_empty = prod.free() == prod._slots
        k = prod.try_publish_many(items)
        if k:
            del items[:k]
            if was_empty and prod.consumer_waiting():
                ring_bell(self.bell)

    def check(self) -> int | None:
        """The stage's exit status once it has ended (None: it runs)."""
        if self.exit_status is None:
            try:
                pid, status, ru = os.wait4(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status, ru = self.pid, 0, None
            if pid:
                self.exit_status = os.waitstatus_to_exitcode(status)
                self.rusage = ru
        return self.exit_status

    def kill(self) -> None:
        if self.check() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                _, status, self.rusage = os.wait4(self.pid, 0)
                self.exit_status = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                self.exit_status = -signal.SIGKILL

    def close(self) -> None:
        if self.bell >= 0:
            os.close(self.bell)
            self.bell = -1
        self.ring.close()
        self.ring.unlink()
        remove_bell(self.ring.name)


def fork_stage(name: str, stage: str, ring_name: str, slots: int, slot_size: int, cpu: int | None,
               main: Callable[[RingConsumer, int], int], exit_failed: int, spins: bool = False) -> tuple[Ring, int, int]:
    """Create the ring and its doorbell, fork; in the child run ``main(consumer, bell)`` and exit with
    its status (``exit_failed`` and one line on an exception). Returns (ring, pid, bell) to the matcher.

    A stage that does not spin (``spins`` False: it shares a core) drops the matcher's SCHED_FIFO,
    which a fork inherits, so that it never preempts a gateway on that core; a spinning stage keeps
    it (it has its core to itself)."""
    ring = Ring.create(ring_name, slots, slot_size, replace=True)
    bell = make_bell(ring_name)
    sys.stderr.flush()
    sys.stdout.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = exit_failed
        try:
            _die_with_parent()
            if os.getppid() != parent:    # the matcher died before the death signal was armed
                os._exit(exit_failed)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                signal.signal(sig, signal.SIG_IGN)   # the matcher drives the stage's end
            if not spins and os.sched_getscheduler(0) in (os.SCHED_FIFO, os.SCHED_RR):
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            if cpu is not None:
                try:
                    os.sched_setaffinity(0, {cpu})
                except OSError as e:
                    log(name, stage, f"affinity to CPU {cpu} refused: {e}")
            log(name, stage, f"started (pid {os.getpid()}" + (f", CPU {cpu})" if cpu is not None else ")"))
            code = main(ring.consumer(), bell)
        except BaseException as e:   # one line, never a traceback; the matcher sees the exit status
            try:
                log(name, stage, f"failed: {type(e).__name__}: {e}; exiting {exit_failed}")
            finally:
                os._exit(exit_failed)
        os._exit(code)
    return ring, pid, bell


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
