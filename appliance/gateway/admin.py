"""The gateway's admin socket (``{state_dir}/run/{gateway}.ctl``, the service's user only): one JSON
request per line, one JSON answer per line. Ops: ``status``; ``kill_switch`` (firm, on: blocks the
firm's new orders and mass-cancels its open ones); ``trading`` (action halt|resume|close, symbol or
``all``: put on the partitions' command rings, the answer waits for each partition's outcome).

Owned by the gateway's event loop: ``AdminControl`` is a part of ``GatewayServer``
(appliance/gateway/server.py), which routes the partitions' answers to ``_admin_outcome``.
"""
from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any, Callable, Final, Protocol, Sequence

from appliance import codec_ring as C
from appliance import reasons as R
from appliance.catalogue import ALL_INSTRUMENTS, Close, Command, Halt, Resume
from appliance.clock import wall_clock
from appliance.config import FirmConfig, PartitionConfig
from appliance.gateway.state import log
from appliance.model import Instrument
from appliance.risk import RiskChecker

__all__ = ["ADMIN_ANSWER_S", "AdminControl", "AdminSlot"]

_clock = wall_clock()   # the wall clock (appliance.clock): shifted as MATCHWIRE_CLOCK_OFFSET_NS says

ADMIN_ANSWER_S: Final = 5.0        # how long an admin trading action waits for the partitions' outcome


class AdminSlot(Protocol):
    """What the admin status reads of a session's slot (server.Slot)."""

    @property
    def kind(self) -> str: ...
    @property
    def session(self) -> Any: ...
    @property
    def sid(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def conn(self) -> object: ...


class AdminControl:
    """The admin socket's operations: a part of GatewayServer, on its event loop."""

    name: str
    loop: asyncio.AbstractEventLoop
    firms: list[FirmConfig]
    firm_by_name: dict[str, FirmConfig]
    partitions: list[PartitionConfig]
    instruments: list[Instrument]
    partition_of_locate: dict[int, int]
    risk: RiskChecker
    slots: Sequence[AdminSlot]
    outbox: list[tuple[int, bytes]]
    admin_waiting: list[deque[tuple[int, int, asyncio.Future[dict[str, Any]]]]]
    accepting: bool
    live: list[bool]
    marks: dict[int, int]
    counters: dict[str, int]
    count: Callable[[str], None]
    submit: Callable[[None, Command, int], None]
    flush: Callable[[], None]

    def _admin_outcome(self, p: int, command: int, locate: int, outcome: dict[str, Any]) -> None:
        """The partition's answer to the oldest admin command this gateway sent it (a partition
        answers its ring's commands in order); one that timed out is dropped in turn."""
        waiting = self.admin_waiting[p]
        if not waiting:
            return   # sent before a restart: nobody waits for it
        kind, loc, fut = waiting.popleft()
        if (kind, loc) != (command, locate):
            log(self.name, f"admin answer for command {command} of locate {locate} does not match the "
                           f"oldest request ({kind}, {loc}): dropped")
            return
        if not fut.done():
            fut.set_result(outcome)

    def kill_switch(self, firm_name: str, on: bool) -> dict[str, Any]:
        f = self.firm_by_name.get(firm_name)
        if f is None:
            return {"ok": False, "error": f"firm {firm_name!r} is not on gateway {self.name}"}
        mc = self.risk.set_kill_switch(f.id, on)
        if mc is not None:
            self.submit(None, mc, _clock())
            self.flush()
        log(self.name, f"kill switch {'ON' if on else 'off'} for {firm_name}"
                       + (": mass cancel sent" if mc is not None else ""))
        return {"ok": True, "firm": firm_name, "kill_switch": on, "mass_cancel": mc is not None}

    async def trading_action(self, action: str, symbol: str) -> dict[str, Any]:
        """An admin Halt, Resume or Close of one instrument (``symbol``) or of every instrument
        (``all``: ALL_INSTRUMENTS to every partition), put on this gateway's command ring to the
        partition, which sequences it like any command (WAL, replay). No risk check: it comes from
        the admin socket, not from a session. The answer waits (ADMIN_ANSWER_S at most) for each
        partition's outcome: applied, with how many instruments changed state (their Trading Action
        H is on the feed), or refused with the engine's reason."""
        actions: dict[str, type[Halt] | type[Resume] | type[Close]] = {"halt": Halt, "resume": Resume,
                                                                       "close": Close}
        cls = actions.get(action)
        if cls is None:
            return {"ok": False, "error": f"unknown trading action {action!r} (halt, resume, close)"}
        if symbol.lower() == "all":
            targets = [(p, ALL_INSTRUMENTS) for p in range(len(self.partitions))]
        else:
            ins = next((i for i in self.instruments if i.symbol == symbol), None)
            if ins is None or ins.locate not in self.partition_of_locate:
                return {"ok": False, "error": f"unknown symbol {symbol!r}"}
            targets = [(self.partition_of_locate[ins.locate], ins.locate)]
        futures = []
        for p, locate in targets:
            fut: asyncio.Future[dict[str, Any]] = self.loop.create_future()
            self.admin_waiting[p].append((cls.KIND, locate, fut))
            futures.append(fut)
            self.outbox.append((p, C.encode_command(cls(locate))))
        self.count("admin_commands")
        self.flush()
        names = [self.partitions[p].name for p, _ in targets]
        log(self.name, f"admin {action} {symbol}: sent to partition(s) {', '.join(names)}")
        done, _ = await asyncio.wait(futures, timeout=ADMIN_ANSWER_S)
        results = {name: (f.result() if f in done else {"applied": None, "error": "no answer in time"})
                   for name, f in zip(names, futures)}
        for f in futures:
            f.cancel()   # a late answer finds it done and is dropped
        applied = all(r.get("applied") for r in results.values())
        ans: dict[str, Any] = {"ok": applied, "action": action, "symbol": symbol, "partitions": results}
        if any(r.get("applied") is False for r in results.values()):
            ans["refused"] = True
        elif not applied:
            ans["timeout"] = True
        return ans

    def status(self) -> dict[str, Any]:
        sessions = []
        for slot in self.slots:
            s = slot.session
            d: dict[str, Any] = {"name": slot.name, "session_id": slot.sid, "connected": slot.conn is not None}
            if slot.kind == "ouch":
                d.update(next_sequence=s.next_sequence, orders=len(s.orders),
                         last_user_ref_num=s.last_user_ref_num)
            else:
                d.update(next_in=s.state.next_in, next_out=s.state.next_out, orders=len(s.state.orders))
            sessions.append(d)
        firms = {f.name: {"kill_switch": self.risk.kill_switch(f.id),
                          "positions": {str(i.locate): self.risk.position(f.id, i.locate) for i in self.instruments}}
                 for f in self.firms}
        return {"gateway": self.name, "accepting": self.accepting, "live": self.live, "marks": self.marks,
                "sessions": sessions, "firms": firms, "counters": self.counters}

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The admin socket: one JSON request per line, one JSON answer per line."""
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    req = json.loads(line)
                    op = req.get("op")
                    if op == "kill_switch":
                        ans = self.kill_switch(str(req["firm"]), bool(req["on"]))
                    elif op == "status":
                        ans = self.status()
                    elif op == "trading":
                        ans = await self.trading_action(str(req["action"]), str(req["symbol"]))
                    else:
                        ans = {"ok": False, "error": f"unknown op {op!r}", "reason": R.ADMIN_UNKNOWN_COMMAND}
                except (ValueError, KeyError, TypeError) as e:
                    ans = {"ok": False, "error": str(e)}
                writer.write(json.dumps(ans).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()
