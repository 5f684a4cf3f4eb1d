"""`matchwire bench wakeup` (tools/bench_wakeup.py): real processes on real CPUs, a real pipe and the
real /dev/cpu_dma_latency; figures are printed, never asserted (bad arguments: test_cli_errors)."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.cli", "bench", "wakeup", *args],
                          capture_output=True, text=True, timeout=120)


def test_each_setting_and_mode_is_a_run_with_its_round_trips() -> None:
    p = _run("--rounds", "300", "--gap-us", "50")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    doc = json.loads(lines[-1])
    runs = doc["runs"]
    assert [(r["cpu_dma_latency_us"], r["mode"]) for r in runs] == [(-1, "sleep"), (-1, "spin"), (0, "sleep"), (0, "spin")]
    allowed = sorted(os.sched_getaffinity(0))
    for r in runs:
        assert r["rounds"] == 300 and 0 < r["p50_us"] <= r["p90_us"] <= r["p99_us"] <= r["max_us"], r
        assert r["cpus"] == [allowed[-1], allowed[0]]
        assert r["echo_cpu_us_per_round"] > 0, r     # the echoer's CPU per round, from wait4
    assert runs[0]["held"] is False
    assert runs[2]["held"] is os.access("/dev/cpu_dma_latency", os.W_OK)
    assert sum(1 for ln in lines if ln.startswith("wakeup ")) == 4

