"""The supervisor's stop path (appliance/run.py), without children: a stop signal must never be lost."""
from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from appliance.run import Supervisor
from tools.demo import loopback_config, write_config


def test_a_stop_signal_caught_by_the_start_up_handler_is_honoured_by_the_watch_loop(tmp_path: Any) -> None:
    # The start-up handler only records a signal; one that arrives after start() has looked at the record
    # but before the watch loop installed its own handler must still stop the supervisor.
    cfg = loopback_config(str(tmp_path))
    sup = Supervisor(write_config(cfg, os.path.join(str(tmp_path), "c.toml")), str(tmp_path / "state"))
    sup.early.append(signal.SIGTERM)
    rc = asyncio.run(asyncio.wait_for(sup.watch(), 10))
    assert rc == 0 and sup.failed is None
