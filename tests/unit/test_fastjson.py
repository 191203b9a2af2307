"""The orjson shim decodes every payload to what engine.io's std module decodes it to,
and what it encodes decodes back to the value, including what orjson cannot do alone."""

from __future__ import annotations

import json
import math
from typing import Any

import engineio.json as std_json
import pytest
from hypothesis import given
from hypothesis import strategies as st
from socketio import packet as sp

from imlab import fastjson
from imlab import protocol as p
from imlab.sioguard import GuardedPacket

MESSAGE = p.Message("dm:alice:bob", "m1", 7, "alice", "héllo 👋 \u0000 \"'\\", 1.5, 2.25, "c1")

PAYLOADS: list[Any] = [
    ["send", {"to": "bob", "client_msg_id": "m1", "body": "hi", "sent_at": 1733097600.123}],
    p.ok_ack(msg=MESSAGE.to_dict(), seq=7),
    p.ok_ack(stage="v4", node="gateway-0", user="alice", features=["groups", "history"]),
    p.error_ack(p.ErrorCode.BAD_REQUEST, "body must be a string"),
    p.refusal(p.ErrorCode.UNAUTHORIZED, "token expired"),
    p.ok_ack(conv="group:g1", messages=[MESSAGE.to_dict()] * 3, latest_seq=9, has_more=False),
    {"seqs": {"dm:alice:bob": 2**63 - 1, "group:g1": -(2**63)}},
    {"big": 2**64, "bigger": 10**40, "neg": -(10**30), "zero": -0.0, "tiny": 5e-324},
    {"text": "日本語 ünïcödé \U0001f600 \u2028 \t\n", "empty": "", "none": None},
    {"nested": [[[[{"a": [1, 2.5, True, False, None]}]]]], "ids": "1234567890123456789012"},
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_protocol_payloads_round_trip_as_with_std_json(payload: Any) -> None:
    for text in (json.dumps(payload), json.dumps(payload, ensure_ascii=False)):
        assert fastjson.loads(text) == std_json.loads(text)
        assert fastjson.loads(text.encode()) == std_json.loads(text.encode())
    assert std_json.loads(fastjson.dumps(payload)) == payload
    assert fastjson.loads(fastjson.dumps(payload)) == payload


def test_big_integers_stay_exact_and_the_100_digit_limit_holds() -> None:
    assert fastjson.loads('{"n": 123456789012345678901234567890}') == {
        "n": 123456789012345678901234567890
    }
    assert fastjson.loads("[18446744073709551616]") == [2**64]
    with pytest.raises(ValueError):
        fastjson.loads("1" * 101)


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '"\\ud800"', "[1e400]", '{"a": -Infinity}'])
def test_what_orjson_refuses_is_read_by_the_std_module(text: str) -> None:
    got, want = fastjson.loads(text), std_json.loads(text)
    assert json.dumps(got) == json.dumps(want)


@pytest.mark.parametrize("text", ["", "{", "[1,]", "{'a': 1}", '"\x01"', "[1] x"])
def test_bad_json_raises_value_error_as_before(text: str) -> None:
    with pytest.raises(ValueError):
        std_json.loads(text)
    with pytest.raises(ValueError):
        fastjson.loads(text)


def test_deep_nesting_is_refused_as_before() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(RecursionError):
        std_json.loads(deep)
    with pytest.raises(RecursionError):
        fastjson.loads(deep)


def test_what_orjson_cannot_encode_goes_through_the_std_module() -> None:
    for value in ({1: "int key"}, {"n": 2**80}, {"s": "\ud800"}):
        assert fastjson.dumps(value) == json.dumps(value)


def test_non_finite_floats_are_written_as_null() -> None:
    assert json.loads(fastjson.dumps([math.nan, math.inf])) == [None, None]


def test_socketio_packets_encode_and_decode_the_same_with_either_module() -> None:
    data = ["message", MESSAGE.to_dict()]
    for module in (std_json, fastjson):
        GuardedPacket.json = module
        try:
            wire = GuardedPacket(sp.EVENT, data=data, namespace="/", id=12).encode()
            back = GuardedPacket(encoded_packet=wire)
        finally:
            del GuardedPacket.json
        assert (back.packet_type, back.id, back.data) == (sp.EVENT, 12, data)


def test_codec_follows_imlab_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMLAB_JSON", "std")
    assert fastjson.codec() is None
    monkeypatch.setenv("IMLAB_JSON", "orjson")
    assert fastjson.codec() is fastjson
    monkeypatch.setenv("IMLAB_JSON", "ujson")
    with pytest.raises(ValueError):
        fastjson.codec()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_any_json_value_decodes_as_with_std_json(value: Any) -> None:
    text = json.dumps(value)
    try:
        want = std_json.loads(text)
    except ValueError:  # an integer over 100 digits
        with pytest.raises(ValueError):
            fastjson.loads(text)
        return
    assert fastjson.loads(text) == want
    assert std_json.loads(fastjson.dumps(value)) == value
