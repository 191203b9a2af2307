"""The Socket.IO server every stage runs, with the checks python-socketio leaves to the
application, made where packets are decoded and dispatched:

- an event a client emits under one of Socket.IO's own names (`connect`, `disconnect`, ...)
  or under a name that is not a string is refused with a `bad_request` ack; it never
  reaches a handler (python-socketio would run the server's `connect` handler for it);
- a packet that cannot be decoded (an integer over 100 digits, nesting deeper than the
  JSON decoder's recursion limit, a binary attachment nobody announced) closes its
  connection: a connected client gets an `error` event with the reason, then a disconnect;
  a client that is still connecting gets a `connect_error` with the reason. Either way
  it is one log line (rate-limited), not a traceback, and what that connection sends
  afterwards is dropped unread.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import socketio
from socketio import packet as sp

from imlab import protocol as p
from imlab.protocol import ErrorCode, ProtocolError
from imlab.ratelog import LimitedLog

log = logging.getLogger("imlab.sioguard")
limited = LimitedLog(log)

MAX_REASON = 200


class Undecodable(Exception):
    """A packet (or attachment) python-socketio could not decode."""

    def __init__(self, packet_type: object, namespace: str | None, cause: BaseException) -> None:
        reason = f"{type(cause).__name__}: {cause}"[:MAX_REASON]
        super().__init__(reason)
        self.packet_type = packet_type
        self.namespace = namespace
        self.reason = reason


class GuardedPacket(sp.Packet):  # type: ignore[misc]
    """A Socket.IO packet whose decoding failures all raise `Undecodable`."""

    def decode(self, encoded_packet: Any) -> int:
        try:
            return int(super().decode(encoded_packet) or 0)
        except Exception as exc:  # ValueError, RecursionError, TypeError, ...: all bad input
            raise Undecodable(self.packet_type, self.namespace, exc) from None

    def add_attachment(self, attachment: Any) -> bool:
        try:
            return bool(super().add_attachment(attachment))
        except Exception as exc:
            raise Undecodable(self.packet_type, self.namespace, exc) from None


class GuardedServer(socketio.AsyncServer):  # type: ignore[misc]
    """`socketio.AsyncServer` that refuses reserved or malformed events and closes a
    connection whose packets cannot be decoded. `refused` counts both, by reason."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(serializer=GuardedPacket, **kwargs)
        self.refused: Counter[str] = Counter()
        self._closing: set[str] = set()  # engine.io sids being closed: their input is dropped

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        if eio_sid in self._closing or not self._open(eio_sid):
            return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except Undecodable as exc:
            await self._close_undecodable(eio_sid, exc.namespace, exc.reason)
        except ValueError as exc:  # python-socketio's own protocol checks (packet order, type)
            await self._close_undecodable(eio_sid, None, str(exc)[:MAX_REASON])

    def _open(self, eio_sid: str) -> bool:
        """False once engine.io closed the socket: messages it had read are still dispatched."""
        sock = self.eio.sockets.get(eio_sid)
        return sock is not None and not (sock.closing or sock.closed)

    async def _handle_eio_disconnect(self, eio_sid: str, *args: Any) -> None:
        self._closing.discard(eio_sid)
        await super()._handle_eio_disconnect(eio_sid, *args)

    async def _handle_event(self, eio_sid: str, namespace: str | None, id: Any, data: Any) -> None:
        try:
            if not isinstance(data, list) or not data:
                raise p.bad("an event must be [name, ...arguments]")
            p.check_event_name(data[0])
        except ProtocolError as exc:
            await self._refuse_event(eio_sid, namespace or "/", id, exc)
            return
        await super()._handle_event(eio_sid, namespace, id, data)

    async def _refuse_event(
        self, eio_sid: str, namespace: str, id: Any, exc: ProtocolError
    ) -> None:
        self.refused["bad_event"] += 1
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.manager.is_connected(sid, namespace):
            return
        limited.warning("refused event", "%s: %s", sid, exc.message)
        if id is not None:
            ack = self.packet_class(sp.ACK, namespace=namespace, id=id, data=[exc.ack()])
            await self._send_packet(eio_sid, ack)

    async def _close_undecodable(self, eio_sid: str, namespace: str | None, reason: str) -> None:
        self._closing.add(eio_sid)
        self._binary_packet.pop(eio_sid, None)
        self.refused["undecodable"] += 1
        namespace = namespace or "/"
        message = f"undecodable packet, connection closed: {reason}"
        limited.warning("undecodable packet", "%s: %s", eio_sid, reason)
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is not None and self.manager.is_connected(sid, namespace):
            data = {"code": str(ErrorCode.BAD_REQUEST), "message": message}
            await self.emit(p.ERROR, data, to=sid, namespace=namespace)
            await self.disconnect(sid, namespace=namespace)
        else:
            refusal = {"message": message, "data": p.refusal(ErrorCode.BAD_REQUEST, message)}
            pkt = self.packet_class(sp.CONNECT_ERROR, data=refusal, namespace=namespace)
            await self._send_packet(eio_sid, pkt)
        await self.eio.disconnect(eio_sid)
