"""`matchwire retransmit serve` and `matchwire snapshot serve`: the gap-fill servers (appliance.servers)."""
from __future__ import annotations

from typing import Any

from appliance import servers


def register(sub: Any) -> None:
    servers.register(sub)
