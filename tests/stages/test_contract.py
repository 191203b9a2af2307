"""The contract suite: the client protocol of docs/PROTOCOL.md sections 1-4, run unchanged
against every stage (real processes, real Redis, real broker). A stage that lacks a
capability must answer `unsupported`; where stages differ by design, the test says so.
"""

from __future__ import annotations

import asyncio

import pytest

from imlab import protocol as p
from imlab.client import AsyncChatClient

from ..conftest import ALL_STAGES, HISTORY_STAGES, StageUnderTest

every_stage = pytest.mark.parametrize("cluster", ALL_STAGES, indirect=True)
history_stages = pytest.mark.parametrize("cluster", HISTORY_STAGES, indirect=True)
v1_only = pytest.mark.parametrize("cluster", ["v1"], indirect=True)


def seqs(client: AsyncChatClient, conv: str) -> list[int | None]:
    return [m.seq for m in client.messages(conv)]


@every_stage
async def test_hello_names_stage_and_features(sut: StageUnderTest) -> None:
    [a] = await sut.connected(*sut.users(1))
    ack = await a.hello()
    assert ack["ok"] and ack["stage"] == sut.stage
    assert p.FEATURE_DM in ack["features"]
    assert ack["node"] in sut.cluster.nodes


@every_stage
async def test_online_direct_message_is_delivered_and_echoed(sut: StageUnderTest) -> None:
    ua, ub = sut.users(2)
    a, b = await sut.connected(ua, ub)
    ack = await a.send(to=ub, body="吃了吗?")
    assert ack["ok"], ack
    conv = p.dm_conv(ua, ub)
    assert ack["conv"] == conv
    await b.wait_for(lambda: len(b.messages(conv)) == 1, what="delivery")
    await a.wait_for(lambda: len(a.messages(conv)) == 1, what="echo")
    for c in (a, b):
        [m] = c.messages(conv)
        assert (m.sender, m.body, m.msg_id) == (ua, "吃了吗?", ack["msg_id"])


@v1_only
async def test_v1_offline_recipient_is_refused(sut: StageUnderTest) -> None:
    ua, ub = sut.users(2)
    [a] = await sut.connected(ua)
    ack = await a.send(to=ub, body="anyone?")
    assert ack == {
        "ok": False,
        "error": {"code": "recipient_offline", "message": ack["error"]["message"]},
    }
    b = sut.client(ub)
    await b.connect()
    await asyncio.sleep(0.3)
    assert b.received == {}, "v1 stores nothing: a late-comer sees nothing"


@v1_only
async def test_v1_groups_and_history_are_unsupported(sut: StageUnderTest) -> None:
    ua, ub = sut.users(2)
    [a] = await sut.connected(ua)
    for event, payload in [
        (p.CREATE_GROUP, {"members": [ub]}),
        (p.SEND, {"group": "g1", "client_msg_id": "x1", "body": "hi", "sent_at": 1.0}),
        (p.LATEST, {}),
        (p.SYNC, {"conv": p.dm_conv(ua, ub), "after_seq": 0, "limit": 10}),
    ]:
        ack = await a.call(event, payload)
        assert ack["ok"] is False and ack["error"]["code"] == "unsupported", (event, ack)


@history_stages
async def test_group_creation_notifies_every_member(sut: StageUnderTest) -> None:
    users = sut.users(4)
    clients = await sut.connected(*users)
    ack = await clients[0].create_group(users[1:], "lunch")
    assert ack["ok"], ack
    gid = ack["group_id"]
    assert sorted(ack["members"]) == sorted(users)
    for c in clients:
        await c.wait_for(lambda c=c: gid in c.groups, what="group_created")  # type: ignore[misc]
        assert sorted(c.groups[gid]) == sorted(users)


@history_stages
async def test_seq_is_strictly_increasing_without_gaps(sut: StageUnderTest) -> None:
    users = sut.users(3)
    clients = await sut.connected(*users)
    gid = (await clients[0].create_group(users))["group_id"]
    conv = p.group_conv(gid)
    acks = []
    for i in range(30):
        acks.append(await clients[i % 3].send(group=gid, body=f"m{i}"))
    assert all(a["ok"] for a in acks)
    for c in clients:
        await c.wait_for(lambda c=c: len(c.messages(conv)) == 30, what="30 messages")  # type: ignore[misc]
        assert seqs(c, conv) == list(range(1, 31))
    # the acked seqs (where the stage knows them at ack time) are the stored ones
    acked = [a["seq"] for a in acks if a.get("seq") is not None]
    assert acked == sorted(acked) and len(set(acked)) == len(acked)


@history_stages
async def test_offline_member_catches_up_100_messages_through_sync(sut: StageUnderTest) -> None:
    ua, ub, uc = sut.users(3)
    a, b, c = await sut.connected(ua, ub, uc)
    gid = (await a.create_group([ub, uc]))["group_id"]
    conv = p.group_conv(gid)
    await c.wait_for(lambda: gid in c.groups, what="group_created")
    await c.disconnect()
    for i in range(100):
        ack = await (a if i % 2 else b).send(group=gid, body=f"while away {i}")
        assert ack["ok"], ack
    await b.wait_for(lambda: len(b.messages(conv)) == 100, what="b's pushes")
    assert c.messages(conv) == []
    await c.connect()
    await c.wait_for(lambda: len(c.messages(conv)) == 100, what="catch-up")
    assert seqs(c, conv) == list(range(1, 101))
    assert [m.body for m in c.messages(conv)] == [m.body for m in b.messages(conv)]
    if p.FEATURE_RECEIPTS in c.core.features:
        # v5 also pushes what c never acknowledged at its login: push and sync race.
        assert c.received_via["sync"] + c.received_via["push"] == 100
    else:
        assert c.received_via["sync"] == 100


@history_stages
async def test_direct_message_to_offline_user_waits_in_history(sut: StageUnderTest) -> None:
    ua, ub = sut.users(2)
    [a] = await sut.connected(ua)
    ack = await a.send(to=ub, body="call me")
    assert ack["ok"] and ack["conv"] == p.dm_conv(ua, ub)
    [b] = await sut.connected(ub)
    conv = p.dm_conv(ua, ub)
    await b.wait_for(lambda: len(b.messages(conv)) == 1, what="dm catch-up")
    assert b.messages(conv)[0].body == "call me"


@history_stages
async def test_latest_reports_each_conversation(sut: StageUnderTest) -> None:
    ua, ub, uc = sut.users(3)
    a, b, c = await sut.connected(ua, ub, uc)
    gid = (await a.create_group([ub, uc]))["group_id"]
    for i in range(5):
        assert (await b.send(group=gid, body=str(i)))["ok"]
    for i in range(3):
        assert (await a.send(to=ub, body=str(i)))["ok"]
    await b.wait_for(lambda: len(b.messages(p.dm_conv(ua, ub))) == 3, what="dms")
    await a.wait_for(lambda: len(a.messages(p.group_conv(gid))) == 5, what="group")
    ack = await a.latest()
    assert ack["ok"]
    assert ack["seqs"] == {p.group_conv(gid): 5, p.dm_conv(ua, ub): 3}
    ack_c = await c.latest()
    assert ack_c["seqs"] == {p.group_conv(gid): 5}


@history_stages
async def test_sync_pages_with_has_more(sut: StageUnderTest) -> None:
    ua, ub = sut.users(2)
    [a] = await sut.connected(ua)
    for i in range(7):
        assert (await a.send(to=ub, body=str(i)))["ok"]
    conv = p.dm_conv(ua, ub)
    await a.wait_for(lambda: len(a.messages(conv)) == 7, what="echoes")
    page = await a.sync(conv, after_seq=2, limit=3)
    assert page["ok"] and page["latest_seq"] == 7 and page["has_more"] is True
    assert [m["seq"] for m in page["messages"]] == [3, 4, 5]
    last = await a.sync(conv, after_seq=5, limit=3)
    assert [m["seq"] for m in last["messages"]] == [6, 7] and last["has_more"] is False


@history_stages
async def test_retried_client_msg_id_is_stored_once(sut: StageUnderTest) -> None:
    ua, ub = sut.users(2)
    a, b = await sut.connected(ua, ub)
    conv = p.dm_conv(ua, ub)
    first = await a.send(to=ub, body="once", client_msg_id="retry-me-1")
    again = await a.send(to=ub, body="once", client_msg_id="retry-me-1")
    assert first["ok"] and again["ok"]
    assert again["msg_id"] == first["msg_id"]
    after = await a.send(to=ub, body="next")
    await b.wait_for(lambda: len(b.messages(conv)) == 2, what="deliveries")
    await asyncio.sleep(0.3)
    page = await b.sync(conv, after_seq=0, limit=100)
    assert [m["body"] for m in page["messages"]] == ["once", "next"]
    assert [m["seq"] for m in page["messages"]] == [1, 2]
    assert len(b.messages(conv)) == 2 and after["ok"]


@history_stages
async def test_simultaneous_senders_agree_on_one_order(sut: StageUnderTest) -> None:
    users = sut.users(8)
    clients = await sut.connected(*users)
    gid = (await clients[0].create_group(users))["group_id"]
    conv = p.group_conv(gid)
    for c in clients:
        await c.wait_for(lambda c=c: gid in c.groups, what="group_created")  # type: ignore[misc]

    async def talk(c: AsyncChatClient) -> None:
        for i in range(50):
            ack = await c.send(group=gid, body=f"{c.user}:{i}")
            assert ack["ok"], ack

    await asyncio.gather(*(talk(c) for c in clients))
    for c in clients:
        await c.wait_for(lambda c=c: len(c.messages(conv)) == 400, 30, "all 400")  # type: ignore[misc]
    reference = [m.msg_id for m in clients[0].messages(conv)]
    assert len(set(reference)) == 400
    for c in clients:
        assert seqs(c, conv) == list(range(1, 401))
        assert [m.msg_id for m in c.messages(conv)] == reference
    # each sender's own messages keep the order it sent them in
    for u in users:
        mine = [int(m.body.split(":")[1]) for m in clients[0].messages(conv) if m.sender == u]
        assert mine == list(range(50))


@history_stages
async def test_history_survives_a_restart_of_the_stage_processes(sut: StageUnderTest) -> None:
    ua, ub = sut.users(2)
    [a] = await sut.connected(ua)
    for i in range(10):
        assert (await a.send(to=ub, body=f"before {i}"))["ok"]
    conv = p.dm_conv(ua, ub)
    await a.wait_for(lambda: len(a.messages(conv)) == 10, what="echoes")
    await sut.close_clients()
    for svc in [*sut.cluster.nodes.values(), *sut.cluster.workers.values()]:
        svc.restart()
    [b] = await sut.connected(ub)
    await b.wait_for(lambda: len(b.messages(conv)) == 10, what="history after restart")
    assert [m.body for m in b.messages(conv)] == [f"before {i}" for i in range(10)]
    assert seqs(b, conv) == list(range(1, 11))
