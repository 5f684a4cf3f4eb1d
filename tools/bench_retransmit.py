"""`matchwire bench retransmit`: TCP replay and snapshot over loopback; the last line is one JSON object.

    matchwire bench retransmit [--messages 1000000] [--orders 100000] [--repeat 3]

replay    a feed store of --messages ITCH 5.0 messages (the standard flow's mix: Add Order 56%,
          Order Delete 34%, Order Executed 10%) packed as the publisher packs them, served by the
          replay server (retransmit.replay behind the asyncio SoupBinTCP shell) in a process of
          its own; this process logs in with REPLAY-ONLY and reads to End of Session with the
          recovery client's parser (SoupClientSession: Sequenced Data -> MoldUDP64 blocks).
          Timed from connect to End of Session.  Goal: 1M messages under 1 s.
snapshot  an L3 book of --orders resting orders (10 instruments, prices around 100.00) in the
          server process, built from Add Orders by a subscriber's L3Book; a login builds the
          GLIMPSE-style snapshot from it (retransmit.snapshot) and streams it; this process reads
          to End of Session. Timed from connect to End of Session (build included), and the build
          alone. Goal: 100,000 orders under 0.5 s.

The median of --repeat runs is reported; the server and the client share a 2-core VM with
whatever else runs there: read figures as such.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from typing import Any

from tools import jsonio

SESSION = b"2311140130"
USER, PASSWORD = "bench", "bench"


def _make_store(directory: str, messages: int) -> None:
    from feeds import itch
    from feeds.moldudp64 import PacketBuilder, Session
    from feeds.store import FeedStore

    rnd = random.Random(42)
    stock = itch.stock8("F0000")
    with FeedStore(directory, SESSION) as store:
        builder = PacketBuilder(Session(SESSION))
        ref = 0
        done = 0
        while done < messages:
            batch = []
            for _ in range(min(65536, messages - done)):
                r = rnd.random()
                if r < 0.56 or ref == 0:
                    ref += 1
                    batch.append(itch.encode_add_order(1, 0, 34_200_000_000_000 + done, ref, b"B", 100, stock,
                                                       1_000_000))
                elif r < 0.90:
                    batch.append(itch.encode_order_delete(1, 0, 34_200_000_000_000 + done, rnd.randint(1, ref)))
                else:
                    batch.append(itch.encode_order_executed(1, 0, 34_200_000_000_000 + done, rnd.randint(1, ref),
                                                            100, done))
                done += 1
            builder.add_many(batch)
            store.append_packets(builder.flush())


def _book(orders: int) -> Any:
    from feeds import itch
    from feeds.books import L3Book
    from feeds.subscriber import ChannelReceiver
    from retransmit.snapshot import ReferenceSink

    rnd = random.Random(7)
    book, ref = L3Book(), ReferenceSink()
    receiver = ChannelReceiver("l3", [book, ref])
    msgs = [itch.encode_system_event(0, 0, 1, b"Q")]
    for loc in range(1, 11):
        stock = itch.stock8(f"F{loc:04d}")
        msgs.append(itch.encode_stock_directory(loc, 0, 1, stock, b"Q", b"N", 100, b"N", b"C", b"Z ", b"P", b"N",
                                                b" ", b" ", b"N", 0, b"N"))
        msgs.append(itch.encode_stock_trading_action(loc, 0, 1, stock, b"T", b" ", b"    "))
    for i in range(orders):
        loc = rnd.randint(1, 10)
        side = rnd.choice((b"B", b"S"))
        price = 1_000_000 + (-1 if side == b"B" else 1) * rnd.randint(1, 200) * 100
        msgs.append(itch.encode_add_order(loc, 0, 2 + i, i + 1, side, rnd.randint(1, 20) * 100,
                                          itch.stock8(f"F{loc:04d}"), price))
    receiver.load_snapshot(b"".join(len(m).to_bytes(2, "big") + m for m in msgs), len(msgs), len(msgs) + 1,
                           SESSION)
    return book, ref, receiver


class _BookSource:
    """A snapshot source over a fixed book (the snapshot server's source without the feed)."""

    def __init__(self, orders: int) -> None:
        self.book, self.ref, self.receiver = _book(orders)
        self.build_s: list[float] = []

    def open_stream(self, request: Any, replay_only: int | None, now_ns: int) -> Any:
        from retransmit.snapshot import SnapshotStream, build_l3_snapshot
        t0 = time.perf_counter()
        data, count = build_l3_snapshot(self.book, self.ref, self.receiver.expected)
        self.build_s.append(time.perf_counter() - t0)
        return SnapshotStream(SESSION, data, count)


def _serve(directory: str, orders: int, conn: Any) -> None:
    from retransmit.replay import ReplaySource
    from retransmit.soupserver import SoupServerSettings
    from retransmit.stores import StoreSet
    from retransmit.tcpserver import SoupTcpServer

    async def main() -> None:
        settings = SoupServerSettings(USER, PASSWORD)
        replay = SoupTcpServer(settings, ReplaySource(StoreSet([directory])))
        source = _BookSource(orders)
        snapshot = SoupTcpServer(settings, source)
        conn.send({"replay": await replay.start(), "snapshot": await snapshot.start()})
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_reader(conn.fileno(), stop.set)
        await stop.wait()
        conn.recv()
        conn.send({"build_s": source.build_s})
        await replay.close()
        await snapshot.close()

    asyncio.run(main())


def _timed_fetch(address: tuple[str, int], replay_only: int | None, sequence: int) -> tuple[float, int, bool]:
    from retransmit.soupclient import fetch
    t0 = time.perf_counter()
    r = fetch(address, USER, PASSWORD, SESSION, sequence, replay_only=replay_only, timeout_s=60, keep_blocks=False)
    return time.perf_counter() - t0, r.count, r.client.ended


def cmd_retransmit(args: argparse.Namespace) -> int:
    tmp = tempfile.mkdtemp(prefix="mw-bench-retransmit-")
    parent, child = mp.Pipe()
    proc: Any = None
    try:
        t0 = time.perf_counter()
        _make_store(tmp, args.messages)
        store_s = time.perf_counter() - t0
        proc = mp.get_context("fork").Process(target=_serve, args=(tmp, args.orders, child), daemon=True)
        proc.start()
        if not parent.poll(120):
            raise RuntimeError("bench retransmit: the server process did not start")
        addrs = parent.recv()
        replay_runs = [_timed_fetch(tuple(addrs["replay"]), args.messages, 1) for _ in range(args.repeat)]
        snap_runs = [_timed_fetch(tuple(addrs["snapshot"]), None, 0) for _ in range(args.repeat)]
        parent.send("stop")
        build = parent.recv()["build_s"] if parent.poll(30) else []
    finally:
        if proc is not None:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    assert all(ok and n == args.messages for _, n, ok in replay_runs), replay_runs
    assert all(ok and n == args.orders + 22 for _, n, ok in snap_runs), snap_runs   # S, 10 x (R, H), G
    replay_s = statistics.median(s for s, _, _ in replay_runs)
    snap_s = statistics.median(s for s, _, _ in snap_runs)
    build_s = statistics.median(build) if build else None
    print(f"replay    {args.messages:>9,d} messages {replay_s:7.3f} s {args.messages / replay_s:>12,.0f} msg/s"
          "   (goal: 1M under 1 s)")
    print(f"snapshot  {args.orders:>9,d} orders   {snap_s:7.3f} s {snap_runs[0][1] / snap_s:>12,.0f} msg/s"
          f"   (goal: 100,000 under 0.5 s; build {build_s or 0:.3f} s)")
    result = {
        "benchmark": "retransmit",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpu_count": os.cpu_count(),
        "repeat": args.repeat,
        "store_build_seconds": round(store_s, 3),
        "replay_messages": args.messages,
        "replay_seconds": round(replay_s, 4),
        "replay_msgs_per_sec": round(args.messages / replay_s),
        "replay_seconds_runs": [round(s, 4) for s, _, _ in replay_runs],
        "snapshot_orders": args.orders,
        "snapshot_messages": snap_runs[0][1],
        "snapshot_seconds": round(snap_s, 4),
        "snapshot_msgs_per_sec": round(snap_runs[0][1] / snap_s),
        "snapshot_build_seconds": round(build_s, 4) if build_s is not None else None,
        "snapshot_seconds_runs": [round(s, 4) for s, _, _ in snap_runs],
    }
    print(jsonio.dumps(result))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("retransmit", help="TCP replay of 1M messages and a 100,000-order snapshot over loopback")
    p.add_argument("--messages", type=int, default=1_000_000, help="messages in the replayed store (default 1M)")
    p.add_argument("--orders", type=int, default=100_000, help="resting orders in the snapshot's book")
    p.add_argument("--repeat", type=int, default=3, help="runs of each; the median is reported")
    p.set_defaults(func=cmd_retransmit)
