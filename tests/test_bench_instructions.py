"""The workloads `matchwire bench instructions` runs under callgrind, run here without it: each one
goes through the first commands of a generated flow and leaves nothing behind. (The instruction
counts are figures for a closing note, never asserted.)"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.bench_instructions import WORKLOADS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> str:
    base = tmp_path_factory.mktemp("flow") / "f"
    subprocess.run([sys.executable, "-m", "tools", "flow", "generate", str(base), "--events", "3000",
                    "--seed", "7", "--target", "300"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    return str(base) + ".bin"


@pytest.mark.parametrize("workload", WORKLOADS)
def test_each_workload_runs_the_flow(flow: str, workload: str) -> None:
    before = set(os.listdir("/dev/shm"))
    for n in ("2500", "0"):      # the measured run and the start-up-only run it is compared with
        r = subprocess.run([sys.executable, "tools/bench_instructions.py", workload, n, flow], cwd=ROOT,
                           capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert r.returncode == 0, r.stderr[-2000:]
    assert set(os.listdir("/dev/shm")) <= before
