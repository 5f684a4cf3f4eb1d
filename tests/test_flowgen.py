"""The project's standard flows (`matchwire flow generate`): byte for byte the shared benchmark
generator's (../shared/bench/flowgen.py, where it is here; in CI its absence fails), and what
FLOW.json says is what the matching engine does with FLOW.bin."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED, needs_shared

from appliance.catalogue import Ev, Event
from appliance.matching.engine import Engine
from tools.flowgen import generate, write_flow
from tools.flows import FLOW_FIRM_STP, decode_records, flow_instruments

FLOWGEN = SHARED / "bench" / "flowgen.py"
REPO = Path(__file__).resolve().parents[1]

# (events, instruments, seed, target): the standard f1 and f100 settings (fewer events), and small
# targets that make cancels, empty sides and marketable orders against one side common.
SETTINGS = [(20_000, 1, 42, 5_000), (20_000, 100, 42, 1_000), (20_000, 1, 7, 300), (5_000, 3, 1, 5),
            (3_000, 2, 99, 1)]


@needs_shared(FLOWGEN)
@pytest.mark.parametrize("events,instruments,seed,target", SETTINGS)
def test_the_flows_are_the_shared_generators_byte_for_byte(tmp_path: Path, events: int, instruments: int,
                                                           seed: int, target: int) -> None:
    args = ["--events", str(events), "--instruments", str(instruments), "--seed", str(seed), "--target", str(target)]
    theirs = subprocess.run([sys.executable, str(FLOWGEN), str(tmp_path / "theirs"), *args],
                            capture_output=True, text=True, timeout=300, check=True)
    ours = subprocess.run([sys.executable, "-m", "tools.cli", "flow", "generate", str(tmp_path / "ours"), *args],
                          capture_output=True, text=True, timeout=300, check=True, cwd=REPO)
    assert (tmp_path / "ours.bin").read_bytes() == (tmp_path / "theirs.bin").read_bytes()
    assert (tmp_path / "ours.json").read_bytes() == (tmp_path / "theirs.json").read_bytes()
    assert ours.stdout == theirs.stdout


def test_the_same_arguments_give_the_same_bytes(tmp_path: Path) -> None:
    a = write_flow(str(tmp_path / "a"), 4_000, 2, 5, 50)
    b = write_flow(str(tmp_path / "b"), 4_000, 2, 5, 50)
    assert a == b and (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
    assert generate(4_000, 2, 6, 50)[0] != (tmp_path / "a.bin").read_bytes()
    assert json.loads((tmp_path / "a.json").read_text()) == a


@pytest.mark.parametrize("events,instruments,seed,target", SETTINGS[2:])
def test_flow_json_is_what_the_engine_does(events: int, instruments: int, seed: int, target: int) -> None:
    data, meta = generate(events, instruments, seed, target)
    assert len(data) == 16 * events and meta["events"] == events
    engine = Engine(flow_instruments(instruments), FLOW_FIRM_STP)
    fills = filled = 0
    out: list[Event] = []
    for cmd in decode_records(data):
        out.clear()
        engine.apply(cmd, out)
        for ev in out:
            if ev[0] == Ev.EXECUTED:
                fills += 1
                filled += ev[3]
    assert (fills, filled, engine.resting_count()) == (meta["fills"], meta["filled_qty"], meta["resting_end"])
    book = engine.book(1)
    bids, asks = book.depth(0, 10**6), book.depth(1, 10**6)
    assert [bids[0][0] if bids else None, asks[0][0] if asks else None] == meta["bbo_end_instr0"]
    assert [len(bids), len(asks)] == meta["levels_end_instr0"]
    mix = meta["mix"]
    assert abs(sum(mix.values()) - 1) < 1e-9 and mix["cancel"] > 0 and mix["marketable_ioc"] > 0


def test_bad_arguments() -> None:
    for args in ((0, 1, 1, 1), (10, 0, 1, 1), (10, 1, 1, 0), (10, 70_000, 1, 1)):
        with pytest.raises(ValueError, match="flow:"):
            generate(*args)


def test_make_flows_uses_the_project_generator() -> None:
    text = (REPO / "Makefile").read_text()
    assert "matchwire flow generate flows/f1 --events 1000000 --seed 42 --target 5000" in text
    assert "flowgen.py" not in text and "../shared" not in text


@pytest.mark.parametrize("ci", ["true", ""])
def test_without_shared_ci_fails_and_a_laptop_skips(tmp_path: Path, ci: str) -> None:
    env = dict(os.environ, MATCHWIRE_SHARED=str(tmp_path / "no-shared"), CI=ci)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "byte_for_byte",
                        "tests/test_flowgen.py", "tests/test_ouch_codec.py"],
                       capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    if ci:
        assert r.returncode != 0 and "CI needs ../shared" in r.stdout, r.stdout[-2000:]
    else:
        assert r.returncode in (0, 5) and "CI needs" not in r.stdout and "skipped" in r.stdout, r.stdout[-2000:]
