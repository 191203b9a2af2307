"""A load user's client: the synchronous client SDK that can drop off and come back as
the churn scenario needs, and the history recorder that counts what it records for the
status file. Used inside Locust processes (gevent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imlab.client import HistoryRecorder, SyncChatClient
from imlab.client.core import Disconnected, Record
from imlab.experiment import history as H
from imlab.protocol import ErrorCode


class LoadClient(SyncChatClient):
    """A `SyncChatClient` that can drop off and come back as the churn scenario needs.

    `drop(silent=True)` models a device that loses its network: the server is not
    told and keeps pushing into the connection, and nothing that arrives reaches the
    application. Python-socketio keeps answering pings, which stands for a server
    ping timeout (45 s by default) longer than the offline spell. `come_back()` closes
    that dead connection (as the server's timeout eventually would) and connects anew.
    """

    def __init__(self, user: str, urls: list[str], **kw: Any) -> None:
        super().__init__(user, urls, **kw)
        self.silenced = False
        self.online = False
        self.dropped_pushes = 0
        self._quiet_disconnect = False
        # The stage shut this user out (its tokens revoked): the connection was closed
        # `unauthorized` or a reconnect was refused so; it will not get back in.
        self.shut_out = False

    def connect(self, timeout: float = 10.0) -> None:
        super().connect(timeout)
        self.online = True

    def _tell_disconnect(self, rec: Record, note: Disconnected) -> None:
        if (note.reason or "").startswith(f"{ErrorCode.UNAUTHORIZED}:"):
            self.shut_out = True
        if not self._quiet_disconnect:  # closing a connection already counted as lost
            super()._tell_disconnect(rec, note)

    def _on_message(self, data: Any) -> None:
        if self.silenced:
            self.dropped_pushes += 1
            return
        super()._on_message(data)

    def _group_created(self, data: Any) -> None:
        if not self.silenced:
            super()._group_created(data)

    def drop(self, *, silent: bool) -> None:
        self.online = False
        if silent:
            self.silenced = True
            self.record(H.DISCONNECT, reason="network lost (silent: the server is not told)")
        else:
            self.disconnect()

    def come_back(self) -> None:
        if self.silenced:
            self._quiet_disconnect = True
            try:
                self.disconnect()
            finally:
                self._quiet_disconnect = False
            self.silenced = False
        self.connect()


class CountingRecorder(HistoryRecorder):
    """A history recorder that also counts what it records, for the status file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.counts: dict[str, int] = {}

    def write(self, rec: dict[str, Any]) -> None:
        ev = rec["ev"]
        key = f"recv_{rec.get('via')}" if ev == H.RECV else ev
        if ev == H.ACK:
            key = "ack_ok" if rec.get("ok") else "ack_err"
        self.counts[key] = self.counts.get(key, 0) + 1
        super().write(rec)
