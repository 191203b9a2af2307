"""The part every stage's connection-holding process shares: a Socket.IO server on
aiohttp, the login table (`user -> connections`, seed step 1), event dispatch with
payload validation and error acks, `hello`, pushes, `/healthz` and `/metrics`; a
session whose login expires is told (`error`) and closed when it does.

A stage subclasses `StageServer` and implements only what its chapter of the seed
changes: how a message is sent, and (from v2) groups, `latest` and `sync`. Anything
it does not implement answers `unsupported`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import socketio
from aiohttp import web
from redis.exceptions import RedisError

from imlab import protocol as p
from imlab.fastjson import codec
from imlab.metrics import Metrics
from imlab.protocol import ErrorCode, ProtocolError
from imlab.ratelog import LimitedLog
from imlab.sioguard import GuardedServer
from imlab.store import MessageStore

log = logging.getLogger("imlab.server")
limited = LimitedLog(log)

Handler = Callable[[str, Any], Awaitable[dict[str, Any]]]

MAX_ECHOED_NAME = 64  # of an unknown event's name, in the `unsupported` message

# The session a handler is answering (handlers get the user, not the sid): set around
# every guarded handler, for the few that act on their own connection (`refresh`).
current_sid: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "imlab_current_sid", default=None
)


@dataclass(frozen=True, slots=True)
class Login:
    """Who a connection speaks for, and until when (None: for as long as it is open)."""

    user: str
    expires_at: float | None = None
    token_id: str | None = None  # the token's `jti`, when the login came from a token


class StageServer:
    """Shared logic of a stage's server (or gateway) process."""

    stage: ClassVar[str] = "?"
    features: ClassVar[frozenset[str]] = frozenset()
    # Failures of a backing service: the request gets `unavailable`, the server keeps serving.
    unavailable_errors: ClassVar[tuple[type[BaseException], ...]] = (
        RedisError,
        ConnectionError,
        TimeoutError,
    )

    def __init__(self, node: str) -> None:
        self.node = node
        self.sio = GuardedServer(
            async_mode="aiohttp",
            cors_allowed_origins="*",
            logger=False,
            engineio_logger=False,
            max_http_buffer_size=256 * 1024,
            json=codec(),
        )
        self.app = web.Application()
        self.sio.attach(self.app)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.on_startup.append(self._on_startup)
        self.app.on_cleanup.append(self._on_cleanup)
        self.sessions: dict[str, str] = {}  # sid -> user
        self.logins: dict[str, Login] = {}  # sid -> what its login proved (and until when)
        self.local: dict[str, set[str]] = {}  # user -> sids on this node
        self.expiry: dict[str, tuple[float, asyncio.TimerHandle]] = {}  # sid -> when, timer
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing: set[str] = set()  # sids told why and being disconnected
        self.metrics = Metrics("imlab", {"stage": self.stage, "node": node})
        self.metrics.gauge("connections", lambda: len(self.sessions), "open client sessions")
        self.metrics.gauge("users", lambda: len(self.local), "distinct users connected here")
        self.metrics.series(
            "refused_packets",
            lambda: [({"reason": k}, float(v)) for k, v in self.sio.refused.items()],
            "client packets refused before dispatch (reserved event names, undecodable)",
        )
        self._register()

    # ------------------------------------------------------------ stage hooks

    async def startup(self) -> None:
        """Open connections to backing services."""

    async def shutdown(self) -> None:
        """Close them."""

    async def authenticate(self, auth: object) -> Login:
        """Who this connection speaks for (v1-v3: `{"user": id}`, for as long as it is open)."""
        if not isinstance(auth, dict) or "user" not in auth:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, 'connect with auth {"user": "<id>"}')
        return Login(p.check_user_id(auth["user"]))

    async def on_login(self, user: str, sid: str) -> None:
        """Called after `user` connected on `sid` (v3/v4 record the route here)."""

    async def on_logout(self, user: str, sid: str) -> None:
        """Called after `sid` of `user` went away."""

    async def send(self, user: str, req: p.SendRequest) -> dict[str, Any]:
        raise _unsupported("send")

    async def create_group(self, user: str, req: p.CreateGroupRequest) -> dict[str, Any]:
        raise _unsupported("groups")

    async def latest(self, user: str) -> dict[str, Any]:
        raise _unsupported("history")

    async def sync(self, user: str, req: p.SyncRequest) -> dict[str, Any]:
        raise _unsupported("history")

    def health(self) -> dict[str, Any]:
        return {"ok": True}

    # ------------------------------------------------------------ pushes

    def online(self, user: str) -> bool:
        return bool(self.local.get(user))

    async def push(self, users: Iterable[str], event: str, data: dict[str, Any]) -> int:
        """Emit `event` to every local connection of `users`; returns how many got it."""
        sids = [sid for u in users for sid in self.local.get(u, ())]
        if sids:
            await self.sio.emit(event, data, to=sids)
            self.metrics.inc(f"pushed_{event}", len(sids))
        return len(sids)

    # ------------------------------------------------------------ plumbing

    def handlers(self) -> dict[str, Handler]:
        """The client events this server answers, and their handlers `(user, data) -> ack`.

        A stage that adds events (`refresh`, `receipt`, ...) overrides this and extends
        `super().handlers()`; each handler runs guarded (login checked, errors turned into
        error acks, a raised `ProtocolError` into its own ack). Events not listed answer
        `unsupported`. Called once, from the constructor."""
        return {
            p.HELLO: self._hello,
            p.SEND: self._send,
            p.CREATE_GROUP: self._create_group,
            p.LATEST: self._latest,
            p.SYNC: self._sync,
        }

    def _register(self) -> None:
        self.sio.on("connect", self._connect)
        self.sio.on("disconnect", self._disconnect)
        for event, handler in self.handlers().items():
            p.check_event_name(event)
            self.sio.on(event, self._guarded(event, handler))
        self.sio.on("*", self._unknown)

    def _guarded(self, event: str, handler: Handler) -> Callable[..., Awaitable[dict[str, Any]]]:
        async def run(sid: str, data: Any = None, *extra: Any) -> dict[str, Any]:
            self.metrics.inc(f"requests_{event}")
            user = self.sessions.get(sid)
            if user is None:
                return self._fail(event, ProtocolError(ErrorCode.UNAUTHORIZED, "not logged in"))
            if self._expired(sid):
                self._close_soon(sid, "login expired")
                return self._fail(event, ProtocolError(ErrorCode.UNAUTHORIZED, "login expired"))
            if extra:
                return self._fail(event, p.bad(f"{event} takes one payload object"))
            token = current_sid.set(sid)
            try:
                return await handler(user, data)
            except ProtocolError as exc:
                return self._fail(event, exc)
            except self.unavailable_errors as exc:
                log.warning("%s from %s: backing service unavailable: %r", event, user, exc)
                err = ProtocolError(ErrorCode.UNAVAILABLE, f"backing service unavailable: {exc}")
                return self._fail(event, err)
            except Exception:
                limited.error("handler failed", "%s from %s", event, user, exc_info=True)
                return self._fail(event, ProtocolError(ErrorCode.INTERNAL, "internal error"))
            finally:
                current_sid.reset(token)

        return run

    def _fail(self, event: str, exc: ProtocolError) -> dict[str, Any]:
        self.metrics.inc(f"errors_{exc.code}")
        return exc.ack()

    async def _unknown(self, event: str, sid: str, *data: Any) -> dict[str, Any]:
        self.metrics.inc("requests_unknown")
        name = event if len(event) <= MAX_ECHOED_NAME else event[:MAX_ECHOED_NAME] + "..."
        return self._fail(event, _unsupported(f"event {name!r}"))

    async def _connect(self, sid: str, environ: dict[str, Any], auth: object = None) -> None:
        try:
            login = await self.authenticate(auth)
        except ProtocolError as exc:
            raise self._refuse(exc.code, exc.message) from None
        except self.unavailable_errors as exc:
            raise self._refuse(
                ErrorCode.UNAVAILABLE, f"backing service unavailable: {exc}"
            ) from None
        except Exception:
            limited.error(
                "authenticate failed", "auth of type %s", type(auth).__name__, exc_info=True
            )
            raise self._refuse(ErrorCode.INTERNAL, "internal error") from None
        user = login.user
        if login.expires_at is not None:
            self._expire_at(sid, login.expires_at)
        self.sessions[sid] = user
        self.logins[sid] = login
        self.local.setdefault(user, set()).add(sid)
        self.metrics.inc("connects")
        try:
            await self.on_login(user, sid)
        except self.unavailable_errors as exc:
            # The session stays usable for what does not need routing; say so in the log.
            log.warning("login of %s: route not recorded: %r", user, exc)
            self.metrics.inc("route_errors")

    def _refuse(self, code: ErrorCode, message: str) -> Exception:
        self.metrics.inc("connects_refused")
        refused: Exception = socketio.exceptions.ConnectionRefusedError(
            message, p.refusal(code, message)
        )
        return refused

    def _expire_at(self, sid: str, when: float) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, when - time.time())
        timer = loop.call_later(delay, self._close_soon, sid, "login expired")
        self.expiry[sid] = (when, timer)

    def renew_login(self, sid: str, login: Login) -> None:
        """Replace the login of the open session `sid` (same user; a refreshed token):
        it now expires when `login` does, and no longer when the old one did."""
        if self.sessions.get(sid) != login.user:
            raise ValueError(f"session {sid} is not a session of {login.user}")
        entry = self.expiry.pop(sid, None)
        if entry is not None:
            entry[1].cancel()
        if login.expires_at is not None:
            self._expire_at(sid, login.expires_at)
        self.logins[sid] = login

    def _expired(self, sid: str) -> bool:
        entry = self.expiry.get(sid)
        return entry is not None and time.time() >= entry[0]

    def _close_soon(self, sid: str, why: str) -> None:
        task = asyncio.get_running_loop().create_task(self._close_session(sid, why))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_session(self, sid: str, why: str) -> None:
        """Tell the client why (`error`, code `unauthorized`), then disconnect it."""
        if sid not in self.sessions or sid in self._closing:
            return
        self._closing.add(sid)
        self.metrics.inc("sessions_expired")
        try:
            data = {"code": str(ErrorCode.UNAUTHORIZED), "message": why}
            await self.sio.emit(p.ERROR, data, to=sid)
            await self.sio.disconnect(sid)
        finally:
            self._closing.discard(sid)

    async def _disconnect(self, sid: str, *reason: Any) -> None:
        entry = self.expiry.pop(sid, None)
        if entry is not None:
            entry[1].cancel()
        self.logins.pop(sid, None)
        user = self.sessions.pop(sid, None)
        if user is None:
            return
        sids = self.local.get(user)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del self.local[user]
        self.metrics.inc("disconnects")
        try:
            await self.on_logout(user, sid)
        except self.unavailable_errors as exc:
            log.warning("logout of %s: route not cleared: %r", user, exc)

    async def _hello(self, user: str, data: Any) -> dict[str, Any]:
        p.parse_empty(data)
        return p.ok_ack(stage=self.stage, node=self.node, user=user, features=sorted(self.features))

    async def _send(self, user: str, data: Any) -> dict[str, Any]:
        req = p.parse_send(data, user)
        if req.group is not None and p.FEATURE_GROUPS not in self.features:
            raise _unsupported("groups")
        ack = await self.send(user, req)
        self.metrics.inc("messages_in")
        return ack

    async def _create_group(self, user: str, data: Any) -> dict[str, Any]:
        if p.FEATURE_GROUPS not in self.features:
            raise _unsupported("groups")
        return await self.create_group(user, p.parse_create_group(data, user))

    async def _latest(self, user: str, data: Any) -> dict[str, Any]:
        if p.FEATURE_HISTORY not in self.features:
            raise _unsupported("history")
        p.parse_empty(data)
        return await self.latest(user)

    async def _sync(self, user: str, data: Any) -> dict[str, Any]:
        if p.FEATURE_HISTORY not in self.features:
            raise _unsupported("history")
        return await self.sync(user, p.parse_sync(data))

    async def _healthz(self, request: web.Request) -> web.Response:
        body = {"stage": self.stage, "node": self.node, **self.health()}
        return web.json_response(body, status=200 if body.get("ok") else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(), content_type="text/plain")

    async def _on_startup(self, app: web.Application) -> None:
        await self.startup()

    async def _on_cleanup(self, app: web.Application) -> None:
        await self.shutdown()


class HistoryServer(StageServer):
    """A stage with stored history (v2 on): `latest` and `sync` read the Redis store the
    same way in every such stage; only members of a conversation may read it."""

    store: MessageStore

    async def latest(self, user: str) -> dict[str, Any]:
        return p.ok_ack(seqs=await self.store.latest(user))

    async def sync(self, user: str, req: p.SyncRequest) -> dict[str, Any]:
        if req.conv.kind == "dm":
            if user not in req.conv.members:
                raise ProtocolError(ErrorCode.FORBIDDEN, f"{user} is not in {req.conv.id}")
        elif not await self.store.is_member(req.conv.group_id, user):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{user} is not a member of {req.conv.id}")
        messages, latest, has_more = await self.store.sync(req.conv.id, req.after_seq, req.limit)
        return p.ok_ack(
            conv=req.conv.id,
            messages=[m.to_dict() for m in messages],
            latest_seq=latest,
            has_more=has_more,
        )


def _unsupported(what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.UNSUPPORTED, f"{what} not supported by this stage")


# ---------------------------------------------------------------- entry points


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--node", default=None, help="node name (default: <stage>-<port>)")
    parser.add_argument("--log-level", default=os.environ.get("IMLAB_LOG", "INFO"))
    return parser


# Seconds aiohttp waits on SIGTERM for open requests; every Socket.IO connection is
# one that never ends by itself, so the default (60 s) only delays the exit.
SHUTDOWN_TIMEOUT = 1.0


DEFAULT_LOOP = "uvloop"  # what IMLAB_LOOP is when unset (docs/RESULTS.md, "Hot paths")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's or asyncio's own loop, as `IMLAB_LOOP` says (uvloop|asyncio)."""
    choice = os.environ.get("IMLAB_LOOP", DEFAULT_LOOP)
    if choice == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if choice != "asyncio":
        raise ValueError(f"IMLAB_LOOP must be uvloop or asyncio, not {choice!r}")
    return asyncio.new_event_loop()


def run_app(app: web.Application, host: str, port: int, log_level: str) -> None:
    """Serve until SIGINT/SIGTERM; cleanup hooks close backing-service connections."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    web.run_app(
        app,
        host=host,
        port=port,
        print=None,
        handle_signals=True,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        loop=new_event_loop(),
    )


def serve(server: StageServer, host: str, port: int, log_level: str) -> None:
    log.info("%s node %s listening on %s:%d", server.stage, server.node, host, port)
    run_app(server.app, host, port, log_level)
