"""`matchwire bench ...`: benchmarks that print figures; the last line of each is one JSON object.

Each benchmark lives in its own module listed in BENCH_MODULES, exposing `register(subparsers)`.
"""
from __future__ import annotations

import argparse
import importlib
from typing import Any

BENCH_MODULES: tuple[str, ...] = (
    "tools.bench_matching",
    "tools.bench_wal",  # wal, recovery, crash
    "tools.bench_feed",  # feed, subscriber, depth
    "tools.bench_pcap",  # pcap (gap-check and stats beside tshark)
    "tools.bench_ring",
    "tools.bench_retransmit",  # retransmit
    "tools.bench_pipeline",  # pipeline, restart
    "tools.bench_latency",  # latency
    "tools.bench_day",  # day
    "tools.bench_fix_state",  # fix-state
    "tools.bench_instructions",  # instructions (callgrind)
    "tools.bench_gateway",  # gateway
    "tools.bench_wakeup",  # wakeup
)


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="run a benchmark; the last line printed is one JSON object")
    bsub = p.add_subparsers(dest="bench", metavar="BENCHMARK")
    bsub.required = True
    for name in BENCH_MODULES:
        importlib.import_module(name).register(bsub)


def add_runs_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=1, help="repeat in fresh processes and report the median")
