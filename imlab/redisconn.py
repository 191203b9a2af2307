"""One way for a stage process to reach its Redis, whatever the URL names.

- `redis://HOST:PORT/DB` is one server (`Redis.from_url`).
- `redis+sentinel://H1:P1,H2:P2,H3:P3/NAME[/DB]` is a Sentinel set
  (`imlab.services.RedisSentinelSet`): the client asks the sentinels where the master
  NAME is each time it opens a connection, so a process that holds it keeps working
  after a failover. While the set fails over, commands raise
  `redis.exceptions.ConnectionError` (connection refused, or its subclass
  `MasterNotFoundError` once the sentinels see the master down): about 2.3 s after a
  SIGKILL of the master with down-after-milliseconds 1000 (docs/SERVICES.md). A
  connection to a demoted master answers READONLY, which the client turns into a
  `ConnectionError` and a new look-up. Callers retry (or answer `unavailable`).

`connect(url, **kw)` passes `kw` (max_connections, socket_timeout, decode_responses
...) to the connections; the socket timeouts also apply to the sentinels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

__all__ = ["SENTINEL_SCHEME", "SentinelURL", "connect", "parse_sentinel_url"]

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SOCKET_TIMEOUT = 5.0
DEFAULT_CONNECT_TIMEOUT = 2.0


@dataclass(frozen=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0


def parse_sentinel_url(url: str) -> SentinelURL:
    """`redis+sentinel://H:P[,H:P...]/NAME[/DB]` -> its parts; ValueError if malformed."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"{url!r} is not a {SENTINEL_SCHEME}:// URL")
    hosts: list[tuple[str, int]] = []
    for item in parts.netloc.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{url!r}: {item!r} is not HOST:PORT")
        hosts.append((host, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"{url!r}: the path must be /MASTER_NAME or /MASTER_NAME/DB")
    return SentinelURL(tuple(hosts), path[0], int(path[1]) if len(path) == 2 else 0)


class _SentinelRedis(Redis):
    """A master client that also closes its clients of the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        pool = self.connection_pool
        await super().aclose(close_connection_pool)
        if isinstance(pool, SentinelConnectionPool):
            for sentinel in pool.sentinel_manager.sentinels:
                await sentinel.aclose()


def connect(url: str, **kw: Any) -> Redis:
    """A client of the Redis `url` names: one server or a Sentinel set's master."""
    if not url.startswith(f"{SENTINEL_SCHEME}://"):
        return Redis.from_url(url, **kw)
    target = parse_sentinel_url(url)
    kw.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
    kw.setdefault("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    kw.setdefault("db", target.db)
    sentinel_kw = {
        "socket_timeout": min(float(kw["socket_timeout"]), 1.0),
        "socket_connect_timeout": min(float(kw["socket_connect_timeout"]), 1.0),
    }
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kw)  # type: ignore[no-untyped-call]
    client: Redis = sentinel.master_for(target.master, redis_class=_SentinelRedis, **kw)
    return client
