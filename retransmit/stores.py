"""The feed stores a retransmission server reads: by session name, over one or more directories.

Each partition's publisher writes ``DIR/<session>.feed`` and ``.idx`` (feeds/store.py) and keeps
each channel's current session in ``DIR/CHANNEL-<channel>.json``. The server opens stores
read-only (``FeedStore.open_reader``) on first use and tails them: a read past the known end
refreshes the view first, so a store that grows while it is served is followed.

Session names come from the network: only 10-byte names of ASCII letters and digits (then
spaces) are looked up, so no request can name another file. A name that has no store is
remembered as unknown for ``unknown_ttl_ns`` (a flood of bad names costs no file system call
each); the memory of unknown names is bounded.
"""
from __future__ import annotations

import json
import os
import re
from typing import Sequence

from feeds.store import FeedStore, StoreError

__all__ = ["StoreSet", "valid_session"]

_SESSION = re.compile(rb"^[0-9A-Za-z]{1,10} *$")
_MAX_UNKNOWN = 4096


def valid_session(session: bytes) -> bool:
    """A 10-byte session name of letters and digits, space-padded on the right."""
    return len(session) == 10 and _SESSION.match(session) is not None


class StoreSet:
    """Owned by the server's event-loop thread: read-only feed stores by session."""

    def __init__(self, directories: Sequence[str], *, unknown_ttl_ns: int = 1_000_000_000) -> None:
        if not directories:
            raise ValueError("retransmit: at least one feed store directory is needed")
        self.directories = list(directories)
        self.unknown_ttl_ns = unknown_ttl_ns
        self._stores: dict[bytes, FeedStore] = {}
        self._unknown: dict[bytes, int] = {}     # session -> time it was found missing
        self.opened = 0
        self.refreshes = 0

    def get(self, session: bytes, now_ns: int) -> FeedStore | None:
        """The store of ``session``, or None if no directory holds it (or the name is not valid)."""
        store = self._stores.get(session)
        if store is not None:
            return store
        if not valid_session(session):
            return None
        seen = self._unknown.get(session)
        if seen is not None and now_ns - seen < self.unknown_ttl_ns:
            return None
        name = session.decode("ascii").strip()
        for d in self.directories:
            if os.path.exists(os.path.join(d, name + ".feed")):
                try:
                    store = FeedStore.open_reader(d, session)
                except (OSError, StoreError):
                    continue     # being created right now (no header yet): unknown for a moment
                self._stores[session] = store
                self._unknown.pop(session, None)
                self.opened += 1
                return store
        if len(self._unknown) >= _MAX_UNKNOWN:
            self._unknown.clear()
        self._unknown[session] = now_ns
        return None

    def available(self, store: FeedStore, last: int) -> int:
        """How many messages ``store`` holds, refreshed from disk if ``last`` lies past its known end."""
        if last > store.count:
            store.refresh()
            self.refreshes += 1
        return store.count

    def current(self, channel: str = "l3") -> bytes | None:
        """The current session of ``channel`` in the first directory that names one (the default
        of a login that leaves the session blank)."""
        for d in self.directories:
            path = os.path.join(d, f"CHANNEL-{channel}.json")
            try:
                with open(path, "rb") as f:
                    state = json.loads(f.read())
                session = str(state["session"]).encode("ascii")
            except (OSError, ValueError, KeyError, UnicodeEncodeError):
                continue
            if valid_session(session):
                return session
        return None

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores.clear()
