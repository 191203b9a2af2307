"""py-spy's raw stacks read into self time per function and per group, and drawn."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from imlab.hotpaths import OTHER, Frame, Profile, flame_svg, group_of, parse_frame, parse_raw

RAW = """\
run (imlab/server.py:410);_run_once (asyncio/base_events.py:1922);select (selectors.py:468) 30
run (imlab/server.py:410);emit (socketio/async_server.py:150);dumps (json/__init__.py:231) 5
run (imlab/server.py:410);emit (socketio/async_server.py:150);encode (socketio/packet.py:64) 4
run (imlab/server.py:410);_send (imlab/server.py:338);inc (imlab/metrics.py:24) 1
not a sample line
run (imlab/server.py:410) 10
"""


def test_frames_parse_without_their_line() -> None:
    assert parse_frame("Packet.encode (socketio/packet.py:64)") == Frame(
        "Packet.encode", "socketio/packet.py"
    )
    assert parse_frame("<module> (<string>:4)") == Frame("<module>", "<string>")
    assert parse_frame("odd") == Frame("odd", "")


@pytest.mark.parametrize(
    ("file", "group"),
    [
        ("json/encoder.py", "json"),
        ("engineio/json.py", "json"),
        ("imlab/fastjson.py", "json"),
        ("socketio/packet.py", "socketio"),
        ("engineio/async_socket.py", "socketio"),
        ("imlab/sioguard.py", "socketio"),
        ("logging/__init__.py", "logging"),
        ("imlab/ratelog.py", "logging"),
        ("imlab/metrics.py", "metrics"),
        ("redis/asyncio/client.py", "redis"),
        ("aiokafka/protocol/types.py", "kafka"),
        ("aiohttp/_websocket/writer.py", "aiohttp"),
        ("asyncio/selector_events.py", "asyncio"),
        ("selectors.py", "asyncio"),
        ("imlab/store.py", "app"),
        ("versions/v4/gateway.py", "app"),
        ("inspect.py", OTHER),
        ("/usr/lib/python3.11/copy.py", OTHER),
    ],
)
def test_files_fall_into_their_group(file: str, group: str) -> None:
    assert group_of(Frame("f", file)) == group


def test_self_time_is_the_leaf_frames() -> None:
    stacks = parse_raw(RAW.splitlines())
    assert len(stacks) == 5
    summary = Profile().add(stacks).summary(top=2)
    assert summary["samples"] == 50
    assert summary["groups_pct"] == {"asyncio": 60.0, "app": 20.0, "json": 10.0,
                                     "socketio": 8.0, "metrics": 2.0}  # fmt: skip
    assert summary["top"] == [
        {"function": "select (selectors.py)", "group": "asyncio", "self_pct": 60.0},
        {"function": "run (imlab/server.py)", "group": "app", "self_pct": 20.0},
    ]


def test_profiles_add_up_across_processes() -> None:
    stacks = parse_raw(RAW.splitlines())
    both = Profile().add(stacks).add(stacks)
    assert both.total == 100 and both.groups["json"] == 10


def test_an_empty_profile_summarises_to_nothing() -> None:
    assert Profile().summary() == {"samples": 0, "groups_pct": {}, "top": []}


def test_flame_graph_is_svg_with_one_box_per_frame() -> None:
    svg = flame_svg(parse_raw(RAW.splitlines()), "v1 server-0 <test>")
    root = ET.fromstring(svg)
    rects = root.findall(".//{http://www.w3.org/2000/svg}rect")
    # run, _run_once, select, emit, dumps, encode, _send, inc
    assert len(rects) == 8
    widths = sorted(float(r.get("width", 0)) for r in rects)
    assert widths[-1] == 1200.0  # `run` is in every sample
    assert "&lt;test&gt;" in svg


def test_flame_graph_of_nothing_is_still_svg() -> None:
    ET.fromstring(flame_svg([], "empty"))
