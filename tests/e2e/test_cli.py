"""The `imlab` command: every subcommand has --help with a description, mistakes are
short messages, `serve` runs a stage, and the terminal chat sends, creates groups and
shows drops, reconnects and catch-up."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from imlab.client import ClientCore
from imlab.services import ProcessService, free_port
from imlab_app.cli import build_parser

IMLAB = [sys.executable, "-m", "imlab_app.cli"]


def test_every_command_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = list(sub.choices)  # type: ignore[arg-type]
    assert {"serve", "up", "chat", "token", "demo"} <= set(names)
    for name in names:
        out = subprocess.run([*IMLAB, name, "--help"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "usage:" in out.stdout, name
        description = out.stdout.split("\n\n")[1]
        assert not description.startswith(("options:", "positional arguments:")), name


def _fails_in_two_lines(argv: list[str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*IMLAB, *argv], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0, argv
    assert "Traceback" not in out.stdout + out.stderr, argv
    assert 1 <= len(out.stderr.splitlines()) <= 2, out.stderr
    assert out.stdout == "", out.stdout
    return out


def test_an_unreachable_server_is_one_line_not_a_traceback() -> None:
    out = _fails_in_two_lines(["chat", "--url", "http://127.0.0.1:1", "--user", "x"])
    assert "http://127.0.0.1:1" in out.stderr.splitlines()[0]


def test_cli_mistakes_are_short_and_fail() -> None:
    out = _fails_in_two_lines(["token", "alice", "--secret", "short"])
    assert "at least 32 bytes" in out.stderr
    _fails_in_two_lines(["up", "v9"])
    _fails_in_two_lines(["chat", "--url", "http://127.0.0.1:1"])
    _fails_in_two_lines(["sim", "--stage", "v2", "--users", "0"])
    _fails_in_two_lines(["compare", "--stages", "v7"])
    _fails_in_two_lines(["nonsense"])


def test_debug_shows_the_traceback() -> None:
    argv = [*IMLAB, "--debug", "token", "alice", "--secret", "short"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "Traceback" in out.stderr


CLOCK = r"\d\d:\d\d:\d\d"


def _chat(url: str, user: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*IMLAB, "chat", "--url", url, "--user", user],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _say(chat: subprocess.Popen[str], line: str) -> None:
    assert chat.stdin is not None
    chat.stdin.write(line + "\n")
    chat.stdin.flush()


def test_serve_v2_starts_its_own_redis_and_chat_works_end_to_end(tmp_path: Path) -> None:
    port = free_port()
    server = ProcessService(
        [*IMLAB, "serve", "v2", "--port", "{port}"], tmp_path, name="serve", port=port
    )
    server.start()
    try:
        url = server.url
        bob = _chat(url, "bob")
        time.sleep(1.5)
        script = "/group bob,carol lunch\n/g g1 hello group\n/to bob hi bob\n/latest\n/quit\n"
        alice = subprocess.run(
            [*IMLAB, "chat", "--url", url, "--user", "alice"],
            input=script, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert alice.returncode == 0, alice.stdout + alice.stderr
        assert "group g1 created (group:g1): alice, bob, carol" in alice.stdout
        assert re.search(rf"sent at {CLOCK}: \[group:g1 #1\]", alice.stdout), alice.stdout
        assert "latest: dm:alice:bob #1, group:g1 #1" in alice.stdout
        assert "{" not in alice.stdout, alice.stdout  # acks are sentences, not dicts
        bob_out, _ = bob.communicate("/quit\n", timeout=30)
        assert "* added to group g1 by alice: alice, bob, carol" in bob_out
        assert re.search(rf"{CLOCK} \[group:g1 #1\] alice: hello group\n", bob_out), bob_out
        assert re.search(rf"{CLOCK} \[dm:alice:bob #1\] alice: hi bob\n", bob_out), bob_out

        # carol was never online: her first connect catches up by sync; then she drops
        # for 3 s, misses a message and catches up again on her return
        carol = _chat(url, "carol")
        time.sleep(1.5)
        _say(carol, "/drop 3")
        time.sleep(0.5)
        subprocess.run(
            [*IMLAB, "chat", "--url", url, "--user", "alice"],
            input="/g g1 while you were out\n/quit\n", capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        time.sleep(4.0)
        carol_out, _ = carol.communicate("/quit\n", timeout=30)
        lines = carol_out.replace("> ", "").replace("\r", "").splitlines()
        expected = [
            "* caught up 1 message of group:g1 by sync (after #0)",
            "* connection dropped (client disconnect); offline",
            "* staying offline for 3 s",
            f"* reconnected to v2-{port}",
            "alice: while you were out  (by sync)",
            "* caught up 1 message of group:g1 by sync (after #1)",
        ]
        at = 0
        for want in expected:
            found = [i for i, ln in enumerate(lines) if i >= at and want in ln]
            assert found, f"{want!r} not after line {at} in:\n{carol_out}"
            at = found[0]
        assert "[group:g1 #1] alice: hello group  (by sync)" in carol_out
        for out in (bob_out, carol_out):
            assert "packet queue" not in out and "Traceback" not in out, out
    finally:
        server.stop()


def test_a_token_chat_takes_its_name_from_the_server() -> None:
    core = ClientCore("anonymous", "http://127.0.0.1:1", token="signed")
    core.handle_hello({"ok": True, "stage": "v4", "node": "gw-1", "user": "alice"})
    assert core.user == "alice"
    plain = ClientCore("bob", "http://127.0.0.1:1")
    plain.handle_hello({"ok": True, "stage": "v2", "node": "n", "user": "someone-else"})
    assert plain.user == "bob"


@pytest.mark.parametrize("stage", ["v3"])
def test_serve_v3_without_a_broker_says_what_to_do(stage: str) -> None:
    out = subprocess.run([*IMLAB, "serve", stage, "--redis-url", "redis://127.0.0.1:1/0"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 2 and "imlab up v3" in out.stderr


def test_sigterm_to_serve_leaves_no_process_behind(tmp_path: Path) -> None:
    port = free_port()
    serve = subprocess.Popen(
        [*IMLAB, "serve", "v2", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            children = psutil.Process(serve.pid).children(recursive=True)
            if any("versions.v2.server" in " ".join(c.cmdline()) for c in children):
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
            time.sleep(0.2)
        else:
            pytest.fail("imlab serve v2 did not come up")
        assert len(children) >= 2  # the stage server and its Redis
        out_path = tmp_path / "bob.out"
        with out_path.open("w") as out:  # an open connection to close
            bob = subprocess.Popen(
                [*IMLAB, "chat", "--url", f"http://127.0.0.1:{port}", "--user", "bob"],
                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30  # a loaded machine starts a Python slowly
        while "connected to" not in out_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "connected to" in out_path.read_text(), out_path.read_text()
        began = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        serve.wait(15)
        took = time.monotonic() - began
        _gone, alive = psutil.wait_procs(children, timeout=5)
        assert alive == [], [" ".join(p.cmdline()) for p in alive]
        assert took < 4.0, f"imlab serve took {took:.1f}s to stop"
        bob.communicate("/quit\n", timeout=30)
        bob_out = out_path.read_text()
        assert "* connection dropped" in bob_out, bob_out
    finally:
        if serve.poll() is None:
            serve.kill()
        for child in children:  # a failing run must not leave them behind either
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
