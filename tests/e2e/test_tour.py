"""`imlab tour v3 --no-pause`: the class demonstration runs to the end unattended, on a
real v3 (Redis, Apache Kafka, three servers), and its output shows the lesson: members
on different servers, a server killed, its client reconnecting elsewhere and syncing."""

from __future__ import annotations

import re
import subprocess
import sys


def test_tour_v3_runs_unattended_and_shows_the_reconnect_and_the_sync() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "imlab_app.cli", "tour", "v3", "--no-pause"],
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "end of the tour" in out
    assert "(seed §4)" in out and "(seed §4, docs/SEED.md)" in out
    assert not re.search(r"[\u3000-\u9fff]", out), "CJK in the tour's output"
    nodes = set(re.findall(r"\] connected to (server-\d)", out))
    assert len(nodes) == 3, f"the members sit on three servers: {nodes}\n{out}"
    killed = re.search(r"step \d+: (server-\d) \(bob's server\) is killed", out)
    assert killed, out
    moved = re.search(r"\[bob\d*\] reconnected to (server-\d)", out)
    assert moved and moved.group(1) != killed.group(1), out
    assert re.search(r"\[bob\d*\] caught up [1-9]\d* message\(s\) of group:\S+ by sync", out), out
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_tour_v5_shows_a_refused_stranger_a_revoked_token_and_a_redis_failover() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "imlab_app.cli", "tour", "v5", "--no-pause"],
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "end of the tour" in out
    assert re.search(r"carol -> group:\S+: refused: forbidden", out), out
    assert "carol sees ['welcome carol']" in out, out
    assert "old token, tried again: connect refused: unauthorized: token revoked" in out, out
    assert re.search(r"the sentinels promoted redis-\d in \d+\.\d s", out), out
    assert "carol: seqs [2, 3, 4, 5], none repeated, none missing" in out, out
