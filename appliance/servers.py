"""The gap-fill servers, one process each: ``python -m appliance.servers retransmit serve ...`` (what
``matchwire run`` starts) or ``matchwire retransmit serve`` / ``matchwire snapshot serve`` (the same
commands, registered by tools/retransmit_cli.py).

    retransmit serve --config FILE --state-dir DIR [--partition NAME]...
                     [--store DIR]... [--bind ADDR] [--rerequest-port N] [--replay-port N] [--seconds S]
    snapshot serve   --config FILE [--state-dir DIR] [--partition NAME]...
                     [--bind ADDR] [--port N] [--rerequest HOST:PORT] [--replay HOST:PORT] [--seconds S]

Both read [retransmit] of the config (addresses, ports, credentials, limits: docs/config.md) and
serve every partition unless --partition names some. The retransmission server reads each
partition's feed store, ``STATE_DIR/feed/PARTITION`` (where the partition daemon's publisher writes
it, appliance.daemon.feed_store_dir), or the --store directories. The snapshot server joins each
partition's multicast groups ([[partitions]] feeds, [market_data] interface) and fills its own gaps
from the retransmission server. Port 0 picks a free port.

On start each prints one JSON line on stdout: {"event": "listening", ...addresses}, and, with
--state-dir, writes STATE_DIR/run/{retransmit,snapshot}-server.ready.json with the same. SIGTERM or
SIGINT (or --seconds) stops it; it then prints its counters as one JSON line and exits 0.
docs/retransmit.md says what they answer.

Both run CPython's full garbage collection only when they are quiet (appliance.gcpolicy, as the
gateway does): the snapshot server's books hold every resting order of the day, and the allocator
started a full collection of them three times in five seconds of 50,000 orders/s, each 22-40 ms of
CPU taken from the CPU it shares with the gateway (docs/performance.md). ``work()`` is each
server's count of what it has done; a GC_TICK_S with no work is quiet.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
import time
from typing import Any, Final

from appliance.config import Config, ConfigError, PartitionConfig, load
from appliance.fsutil import atomic_write
from appliance.gcpolicy import QuietCollector
from appliance.process import setup_process

GC_TICK_S: Final = 0.05      # a full collection waits for a tick this long without work


def _partitions(config: Config, names: list[str] | None) -> list[PartitionConfig]:
    if not names:
        return list(config.partitions)
    return [config.partition(n) for n in names]


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host, int(port)


def _client_host(bind: str) -> str:
    return "127.0.0.1" if bind in ("0.0.0.0", "") else bind


def _announce(state_dir: str | None, name: str, info: dict[str, Any]) -> None:
    if state_dir:
        run = os.path.join(state_dir, "run")
        os.makedirs(run, exist_ok=True)
        path = os.path.join(run, f"{name}.ready.json")
        data = json.dumps(dict(info, pid=os.getpid()), indent=1, sort_keys=True).encode()
        atomic_write(path, data, durable=False)
    print(json.dumps(info), flush=True)


async def _serve(server: Any, start: Any, name: str, state_dir: str | None, seconds: float | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    info = await start()
    collector = QuietCollector(time.monotonic_ns())
    collector.start()
    ticker = loop.create_task(_collect_when_quiet(server, collector))
    _announce(state_dir, name, {"event": "listening", "server": name, **info})
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass
    ticker.cancel()
    figures = dict(collector.figures(), gc_threshold=list(gc.get_threshold()))
    print(json.dumps({"event": "stopped", "server": name, "stats": server.stats(), "gc": figures}), flush=True)
    await server.close()
    return 0


async def _collect_when_quiet(server: Any, collector: QuietCollector) -> None:
    done = server.work()
    while True:
        await asyncio.sleep(GC_TICK_S)
        now = server.work()
        collector.tick(time.monotonic_ns(), now - done)
        done = now


def _soup_settings(r: Any) -> Any:
    from retransmit.soupserver import SoupServerSettings
    return SoupServerSettings(r.username, r.password, max_sessions=r.max_sessions,
                              send_buffer_bytes=r.send_buffer_bytes, stall_timeout_ns=r.slow_client_ms * 10**6,
                              wait_timeout_ns=r.snapshot_wait_ms * 10**6)


def cmd_retransmit_serve(args: argparse.Namespace) -> int:
    from appliance.config import RetransmitConfig
    from retransmit.quota import QuotaLimits
    from retransmit.server import RetransmitServer, RetransmitSettings
    setup_process()

    try:
        config = load(args.config) if args.config else None
        r = config.retransmit if config is not None else RetransmitConfig()
        stores = list(args.store or [])
        if not stores:
            if config is None or not args.state_dir:
                print("matchwire retransmit serve: give --config and --state-dir, or --store DIR", file=sys.stderr)
                return 2
            from appliance.daemon import feed_store_dir
            stores = [feed_store_dir(args.state_dir, p.name) for p in _partitions(config, args.partition)]
    except (ConfigError, KeyError, OSError) as exc:
        print(f"matchwire retransmit serve: {exc}", file=sys.stderr)
        return 2
    for d in args.store or []:   # named stores must exist: a typo is not a new, empty store
        if not os.path.isdir(d):
            print(f"matchwire retransmit serve: --store {d}: no such feed store directory", file=sys.stderr)
            return 2
    for d in stores:             # a partition's store under --state-dir: it may not have started yet
        os.makedirs(d, exist_ok=True)
    settings = RetransmitSettings(
        stores=tuple(stores), bind=args.bind or r.bind,
        rerequest_port=r.rerequest_port if args.rerequest_port is None else args.rerequest_port,
        replay_port=r.replay_port if args.replay_port is None else args.replay_port,
        tcp=_soup_settings(r), quotas=QuotaLimits(r.quota_per_second, r.quota_per_minute, r.quota_per_day),
        max_count=r.max_request_messages, max_bytes=r.max_request_bytes, retain_messages=r.retain_messages,
        rerequest_transport=r.rerequest_transport,
        max_payload=config.market_data.max_payload if config is not None else 1472)
    server = RetransmitServer(settings)

    async def start() -> dict[str, Any]:
        addrs = await server.start()
        return {**{k: list(v) for k, v in addrs.items()}, "stores": stores}

    return asyncio.run(_serve(server, start, "retransmit-server", args.state_dir, args.seconds))


def cmd_snapshot_serve(args: argparse.Namespace) -> int:
    from appliance.daemon import feed_config
    from retransmit.recovery import REPLAY, RERQUEST, RecoveryConfig
    from retransmit.snapshot_server import SnapshotServer
    setup_process()

    try:
        config = load(args.config)
        parts = _partitions(config, args.partition)
    except (ConfigError, KeyError, OSError) as exc:
        print(f"matchwire snapshot serve: {exc}", file=sys.stderr)
        return 2
    r = config.retransmit
    host = _client_host(r.bind)
    recovery = RecoveryConfig(small_gap=RERQUEST, large_gap=REPLAY, large_gap_messages=r.max_request_messages,
                              rerequest=args.rerequest or (host, r.rerequest_port),
                              replay=args.replay or (host, r.replay_port),
                              username=r.username, password=r.password, max_request=r.max_request_messages)

    def event(kind: str, channel: str, detail: str) -> None:
        if kind == "failed":
            print(f"matchwire snapshot serve: {channel}: recovery failed: {detail}", file=sys.stderr, flush=True)

    server = SnapshotServer([feed_config(config, p) for p in parts], recovery, _soup_settings(r),
                            interface=config.market_data.interface, on_event=event)

    async def start() -> dict[str, Any]:
        addr = await server.start(args.bind or r.bind, r.snapshot_port if args.port is None else args.port)
        return {"snapshot": list(addr), "partitions": [p.name for p in parts],
                "recovery": {"rerequest": list(recovery.rerequest or ()), "replay": list(recovery.replay or ())}}

    return asyncio.run(_serve(server, start, "snapshot-server", args.state_dir, args.seconds))


def register(sub: Any) -> None:
    """Add ``retransmit serve`` and ``snapshot serve`` to an argparse subparsers object."""
    r = sub.add_parser("retransmit", help="the MoldUDP64 re-request (UDP) and SoupBinTCP replay (TCP) server")
    rsub = r.add_subparsers(dest="retransmit_command", metavar="ACTION")
    rsub.required = True
    rs = rsub.add_parser("serve", help="serve the partitions' feed stores until SIGTERM")
    rs.add_argument("--config", help="the appliance TOML config ([retransmit]; default: built-in defaults)")
    rs.add_argument("--state-dir", help="the appliance's state directory: feed stores in STATE_DIR/feed/PARTITION")
    rs.add_argument("--partition", action="append", metavar="NAME", help="serve this partition (repeatable; default all)")
    rs.add_argument("--store", action="append", metavar="DIR", help="a feed store directory (repeatable; instead of --state-dir)")
    rs.add_argument("--bind", help="listen address (default: retransmit.bind)")
    rs.add_argument("--rerequest-port", type=int, help="UDP port (default: retransmit.rerequest_port; 0: any)")
    rs.add_argument("--replay-port", type=int, help="TCP port (default: retransmit.replay_port; 0: any)")
    rs.add_argument("--seconds", type=float, help="stop after this long (default: run until SIGTERM)")
    rs.set_defaults(func=cmd_retransmit_serve)
    s = sub.add_parser("snapshot", help="the GLIMPSE-style snapshot server (SoupBinTCP)")
    ssub = s.add_subparsers(dest="snapshot_command", metavar="ACTION")
    ssub.required = True
    ss = ssub.add_parser("serve", help="subscribe to the partitions' feeds and serve snapshots until SIGTERM")
    ss.add_argument("--config", required=True, help="the appliance TOML config")
    ss.add_argument("--state-dir", help="the appliance's state directory (for run/snapshot-server.ready.json)")
    ss.add_argument("--partition", action="append", metavar="NAME", help="serve this partition (repeatable; default all)")
    ss.add_argument("--bind", help="listen address (default: retransmit.bind)")
    ss.add_argument("--port", type=int, help="TCP port (default: retransmit.snapshot_port; 0: any)")
    ss.add_argument("--rerequest", type=_address, metavar="HOST:PORT",
                    help="the re-request server for the server's own gaps (default: from [retransmit])")
    ss.add_argument("--replay", type=_address, metavar="HOST:PORT",
                    help="the replay server for the server's own gaps (default: from [retransmit])")
    ss.add_argument("--seconds", type=float, help="stop after this long (default: run until SIGTERM)")
    ss.set_defaults(func=cmd_snapshot_serve)


def main(argv: list[str] | None = None) -> int:
    """``python -m appliance.servers retransmit|snapshot serve ...``: bad input is one line on stderr."""
    parser = argparse.ArgumentParser(prog="matchwire")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (OSError, ValueError) as e:
        print(f"matchwire {args.command} serve: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
