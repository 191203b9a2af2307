"""Stage v5 gateway: v4's gateway with the seed's three open problems answered.

1. Authorization: short-lived tokens renewed by `refresh`, revocation (a revoked
   token's connection is closed within a second or two and it cannot reconnect),
   membership checked on every send, sync and group operation, group administration
   (the creator adds and removes members; anyone may leave), per-user rate limits
   and a quota on group creation.
2. State: PostgreSQL is the system of record (messages, seqs, groups, receipts,
   revocations); Redis, behind Sentinel, only routes (`user -> gateway`, the relay
   channels), and each gateway writes its users' routes again every few seconds, so a
   failover loses pushes for a moment and never data.
3. Receipts: `send` stores the message and its outbox row in one transaction and
   acks: the ack means durable and will be delivered. The outbox is published with
   the broker's receipt awaited; a row without one stays and is sent again.
   Recipients acknowledge with `receipt`; what they have not acknowledged is pushed
   again when they log in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.errors import KafkaError

from imlab import auth, redisconn
from imlab import protocol as p
from imlab.kafka import KafkaLink, KafkaOptions
from imlab.protocol import ErrorCode, ProtocolError
from imlab.ratelimit import KeyedLimiter
from imlab.routing import Relay, Routes, by_node
from imlab.server import HistoryServer, Login, StageServer, base_parser, current_sid, serve
from imlab.sqlstore import UNAVAILABLE_ERRORS, Revocation, SqlStore
from imlab.store import new_message
from versions.v5 import topics

log = logging.getLogger("imlab.v5.gateway")

TOKEN_LIFE = auth.SHORT_TTL  # what `refresh` hands out: 5 minutes
MAX_TOKEN_LIFE = auth.SHORT_MAX_LIFETIME  # the longest life this stage accepts: 15 minutes
REVOCATION_POLL = 0.5  # seconds between reads of the revocation table
ROUTE_REFRESH = 5.0  # seconds between rewrites of this gateway's routes
OUTBOX_SWEEP = 0.25  # seconds between sweeps of rows the fast path did not publish
OUTBOX_GRACE = 1.0  # a row this old is the sweeper's
OUTBOX_BATCH = 200  # rows per sweep
OUTBOX_RETIRE = 0.1  # seconds between deletes of the rows the fast path published
OUTBOX_CLAIM = 5.0  # seconds a sweeper holds its rows (longer than a publish's timeout);
# a sweeper that dies holding rows leaves them to the others after that
RECEIPT_FLUSH = 0.2  # seconds between writes of the receipts received
REDELIVER_LIMIT = 500  # unacknowledged messages pushed again at login, at most


class Gateway(HistoryServer):
    stage = "v5"
    features = frozenset(
        {
            p.FEATURE_DM,
            p.FEATURE_GROUPS,
            p.FEATURE_HISTORY,
            p.FEATURE_TOKEN_AUTH,
            p.FEATURE_AUTHZ,
            p.FEATURE_RECEIPTS,
        }
    )
    unavailable_errors = (*StageServer.unavailable_errors, KafkaError, *UNAVAILABLE_ERRORS)
    max_token_life = MAX_TOKEN_LIFE

    def __init__(
        self,
        node: str,
        redis_url: str,
        db_url: str,
        kafka: KafkaOptions,
        secret: str,
        *,
        send_rate: float = 50.0,
        send_burst: float = 200.0,
        group_rate: float = 1.0,
        group_burst: float = 10.0,
        group_quota: int = 100,
    ) -> None:
        super().__init__(node)
        self.secret = auth.check_secret(secret).decode()
        self.redis = redisconn.connect(redis_url, max_connections=256)
        self.store: SqlStore = SqlStore(db_url)  # type: ignore[assignment]
        self.routes = Routes(self.redis, node)
        self.link = KafkaLink(kafka, topics.TOPICS, self.metrics, client_id=node)
        self.relay = Relay(self.redis, node, self.push, self.metrics)
        self.send_limit = KeyedLimiter[str](send_rate, send_burst)
        self.group_limit = KeyedLimiter[str](group_rate, group_burst)
        self.group_quota = group_quota
        self.tokens: dict[str, auth.Identity] = {}  # sid -> the identity it logged in with
        self._verified: dict[str, auth.Identity] = {}  # token id -> identity, until login
        self._revoked_ids: set[str] = set()
        self._revoked_before: dict[str, float] = {}  # user -> tokens issued before are dead
        self._last_revocation = 0
        self._receipts: dict[tuple[str, str], int] = {}
        self._retired: list[int] = []  # outbox rows Kafka has, to delete in one statement
        self._loops: list[asyncio.Task[None]] = []
        self.metrics.gauge(
            "receipts_pending", lambda: len(self._receipts), "receipts not yet written"
        )

    # ------------------------------------------------------------ life cycle

    async def startup(self) -> None:
        await self.store.start()
        await self._read_revocations()
        await self.link.start()
        self.relay.start()
        for name, every, step in (
            ("revocations", REVOCATION_POLL, self._poll_revocations),
            ("routes", ROUTE_REFRESH, self._refresh_routes),
            ("outbox", OUTBOX_SWEEP, self._sweep_outbox),
            ("receipts", RECEIPT_FLUSH, self._flush_receipts),
            ("retire", OUTBOX_RETIRE, self._retire_published),
        ):
            self._loops.append(asyncio.create_task(self._every(name, every, step)))

    async def shutdown(self) -> None:
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(*self.unavailable_errors):
            await self._flush_receipts()
            await self._retire_published()
        await self.relay.stop()
        await self.link.stop()
        await self.store.close()
        await self.redis.aclose()

    async def _every(self, name: str, seconds: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await step()
            except self.unavailable_errors as exc:
                self.metrics.inc(f"loop_errors_{name}")
                log.debug("%s: %r", name, exc)
            except Exception:
                self.metrics.inc(f"loop_errors_{name}")
                log.exception("%s failed", name)

    def health(self) -> dict[str, Any]:
        return {
            "ok": True,
            "ready": self.link.epoch > 0,
            "kafka": self.link.health(),
            "relay": self.relay.health(),
        }

    def handlers(self) -> dict[str, Any]:
        return {
            **super().handlers(),
            p.REFRESH: self._refresh,
            p.RECEIPT: self._receipt,
            p.GROUP_ADD: self._group_add,
            p.GROUP_REMOVE: self._group_remove,
            p.GROUP_LEAVE: self._group_leave,
        }

    # ------------------------------------------------------------ identity

    async def authenticate(self, auth_data: object) -> Login:
        token = auth_data.get("token") if isinstance(auth_data, dict) else None
        if token is None:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED, 'missing token: connect with auth {"token": "<signed>"}'
            )
        try:
            ident = auth.verify_token(token, self.secret, max_lifetime=self.max_token_life)
        except auth.AuthError as exc:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, exc.reason) from None
        # Read the table itself, not only the last poll: a token revoked a moment ago
        # must not get back in.
        await self._read_revocations()
        if self._is_revoked(ident):
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "token revoked")
        self._verified[ident.token_id] = ident
        return Login(ident.user, ident.expires_at, token_id=ident.token_id)

    def _is_revoked(self, ident: auth.Identity) -> bool:
        before = self._revoked_before.get(ident.user)
        return ident.token_id in self._revoked_ids or (
            before is not None and ident.issued_at < before
        )

    async def on_login(self, user: str, sid: str) -> None:
        login = self.logins.get(sid)
        ident = self._verified.pop(login.token_id, None) if login and login.token_id else None
        if ident is not None:
            self.tokens[sid] = ident
        self._spawn(self._redeliver(user, sid))
        await self.routes.login(user)

    async def on_logout(self, user: str, sid: str) -> None:
        ident = self.tokens.pop(sid, None)
        if ident is not None:
            self._verified.pop(ident.token_id, None)
        if not self.online(user):
            await self.routes.logout(user)

    async def _refresh(self, user: str, data: Any) -> dict[str, Any]:
        p.parse_empty(data)
        sid = current_sid.get()
        old = self.tokens.get(sid) if sid is not None else None
        if sid is None or old is None or self._is_revoked(old):
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "token revoked")
        try:
            new = auth.refresh_token(old, self.secret, TOKEN_LIFE)
        except auth.AuthError as exc:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, exc.reason) from None
        self.tokens[sid] = new.identity
        self.renew_login(sid, Login(user, new.identity.expires_at, token_id=new.identity.token_id))
        self.metrics.inc("tokens_refreshed")
        return p.ok_ack(token=new.token, expires_at=new.identity.expires_at)

    async def _read_revocations(self) -> None:
        for r in await self.store.revocations_after(self._last_revocation):
            self._apply_revocation(r)

    def _apply_revocation(self, r: Revocation) -> None:
        self._last_revocation = max(self._last_revocation, r.id)
        if r.token_id is not None:
            self._revoked_ids.add(r.token_id)
        if r.user is not None:
            before = r.issued_before if r.issued_before is not None else float("inf")
            self._revoked_before[r.user] = max(self._revoked_before.get(r.user, 0.0), before)

    async def _poll_revocations(self) -> None:
        await self._read_revocations()
        for sid, ident in list(self.tokens.items()):
            if self._is_revoked(ident):
                self.metrics.inc("sessions_revoked")
                self._close_soon(sid, "token revoked")

    async def _refresh_routes(self) -> None:
        # A Redis failover can lose the last writes to the old master: write them again.
        await self.routes.login_many(list(self.local))

    # ------------------------------------------------------------ sending

    def _limit(self, limiter: KeyedLimiter[str], user: str, what: str) -> None:
        wait = limiter.take(user, time.monotonic())
        if wait > 0:
            self.metrics.inc(f"rate_limited_{what}")
            raise p.RateLimited(wait, f"too many {what}: retry in {wait:.2f} s")

    async def _active_member(self, user: str, gid: str) -> None:
        m = await self.store.membership(gid, user)
        if m is None or not m.active:
            if await self.store.group_creator(gid) is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"no group {gid}")
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{user} is not a member of {gid}")

    async def send(self, user: str, req: p.SendRequest) -> dict[str, Any]:
        self._limit(self.send_limit, user, "sends")
        if req.group is not None:
            await self._active_member(user, req.group)
        conv = req.conv_for(user)
        msg = new_message(conv, user, req.client_msg_id, req.body, req.sent_at)
        dm_members = (user, req.to) if req.to is not None else ()
        topic = topics.topic_for(conv)
        stored, _, outbox_id = await self.store.append(
            msg, index_for=dm_members, outbox=(topic, conv)
        )
        if outbox_id is not None:
            self._spawn(self._publish(outbox_id, topic, conv, stored))
        return p.ok_ack(
            conv=stored.conv, msg_id=stored.msg_id, seq=stored.seq, server_ts=stored.server_ts
        )

    async def _publish(self, outbox_id: int, topic: str, key: str, msg: p.Message) -> None:
        """The fast path: publish now, and retire the outbox row once Kafka has it."""
        try:
            meta = await self.link.publish(topic, key, json.dumps(msg.to_dict()).encode())
            if meta is None:  # no receipt: the row stays for the sweeper
                self.metrics.inc("outbox_unreceipted")
                return
            self._retired.append(outbox_id)
        except self.unavailable_errors as exc:
            self.metrics.inc("outbox_deferred")
            log.debug("publish of %s deferred to the sweeper: %r", msg.msg_id, exc)

    async def _retire_published(self) -> None:
        if self._retired:
            ids, self._retired = self._retired, []
            try:
                await self.store.outbox_done(ids)
            except BaseException:
                self._retired += ids  # next time; until then the sweeper may send them again
                raise

    async def _sweep_outbox(self) -> None:
        rows = await self.store.outbox_take(OUTBOX_GRACE, OUTBOX_BATCH, OUTBOX_CLAIM)
        if not rows:
            return
        # Sent together: the producer keeps their order per partition and batches them.
        results = await asyncio.gather(
            *[self.link.publish(r.topic, r.key, r.payload) for r in rows], return_exceptions=True
        )
        done, failed = [], []
        for row, result in zip(rows, results, strict=True):
            if result is None or isinstance(result, BaseException):
                failed.append(row.id)  # stays, for the next sweep
            else:
                done.append(row.id)
        self.metrics.inc("outbox_unreceipted", len(failed))
        await self.store.outbox_done(done)
        await self.store.outbox_release(failed)
        self.metrics.inc("outbox_swept", len(done))

    # ------------------------------------------------------------ receipts

    async def _receipt(self, user: str, data: Any) -> dict[str, Any]:
        req = p.parse_receipt(data)
        if req.conv.kind == "dm" and user not in req.conv.members:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{user} is not in {req.conv.id}")
        key = (user, req.conv.id)
        self._receipts[key] = max(self._receipts.get(key, 0), req.seq)
        return p.ok_ack()

    async def _flush_receipts(self) -> None:
        if not self._receipts:
            return
        batch, self._receipts = self._receipts, {}
        try:
            await self.store.record_receipts((u, c, s) for (u, c), s in batch.items())
        except BaseException:
            for key, seq in batch.items():  # keep them for the next flush
                self._receipts[key] = max(self._receipts.get(key, 0), seq)
            raise

    async def _redeliver(self, user: str, sid: str) -> None:
        """Push again what `user` has not acknowledged (the client keeps each once)."""
        try:
            pending = await self.store.unacknowledged(user, REDELIVER_LIMIT)
        except self.unavailable_errors as exc:
            log.debug("redelivery to %s skipped: %r", user, exc)
            return
        if pending and sid in self.sessions:
            for msg in pending:
                await self.sio.emit(p.MESSAGE, msg.to_dict(), to=sid)
            self.metrics.inc("redelivered", len(pending))

    # ------------------------------------------------------------ history

    async def sync(self, user: str, req: p.SyncRequest) -> dict[str, Any]:
        upto = None
        after = req.after_seq
        floor = 0
        if req.conv.kind == "dm":
            if user not in req.conv.members:
                raise ProtocolError(ErrorCode.FORBIDDEN, f"{user} is not in {req.conv.id}")
        else:
            m = await self.store.membership(req.conv.group_id, user)
            if m is None:
                if await self.store.group_creator(req.conv.group_id) is None:
                    raise ProtocolError(ErrorCode.NOT_FOUND, f"no group {req.conv.group_id}")
                raise ProtocolError(ErrorCode.FORBIDDEN, f"{user} is not a member of {req.conv.id}")
            upto = m.left_seq  # a removed member reads nothing sent after the removal
            floor = m.joined_seq  # and someone added later nothing sent before
            after = max(after, floor)
        messages, latest, has_more = await self.store.sync(req.conv.id, after, req.limit, upto=upto)
        return p.ok_ack(
            conv=req.conv.id,
            messages=[msg.to_dict() for msg in messages],
            latest_seq=latest,
            has_more=has_more,
            visible_from=floor,
        )

    # ------------------------------------------------------------ groups

    async def create_group(self, user: str, req: p.CreateGroupRequest) -> dict[str, Any]:
        self._limit(self.group_limit, user, "group creations")
        if await self.store.groups_created_by(user) >= self.group_quota:
            self.metrics.inc("group_quota_refused")
            raise ProtocolError(
                ErrorCode.RATE_LIMITED, f"group quota reached ({self.group_quota} per user)"
            )
        gid = await self.store.create_group(user, req.members, req.name)
        await self._notify(req.members, p.GROUP_CREATED, req.notice(gid, user))
        return req.ack(gid)

    async def _admin(self, user: str, gid: str) -> None:
        creator = await self.store.group_creator(gid)
        if creator is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no group {gid}")
        if creator != user:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"only {gid}'s creator changes its members")

    async def _group_add(self, user: str, data: Any) -> dict[str, Any]:
        req = p.parse_group_change(data)
        await self._admin(user, req.group)
        added, joined = await self.store.add_members(req.group, req.members)
        members = await self.store.group_members(req.group) or []
        if added:
            # `from_seq`: the new members see what comes after it, nothing before.
            notice: dict[str, Any] = {"group": req.group, "added": added, "removed": []}
            notice.update(by=user, from_seq=joined)
            await self._notify(members, p.GROUP_CHANGED, notice)
        return p.ok_ack(group=req.group, members=members)

    async def _group_remove(self, user: str, data: Any) -> dict[str, Any]:
        req = p.parse_group_change(data)
        await self._admin(user, req.group)
        before = await self.store.group_members(req.group) or []
        removed = await self.store.remove_members(req.group, req.members)
        members = await self.store.group_members(req.group) or []
        if removed:
            notice = {"group": req.group, "added": [], "removed": removed, "by": user}
            await self._notify(before, p.GROUP_CHANGED, notice)
        return p.ok_ack(group=req.group, members=members)

    async def _group_leave(self, user: str, data: Any) -> dict[str, Any]:
        gid = p.parse_group_leave(data)
        await self._active_member(user, gid)
        await self.store.remove_members(gid, [user])
        members = await self.store.group_members(gid) or []
        notice = {"group": gid, "added": [], "removed": [user], "by": user}
        await self._notify([*members, user], p.GROUP_CHANGED, notice)
        return p.ok_ack(group=gid)

    async def _notify(
        self, users: list[str] | tuple[str, ...], event: str, data: dict[str, Any]
    ) -> None:
        """Push a group notice to `users` wherever they are; a Redis failure costs the
        notice (the state is in the database), never the request."""
        try:
            targets = by_node(await self.routes.lookup(list(users)))
        except self.unavailable_errors as exc:
            log.debug("%s notice not routed: %r", event, exc)
            await self.push(users, event, data)
            return
        mine = targets.pop(self.node, None)
        if mine:
            await self.push(mine, event, data)
        with contextlib.suppress(*self.unavailable_errors):
            await self.relay.send(targets, event, data)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser("imlab stage v5 gateway: identity, authorization, durable sends")
    parser.add_argument("--redis-url", required=True, help="redis:// or redis+sentinel://")
    parser.add_argument("--db-url", required=True, help="postgresql://user@host:port/db")
    KafkaOptions.add_arguments(parser)
    parser.add_argument("--secret", default=None, help=f"token secret (default ${auth.SECRET_ENV})")
    parser.add_argument("--send-rate", type=float, default=50.0, help="sends/s per user")
    parser.add_argument("--send-burst", type=float, default=200.0, help="sends a user may burst")
    parser.add_argument("--group-quota", type=int, default=100, help="groups one user may create")
    args = parser.parse_args(argv)
    try:
        secret = auth.secret_from_env(args.secret)
    except ValueError as exc:
        sys.exit(f"gateway: {exc} (v5 has no default secret)")
    gateway = Gateway(
        args.node or f"gateway-{args.port}",
        args.redis_url,
        args.db_url,
        KafkaOptions.from_args(args),
        secret,
        send_rate=args.send_rate,
        send_burst=args.send_burst,
        group_quota=args.group_quota,
    )
    serve(gateway, args.host, args.port, args.log_level)


if __name__ == "__main__":
    main()
