"""`matchwire bench latency`: order-to-ack latency through the whole appliance, measured honestly.

    matchwire bench latency [--rate 10000 --rate 50000] [--seconds 3] [--protocol ouch|fix ...]
                            [--wal none|tmpfs|disk ...] [--idle busy_spin|yield|backoff ...]
                            [--stages] [--hdr-log FILE] [--plot FILE.png] [--realtime]
                            [--client-on gateway|matcher ...] [--client-tick-us US ...]

For each combination of protocol, WAL placement, idle strategy and offered rate: a fresh appliance
(`matchwire run` on loopback: partition, gateway, retransmission and snapshot servers) and one client
process (an OUCH or FIX session) on the CPUs the matcher does not use.

Every order has a scheduled send time, t0 + k / rate. The client wakes on a timer tick (100 µs by
default: at a rate whose period is whole ticks, 10,000/s or 2,000/s, every order falls on one) and
sends each order at the first tick at or after its time (several at once above 10,000/s, or when it
fell behind). It measures order-to-ack latency from the **scheduled** time to the time it read the
answer (Order Accepted or Rejected; FIX ExecutionReport new or rejected). A client or appliance that falls behind therefore shows it in the figures, instead of
hiding it by sending later (coordinated omission). The client's own lateness (actual send time minus
scheduled time) is reported beside it, and its CPU per order (taken from the CPU it shares: the
gateway's, or the matcher's with --client-on matcher).

Histograms are HdrHistogram's (appliance/metrics.py). Reported per run: p50, p90, p99, p99.9,
p99.99, max, the achieved rate (answers per second over the run), the in-engine part (the
partition's clock: command ring drained -> event records on the gateway's ring, one value per
batch), the mean batch (orders sent over in-engine batches), and with --stages the partition's and
the gateway's time per stage. The orders are DAY limit orders around one price; the client's logout
cancels what still rests (the OUCH port cancels on disconnect), in a few batches of up to 1,024
commands that the partition's stage and CPU figures include (the mean batch counts orders only,
over every in-engine batch, those few included: the cancels would double the commands of a run
whose orders mostly rest).
--wal: none (durability policy none, WAL in a temporary directory), tmpfs (policy batch, WAL in
/dev/shm), disk (policy batch, WAL on the file system of --disk-dir, default the current directory).

On a shared 2-core machine these figures move with the neighbours' load: quote medians and ratios.
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import array
import ctypes
import dataclasses
import itertools
import multiprocessing
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from appliance.config import Config, SessionLimits
from appliance.metrics import DUTY_STAGES, GATEWAY_STAGES, Histogram, format_stages
from appliance.procinfo import cpu_line
from appliance.ring import remove_ring
from appliance.risk import FirmLimits
from tools import jsonio

WAL_PLACES = ("none", "tmpfs", "disk")
PR_SET_TIMERSLACK = 29
DEFAULT_TICK_US = 100    # the client's timer (Schedule.tick_ns): at 10,000/s or 2,000/s each order on its own tick


def register(sub: Any) -> None:
    lat = sub.add_parser("latency", help="order-to-ack latency at fixed offered rates (OUCH or FIX), "
                                         "from each order's scheduled send time")
    lat.add_argument("--rate", type=int, action="append", help="orders/s offered (repeatable; default 10000 50000)")
    lat.add_argument("--seconds", type=float, default=3.0, help="sending time per run (default 3)")
    lat.add_argument("--protocol", action="append", choices=("ouch", "fix"), help="repeatable; default ouch")
    lat.add_argument("--wal", action="append", choices=WAL_PLACES,
                     help="none | tmpfs | disk (repeatable; default none)")
    lat.add_argument("--durability", choices=("batch", "interval", "none"),
                     help="the WAL policy for tmpfs/disk runs (default batch); 'none' alone means --wal none")
    lat.add_argument("--disk-dir", default=".", help="where --wal disk puts the WAL (default: current directory)")
    lat.add_argument("--idle", action="append", choices=("busy_spin", "yield", "backoff"),
                     help="the matcher's idle strategy (repeatable; default busy_spin)")
    lat.add_argument("--stages", action="store_true", help="time each duty-cycle stage in the partition")
    lat.add_argument("--stages-as", action="append", choices=("inline", "feed", "feed+wal"), dest="layouts",
                     help="inline: the partition in one process (default); feed: publishing in a feed stage; "
                          "feed+wal: the WAL in a WAL stage too (repeatable)")
    lat.add_argument("--hdr-log", metavar="FILE", help="write every run's histogram (HdrHistogram log format)")
    lat.add_argument("--plot", metavar="FILE", help="draw the percentile plot of every run to a PNG (matplotlib)")
    lat.add_argument("--realtime", action="store_true", help="let the matcher take SCHED_FIFO and mlockall")
    lat.add_argument("--cpu-dma-latency", type=int, default=0, metavar="US",
                     help="the appliance's [appliance] cpu_dma_latency_us: hold every CPU out of idle states "
                          "slower to leave than US µs while it runs (default 0; -1: leave them alone)")
    lat.add_argument("--gateway-poll-us", type=int, default=0, metavar="US",
                     help="the gateway's busy_poll_us: after publishing commands, poll for their answers up "
                          "to US µs before sleeping (default 0: sleep at once)")
    lat.add_argument("--client-on", action="append", choices=("gateway", "matcher"), dest="client_on",
                     help="the benchmark client's CPU: gateway (the CPUs the matcher does not use, shared with "
                          "the gateway and the servers; the default) or matcher (the matcher's, which gives way "
                          "to it when it wakes; a host with a spare core has neither cost); repeatable")
    lat.add_argument("--client-tick-us", type=int, action="append", dest="client_ticks", metavar="US",
                     help="the benchmark client's timer: it wakes on a grid of US µs and sends together the "
                          "orders that fell due since its last wake, each measured from its own scheduled time "
                          "(default 100: at 10,000/s or 2,000/s every order at its own time; 0: every order at its "
                          "own time at any rate; repeatable)")
    lat.set_defaults(func=_latency)


# ================================================================================================
# The client: one session, orders at scheduled times
# ================================================================================================

class _Ouch:
    """OUCH 5.0 Enter Orders; the answer is matched by UserRefNum (= order index + 1)."""

    def __init__(self, sock: socket.socket, cfg: Config) -> None:
        from feeds import ouch_layout as L
        from feeds import soupbintcp as soup
        self.L, self.soup = L, soup
        sock.sendall(soup.encode_login_request("alfa", "alfa-pw", "", 0))
        self.parser = soup.FrameParser()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for kind, _payload in self.parser.feed(sock.recv(1 << 16)):
                if kind == soup.LOGIN_ACCEPTED:
                    return
                if kind == soup.LOGIN_REJECTED:
                    raise RuntimeError("OUCH login rejected")
        raise RuntimeError("no OUCH login answer")

    def order(self, k: int, side: int, px: int) -> bytes:
        L = self.L
        msg = L.EnterOrder(k + 1, b"BS"[side:side + 1], 100, b"ALPH    ", px, b"0", b"Y", b"A", b"N", b"N",
                           b"L%013d" % k, 0)
        return self.soup.encode_unsequenced_data(L.encode(L.ENTER_ORDER, msg))

    def answers(self, data: bytes) -> list[int]:
        out = []
        for kind, payload in self.parser.feed(data):
            if kind == b"S" and payload[:1] in (b"A", b"J"):
                out.append(int.from_bytes(payload[9:13], "big") - 1)
        return out


class _Fix:
    """FIX 4.4 NewOrderSingle; the answer (ExecutionReport new or rejected) is matched by ClOrdID."""

    def __init__(self, sock: socket.socket, cfg: Config) -> None:
        from appliance.gateway.fixcodec import FixMessage, FixParser, encode
        self.encode, self.FixMessage = encode, FixMessage
        self.target = cfg.gateways[0].fix_comp_id
        self.seq = 1
        self.parser = FixParser()
        sock.sendall(self._msg("A", [(98, 0), (108, 30), (554, "alfa-pw")]))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for m in self.parser.feed(sock.recv(1 << 16)):
                if isinstance(m, FixMessage) and m.msg_type == "A":
                    return
                if isinstance(m, FixMessage) and m.msg_type == "5":
                    raise RuntimeError(f"FIX logon refused: {m.get(58)}")
        raise RuntimeError("no FIX logon answer")

    def _msg(self, msg_type: str, fields: list[tuple[int, str | bytes | int]]) -> bytes:
        head: list[tuple[int, str | bytes | int]] = [(49, "ALFA"), (56, self.target), (34, self.seq),
                                                     (52, "20240131-14:05:09.123")]
        self.seq += 1
        return self.encode(msg_type, head + fields)

    def order(self, k: int, side: int, px: int) -> bytes:
        return self._msg("D", [(11, f"L{k}"), (55, "ALPH"), (54, "12"[side]), (60, "20240131-14:05:09.123"),
                               (38, 100), (40, "2"), (44, f"{px // 10000}.{px % 10000:04d}"), (59, "0")])

    def answers(self, data: bytes) -> list[int]:
        out = []
        for m in self.parser.feed(data):
            if isinstance(m, self.FixMessage) and m.msg_type == "8" and m.get(150) in ("0", "8"):
                cl = m.get(11) or ""
                if cl.startswith("L"):
                    out.append(int(cl[1:]))
        return out


class Schedule:
    """Order k is due at t0_ns + k / rate. Owned by the client loop.

    ``take_due(now_ns)`` returns the orders that fell due since the last call (all of them at once
    when the loop was late: each keeps its own scheduled time); latency is measured from
    ``scheduled(k)``, never from when the loop got round to sending.

    ``tick_ns`` is the client's timer: the loop wakes on a grid of ``tick_ns`` from ``t0_ns``
    (``next_wake_ns``), and sends together what fell due up to the last tick (``take_due``; a wake
    for answers between ticks sends nothing new). A rate whose period is
    a multiple of the tick wakes at every order's own time; a faster one sends up to tick / period
    orders per wake, each still measured from its own scheduled time (so the tick's delay is in the
    figures). ``tick_ns`` 0 wakes at every order's time."""

    __slots__ = ("t0_ns", "period", "total", "next_k", "tick_ns")

    def __init__(self, t0_ns: int, rate: int, total: int, tick_ns: int = 0) -> None:
        self.t0_ns = t0_ns
        self.period = 1_000_000_000 / rate
        self.total = total
        self.next_k = 0
        self.tick_ns = tick_ns

    def scheduled(self, k: int) -> int:
        return self.t0_ns + int(k * self.period)

    def take_due(self, now_ns: int) -> range:
        if now_ns < self.t0_ns or self.next_k >= self.total:
            return range(0)
        if self.tick_ns > 0:     # what fell due up to the last tick (a wake between ticks sends nothing new)
            now_ns -= (now_ns - self.t0_ns) % self.tick_ns
        due = min(self.total, int((now_ns - self.t0_ns) / self.period) + 1)
        while due < self.total and self.scheduled(due) <= now_ns:    # the same rounding as scheduled()
            due += 1
        while due > self.next_k and self.scheduled(due - 1) > now_ns:
            due -= 1
        r = range(self.next_k, max(due, self.next_k))
        self.next_k = r.stop
        return r

    def next_wake_ns(self) -> int | None:
        """When the loop should wake next: the next order's scheduled time, rounded up to the tick."""
        if self.next_k >= self.total:
            return None
        due = self.scheduled(self.next_k)
        tick = self.tick_ns
        if tick <= 0:
            return due
        return self.t0_ns + -(-(due - self.t0_ns) // tick) * tick


def _client(config_path: str, protocol: str, rate: int, seconds: float, cpus: list[int], tick_ns: int,
            conn: Any) -> None:
    """Send ``rate * seconds`` orders at their scheduled times; send back the histograms.

    The client shares a CPU with the gateway (the matcher has the other one), or with the matcher
    (``--client-on matcher``), so what it spends per order is taken from the appliance: every order
    is encoded before the clock starts, and the loop keeps raw nanosecond values in arrays that
    become HdrHistograms after the run."""
    from appliance.config import load
    cfg = load(config_path)     # read here: a compiled build's config classes do not travel by pickle
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:   # wake at the scheduled time, not up to 50 µs later (the default timer slack)
        ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    gw = cfg.gateways[0]
    sock = socket.create_connection(("127.0.0.1", gw.ouch_port if protocol == "ouch" else gw.fix_port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    proto: _Ouch | _Fix = _Ouch(sock, cfg) if protocol == "ouch" else _Fix(sock, cfg)
    sock.setblocking(False)
    total = int(rate * seconds)
    rng = random.Random(1)
    wire = []
    for k in range(total):
        side = k & 1
        px = 1_500_000 + (rng.randrange(-50, 1) if side == 0 else rng.randrange(0, 51)) * 100
        wire.append(proto.order(k, side, px))
    lat = array.array("q")         # (answer time - scheduled time) per answered order
    late = array.array("q")        # (send time - scheduled time) per order
    answered = bytearray(total)
    pending_out = b""
    clock = time.perf_counter_ns
    send, recv, answers = sock.send, sock.recv, proto.answers
    sched = Schedule(clock() + 1_000_000, rate, total, tick_ns)    # the first order is due in 1 ms
    scheduled, take_due, next_wake = sched.scheduled, sched.take_due, sched.next_wake_ns
    last_ack = t0 = sched.t0_ns
    cpu0 = time.process_time()     # the client's own CPU over the run: what it takes from the CPU it shares
    drain_until = t0 + int(seconds * 1e9) + 10_000_000_000
    readable = True
    while True:
        now = clock()
        due = take_due(now)
        if due:
            pending_out += b"".join(wire[due.start:due.stop])
            t_send = clock()
            late.extend([t_send - scheduled(k) for k in due])
        if pending_out:
            try:
                n = send(pending_out)
                pending_out = pending_out[n:]
            except BlockingIOError:
                pass
        if readable:
            try:
                data = recv(1 << 18)
            except BlockingIOError:
                data = b""
            if data:
                t_rx = clock()
                for k in answers(data):
                    if 0 <= k < total and not answered[k]:
                        answered[k] = 1
                        lat.append(t_rx - scheduled(k))
                        last_ack = t_rx
                continue
        if len(lat) >= total or now > drain_until:
            break
        nxt = next_wake()
        wait = (nxt - clock()) / 1e9 if nxt is not None else 0.01
        if wait > 0 or pending_out:
            # Read only when select says there is something: a recv that finds nothing is a system
            # call per order taken from the gateway's CPU.
            readable = bool(select.select([sock], [sock] if pending_out else [], [], max(0.0, wait))[0])
        else:
            readable = True    # behind schedule: send what is due, then look for answers
    cpu = time.process_time() - cpu0
    h, hl = Histogram(), Histogram()
    for v in lat:
        h.record(v)
    for v in late:
        hl.record(v)
    conn.send({"latency": h.to_json(), "send_lateness": hl.to_json(), "sent": sched.next_k, "acked": len(lat),
               "seconds": (last_ack - t0) / 1e9, "cpu_s": cpu})
    sock.close()


# ================================================================================================
# One run: a fresh appliance, one client
# ================================================================================================

def _config(root: str, wal: str, idle: str, durability: str, disk_dir: str, layout: str = "inline",
            cpu_dma_latency_us: int = -1, gateway_poll_us: int = 0) -> tuple[Config, list[str]]:
    from tools.demo import loopback_config
    cleanup: list[str] = []
    policy = "none" if wal == "none" else durability
    c = loopback_config(root, durability=policy, idle=idle)
    if layout != "inline":
        c = dataclasses.replace(c, partitions=tuple(dataclasses.replace(
            p, feed_stage="process", wal_stage="process" if layout == "feed+wal" else "inline")
            for p in c.partitions))
    if wal != "none":
        base = "/dev/shm" if wal == "tmpfs" else os.path.abspath(disk_dir)
        waldir = tempfile.mkdtemp(prefix="mw-bench-wal-", dir=base)
        cleanup.append(waldir)
        parts = tuple(dataclasses.replace(p, wal_dir=os.path.join(waldir, p.name),
                                          snapshot_dir=os.path.join(waldir, p.name, "snapshots"))
                      for p in c.partitions)
        c = dataclasses.replace(c, partitions=parts)
    limits = FirmLimits(max_qty=1_000_000, max_notional=None, position_limit=None, rate_per_second=None,
                        burst=None, collar_bps=None)
    firms = tuple(dataclasses.replace(f, limits=limits) for f in c.firms)
    # The one client offers up to the benchmark's rate: no session budget may throttle it.
    budget = SessionLimits(max_queued_bytes=1 << 28, messages_per_second=10_000_000, burst=20_000_000)
    gws = tuple(dataclasses.replace(g, busy_poll_us=gateway_poll_us) for g in c.gateways)
    app = dataclasses.replace(c.appliance, cpu_dma_latency_us=cpu_dma_latency_us)
    return dataclasses.replace(c, firms=firms, session_limits=budget, gateways=gws, appliance=app), cleanup


def _one(protocol: str, wal: str, idle: str, rate: int, args: argparse.Namespace,
         layout: str = "inline", client_on: str = "gateway", tick_us: int = DEFAULT_TICK_US) -> dict[str, Any]:
    from appliance.daemon import choose_cpu
    from appliance.metrics import STAGE_TIMING_ENV
    from tools.demo import write_config
    root = tempfile.mkdtemp(prefix="mw-bench-latency-")
    cfg, cleanup = _config(root, wal, idle, args.durability or "batch", args.disk_dir, layout,
                           args.cpu_dma_latency, args.gateway_poll_us)
    path = write_config(cfg, os.path.join(root, "config.toml"))
    state = os.path.join(root, "state")
    env = dict(os.environ)
    if args.stages:
        env[STAGE_TIMING_ENV] = "1"
    argv = [sys.executable, "-m", "tools.cli", "run", path, "--state-dir", state]
    if not args.realtime:
        argv.append("--no-realtime")
    log = open(os.path.join(root, "run.log"), "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        # Measured once every process is up: the servers start after the gateway, and their start-up
        # (imports, joining the groups) on the gateway's CPU is not the appliance's steady state.
        ready = [os.path.join(state, "run", f"{n}.ready.json")
                 for n in (cfg.gateways[0].name, "retransmit-server", "snapshot-server")]
        deadline = time.monotonic() + 120
        while not all(os.path.exists(r) for r in ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the appliance did not start: {open(log.name).read()[-2000:]}")
            time.sleep(0.05)
        matcher = choose_cpu(cfg.partitions[0].cpu)
        if client_on == "matcher":
            cpus = [matcher]
        else:
            cpus = sorted(set(os.sched_getaffinity(0)) - {matcher}) or sorted(os.sched_getaffinity(0))
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        cl = ctx.Process(target=_client, args=(path, protocol, rate, args.seconds, cpus, tick_us * 1000,
                                               child))
        cl.start()
        if not parent.poll(args.seconds + 120):
            raise RuntimeError("the client did not finish")
        res = parent.recv()
        cl.join(10)
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        stats = jsonio.load_path(os.path.join(state, "run", "p0.stats.json"))
        gw_path = os.path.join(state, "run", f"{cfg.gateways[0].name}.stats.json")
        gw_stats = jsonio.load_path(gw_path) if os.path.exists(gw_path) else {}
    finally:
        if proc.poll() is None:   # a run that failed: stop it as an operator would, kill it if it hangs
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                for p in cfg.partitions:      # what the killed partitions could not unlink
                    for g in cfg.gateways:
                        for name in cfg.ring_names(p.name, g.name).values():
                            remove_ring(name)
        log.close()
        for d in [root, *cleanup]:
            shutil.rmtree(d, ignore_errors=True)
    h = Histogram.from_json(res["latency"])
    eng = Histogram.from_json(stats["in_engine_histogram"])
    late = Histogram.from_json(res["send_lateness"])
    st = stats["stats"]
    return {"protocol": protocol, "wal": wal, "layout": layout, "durability": "none" if wal == "none" else args.durability or "batch",
            "idle": idle, "cpu_dma_latency_us": args.cpu_dma_latency, "gateway_poll_us": args.gateway_poll_us,
            "client_on": client_on, "client_cpus": cpus, "client_tick_us": tick_us,
            "offered_per_s": rate, "sent": res["sent"], "acked": res["acked"],
            "achieved_per_s": round(res["acked"] / res["seconds"]) if res["seconds"] > 0 else 0,
            "order_to_ack": h.summary_us(), "client_send_lateness": late.summary_us(),
            "client_cpu_us_per_order": round(res["cpu_s"] * 1e6 / max(res["sent"], 1), 1),
            "in_engine": eng.summary_us(), "mean_batch": round(res["sent"] / max(eng.total, 1), 2),
            "build": stats.get("build"), "stages": stats.get("stages"),
            "gateway_stages": gw_stats.get("stages"), "processes": stats.get("processes") or {}, "_hist": h}


def _plot(runs: list[dict[str, Any]], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("matchwire bench latency: --plot needs matplotlib (pip install 'matchwire[plot]')")
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r in runs:
        pts = [(p, v) for p, v in r["_hist"].percentile_table() if p < 100.0]
        xs = [1.0 / (1.0 - p / 100.0) for p, _ in pts]
        ax.plot(xs, [v / 1000 for _, v in pts], marker=".", label=_label(r))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = [1, 10, 100, 1000, 10000, 100000, 1000000]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"])
    ax.set_xlabel("percentile")
    ax.set_ylabel("order-to-ack latency (µs, from the scheduled send time)")
    ax.set_title("matchwire order-to-ack latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _label(r: dict[str, Any]) -> str:
    return f"{r['protocol']} {r['offered_per_s']}/s wal={r['wal']} idle={r['idle']}" + (
        f" stages-as={r['layout']}" if r.get("layout", "inline") != "inline" else "") + (
        f" cpu-dma-latency={r['cpu_dma_latency_us']}" if r.get("cpu_dma_latency_us", -1) >= 0 else "") + (
        f" gateway-poll={r['gateway_poll_us']}us" if r.get("gateway_poll_us") else "") + (
        f" client-on={r['client_on']}" if r.get("client_on", "gateway") != "gateway" else "") + (
        f" client-tick={r['client_tick_us']}us" if r.get("client_tick_us", DEFAULT_TICK_US) != DEFAULT_TICK_US else "")


def _latency(args: argparse.Namespace) -> int:
    rates = args.rate or [10_000, 50_000]
    if any(r <= 0 for r in rates) or args.seconds <= 0:
        sys.stderr.write("matchwire bench latency: --rate and --seconds must be positive\n")
        return 2
    if args.cpu_dma_latency < -1 or args.gateway_poll_us < 0 or any(t < 0 for t in args.client_ticks or []):
        sys.stderr.write("matchwire bench latency: --cpu-dma-latency is -1 or more, --gateway-poll-us and "
                         "--client-tick-us 0 or more\n")
        return 2
    if args.realtime and "matcher" in (args.client_on or []):
        sys.stderr.write("matchwire bench latency: --client-on matcher cannot run beside a --realtime matcher "
                         "(SCHED_FIFO spinning never gives way to it)\n")
        return 2
    wals = args.wal or (["none"] if args.durability in (None, "none") else ["tmpfs"])
    if args.durability == "none":
        wals = ["none"]
    if "disk" in wals and not os.path.isdir(args.disk_dir):
        sys.stderr.write(f"matchwire bench latency: --disk-dir {args.disk_dir}: not a directory\n")
        return 2
    from appliance.build import build_kind
    out: dict[str, Any] = {"benchmark": "latency", "seconds": args.seconds, "runs": [], "cpus": os.cpu_count(),
                           "build": build_kind(), "load_avg_before": round(os.getloadavg()[0], 2)}
    runs = []
    for layout, protocol, wal, idle, client_on, tick_us, rate in itertools.product(
            args.layouts or ["inline"], args.protocol or ["ouch"], wals, args.idle or ["busy_spin"],
            args.client_on or ["gateway"], args.client_ticks or [DEFAULT_TICK_US], rates):
        r = _one(protocol, wal, idle, rate, args, layout, client_on, tick_us)
        runs.append(r)
        a, e, lt = r["order_to_ack"], r["in_engine"], r["client_send_lateness"]
        print(f"latency {_label(r)} [{r['build']}]: {r['acked']} of {r['sent']} answered, achieved "
              f"{r['achieved_per_s']}/s; order-to-ack p50 {a['p50_us']} p90 {a['p90_us']} p99 {a['p99_us']} "
              f"p99.9 {a['p99_9_us']} p99.99 {a['p99_99_us']} max {a['max_us']} us; in-engine p50 {e['p50_us']} "
              f"p99 {e['p99_us']} us (mean batch {r['mean_batch']}); client late p50 {lt['p50_us']} us, "
              f"client CPU {r['client_cpu_us_per_order']} us per order")
        # the partition's stats at its shutdown: each process over its life (start-up included)
        for key, label in (("matcher", "matching process"), ("wal_stage", "WAL stage"), ("feed_stage", "feed stage")):
            if key in r["processes"]:
                print("  " + cpu_line(label, r["processes"][key]))
        if args.stages and r["stages"]:
            print("  partition duty cycle by stage:")
            for line in format_stages(r["stages"], DUTY_STAGES):
                print("  " + line)
        if args.stages and r["gateway_stages"]:
            print("  gateway by stage:")
            for line in format_stages(r["gateway_stages"], GATEWAY_STAGES, width=38):
                print("  " + line)
    if args.hdr_log:
        with open(args.hdr_log, "w") as f:
            for r in runs:
                f.write(r["_hist"].hdr_log(_label(r).replace(" ", "_").replace(",", ";")))
    if args.plot:
        _plot(runs, args.plot)
        print(f"percentile plot: {args.plot}")
    for r in runs:
        r.pop("_hist")
    out["runs"] = runs
    out["load_avg_after"] = round(os.getloadavg()[0], 2)
    print(jsonio.dumps(out))
    return 0
