"""`matchwire bench gateway`: the gateway's CPU per order, in one process, repeatable under load.

    matchwire bench gateway [--orders 20000] [--protocol ouch|fix ...] [--per-read 1] [--profile N]

One GatewayServer as `matchwire run` builds it (the demo's loopback configuration in a temporary
state directory: its journal, its session stores and its rejects file on the file system, its
command and event rings in shared memory), with one client connection whose socket is replaced by
a sink that counts the bytes the gateway writes (no kernel, no event loop). The partition's side
runs in the same process between the gateway's calls: it takes the command records from the ring,
applies them to a real matching engine, encodes the events with the partition's EventEncoder and
puts them on the event ring, as the partition does.

Per order (``--per-read`` orders arrive in one read, as a busy client's do), the gateway's work is
what ``matchwire bench latency --stages`` times in the running process: the read (session parse,
risk, command encode, journal, ring publish, socket write), then the event ring read (decode, risk,
sessions, journal, socket write). Only those calls are timed, in CPU time of this thread
(time.thread_time_ns); the partition's side is not counted. The orders are those of the latency
benchmark: DAY limit orders of 100 shares around one price, buys and sells, so that some trade.

--profile N: the same run under cProfile (the gateway's calls only), its N costliest functions by
own time; the CPU figure of a profiled run is inflated by the profiler and not reported as such.

The last line printed is one JSON object: µs of CPU per order for each protocol, and digests of
the bytes written to the client and of the journal (the made-up sequencer clock makes them the same
from run to run on one day: a change of the gateway that must not change the wire can be checked;
FIX messages carry the gateway's own clock in SendingTime, so only the OUCH bytes repeat).
"""
from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import os
import pstats
import random
import shutil
import sys
import tempfile
import time
from typing import Any

from appliance import codec_ring as C
from appliance.matching.engine import Engine
from appliance.ring import Ring

PROTOCOLS = ("ouch", "fix")
MAX_ORDERS = 10_000_000


def register(sub: Any) -> None:
    p = sub.add_parser("gateway", help="the gateway's CPU per order (OUCH, FIX), in process, no sockets")
    p.add_argument("--orders", type=int, default=20_000, help="orders per protocol (default 20000)")
    p.add_argument("--protocol", action="append", choices=PROTOCOLS, default=None,
                   help="ouch or fix (repeat for both; default both)")
    p.add_argument("--per-read", type=int, default=1, help="orders arriving in one socket read (default 1)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="run under cProfile and print the N costliest functions")
    p.set_defaults(func=cmd_gateway)


class _Sink:
    """The connection's transport: takes the gateway's writes and counts them (no socket)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.writes = 0
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.bytes += len(data)
        self.writes += 1
        self.digest.update(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 0) if name == "peername" else default

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Partition:
    """The partition's side of the rings, in process: command records -> engine -> event records."""

    def __init__(self, config: Any, pname: str, cmd: Ring, evt: Ring, gateways: int, ts0: int) -> None:
        self.cons = cmd.consumer()
        self.prod = evt.producer()
        self.engine = Engine(config.partition_instruments(pname), config.firm_stp(),
                             rules=config.trading_rules(pname))
        gw_of_firm = {f.id: 0 for f in config.firms}
        self.encoder = C.EventEncoder(gw_of_firm, gateways)
        self.seq = 0
        self.ts0 = ts0     # the sequencer's clock, made up (a microsecond a command): same input, same bytes

    def step(self) -> int:
        recs = self.cons.poll(1024)
        if not recs:
            return 0
        results = []
        for rec in recs:
            cmd = C.decode_command(rec)
            events: list[Any] = []
            self.engine.apply(cmd, events)
            self.seq += 1
            results.append((self.seq, self.ts0 + self.seq * 1000, cmd, events))
        out: list[list[bytes]] = [[]]
        self.encoder.encode(results, out)
        for rec in out[0]:
            if not self.prod.try_publish(rec):
                raise RuntimeError("bench gateway: the event ring is full")
        return len(recs)


def _orders(protocol: str, n: int, target: str) -> list[bytes]:
    """The latency benchmark's orders (DAY limit, 100 shares, around 150.0000; half buys)."""
    rng = random.Random(7)
    out = []
    if protocol == "ouch":
        from feeds import ouch_layout as L
        from feeds import soupbintcp as soup
        for k in range(n):
            side = k & 1
            px = 1_500_000 + (rng.randrange(-50, 1) if side == 0 else rng.randrange(0, 51)) * 100
            msg = L.EnterOrder(k + 1, b"BS"[side:side + 1], 100, b"ALPH    ", px, b"0", b"Y", b"A", b"N", b"N",
                               b"L%013d" % k, 0)
            out.append(soup.encode_unsequenced_data(L.encode(L.ENTER_ORDER, msg)))
        return out
    from appliance.gateway.fixcodec import encode
    for k in range(n):
        side = k & 1
        px = 1_500_000 + (rng.randrange(-50, 1) if side == 0 else rng.randrange(0, 51)) * 100
        out.append(encode("D", [(49, "ALFA"), (56, target), (34, k + 2), (52, "20240131-14:05:09.123"),
                                (11, f"L{k}"), (55, "ALPH"), (54, "12"[side]), (60, "20240131-14:05:09.123"),
                                (38, 100), (40, "2"), (44, f"{px // 10000}.{px % 10000:04d}"), (59, "0")]))
    return out


def _login(protocol: str, target: str) -> bytes:
    if protocol == "ouch":
        from feeds import soupbintcp as soup
        return soup.encode_login_request("alfa", "alfa-pw", "", 0)
    from appliance.gateway.fixcodec import encode
    return encode("A", [(49, "ALFA"), (56, target), (34, 1), (52, "20240131-14:05:09.123"), (98, 0),
                        (108, 30), (554, "alfa-pw")])


def run_one(protocol: str, orders: int, per_read: int, profile: cProfile.Profile | None,
            root: str) -> dict[str, Any]:
    """Drive one gateway with ``orders`` orders; returns the CPU figures (ns) and the counts."""
    from appliance.gateway.server import FixConn, GatewayServer, OuchConn
    from tools.bench_latency import _config

    config, _cleanup = _config(root, "none", "backoff", "none", root)
    gw = config.gateways[0]
    state = os.path.join(root, "state")
    server = GatewayServer(config, gw.name, state)
    shm = os.path.join(root, "shm")
    os.makedirs(shm, exist_ok=True)
    parts: list[_Partition] = []
    server.rings, server.cmd_out, server.evt_in, server.bells, server.wakes = [], [], [], [], []
    slots, slot_size = config.appliance.ring_slots, config.appliance.ring_slot_size
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    try:
        for p in config.partitions:
            rc = Ring.create(f"{p.name}-cmd", slots, slot_size, shm)
            re_ = Ring.create(f"{p.name}-evt", slots, slot_size, shm)
            server.rings.append((rc, re_))
            server.cmd_out.append(rc.producer())
            cons = re_.consumer()
            cons.set_waiting(True)
            server.evt_in.append(cons)
            server.wakes.append(wake_w)
            parts.append(_Partition(config, p.name, rc, re_, len(config.gateways), server.midnight_ns + 36_000 * 10**9))
        server.live = [True] * len(parts)
        server.accepting = True
        conn = OuchConn(server) if protocol == "ouch" else FixConn(server)
        sink = _Sink()
        conn.transport = sink  # type: ignore[assignment]
        conn.peer = "bench"
        server.conns.add(conn)
        conn.data_received(_login(protocol, gw.fix_comp_id))
        session = conn.slot.session if conn.slot is not None else None
        if session is None or not (session.logged_in if protocol == "ouch" else session.logged_on):
            raise RuntimeError(f"bench gateway: the {protocol} login was not accepted")
        msgs = _orders(protocol, orders, gw.fix_comp_id)
        reads = [b"".join(msgs[i:i + per_read]) for i in range(0, len(msgs), per_read)]
        tt = time.thread_time_ns
        gw_ns = 0
        before = dict(server.counters)
        for data in reads:
            t0 = tt()
            if profile is not None:
                profile.enable()
            conn.data_received(data)
            if profile is not None:
                profile.disable()
            t1 = tt()
            for part in parts:
                part.step()
            t2 = tt()
            if profile is not None:
                profile.enable()
            server.poll_rings()
            if profile is not None:
                profile.disable()
            gw_ns += (t1 - t0) + (tt() - t2)
        commands = server.counters.get("commands", 0) - before.get("commands", 0)
        if commands != orders:
            raise RuntimeError(f"bench gateway: {commands} of {orders} orders reached the ring")
        with open(server.journal_path, "rb") as f:
            journal = hashlib.sha256(f.read()).hexdigest()[:16]
        return {"orders": orders, "cpu_ns": gw_ns, "bytes_out": sink.bytes, "writes": sink.writes,
                "journal_bytes": server.journal_bytes, "out_sha256": sink.digest.hexdigest()[:16],
                "journal_sha256": journal}
    finally:
        for rc, re_ in server.rings:
            rc.close()
            re_.close()
            rc.unlink()
            re_.unlink()
        os.close(wake_r)
        os.close(wake_w)
        server.wakes = []
        server.rings = []
        os.close(server.journal_fd)
        for slot in server.slots:
            if slot.store is not None:
                slot.store.close()
        server.rejects.close()


def cmd_gateway(args: argparse.Namespace) -> int:
    prog = "matchwire bench gateway"
    if not 1 <= args.orders <= MAX_ORDERS:
        sys.stderr.write(f"{prog}: --orders must be 1 to {MAX_ORDERS}\n")
        return 2
    if not 1 <= args.per_read <= 1000:
        sys.stderr.write(f"{prog}: --per-read must be 1 to 1000\n")
        return 2
    if args.profile < 0:
        sys.stderr.write(f"{prog}: --profile must be 0 or more\n")
        return 2
    protocols = args.protocol or list(PROTOCOLS)
    result: dict[str, Any] = {"bench": "gateway", "orders": args.orders, "per_read": args.per_read,
                              "profiled": bool(args.profile)}
    for protocol in protocols:
        root = tempfile.mkdtemp(prefix="mw-bench-gw-")
        prof = cProfile.Profile() if args.profile else None
        try:
            r = run_one(protocol, args.orders, args.per_read, prof, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        us = r["cpu_ns"] / r["orders"] / 1000
        print(f"{protocol}: {r['orders']} orders, {args.per_read} per read: {us:.1f} µs of gateway CPU per order"
              f" ({r['bytes_out'] / r['orders']:.0f} bytes out, {r['journal_bytes'] / r['orders']:.0f} journal bytes"
              f" per order{'; under cProfile' if prof else ''})")
        result[protocol] = {"us_per_order": round(us, 2), "bytes_out": r["bytes_out"], "writes": r["writes"],
                            "journal_bytes": r["journal_bytes"], "out_sha256": r["out_sha256"],
                            "journal_sha256": r["journal_sha256"]}
        if prof is not None:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.profile)
            print(s.getvalue().rstrip())
    import json
    print(json.dumps(result))
    return 0
