"""The client core's part of the features "authz" and "receipts", without a server:
refresh, group membership changes, receipts after pushes, and each (conv, seq) handed
to the application once however often it arrives."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from imlab import auth
from imlab import protocol as p
from imlab.client import AsyncChatClient, ClientCore
from imlab.client.core import (
    Answer,
    Delivered,
    Dial,
    GroupChanged,
    Record,
    Request,
    SendReceipt,
    Step,
    Steps,
)
from imlab.experiment import history as H

SECRET = "s" * 32


def drive(steps: Steps[Any], answers: list[Answer]) -> tuple[list[Step], Any]:
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


def msg(seq: int, conv: str = "group:g1") -> dict[str, Any]:
    return p.Message(conv, f"id{seq}", seq, "alice", "b", 1.0, 2.0, f"c{seq}").to_dict()


def core_with(*features: str, user: str = "bob") -> ClientCore:
    core = ClientCore(user, "http://x")
    core.handle_hello({"ok": True, "stage": "v5", "node": "n1", "features": list(features)})
    return core


def test_refresh_replaces_the_token_used_to_reconnect() -> None:
    old = auth.issue_token("bob", SECRET, ttl=300, now=1000.0)
    core = ClientCore("bob", "http://x", token=old)
    assert core.token_expires_at == 1300.0
    new = auth.issue_token("bob", SECRET, ttl=300, now=1200.0)
    ack = {"ok": True, "token": new, "expires_at": 1500.0}
    seen, result = drive(core.refresh(), [Answer(ack, 1200.0)])
    assert seen == [Request(p.REFRESH, {})] and result == ack
    assert core.auth == {"token": new} and core.token_expires_at == 1500.0
    error = {"ok": False, "error": {"code": "unsupported", "message": "no"}}
    drive(core.refresh(), [Answer(error, 1201.0)])
    assert core.token == new  # a refused refresh keeps the token


def test_group_add_remove_and_leave_send_their_payloads_and_track_members() -> None:
    core = core_with(p.FEATURE_AUTHZ, user="alice")
    ack = {"ok": True, "group": "g1", "members": ["alice", "bob", "carol"]}
    seen, _ = drive(core.group_add("g1", ["bob", "carol"]), [Answer(ack, 1.0)])
    assert seen == [Request(p.GROUP_ADD, {"group": "g1", "members": ["bob", "carol"]})]
    assert core.groups["g1"] == ["alice", "bob", "carol"]
    ack = {"ok": True, "group": "g1", "members": ["alice", "carol"]}
    seen, _ = drive(core.group_remove("g1", ["bob"]), [Answer(ack, 2.0)])
    assert seen == [Request(p.GROUP_REMOVE, {"group": "g1", "members": ["bob"]})]
    assert core.groups["g1"] == ["alice", "carol"]
    seen, _ = drive(core.group_leave("g1"), [Answer({"ok": True, "group": "g1"}, 3.0)])
    assert seen == [Request(p.GROUP_LEAVE, {"group": "g1"})] and "g1" not in core.groups


def test_group_changed_updates_members_and_is_recorded() -> None:
    core = core_with(p.FEATURE_AUTHZ)
    core.node = "n1"
    data = p.group_changed("g1", added=["bob", "carol"], by="alice")
    effects = core.group_changed(data, 5.0)
    rec = effects[0]
    assert isinstance(rec, Record) and effects[1] == GroupChanged(data)
    assert rec.event == {"t": 5.0, "ev": "group_change", "user": "bob", "node": "n1",
                         "conv": "group:g1", "added": ["bob", "carol"], "removed": [],
                         "by": "alice"}  # fmt: skip
    assert core.groups["g1"] == ["bob", "carol"]
    core.group_changed(p.group_changed("g1", removed=["carol"], by="alice"), 6.0)
    assert core.groups["g1"] == ["bob"]
    core.group_changed(p.group_changed("g1", removed=["bob"], by="bob"), 7.0)
    assert "g1" not in core.groups
    for junk in (None, {"group": "g1"}, {"group": "g1", "by": "a", "added": "bob"}, [1]):
        assert core.group_changed(junk, 8.0) == []
    assert core.malformed == 4


def test_no_receipts_unless_the_stage_takes_them() -> None:
    core = core_with(p.FEATURE_HISTORY)
    effects = core.receive(msg(1), "push", 1.0)
    assert not [e for e in effects if isinstance(e, SendReceipt)]


def test_a_push_is_followed_by_a_receipt_of_the_highest_contiguous_seq() -> None:
    core = core_with(p.FEATURE_RECEIPTS)
    first = core.receive(msg(1), "push", 1.0)
    assert first[-1] == SendReceipt("group:g1", 1)
    assert first[-1].request == Request(p.RECEIPT, {"conv": "group:g1", "seq": 1})
    assert core.receive(msg(3), "push", 2.0) == []  # held behind the gap: nothing new held
    assert core.receipt_done("group:g1", 1, {"ok": True}) is None  # nothing more held yet
    effects = core.receive(msg(2), "push", 3.0)
    assert effects[-1] == SendReceipt("group:g1", 3)
    assert core.receive(msg(3), "push", 4.0) == []  # a duplicate: no delivery, no receipt
    assert core.receipts_sent == 2


def test_one_receipt_in_flight_per_conversation_the_ack_sends_the_next() -> None:
    core = core_with(p.FEATURE_RECEIPTS)
    assert core.receive(msg(1), "push", 1.0)[-1] == SendReceipt("group:g1", 1)
    for seq in (2, 3, 4):  # arrive while the receipt of 1 is unanswered
        assert not [
            e for e in core.receive(msg(seq), "push", 1.0 + seq) if isinstance(e, SendReceipt)
        ]
    assert core.receipt_done("group:g1", 1, {"ok": True}) == SendReceipt("group:g1", 4)
    assert core.receipts_sent == 2


def test_a_failed_receipt_is_sent_again_with_the_next_one() -> None:
    core = core_with(p.FEATURE_RECEIPTS)
    core.receive(msg(1), "push", 1.0)
    core.receipt_done("group:g1", 1, {"ok": True})
    core.receive(msg(2), "push", 2.0)
    core.receipt_done("group:g1", 2, None)  # no ack
    assert (core.receipts_ok, core.receipt_failures) == (1, 1)
    # a redelivery of 2 (the server did not get the receipt) asks for it again
    assert core.receive(msg(2), "push", 3.0) == [SendReceipt("group:g1", 2)]
    core.receipt_done("group:g1", 2, {"ok": False, "error": {"code": "unavailable"}})
    assert core.receipt_failures == 2


def test_a_message_pushed_twice_or_pushed_and_synced_reaches_the_application_once() -> None:
    core = core_with(p.FEATURE_RECEIPTS, p.FEATURE_HISTORY)
    delivered: list[tuple[int, str]] = []
    recorded: list[dict[str, Any]] = []

    def take(effects: list[Any]) -> None:
        for e in effects:
            if isinstance(e, Delivered):
                assert e.message.seq is not None
                delivered.append((e.message.seq, e.via))
            if isinstance(e, Record):
                recorded.append(e.event)

    take(core.receive(msg(1), "push", 1.0))
    core.receipt_done("group:g1", 1, {"ok": True})
    take(core.receive(msg(1), "push", 1.1))  # redelivered
    take(core.receive(msg(3), "push", 1.2))
    take(core.receive(msg(3), "push", 1.3))  # redelivered while held behind the gap
    latest = {"ok": True, "seqs": {"group:g1": 3}}
    page = {"ok": True, "messages": [msg(1), msg(2), msg(3)], "latest_seq": 3, "has_more": False}
    seen, _ = drive(core.catch_up(), [Answer(latest, 2.0), Answer(page, 2.1)])
    take([s for s in seen if not isinstance(s, Dial | Request)])
    assert delivered == [(1, "push"), (2, "sync"), (3, "push")]
    recvs = [r for r in recorded if r["ev"] == H.RECV]
    assert [r["seq"] for r in recvs] == [1, 2, 3]
    assert core.inbox.duplicates == 4  # 1 and 3 pushed again, 1 and 3 in the sync page
    assert [m.seq for m in core.received["group:g1"]] == [1, 2, 3]
    # the catch-up ends with a receipt of everything now held
    assert SendReceipt("group:g1", 3) in seen


async def test_the_asyncio_client_refreshes_its_token_before_it_expires() -> None:
    now = time.time()
    client = AsyncChatClient("bob", "http://x", token="t0", refresh_before=10.0)
    client.core.features = {p.FEATURE_AUTHZ}
    client.core.token_expires_at = now + 10.05  # due in 50 ms
    client.connected.set()
    calls: list[float] = []

    async def refresh() -> dict[str, Any]:
        calls.append(time.time())
        client.core.token, client.core.token_expires_at = "t1", time.time() + 3600
        return {"ok": True, "token": "t1", "expires_at": client.core.token_expires_at}

    client.refresh = refresh  # type: ignore[method-assign]
    client._start_refresher()
    await asyncio.sleep(0.3)
    assert len(calls) == 1 and calls[0] >= now + 0.04 and client.token == "t1"
    assert client._refresher is not None and not client._refresher.done()  # waits for next
    client._refresher.cancel()


def test_a_member_added_later_starts_after_the_seq_it_joined_at() -> None:
    core = core_with(p.FEATURE_HISTORY, p.FEATURE_GROUPS)
    assert core.receive(msg(5), "push", 1.0) == []  # held: seqs 1-4 are not ours to see
    data = {"group": "g1", "added": ["bob"], "removed": [], "by": "carol", "from_seq": 4}
    effects = core.group_changed(data, 2.0)
    assert [m.seq for m in core.received["group:g1"]] == [5]
    assert any(isinstance(e, Delivered) for e in effects)
    assert core.inbox.gaps() == {}
