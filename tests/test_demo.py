"""`matchwire demo` end to end (a smaller order count): it exits 0 on its own, and the subscriber's
L3 book, built from the multicast feed, equals the partition's final book."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


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
