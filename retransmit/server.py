"""The retransmission server: MoldUDP64 re-request (UDP) and SoupBinTCP replay (TCP) in one process.

Both read the feed stores the partitions' publishers write (another process), through one
``StoreSet``; neither talks to the matching core. ``RetransmitServer`` wires them on one asyncio
loop; ``matchwire retransmit serve`` (appliance/servers.py) runs it until SIGTERM.
"""
from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from feeds.moldudp64 import DEFAULT_MAX_PAYLOAD
from retransmit.quota import ClientQuotas, QuotaLimits
from retransmit.replay import ReplaySource
from retransmit.rerequest import DEFAULT_MAX_BYTES, DEFAULT_MAX_COUNT, RerequestCore, RerequestServer
from retransmit.soupserver import SoupServerSettings
from retransmit.stores import StoreSet
from retransmit.tcpserver import SoupTcpServer

__all__ = ["RetransmitSettings", "RetransmitServer"]


@dataclasses.dataclass(frozen=True)
class RetransmitSettings:
    """What ``matchwire retransmit serve`` reads from [retransmit] (docs/config.md)."""

    stores: tuple[str, ...]
    bind: str = "127.0.0.1"
    rerequest_port: int = 31001
    replay_port: int = 31002
    tcp: SoupServerSettings = SoupServerSettings("mdata", "mdata")
    quotas: QuotaLimits = QuotaLimits()
    max_clients: int = 10_000
    max_count: int = DEFAULT_MAX_COUNT
    max_bytes: int = DEFAULT_MAX_BYTES
    max_payload: int = DEFAULT_MAX_PAYLOAD
    retain_messages: int = 0
    rerequest_transport: str = "udp"       # answers: udp (one sendto each) | sendmmsg (one call each)


class RetransmitServer:
    """Owned by the asyncio loop's thread: the UDP re-request and TCP replay servers of some stores."""

    def __init__(self, settings: RetransmitSettings) -> None:
        self.settings = settings
        self.stores = StoreSet(list(settings.stores))
        self.core = RerequestCore(self.stores, ClientQuotas(settings.quotas, settings.max_clients),
                                  max_count=settings.max_count, max_bytes=settings.max_bytes,
                                  max_payload=settings.max_payload,
                                  retain_messages=settings.retain_messages)
        self.replay = ReplaySource(self.stores, retain_messages=settings.retain_messages)
        self.tcp = SoupTcpServer(settings.tcp, self.replay)
        self.udp: RerequestServer | None = None

    async def start(self) -> dict[str, tuple[str, int]]:
        s = self.settings
        self.udp = RerequestServer(self.core, s.bind, s.rerequest_port,
                                   batched=s.rerequest_transport == "sendmmsg")
        self.udp.attach(asyncio.get_running_loop())
        tcp = await self.tcp.start(s.bind, s.replay_port)
        return {"rerequest": self.udp.address, "replay": tcp}

    def work(self) -> int:
        """What the server has done, as one growing count: re-requests answered, replay logins."""
        return sum(self.core.counters.values()) + self.tcp.counters["logins"]

    def stats(self) -> dict[str, Any]:
        return {"rerequest": self.core.stats(), "replay": dict(self.tcp.stats(), **self.replay.counters),
                "stores_opened": self.stores.opened}

    async def close(self) -> None:
        await self.tcp.close()
        if self.udp is not None:
            self.udp.close()
            self.udp = None
        self.stores.close()
