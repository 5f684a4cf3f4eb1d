"""Token buckets and session budgets (appliance/gateway/budget.py): time is an argument."""
from __future__ import annotations

from appliance.gateway.budget import ADMIT, DISCONNECT, THROTTLE, ConnectionBudget, MessageBudget, TokenBucket

S = 1_000_000_000


def test_a_bucket_starts_full_and_refills_at_its_rate() -> None:
    b = TokenBucket(10, 5, 0)
    assert [b.take(0) for _ in range(6)] == [True] * 5 + [False]
    assert not b.take(S // 20)                 # half a token
    assert b.take(S // 10)                     # one
    assert sum(b.take(100 * S) for _ in range(20)) == 5   # never more than its depth


def test_a_session_is_throttled_then_disconnected() -> None:
    m = MessageBudget(100, 10, 3, 0)
    assert [m.admit(0) for _ in range(10)] == [ADMIT] * 10
    assert [m.admit(0) for _ in range(4)] == [THROTTLE] * 3 + [DISCONNECT]
    m = MessageBudget(100, 10, 3, 0)
    for _ in range(10):
        m.admit(0)
    assert m.admit(0) == THROTTLE
    assert m.admit(2 * S) == ADMIT             # refilled; the throttle window starts over
    assert m.throttled == 1


def test_connections_per_address_and_the_table_stays_bounded() -> None:
    c = ConnectionBudget(2, 3)
    assert [c.admit("10.0.0.1", 0) for _ in range(4)] == [True] * 3 + [False]
    assert c.admit("10.0.0.2", 0)
    for i in range(1000):
        c.admit(f"10.1.{i // 256}.{i % 256}", 0)
    assert c.admit("10.0.0.1", 10 * S)
    assert len(c.buckets) <= 2               # the full buckets were forgotten
