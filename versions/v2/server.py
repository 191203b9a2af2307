"""Stage v2 (seed section 三): one process plus Redis.

Groups are created and their members told with `group_created`. Every message,
1:1 or group, is stored first with the next per-conversation seq (atomic, and
idempotent on `client_msg_id`), then pushed to every member connected here. A
client that was away asks `latest` and `sync`s what it missed.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from imlab import protocol as p
from imlab.protocol import ErrorCode, ProtocolError
from imlab.server import HistoryServer, base_parser, serve
from imlab.store import MessageStore, new_message


class Server(HistoryServer):
    stage = "v2"
    features = frozenset({p.FEATURE_DM, p.FEATURE_GROUPS, p.FEATURE_HISTORY})

    def __init__(self, node: str, redis_url: str) -> None:
        super().__init__(node)
        self.redis: Redis = Redis.from_url(
            redis_url, max_connections=256, socket_timeout=5, socket_connect_timeout=2
        )
        self.store = MessageStore(self.redis)

    async def shutdown(self) -> None:
        await self.redis.aclose()

    async def members_of(self, user: str, req: p.SendRequest) -> list[str]:
        if req.to is not None:
            return sorted({user, req.to})
        assert req.group is not None
        members = await self.store.group_members(req.group)
        if members is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no group {req.group}")
        if user not in members:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{user} is not a member of {req.group}")
        return members

    async def send(self, user: str, req: p.SendRequest) -> dict[str, Any]:
        members = await self.members_of(user, req)
        msg = new_message(req.conv_for(user), user, req.client_msg_id, req.body, req.sent_at)
        stored, duplicate = await self.store.append(msg, index_for=members if req.to else ())
        if not duplicate:
            await self.push(members, p.MESSAGE, stored.to_dict())
        return p.ok_ack(
            conv=stored.conv, msg_id=stored.msg_id, seq=stored.seq, server_ts=stored.server_ts
        )

    async def create_group(self, user: str, req: p.CreateGroupRequest) -> dict[str, Any]:
        gid = await self.store.create_group(user, req.members, req.name)
        notice = req.notice(gid, user)
        await self.push(req.members, p.GROUP_CREATED, notice)
        return req.ack(gid)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser("imlab stage v2 server: groups and stored history in Redis")
    parser.add_argument("--redis-url", required=True, help="redis://host:port/db")
    args = parser.parse_args(argv)
    server = Server(args.node or f"v2-{args.port}", args.redis_url)
    serve(server, args.host, args.port, args.log_level)


if __name__ == "__main__":
    main()
