"""Unit tests of the pure parts: payload validation, conversation ids, the client's
in-order delivery (Inbox) and its catch-up steps."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

import pytest

from imlab import protocol as p
from imlab.client import ClientCore, Inbox, ordered_endpoints
from imlab.client.core import Answer, CaughtUp


def msg(conv: str, seq: int | None, body: str = "") -> p.Message:
    return p.Message(conv, f"id{seq}", seq, "alice", body, 1.0, 2.0, f"c{seq}")


def test_dm_conv_is_symmetric_and_parses_back() -> None:
    assert p.dm_conv("bob", "alice") == p.dm_conv("alice", "bob") == "dm:alice:bob"
    conv = p.parse_conv("dm:alice:bob")
    assert conv.kind == "dm" and conv.members == ("alice", "bob")
    assert p.parse_conv("group:g7").group_id == "g7"


@pytest.mark.parametrize("bad", ["dm:bob:alice", "dm:a:a", "dm:a", "group:", "x:1", 5, None])
def test_bad_conv_ids_are_rejected(bad: Any) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.parse_conv(bad)
    assert err.value.code == p.ErrorCode.BAD_REQUEST


def test_parse_send_accepts_a_good_payload() -> None:
    req = p.parse_send({"to": "bob", "client_msg_id": "m1", "body": "hi", "sent_at": 3}, "alice")
    assert req.conv_for("alice") == "dm:alice:bob" and req.sent_at == 3.0


def test_cannot_send_a_dm_to_yourself() -> None:
    with pytest.raises(p.ProtocolError):
        p.parse_send({"to": "a", "client_msg_id": "m", "body": "", "sent_at": 1}, "a")


def test_create_group_adds_the_creator_and_dedups() -> None:
    req = p.parse_create_group({"members": ["c", "b", "c"]}, "a")
    assert req.members == ("a", "b", "c")


def test_message_round_trips() -> None:
    m = msg("group:g1", 4, "x")
    assert p.Message.from_dict(m.to_dict()) == m


def test_refusal_parsing() -> None:
    wire = {"message": "nope", "data": p.refusal(p.ErrorCode.UNAUTHORIZED, "nope")}
    assert p.parse_refusal(wire) == {"code": "unauthorized", "message": "nope"}
    assert p.parse_refusal("odd")["code"] == "refused"


def test_inbox_delivers_in_order_and_buffers_ahead_of_a_gap() -> None:
    inbox = Inbox()
    conv = "group:g1"
    assert [(m.seq, via) for m, via in inbox.accept(msg(conv, 1))] == [(1, "push")]
    assert inbox.accept(msg(conv, 3)) == [] and inbox.accept(msg(conv, 4)) == []
    assert inbox.gaps() == {conv: 1}
    # the sync that fills the gap brings 2; 3 and 4 were pushed, held, and stay pushes
    released = inbox.accept(msg(conv, 2), "sync")
    assert [(m.seq, via) for m, via in released] == [(2, "sync"), (3, "push"), (4, "push")]
    assert inbox.gaps() == {} and inbox.max_seq[conv] == 4
    assert inbox.accept(msg(conv, 3), "sync") == [] and inbox.duplicates == 1


def test_inbox_passes_unsequenced_messages_through() -> None:
    inbox = Inbox()
    assert len(inbox.accept(msg("dm:a:b", None))) == 1
    assert len(inbox.accept(msg("dm:a:b", None))) == 1


def test_endpoint_order_starts_at_the_users_home_node_and_covers_all() -> None:
    urls = ["u0", "u1", "u2"]
    for user in ("alice", "bob", "carol", "dave"):
        order = ordered_endpoints(urls, user)
        assert sorted(order) == urls
        assert order == ordered_endpoints(urls, user)
    homes = {ordered_endpoints(urls, f"user{i}")[0] for i in range(50)}
    assert homes == set(urls)


def test_catch_up_follows_the_seeds_x_less_than_y_rule() -> None:
    core = ClientCore("alice", "http://x")
    core.features = {p.FEATURE_HISTORY}
    core.receive(msg("group:g1", 1).to_dict(), "push", 5.0)
    steps = core.catch_up()
    assert next(steps) == (p.LATEST, {})
    req = steps.send(Answer({"ok": True, "seqs": {"group:g1": 3, "dm:a:b": 0}}, 6.0))
    assert req == (p.SYNC, {"conv": "group:g1", "after_seq": 1, "limit": 200})
    page = [msg("group:g1", s).to_dict() for s in (2, 3)]
    steps.send(Answer({"ok": True, "messages": page, "latest_seq": 3, "has_more": False}, 7.0))
    rest = list(steps)
    caught_up = [e for e in rest if isinstance(e, CaughtUp)]
    assert caught_up == [CaughtUp("group:g1", 2, 1), CaughtUp("dm:a:b", 0, 0)]
    assert [m.seq for m in core.received["group:g1"]] == [1, 2, 3]
    assert core.received_via == {"push": 1, "sync": 2}


def test_no_catch_up_without_history() -> None:
    core = ClientCore("alice", "http://x")
    with pytest.raises(StopIteration):
        next(core.catch_up())


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (p.check_user_id, "alice\n"),
        (p.check_user_id, "a" * 64 + "\n"),
        (p.check_group_id, "g1\n"),
        (p.parse_conv, "group:g1\n"),
        (p.parse_conv, "dm:alice:bob\n"),
    ],
)
def test_ids_are_matched_whole_not_before_a_final_newline(check: Any, value: str) -> None:
    with pytest.raises(p.ProtocolError):
        check(value)


@pytest.mark.parametrize(
    "override",
    [
        {"client_msg_id": "nl\n"},
        {"to": "bob\n"},
        {"body": "\ud800"},
        {"body": "nul\x00inside"},
        {"sent_at": 10**400},
    ],
)
def test_send_refuses_trailing_newlines_lone_surrogates_nul_and_huge_numbers(
    override: dict[str, Any],
) -> None:
    payload = {"to": "bob", "client_msg_id": "c1", "body": "hi", "sent_at": 1.0, **override}
    with pytest.raises(p.ProtocolError) as err:
        p.parse_send(payload, "alice")
    assert err.value.code == p.ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("name", ["\ud800", "a\udfffb", "two\nlines", "tab\there", "\x7f"])
def test_group_names_must_encode_and_hold_no_control_characters(name: str) -> None:
    with pytest.raises(p.ProtocolError):
        p.parse_create_group({"members": ["bob"], "name": name}, "alice")


def test_reserved_and_non_string_event_names_are_refused() -> None:
    assert p.check_event_name("send") == "send"
    for event in ("connect", "disconnect", "connect_error", 5, None, ["x"]):
        with pytest.raises(p.ProtocolError):
            p.check_event_name(event)


def test_message_to_dict_is_asdict_field_for_field() -> None:
    m = msg("dm:alice:bob", None, "héllo")
    assert m.to_dict() == asdict(m)
    assert list(m.to_dict()) == [f.name for f in fields(p.Message)]
