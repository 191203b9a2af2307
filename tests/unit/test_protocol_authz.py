"""Unit tests of the events of the features "authz" and "receipts": their payload
rules, the `group_changed` push and the `rate_limited` error ack."""

from __future__ import annotations

from typing import Any

import pytest

from imlab import protocol as p


def refused(parse: Any, payload: Any) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as err:
        parse(payload)
    assert err.value.code == p.ErrorCode.BAD_REQUEST
    return err.value


def test_the_base_events_stay_the_base_and_the_new_ones_are_named_once() -> None:
    assert p.CLIENT_EVENTS == (p.HELLO, p.SEND, p.CREATE_GROUP, p.LATEST, p.SYNC)
    assert set(p.ALL_CLIENT_EVENTS) == set(p.CLIENT_EVENTS) | set(p.EXTENDED_CLIENT_EVENTS)
    assert len(set(p.ALL_CLIENT_EVENTS)) == len(p.ALL_CLIENT_EVENTS)
    by_feature = [e for events in p.FEATURE_EVENTS.values() for e in events]
    assert sorted(by_feature) == sorted(p.EXTENDED_CLIENT_EVENTS)
    assert not set(p.ALL_CLIENT_EVENTS) & p.RESERVED_EVENTS
    assert (p.REFRESH, p.RECEIPT, p.GROUP_CHANGED) == ("refresh", "receipt", "group_changed")
    assert (p.FEATURE_AUTHZ, p.FEATURE_RECEIPTS) == ("authz", "receipts")


def test_parse_receipt_accepts_a_conv_and_a_positive_seq() -> None:
    req = p.parse_receipt({"conv": "dm:alice:bob", "seq": 7, "extra": "ignored"})
    assert req.conv == p.parse_conv("dm:alice:bob") and req.seq == 7
    assert p.parse_receipt({"conv": "group:g1", "seq": p.MAX_SEQ}).conv.group_id == "g1"


@pytest.mark.parametrize(
    "payload",
    [None, [], "x", {}, {"conv": "dm:alice:bob"}, {"conv": "dm:bob:alice", "seq": 1},
     {"conv": "group:g1", "seq": 0}, {"conv": "group:g1", "seq": -1},
     {"conv": "group:g1", "seq": True}, {"conv": "group:g1", "seq": 1.0},
     {"conv": "group:g1", "seq": "3"}, {"conv": "group:g1", "seq": p.MAX_SEQ + 1}],
)  # fmt: skip
def test_parse_receipt_refuses_bad_payloads(payload: Any) -> None:
    refused(p.parse_receipt, payload)


def test_parse_group_change_sorts_and_dedups_members() -> None:
    req = p.parse_group_change({"group": "g1", "members": ["carol", "bob", "carol"]})
    assert req == p.GroupChangeRequest("g1", ("bob", "carol")) and req.conv == "group:g1"


@pytest.mark.parametrize(
    "payload",
    [None, {"members": ["bob"]}, {"group": "g 1", "members": ["bob"]},
     {"group": "g1"}, {"group": "g1", "members": []}, {"group": "g1", "members": "bob"},
     {"group": "g1", "members": ["bob\n"]}, {"group": "g1", "members": [1]},
     {"group": "g1", "members": ["u"] * (p.MAX_GROUP_MEMBERS + 1)}],
)  # fmt: skip
def test_parse_group_change_refuses_bad_payloads(payload: Any) -> None:
    refused(p.parse_group_change, payload)


def test_parse_group_leave_gives_the_group_id() -> None:
    assert p.parse_group_leave({"group": "g-1"}) == "g-1"
    for payload in (None, {}, {"group": "group:g1"}, {"group": 5}, ["g1"]):
        refused(p.parse_group_leave, payload)


def test_group_changed_push_lists_sorted_unique_ids() -> None:
    assert p.group_changed("g1", added=["b", "a", "b"], by="a") == {
        "group": "g1", "conv": "group:g1", "added": ["a", "b"], "removed": [], "by": "a"
    }  # fmt: skip


def test_rate_limited_ack_carries_retry_after() -> None:
    ack = p.RateLimited(0.12345).ack()
    assert ack == {"ok": False, "error": {"code": "rate_limited", "message": "too many requests",
                                          "retry_after": 0.123}}  # fmt: skip
    assert p.RateLimited(float("inf")).ack()["error"]["retry_after"] == 0.0
    assert p.RateLimited(-1).retry_after == 0.0
    assert isinstance(p.RateLimited(1.0), p.ProtocolError)
