"""Two network namespaces joined by a veth pair: "two hosts" on one machine, for the transport
tests and `bench feed --transport`. Needs root and iproute2; multicast sent into them stays there.

    namespace <tag>a                          namespace <tag>b
    +---------------------------+             +---------------------------+
    | lo up                     |             | lo up                     |
    | <tag>a  10.R.S.1/24  -----+---- veth ---+----- <tag>b  10.R.S.2/24  |
    +---------------------------+             +---------------------------+

``VethPair`` makes them on entry and deletes both namespaces (and with them the veth) on exit;
``in_netns(ns, argv)`` is a command line that runs ``argv`` inside one.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
from types import TracebackType

__all__ = ["VethPair", "unavailable", "in_netns"]


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return None


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def in_netns(ns: str, argv: list[str]) -> list[str]:
    """``argv`` run inside namespace ``ns``."""
    return ["ip", "netns", "exec", ns, *argv]


class VethPair:
    """Namespaces ``a`` and ``b`` with interfaces ``if_a``/``if_b`` and addresses ``addr_a``/``addr_b``."""

    def __init__(self, tag: str | None = None) -> None:
        rnd = random.Random(os.getpid() * 7919 ^ int.from_bytes(os.urandom(4), "big"))
        self.tag = tag or f"mw{os.getpid() % 100000}x{rnd.randrange(1000)}"
        self.a, self.b = self.tag + "a", self.tag + "b"
        self.if_a, self.if_b = self.a, self.b            # at most 15 characters
        r, s = rnd.randrange(16, 250), rnd.randrange(1, 250)
        self.addr_a, self.addr_b = f"10.{r}.{s}.1", f"10.{r}.{s}.2"
        self.made: list[str] = []

    def __enter__(self) -> VethPair:
        try:
            for ns in (self.a, self.b):
                _ip("netns", "add", ns)
                self.made.append(ns)
            _ip("link", "add", self.if_a, "netns", self.a, "type", "veth", "peer", "name", self.if_b,
                "netns", self.b)
            for ns, dev, addr in ((self.a, self.if_a, self.addr_a), (self.b, self.if_b, self.addr_b)):
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", addr + "/24", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.made.clear()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
