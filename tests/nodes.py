"""Helpers for the multi-node tests of v3 and v4: pin users to nodes, read a
process's /healthz and /metrics, poll with a deadline."""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

from imlab.client import AsyncChatClient, ordered_endpoints

from .conftest import StageUnderTest


def user_on(sut: StageUnderTest, index: int) -> str:
    """A fresh user id whose home endpoint (hash of the id) is node `index`."""
    urls = sut.cluster.endpoints
    while True:
        [user] = sut.users(1)
        if ordered_endpoints(urls, user)[0] == urls[index]:
            return user


async def pinned(sut: StageUnderTest, nodes: list[int], **kw: object) -> list[AsyncChatClient]:
    """Connected clients, the i-th on node `nodes[i]` (server-i in v3, gateway-i in v4)."""
    clients = []
    for index in nodes:
        c = sut.client(user_on(sut, index), **kw)
        await c.connect()
        assert c.url == sut.cluster.endpoints[index], (c.node, index)
        clients.append(c)
    return clients


async def group_of(clients: list[AsyncChatClient]) -> str:
    """A group of all `clients`, created by the first; returns once all were told."""
    ack = await clients[0].create_group([c.user for c in clients[1:]], "test group")
    assert ack["ok"], ack
    gid: str = ack["group_id"]
    for c in clients:
        await c.wait_for(lambda c=c: gid in c.groups, 10, "group_created")  # type: ignore[misc]
    return gid


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


async def health(base_url: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(await asyncio.to_thread(_get, f"{base_url}/healthz"))
    return body


_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


async def metric(base_url: str, name: str) -> float:
    """The sum over all label sets of metric `name` (full Prometheus name)."""
    text = await asyncio.to_thread(_get, f"{base_url}/metrics")
    total = 0.0
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and m.group(1) == name:
            total += float(m.group(3))
    return total


async def metric_sum(base_urls: list[str], name: str) -> float:
    return sum([await metric(u, name) for u in base_urls])


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.1
) -> float:
    """Poll `check` until true; returns the seconds it took, fails after `timeout`."""
    t0 = time.monotonic()
    while not await check():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic() - t0


def summary(samples: list[float]) -> str:
    """`p50 / p90 / max` in milliseconds, for the figures a test prints."""
    if not samples:
        return "no samples"
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return (
        f"p50 {statistics.median(ordered) * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms (n={len(ordered)})"
    )
