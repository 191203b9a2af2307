"""The message history and group records in Redis: per-conversation sequence
numbers assigned atomically, idempotent appends keyed by the client's message id,
`latest` and paged `sync` reads (seed section 三, used by every stage from v2 on).

Key layout (all under the `im:` prefix):
  im:seq:<conv>        the conversation's latest seq (INCR)
  im:msgs:<conv>       ZSET, score seq, member "<seq>|<message json without seq>"
  im:dedup:<conv>      HASH "<sender>|<client_msg_id>" -> seq
  im:convs:<user>      SET of the user's conversations
  im:group:<gid>       HASH name, creator, created_at
  im:members:<gid>     SET of member ids
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any, cast

from redis.asyncio import Redis

from imlab.protocol import Message, group_conv

_APPEND = """
local existing = redis.call('HGET', KEYS[3], ARGV[1])
if existing then
  local found = redis.call('ZRANGEBYSCORE', KEYS[2], existing, existing)
  return {1, tonumber(existing), found[1] or ''}
end
local seq = redis.call('INCR', KEYS[1])
local member = seq .. '|' .. ARGV[2]
redis.call('ZADD', KEYS[2], seq, member)
redis.call('HSET', KEYS[3], ARGV[1], seq)
for i = 4, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[3])
end
return {0, seq, member}
"""

# The same append for several messages in one EVAL, in order (so seqs follow the batch's
# order within each conversation, and a repeat inside the batch finds the first's dedup
# entry). Per message, ARGV holds: the number of its index keys, the dedup field, the
# json, the conversation; KEYS: seq, msgs, dedup, then its index keys.
_APPEND_MANY = """
local out = {}
local k = 1
local a = 1
while a <= #ARGV do
  local nidx = tonumber(ARGV[a])
  local field, payload, conv = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local kseq, kmsgs, kdedup = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local existing = redis.call('HGET', kdedup, field)
  if existing then
    local found = redis.call('ZRANGEBYSCORE', kmsgs, existing, existing)
    out[#out + 1] = {1, tonumber(existing), found[1] or ''}
  else
    local seq = redis.call('INCR', kseq)
    local member = seq .. '|' .. payload
    redis.call('ZADD', kmsgs, seq, member)
    redis.call('HSET', kdedup, field, seq)
    for i = 1, nidx do
      redis.call('SADD', KEYS[k + 2 + i], conv)
    end
    out[#out + 1] = {0, seq, member}
  end
  k = k + 3 + nidx
  a = a + 4
end
return out
"""


def message_id(conv: str, sender: str, client_msg_id: str) -> str:
    """Deterministic, so a retried send and its stored original share one id."""
    digest = hashlib.blake2b(f"{conv}|{sender}|{client_msg_id}".encode(), digest_size=10)
    return digest.hexdigest()


def new_message(conv: str, sender: str, client_msg_id: str, body: str, sent_at: float) -> Message:
    """A message as it enters the system, before a seq is assigned."""
    return Message(
        conv=conv,
        msg_id=message_id(conv, sender, client_msg_id),
        seq=None,
        sender=sender,
        body=body,
        sent_at=sent_at,
        server_ts=time.time(),
        client_msg_id=client_msg_id,
    )


def _decode_member(member: bytes | str) -> Message:
    text = member.decode() if isinstance(member, bytes) else member
    seq, _, payload = text.partition("|")
    data = json.loads(payload)
    data["seq"] = int(seq)
    return Message.from_dict(data)


class MessageStore:
    """Async access to history and groups; every method is one or two round trips."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._append = redis.register_script(_APPEND)
        self._append_many = redis.register_script(_APPEND_MANY)

    async def append(self, msg: Message, index_for: Iterable[str] = ()) -> tuple[Message, bool]:
        """Store `msg` with the next seq of its conversation.

        Returns the stored message and whether it was a duplicate (same sender and
        client_msg_id already stored: the original is returned, nothing is written).
        `index_for` lists users whose conversation set should gain this conversation.
        """
        conv = msg.conv
        data = msg.to_dict()
        del data["seq"]
        keys = [f"im:seq:{conv}", f"im:msgs:{conv}", f"im:dedup:{conv}"]
        keys += [f"im:convs:{u}" for u in index_for]
        dedup_field = f"{msg.sender}|{msg.client_msg_id}"
        res = cast(
            list[Any],
            await self._append(keys=keys, args=[dedup_field, json.dumps(data), conv]),
        )
        duplicate, member = bool(res[0]), res[2]
        if not member:  # dedup entry without a stored message: cannot happen via append
            raise RuntimeError(f"history of {conv} is missing seq {res[1]}")
        return _decode_member(member), duplicate

    async def append_many(
        self, batch: Sequence[tuple[Message, Iterable[str]]]
    ) -> list[tuple[Message, bool]]:
        """`append` for each (message, index_for) of `batch`, in order, in one round trip."""
        if not batch:
            return []
        keys: list[str] = []
        args: list[str | int] = []
        for msg, index_for in batch:
            conv = msg.conv
            data = msg.to_dict()
            del data["seq"]
            index = [f"im:convs:{u}" for u in index_for]
            keys += [f"im:seq:{conv}", f"im:msgs:{conv}", f"im:dedup:{conv}", *index]
            args += [len(index), f"{msg.sender}|{msg.client_msg_id}", json.dumps(data), conv]
        res = cast(list[list[Any]], await self._append_many(keys=keys, args=args))
        out: list[tuple[Message, bool]] = []
        for (msg, _), (duplicate, seq, member) in zip(batch, res, strict=True):
            if not member:
                raise RuntimeError(f"history of {msg.conv} is missing seq {seq}")
            out.append((_decode_member(member), bool(duplicate)))
        return out

    async def latest_seq(self, conv: str) -> int:
        value = await self.redis.get(f"im:seq:{conv}")
        return int(value or 0)

    async def latest(self, user: str) -> dict[str, int]:
        convs = sorted(
            c.decode() if isinstance(c, bytes) else str(c)
            for c in await self.redis.smembers(f"im:convs:{user}")
        )
        if not convs:
            return {}
        values = await self.redis.mget([f"im:seq:{c}" for c in convs])
        return {c: int(v or 0) for c, v in zip(convs, values, strict=True)}

    async def sync(self, conv: str, after_seq: int, limit: int) -> tuple[list[Message], int, bool]:
        """Messages with seq > after_seq, at most `limit`; also the latest seq and has_more."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(f"im:msgs:{conv}", f"({after_seq}", "+inf", start=0, num=limit + 1)
            pipe.get(f"im:seq:{conv}")
            members, latest = await pipe.execute()
        messages = [_decode_member(m) for m in members[:limit]]
        return messages, int(latest or 0), len(members) > limit

    # ------------------------------------------------------------ groups

    async def new_group_id(self) -> str:
        return f"g{await self.redis.incr('im:group_counter')}"

    async def create_group(
        self, creator: str, members: Sequence[str], name: str, gid: str | None = None
    ) -> str:
        """Store a group (under `gid`, else a new id) with its members; returns the id."""
        gid = gid or await self.new_group_id()
        conv = group_conv(gid)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                f"im:group:{gid}",
                mapping={"name": name, "creator": creator, "created_at": time.time()},
            )
            pipe.sadd(f"im:members:{gid}", *members)
            for m in members:
                pipe.sadd(f"im:convs:{m}", conv)
            await pipe.execute()
        return gid

    async def group_members(self, gid: str) -> list[str] | None:
        """The members, or None when the group does not exist."""
        raw = await self.redis.smembers(f"im:members:{gid}")
        if not raw:
            return None
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in raw)

    async def is_member(self, gid: str, user: str) -> bool:
        return bool(await self.redis.sismember(f"im:members:{gid}", user))
