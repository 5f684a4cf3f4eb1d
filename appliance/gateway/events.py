"""Session events: what a gateway session tells its I/O shell besides bytes and commands.

Plain values, one class for every protocol; ``kind`` is one of the constants below and ``text`` a
human explanation (for logs and counters, never parsed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from appliance.catalogue import Command

LOGGED_IN: Final = "logged_in"            # text: who (username or CompID)
LOGIN_REJECTED: Final = "login_rejected"  # the connection will close
LOGGED_OUT: Final = "logged_out"          # an orderly logout; the connection will close
TIMED_OUT: Final = "timed_out"            # the peer was silent too long; the connection will close
PROTOCOL_ERROR: Final = "protocol_error"  # framing lost or a rule broken; the connection will close
MALFORMED: Final = "malformed"            # one message refused (answered, not processed); goes on
IGNORED: Final = "ignored"                # one message ignored as the protocol says (e.g. stale id)
GARBLED: Final = "garbled"                # FIX: bad checksum; dropped without a sequence number
END_OF_SESSION: Final = "end_of_session"  # the server ended the session (OUCH 'Z')
THROTTLED: Final = "throttled"            # one message over the session's rate: answered, not processed
OVER_BUDGET: Final = "over_budget"        # too many throttled in a second; the connection will close


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """One thing that happened to a session, for the shell's logs and counters."""

    kind: str
    text: str = ""


class SessionOutbox:
    """What a sans-IO session hands its I/O shell: bytes to write, commands to submit, session
    events. Base of every gateway session; owned by the thread that drives the session."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._commands: list[Command] = []
        self._events: list[SessionEvent] = []

    def data_to_send(self) -> bytes:
        """Bytes for the socket, accumulated since the last call."""
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out

    def take_commands(self) -> list[Command]:
        """Commands to submit to the partition, in order, accumulated since the last call."""
        out = self._commands
        self._commands = []
        return out

    def take_events(self) -> list[SessionEvent]:
        """Session events accumulated since the last call."""
        out = self._events
        self._events = []
        return out

    def next_event(self) -> SessionEvent | None:
        """The oldest session event not yet taken, or None."""
        return self._events.pop(0) if self._events else None
