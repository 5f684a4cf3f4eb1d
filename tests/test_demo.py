"""`matchwire demo` end to end (a smaller order count): it exits 0 on its own, and the subscriber's
L3 book, built from the multicast feed, equals the partition's final book. Its output: every line
fits 100 columns, the state directory, config and ports stay at the top of the live view, rejects
are named, latencies read in their unit with a line saying what dominates them."""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from appliance.gateway.fixcodec import FixParser, encode
from tools.demo import (WIDTH, _Load, _show, demo_header, duration, fix_reject_key, latency_lines, loopback_config,
                        ouch_reject_key, wrap)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_demo_runs_and_the_feed_book_equals_the_partition_book() -> None:
    r = subprocess.run([sys.executable, "-m", "tools.cli", "demo", "--orders", "400", "--no-live-view", "--json"],
                       capture_output=True, text=True, timeout=110)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["match"] is True and summary["exit"] == 0
    assert summary["orders"] == 400
    assert summary["acks"] + sum(summary["rejects"].values()) == 400
    assert summary["fills"] > 0
    assert "EQUALS" in r.stdout
    text = r.stdout.strip().splitlines()[:-1]        # the JSON line is for machines
    assert all(len(line) <= WIDTH for line in text), [line for line in text if len(line) > WIDTH]
    assert text[0].startswith("matchwire demo: state in ") and "config.toml" in text[1] and "OUCH 127.0.0.1:" in text[2]
    ack = next(line for line in text if line.startswith("  order to ack"))
    assert re.search(r"p50 \d+(\.\d)? (us|ms|s),", ack)
    assert any(line.startswith("  mostly ") for line in text)


def test_durations_read_in_their_unit() -> None:
    assert [duration(x) for x in (3.25, 850.0, 85_458.9, 1_250_000.0)] == ["3.2 us", "850 us", "85.5 ms", "1.25 s"]


def test_latency_line_names_what_dominates() -> None:
    engine_bound = " ".join(line.strip() for line in latency_lines(
        {"p50_us": 1000.0}, {"p50_us": 900.0}, {"commands": 50, "batches": 10}, "batch"))
    assert "mostly the partition's batch" in engine_bound and "one fsync per batch" in engine_bound
    assert "90% of the median" in engine_bound and "mean batch 5.0" in engine_bound
    queued = latency_lines({"p50_us": 85_000.0}, {"p50_us": 11_000.0}, {"commands": 789, "batches": 54}, "batch")
    assert queued[0].startswith("  mostly waiting") and all(len(line) <= WIDTH for line in queued)


def test_rejects_are_named() -> None:
    assert ouch_reject_key(0x1E) == "OUCH shares exceed threshold (0x001E)"
    assert ouch_reject_key(0x06) == "OUCH fat finger (price collar) (0x0006)"
    raw = encode("8", [(150, "8"), (103, 99), (58, "2004 the order could breach the firm's position limit")])
    (m,) = FixParser().feed(raw)
    assert fix_reject_key(m) == "FIX 2004 the order could breach the firm's position limit"  # type: ignore[arg-type]


def test_the_live_view_keeps_the_header_and_fits(tmp_path: Path) -> None:
    cfg = loopback_config(str(tmp_path))
    header = demo_header(cfg, str(tmp_path), str(tmp_path / "config.toml"))
    out = io.StringIO()
    view = ("view", [(1_500_100, 700, 1)] * 5, [(1_500_200, 2800, 1)] * 5, [(1_500_100, 100, 7)] * 10,
            {"messages": 10, "trades": 3}, 10)
    load = _Load()
    load.rejects = {"OUCH fat finger (price collar) (0x0006)": 3}
    _show(load, 600, view, True, out, header=header)
    screen = re.sub(r"\x1b\[[HJ]", "", out.getvalue()).splitlines()
    assert screen[:len(header)] == header
    assert any(f"OUCH 127.0.0.1:{cfg.gateways[0].ouch_port}" in line for line in screen[:len(header)])
    assert str(tmp_path) in screen[0]
    assert all(len(line) <= WIDTH for line in screen)


def test_wrap_keeps_lines_within_the_width() -> None:
    items = [f"OUCH FIRM{i} next seq {i * 1000}" for i in range(20)]
    lines = wrap(items, "    ")
    assert all(len(line) <= WIDTH for line in lines) and len(lines) > 1
    assert ", ".join(line.strip().rstrip(",") for line in lines) == ", ".join(items)


def test_pip_install_sees_an_spdx_license() -> None:
    """setuptools >= 77 reads `license` as an SPDX expression: no deprecation banner on install."""
    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert doc["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in doc["build-system"]["requires"]
