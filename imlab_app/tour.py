"""`imlab tour [v1|v2|v3|v4|v5] [--no-pause]`: a narrated live demonstration for a class.

Each stage is started for real (`imlab.cluster.Cluster`), a few chat clients
(`imlab.client.AsyncChatClient`) are put on the nodes the lesson needs, and the
stage's lesson happens on screen, step by step: what was done, what each client
saw (drops, reconnects and to which node, catch-ups by sync) and why, with the
seed's section from the stage's stage.toml. Between steps the tour waits for Enter,
unless `--no-pause` is given or the input is not a terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO

from imlab import protocol as p
from imlab import stages
from imlab.auth import issue_token
from imlab.client import AsyncChatClient
from imlab.client.core import ClientError, ordered_endpoints
from imlab.cluster import Cluster, ClusterSpec
from imlab.experiment.runfolder import new_run_dir
from imlab.protocol import dm_conv, group_conv
from imlab_app.chat import message_line, silence_library_logging

WAIT = 30.0  # seconds any one expected effect may take on a loaded machine


class Narrator:
    """Prints the tour: step headings, what happened, why; waits between steps."""

    def __init__(self, out: TextIO, pause: bool) -> None:
        self.out, self.pause, self.section, self.n = out, pause, "", 0

    def say(self, line: str = "") -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def stage(self, info: stages.StageInfo, urls: Sequence[str]) -> None:
        self.section, self.n = info.seed_ref, 0
        self.say(f"\n=== {info.name}: {info.title} ({info.seed_ref}) ===")
        self.say(f"    running for real: {', '.join(urls)}")

    async def step(self, title: str) -> None:
        if self.n and self.pause:
            await asyncio.get_running_loop().run_in_executor(None, input, "    [Enter] ")
        self.n += 1
        self.say(f"\n--- step {self.n}: {title}")

    def saw(self, line: str) -> None:
        self.say(f"    {line}")

    def why(self, text: str) -> None:
        self.say(f"    why: {text} ({self.section}, docs/SEED.md)")


class Device(AsyncChatClient):
    """A chat client whose network can die without the server being told: pushes still
    go into its socket, and none reaches the person."""

    silenced = False
    dropped = 0

    async def _on_message(self, data: Any) -> None:
        if self.silenced:
            self.dropped += 1
            return
        await super()._on_message(data)


class Lesson:
    """One stage up, its clients, and the narrator; `client` puts a user on a node."""

    def __init__(self, cluster: Cluster, tell: Narrator) -> None:
        self.cluster, self.tell = cluster, tell
        self.clients: list[Device] = []

    def user_on(self, name: str, node: int) -> str:
        """`name`, or `name2`, `name3` ...: the first whose home node (the client's first
        endpoint, by the hash of the id) is `node`."""
        urls = self.cluster.endpoints
        for k in range(1, 10_000):
            user = name if k == 1 else f"{name}{k}"
            if ordered_endpoints(urls, user)[0] == urls[node % len(urls)]:
                return user
        raise RuntimeError(f"no name like {name} lands on node {node}")

    async def client(self, name: str, node: int = 0, *, reconnect: bool = True) -> Device:
        user = self.user_on(name, node)
        secret = self.cluster.spec.secret
        info = self.cluster.spec.info
        token = issue_token(user, secret, info.token_ttl(3600.0)) if info.uses_tokens else None
        c = Device(user, self.cluster.endpoints, token=token, reconnect=reconnect)
        self._narrate(c)
        await c.connect()
        self.clients.append(c)
        return c

    async def send(self, c: Device, body: str, *, to: str = "", group: str = "") -> None:
        """Send, and say who sent what where and how the server answered."""
        if group:
            ack = await c.send(group=group, body=body)
        else:
            ack = await c.send(to=to, body=body)
        self.tell.saw(f"{c.user} -> {group_conv(group) if group else to}: {self.ack(ack)}")

    def ack(self, ack: dict[str, Any]) -> str:
        if not ack.get("ok"):
            err = ack.get("error") or {}
            return f"refused: {err.get('code')}: {err.get('message', '')}"
        if ack.get("seq") is not None:
            return f"accepted as #{ack['seq']}"
        info = self.cluster.spec.info
        if p.FEATURE_HISTORY not in info.features:
            return "accepted (no seq: this stage stores nothing)"
        return "accepted (no seq yet: the consumer stores it after Kafka)"

    def _narrate(self, c: Device) -> None:
        say = self.tell.saw

        def on_connect(url: str, node: str | None, again: bool) -> None:
            say(f"[{c.user}] {'reconnected' if again else 'connected'} to {node} ({url})")

        def on_disconnect(reason: str | None, again: bool) -> None:
            say(f"[{c.user}] connection dropped" + (" - reconnecting ..." if again else ""))

        def on_catch_up(conv: str, n: int, after: int) -> None:
            if n:
                say(f"[{c.user}] caught up {n} message(s) of {conv} by sync (after #{after})")

        c.on_message = lambda m, via: say(f"[{c.user}] {message_line(m, via)}")
        c.on_connect, c.on_disconnect, c.on_catch_up = on_connect, on_disconnect, on_catch_up

    async def group(self, members: list[Device]) -> str:
        ack = await members[0].create_group([c.user for c in members[1:]], "class")
        gid = str(ack["group_id"])
        for c in members:
            await c.wait_for(lambda c=c: gid in c.groups, WAIT, "the group")  # type: ignore[misc]
        self.tell.saw(f"group {gid}: {', '.join(c.user for c in members)}")
        return gid

    async def has(self, clients: Sequence[Device], conv: str, n: int) -> None:
        for c in clients:
            await c.wait_for(lambda c=c: len(c.messages(conv)) >= n, WAIT, f"{n} in {conv}")  # type: ignore[misc]

    async def close(self) -> None:
        for c in self.clients:
            c.on_disconnect = None  # the tour's end is no lesson
            await c.close()


async def _health(url: str) -> dict[str, Any]:
    def get() -> dict[str, Any]:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
            body: dict[str, Any] = json.loads(resp.read().decode())
            return body

    return await asyncio.to_thread(get)


# ---------------------------------------------------------------- the lessons


async def v1(ls: Lesson) -> None:
    tell = ls.tell
    await tell.step("alice and bob connect to the one server; alice writes to bob")
    alice, bob = await ls.client("alice"), await ls.client("bob")
    await ls.send(alice, "hi bob", to=bob.user)
    await bob.wait_for(lambda: bool(bob.received), WAIT, "the push")
    tell.why("the server keeps a user -> socket map in memory and pushes straight into bob's")

    await tell.step("alice writes to carol, who is not connected")
    await ls.send(alice, "hi carol", to="carol")
    tell.why(
        "v1 stores nothing: a message to someone offline has nowhere to wait, so it is refused"
    )

    await tell.step("bob's network dies without the server noticing; alice writes again")
    bob.silenced = True
    await ls.send(alice, "are you there?", to=bob.user)
    await asyncio.sleep(1.0)
    tell.saw(f"bob's dead socket swallowed {bob.dropped} message(s); bob got none of them")
    bob.silenced = False
    await bob.disconnect(reconnect=False)
    await bob.connect()
    bodies = [m.body for m in bob.messages(dm_conv(alice.user, bob.user))]
    tell.saw(f"bob is back; from alice he has only: {', '.join(repr(b) for b in bodies)}")
    tell.why(
        "the server pushed into a socket that was already dead and acked alice: the message "
        "is lost, and with no seq and no history bob cannot even tell that one is missing"
    )


async def v2(ls: Lesson) -> None:
    tell = ls.tell
    await tell.step("alice, bob and carol form a group; alice writes")
    alice, bob, carol = [await ls.client(n) for n in ("alice", "bob", "carol")]
    gid = await ls.group([alice, bob, carol])
    conv = group_conv(gid)
    await ls.send(alice, "lunch?", group=gid)
    await ls.has([bob, carol], conv, 1)
    tell.why("Redis stores every message with a seq per conversation (INCR in one Lua script)")

    await tell.step("carol goes away; bob and alice keep talking")
    await carol.disconnect(reconnect=False)
    await ls.send(bob, "noodles", group=gid)
    await ls.send(alice, "at noon", group=gid)
    await ls.has([alice, bob], conv, 3)
    tell.saw(f"carol still has {len(carol.messages(conv))} message(s), the last #1")

    await tell.step("carol comes back: `latest`, then `sync` after what she has")
    await carol.connect()
    await ls.has([carol], conv, 3)
    latest = await carol.latest()
    tell.saw(f"carol's latest: {conv} is at #{(latest.get('seqs') or {}).get(conv)}")
    tell.why(
        "a client keeps the highest seq x it has per conversation; on reconnect `latest` "
        "gives the server's y, and `sync` after x fetches what is missing: nothing is lost"
    )


async def v3(ls: Lesson) -> None:
    tell = ls.tell
    await tell.step("alice, bob and carol connect to three different servers")
    alice, carol = await ls.client("alice", 0), await ls.client("carol", 2)
    bob = await ls.client("bob", 1, reconnect=False)  # comes back when the lesson says so
    gid = await ls.group([alice, bob, carol])
    conv = group_conv(gid)
    await ls.send(alice, "hello from server-0", group=gid)
    await ls.has([bob, carol], conv, 1)
    tell.why(
        "a message goes through the group's Kafka topic (one order); the server consuming it "
        "stores it and hands each member's copy to that member's server by Redis pub/sub"
    )

    await tell.step(f"{bob.node} (bob's server) is killed; alice and carol keep talking")
    dead = str(bob.node)
    ls.cluster.process(dead).kill()
    await bob.wait_for(lambda: not bob.connected.is_set(), WAIT, "the drop")
    for i in range(3):
        await ls.send(alice, f"meanwhile {i}", group=gid)
    await ls.has([alice, carol], conv, 4)
    tell.saw(f"carol has all {len(carol.messages(conv))}; bob still {len(bob.messages(conv))}")
    tell.why("the group's partition moves to a live server, which stores and delivers the rest")

    await tell.step("bob reconnects: to another server, and syncs what he missed")
    await bob.connect()
    await ls.has([bob], conv, 4)
    tell.saw(f"bob reconnected to {bob.node} (not {dead}); {bob.received_via['sync']} by sync")
    tell.why(
        "his home server is dead, so the client tries the next endpoint; the pushes sent "
        "to the dead server are gone (pub/sub is at most once) and sync after bob's seq "
        "brings them back from Redis"
    )


async def v4(ls: Lesson) -> None:
    tell = ls.tell
    await tell.step("alice, bob and carol connect to the gateways with signed tokens")
    alice, bob = await ls.client("alice", 0), await ls.client("bob", 1)
    carol = await ls.client("carol", 1)
    gid = await ls.group([alice, bob, carol])
    conv = group_conv(gid)
    for i in range(3):
        await alice.send(group=gid, body=f"before {i}")
    await ls.has([bob, carol], conv, 3)
    topic = f"im.group.{gid}/0"
    owner = ""
    for name, svc in ls.cluster.workers.items():
        if topic in (await _health(svc.url))["consumer"]["assigned"]:
            owner = name
    tell.saw(f"the group's partition {topic} is consumed by {owner}")
    tell.why("gateways only hold connections; workers consume Kafka and route the messages")

    await tell.step(f"{owner} is killed while alice keeps sending")
    ls.cluster.process(owner).kill()
    for i in range(5):
        await ls.send(alice, f"after {i}", group=gid)
    await ls.has([bob, carol], conv, 8)
    for name, svc in ls.cluster.workers.items():
        if name != owner and topic in (await _health(svc.url))["consumer"]["assigned"]:
            tell.saw(f"{topic} moved to {name}")
    tell.why(
        "the surviving worker takes over the dead one's partitions and goes on from its offset"
    )

    await tell.step("nothing stored is lost")
    for c in (bob, carol):
        seqs = [m.seq for m in c.messages(conv)]
        whole = seqs == list(range(1, len(seqs) + 1))
        tell.saw(f"{c.user}: {len(seqs)} messages, seqs 1..{seqs[-1]}, gap-free: {whole}")
    tell.why("a gateway stores each message (with its seq) before it publishes it to Kafka")


async def v5(ls: Lesson) -> None:
    tell = ls.tell
    await tell.step("alice and bob talk in a group; carol is added later")
    alice, bob = await ls.client("alice", 0), await ls.client("bob", 1)
    carol = await ls.client("carol", 1)
    gid = await ls.group([alice, bob])
    conv = group_conv(gid)
    await ls.send(alice, "before carol", group=gid)
    ack = await carol.send(group=gid, body="let me in")
    tell.saw(f"carol -> {conv}: {ls.ack(ack)}")
    added = await alice.group_add(gid, [carol.user])
    tell.saw(f"alice adds carol: members now {', '.join(added.get('members', []))}")
    await ls.send(alice, "welcome carol", group=gid)
    await ls.has([carol], conv, 1)
    tell.saw(f"carol sees {[m.body for m in carol.messages(conv)]}")
    tell.why(
        "membership is checked on every send and sync, the creator administers the group, "
        "and a member sees only what was said while a member (the seed's open problem 1)"
    )

    await tell.step("an operator revokes bob's tokens (imlab revoke bob)")
    from imlab.sqlstore import SqlStore

    store = SqlStore(str(ls.cluster.db_url), max_size=1)
    await store.start()
    try:
        await store.revoke(user=bob.user, issued_before=time.time() + 1)
    finally:
        await store.close()
    await bob.wait_for(lambda: not bob.connected.is_set(), WAIT, "bob's connection to close")
    again = Device(bob.user, ls.cluster.endpoints, token=bob.token, reconnect=False)
    try:
        await again.connect()
        tell.saw("bob's old token got back in (it should not have)")
    except ClientError as exc:
        tell.saw(f"bob's old token, tried again: {exc}")
    finally:
        await again.close()
    tell.why("a short-lived token can be revoked; gateways read the revocations twice a second")

    await tell.step("the Redis master is killed while alice keeps sending")
    sentinel = ls.cluster.sentinel
    assert sentinel is not None
    old = sentinel.kill_master()
    for i in range(3):
        await ls.send(alice, f"during failover {i}", group=gid)
    took = await asyncio.get_running_loop().run_in_executor(None, sentinel.wait_failover, old)
    tell.saw(f"the sentinels promoted {sentinel.master().name} in {took:.1f} s")
    await ls.has([carol], conv, 4)
    seqs = [m.seq for m in carol.messages(conv)]
    tell.saw(f"carol: seqs {seqs}, none repeated, none missing")
    tell.why(
        "sequence numbers and messages live in PostgreSQL, so a send needs no Redis; Redis only "
        "routes pushes, which wait for the failover (the seed's open problem 2)"
    )
    await asyncio.get_running_loop().run_in_executor(None, sentinel.restart_node, old)


LESSONS: dict[str, Callable[[Lesson], Awaitable[None]]] = {
    "v1": v1, "v2": v2, "v3": v3, "v4": v4, "v5": v5,
}  # fmt: skip


async def tour(names: Sequence[str], pause: bool, out: TextIO = sys.stdout) -> int:
    silence_library_logging()
    tell = Narrator(out, pause)
    for name in names:
        info = stages.stage(name)
        run_dir = new_run_dir("tour", name)
        tell.say(f"\nstarting {name} for real: the services and processes its stage.toml lists ...")
        with Cluster(ClusterSpec(name), run_dir) as cluster:
            tell.stage(info, cluster.endpoints)
            lesson = Lesson(cluster, tell)
            try:
                await LESSONS[name](lesson)
            finally:
                await lesson.close()
        tell.say(f"\n{name} stopped; its logs are in {run_dir}")
    tell.say("\nend of the tour")
    return 0


def cmd_tour(args: argparse.Namespace) -> int:
    """Run the tour of one stage, or of all in order."""
    names = [args.stage] if args.stage else [n for n in stages.names() if n in LESSONS]
    pause = not args.no_pause and sys.stdin.isatty()
    return asyncio.run(tour(names, pause))


def register(sub: Any) -> None:
    t = sub.add_parser(
        "tour",
        help="a narrated live demonstration of each stage's lesson, for a class",
        description="Start a stage for real, put a few chat clients on it and play its "
        "lesson step by step, saying what happened and why, with the seed's section. "
        "Without a stage, every stage in order.",
    )
    t.add_argument("stage", nargs="?", choices=sorted(LESSONS), help="one stage (default all)")
    t.add_argument("--no-pause", action="store_true", help="do not wait for Enter between steps")
    t.set_defaults(func=cmd_tour)
