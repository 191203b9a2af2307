"""Simulated histories have the real clients' record format and the run-folder layout."""

from __future__ import annotations

import json
from pathlib import Path

from imlab.experiment.faults import parse_faults
from sim.history import SIM_EPOCH, History, JsonlRecorder, MemoryRecorder, RunWriter


def test_records_carry_the_design_keys_and_epoch_times() -> None:
    mem = MemoryRecorder()
    h = History(mem, base_epoch=1000.0)
    h.send(1.5, "a", "dm:a:b", "m1", intended=1.25, node="server-0")
    h.ack(1.6, "a", "dm:a:b", "m1", ok=True, seq=3)
    h.ack(1.7, "a", "dm:a:b", "m2", ok=False, err="unavailable")
    h.recv(1.8, "b", "dm:a:b", "m1", sender="a", seq=3)
    h.recv(2.0, "b", "dm:a:b", "m0", sender="a", seq=2, via="sync")
    h.connect(0.1, "b", node="server-0")
    h.disconnect(3.0, "b")
    h.sync(2.0, "b", "dm:a:b", after_seq=1, latest_seq=3, n=2)
    h.group(0.2, "a", "g1", ["a", "b"])
    h.fault("redis-outage", "redis", 5.0, 7.0)
    h.emit(9.0, "note", user="a", detail=None, reason="x")
    assert mem.records == [
        {"t": 1001.5, "ev": "send", "user": "a", "conv": "dm:a:b", "msg": "m1"}
        | {"intended": 1001.25, "node": "server-0"},
        {"t": 1001.6, "ev": "ack", "user": "a", "conv": "dm:a:b", "msg": "m1"}
        | {"seq": 3, "ok": True, "err": None},
        {"t": 1001.7, "ev": "ack", "user": "a", "conv": "dm:a:b", "msg": "m2"}
        | {"seq": None, "ok": False, "err": "unavailable"},
        {"t": 1001.8, "ev": "recv", "user": "b", "conv": "dm:a:b", "msg": "m1"}
        | {"seq": 3, "via": "push", "sender": "a"},
        {"t": 1002.0, "ev": "recv", "user": "b", "conv": "dm:a:b", "msg": "m0"}
        | {"seq": 2, "via": "sync", "sender": "a"},
        {"t": 1000.1, "ev": "connect", "user": "b", "ok": True, "node": "server-0"},
        {"t": 1003.0, "ev": "disconnect", "user": "b"},
        {"t": 1002.0, "ev": "sync", "user": "b", "conv": "dm:a:b"}
        | {"after_seq": 1, "n": 2, "latest_seq": 3, "ok": True},
        {"t": 1000.2, "ev": "group", "user": "a", "conv": "group:g1", "members": ["a", "b"]},
        {"t": 1005.0, "ev": "fault", "kind": "redis-outage", "target": "redis"}
        | {"start": 1005.0, "end": 1007.0},
        {"t": 1009.0, "ev": "note", "user": "a", "reason": "x"},
    ]


def test_a_send_without_schedule_is_intended_when_sent() -> None:
    mem = MemoryRecorder()
    History(mem).send(0.25, "a", "dm:a:b", "m1")
    assert mem.records[0]["intended"] == mem.records[0]["t"] == SIM_EPOCH + 0.25


def test_times_are_rounded_to_the_microsecond() -> None:
    h = History(MemoryRecorder())
    assert h.epoch(1 / 3) == 1_700_000_000.333333


def test_jsonl_recorder_buffers_and_writes_every_record(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    rec = JsonlRecorder(path, buffer_records=10)
    h = History(rec)
    for i in range(25):
        h.recv(i, "b", "group:g", f"m{i}", sender="a", seq=i + 1, body="é")
    assert rec.count == 20  # two full buffers flushed, five still held
    h.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == rec.count == 25
    assert json.loads(lines[24]) == {
        "t": SIM_EPOCH + 24,
        "ev": "recv",
        "user": "b",
        "conv": "group:g",
        "msg": "m24",
        "seq": 25,
        "via": "push",
        "sender": "a",
        "body": "é",
    }
    assert ", " not in lines[0] and ": " not in lines[0]


def test_run_writer_lays_out_the_run_folder(tmp_path: Path) -> None:
    plan = parse_faults("redis-outage:30s@60s,crash:server-0@100s,kafka-loss:0.01")
    with RunWriter(
        tmp_path / "run", stage="v2", scenario="steady", seed=7, params={"users": 10}
    ) as run:
        run.history.send(1.0, "a", "group:g1", "m1")
        path = run.finish(
            ended_at=120.0, drain_end=125.0, groups={"g1": ("a", "b")}, faults=plan.items
        )
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "history.jsonl",
        "manifest.json",
    ]
    manifest = json.loads(path.read_text())
    assert {k: manifest[k] for k in ("stage", "scenario", "source", "seed", "params")} == {
        "stage": "v2",
        "scenario": "steady",
        "source": "sim",
        "seed": 7,
        "params": {"users": 10},
    }
    assert manifest["started_at"] == SIM_EPOCH
    assert manifest["ended_at"] == SIM_EPOCH + 120
    assert manifest["drain_end"] == SIM_EPOCH + 125
    assert manifest["groups"] == {"g1": ["a", "b"]}
    assert [
        (f["kind"], f["target"], f["start"] - SIM_EPOCH, f["end"] - SIM_EPOCH)
        for f in manifest["faults"]
    ] == [
        ("redis-outage", "redis", 60.0, 90.0),
        ("crash", "server-0", 100.0, 125.0),
        ("kafka-loss", "kafka", 0.0, 125.0),
    ]
    assert manifest["machine"]["cpu_count"] and manifest["versions"]["simpy"]
    assert (tmp_path / "run" / "history.jsonl").read_text().count("\n") == 1
