"""Onload readiness: the publisher (partition daemon), a gateway, a feed subscriber, and the snapshot
and retransmission servers `matchwire run` starts, run under an LD_PRELOAD library compiled here
(tests/onload/socktrace.c) that counts every socket-related libc call by call, detail and time. While orders flow, each process's calls must be ones Onload
accelerates (send/recv families, sendmmsg, poll/select/epoll); anything Onload hands to the kernel
(setsockopt, getsockopt, ioctl, fcntl, socket, bind, connect, epoll_ctl, raw syscall()) may happen
at start-up or now and then, never per message. The feed goes out by udp on l3 and by sendmmsg on
l2 and l1 (docs/operations.md has the Onload profile of each process)."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.gateway import ouch
from tools.demo import loopback_config

from test_fullstack import Stack

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the interposer")]

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path(__file__).resolve().parent / "onload" / "socktrace.c"
P150 = 1_500_000
BUY, SELL = b"B", b"S"

#: Calls Onload accelerates on its own sockets and epoll sets (the data path may use only these).
ACCELERATED = {"send", "sendto", "sendmsg", "sendmmsg", "recv", "recvfrom", "recvmsg", "recvmmsg",
               "__recv_chk", "__recvfrom_chk", "poll", "__poll_chk", "ppoll", "__ppoll_chk", "select",
               "pselect", "epoll_wait", "epoll_pwait", "accept", "accept4"}
#: System calls that would bypass Onload if made through syscall() instead of the libc function.
SOCKET_SYSCALLS = {7: "poll", 23: "select", 41: "socket", 42: "connect", 43: "accept", 44: "sendto",
                   45: "recvfrom", 46: "sendmsg", 47: "recvmsg", 49: "bind", 50: "listen", 54: "setsockopt",
                   55: "getsockopt", 232: "epoll_wait", 233: "epoll_ctl", 270: "pselect6", 271: "ppoll",
                   281: "epoll_pwait", 288: "accept4", 291: "epoll_create1", 299: "recvmmsg",
                   307: "sendmmsg"}


@dataclasses.dataclass
class Trace:
    """One process's counts: ``calls[(name, detail)] = [count per bucket]``."""

    pid: int
    cmdline: str
    t0_ns: int
    bucket_ns: int
    calls: dict[tuple[str, int], list[int]]

    def in_window(self, start_ns: int, end_ns: int) -> dict[tuple[str, int], int]:
        """Counts in the buckets lying wholly inside [start_ns, end_ns)."""
        first = -(-(start_ns - self.t0_ns) // self.bucket_ns)
        last = (end_ns - self.t0_ns) // self.bucket_ns      # exclusive
        out = {k: sum(v[max(0, first):max(0, last)]) for k, v in self.calls.items()}
        return {k: n for k, n in out.items() if n}

    def total(self) -> dict[tuple[str, int], int]:
        return {k: sum(v) for k, v in self.calls.items()}


def read_trace(path: Path) -> Trace | None:
    data = path.read_bytes()
    magic, pid, t0, bucket_ns, max_keys, buckets = struct.unpack_from("=IIQQII", data, 0)
    if magic != 0x5453574D:
        return None
    cmd = data[32:544].split(b"\0")[0].decode(errors="replace").strip()
    calls: dict[tuple[str, int], list[int]] = {}
    counts_at = 1024 + max_keys * 48
    for i in range(max_keys):
        state, _, detail = struct.unpack_from("=IIq", data, 1024 + i * 48)
        if state == 2:
            name = data[1024 + i * 48 + 16:1024 + i * 48 + 48].split(b"\0")[0].decode()
            calls[(name, detail)] = list(struct.unpack_from(f"={buckets}I", data, counts_at + i * buckets * 4))
    return Trace(pid, cmd, t0, bucket_ns, calls)


def describe(key: tuple[str, int]) -> str:
    name, detail = key
    if name == "setsockopt" or name == "getsockopt":
        return f"{name}(level {detail >> 16}, option {detail & 0xFFFF})"
    if name == "socket":
        return f"socket(domain {detail >> 16}, type {detail & 0xFF})"
    if name in ("ioctl", "fcntl", "syscall", "epoll_ctl"):
        return f"{name}({detail:#x})"
    return name


def test_publisher_gateway_and_subscriber_use_only_onload_accelerated_calls_on_the_hot_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = tmp_path / "libsocktrace.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(lib), str(SOURCE), "-ldl",
                    "-lpthread"], check=True, capture_output=True, timeout=120)
    traces = tmp_path / "traces"
    traces.mkdir()
    cfg = loopback_config(str(tmp_path), rng=random.Random())
    p = cfg.partitions[0]
    feeds = {ch: dataclasses.replace(f, transport=None if ch == "l3" else "sendmmsg") for ch, f in p.feeds.items()}
    cfg = dataclasses.replace(cfg, partitions=(dataclasses.replace(p, feeds=feeds),) + cfg.partitions[1:])
    stack = Stack(str(tmp_path), cfg)
    monkeypatch.setenv("LD_PRELOAD", str(lib))
    monkeypatch.setenv("SOCKTRACE_DIR", str(traces))
    groups = json.dumps({ch: [[f.a_group, f.a_port], [f.b_group, f.b_port]] for ch, f in feeds.items()})
    sub = subprocess.Popen([sys.executable, "-m", "tools.feed_peer", "receive", "--books", "--groups", groups,
                            "--interface", "127.0.0.1", "--timeout", "30", "--limit-s", "200"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert sub.stdout is not None and sub.stdout.readline().strip() == "ready"
        stack.start()
        monkeypatch.delenv("LD_PRELOAD")
        buyer, seller = stack.ouch("alfa", "alfa-pw"), stack.ouch("brvo", "brvo-pw")
        # warm-up: connections made, first orders through
        buyer.enter(1, BUY, 100, "ALPH", P150)
        buyer.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted))
        time.sleep(0.6)
        start = time.monotonic_ns()
        orders, urn = 0, 2
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and orders < 4000:
            seller.enter(urn, SELL, 100, "ALPH", P150)
            seller.wait_for(lambda m: isinstance(m, (ouch.L.OrderExecuted, ouch.L.OrderAccepted)))
            buyer.enter(urn + 1, BUY, 100, "ALPH", P150)
            buyer.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted))
            urn += 2
            orders += 2
        end = time.monotonic_ns()
        time.sleep(0.6)
        buyer.close()
        seller.close()
        assert stack.stop() == 0, stack.output()
        out, err = sub.communicate(timeout=120)
        assert sub.returncode == 0, err
    finally:
        if sub.poll() is None:
            sub.send_signal(signal.SIGKILL)
            sub.wait()
        if stack.proc is not None and stack.proc.poll() is None:
            os.killpg(stack.proc.pid, signal.SIGKILL)
            stack.proc.wait(30)
            for f in Path("/dev/shm").glob(cfg.appliance.name + ".*"):   # rings a killed run left
                f.unlink()
    received = json.loads(out.strip().splitlines()[-1])
    assert received["l3_hash"] is not None and received["messages"]["l3"] > orders

    found = [t for t in (read_trace(f) for f in sorted(traces.glob("*.trace"))) if t is not None]
    roles = {"publisher": "appliance.daemon", "gateway": "appliance.gateway.server",
             "subscriber": "tools.feed_peer receive", "snapshot server": "snapshot serve",
             "retransmission server": "retransmit serve"}
    per_message_limit = max(8, orders // 20)
    report: dict[str, Any] = {}
    for role, marker in roles.items():
        mine = [t for t in found if marker in t.cmdline]
        assert len(mine) == 1, (role, [t.cmdline for t in found])
        t = mine[0]
        hot = t.in_window(start, end)
        report[role] = {describe(k): n for k, n in sorted(hot.items(), key=lambda kv: -kv[1])}
        kernel = {describe(k): n for k, n in hot.items() if k[0] not in ACCELERATED and n > per_message_limit}
        assert kernel == {}, f"{role}: calls Onload hands to the kernel, per message: {kernel}; hot path: {report[role]}"
        raw = {SOCKET_SYSCALLS[d]: n for (name, d), n in t.total().items() if name == "syscall" and d in SOCKET_SYSCALLS}
        assert raw == {}, f"{role}: socket system calls through syscall(), which Onload cannot see: {raw}"
        domains = {d >> 16 for (name, d) in t.total() if name == "socket"}
        assert domains <= {1, 2}, f"{role}: sockets other than AF_INET/AF_UNIX: {domains}"
    # the recorder saw the hot path (these checks fail if the interposer recorded nothing)
    pub = report["publisher"]
    assert pub.get("send", 0) >= orders and pub.get("sendmmsg", 0) >= orders // 2, pub
    gw = report["gateway"]
    assert sum(n for k, n in gw.items() if k.startswith(("recv", "__recv"))) >= orders // 2, gw
    assert sum(n for k, n in gw.items() if k.startswith("send")) >= orders // 2, gw
    subr = report["subscriber"]
    assert sum(n for k, n in subr.items() if k.startswith(("recv", "__recv"))) >= orders, subr
    print(json.dumps({"orders": orders, "hot_path_calls": report}, indent=1))
