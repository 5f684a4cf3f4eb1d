"""The gateway process: thin asyncio shells around the sans-IO OUCH and FIX sessions, pre-trade risk,
and the rings to and from every partition. ``python -m appliance.gateway.server``.

Owned by one asyncio thread (everything here runs on the event loop). What it does, per input::

    socket bytes -> session.receive_data -> session.take_commands
        -> RiskChecker.check (a 2xxx reason: the session answers a CommandRejected at once)
        -> encode (kind + WAL body, appliance.codec_ring) -> outbox
    flush: journal (sequenced OUCH output, FIX messages sent, resume marks) -> FIX state files
        -> outbox into the partitions' command rings -> session.data_to_send() to the sockets

    doorbell / timer -> event records from each partition's ring -> EventDecoder (the engine's tuples)
        -> RiskChecker.on_events -> each session that owns an order or a command of the events
        -> flush (as above)

Connections are routed to their session by the login itself: the SoupBinTCP Login Request's
username names the firm's OUCH session, the FIX Logon's SenderCompID the firm's FIX session (one
of each per firm; session id = firm id for OUCH, firm id + 2^30 for FIX). A connection whose first
bytes are not a login is closed without touching any session; an unknown user or a wrong password
gets Login Rejected 'A' (OUCH) or nothing (FIX), and the firm's session never sees the connection
(no sequence number moves, nothing is journalled); a second connection to a busy session gets Login
Rejected 'S' (OUCH) or nothing (FIX).

Back-pressure: a full command ring keeps the commands in order in the gateway and every connection
stops being read until the ring takes them again (nothing is dropped, nothing grows without bound:
at most one read's worth of commands waits).

What survives a restart (the gateway's state directory, ``{state_dir}/gateways/{name}``; kept and
read back by appliance/gateway/state.py):
- ``ouch-<firm>.feed/.idx``, ``fix-<SenderCompID>.feed/.idx``: each session's outbound messages of
  the day by sequence number (the OUCH stream, the FIX messages sent), file-backed with an index
  (appliance/gateway/store.py); appended at each flush before the journal counts them. A name that
  is not letters, digits, - and _ is replaced by the session id.
- ``journal.bin``: append-only increments (appliance/gateway/journal.py), written with one ``write``
  per flush and ended by a MARK; a torn or unmarked tail is cut on start-up. A MARK commits the
  stores' counts, the FIX sessions' sequence numbers, orders and ClOrdIDs changed, and per
  partition the seq up to which every event has been handed to the sessions. The journal is
  written before a command a session produced goes to a ring and before its bytes go to the
  socket; it is compacted at start-up and when it passes journal.COMPACT_BYTES.
- ``rejects.jsonl``: every command refused in the gateway (risk, back-pressure, malformed), one
  JSON row each, in the audit export's columns.

An OUCH session is rebuilt from its stream (``restore_ouch_session``): sequence numbers, orders and
UserRefNums; FIX sessions from the journal. The stores are cut back to the counts of the last MARK.
The partition, at its start-up, sends each gateway the events after its marks (catch-up, sessions
only) and a bootstrap of the risk state (net positions, last prices, open orders), since the risk
checker itself is not persisted. Nothing here is fsynced: it survives a crash of the process
(SIGKILL), not of the host.

The admin socket (``{state_dir}/run/{name}.ctl``: status, kill switch, trading actions):
appliance/gateway/admin.py.

Memory: a session holds its live orders, a FIX session also the ClOrdIDs it remembers (at most
FixSessionConfig.cl_ord_id_window beyond its live orders' ones); the day's messages stay on file.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import deque
from typing import Any, Callable, Final, Iterable, Sequence

from appliance import codec_ring as C
from appliance import reasons as R
from appliance.catalogue import (
    CancelOrder,
    Close,
    Command,
    Ev,
    Event,
    Halt,
    MassCancel,
    NewOrder,
    ReplaceOrder,
    Resume,
)
from appliance.clock import wall_clock
from appliance.config import Config, FirmConfig, load
from appliance.fsutil import atomic_write
from appliance.gateway import events as E
from appliance.gateway.admin import AdminControl
from appliance.gateway.budget import ConnectionBudget, MessageBudget
from appliance.gateway.fix import FixSession, FixSessionConfig, FixSessionState, logon_identity
from appliance.gateway.fixcodec import FixFramingError
from appliance.gateway.journal import J_MARK, JournalState, journal_record, mark_record, read_journal
from appliance.gateway.ouch import OuchSession
from appliance.gateway.state import (
    JournalKeeper,
    adopt_ouch_order,
    gateway_dir,
    log,
    restore_ouch_session,
    resume_points,
)
from appliance.gateway.store import FixSentStore, MessageStore
from appliance.metrics import (
    G_FLUSH,
    G_PARSE,
    G_RING_READ,
    G_SESSIONS,
    G_SUBMIT,
    GATEWAY_STAGES,
    STAGE_TIMING_ENV,
    StageClock,
)
from appliance.model import BUY, SELL, Instrument
from appliance.ring import SHM_DIR, Ring, RingError, bell_name
from appliance.gateway.busypoll import BusyPollSelector
from appliance.gcpolicy import QuietCollector
from appliance.risk import RiskChecker
from appliance.wal import MalformedCommand
from feeds import soupbintcp as soup

_clock = wall_clock()   # the wall clock (appliance.clock): shifted as MATCHWIRE_CLOCK_OFFSET_NS says

FIX_SESSION_BIT: Final = 1 << 30   # order ids (session << 32 | n) stay below 2^63 (the state hash's i64)
# The journal's names stay importable from here (appliance.daemon reads resume_points).
__all__ = ["GatewayServer", "J_MARK", "JournalState", "journal_record", "mark_record", "read_journal",
           "resume_points", "restore_ouch_session"]
MAX_LOGIN_BYTES: Final = 4096
TICK_S: Final = 0.2                        # session timers
FALLBACK_POLL_S: Final = 0.005             # ring poll when no doorbell rang (a lost wake-up costs this)
QUIET_S: Final = 0.3                       # at shutdown: events quiet this long -> end the sessions
CLOSE_LINGER_S: Final = 5.0                # a closed connection's unsent bytes are dropped after this
# The event kinds the per-event code compares, bound to module globals (catalogue.Ev: a class
# attribute load, which CPython 3.11 does not specialize).
EV_ACCEPTED: Final = Ev.ACCEPTED
EV_EXECUTED: Final = Ev.EXECUTED
EV_CROSS_EXECUTED: Final = Ev.CROSS_EXECUTED
EV_CANCELLED: Final = Ev.CANCELLED
EV_REPLACED: Final = Ev.REPLACED
EV_REJECTED: Final = Ev.REJECTED



def ouch_session_id(firm: FirmConfig) -> int:
    return firm.id


def fix_session_id(firm: FirmConfig) -> int:
    return firm.id | FIX_SESSION_BIT


# ================================================================================================
# Sessions and connections
# ================================================================================================

class Slot:
    """One session with what the shell keeps beside it. Owned by the event loop."""

    __slots__ = ("kind", "session", "sid", "conn", "journaled", "applied", "firm", "name", "store", "jseqs",
                 "dirty")

    def __init__(self, kind: str, session: Any, sid: int, firm: FirmConfig, name: str) -> None:
        self.kind = kind            # "ouch" | "fix"
        self.session = session
        self.sid = sid
        self.firm = firm
        self.name = name
        self.conn: _Conn | None = None
        self.journaled = 0          # OUCH: stream messages counted in the journal
        self.applied: dict[int, int] = {}
        self.store: MessageStore | None = None      # the session's outbound messages on file
        self.jseqs: tuple[int, int, int, int] | None = None   # FIX: sequence numbers in the journal
        # The shell called into the session since the last flush that covered it (flush(only_dirty)
        # skips the others: a per-order flush looks at the one or two sessions the order touched).
        self.dirty = True


class _Conn(asyncio.Protocol):
    """One TCP connection: routed to its session by the login, then bytes in and out."""

    kind = ""

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.slot: Slot | None = None
        self.buf = bytearray()
        self.closed = False
        self.peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer)
        server = self.server
        server.conns.add(self)
        if not server.conn_budget.admit(peer[0] if isinstance(peer, tuple) else self.peer, time.monotonic_ns()):
            # More new connections from this address than [session_limits] allows: closed before
            # anything is read (no login is parsed, nothing of any session is touched).
            server.count("connections_refused_rate")
            server.log_limited("connection_rate", f"{self.kind} connections from {self.peer}: over "
                               f"{server.limits.connections_per_second}/s: closed")
            self.abort()
            return
        if server.paused:
            self.transport.pause_reading()  # type: ignore[union-attr]
        server.loop.call_later(server.limits.login_timeout_ms / 1000, self._login_timeout)

    def _login_timeout(self) -> None:
        if self.slot is None and not self.closed:
            self.server.count("login_timeouts")
            self.close()

    def close(self) -> None:
        """Close after what is queued is sent; dropped after CLOSE_LINGER_S if the peer does not read."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
                self.server.loop.call_later(CLOSE_LINGER_S, self._drop)

    def _drop(self) -> None:
        if self in self.server.conns:   # not lost yet: the peer is not reading what is queued
            self.abort()

    def abort(self) -> None:
        """Close now, discarding what is queued."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def queued(self) -> int:
        """Outbound bytes waiting in the transport (not yet taken by the kernel)."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def write(self, data: bytes) -> None:
        """Queue ``data``; a connection that still has more than max_queued_bytes unsent when more
        output comes is a client that does not read: dropped (one write, a login's replay say, may
        take the queue past the bound: it is the next one that finds it still there)."""
        if data and self.transport is not None and not self.closed:
            if self.transport.get_write_buffer_size() > self.server.limits.max_queued_bytes:
                self.server.slow_consumer(self)
                return
            self.transport.write(data)

    write_paused = False

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.slot is not None and self.slot.conn is self:
            self.server.flush()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        server = self.server
        if self.slot is None:
            self.buf += data
            slot = self.route()
            if slot is None:
                return
            data = bytes(self.buf)
            self.buf = bytearray()
            self.slot = slot
            slot.conn = self
            now = _clock()
            slot.session.connection_made(now)
            server.count(f"{self.kind}_connections")
        slot = self.slot
        st = server.stages
        if st is not None:
            st.start()
        slot.session.receive_data(data, _clock())
        if st is not None:
            st.lap(G_PARSE)
        server.after_input(slot)

    def route(self) -> Slot | None:
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.conns.discard(self)
        slot = self.slot
        if slot is None or slot.conn is not self:
            return
        slot.conn = None
        self.server.disconnected(slot)


class OuchConn(_Conn):
    kind = "ouch"

    def route(self) -> Slot | None:
        buf = self.buf
        if len(buf) < soup.HEAD_SIZE:
            return None
        length = (buf[0] << 8) | buf[1]
        if buf[soup.LENGTH_SIZE:soup.HEAD_SIZE] != soup.LOGIN_REQUEST or not 1 <= length <= 256:
            self.server.garbage(self, "not a SoupBinTCP Login Request")
            return None
        if len(buf) < soup.LENGTH_SIZE + length:
            return None
        try:
            req = soup.parse_login_request(bytes(buf[soup.HEAD_SIZE:soup.LENGTH_SIZE + length]))
        except ValueError as e:
            self.write(soup.encode_login_rejected(soup.REJECT_NOT_AUTHORIZED))
            self.server.garbage(self, f"bad login: {e}")
            return None
        slot = self.server.ouch_by_user.get(req.username)
        if slot is None or slot.session.credentials.get(req.username, ("",))[0] != req.password:
            # Unknown user or wrong password: the firm's session never sees the connection.
            self.write(soup.encode_login_rejected(soup.REJECT_NOT_AUTHORIZED))
            self.server.refused(self, f"OUCH login as {req.username!r}: not authorized")
            return None
        if slot.conn is not None or not self.server.accepting:
            self.write(soup.encode_login_rejected(soup.REJECT_SESSION_NOT_AVAILABLE))
            self.server.count("login_rejected")
            self.close()
            return None
        return slot


class FixConn(_Conn):
    kind = "fix"

    def route(self) -> Slot | None:
        try:
            ids = logon_identity(bytes(self.buf))
        except FixFramingError as e:
            self.server.garbage(self, f"not a FIX Logon: {e}")
            return None
        if ids is None:
            if len(self.buf) > MAX_LOGIN_BYTES:
                self.server.garbage(self, "no complete Logon in the first 4 KiB")
            return None
        slot = self.server.fix_by_comp.get(ids[0])
        if slot is not None and not slot.session.authenticates(ids[2], ids[3]):
            # Not the counterparty: the firm's session never sees it (no sequence number moves).
            self.server.refused(self, f"FIX Logon as {ids[0]!r}: not authorized")
            return None
        if slot is None or slot.conn is not None or not self.server.accepting:
            self.server.count("login_rejected")
            self.close()
            return None
        return slot


# ================================================================================================
# The gateway
# ================================================================================================

class GatewayServer(JournalKeeper, AdminControl):
    """One gateway process. Owned by its asyncio event loop."""

    def __init__(self, config: Config, gateway: str, state_dir: str) -> None:
        self.config = config
        self.name = gateway
        # Stage timing (benchmarks; off by default): one clock read per stage boundary.
        self.stages: StageClock | None = (StageClock(GATEWAY_STAGES) if os.environ.get(STAGE_TIMING_ENV) == "1"
                                          else None)
        self.gw = next(g for g in config.gateways if g.name == gateway)
        self.state_dir = state_dir
        self.dir = gateway_dir(state_dir, gateway)
        os.makedirs(self.dir, exist_ok=True)
        self.firms = [f for f in config.firms if f.name in self.gw.firms]
        for f in self.firms:
            if f.id >= FIX_SESSION_BIT:
                raise ValueError(f"firm {f.name}: id {f.id} must be below 2^30 (session ids: the firm id for OUCH, "
                                 "+ 2^30 for FIX; engine order ids are session << 32 | n, below 2^63)")
        self.partitions = list(config.partitions)
        self.part_index = {p.id: i for i, p in enumerate(self.partitions)}
        self.instruments: list[Instrument] = [i.instrument() for i in config.instruments]
        self.partition_of_locate: dict[int, int] = {}
        for i, p in enumerate(self.partitions):
            for sym in p.instruments:
                self.partition_of_locate[config.instrument(sym).locate] = i
        self.risk = RiskChecker(config.risk_limits(gateway))
        self.firm_by_name = {f.name: f for f in self.firms}
        self.decoders = [C.EventDecoder(f.id for f in self.firms) for _ in self.partitions]
        self.order_partition: dict[int, int] = {}
        self.marks: dict[int, int] = {}
        self.replaying = [False] * len(self.partitions)
        self.live = [False] * len(self.partitions)
        self.outbox: list[tuple[int, bytes]] = []
        self.cmd_pending: list[tuple[int, bytes]] = []
        self.paused = False
        self.accepting = False
        self.stopping = False
        self.conns: set[_Conn] = set()
        self.counters: dict[str, int] = {}
        self.records_in = 0                  # event records read from the partitions
        self.poller: BusyPollSelector | None = None   # [[gateways]] busy_poll_us > 0
        self.gc = QuietCollector(time.monotonic_ns())
        self._work_at_tick = 0
        self.midnight_ns = config.midnight_of(_clock())   # as the partitions' feed
        # per partition: admin commands sent and not yet answered, oldest first (KIND, locate, future)
        self.admin_waiting: list[deque[tuple[int, int, asyncio.Future[dict[str, Any]]]]] = [
            deque() for _ in self.partitions]
        self.rejects = open(os.path.join(self.dir, "rejects.jsonl"), "a")
        self.limits = config.session_limits
        self.conn_budget = ConnectionBudget(self.limits.connections_per_second, self.limits.connection_burst)
        self._logged_at: dict[str, float] = {}
        self._build_sessions()
        now = time.monotonic_ns()
        lim = self.limits
        for slot in self.slots:
            slot.session.budget = MessageBudget(lim.messages_per_second, lim.burst,
                                                lim.throttled_before_disconnect, now)

    # -- sessions ----------------------------------------------------------------------------------
    def _build_sessions(self) -> None:
        jpath = os.path.join(self.dir, "journal.bin")
        js = read_journal(jpath)
        for n in js.notes:
            log(self.name, "journal: " + n)
        self.journal_path = jpath
        self.marks = dict(js.marks)
        self.slots: list[Slot] = []
        self.by_sid: dict[int, Slot] = {}
        self.ouch_by_user: dict[str, Slot] = {}
        self.fix_by_comp: dict[str, Slot] = {}
        for f in self.firms:
            sid = ouch_session_id(f)
            name = f.name if f.name.isalnum() and len(f.name) <= 10 else str(sid)
            s = OuchSession(sid, {f.ouch.username: (f.ouch.password, f.id)}, self.instruments, session_name=name,
                            midnight_ns=self.midnight_ns, cancel_on_disconnect=f.ouch.cancel_on_disconnect)
            store = self._open_store(sid, f"ouch-{name}", js.ouch.get(sid, 0))
            s.stream = store
            reopened = restore_ouch_session(s, store) if len(store) else False
            slot = Slot("ouch", s, sid, f, f"OUCH {f.name}")
            slot.store = store
            slot.journaled = len(store)
            if reopened:   # journalled by the first flush
                s.start_of_day(_clock())
            slot.applied = dict(js.marks)
            self._add(slot)
            self.ouch_by_user[f.ouch.username] = slot
            fsid = fix_session_id(f)
            fj = js.fix.get(fsid)
            state = fj.state() if fj is not None else FixSessionState()
            comp = f.fix.sender_comp_id
            fname = comp if comp.isascii() and comp.replace("-", "").replace("_", "").isalnum() else str(fsid)
            fstore = self._open_store(fsid, f"fix-{fname}", state.next_out - 1)
            state.sent = FixSentStore(fstore)
            fs = FixSession(FixSessionConfig(fsid, self.gw.fix_comp_id, f.fix.sender_comp_id, f.id,
                                             password=f.fix.password), state, self.instruments)
            fslot = Slot("fix", fs, fsid, f, f"FIX {f.fix.sender_comp_id}")
            fslot.store = fstore
            fslot.applied = dict(js.marks)
            self._add(fslot)
            self.fix_by_comp[f.fix.sender_comp_id] = fslot
            if len(store) or fs.state.next_out > 1:
                log(self.name, f"restored OUCH {f.name} (next seq {s.next_sequence}, {len(s.orders)} orders) "
                               f"and FIX {f.fix.sender_comp_id} (next out {fs.state.next_out}, in "
                               f"{fs.state.next_in}, {len(fs.state.orders)} orders, "
                               f"{len(fs.state.cl_ord_ids)} ClOrdIDs)")
        self.journal_fd = -1
        self.compact_journal()

    def _add(self, slot: Slot) -> None:
        self.slots.append(slot)
        self.by_sid[slot.sid] = slot

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    # -- rings ---------------------------------------------------------------------------------------
    def attach_rings(self, timeout_s: float = 30.0) -> None:
        """Each partition's two rings and two doorbells: ours (we sleep on it: the event ring says we
        wait) and the partition's (rung after we publish commands while it says it waits)."""
        deadline = time.monotonic() + timeout_s
        self.cmd_out = []
        self.evt_in = []
        self.rings = []
        self.bells = []
        self.wakes: list[int] = []
        for p in self.partitions:
            names = self.config.ring_names(p.name, self.name)
            while True:
                try:
                    rc = Ring.attach(names["cmd"])
                    re_ = Ring.attach(names["evt"])
                    bell = os.open(os.path.join(SHM_DIR, bell_name(names["evt"])), os.O_RDONLY | os.O_NONBLOCK)
                    wake = os.open(os.path.join(SHM_DIR, bell_name(names["cmd"])), os.O_WRONLY | os.O_NONBLOCK)
                    break
                except (RingError, FileNotFoundError):
                    if time.monotonic() > deadline:
                        raise RingError(f"partition {p.name}: rings {names} not there after {timeout_s} s")
                    time.sleep(0.05)
            self.rings.append((rc, re_))
            self.cmd_out.append(rc.producer())
            cons = re_.consumer()
            cons.set_waiting(True)        # the event loop sleeps in epoll: the partition rings for us
            self.evt_in.append(cons)
            self.bells.append(bell)
            self.wakes.append(wake)

    # -- input path ------------------------------------------------------------------------------
    def garbage(self, conn: _Conn, why: str) -> None:
        self.count(f"{conn.kind}_garbage")
        log(self.name, f"{conn.kind} connection {conn.peer}: {why}: closed")
        conn.close()

    def refused(self, conn: _Conn, why: str) -> None:
        """A login that is not a firm's: counted, logged (at most once a second), closed."""
        self.count("login_rejected")
        self.log_limited("refused", f"{conn.kind} connection {conn.peer}: {why}: closed "
                                    f"({self.counters['login_rejected']} logins refused so far)")
        conn.close()

    def log_limited(self, key: str, text: str) -> None:
        """A log line of a kind a client can cause at will: at most one a second per kind."""
        now = time.monotonic()
        if now - self._logged_at.get(key, 0.0) >= 1.0:
            self._logged_at[key] = now
            log(self.name, text)

    def slow_consumer(self, conn: _Conn) -> None:
        """A connection whose unsent output passed [session_limits] max_queued_bytes (the client
        does not read): dropped at once, its queue discarded; the session sees a disconnect."""
        self.count("slow_consumer_disconnects")
        slot = conn.slot
        log(self.name, f"{slot.name if slot is not None else conn.kind} connection {conn.peer}: "
                       f"{conn.queued()} bytes unsent, over {self.limits.max_queued_bytes} (the client "
                       f"does not read): disconnected")
        conn.abort()

    def session_events(self, slot: Slot) -> None:
        """Count what the session reports; say why a connection is being closed by a budget."""
        if not slot.session._events:
            return
        for ev in slot.session.take_events():
            if ev.kind == E.THROTTLED:
                self.count("throttled")
            elif ev.kind == E.OVER_BUDGET:
                self.count("throttle_disconnects")
                log(self.name, f"{slot.name}: {ev.text}: disconnected")
            else:
                self.count(f"session_{ev.kind}")

    def after_input(self, slot: Slot) -> None:
        slot.dirty = True
        session = slot.session
        if session._commands:
            now = _clock()
            for cmd in session.take_commands():
                self.submit(slot, cmd, now)
        self.flush(only_dirty=True)
        if self.stages is not None:
            self.stages.lap(G_SUBMIT)
        self.poll_rings()

    def disconnected(self, slot: Slot) -> None:
        now = _clock()
        if slot.kind == "ouch":
            cmds = slot.session.on_disconnect()
            for cmd in cmds:
                self.submit(slot, cmd, now)
        else:
            slot.session.connection_lost(now)
        self.flush()

    def submit(self, slot: Slot | None, cmd: Command, now: int) -> None:
        """Risk, then the outbox (the ring after the next flush)."""
        reason = self.risk.check(cmd, now)
        if reason:
            self.local_reject(slot, cmd, reason, now)
            return
        try:
            rec = C.encode_command(cmd)
        except MalformedCommand as e:
            if type(cmd) is NewOrder:
                self.risk.withdraw(cmd)
            self.local_reject(slot, cmd, R.SESSION_MALFORMED, now, str(e))
            return
        cls = type(cmd)
        if cls is NewOrder:
            p = self.partition_of_locate.get(cmd.locate, 0)  # type: ignore[union-attr]
            self.order_partition[cmd.order_id] = p  # type: ignore[union-attr]
            self.outbox.append((p, rec))
        elif cls is MassCancel:
            if cmd.locate:  # type: ignore[union-attr]
                self.outbox.append((self.partition_of_locate.get(cmd.locate, 0), rec))  # type: ignore[union-attr]
            else:
                for p in range(len(self.partitions)):
                    self.outbox.append((p, rec))
                if slot is not None and slot.kind == "fix" and len(self.partitions) > 1:
                    slot.dirty = True
                    slot.session.mass_cancel_fanout(cmd.cl_ord_id, len(self.partitions))  # type: ignore[union-attr]
        else:
            self.outbox.append((self.order_partition.get(cmd.order_id, 0), rec))  # type: ignore[union-attr]
        counters = self.counters
        counters["commands"] = counters.get("commands", 0) + 1

    def local_reject(self, slot: Slot | None, cmd: Command, reason: int, now: int, text: str = "") -> None:
        ev: Event = (Ev.REJECTED, cmd, reason)
        self.count(f"rejected_{reason}")
        if slot is not None:
            slot.dirty = True
            if slot.kind == "fix":
                slot.session.on_events(now, [ev], now)
            else:
                slot.session.on_events(now, [ev])
        row = {"ts_ns": now, "seq": 0, "event": "CommandRejected", "outcome": R.describe(reason),
               "reason": reason, "gateway": self.name, "command": type(cmd).__name__,
               "firm": getattr(cmd, "firm", 0), "session": getattr(cmd, "session", 0),
               "cl_ord_id": getattr(cmd, "cl_ord_id", ""), "order_id": getattr(cmd, "order_id", 0),
               "locate": getattr(cmd, "locate", 0), "side": getattr(cmd, "side", ""),
               "price": getattr(cmd, "price", 0), "qty": getattr(cmd, "qty", 0),
               "account": getattr(cmd, "account", ""), "ord_type": getattr(cmd, "ord_type", ""),
               "tif": getattr(cmd, "tif", ""), "stop_price": getattr(cmd, "stop_price", 0)}
        if text:
            row["text"] = text
        self.rejects.write(json.dumps(row) + "\n")
        self.rejects.flush()

    # -- flush: journal, FIX state, rings, sockets ------------------------------------------------
    def flush(self, only_dirty: bool = False) -> None:
        """Journal, rings, sockets: every session, or with ``only_dirty`` those the shell called into
        since they were last flushed (every path that calls into a session marks it, and every
        flush takes every marked one: the journal's MARK never runs ahead of a session's output)."""
        if only_dirty:
            slots = []
            for slot in self.slots:
                if slot.dirty:
                    slot.dirty = False
                    slots.append(slot)
        else:
            slots = self.slots
            for slot in slots:
                slot.dirty = False
        self.journal(slots)
        if self.outbox:
            box = self.outbox
            self.outbox = []
            if self.cmd_pending:
                self.cmd_pending.extend(box)
            else:
                self._publish(box)
        for slot in slots:
            session = slot.session
            if session._events:
                self.session_events(slot)
            conn = slot.conn
            if conn is None:
                continue
            data = session.data_to_send()
            if data:
                conn.write(data)
            # An OUCH login's replay or a FIX resend, a chunk at a time while the socket takes it
            # (resume_writing comes back here): every message in the stores is committed by now.
            while session.replaying and not conn.write_paused and not conn.closed:
                conn.write(session.data_to_send())
            if session.should_close:
                conn.close()

    def _publish(self, box: list[tuple[int, bytes]]) -> None:
        outs = self.cmd_out
        rung = 0
        published = False
        for i, (p, rec) in enumerate(box):
            if not outs[p].try_publish(rec):
                self.cmd_pending = box[i:]
                self.count("ring_full")
                self._pause(True)
                break
            published = True
            if outs[p].consumer_waiting() and not rung >> p & 1:   # a spinning partition needs no bell
                rung |= 1 << p
                try:
                    os.write(self.wakes[p], b"\x01")
                except BlockingIOError:   # the FIFO is full of unread rings: it will wake
                    pass
        if published and self.poller is not None:
            self.poller.expect()      # their answers are due: poll for them instead of sleeping

    def _pause(self, on: bool) -> None:
        if on == self.paused:
            return
        self.paused = on
        for c in list(self.conns):
            if c.transport is not None and not c.closed:
                if on:
                    c.transport.pause_reading()
                else:
                    c.transport.resume_reading()

    # -- events from the partitions ----------------------------------------------------------------
    def on_bell(self, p: int) -> None:
        # Drain the doorbell FIFO: a read that returns less than asked emptied it (a ring after it
        # makes the FIFO readable again), so the usual wake-up costs one read, not a second one
        # that fails with EAGAIN.
        try:
            while len(os.read(self.bells[p], 4096)) == 4096:
                pass
        except (BlockingIOError, OSError):
            pass
        self.poll_rings()

    def poll_rings(self) -> int:
        if self.cmd_pending:
            box = self.cmd_pending
            self.cmd_pending = []
            self._publish(box)
            if not self.cmd_pending:
                self._pause(False)
        total = 0
        st = self.stages
        if st is not None:
            st.start()
        for p, cons in enumerate(self.evt_in):
            while True:
                recs = cons.poll(1024)
                if not recs:
                    break
                total += len(recs)
                groups = self.decoders[p].feed(recs)
                if st is not None:
                    st.lap(G_RING_READ)
                self.handle_groups(p, groups)
                if st is not None:
                    st.lap(G_SESSIONS)
        if total:
            self.records_in += total
            self.flush(only_dirty=True)
            if st is not None:
                st.lap(G_FLUSH)
        return total

    def handle_groups(self, p: int, groups: Iterable[C.Group]) -> None:
        pid = self.partitions[p].id
        risk = self.risk
        by_sid = self.by_sid
        now = _clock()
        top = 0                      # the last command of the partition whose events were handed over
        for seq, ts, events in groups:
            k = events[0][0]
            if k >= C.CTL_POSITION:
                self._control(p, k, events[0])
                continue
            replay = self.replaying[p]
            if not replay:
                risk.on_events(events)
            touched: list[Slot] = []
            for ev in events:
                kind = ev[0]
                if kind == EV_ACCEPTED:   # the commonest: one order, its session
                    slot = by_sid.get(ev[1].session)
                    if slot is not None and slot not in touched:
                        touched.append(slot)
                    continue
                if kind == EV_EXECUTED or kind == EV_CROSS_EXECUTED:
                    objs: tuple[Any, ...] = (ev[1], ev[2])
                elif kind == EV_REPLACED:
                    objs = (ev[2],)
                else:
                    objs = (ev[1],)
                if kind == EV_REJECTED and type(ev[1]) in (Halt, Resume, Close):
                    log(self.name, f"admin {type(ev[1]).__name__} of locate {ev[1].locate} refused: "
                                   f"{R.describe(ev[2])}")
                    if not replay:
                        self._admin_outcome(p, ev[1].KIND, ev[1].locate, {
                            "applied": False, "reason": ev[2], "text": R.describe(ev[2])})
                    continue
                for o in objs:
                    slot = by_sid.get(o.session)
                    if slot is not None and slot not in touched:
                        touched.append(slot)
                if kind == EV_CANCELLED and not ev[3]:
                    self.order_partition.pop(ev[1].order_id, None)
                elif kind == EV_EXECUTED or kind == EV_CROSS_EXECUTED:
                    if not ev[6]:
                        self.order_partition.pop(ev[1].order_id, None)
                    if not ev[8]:
                        self.order_partition.pop(ev[2].order_id, None)
                elif kind == EV_REJECTED and type(ev[1]) is NewOrder:
                    self.order_partition.pop(ev[1].order_id, None)
            for slot in touched:
                if replay and seq <= slot.applied.get(pid, 0):
                    continue
                slot.dirty = True
                if slot.kind == "fix":
                    slot.session.on_events(ts, events, now)
                else:
                    if replay:
                        for ev in events:
                            if ev[0] == EV_ACCEPTED and ev[1].session == slot.sid:
                                adopt_ouch_order(slot.session, ev[1])
                    slot.session.on_events(ts, events)
            top = seq
        if top > self.marks.get(pid, 0):
            self.marks[pid] = top
            self._marks_dirty = True

    def _control(self, p: int, k: int, ev: tuple[Any, ...]) -> None:
        if k == C.CTL_POSITION:
            _, firm, locate, pos = ev
            if pos:
                self.risk.on_fill(firm, locate, BUY if pos > 0 else SELL, abs(pos))
        elif k == C.CTL_LAST_PRICE:
            _, locate, price = ev
            self.risk.set_reference_price(locate, price)
        elif k == C.CTL_OPEN_ORDER:
            o = ev[1]
            self.risk.on_events([(Ev.ACCEPTED, o, o.leaves)])
            live = self.risk._live.get(o.order_id)
            if live is not None:
                live.filled = o.filled
            self.order_partition[o.order_id] = p
        elif k == C.CTL_REPLAY:
            self.replaying[p] = True
        elif k == C.CTL_LIVE:
            self.replaying[p] = False
            self.live[p] = True
            self._marks_dirty = True
        elif k == C.CTL_ADMIN:
            _, command, locate, changed = ev
            self._admin_outcome(p, command, locate, {"applied": True, "instruments_changed": changed})

    # -- timers ----------------------------------------------------------------------------------------
    def tick(self) -> None:
        now = _clock()
        for slot in self.slots:
            slot.session.poll(now)
        self.flush()
        work = self.counters.get("commands", 0) + self.records_in
        self.gc.tick(time.monotonic_ns(), work - self._work_at_tick)
        self._work_at_tick = work


    # -- running -----------------------------------------------------------------------------------------
    async def serve(self, ready_path: str | None = None) -> int:
        self.loop = asyncio.get_running_loop()
        self.attach_rings()
        for p, fd in enumerate(self.bells):
            self.loop.add_reader(fd, self.on_bell, p)
        selector = getattr(self.loop, "_selector", None)
        if isinstance(selector, BusyPollSelector) and selector.window_ns:
            selector.watch(self.evt_in, self.bells)
            self.poller = selector
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, stop.set)
        deadline = time.monotonic() + 600
        while not all(self.live):
            self.poll_rings()
            if time.monotonic() > deadline:
                log(self.name, "partitions did not finish the catch-up in time")
                return 1
            await asyncio.sleep(0.002)
        self.flush()
        self.gc.start()    # from here on a full collection waits for a quiet tick (appliance.gcpolicy)
        ctl_path = os.path.join(self.state_dir, "run", f"{self.name}.ctl")
        os.makedirs(os.path.dirname(ctl_path), exist_ok=True)
        try:
            os.unlink(ctl_path)
        except FileNotFoundError:
            pass
        ctl = await asyncio.start_unix_server(self.control, ctl_path)
        os.chmod(ctl_path, 0o600)   # the admin interface: the service's user only
        backlog = self.limits.listen_backlog
        ouch = await self.loop.create_server(lambda: OuchConn(self), self.gw.bind, self.gw.ouch_port,
                                             reuse_address=True, backlog=backlog)
        fix = await self.loop.create_server(lambda: FixConn(self), self.gw.bind, self.gw.fix_port,
                                            reuse_address=True, backlog=backlog)
        self.accepting = True
        log(self.name, f"listening: OUCH {self.gw.bind}:{self.gw.ouch_port}, FIX {self.gw.bind}:{self.gw.fix_port}; "
                       f"firms {', '.join(f.name for f in self.firms)}; admin socket {ctl_path}")
        if ready_path:
            atomic_write(ready_path, json.dumps({"gateway": self.name, "pid": os.getpid(), "marks": self.marks}).encode(),
                         durable=False)
        ticker = asyncio.ensure_future(self._ticker(stop))
        await stop.wait()
        # Shutdown: stop taking input, let in-flight commands be answered, end the sessions.
        self.accepting = False
        ouch.close()
        fix.close()
        self._pause(True)
        if self.outbox:
            self.flush()
        quiet_since = time.monotonic()
        hard = quiet_since + 3.0
        while time.monotonic() < hard:
            if self.poll_rings():
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > QUIET_S and not self.cmd_pending:
                break
            await asyncio.sleep(0.005)
        now = _clock()
        for slot in self.slots:
            if slot.kind == "ouch":
                slot.session.end_of_session(now)
            else:
                slot.session.logout(now, "end of day")
        self.flush()
        await asyncio.sleep(0.05)
        for c in list(self.conns):
            c.close()
        ticker.cancel()
        ctl.close()
        self.close()
        log(self.name, f"stopped: {json.dumps(self.counters, sort_keys=True)}")
        self.write_stats()
        return 0

    def write_stats(self) -> None:
        """run/<gateway>.stats.json: the counters, the collector's and the busy poll's figures and, with stage
        timing on, the time per stage."""
        path = os.path.join(self.state_dir, "run", f"{self.name}.stats.json")
        st = self.stages
        poll = self.poller
        obj = {"gateway": self.name, "counters": self.counters, "gc": self.gc.figures(),
               "busy_poll": {"window_us": poll.window_ns // 1000, "idle_polls": poll.polls} if poll else None,
               "stages": st.report(self.counters.get("commands", 0)) if st is not None else None}
        try:
            atomic_write(path, json.dumps(obj, indent=1, sort_keys=True).encode(), durable=False)
        except OSError as e:
            log(self.name, f"stats not written: {e}")

    async def _ticker(self, stop: asyncio.Event) -> None:
        next_tick = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(FALLBACK_POLL_S)
            self.poll_rings()
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + TICK_S
                self.tick()

    def close(self) -> None:
        for fd in getattr(self, "bells", []):
            try:
                self.loop.remove_reader(fd)
            except Exception:
                pass
            os.close(fd)
        for fd in getattr(self, "wakes", []):
            os.close(fd)
        for rc, re_ in getattr(self, "rings", []):
            rc.close()
            re_.close()
        os.close(self.journal_fd)
        for slot in self.slots:
            if slot.store is not None:
                slot.store.close()
        self.rejects.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.gateway.server", description="one gateway process")
    ap.add_argument("--config", required=True)
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--cpus", default="", help="comma-separated CPUs to run on (default: all)")
    args = ap.parse_args(argv)
    from appliance.process import setup_process
    setup_process()
    config = load(args.config)
    if args.cpus:
        try:
            os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
            log(args.gateway, f"affinity: CPUs {args.cpus}")
        except OSError as e:
            log(args.gateway, f"affinity: refused: {e}")
    ready = os.path.join(args.state_dir, "run", f"{args.gateway}.ready.json")
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop  # type: ignore[import-not-found]
        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    try:
        server = GatewayServer(config, args.gateway, args.state_dir)
        window_ns = server.gw.busy_poll_us * 1000
        if window_ns:   # epoll that polls the event rings for answers due (appliance.gateway.busypoll)
            loop_factory = lambda: asyncio.SelectorEventLoop(BusyPollSelector(window_ns))  # noqa: E731
            log(args.gateway, f"event loop: polls up to {server.gw.busy_poll_us} µs for the answers to its commands")
        elif loop_factory is not None:
            log(args.gateway, "event loop: uvloop")
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(server.serve(ready))
    except OSError as e:
        # The journal, the FIX state files or the ready file cannot be written (a full disk, a
        # failing file system): one line, EX_IOERR, as the partitions do.
        from appliance.wal import EXIT_DURABILITY_FAILURE
        log(args.gateway, f"DURABILITY FAILURE: {e}; exiting {EXIT_DURABILITY_FAILURE}")
        return EXIT_DURABILITY_FAILURE


if __name__ == "__main__":
    sys.exit(main())
