"""Honest latency: HdrHistogram-backed histograms, the stage clock, the client's schedule, and
`matchwire bench latency` end to end (a real appliance, a real client; figures printed, never asserted)."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

from appliance.metrics import DUTY_STAGES, Histogram, StageClock, format_stages
from tools.bench_latency import Schedule


def test_histogram_is_hdr_with_every_percentile_and_round_trips() -> None:
    h = Histogram()
    rng = random.Random(7)
    vals = sorted(rng.randrange(1, 50_000_000) for _ in range(50_000))
    for v in vals:
        h.record(v)
    for p in (50, 90, 99, 99.9, 99.99):
        exact = vals[max(0, int(len(vals) * p / 100 + 0.5) - 1)]
        assert abs(h.percentile(p) - exact) <= exact / 500 + 1     # 3 significant digits
    assert h.max == vals[-1] and h.total == len(vals)
    s = h.summary_us()
    assert set(s) == {"count", "p50_us", "p90_us", "p99_us", "p99_9_us", "p99_99_us", "max_us"}
    back = Histogram.from_json(json.loads(json.dumps(h.to_json())))
    assert back.summary_us() == s
    log = h.hdr_log("run_1")
    assert log.startswith("#[Histogram log format version 1.3]") and "Tag=run_1," in log


def test_histogram_weights_and_clamps() -> None:
    h = Histogram()
    h.record(1000, 99)
    h.record(2_000_000, 1)
    assert h.total == 100 and h.percentile(50) <= 1001 and h.percentile(100) == 2_000_000
    h.record(10 ** 15)                       # beyond an hour: counted as an hour, said in the summary
    assert h.summary_us()["clamped_above_1h"] == 1 and h.max == 10 ** 15
    empty = Histogram()
    assert empty.percentile(99) == 0 and Histogram.from_json(empty.to_json()).total == 0


def test_stage_clock_splits_busy_time_by_stage() -> None:
    ticks = iter([0, 10, 30, 60, 100, 150])
    st = StageClock(("a", "b", "c"), clock=lambda: next(ticks))
    st.start()          # 0
    st.lap(0)           # 10
    st.lap(1)           # 30
    st.lap(1)           # 60
    st.start()          # 100
    st.lap(2)           # 150
    rep = st.report(commands=5)
    assert rep["a"]["total_us"] == 0.0 and rep["a"]["laps"] == 1
    assert st.ns == [10, 50, 50] and st.laps == [1, 2, 1]
    assert rep["b"]["ns_per_lap"] == 25 and rep["c"]["ns_per_command"] == 10
    assert abs(sum(r["share"] for r in rep.values()) - 1.0) < 1e-3
    lines = format_stages(rep, ("c", "a", "b"))
    assert lines[0].split()[0] == "c" and len(lines) == 3
    assert len(DUTY_STAGES) == len(set(DUTY_STAGES))


def test_schedule_counts_latency_from_the_scheduled_time_not_the_send_time() -> None:
    s = Schedule(t0_ns=1_000_000, rate=1000, total=100)      # one order per ms
    assert not s.take_due(999_999)
    assert list(s.take_due(1_000_000)) == [0]
    assert list(s.take_due(1_500_000)) == []
    # The loop was 50 ms late: the 50 orders that fell due go out at once, each with its own time.
    late = s.take_due(51_000_000)
    assert list(late) == list(range(1, 51))
    assert s.scheduled(1) == 2_000_000 and s.scheduled(50) == 51_000_000
    answered_at = 52_000_000
    lat = [answered_at - s.scheduled(k) for k in late]
    assert max(lat) == 50_000_000 and min(lat) == 1_000_000   # send-time stamping would say 1 ms for all
    assert list(s.take_due(10 ** 12)) == list(range(51, 100)) and s.next_wake_ns() is None


def test_the_clients_tick_groups_what_falls_due_between_two_ticks() -> None:
    t0 = 5_000_000
    # 50,000/s on a 100 µs tick: the client wakes every 100 µs and sends the five orders due by then.
    s = Schedule(t0_ns=t0, rate=50_000, total=12, tick_ns=100_000)
    assert s.next_wake_ns() == t0 and list(s.take_due(t0)) == [0]
    assert s.next_wake_ns() == t0 + 100_000
    assert not s.take_due(t0 + 99_999)          # a wake between ticks (an answer came) sends nothing
    due = s.take_due(t0 + 100_500)
    assert list(due) == [1, 2, 3, 4, 5] and all(s.scheduled(k) <= t0 + 100_000 for k in due)
    # each keeps its own scheduled time: the tick's delay is in the latency figures
    assert [t0 + 100_000 - s.scheduled(k) for k in due] == [80_000, 60_000, 40_000, 20_000, 0]
    assert s.next_wake_ns() == t0 + 200_000
    assert list(s.take_due(t0 + 10 ** 9)) == list(range(6, 12)) and s.next_wake_ns() is None
    # 10,000/s on the same tick: every order at its own time
    s = Schedule(t0_ns=t0, rate=10_000, total=5, tick_ns=100_000)
    for k in range(5):
        assert s.next_wake_ns() == s.scheduled(k) and list(s.take_due(s.scheduled(k))) == [k]
    # 3,000/s (333.3 µs apart) on a 100 µs tick: each order at the first tick at or after its time,
    # and the tick's rounding agrees with scheduled()'s (no wake that finds nothing due)
    s = Schedule(t0_ns=t0, rate=3_000, total=30, tick_ns=100_000)
    for k in range(30):
        wake = s.next_wake_ns()
        assert wake is not None and s.scheduled(k) <= wake < s.scheduled(k) + 100_000
        assert (wake - t0) % 100_000 == 0 and list(s.take_due(wake)) == [k]


def test_bench_latency_end_to_end(tmp_path) -> None:
    hdr = tmp_path / "runs.hlog"
    png = tmp_path / "plot.png"
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "latency", "--rate", "400", "--seconds", "1",
                        "--protocol", "ouch", "--protocol", "fix", "--idle", "backoff", "--stages",
                        "--hdr-log", str(hdr), "--plot", str(png)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert [run["protocol"] for run in out["runs"]] == ["ouch", "fix"]
    for run in out["runs"]:
        assert run["sent"] == 400 and run["acked"] == 400, run
        assert run["order_to_ack"]["count"] == 400
        assert run["order_to_ack"]["p50_us"] <= run["order_to_ack"]["p99_us"] <= run["order_to_ack"]["max_us"]
        assert run["build"] in ("cpython", "mypyc") and run["idle"] == "backoff"
        # the client's CPU per order (what it takes from the gateway's CPU) and orders per batch
        assert run["client_cpu_us_per_order"] > 0 and 0.5 < run["mean_batch"] <= 400, run
        assert run["stages"]["match"]["laps"] > 0 and run["stages"]["ring poll + decode"]["laps"] > 0
        assert run["gateway_stages"]["in: session parse"]["laps"] > 0
        assert run["gateway_stages"]["out: journal + socket writes"]["laps"] > 0
        m = run["processes"]["matcher"]     # the partition's own figures, from its stats at shutdown
        assert m["running"] is True and m["pid"] > 0 and m["rss_bytes"] > 0, m
        # by default the client keeps off the matcher's CPU (the gateway's, on a host with two)
        assert run["client_tick_us"] == 100, run
        assert run["client_on"] == "gateway" and (len(m["cpus_allowed"]) != 1 or (os.cpu_count() or 1) < 2
                                                  or m["cpus_allowed"][0] not in run["client_cpus"]), run
        assert m["cpu_user_s"] >= 0 and m["cpu_system_s"] >= 0 and m["ctx_voluntary"] >= 0, m
    assert hdr.read_text().count("Tag=") == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "partition duty cycle by stage" in r.stdout and "gateway by stage" in r.stdout
    assert r.stdout.count("  matching process: CPU ") == 2, r.stdout


def test_bench_latency_puts_the_client_on_the_matchers_cpu_when_asked() -> None:
    r = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "latency", "--rate", "300", "--seconds", "0.5",
                        "--idle", "backoff", "--client-on", "matcher"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = json.loads(r.stdout.strip().splitlines()[-1])["runs"]
    assert run["sent"] == run["acked"] == 150, run
    matcher_cpus = run["processes"]["matcher"]["cpus_allowed"]
    assert run["client_on"] == "matcher" and run["client_cpus"] == matcher_cpus and len(matcher_cpus) == 1, run
    assert "client-on=matcher" in r.stdout


def test_bench_latency_bad_arguments_answer_in_one_line() -> None:
    for bad in (["--rate", "0"], ["--client-tick-us", "-1"]):
        r = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "latency", *bad],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, bad
