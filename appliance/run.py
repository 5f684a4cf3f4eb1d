"""``matchwire run CONFIG``: start every process of the appliance, watch them, stop them cleanly.

Owned by the supervisor process (one asyncio thread). Start order, each step waiting for the
previous one to say it is ready (``{state_dir}/run/<name>.ready.json``):

    1. one matching process per partition    python -m appliance.daemon      (recovery first)
    2. one process per gateway               python -m appliance.gateway.server
    3. retransmission and snapshot servers   python -m appliance.servers retransmit|snapshot serve
    4. the admin HTTP interface              [admin] bind:port, when a token is configured

Placement on the host: each partition pins itself (config ``cpu``); the supervisor, gateways and
servers run on the other CPUs (all of them when the partitions took every CPU).

Stop (SIGTERM or SIGINT to the supervisor): gateways first (they stop reading, wait for the answers
of what is in flight, end their sessions), then partitions (drain, commit, final snapshot, End of
Session on the feeds), then the servers. A process that does not stop in time is killed. If a
partition or gateway dies on its own, the supervisor stops everything and exits non-zero: start-up
is recovery, so the operator (or systemd) simply starts ``matchwire run`` again.

The retransmission and snapshot servers are part of the appliance too: their modules are imported
before anything starts (a broken import is a start-up failure, one line), start-up waits for them,
and one that dies while the appliance runs is started again (after 0.5 s, doubling up to 10 s while
it keeps dying within a minute of its start). They hold no state of their own (the feed stores are
the partitions'), so a restart loses nothing; ``admin status`` reports their pid, whether they run,
their restarts and last exit status.

``admin status`` also lists every process under ``processes`` (the supervisor, each partition and
its feed and WAL stage processes, each gateway, the servers): role, pid, whether it runs, and for a
running one what the kernel says of it (appliance.procinfo: RSS, CPU seconds, context switches,
the CPUs it may run on and the one it last ran on, threads, scheduling policy).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Final, Sequence

from appliance.config import Config, load
from appliance.procinfo import process_figures

GATEWAY_STOP_S: Final = 15.0
PARTITION_STOP_S: Final = 30.0
READY_TIMEOUT_S: Final = 300.0


def log(text: str) -> None:
    sys.stderr.write(f"matchwire[run]: {text}\n")
    sys.stderr.flush()


SERVER_MODULES: Final = {"retransmit": ("appliance.servers", "retransmit.server", "retransmit.soupserver"),
                          "snapshot": ("appliance.servers", "retransmit.snapshot_server", "retransmit.recovery")}
RESTART_FIRST_S: Final = 0.5      # a dead server is started again after this ...
RESTART_MAX_S: Final = 10.0       # ... doubling while it keeps dying young, up to this
RESTART_YOUNG_S: Final = 60.0     # a server that ran longer than this starts over at RESTART_FIRST_S


class Child:
    def __init__(self, name: str, role: str, argv: list[str]) -> None:
        self.name = name
        self.role = role
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.restarts = 0
        self.last_exit: int | None = None
        self.restart_at = 0.0          # monotonic time of the next start (0: not waiting)
        self.backoff = RESTART_FIRST_S
        self.info: dict[str, Any] = {}    # its ready file (a partition's names its stage pids)

    def start(self) -> None:
        prep = _background if self.role in BACKGROUND_ROLES else _die_with_parent
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, preexec_fn=prep)
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def poll(self) -> int | None:
        return self.proc.poll() if self.proc else None


# The retransmission and snapshot servers wake on every datagram the partitions send; on the CPUs
# they share with the gateways they must not delay an order. They run SCHED_BATCH at nice 10: no
# wake-up preemption of a gateway, and the smaller share of a busy CPU (docs/operations.md).
BACKGROUND_ROLES: Final = frozenset({"retransmit", "snapshot"})
BACKGROUND_NICE: Final = 10


def _background() -> None:
    """In a server child, before exec: die with the supervisor, then step back behind the gateways."""
    _die_with_parent()
    try:
        os.nice(BACKGROUND_NICE)
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (OSError, AttributeError):
        pass   # a host that refuses: the server runs at the gateways' priority, nothing else changes


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies (a clean stop, not an orphan)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def server_argv(command: str, config_path: str, state_dir: str) -> list[str]:
    """The `python -m appliance.servers COMMAND serve` arguments of a server, after importing what it
    runs: a module that does not import is a start-up failure (ServerBroken, one line), not a server left out."""
    import importlib
    for module in SERVER_MODULES[command]:
        try:
            importlib.import_module(module)
        except Exception as e:   # any error raised by an import: say which module, stop the start
            raise ServerBroken(f"{command} server: module {module} does not import: "
                               f"{type(e).__name__}: {e}") from None
    return [command, "serve", "--config", config_path, "--state-dir", state_dir]


class Supervisor:
    """Starts, watches and stops the appliance's processes. Owned by the supervisor's event loop."""

    def __init__(self, config_path: str, state_dir: str, *, realtime: bool = True, transport: str = "udp",
                 servers: bool = True) -> None:
        self.config_path = os.path.abspath(config_path)
        self.config: Config = load(config_path)
        self.state_dir = os.path.abspath(state_dir)
        self.run_dir = os.path.join(self.state_dir, "run")
        self.realtime = realtime
        self.transport = transport
        self.servers = servers
        self.partitions: list[Child] = []
        self.gateways: list[Child] = []
        self.others: list[Child] = []
        self.exit_code = 0
        self.failed: str | None = None
        self.failed_rc = 0
        self.early: list[int] = []        # signals received during start-up
        self.admin_sock: socket.socket | None = None
        self.qos_fd: int | None = None     # /dev/cpu_dma_latency, held while the appliance runs

    # -- start ------------------------------------------------------------------------------------------
    def _ready_path(self, name: str) -> str:
        return os.path.join(self.run_dir, f"{name}.ready.json")

    def _wait_ready(self, child: Child, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
        path = self._ready_path(child.name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.early:
                raise StopRequested()
            if os.path.exists(path):
                with open(path) as f:
                    return dict(json.load(f))
            rc = child.poll()
            if rc is not None:
                raise ChildFailed(f"{child.role} {child.name} exited with {rc} during start-up", rc)
            time.sleep(0.02)
        raise RuntimeError(f"{child.role} {child.name} not ready after {timeout:.0f} s")

    def start(self) -> None:
        cfg = self.config
        for w in cfg.warnings:
            log("WARNING: " + w)
        # The servers' modules import before anything starts: a broken build fails here, in one line.
        server_argvs = {cmd: server_argv(cmd, self.config_path, self.state_dir)
                        for cmd in ("retransmit", "snapshot")} if self.servers else {}
        os.makedirs(self.run_dir, exist_ok=True)
        if cfg.appliance.cpu_dma_latency_us >= 0:
            from appliance.process import hold_cpu_dma_latency
            self.qos_fd, text = hold_cpu_dma_latency(cfg.appliance.cpu_dma_latency_us)
            log(text)
        # The admin port listens before any child starts: a request made as soon as a gateway is
        # ready waits in the backlog until the event loop serves it, instead of being refused.
        self.admin_sock = self._bind_admin()
        for fn in os.listdir(self.run_dir):
            if fn.endswith(".ready.json"):
                os.unlink(os.path.join(self.run_dir, fn))
        py = sys.executable
        common = ["--config", self.config_path, "--state-dir", self.state_dir]
        part_cpus: set[int] = set()
        from appliance.daemon import choose_cpu
        for p in cfg.partitions:
            argv = [py, "-m", "appliance.daemon", *common, "--partition", p.name, "--transport", self.transport]
            if not self.realtime:
                argv.append("--no-realtime")
            c = Child(p.name, "partition", argv)
            c.start()
            self.partitions.append(c)
            part_cpus.add(choose_cpu(p.cpu))
        for c in self.partitions:
            info = c.info = self._wait_ready(c)
            log(f"partition {c.name} ready (pid {c.pid}): seq {info.get('last_seq')}, epoch {info.get('epoch')}; "
                + "; ".join(info.get("notes", [])))
        cpus = sorted(set(os.sched_getaffinity(0)) - part_cpus) or sorted(os.sched_getaffinity(0))
        # The supervisor and everything started after the partitions (gateways, servers) keep off
        # the matchers' CPUs: a wake-up there would preempt a matcher in the middle of a batch.
        try:
            os.sched_setaffinity(0, cpus)
            log(f"supervisor, gateways and servers on CPUs {','.join(map(str, cpus))}")
        except OSError as e:
            log(f"affinity for the supervisor and servers refused: {e}")
        for g in cfg.gateways:
            argv = [py, "-m", "appliance.gateway.server", *common, "--gateway", g.name,
                    "--cpus", ",".join(map(str, cpus))]
            c = Child(g.name, "gateway", argv)
            c.start()
            self.gateways.append(c)
        for c in self.gateways:
            self._wait_ready(c)
            log(f"gateway {c.name} ready (pid {c.pid})")
        if server_argvs:
            for cmd, sargv in server_argvs.items():
                c = Child(f"{cmd}-server", cmd, [py, "-m", "appliance.servers", *sargv])
                c.start()
                self.others.append(c)
            for c in self.others:
                self._wait_ready(c)
                log(f"{c.role} server ready (pid {c.pid})")

    # -- watch --------------------------------------------------------------------------------------------
    async def watch(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # A signal between the end of start() and the line above reached the start-up handler, which
        # only records it: honour it now, or that stop would be lost and the supervisor run on.
        if self.early:
            stop.set()
        admin = await self._start_admin()
        while not stop.is_set():
            for c in self.partitions + self.gateways:
                rc = c.poll()
                if rc is not None:
                    self.failed = f"{c.role} {c.name} (pid {c.pid}) exited with {rc}"
                    self.failed_rc = rc
                    stop.set()
            for c in self.others:
                self._keep_running(c)
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
        if self.failed:
            log(f"{self.failed}: stopping everything (start `matchwire run` again: start-up is recovery)")
            self.exit_code = exit_status_of(self.failed_rc)
        if admin is not None:
            admin.close()
        self.stop()
        return self.exit_code

    def _keep_running(self, c: Child) -> None:
        """A server that died is started again, after a delay that grows while it keeps dying young."""
        now = time.monotonic()
        if c.restart_at:
            if now >= c.restart_at:
                c.restart_at = 0.0
                c.restarts += 1
                try:
                    os.unlink(self._ready_path(c.name))
                except FileNotFoundError:
                    pass
                c.start()
                log(f"{c.role} server started again (pid {c.pid}, restart {c.restarts})")
            return
        rc = c.poll()
        if rc is None:
            return
        c.last_exit = rc
        c.backoff = RESTART_FIRST_S if now - c.started > RESTART_YOUNG_S else min(c.backoff * 2, RESTART_MAX_S)
        delay = RESTART_FIRST_S if c.restarts == 0 else c.backoff
        c.restart_at = now + delay
        log(f"{c.role} server (pid {c.pid}) exited with {rc}: starting it again in {delay:.1f} s")

    def servers_status(self) -> dict[str, Any]:
        """Per server: pid, running, restarts, last exit status (admin status)."""
        return {c.name: {"pid": c.pid, "running": c.poll() is None and not c.restart_at,
                         "restarts": c.restarts, "last_exit": c.last_exit} for c in self.others}

    def processes_status(self) -> dict[str, Any]:
        """Per process of the appliance: role, pid, running, and the figures of a running one
        (appliance.procinfo). A partition's feed and WAL stages are ``<partition>.feed-stage`` and
        ``<partition>.wal-stage`` (their pids from its ready file)."""
        out: dict[str, Any] = {"supervisor": {"role": "supervisor", **process_figures(os.getpid())}}
        for c in self.partitions + self.gateways + self.others:
            running = c.proc is not None and c.poll() is None and not c.restart_at
            figures = process_figures(c.pid) if running else {"running": False}
            out[c.name] = {"role": c.role, "pid": c.pid, **figures}
            if c.role != "partition" or not running:
                continue
            for stage in ("feed-stage", "wal-stage"):
                pid = c.info.get(stage.replace("-", "_") + "_pid")
                if pid:
                    out[f"{c.name}.{stage}"] = {"role": stage, "partition": c.name, "pid": int(pid),
                                                **process_figures(int(pid))}
        return out

    def _terminate(self, children: Sequence[Child], timeout: float, stateful: bool = True) -> None:
        """SIGTERM, then SIGKILL after ``timeout``. A stateful child (partition, gateway) that does
        not stop cleanly makes the exit status non-zero; a server's is only logged (it holds no
        state: the day is not the worse for it)."""
        for c in children:
            if c.poll() is None and c.proc is not None:
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for c in children:
            if c.proc is None:
                continue
            try:
                rc = c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{c.role} {c.name} did not stop in {timeout:.0f} s: killed")
                c.proc.kill()
                rc = c.proc.wait()
            if rc not in (0, -signal.SIGTERM) and not c.restart_at:
                log(f"{c.role} {c.name} exited with {rc}")
                if stateful and not self.exit_code:
                    self.exit_code = rc if rc > 0 else 1

    def stop(self) -> None:
        self._terminate(self.gateways, GATEWAY_STOP_S)
        self._terminate(self.partitions, PARTITION_STOP_S)
        self._terminate(self.others, 10.0, stateful=False)
        if self.qos_fd is not None:
            os.close(self.qos_fd)
            self.qos_fd = None
        log("stopped" + (f" (exit {self.exit_code})" if self.exit_code else ": clean shutdown"))

    # -- admin HTTP -----------------------------------------------------------------------------------
    def _bind_admin(self) -> socket.socket | None:
        a = self.config.admin
        if not a.token:
            return None
        sock: socket.socket | None = None
        try:
            family, stype, proto, _, addr = socket.getaddrinfo(a.bind, a.port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, stype, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(64)
            sock.setblocking(False)
            return sock
        except OSError as e:
            if sock is not None:
                sock.close()
            log(f"admin interface on {a.bind}:{a.port}: {e}: not started")
            return None

    async def _start_admin(self) -> asyncio.AbstractServer | None:
        a = self.config.admin
        if not a.token:
            log("admin interface disabled (admin.token is empty)")
            return None
        sock, self.admin_sock = self.admin_sock, None
        if sock is None:
            return None   # the bind failed at start (logged)
        try:
            server = await asyncio.start_server(self._admin_conn, sock=sock)
        except OSError as e:
            sock.close()
            log(f"admin interface on {a.bind}:{a.port}: {e}: not started")
            return None
        log(f"admin interface on http://{a.bind}:{a.port}/ (bearer token required)")
        return server

    async def _gateway_call(self, gateway: str, req: dict[str, Any]) -> dict[str, Any]:
        path = os.path.join(self.run_dir, f"{gateway}.ctl")
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 5)
        try:
            writer.write(json.dumps(req).encode() + b"\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 10)
            return dict(json.loads(line))
        finally:
            writer.close()

    async def _admin_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        status, body = 400, {"ok": False, "error": "bad request"}
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            if headers.get("authorization") != f"Bearer {self.config.admin.token}":
                status, body = 401, {"ok": False, "error": "unauthorized"}
            else:
                status, body = await self._admin_route(method, target)
        except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                OSError) as e:
            status, body = 400, {"ok": False, "error": str(e) or "bad request"}
        data = json.dumps(body).encode()
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}.get(status, "Error")
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        try:
            await writer.drain()
        finally:
            writer.close()

    async def _admin_route(self, method: str, target: str) -> tuple[int, dict[str, Any]]:
        parts = [p for p in target.split("?")[0].split("/") if p]
        if method == "GET" and parts == ["status"]:
            servers = self.servers_status()
            out: dict[str, Any] = {"ok": all(s["running"] for s in servers.values()), "gateways": {},
                                   "servers": servers}
            for g in self.config.gateways:
                out["gateways"][g.name] = await self._gateway_call(g.name, {"op": "status"})
            out["processes"] = self.processes_status()
            return 200, out
        if method == "POST" and len(parts) == 3 and parts[0] == "kill-switch" and parts[2] in ("on", "off"):
            firm = parts[1]
            for g in self.config.gateways:
                if firm in g.firms:
                    return 200, await self._gateway_call(g.name, {"op": "kill_switch", "firm": firm,
                                                                  "on": parts[2] == "on"})
            return 404, {"ok": False, "error": f"unknown firm {firm!r}"}
        if (method == "POST" and len(parts) == 3 and parts[0] == "trading"
                and parts[1] in ("halt", "resume", "close")):
            # Halt / Resume / Close go to the partition through the first gateway's command ring
            # (docs/operations.md, "Trading actions"): sequenced and in the WAL like any command.
            if not self.config.gateways:
                return 404, {"ok": False, "error": "no gateway to carry the command"}
            ans = await self._gateway_call(self.config.gateways[0].name,
                                           {"op": "trading", "action": parts[1], "symbol": parts[2]})
            # 200 applied; 409 the engine refused (say, halting a halted instrument); 504 no answer
            # in time (the command may still be applied: the feed says); 404 unknown symbol or action
            status = 200 if ans.get("ok") else 409 if ans.get("refused") else 504 if ans.get("timeout") else 404
            return status, ans
        return 404, {"ok": False, "error": f"no such admin request: {method} {target}"}


class ServerBroken(RuntimeError):
    """A server's modules do not import: the appliance cannot start complete."""


class ChildFailed(RuntimeError):
    """A child exited during start-up; ``rc`` is its exit status."""

    def __init__(self, text: str, rc: int) -> None:
        super().__init__(text)
        self.rc = rc


def exit_status_of(rc: int) -> int:
    """The supervisor's exit status for a child that failed with ``rc``: a durability failure (74,
    EX_IOERR: a full disk, a failing file system) is passed on, so that the operator or systemd sees
    it is the disk, not the appliance; anything else is 1."""
    from appliance.wal import EXIT_DURABILITY_FAILURE
    return EXIT_DURABILITY_FAILURE if rc == EXIT_DURABILITY_FAILURE else 1


class StopRequested(Exception):
    """SIGTERM or SIGINT arrived while the supervisor was still starting its children."""


def run(config_path: str, state_dir: str, *, realtime: bool = True, transport: str = "udp") -> int:
    from appliance.process import setup_process
    setup_process()   # private state files (children inherit the umask); output that may lose its reader
    sup = Supervisor(config_path, state_dir, realtime=realtime, transport=transport)
    early = sup.early
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, f: early.append(s))
    try:
        sup.start()
    except StopRequested:
        pass  # a SIGTERM while starting is an ordinary stop: shut down what started, exit 0
    except ChildFailed as e:
        log(f"start-up failed: {e}")
        sup.stop()
        return exit_status_of(e.rc)
    except Exception as e:
        log(f"start-up failed: {e}")
        sup.stop()
        return 1
    if early:
        log("stop requested during start-up")
        sup.stop()
        return sup.exit_code
    log("running; SIGTERM or Ctrl-C stops it cleanly")
    return asyncio.run(sup.watch())
