"""Where each user is connected, and how one process reaches another node's users
(stages v3 and v4).

Routes: `im:route:<user>` names the node the user logged in on last. Login
overwrites it; logout clears it only while it still names this node, so a login
elsewhere is never undone by a late logout here.

Relay: one Redis pub/sub channel per node, `im:node:<node>`. A sender publishes
`{"node", "users", "event", "data"}` and the node emits `event` to those users'
local connections; a batch goes to a node as one publish, `{"node", "batch":
[{"users", "event", "data"}, ...]}`, emitted in its order. Redis pub/sub is
at-most-once: a publish while the node is down, or while its subscription is
reconnecting, reaches nobody and is not retried; the client finds the gap (a later
seq, or `latest` on reconnect) and repairs it with `sync`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from imlab.metrics import Metrics

log = logging.getLogger("imlab.routing")

_CLEAR_IF_MINE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

Deliver = Callable[[list[str], str, dict[str, Any]], Awaitable[int]]


def route_key(user: str) -> str:
    return f"im:route:{user}"


def channel(node: str) -> str:
    return f"im:node:{node}"


class Routes:
    """`user -> node` in Redis."""

    def __init__(self, redis: Redis, node: str) -> None:
        self.redis = redis
        self.node = node
        self._clear = redis.register_script(_CLEAR_IF_MINE)

    async def login(self, user: str) -> None:
        await self.redis.set(route_key(user), self.node)

    async def login_many(self, users: Iterable[str]) -> None:
        """`login` for each of `users`, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.set(route_key(user), self.node)
            await pipe.execute()

    async def logout(self, user: str) -> bool:
        """Clear the route if it still names this node; True when it did."""
        return bool(await self._clear(keys=[route_key(user)], args=[self.node]))

    async def lookup(self, users: Iterable[str]) -> dict[str, str | None]:
        names = list(users)
        if not names:
            return {}
        values = await self.redis.mget([route_key(u) for u in names])
        return {u: _text(v) for u, v in zip(names, values, strict=True)}


def by_node(routes: Mapping[str, str | None]) -> dict[str, list[str]]:
    """Group users by the node they are connected to; users with no node are offline."""
    out: dict[str, list[str]] = {}
    for user, node in routes.items():
        if node:
            out.setdefault(node, []).append(user)
    return out


class Relay:
    """This node's pub/sub channel (inbound) and publishing to other nodes' channels."""

    def __init__(self, redis: Redis, node: str, deliver: Deliver, metrics: Metrics) -> None:
        self.redis = redis
        self.node = node
        self.deliver = deliver
        self.metrics = metrics
        self.subscribed = False
        self._task: asyncio.Task[None] | None = None

    def health(self) -> dict[str, Any]:
        return {"channel": channel(self.node), "subscribed": self.subscribed}

    def start(self) -> None:
        """Subscribe to this node's channel (a process that only publishes never starts)."""
        self.metrics.gauge("relay_subscribed", lambda: float(self.subscribed), "own channel live")
        self._task = asyncio.create_task(self._listen(), name=f"relay-{self.node}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def send(self, targets: Mapping[str, list[str]], event: str, data: dict[str, Any]) -> int:
        """Publish `event` for each node's users in one pipeline; returns how many
        nodes were listening (a node that was not is counted as a drop)."""
        if not targets:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for node, users in targets.items():
                envelope = {"node": node, "users": users, "event": event, "data": data}
                pipe.publish(channel(node), json.dumps(envelope))
            receivers = await pipe.execute()
        listening = sum(1 for r in receivers if r)
        self.metrics.inc("relay_published", len(receivers))
        if listening < len(receivers):
            self.metrics.inc("relay_no_listener", len(receivers) - listening)
        return listening

    async def send_many(
        self, items: Iterable[tuple[Mapping[str, list[str]], str, dict[str, Any]]]
    ) -> int:
        """Like `send` for each (targets, event, data), in order, with one publish per
        node for all of them; returns how many nodes were listening."""
        per_node: dict[str, list[dict[str, Any]]] = {}
        for targets, event, data in items:
            for node, users in targets.items():
                per_node.setdefault(node, []).append({"users": users, "event": event, "data": data})
        if not per_node:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for node, batch in per_node.items():
                pipe.publish(channel(node), json.dumps({"node": node, "batch": batch}))
            receivers = await pipe.execute()
        listening = sum(1 for r in receivers if r)
        self.metrics.inc("relay_published", len(receivers))
        if listening < len(receivers):
            self.metrics.inc("relay_no_listener", len(receivers) - listening)
        return listening

    async def _listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel(self.node))
                self.subscribed = True
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None:
                        await self._dispatch(msg.get("data"))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self.subscribed:
                    log.warning("relay channel %s lost: %r; resubscribing", self.node, exc)
                self.metrics.inc("relay_errors")
                await asyncio.sleep(0.5)
            finally:
                self.subscribed = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _dispatch(self, raw: object) -> None:
        try:
            envelope = json.loads(cast(str | bytes, raw))
            batch = envelope.get("batch", [envelope])
            if not isinstance(batch, list):
                raise ValueError("bad batch")
            items = [_item(e) for e in batch]
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            self.metrics.inc("relay_malformed")
            log.warning("relay %s: malformed envelope skipped: %r", self.node, exc)
            return
        self.metrics.inc("relay_received")
        for users, event, data in items:
            await self.deliver(users, event, data)


def _item(envelope: Any) -> tuple[list[str], str, dict[str, Any]]:
    users, event, data = envelope["users"], envelope["event"], envelope["data"]
    if not (
        isinstance(users, list)
        and all(isinstance(u, str) for u in users)
        and isinstance(event, str)
        and isinstance(data, dict)
    ):
        raise ValueError("bad envelope shape")
    return users, event, data


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
