"""The kill test: a real worker process under load, SIGKILLed at random points, recovered, checked.

Each run starts `python -m tools.killworker` on the same WAL directory (start-up is recovery), lets
it append and match as fast as it can for a random time (0 to 0.5 s: some kills land in recovery,
some mid-batch, some while a snapshot is written), SIGKILLs it and checks the directory: every
acknowledged command is in the WAL as sent, the sequence has no gap, the acked match numbers agree
with the log (no fill lost or duplicated) and the recovered state hash equals an uninterrupted run
over the durable prefix. The last check replays the whole WAL from scratch. More runs:
`matchwire bench crash --runs 100`.
"""
from __future__ import annotations

import pytest

from tools.killworker import crash_runs


@pytest.mark.slow
def test_sigkill_at_random_points_loses_nothing_acknowledged(tmp_path) -> None:
    result = crash_runs(str(tmp_path / "wal"), runs=22, seed=11, max_delay_s=0.5, rng_seed=2024)
    assert result["kills"] >= 20
    assert result["acked_commands"] > 0 and result["durable_seq"] >= result["acked_seq"]
    assert result["fills"] > 0


@pytest.mark.slow
def test_sigkill_under_the_interval_policy_loses_nothing_acknowledged(tmp_path) -> None:
    result = crash_runs(str(tmp_path / "wal"), runs=6, seed=12, max_delay_s=0.5, rng_seed=7,
                        extra=("--policy", "interval", "--interval-ms", "3"))
    assert result["kills"] == 6 and result["durable_seq"] >= result["acked_seq"]
