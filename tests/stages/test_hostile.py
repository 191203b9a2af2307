"""What a hostile client can send beyond bad payloads, on every stage: Socket.IO's own
event names, packets that cannot be decoded (connected or at connect), ids with a trailing
newline, text that UTF-8 cannot encode. Each gets its documented answer, leaves the
session (and the group counter) as it was, and costs one log line, not a traceback."""

from __future__ import annotations

import asyncio
from typing import Any

import engineio
import pytest
import socketio

from imlab import protocol as p

from ..conftest import ALL_STAGES, HISTORY_STAGES, StageUnderTest

every_stage = pytest.mark.parametrize("cluster", ALL_STAGES, indirect=True)
history_stages = pytest.mark.parametrize("cluster", HISTORY_STAGES, indirect=True)

BIG_INT = "1" * 101  # engine.io's JSON refuses integers over 100 digits
DEEP = "[" * 2000 + "]" * 2000  # deeper than the JSON decoder's recursion limit

# Raw Socket.IO packets (after engine.io's "4") that python-socketio cannot decode.
UNDECODABLE: dict[str, list[str | bytes]] = {
    "big int": [f'21["{p.SEND}",{{"sent_at":{BIG_INT}}}]'],
    "deep nesting": [f'22["{p.SEND}",{DEEP}]'],
    "binary after a bad header": [f'51-3["{p.SEND}",{{"a":{BIG_INT}}}]', b"\x00\x01", b"\x02"],
    "unannounced attachment": [b"\x00garbage"],
}


def auth_for(sut: StageUnderTest, user: str) -> dict[str, Any]:
    token = sut.token(user)  # a token stage's (v4, v5), within the life it accepts
    return {"token": token} if token is not None else {"user": user}


def log_count(sut: StageUnderTest, needle: str) -> int:
    return sum(
        svc.log_path.read_text(errors="replace").count(needle)
        for svc in sut.cluster.services()
        if svc.log_path.exists()
    )


async def raw_connected(sut: StageUnderTest, user: str) -> tuple[socketio.AsyncClient, list[Any]]:
    """A bare python-socketio client, logged in, recording `error` events."""
    raw = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    raw.on(p.ERROR, errors.append)
    await raw.connect(sut.cluster.endpoints[0], auth=auth_for(sut, user), transports=["websocket"])
    return raw, errors


@every_stage
@pytest.mark.parametrize("event", sorted(p.RESERVED_EVENTS))
async def test_reserved_event_names_are_refused_and_leave_the_session(
    sut: StageUnderTest, event: str
) -> None:
    ua, ub, victim = sut.users(3)
    a, b = await sut.connected(ua, ub)
    ack = await a.sio.call(event, ({}, {"user": victim, "token": sut.token(victim)}), timeout=5)
    assert ack["ok"] is False and ack["error"]["code"] == "bad_request", ack
    # still ua, still connected, still reachable
    hello = await a.hello()
    assert hello["ok"] and hello["user"] == ua
    assert (await b.send(to=ua, body="still you?"))["ok"]
    conv = p.dm_conv(ua, ub)
    await a.wait_for(lambda: len(a.messages(conv)) == 1, what="delivery to the same user")


@every_stage
@pytest.mark.parametrize("case", sorted(UNDECODABLE))
async def test_undecodable_packet_closes_the_connection_with_a_reason_and_one_log_line(
    sut: StageUnderTest, case: str
) -> None:
    before = log_count(sut, "undecodable packet:")
    raw, errors = await raw_connected(sut, sut.users(1)[0])
    for frame in UNDECODABLE[case]:
        await raw.eio.send(frame)
    for _ in range(100):
        if not raw.connected and errors:
            break
        await asyncio.sleep(0.05)
    assert errors and errors[0]["code"] == "bad_request", errors
    assert "undecodable" in errors[0]["message"]
    assert not raw.connected
    await raw.disconnect()
    await asyncio.sleep(0.1)
    assert log_count(sut, "undecodable packet:") == before + 1
    assert log_count(sut, "Traceback") == 0
    [ok] = await sut.connected(*sut.users(1))
    assert (await ok.hello())["ok"]


@every_stage
@pytest.mark.parametrize(
    "frame",
    [f'0{{"user":{BIG_INT},"token":{BIG_INT}}}', f"0{DEEP}", '51-{"_placeholder":true}', "0{"],
    ids=["big int", "deep nesting", "binary before connect", "truncated json"],
)
async def test_undecodable_connect_gets_connect_error_with_a_reason(
    sut: StageUnderTest, frame: str
) -> None:
    eio = engineio.AsyncClient()
    got: asyncio.Queue[Any] = asyncio.Queue()
    eio.on("message", got.put_nowait)
    await eio.connect(sut.cluster.endpoints[0], transports=["websocket"], engineio_path="socket.io")
    try:
        await eio.send(frame)
        reply = await asyncio.wait_for(got.get(), timeout=3)
    finally:
        await eio.disconnect()
    assert isinstance(reply, str) and reply.startswith("4"), reply  # CONNECT_ERROR
    refusal = p.parse_refusal(socketio.packet.Packet(encoded_packet=reply).data)
    assert refusal["code"] == "bad_request" and "undecodable" in refusal["message"], refusal


@every_stage
async def test_ids_with_a_trailing_newline_are_refused(sut: StageUnderTest) -> None:
    ua, ub = sut.users(2)
    a, _b = await sut.connected(ua, ub)
    for payload in (
        {"to": ub + "\n", "client_msg_id": "c1", "body": "x", "sent_at": 1.0},
        {"to": ub, "client_msg_id": "nl\n", "body": "x", "sent_at": 1.0},
    ):
        ack = await a.call(p.SEND, payload)
        assert ack["ok"] is False and ack["error"]["code"] == "bad_request", ack
    if sut.token(ua) is None:  # stages where the client names itself
        raw = socketio.AsyncClient(reconnection=False)
        refused: list[Any] = []
        raw.on("connect_error", refused.append)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await raw.connect(
                sut.cluster.endpoints[0], auth={"user": ua + "\n"}, transports=["websocket"]
            )
        assert p.parse_refusal(refused[0])["code"] == "bad_request", refused


@history_stages
async def test_unencodable_group_name_is_refused_before_an_id_is_taken(
    sut: StageUnderTest,
) -> None:
    ua, ub = sut.users(2)
    a, _b = await sut.connected(ua, ub)
    first = (await a.create_group([ub], name="ok"))["group_id"]
    for name in ("\ud800", "two\nlines"):
        ack = await a.call(p.CREATE_GROUP, {"members": [ub], "name": name})
        assert ack["ok"] is False and ack["error"]["code"] == "bad_request", ack
    ack = await a.call(p.SEND, {"to": ub, "client_msg_id": "s1", "body": "\udfff", "sent_at": 1.0})
    assert ack["ok"] is False and ack["error"]["code"] == "bad_request", ack
    second = (await a.create_group([ub], name="ok"))["group_id"]
    assert int(second.removeprefix("g")) == int(first.removeprefix("g")) + 1


@pytest.mark.parametrize("cluster", ["v4"], indirect=True)
async def test_an_open_connection_is_told_and_closed_when_its_token_expires(
    sut: StageUnderTest,
) -> None:
    from imlab import auth

    ua, ub = sut.users(2)
    [b] = await sut.connected(ub)
    raw = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    raw.on(p.ERROR, errors.append)
    token = auth.issue_token(ua, sut.cluster.spec.secret, ttl=3)
    await raw.connect(sut.cluster.endpoints[0], auth={"token": token}, transports=["websocket"])
    send = {"to": ub, "client_msg_id": "before", "body": "x", "sent_at": 1.0}
    assert (await raw.call(p.SEND, send, timeout=5))["ok"]
    for _ in range(100):
        if errors and not raw.connected:
            break
        await asyncio.sleep(0.05)
    assert errors == [{"code": "unauthorized", "message": "login expired"}]
    assert not raw.connected
    await raw.disconnect()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await raw.connect(sut.cluster.endpoints[0], auth={"token": token}, transports=["websocket"])
    assert (await b.hello())["ok"]
