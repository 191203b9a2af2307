"""Acting on a stage that `imlab up` runs, from another terminal: `imlab kill NODE`,
`imlab pause redis|broker SECONDS` and `imlab restart NODE`.

The stage is found by its cluster.json (the newest one under runs/ whose `imlab up`
is still alive, or the one in --run-dir). Kill and pause signal the process group
directly. A restart needs the process's owner, so it is a request file in the run
folder's `control/` that the `up` loop carries out (`serve_requests`) and answers
with a `.done` file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imlab.services import Service

INFRA = ("redis", "broker")


class StageCtlError(Exception):
    """No running stage, or no such process in it."""


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_stage(run_dir: str | None, root: Path = Path("runs")) -> tuple[Path, dict[str, Any]]:
    """(run folder, cluster.json) of the stage to act on."""
    if run_dir is not None:
        path = Path(run_dir) / "cluster.json"
        if not path.is_file():
            raise StageCtlError(f"no cluster.json in {run_dir}")
        return path.parent, json.loads(path.read_text())
    found = sorted(root.glob("*/cluster.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in found:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
            if _alive(data.get("up_pid")):
                return path.parent, data
    raise StageCtlError(f"no running `imlab up` found under {root}/; pass --run-dir")


def _pid(data: dict[str, Any], name: str) -> int:
    entry = (data.get("processes") or {}).get(name) or (data.get("infra") or {}).get(name)
    if not entry:
        names = sorted(data.get("processes") or {}) + sorted(data.get("infra") or {})
        raise StageCtlError(f"no process {name!r} in this stage; it has {', '.join(names)}")
    pid = entry.get("pid")
    if not _alive(pid):
        raise StageCtlError(f"{name} (pid {pid}) is not running")
    return int(pid)


def _signal(pid: int, sig: signal.Signals) -> None:
    # every stage process leads its own process group (start_new_session)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


# ---------------------------------------------------------------- commands


def cmd_kill(args: argparse.Namespace) -> int:
    """SIGKILL one process of the running stage: a crash."""
    run_dir, data = find_stage(args.run_dir)
    pid = _pid(data, args.node)
    _signal(pid, signal.SIGKILL)
    print(f"killed {args.node} (pid {pid}) with SIGKILL; `imlab up` in {run_dir} says what follows")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    """SIGSTOP Redis or the broker for a while: it holds connections but answers nothing."""
    _run_dir, data = find_stage(args.run_dir)
    pid = _pid(data, args.service)
    _signal(pid, signal.SIGSTOP)
    print(f"paused {args.service} (pid {pid}) for {args.seconds:g} s ...", flush=True)
    try:
        time.sleep(args.seconds)
    finally:
        _signal(pid, signal.SIGCONT)
    print(f"resumed {args.service}")
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    """Ask `imlab up` to start a (dead or live) process of its stage again, on its port."""
    run_dir, data = find_stage(args.run_dir)
    if args.node not in (data.get("processes") or {}):
        _pid(data, args.node)  # raises with the list of names
    control = run_dir / "control"
    control.mkdir(exist_ok=True)
    done = control / f"restart-{args.node}.done"
    done.unlink(missing_ok=True)
    (control / f"restart-{args.node}.request").write_text(str(time.time()))
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if done.exists():
            answer = done.read_text().strip()
            done.unlink(missing_ok=True)
            print(answer)
            if answer.startswith("failed"):
                raise StageCtlError(answer)
            return 0
        time.sleep(0.2)
    raise StageCtlError(f"`imlab up` did not restart {args.node} within {args.timeout:g}s")


# ---------------------------------------------------------------- the `up` side


def exit_reason(svc: Service) -> str:
    code = None if svc.proc is None else svc.proc.poll()
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def requests(run_dir: Path) -> Iterator[tuple[str, Path]]:
    """(process name, request file) of every pending restart request."""
    for path in sorted((run_dir / "control").glob("restart-*.request")):
        yield path.name.removeprefix("restart-").removesuffix(".request"), path


def answer(request: Path, text: str) -> None:
    request.with_suffix(".done").write_text(text + "\n")
    request.unlink(missing_ok=True)


def register(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--run-dir", default=None, help="the `imlab up` run folder (default: newest)"
        )

    k = sub.add_parser(
        "kill",
        help="crash one process of the stage `imlab up` runs (SIGKILL)",
        description="SIGKILL one process (server-N, gateway-N, worker-N, redis or broker) of "
        "the stage that `imlab up` started, found by its cluster.json. `imlab up` keeps "
        "the rest running and says what died.",
    )
    k.add_argument("node", metavar="NODE")
    common(k)
    k.set_defaults(func=cmd_kill)

    pa = sub.add_parser(
        "pause",
        help="freeze Redis or the broker of the running stage for some seconds (SIGSTOP)",
        description="SIGSTOP Redis or the broker of the stage `imlab up` started, wait, then "
        "SIGCONT: connections stay open but nothing answers, as in a long GC pause or a "
        "network partition.",
    )
    pa.add_argument("service", choices=INFRA)
    pa.add_argument("seconds", type=float)
    common(pa)
    pa.set_defaults(func=cmd_pause)

    r = sub.add_parser(
        "restart",
        help="start a process of the running stage again (after `imlab kill`)",
        description="Ask `imlab up` to stop (if still running) and start again one of its "
        "stage processes, on the same port, and wait until it answers.",
    )
    r.add_argument("node", metavar="NODE")
    r.add_argument("--timeout", type=float, default=40.0, help="seconds to wait for it")
    common(r)
    r.set_defaults(func=cmd_restart)
