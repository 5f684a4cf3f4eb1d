"""Shared helpers of the matching tests: commands as plain specs, events as plain data.

Engines mutate the commands they apply (an accepted NewOrder becomes the live order), so a test
that runs two engines keeps each command as a *spec*, ``(NAME, field values in FIELDS order)``, and
builds a fresh object per engine. The same shape is how a command appears in a normalized event.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import pytest

from appliance.catalogue import COMMANDS, EVENT_LAYOUTS, Command, Event, NewOrder
from feeds import itch

# ../shared (the captures, PROTOCOLS.md, the shared flow generator): MATCHWIRE_SHARED overrides.
SHARED = Path(os.environ.get("MATCHWIRE_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def needs_shared(path: Path) -> pytest.MarkDecorator:
    """Mark a test that needs ``path`` under ../shared: skipped where it is missing, except in CI
    (CI=true), where a missing ../shared fails the test instead of hiding it."""
    if path.exists() or not IN_CI:
        return pytest.mark.skipif(not path.exists(), reason=f"{path} is not here (set MATCHWIRE_SHARED)")
    return pytest.mark.shared_missing(str(path))


def require_shared(path: Path) -> None:
    """The same inside a test or fixture: skip, or fail in CI."""
    if not path.exists():
        message = f"{path} is not here (set MATCHWIRE_SHARED)"
        if IN_CI:
            pytest.fail("CI needs ../shared: " + message, pytrace=False)
        pytest.skip(message)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("shared_missing"):
        pytest.fail(f"CI needs ../shared: {mark.args[0]} is not here (set MATCHWIRE_SHARED)", pytrace=False)

Spec = tuple[str, tuple[Any, ...]]


def pytest_report_header(config: Any) -> str:
    from appliance.build import build_kind
    return f"matchwire build: {build_kind()} (hot path {'compiled by mypyc' if build_kind() == 'mypyc' else 'pure Python'})"


def pytest_configure(config: Any) -> None:
    """`make test` / `make test-compiled` say which build they mean to test: a mismatch (a stale or
    missing compiled extension) stops the run instead of testing the other build unnoticed."""
    import os
    from appliance.build import build_kind
    want = os.environ.get("MATCHWIRE_EXPECT_BUILD")
    if want and want != build_kind():
        raise pytest.UsageError(f"expected the {want} build of the hot path, found {build_kind()} "
                                f"(make compiled / make pure)")


def compiled_build() -> bool:
    """The compiled classes check argument types at construction: a test of what the pure build
    refuses later (a malformed command) cannot even build its input there."""
    from appliance.build import build_kind
    return build_kind() == "mypyc"

_BY_NAME = {cls.NAME: cls for cls in COMMANDS.values()}
_ORDER_FIELDS = ("order", "maker", "taker", "old", "new", "buy", "sell")


def spec_of(cmd: Command) -> Spec:
    """A command as plain data: (NAME, its FIELDS values)."""
    return cmd.NAME, tuple(getattr(cmd, name) for name, _ in cmd.FIELDS)


def build(spec: Spec) -> Command:
    """A fresh command object from a spec."""
    cls = _BY_NAME[spec[0]]
    return cls(**{name: value for (name, _), value in zip(cls.FIELDS, spec[1])})


def order_key(o: NewOrder) -> tuple[int, ...]:
    """An order's identity as events show it."""
    return (o.order_id, o.ref, o.firm, o.side, o.price, o.stop_price, o.ord_type, o.tif)


def normalize(ev: Event) -> tuple[Any, ...]:
    """An event tuple as plain data: (event name, field values); orders and commands flattened."""
    name, fields = EVENT_LAYOUTS[ev[0]]
    values: list[Any] = [name]
    for field, value in zip(fields[1:], ev[1:]):
        if field == "command":
            values.append(spec_of(value))
        elif field in _ORDER_FIELDS:
            values.append(order_key(value))
        else:
            values.append(value)
    return tuple(values)


class MatchingKit:
    """The helpers above, handed to tests by the `kit` fixture."""

    spec_of = staticmethod(spec_of)
    build = staticmethod(build)
    normalize = staticmethod(normalize)
    order_key = staticmethod(order_key)

    @staticmethod
    def step(engine: Any, spec: Spec) -> list[tuple[Any, ...]]:
        """Apply a fresh command built from `spec`; return the normalized events."""
        out: list[Event] = []
        engine.apply(build(spec), out)
        return [normalize(ev) for ev in out]


@pytest.fixture(scope="session")
def kit() -> MatchingKit:
    return MatchingKit()


M = TypeVar("M")


def decode_as(cls: type[M], raw: bytes) -> M:
    """One ITCH message decoded, asserted to be of the type the test expects."""
    m = itch.decode(raw)
    assert isinstance(m, cls), m
    return m
