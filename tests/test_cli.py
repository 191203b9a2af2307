"""The `imlab` command: every subcommand has --help, `serve` runs a stage, and the
terminal chat sends, creates groups and shows catch-up after a reconnect."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from imlab.cli import build_parser
from imlab.services import ProcessService, free_port

IMLAB = [sys.executable, "-m", "imlab.cli"]


def test_every_command_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = list(sub.choices)  # type: ignore[arg-type]
    assert {"serve", "up", "chat", "token", "demo"} <= set(names)
    for name in names:
        out = subprocess.run([*IMLAB, name, "--help"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "usage:" in out.stdout, name


def test_serve_v2_starts_its_own_redis_and_chat_works_end_to_end(tmp_path: Path) -> None:
    port = free_port()
    server = ProcessService(
        [*IMLAB, "serve", "v2", "--port", "{port}"], tmp_path, name="serve", port=port
    )
    server.start()
    try:
        url = server.url
        bob = subprocess.Popen(
            [*IMLAB, "chat", "--url", url, "--user", "bob"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        time.sleep(1.5)
        script = "/group bob,carol lunch\n/g g1 hello group\n/to bob hi bob\n/latest\n/quit\n"
        alice = subprocess.run(
            [*IMLAB, "chat", "--url", url, "--user", "alice"],
            input=script, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert alice.returncode == 0, alice.stdout + alice.stderr
        assert "'group_id': 'g1'" in alice.stdout
        assert "'group:g1': 1" in alice.stdout and "'dm:alice:bob': 1" in alice.stdout
        assert bob.stdin is not None
        bob_out, _ = bob.communicate("/quit\n", timeout=30)
        assert "[group g1 created" in bob_out
        assert "[group:g1 #1 via push] alice: hello group" in bob_out
        assert "[dm:alice:bob #1 via push] alice: hi bob" in bob_out
        carol = subprocess.run(
            [*IMLAB, "chat", "--url", url, "--user", "carol"],
            input="/quit\n", capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "[group:g1 #1 via sync] alice: hello group" in carol.stdout
    finally:
        server.stop()


@pytest.mark.parametrize("stage", ["v3"])
def test_serve_v3_without_a_broker_says_what_to_do(stage: str) -> None:
    out = subprocess.run([*IMLAB, "serve", stage, "--redis-url", "redis://127.0.0.1:1/0"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 2 and "imlab up v3" in out.stderr
