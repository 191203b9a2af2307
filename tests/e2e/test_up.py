"""`imlab up` keeps a stage serving when one of its processes dies, and `imlab kill`,
`imlab restart` and `imlab pause`, run as other commands, act on that stage."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from imlab.client import AsyncChatClient, ordered_endpoints

IMLAB = [sys.executable, "-m", "imlab_app.cli"]
NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")


def _wait_for_stage(run_dir: Path, up: subprocess.Popen[str]) -> dict[str, Any]:
    path = run_dir / "cluster.json"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert up.poll() is None, "imlab up exited while starting"
        if path.exists():
            data: dict[str, Any] = json.loads(path.read_text())
            if "up_pid" in data:
                return data
        time.sleep(0.2)
    raise AssertionError("imlab up did not start the stage within 90 s")


def _imlab(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IMLAB, *argv], capture_output=True, text=True, timeout=60)


def _homed(urls: list[str], url: str, taken: set[str]) -> str:
    """A user name whose home node (first endpoint tried) is `url`."""
    name = next(n for n in NAMES if n not in taken and ordered_endpoints(urls, n)[0] == url)
    taken.add(name)
    return name


async def _failover(urls: dict[str, str], run_dir: Path) -> None:
    order = [urls["server-0"], urls["server-1"]]
    taken: set[str] = set()
    pinned = _homed(order, urls["server-1"], taken)  # stays offline until told to come back
    roamer = _homed(order, urls["server-1"], taken)  # reconnects by itself
    sender = _homed(order, urls["server-0"], taken)
    caught_up: list[tuple[str, int, int]] = []
    a = AsyncChatClient(pinned, order, reconnect=False, on_catch_up=lambda *c: caught_up.append(c))
    r = AsyncChatClient(roamer, order)
    b = AsyncChatClient(sender, order)
    try:
        for c in (a, r, b):
            await c.connect()
        assert (a.node, r.node, b.node) == ("server-1", "server-1", "server-0")
        ack = await b.send(to=pinned, body="before")
        assert ack["ok"], ack
        await a.wait_for(lambda: a.received_via["push"] == 1, 10, "the first push")

        out = _imlab("kill", "server-1", "--run-dir", str(run_dir))
        assert out.returncode == 0 and "killed server-1" in out.stdout, out.stdout + out.stderr
        await r.wait_for(lambda: r.node == "server-0", 15, "the roamer on server-0")
        await a.wait_for(lambda: not a.connected.is_set(), 10, "the pinned client's drop")

        for i in range(2):
            ack = await b.send(to=pinned, body=f"while away {i}")
            assert ack["ok"], ack
        conv = f"dm:{min(pinned, sender)}:{max(pinned, sender)}"
        # stored once the sender's echo is back (v3 stores in its Kafka consumer)
        await b.wait_for(lambda: len(b.messages(conv)) == 3, 10, "the sender's echoes")
        await a.connect()  # home node first: server-1 is dead, so server-0
        assert a.node == "server-0"
        assert [m.body for m in a.messages(conv)] == ["before", "while away 0", "while away 1"]
        assert a.received_via == {"push": 1, "sync": 2}
        assert (conv, 2, 1) in caught_up
    finally:
        for c in (a, r, b):
            await c.close()


def test_up_v3_keeps_serving_when_a_server_is_killed(tmp_path: Path) -> None:
    run_dir = tmp_path / "up"
    up = subprocess.Popen(
        [*IMLAB, "up", "v3", "--servers", "2", "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        data = _wait_for_stage(run_dir, up)
        urls = {name: p["url"] for name, p in data["processes"].items()}
        asyncio.run(_failover(urls, run_dir))
        assert up.poll() is None, "imlab up stopped when one server died"

        out = _imlab("restart", "server-1", "--run-dir", str(run_dir))
        assert out.returncode == 0 and "server-1 restarted on" in out.stdout, out.stderr
        out = _imlab("pause", "redis", "0.5", "--run-dir", str(run_dir))
        assert out.returncode == 0 and "resumed redis" in out.stdout, out.stderr
        out = _imlab("kill", "server-7", "--run-dir", str(run_dir))
        assert out.returncode != 0 and "no process 'server-7'" in out.stderr
        assert up.poll() is None
    finally:
        up.send_signal(signal.SIGINT)
        stdout, _ = up.communicate(timeout=60)
    assert "server-1 exited (killed by SIGKILL); the stage keeps running on server-0" in stdout
    assert "server-1 restarted on" in stdout
    assert up.returncode == 0, stdout
