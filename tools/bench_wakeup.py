"""`matchwire bench wakeup`: what it costs this host to wake a process on another CPU.

    matchwire bench wakeup [--rounds 2000] [--gap-us 200] [--cpu-dma-latency -1 --cpu-dma-latency 0]

An order crosses CPUs at least twice on its way to its answer (the partition's doorbell to a
sleeping gateway, the gateway's answer to its client). This measures one such crossing alone: a
process on one CPU writes a byte to a pipe, a process on another CPU echoes it back, round trip in
µs. The echoing process either sleeps in a blocking read (``sleep``: its CPU goes idle between
rounds, as a gateway's does between orders) or polls a non-blocking one in a loop (``spin``: its
CPU never idles; each empty poll is a system call and an exception in Python, so this is not a
floor). Between rounds the writer waits ``--gap-us`` (spinning) so that the sleeper's CPU idles;
during the round trip the writer itself sleeps in its read.

Each ``--cpu-dma-latency`` value is a run: -1 leaves the CPU idle states alone, 0 (or more) holds
that request on /dev/cpu_dma_latency for the run, as ``[appliance] cpu_dma_latency_us`` makes
``matchwire run`` do (docs/performance.md, "What an order waited for"). A request the host refuses
(no permission) is said in the run's line and JSON, and the run measures the host as it is.

Each run also says the echoing process's CPU (user and system, from wait4) per round: asleep,
what one sleep and wake-up costs the process that sleeps, which every process of the appliance
that sleeps between orders pays per order (spinning, it is the spin).

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from appliance.process import hold_cpu_dma_latency
from tools import jsonio

MODES = ("sleep", "spin")


def register(sub: Any) -> None:
    p = sub.add_parser("wakeup", help="round trip through a pipe to a process on another CPU, asleep or spinning, "
                                      "with and without PM QoS (/dev/cpu_dma_latency)")
    p.add_argument("--rounds", type=int, default=2000, help="round trips per run (1..100000; default 2000)")
    p.add_argument("--gap-us", type=int, default=200, help="pause between round trips (0..100000 µs; default 200)")
    p.add_argument("--cpu-dma-latency", type=int, action="append", metavar="US",
                   help="-1: idle states left alone; 0 or more: held for the run (repeatable; default -1 and 0)")
    p.set_defaults(func=_wakeup)


def _cpus() -> tuple[int, int]:
    """The echoer's and the writer's CPU: the first and the last allowed (one CPU: both on it)."""
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[0], allowed[-1]


def _echo(r: int, w: int, mode: str, rounds: int, cpu: int, deadline: float) -> None:
    """The child: echo ``rounds`` bytes, asleep in read() or spinning on a non-blocking one."""
    os.sched_setaffinity(0, {cpu})
    if mode == "spin":
        os.set_blocking(r, False)
    read, write = os.read, os.write
    for _ in range(rounds):
        while True:
            try:
                b = read(r, 1)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os._exit(3)
        if not b:
            os._exit(0)
        write(w, b)
    os._exit(0)


def _run(mode: str, rounds: int, gap_ns: int) -> dict[str, Any]:
    echo_cpu, own_cpu = _cpus()
    from_parent, to_child = os.pipe()     # (read end, write end)
    from_child, to_parent = os.pipe()
    deadline = time.monotonic() + 60 + rounds * (gap_ns / 1e9 + 0.01)
    pid = os.fork()
    if pid == 0:   # pragma: no cover (the child process)
        try:
            os.close(to_child)
            os.close(from_child)
            _echo(from_parent, to_parent, mode, rounds, echo_cpu, deadline)
        finally:
            os._exit(4)
    os.close(from_parent)
    os.close(to_parent)
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {own_cpu})
    clock = time.perf_counter_ns
    rtt: list[int] = []
    try:
        for _ in range(rounds):
            t = clock()
            os.write(to_child, b"x")
            if not os.read(from_child, 1):
                raise RuntimeError("the echoing process ended early")
            rtt.append(clock() - t)
            until = clock() + gap_ns
            while clock() < until:    # spin: this CPU stays awake, the echoer's idles
                pass
    finally:
        os.close(to_child)
        os.close(from_child)
        _, status, usage = os.wait4(pid, 0)
        os.sched_setaffinity(0, old)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the echoing process exited with {os.waitstatus_to_exitcode(status)}")
    rtt.sort()
    n = len(rtt)

    def pct(p: float) -> float:
        return round(rtt[min(n - 1, int(p * n))] / 1000, 1)

    # the echoer's CPU (user + system, from wait4) per round: asleep, what one sleep and wake-up
    # costs the process that sleeps; spinning, the spin
    cpu = round((usage.ru_utime + usage.ru_stime) * 1e6 / n, 1)
    return {"mode": mode, "cpus": [own_cpu, echo_cpu], "rounds": n,
            "p50_us": pct(0.5), "p90_us": pct(0.9), "p99_us": pct(0.99), "max_us": round(rtt[-1] / 1000, 1),
            "echo_cpu_us_per_round": cpu}


def _wakeup(args: argparse.Namespace) -> int:
    qos = args.cpu_dma_latency or [-1, 0]
    if not 1 <= args.rounds <= 100_000 or not 0 <= args.gap_us <= 100_000 or any(q < -1 for q in qos):
        sys.stderr.write("matchwire bench wakeup: --rounds is 1..100000, --gap-us 0..100000, "
                         "--cpu-dma-latency -1 or more\n")
        return 2
    out: dict[str, Any] = {"benchmark": "wakeup", "rounds": args.rounds, "gap_us": args.gap_us, "runs": []}
    for q in qos:
        fd, held = None, "idle states left alone"
        if q >= 0:
            fd, why = hold_cpu_dma_latency(q)
            held = "PM QoS held" if fd is not None else why
        try:
            for mode in MODES:
                r = _run(mode, args.rounds, args.gap_us * 1000)
                r.update(cpu_dma_latency_us=q, held=fd is not None, note=held)
                out["runs"].append(r)
                print(f"wakeup {mode:5} cpu-dma-latency={q:<3} CPU {r['cpus'][0]} <-> {r['cpus'][1]}: round trip "
                      f"p50 {r['p50_us']} p90 {r['p90_us']} p99 {r['p99_us']} max {r['max_us']} us, echoer CPU "
                      f"{r['echo_cpu_us_per_round']} us per round ({held})")
        finally:
            if fd is not None:
                os.close(fd)
    print(jsonio.dumps(out))
    return 0
