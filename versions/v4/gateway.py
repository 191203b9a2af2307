"""Stage v4 gateway (seed section 五): holds client connections and nothing of the
message pipeline.

It checks identity (a signed token, `imlab.auth`), records `user -> gateway` in
Redis at login, manages groups, stores a message (the seq is assigned here) and
publishes it to Kafka (seed "when a player speaks", step 2). Delivery is the
workers' job: they hand `{gateway, users, message}` to this gateway's Redis
pub/sub channel, and the gateway pushes to whichever of those users are
connected here (step 4).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from aiokafka.errors import KafkaError
from redis.asyncio import Redis

from imlab import auth
from imlab import protocol as p
from imlab.kafka import KafkaLink, KafkaOptions
from imlab.protocol import ErrorCode, ProtocolError
from imlab.routing import Relay, Routes, by_node
from imlab.server import HistoryServer, Login, StageServer, base_parser, serve
from imlab.store import MessageStore, new_message
from versions.v4 import topics


class Gateway(HistoryServer):
    stage = "v4"
    features = frozenset({p.FEATURE_DM, p.FEATURE_GROUPS, p.FEATURE_HISTORY, p.FEATURE_TOKEN_AUTH})
    unavailable_errors = (*StageServer.unavailable_errors, KafkaError)
    # The longest token life this stage accepts; a connection closes when its token expires.
    max_token_life = auth.MAX_LIFETIME

    def __init__(
        self,
        node: str,
        redis_url: str,
        kafka: KafkaOptions,
        secret: str,
        *,
        group_topics: str = "per-group",
    ) -> None:
        super().__init__(node)
        self.secret = auth.check_secret(secret).decode()
        self.redis: Redis = Redis.from_url(
            redis_url, max_connections=256, socket_timeout=5, socket_connect_timeout=2
        )
        self.store = MessageStore(self.redis)
        self.routes = Routes(self.redis, node)
        self.scheme = group_topics
        self.link = KafkaLink(kafka, topics.base_topics(group_topics), self.metrics, client_id=node)
        self.relay = Relay(self.redis, node, self.push, self.metrics)

    async def startup(self) -> None:
        await self.link.start()
        self.relay.start()

    async def shutdown(self) -> None:
        await self.relay.stop()
        await self.link.stop()
        await self.redis.aclose()

    def health(self) -> dict[str, Any]:
        return {
            "ok": True,
            "ready": self.link.epoch > 0,
            "kafka": self.link.health(),
            "relay": self.relay.health(),
        }

    # ------------------------------------------------------------ identity and routing

    async def authenticate(self, auth_data: object) -> Login:
        """The token's subject, until the token expires; any `user` field next to it is ignored."""
        token = auth_data.get("token") if isinstance(auth_data, dict) else None
        if token is None:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED, 'missing token: connect with auth {"token": "<signed>"}'
            )
        try:
            ident = auth.verify_token(token, self.secret, max_lifetime=self.max_token_life)
        except auth.AuthError as exc:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, exc.reason) from None
        return Login(ident.user, ident.expires_at)

    async def on_login(self, user: str, sid: str) -> None:
        await self.routes.login(user)

    async def on_logout(self, user: str, sid: str) -> None:
        if not self.online(user):
            await self.routes.logout(user)

    # ------------------------------------------------------------ requests

    async def check_member(self, user: str, gid: str) -> None:
        if not await self.store.is_member(gid, user):
            if await self.store.group_members(gid) is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"no group {gid}")
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{user} is not a member of {gid}")

    async def send(self, user: str, req: p.SendRequest) -> dict[str, Any]:
        # `user` is the token's subject; a `sender` or `user` in the payload is never read.
        if req.group is not None:
            await self.check_member(user, req.group)
        msg = new_message(req.conv_for(user), user, req.client_msg_id, req.body, req.sent_at)
        dm_members = (user, req.to) if req.to is not None else ()
        stored, duplicate = await self.store.append(msg, index_for=dm_members)
        if not duplicate:
            # Stored first, then published: if this raises, the sender gets `unavailable`
            # for a message that is stored with a seq and never pushed (seed problem 3).
            topic, partitions = topics.topic_for(stored.conv, self.scheme)
            await self.link.ensure_topic(topic, partitions)
            await self.link.publish(topic, stored.conv, json.dumps(stored.to_dict()).encode())
        return p.ok_ack(
            conv=stored.conv, msg_id=stored.msg_id, seq=stored.seq, server_ts=stored.server_ts
        )

    async def create_group(self, user: str, req: p.CreateGroupRequest) -> dict[str, Any]:
        # Seed step 5, "tell the message service to subscribe": the topic exists first
        # (a dead broker leaves no group behind), and the worker that owns it picks it
        # up on its next topic listing.
        gid = await self.store.new_group_id()
        topic, partitions = topics.topic_for(p.group_conv(gid), self.scheme)
        await self.link.ensure_topic(topic, partitions)
        await self.store.create_group(user, req.members, req.name, gid)
        notice = req.notice(gid, user)
        targets = by_node(await self.routes.lookup(req.members))
        mine = targets.pop(self.node, None)
        if mine:
            await self.push(mine, p.GROUP_CREATED, notice)
        await self.relay.send(targets, p.GROUP_CREATED, notice)
        return req.ack(gid)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser("imlab stage v4 gateway: connections, identity, store, publish")
    parser.add_argument("--redis-url", required=True, help="redis://host:port/db")
    KafkaOptions.add_arguments(parser)
    parser.add_argument("--secret", default=None, help=f"token secret (default ${auth.SECRET_ENV})")
    parser.add_argument("--group-topics", choices=topics.CHOICES, default="per-group")
    args = parser.parse_args(argv)
    try:
        secret = auth.secret_from_env(args.secret)
    except ValueError as exc:
        sys.exit(f"gateway: {exc}")
    gateway = Gateway(
        args.node or f"gateway-{args.port}",
        args.redis_url,
        KafkaOptions.from_args(args),
        secret,
        group_topics=args.group_topics,
    )
    serve(gateway, args.host, args.port, args.log_level)


if __name__ == "__main__":
    main()
