"""Partition ownership without Kafka's group protocol: who is alive among a group's
consumers (a Redis sorted set with expiries) and which member owns a partition
(rendezvous hashing over the live members). `imlab.consumers.RedisOwnedConsumer`
uses it; Kafka's own consumer groups (`GroupConsumer`) need none of it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from aiokafka.structs import TopicPartition
from redis.asyncio import Redis

MEMBER_TTL = 3.0  # a member that stopped refreshing drops out after this long


class Membership:
    """Who is alive among the consumers of one group: a Redis sorted set of member ->
    expiry (Redis clock). Each live member refreshes its entry every tick; a member
    that stops refreshing drops out after `ttl`, one that stops cleanly at once."""

    _BEAT = """
    local t = redis.call('TIME')
    local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    return redis.call('ZRANGE', KEYS[1], 0, -1)
    """

    def __init__(self, redis: Redis, group: str, member: str, ttl: float = MEMBER_TTL) -> None:
        self.redis = redis
        self.group = group
        self.key = f"im:consumers:{group}"
        self.member = member
        self.ttl = ttl
        self._beat = redis.register_script(self._BEAT)

    async def beat(self) -> list[str]:
        """Refresh this member; the live members, sorted."""
        raw = await self._beat(keys=[self.key], args=[self.member, self.ttl])
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in raw)

    async def leave(self) -> None:
        await self.redis.zrem(self.key, self.member)


def owner(tp: TopicPartition, members: Sequence[str]) -> str:
    """The member that owns a partition: rendezvous hashing, so a member joining or
    leaving moves only the partitions it takes or gives up.

    The hash must mix well: with CRC32 (linear) the comparison between two members
    came out the same for every topic, and one member owned every group."""

    def weight(member: str) -> bytes:
        key = f"{member}|{tp.topic}|{tp.partition}".encode()
        return hashlib.blake2b(key, digest_size=8).digest()

    return max(members, key=weight)
