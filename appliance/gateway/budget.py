"""Per-session and per-address budgets of a gateway, sans-IO (time is an argument, integers only).

Owned by the gateway's I/O thread. ``TokenBucket`` is the one rate limiter; ``MessageBudget`` is
what a session consults for every inbound message (of every kind); ``ConnectionBudget`` is what
the listener consults for every new connection of a source address. The limits come from the
config's ``[session_limits]`` (appliance/config.py, docs/config.md); what a client sees when it
goes over them is in docs/operations.md ("Session budgets").

    verdict = budget.admit(now_ns)      # ADMIT: process the message
                                        # THROTTLE: answer it with the protocol's reject, do not process
                                        # DISCONNECT: too many throttled in one second: drop the client
"""
from __future__ import annotations

from typing import Final

ADMIT: Final = 0
THROTTLE: Final = 1
DISCONNECT: Final = 2

_NS: Final = 1_000_000_000


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``depth`` saved; starts full. Owned by one thread."""

    __slots__ = ("rate_per_s", "depth_ns", "tokens_ns", "last_ns")

    def __init__(self, rate_per_s: int, depth: int, now_ns: int = 0) -> None:
        if rate_per_s < 1 or depth < 1:
            raise ValueError("a token bucket needs a rate and a depth of at least 1")
        self.rate_per_s = rate_per_s
        self.depth_ns = depth * _NS          # tokens in 1e-9 units: integer arithmetic
        self.tokens_ns = self.depth_ns
        self.last_ns = now_ns

    def take(self, now_ns: int) -> bool:
        """One token if there is one (True), else False."""
        elapsed = now_ns - self.last_ns
        if elapsed > 0:
            self.tokens_ns = min(self.depth_ns, self.tokens_ns + elapsed * self.rate_per_s)
            self.last_ns = now_ns
        if self.tokens_ns >= _NS:
            self.tokens_ns -= _NS
            return True
        return False


class MessageBudget:
    """Inbound messages of one session: a token bucket, and a disconnect after
    ``throttled_before_disconnect`` throttled messages within one second."""

    __slots__ = ("bucket", "limit", "window_start_ns", "throttled_in_window", "throttled", "rate_per_s")

    def __init__(self, rate_per_s: int, burst: int, throttled_before_disconnect: int, now_ns: int = 0) -> None:
        self.bucket = TokenBucket(rate_per_s, burst, now_ns)
        self.rate_per_s = rate_per_s
        self.limit = throttled_before_disconnect
        self.window_start_ns = 0
        self.throttled_in_window = 0
        self.throttled = 0                   # in the session's life, for counters

    def admit(self, now_ns: int) -> int:
        b = self.bucket      # b.take(now_ns), inline: this runs for every inbound message
        elapsed = now_ns - b.last_ns
        if elapsed > 0:
            level = b.tokens_ns + elapsed * b.rate_per_s
            b.tokens_ns = level if level < b.depth_ns else b.depth_ns
            b.last_ns = now_ns
        if b.tokens_ns >= _NS:
            b.tokens_ns -= _NS
            return ADMIT
        self.throttled += 1
        if now_ns - self.window_start_ns >= _NS:
            self.window_start_ns = now_ns
            self.throttled_in_window = 0
        self.throttled_in_window += 1
        return DISCONNECT if self.throttled_in_window > self.limit else THROTTLE

    def why(self) -> str:
        return (f"over {self.rate_per_s} messages/s: more than {self.limit} messages throttled in one second")


class ConnectionBudget:
    """New connections per source address: one token bucket per address, forgotten once full again
    (so the table holds only addresses seen within the last depth/rate seconds: bounded)."""

    __slots__ = ("rate_per_s", "depth", "buckets", "_swept_ns")

    def __init__(self, rate_per_s: int, depth: int) -> None:
        self.rate_per_s = rate_per_s
        self.depth = depth
        self.buckets: dict[str, TokenBucket] = {}
        self._swept_ns = 0

    def admit(self, address: str, now_ns: int) -> bool:
        b = self.buckets.get(address)
        if b is None:
            b = self.buckets[address] = TokenBucket(self.rate_per_s, self.depth, now_ns)
        ok = b.take(now_ns)
        if now_ns - self._swept_ns >= _NS:
            self._sweep(now_ns)
        return ok

    def _sweep(self, now_ns: int) -> None:
        self._swept_ns = now_ns
        full = self.depth * _NS
        for addr in [a for a, b in self.buckets.items()
                     if b.tokens_ns + (now_ns - b.last_ns) * b.rate_per_s >= full]:
            del self.buckets[addr]
