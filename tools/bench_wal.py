"""`matchwire bench wal | recovery | crash`: the write-ahead log, recovery and crash benchmarks."""
from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    pass
