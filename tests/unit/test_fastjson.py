"""The orjson shim: what it encodes decodes (with engine.io's std module, as the clients
and the server do) to the value encoded, including what orjson cannot encode alone."""

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


def test_decoding_is_engineio_s_own() -> None:
    assert fastjson.loads is std_json.loads


@pytest.mark.parametrize("value", [2**64, -(10**40), {"n": [2**63, -(2**63) - 1]}])
def test_integers_beyond_64_bits_encode_exactly(value: Any) -> None:
    assert json.loads(fastjson.dumps(value)) == value


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
def test_any_json_value_encodes_to_what_std_json_reads_back(value: Any) -> None:
    assert json.loads(fastjson.dumps(value)) == value == json.loads(json.dumps(value))
