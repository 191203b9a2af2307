"""Stage v4 on three real gateways and two workers, real Redis and the real broker:
identity at connect, sender and membership rules, cross-gateway delivery, one
order under simultaneous senders, a worker killed mid-stream, and the seed's
open problem (c): a failed Kafka publish after the store. One cluster for the
module; destructive tests last.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from imlab import auth
from imlab import protocol as p
from imlab.client import AsyncChatClient, ConnectRefused
from imlab.cluster import Cluster, ClusterSpec
from imlab.protocol import Message

from ..conftest import StageUnderTest
from ..nodes import eventually, group_of, health, metric_sum, pinned, summary

GATEWAYS = 3


@pytest.fixture(scope="module", params=["redis", "kafka"])
def cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    """v4 under each way of sharing partitions: Redis rendezvous and Kafka's groups."""
    spec = ClusterSpec("v4", servers=GATEWAYS, workers=2, ownership=request.param)
    c = Cluster(spec, tmp_path_factory.mktemp("v4") / "run")
    c.start()
    try:
        yield c
    finally:
        c.stop()


def worker_urls(sut: StageUnderTest) -> list[str]:
    return [w.url for w in sut.cluster.workers.values()]


# ---------------------------------------------------------------- identity


async def refusal(sut: StageUnderTest, user: str, token: str | None) -> ConnectRefused:
    c = AsyncChatClient(user, sut.cluster.endpoints, token=token, reconnect=False)
    try:
        with pytest.raises(ConnectRefused) as err:
            await c.connect()
    finally:
        await c.close()
    assert err.value.code == "unauthorized"
    return err.value


async def test_bad_identities_are_refused_at_connect(sut: StageUnderTest) -> None:
    [user] = sut.users(1)
    secret = sut.cluster.spec.secret
    forged = auth.issue_token(user, "someone-elses-secret-of-32-bytes-or-more")
    cases = {
        "forged": (forged, "bad token signature"),
        "expired": (auth.issue_token(user, secret, ttl=-1), "token expired"),
        "no token": (None, "missing token"),
        "garbage": ("not-a-jwt", "malformed token"),
    }
    for case, (token, reason) in cases.items():
        refused = await refusal(sut, user, token)
        assert reason in refused.message, (case, refused.message)
    metrics = await metric_sum(sut.cluster.endpoints, "imlab_connects_refused_total")
    assert metrics >= len(cases)


async def test_the_sender_is_the_token_holder_never_a_payload_field(sut: StageUnderTest) -> None:
    a, b = await pinned(sut, [0, 1])
    gid = await group_of([a, b])
    conv = p.group_conv(gid)
    payload = {"group": gid, "client_msg_id": "spoof-1", "body": "I am b", "sent_at": time.time(),
               "sender": b.user, "user": b.user, "from": b.user}  # fmt: skip
    ack = await a.call(p.SEND, payload)
    assert ack["ok"], ack
    await b.wait_for(lambda: len(b.messages(conv)) == 1, 20, "delivery")
    assert b.messages(conv)[0].sender == a.user
    page = await b.sync(conv, 0, 10)
    assert [m["sender"] for m in page["messages"]] == [a.user]


async def test_only_members_send_to_or_sync_a_group(sut: StageUnderTest) -> None:
    a, b, outsider = await pinned(sut, [0, 1, 2])
    gid = await group_of([a, b])
    conv = p.group_conv(gid)
    ack = await outsider.send(group=gid, body="let me in")
    assert ack["ok"] is False and ack["error"]["code"] == "forbidden", ack
    page = await outsider.sync(conv, 0, 10)
    assert page["ok"] is False and page["error"]["code"] == "forbidden", page
    other_dm = await outsider.sync(p.dm_conv(a.user, b.user), 0, 10)
    assert other_dm["ok"] is False and other_dm["error"]["code"] == "forbidden"
    assert conv not in (await outsider.latest())["seqs"]
    missing = await outsider.send(group="g-does-not-exist", body="?")
    assert missing["ok"] is False and missing["error"]["code"] == "not_found"


# ---------------------------------------------------------------- delivery


async def test_cross_gateway_delivery(sut: StageUnderTest) -> None:
    latencies: list[float] = []

    def timed(m: Message, via: str) -> None:
        if via == "push":
            latencies.append(time.time() - m.sent_at)

    clients = await pinned(sut, [0, 1, 2], on_message=timed)
    gid = await group_of(clients)  # group_created reached all three gateways' users
    conv = p.group_conv(gid)
    first = await clients[1].send(group=gid, body="first")
    assert first["ok"] and first["seq"] == 1, "v4 stores at the gateway: the ack has the seq"
    t0 = time.monotonic()
    for c in clients:
        await c.wait_for(lambda c=c: len(c.messages(conv)) == 1, 20, "first message")  # type: ignore[misc]
    print(f"\nv4 first message of a new group delivered after {time.monotonic() - t0:.2f} s")
    latencies.clear()
    for i in range(30):
        assert (await clients[i % 3].send(group=gid, body=f"m{i}"))["ok"]
        await asyncio.sleep(0.01)
    a, _, c = clients
    for i in range(3):
        assert (await a.send(to=c.user, body=f"dm {i}"))["ok"]
    for client in clients:
        await client.wait_for(lambda cl=client: len(cl.messages(conv)) == 31, 10, "31")  # type: ignore[misc]
    await c.wait_for(lambda: len(c.messages(p.dm_conv(a.user, c.user))) == 3, 10, "dms")
    print(f"v4 cross-gateway push latency (send -> receipt): {summary(latencies)}")
    reference = [m.msg_id for m in clients[0].messages(conv)]
    for client in clients:
        assert [m.msg_id for m in client.messages(conv)] == reference
        assert [m.seq for m in client.messages(conv)] == list(range(1, 32))


async def test_order_under_simultaneous_senders_across_gateways(sut: StageUnderTest) -> None:
    clients = await pinned(sut, [i % GATEWAYS for i in range(8)])
    gid = await group_of(clients)
    conv = p.group_conv(gid)

    async def talk(c: AsyncChatClient) -> list[int]:
        seqs = []
        for i in range(50):
            ack = await c.send(group=gid, body=f"{c.user}:{i}")
            assert ack["ok"], ack
            seqs.append(ack["seq"])
        return seqs

    t0 = time.monotonic()
    acked = await asyncio.gather(*(talk(c) for c in clients))
    assert sorted(s for seqs in acked for s in seqs) == list(range(1, 401))
    for c in clients:
        await c.wait_for(lambda c=c: len(c.messages(conv)) == 400, 30, "all 400")  # type: ignore[misc]
    print(f"\nv4 8 senders x 50 on 3 gateways: all 400 everywhere in {time.monotonic() - t0:.2f} s")
    reference = [m.msg_id for m in clients[0].messages(conv)]
    assert len(set(reference)) == 400
    for c, seqs in zip(clients, acked, strict=True):
        assert [m.seq for m in c.messages(conv)] == list(range(1, 401))
        assert [m.msg_id for m in c.messages(conv)] == reference
        assert seqs == sorted(seqs), "each sender's messages keep their order"


async def test_workers_report_health_and_consumer_position(sut: StageUnderTest) -> None:
    assigned: list[str] = []

    async def settled() -> bool:
        # Between a rebalance's revoke and assign nobody owns anything: wait it out.
        assigned.clear()
        for url in worker_urls(sut):
            h = await health(url)
            assert h["ok"] and h["kafka"]["connected"]
            assert h["consumer"]["running"]
            assigned.extend(h["consumer"]["assigned"])
        one_owner_each = len(assigned) == len(set(assigned))
        return one_owner_each and {f"im.dm/{i}" for i in range(8)} <= set(assigned)

    await eventually(settled, 15, "every DM partition to have exactly one owner")
    assert await metric_sum(worker_urls(sut), "imlab_kafka_records_consumed_total") > 0
    assert await metric_sum(worker_urls(sut), "imlab_messages_routed_total") > 0
    assert await metric_sum(worker_urls(sut), "imlab_kafka_last_offset") > 0
    assert await metric_sum(sut.cluster.endpoints, "imlab_kafka_published_total") > 0
    assert await metric_sum(sut.cluster.endpoints, "imlab_relay_received_total") > 0


# ---------------------------------------------------------------- faults


async def test_a_worker_killed_mid_stream_hands_over(sut: StageUnderTest) -> None:
    arrivals: dict[str, float] = {}

    def stamp(m: Message, via: str) -> None:
        arrivals.setdefault(m.body, time.monotonic())

    sender, *members = await pinned(sut, [0, 1, 2, 1], on_message=stamp)
    gid = await group_of([sender, *members])
    conv = p.group_conv(gid)
    topic = f"im.group.{gid}/0"
    for i in range(20):
        assert (await sender.send(group=gid, body=f"before {i}"))["ok"]
    for c in members:
        await c.wait_for(lambda c=c: len(c.messages(conv)) == 20, 20, "20 before")  # type: ignore[misc]

    owner = None
    for name, svc in sut.cluster.workers.items():
        if topic in (await health(svc.url))["consumer"]["assigned"]:
            owner = name
    assert owner is not None, "one worker owns the group's partition"
    t_kill = time.monotonic()
    sut.cluster.process(owner).kill()
    for i in range(40):
        assert (await sender.send(group=gid, body=f"after {i}"))["ok"]
        await asyncio.sleep(0.01)
    for c in members:
        await c.wait_for(lambda c=c: len(c.messages(conv)) == 60, 30, "all 60")  # type: ignore[misc]
    handover = arrivals["after 0"] - t_kill
    survivor = next(s for n, s in sut.cluster.workers.items() if n != owner)
    assert topic in (await health(survivor.url))["consumer"]["assigned"]
    via = [(c.received_via["push"], c.received_via["sync"]) for c in members]
    print(
        f"\nv4 worker kill: the survivor delivered again {handover:.2f} s after the kill; "
        f"(push, sync) per member: {via}"
    )
    for c in members:
        assert [m.seq for m in c.messages(conv)] == list(range(1, 61))
        assert c.received_via["sync"] == 0, "every message reached its online recipient by push"
    sut.cluster.process(owner).start()


async def test_a_publish_that_fails_after_the_store_answers_unavailable(
    sut: StageUnderTest,
) -> None:
    """The seed's problem (c): with the broker down the message is stored with a seq
    but the sender hears `unavailable` (no receipt); a retry finds it stored. Once the
    broker is back every member has it, in order (pushed late or repaired by sync)."""
    a, b = await pinned(sut, [0, 1])
    gid = await group_of([a, b])
    conv = p.group_conv(gid)
    assert (await a.send(group=gid, body="one"))["ok"]
    await b.wait_for(lambda: len(b.messages(conv)) == 1, 20, "first message")

    kafka = sut.cluster.kafka
    assert kafka is not None
    kafka.stop()
    ack = await a.send(group=gid, body="lost", client_msg_id="lost-1")
    assert ack["ok"] is False and ack["error"]["code"] == "unavailable", ack
    page = await b.sync(conv, after_seq=1)
    assert [(m["seq"], m["body"]) for m in page["messages"]] == [(2, "lost")], "it IS stored"
    retry = await a.send(group=gid, body="lost", client_msg_id="lost-1")
    assert retry["ok"] and retry["seq"] == 2, "a retry finds it stored and reports success"

    kafka.start()
    everyone = [*sut.cluster.endpoints, *worker_urls(sut)]

    async def reconnected() -> bool:
        return all([(await health(u))["kafka"]["connected"] for u in everyone])

    await eventually(reconnected, 30, "every process to reach the broker again")
    three = await a.send(group=gid, body="three")
    assert three["ok"] and three["seq"] == 3, three
    await b.wait_for(lambda: len(b.messages(conv)) == 3, 30, "everything, in order")
    assert [m.body for m in b.messages(conv)] == ["one", "lost", "three"]
