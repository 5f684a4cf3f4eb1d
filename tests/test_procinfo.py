"""Process figures (appliance/procinfo.py): what the kernel says of each process, in `admin status`
and a partition's stats, read with psutil; a process that has ended reads as not running.

The appliance test is a real `matchwire run` (tests/test_fullstack.py's Stack) with the partition's
feed and WAL stages in their own processes, so that every kind of process is there to report."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from appliance.config import Config
from appliance.process import CPU_DMA_LATENCY
from appliance.procinfo import difference, process_figures, rusage_figures
from appliance.gateway import ouch
from tools.demo import loopback_config

from test_fullstack import running_stack

FIGURES = ("rss_bytes", "cpu_user_s", "cpu_system_s", "ctx_voluntary", "ctx_involuntary", "cpus_allowed",
           "cpu_last", "threads", "policy", "priority", "nice")


def plausible(f: dict[str, Any], pid: int) -> None:
    """Running, this pid, every figure there and in range (no timing: CPU seconds only >= 0)."""
    assert f["running"] is True and f["pid"] == pid, f
    assert set(FIGURES) <= set(f), f
    assert f["rss_bytes"] > 0
    assert f["cpu_user_s"] >= 0 and f["cpu_system_s"] >= 0
    assert f["ctx_voluntary"] >= 0 and f["ctx_involuntary"] >= 0
    assert f["cpus_allowed"] and set(f["cpus_allowed"]) <= set(range(os.cpu_count() or 1)), f
    assert f["cpu_last"] in range(os.cpu_count() or 1), f
    assert f["threads"] >= 1
    assert f["policy"] in ("other", "fifo", "rr", "batch", "idle"), f


def test_figures_of_this_process_match_what_the_kernel_says() -> None:
    f = process_figures(os.getpid())
    plausible(f, os.getpid())
    assert f["cpus_allowed"] == sorted(os.sched_getaffinity(0))
    assert f["nice"] == os.getpriority(os.PRIO_PROCESS, 0)
    assert f["policy"] == {os.SCHED_OTHER: "other", os.SCHED_BATCH: "batch", os.SCHED_IDLE: "idle",
                           os.SCHED_FIFO: "fifo", os.SCHED_RR: "rr"}[os.sched_getscheduler(0)]


def test_a_process_that_exited_reads_as_not_running() -> None:
    """Ended and reaped (the pid no longer exists), ended and not yet reaped (a zombie): both
    {"running": False}, no exception; pid 0 (a child never started) likewise."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while psutil.Process(p.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert psutil.Process(p.pid).status() == psutil.STATUS_ZOMBIE
    assert process_figures(p.pid) == {"running": False}
    _, status, ru = os.wait4(p.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    p.returncode = 0   # reaped here, not by Popen
    if not psutil.pid_exists(p.pid):   # (unless the kernel gave the pid to a new process already)
        assert process_figures(p.pid) == {"running": False}
    assert process_figures(0) == {"running": False}
    assert process_figures(-1) == {"running": False}
    ended = rusage_figures(ru)
    assert ended["running"] is False and ended["max_rss_bytes"] > 0 and ended["cpu_user_s"] >= 0
    assert ended["ctx_voluntary"] >= 0 and ended["ctx_involuntary"] >= 0


def test_difference_is_the_work_between_two_readings() -> None:
    before = process_figures(os.getpid())
    sum(i * i for i in range(200_000))
    after = process_figures(os.getpid())
    d = difference(after, before)
    assert d["cpu_user_s"] == round(after["cpu_user_s"] - before["cpu_user_s"], 3) >= 0
    assert d["ctx_voluntary"] == after["ctx_voluntary"] - before["ctx_voluntary"] >= 0
    assert difference({"running": False}, before) == {"running": False}


def _pipelined(root: str) -> Config:
    """Every kind of process, with the host tuning of a production config: PM QoS held by the
    supervisor, the gateway polling for its answers."""
    base = loopback_config(root, rng=random.Random())
    return dataclasses.replace(
        base, partitions=tuple(dataclasses.replace(p, feed_stage="process", wal_stage="process")
                               for p in base.partitions),
        appliance=dataclasses.replace(base.appliance, cpu_dma_latency_us=0),
        gateways=tuple(dataclasses.replace(g, busy_poll_us=500) for g in base.gateways))


def _qos() -> int | None:
    """The kernel's current CPU latency request (/dev/cpu_dma_latency), or None if unreadable."""
    try:
        with open(CPU_DMA_LATENCY, "rb") as f:
            return int.from_bytes(f.read(4), sys.byteorder, signed=True)
    except OSError:
        return None


def _holds_qos(pid: int) -> bool:
    fd_dir = f"/proc/{pid}/fd"
    return any(os.readlink(os.path.join(fd_dir, fd)) == CPU_DMA_LATENCY for fd in os.listdir(fd_dir))


@pytest.mark.timeout(180)
def test_admin_status_and_the_partition_stats_carry_each_process_figures(tmp_path: Path) -> None:
    """`matchwire run`: GET /status lists under `processes` the supervisor, the partition and its
    two stages, the gateway and both servers, each running with plausible figures and the pid the
    host knows it by; after SIGTERM the partition's stats.json has the matcher's figures and each
    stage's whole-life figures from the wait4 that reaped it."""
    root = str(tmp_path)
    qos_before = _qos()
    with running_stack(root, _pipelined(root)) as stack:
        assert stack.proc is not None
        a = stack.ouch("alfa", "alfa-pw")
        for k in range(1, 21):   # the gateway polls for each answer (busy_poll_us)
            a.enter(k, b"B", 100, "ALPH", 1_300_000 - k * 100)
            a.wait_for(lambda m, k=k: isinstance(m, ouch.L.OrderAccepted) and m.user_ref_num == k)
        if os.access(CPU_DMA_LATENCY, os.W_OK):   # root: the supervisor holds PM QoS 0 while it runs
            assert _holds_qos(stack.proc.pid)
            assert _qos() == 0
        status = stack.admin("GET", "/status")
        procs = status["processes"]
        ready = json.loads(Path(stack.state, "run", "p0.ready.json").read_text())
        kids = {p.pid: " ".join(p.cmdline()) for p in psutil.Process(stack.proc.pid).children()}
        want = {"supervisor": ("supervisor", stack.proc.pid),
                "p0": ("partition", ready["pid"]),
                "p0.feed-stage": ("feed-stage", ready["feed_stage_pid"]),
                "p0.wal-stage": ("wal-stage", ready["wal_stage_pid"]),
                "gw0": ("gateway", next(pid for pid, c in kids.items() if "appliance.gateway.server" in c)),
                "retransmit-server": ("retransmit", status["servers"]["retransmit-server"]["pid"]),
                "snapshot-server": ("snapshot", status["servers"]["snapshot-server"]["pid"])}
        assert set(procs) == set(want), sorted(procs)
        for name, (role, pid) in want.items():
            assert procs[name]["role"] == role, (name, procs[name])
            plausible(procs[name], pid)
        assert "appliance.daemon" in kids[ready["pid"]]
        assert {procs[n]["pid"] for n in ("retransmit-server", "snapshot-server")} <= set(kids)
        assert procs["p0.feed-stage"]["partition"] == procs["p0.wal-stage"]["partition"] == "p0"
        # what the host says of placement: the matcher pinned, the servers SCHED_BATCH
        assert procs["p0"]["cpus_allowed"] == sorted(os.sched_getaffinity(ready["pid"]))
        assert len(procs["p0"]["cpus_allowed"]) == 1
        assert procs["retransmit-server"]["policy"] == procs["snapshot-server"]["policy"] == "batch"
        a.close()
        assert stack.stop(60) == 0
    assert _qos() == qos_before          # released with the supervisor
    gw_stats = json.loads(Path(stack.state, "run", "gw0.stats.json").read_text())
    assert gw_stats["counters"]["commands"] >= 20     # and the cancels of its cancel-on-disconnect
    assert gw_stats["busy_poll"]["window_us"] == 500 and gw_stats["busy_poll"]["idle_polls"] >= 0
    assert set(gw_stats["gc"]) == {"gc_full_collections", "gc_full_last_us", "gc_full_max_us", "gc_collected",
                                 "gc_frozen", "gc_thaws"}
    stats = json.loads(Path(stack.state, "run", "p0.stats.json").read_text())
    figs = stats["processes"]
    plausible(figs["matcher"], ready["pid"])    # read by the matcher itself, just before it exited
    for stage, key in (("feed_stage", "feed_stage_pid"), ("wal_stage", "wal_stage_pid")):
        f = figs[stage]
        assert f["pid"] == ready[key] and f["running"] is False and f["exit_status"] == 0, f
        assert f["max_rss_bytes"] > 0 and f["cpu_user_s"] >= 0 and f["cpu_system_s"] >= 0, f
        assert f["ctx_voluntary"] >= 0 and f["ctx_involuntary"] >= 0, f


@pytest.mark.timeout(300)
def test_bench_pipeline_prints_the_cpu_and_context_switches_of_the_matcher_and_each_stage(tmp_path: Path) -> None:
    """`bench pipeline --stages-as feed+wal`: one line per process (matching process, WAL stage,
    feed stage) and the same figures in its JSON; the stages' from the wait4 that reaped them."""
    from tools.flowgen import write_flow
    write_flow(str(tmp_path / "f"), 3000, seed=7, target=300)
    r = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "pipeline", str(tmp_path / "f.bin"),
                        "--limit", "3000", "--stages-as", "feed+wal"], capture_output=True, text=True,
                       timeout=280, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-3000:]
    for label in ("matching process", "WAL stage", "feed stage"):
        assert f"  {label}: CPU " in r.stdout and "context switches" in r.stdout, r.stdout
    out = json.loads(r.stdout.strip().splitlines()[-1])
    procs = out["processes"]
    assert set(procs) == {"matcher", "wal_stage", "feed_stage"}, procs
    for name, f in procs.items():
        assert f["cpu_user_s"] >= 0 and f["cpu_system_s"] >= 0, (name, f)
        assert f["ctx_voluntary"] >= 0 and f["ctx_involuntary"] >= 0, (name, f)
    assert procs["matcher"]["running"] is True and procs["matcher"]["rss_bytes"] > 0
    for stage in ("wal_stage", "feed_stage"):
        assert procs[stage]["running"] is False and procs[stage]["exit_status"] == 0, procs[stage]
        assert procs[stage]["max_rss_bytes"] > 0
