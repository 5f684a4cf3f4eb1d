"""Per-client message quotas of the re-request server, in fixed windows; time is an argument.

Each client (the requester's address and port) may be answered at most ``per_second`` messages
in each wall-clock second, ``per_minute`` in each minute and ``per_day`` in each day (windows are
``now_ns // period``: fixed, aligned on the epoch, UTC days). ``grant(client, want, now_ns)``
returns how many of the ``want`` messages the client may have now (0..want) and charges them to
every window; 0 in a limit means no limit of that period.

The client table is bounded (``max_clients``): when it is full, entries whose day is over are
dropped; if none is, a new client is granted nothing (counted in ``refused_table_full``) until a
day ends. Known clients keep their quotas.
"""
from __future__ import annotations

from typing import Hashable, NamedTuple

__all__ = ["QuotaLimits", "ClientQuotas", "SECOND_NS", "MINUTE_NS", "DAY_NS"]

SECOND_NS = 1_000_000_000
MINUTE_NS = 60 * SECOND_NS
DAY_NS = 86_400 * SECOND_NS


class QuotaLimits(NamedTuple):
    """Messages a client may be answered per second, minute and day (0: no limit)."""

    per_second: int = 100_000
    per_minute: int = 2_000_000
    per_day: int = 100_000_000


class ClientQuotas:
    """Owned by the server's event loop thread: the quota windows of every client heard of."""

    __slots__ = ("limits", "max_clients", "_clients", "refused_table_full")

    def __init__(self, limits: QuotaLimits = QuotaLimits(), max_clients: int = 10_000) -> None:
        if min(limits) < 0 or max_clients < 1:
            raise ValueError(f"quota: limits {limits} and max_clients {max_clients} must be >= 0 / >= 1")
        self.limits = limits
        self.max_clients = max_clients
        # client -> [second index, used, minute index, used, day index, used]
        self._clients: dict[Hashable, list[int]] = {}
        self.refused_table_full = 0

    def __len__(self) -> int:
        return len(self._clients)

    def grant(self, client: Hashable, want: int, now_ns: int) -> int:
        """How many of ``want`` messages ``client`` may be answered at ``now_ns``; charges them."""
        if want <= 0:
            return 0
        s, m, d = now_ns // SECOND_NS, now_ns // MINUTE_NS, now_ns // DAY_NS
        w = self._clients.get(client)
        if w is None:
            if len(self._clients) >= self.max_clients:
                self._purge(d)
                if len(self._clients) >= self.max_clients:
                    self.refused_table_full += 1
                    return 0
            w = self._clients[client] = [s, 0, m, 0, d, 0]
        if w[0] != s:
            w[0], w[1] = s, 0
        if w[2] != m:
            w[2], w[3] = m, 0
        if w[4] != d:
            w[4], w[5] = d, 0
        grant = want
        ps, pm, pd = self.limits
        if ps:
            grant = min(grant, ps - w[1])
        if pm:
            grant = min(grant, pm - w[3])
        if pd:
            grant = min(grant, pd - w[5])
        if grant <= 0:
            return 0
        w[1] += grant
        w[3] += grant
        w[5] += grant
        return grant

    def give_back(self, client: Hashable, n: int, now_ns: int) -> None:
        """Return ``n`` messages granted at ``now_ns`` and not sent after all (to the windows they
        were charged to, if those are still current)."""
        w = self._clients.get(client)
        if w is None or n <= 0:
            return
        for i, period in ((0, SECOND_NS), (2, MINUTE_NS), (4, DAY_NS)):
            if w[i] == now_ns // period:
                w[i + 1] = max(0, w[i + 1] - n)

    def _purge(self, day: int) -> None:
        stale = [c for c, w in self._clients.items() if w[4] != day]
        for c in stale:
            del self._clients[c]
