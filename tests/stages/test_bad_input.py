"""Malformed input of every kind gets the documented error ack or a refused connect,
never kills a handler, never corrupts stored state; the server keeps serving."""

from __future__ import annotations

from typing import Any

import pytest
import socketio

from imlab import protocol as p
from imlab.client import AsyncChatClient, ConnectRefused

from ..conftest import ALL_STAGES, HISTORY_STAGES, StageUnderTest

every_stage = pytest.mark.parametrize("cluster", ALL_STAGES, indirect=True)
history_stages = pytest.mark.parametrize("cluster", HISTORY_STAGES, indirect=True)

GOOD = {"client_msg_id": "ok-1", "body": "hi", "sent_at": 1.5}


def send(**override: Any) -> dict[str, Any]:
    payload = {**GOOD, "to": "someone", **override}
    return {k: v for k, v in payload.items() if v is not _DROP}


_DROP = object()

# (event, payload, expected error code) -- each must be answered, not dropped.
MALFORMED: list[tuple[str, Any, str]] = [
    (p.SEND, None, "bad_request"),
    (p.SEND, "just a string", "bad_request"),
    (p.SEND, [1, 2, 3], "bad_request"),
    (p.SEND, 42, "bad_request"),
    (p.SEND, send(to=_DROP), "bad_request"),
    (p.SEND, send(group="g1"), "bad_request"),  # both to and group
    (p.SEND, send(to=17), "bad_request"),
    (p.SEND, send(to="has space"), "bad_request"),
    (p.SEND, send(to="x" * 65), "bad_request"),
    (p.SEND, send(body=_DROP), "bad_request"),
    (p.SEND, send(body=None), "bad_request"),
    (p.SEND, send(body={"nested": "object"}), "bad_request"),
    (p.SEND, send(body="x" * (p.MAX_BODY_BYTES + 1)), "bad_request"),
    (p.SEND, send(body="汉" * (p.MAX_BODY_BYTES // 3 + 1)), "bad_request"),  # bytes, not chars
    (p.SEND, send(client_msg_id=_DROP), "bad_request"),
    (p.SEND, send(client_msg_id=""), "bad_request"),
    (p.SEND, send(client_msg_id="x" * 200), "bad_request"),
    (p.SEND, send(client_msg_id=12345), "bad_request"),
    (p.SEND, send(sent_at="yesterday"), "bad_request"),
    (p.SEND, send(sent_at=float("nan")), "bad_request"),
    (p.SEND, send(sent_at=True), "bad_request"),
    (p.SEND, send(sent_at=_DROP), "bad_request"),
    ("no_such_event", {"x": 1}, "unsupported"),
    ("", {}, "unsupported"),
]

# Payloads only a stage with groups/history can judge beyond `unsupported`.
MALFORMED_HISTORY: list[tuple[str, Any, str]] = [
    (p.SEND, {**GOOD, "group": "does-not-exist"}, "not_found"),
    (p.SEND, {**GOOD, "group": "../../etc"}, "bad_request"),
    (p.CREATE_GROUP, {"members": []}, "bad_request"),
    (p.CREATE_GROUP, {"members": "alice"}, "bad_request"),
    (p.CREATE_GROUP, {"members": [1, 2]}, "bad_request"),
    (p.CREATE_GROUP, {"members": ["a"] * (p.MAX_GROUP_MEMBERS + 1)}, "bad_request"),
    (p.CREATE_GROUP, {"members": ["a"], "name": 5}, "bad_request"),
    (p.CREATE_GROUP, ["not", "an", "object"], "bad_request"),
    (p.SYNC, {}, "bad_request"),
    (p.SYNC, {"conv": "chat:1"}, "bad_request"),
    (p.SYNC, {"conv": "dm:only-one"}, "bad_request"),
    (p.SYNC, {"conv": "dm:b:a"}, "bad_request"),  # not sorted
    (p.SYNC, {"conv": "group:g1", "after_seq": -1}, "bad_request"),
    (p.SYNC, {"conv": "group:g1", "after_seq": "0"}, "bad_request"),
    (p.SYNC, {"conv": "group:g1", "limit": 0}, "bad_request"),
    (p.SYNC, {"conv": "group:g1", "limit": p.MAX_SYNC_LIMIT + 1}, "bad_request"),
    (p.SYNC, {"conv": "dm:x:y", "after_seq": 0}, "forbidden"),  # not one of x, y
    (p.LATEST, "nope", "bad_request"),
]


@every_stage
async def test_malformed_payloads_get_error_acks_and_server_keeps_serving(
    sut: StageUnderTest,
) -> None:
    ua, ub = sut.users(2)
    a, b = await sut.connected(ua, ub)
    cases = MALFORMED + (MALFORMED_HISTORY if sut.stage != "v1" else [])
    assert len(cases) >= 20
    for event, payload, code in cases:
        ack = await a.call(event, payload)
        assert ack["ok"] is False, (event, payload, ack)
        assert ack["error"]["code"] == code, (event, payload, ack)
        assert isinstance(ack["error"]["message"], str) and ack["error"]["message"]
    # the same connection and a fresh one still work
    conv = p.dm_conv(ua, ub)
    assert (await a.send(to=ub, body="still here"))["ok"]
    await b.wait_for(lambda: len(b.messages(conv)) == 1, what="delivery after garbage")
    [c] = await sut.connected(*sut.users(1))
    assert (await c.hello())["ok"]


@every_stage
async def test_event_with_extra_arguments_is_refused(sut: StageUnderTest) -> None:
    [a] = await sut.connected(*sut.users(1))
    ack = await a.sio.call(p.HELLO, ({}, "extra"), timeout=5)
    assert ack["ok"] is False and ack["error"]["code"] == "bad_request"


@history_stages
async def test_non_member_cannot_send_to_or_sync_a_group(sut: StageUnderTest) -> None:
    ua, ub, outsider = sut.users(3)
    a, _b, x = await sut.connected(ua, ub, outsider)
    gid = (await a.create_group([ub]))["group_id"]
    ack = await x.send(group=gid, body="let me in")
    assert ack["ok"] is False and ack["error"]["code"] == "forbidden"
    page = await x.sync(p.group_conv(gid), 0, 10)
    assert page["ok"] is False and page["error"]["code"] == "forbidden"
    # nothing was stored by the refused send
    assert (await a.sync(p.group_conv(gid), 0, 10))["messages"] == []


@history_stages
async def test_a_sender_field_in_the_payload_is_ignored(sut: StageUnderTest) -> None:
    ua, ub = sut.users(2)
    a, b = await sut.connected(ua, ub)
    ack = await a.call(p.SEND, {**GOOD, "to": ub, "sender": ub, "user": ub})
    assert ack["ok"], ack
    conv = p.dm_conv(ua, ub)
    await b.wait_for(lambda: len(b.messages(conv)) == 1, what="delivery")
    assert b.messages(conv)[0].sender == ua


@pytest.mark.parametrize("cluster", ["v1", "v2"], indirect=True)
@pytest.mark.parametrize(
    "auth",
    [None, {}, {"user": ""}, {"user": 5}, {"user": "a b"}, {"user": "x" * 100}, "garbage", [1]],
)
async def test_garbage_auth_is_refused_at_connect(sut: StageUnderTest, auth: Any) -> None:
    raw = socketio.AsyncClient(reconnection=False)
    refused: list[Any] = []
    raw.on("connect_error", refused.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await raw.connect(sut.cluster.endpoints[0], auth=auth, transports=["websocket"])
    assert refused, "a refused connect must say why"
    reason = p.parse_refusal(refused[0])
    assert reason["code"] in ("unauthorized", "bad_request") and reason["message"], refused
    await raw.disconnect()
    # and the SDK turns it into a typed error
    c = AsyncChatClient("ok-user", sut.cluster.endpoints)
    if isinstance(auth, dict) and "user" in auth:
        c.core.user = auth["user"]  # a malformed id, as a hostile client sends it
        with pytest.raises(ConnectRefused):
            await c.connect()
    [ok] = await sut.connected(*sut.users(1))
    assert (await ok.hello())["ok"]
