"""The client's sans-I/O core, driven by hand: the test is the transport. It answers
each step with an ack and the time, and checks what the core asks for and records."""

from __future__ import annotations

from typing import Any

import pytest

from imlab import protocol as p
from imlab.client import ClientCore, ConnectRefused, NoServerReachable
from imlab.client.core import (
    Answer,
    Connected,
    Delivered,
    Dial,
    Disconnected,
    Record,
    Request,
    Step,
    Steps,
)
from imlab.experiment import history as H


def drive(steps: Steps[Any], answers: list[Answer]) -> tuple[list[Step], Any]:
    """Run the steps, answering each Dial/Request with the next answer; returns every
    step in order and the result."""
    seen: list[Step] = []
    answer: Answer | None = None
    try:
        while True:
            step = steps.send(answer)
            seen.append(step)
            answer = answers.pop(0) if isinstance(step, Dial | Request) else None
    except StopIteration as stop:
        assert not answers, "answers left over"
        return seen, stop.value


def records(seen: list[Step]) -> list[dict[str, Any]]:
    return [s.event for s in seen if isinstance(s, Record)]


HELLO = {"ok": True, "stage": "v2", "node": "n1", "features": [p.FEATURE_HISTORY]}


def test_send_records_the_send_at_the_given_time_and_the_ack_when_it_came() -> None:
    core = ClientCore("alice", "http://x")
    steps = core.send(to="bob", group=None, body="hi", client_msg_id="m1", intended=9.5, now=10.0)
    ack = {"ok": True, "seq": 4, "conv": "dm:alice:bob"}
    seen, result = drive(steps, [Answer(ack, 10.25)])
    assert result == ack
    assert seen[1] == (p.SEND, {"client_msg_id": "m1", "body": "hi", "sent_at": 10.0, "to": "bob"})
    assert records(seen) == [
        {"t": 10.0, "ev": "send", "user": "alice", "conv": "dm:alice:bob", "msg": "m1",
         "intended": 9.5},
        {"t": 10.25, "ev": "ack", "user": "alice", "conv": "dm:alice:bob", "msg": "m1",
         "ok": True, "err": None, "seq": 4},
    ]  # fmt: skip


def test_a_group_send_without_a_schedule_intends_now_and_records_the_error_code() -> None:
    core = ClientCore("alice", "http://x")
    steps = core.send(to=None, group="g1", body="", client_msg_id=None, intended=None, now=3.0)
    error = {"ok": False, "error": {"code": "forbidden", "message": "no"}}
    seen, _ = drive(steps, [Answer(error, 3.5)])
    send, ack = records(seen)
    assert send["intended"] == 3.0 and send["conv"] == "group:g1"
    assert send["msg"].startswith("alice-")
    assert (ack["ok"], ack["err"], ack["seq"]) == (False, "forbidden", None)


def test_connect_tries_the_next_endpoint_then_says_hello_and_records_the_connect() -> None:
    urls = ["http://a", "http://b"]
    core = ClientCore("alice", urls)
    first, second = core.endpoints
    seen, _ = drive(
        core.connect(timeout=2.0),
        [Answer({}, 1.0, "unreachable"), Answer({}, 1.5), Answer(HELLO, 2.0)],
    )
    assert seen[0] == Dial(first, {"user": "alice"}, 2.0)
    assert seen[1] == Dial(second, {"user": "alice"}, 2.0)
    assert seen[2] == (p.HELLO, {})
    assert records(seen) == [
        {"t": 2.0, "ev": "connect", "user": "alice", "node": "n1", "url": second}
    ]
    assert seen[-1] == Connected(second, "n1", False)
    assert (core.url, core.stage, core.connects) == (second, "v2", 1)


def test_a_refused_connect_ends_the_attempt_and_no_endpoint_is_an_error() -> None:
    core = ClientCore("alice", ["http://a", "http://b"])
    steps = core.connect(timeout=1.0)
    next(steps)
    core.handle_connect_error({"message": "no", "data": p.refusal(p.ErrorCode.UNAUTHORIZED, "no")})
    with pytest.raises(ConnectRefused) as refused:
        steps.send(Answer({}, 1.0, "refused"))
    assert refused.value.code == "unauthorized"
    with pytest.raises(NoServerReachable):
        drive(ClientCore("bob", "http://a").connect(1.0), [Answer({}, 1.0, "down")])


def test_pushes_are_delivered_in_seq_order_and_recorded_when_delivered() -> None:
    core = ClientCore("bob", "http://x")
    core.node = "n2"
    m2 = p.Message("group:g1", "id2", 2, "alice", "b", 1.0, 2.0, "c2").to_dict()
    m1 = p.Message("group:g1", "id1", 1, "alice", "a", 1.0, 2.0, "c1").to_dict()
    assert core.receive(m2, "push", 5.0) == []  # held behind the gap
    effects = core.receive(m1, "push", 6.0)
    recs = [e.event for e in effects if isinstance(e, Record)]
    assert [(r["msg"], r["t"], r["via"], r["node"]) for r in recs] == [
        ("c1", 6.0, "push", "n2"),
        ("c2", 6.0, "push", "n2"),
    ]
    assert [e.message.seq for e in effects if isinstance(e, Delivered)] == [1, 2]
    assert core.receive({"garbage": True}, "push", 7.0) == [] and core.malformed == 1


def test_the_servers_error_becomes_the_disconnect_reason_and_unauthorized_stays_off() -> None:
    core = ClientCore("alice", "http://x")
    rec, note = core.disconnected("io server disconnect", reconnect=True, now=1.0)
    assert rec.event == {"t": 1.0, "ev": "disconnect", "user": "alice",
                         "reason": "io server disconnect"}  # fmt: skip
    assert note == Disconnected("io server disconnect", True)
    core.handle_error({"code": "bad_request", "message": "undecodable packet"})
    _, note = core.disconnected("io server disconnect", reconnect=True, now=2.0)
    assert note == Disconnected("bad_request: undecodable packet", True)
    core.handle_error({"code": "unauthorized", "message": "login expired"})
    rec, note = core.disconnected("io server disconnect", reconnect=True, now=3.0)
    assert rec.event["reason"] == "unauthorized: login expired" and not note.will_reconnect
    _, note = core.disconnected(None, reconnect=True, now=4.0)  # the error was used up
    assert note == Disconnected(None, True)


def test_every_record_fits_the_history_schema() -> None:
    core = ClientCore("alice", "http://x")
    core.handle_hello(HELLO)
    seen, ack = drive(
        core.create_group(["bob"], "lunch"),
        [Answer({"ok": True, "group_id": "g1", "conv": "group:g1", "members": ["alice", "bob"]},
                8.0)],
    )  # fmt: skip
    assert ack["ok"] and core.groups == {"g1": ["alice", "bob"]}
    assert records(seen) == [
        H.event("group", 8.0, user="alice", node="n1", conv="group:g1", members=["alice", "bob"])
    ]
