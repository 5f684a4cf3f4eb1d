"""What the operating system says about one process: memory, CPU time, context switches, placement.

One function for every report that names a process (``matchwire admin status``, a partition's
``run/<partition>.stats.json``, the benchmarks)::

    process_figures(pid) -> {"pid", "running": True, "rss_bytes", "cpu_user_s", "cpu_system_s",
                             "ctx_voluntary", "ctx_involuntary", "cpus_allowed", "cpu_last",
                             "threads", "policy", "priority", "nice"}

A process that is gone (or a zombie nobody has reaped yet) gives ``{"running": False}``: a report
lists processes, then reads each one, and a process may end in between. Nothing here raises.

CPU times come from the kernel's per-process accounting (psutil, /proc/PID/stat): clock ticks,
100 a second on most kernels, so a figure is good to about 10 ms. A context switch is voluntary
when the process blocked (a sleep, a read with nothing to read, a doorbell wait) and involuntary
when the scheduler took the CPU from it: on a pinned busy-spinning matcher the involuntary count is
the one to watch (something else runs on its CPU).

A child already reaped by ``wait4`` is no longer in /proc: ``rusage_figures`` turns the resource
usage ``wait4`` returned into the same keys (its whole life, and the peak RSS instead of the last).
"""
from __future__ import annotations

import os
import resource
from typing import Any, Final

import psutil

POLICIES: Final = {os.SCHED_OTHER: "other", os.SCHED_FIFO: "fifo", os.SCHED_RR: "rr",
                   os.SCHED_BATCH: "batch", os.SCHED_IDLE: "idle"}


def process_figures(pid: int) -> dict[str, Any]:
    """The figures of process ``pid`` now; ``{"running": False}`` if it has ended (never raises)."""
    if pid <= 0:
        return {"running": False}
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            if p.status() == psutil.STATUS_ZOMBIE:
                return {"running": False}
            times = p.cpu_times()
            ctx = p.num_ctx_switches()
            out: dict[str, Any] = {
                "pid": pid, "running": True, "rss_bytes": p.memory_info().rss,
                "cpu_user_s": round(times.user, 3), "cpu_system_s": round(times.system, 3),
                "ctx_voluntary": ctx.voluntary, "ctx_involuntary": ctx.involuntary,
                "cpus_allowed": sorted(p.cpu_affinity() or []), "cpu_last": p.cpu_num(),
                "threads": p.num_threads(), "nice": p.nice(),
            }
        policy = os.sched_getscheduler(pid)
        out["policy"] = POLICIES.get(policy, str(policy))
        out["priority"] = os.sched_getparam(pid).sched_priority
        return out
    except (psutil.NoSuchProcess, ProcessLookupError):   # ZombieProcess is a NoSuchProcess
        return {"running": False}
    except (psutil.Error, OSError) as e:   # not ours to read (another user's, a hardened /proc)
        return {"pid": pid, "running": True, "unreadable": f"{type(e).__name__}: {e}"}


def rusage_figures(ru: resource.struct_rusage) -> dict[str, Any]:
    """The figures of a child ``wait4`` has reaped, from the resource usage it returned."""
    return {"running": False, "max_rss_bytes": ru.ru_maxrss * 1024,   # Linux counts kilobytes
            "cpu_user_s": round(ru.ru_utime, 3), "cpu_system_s": round(ru.ru_stime, 3),
            "ctx_voluntary": ru.ru_nvcsw, "ctx_involuntary": ru.ru_nivcsw}


def cpu_line(label: str, f: dict[str, Any]) -> str:
    """One line of a benchmark's report: CPU seconds and context switches of one process."""
    if "cpu_user_s" not in f:
        return f"{label}: not running"
    return (f"{label}: CPU {f['cpu_user_s'] + f['cpu_system_s']:.2f} s (user {f['cpu_user_s']:.2f}, "
            f"system {f['cpu_system_s']:.2f}); context switches {f['ctx_voluntary']} voluntary, "
            f"{f['ctx_involuntary']} involuntary")


def difference(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """The CPU times and context switches of one process between two readings (``after`` minus
    ``before``), the other figures as ``after`` has them."""
    if not (after.get("running") and before.get("running")):
        return {"running": False}
    out = dict(after)
    for k in ("cpu_user_s", "cpu_system_s"):
        out[k] = round(after[k] - before[k], 3)
    for k in ("ctx_voluntary", "ctx_involuntary"):
        out[k] = after[k] - before[k]
    return out
