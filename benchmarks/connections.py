"""Memory per idle connection (issue #13, item 6): open N idle Socket.IO connections,
spread evenly over a stage's client-facing processes (v4: its gateways), and measure
each of those processes' resident memory (RSS, and USS) before and after, and how fast
the connections were opened. Centrifugo's published figure is about 30 KB a connection.

    .venv/bin/python benchmarks/connections.py                       # v4, 20,000 connections
    .venv/bin/python benchmarks/connections.py --connections 500 --hold 5   # a smoke run
    .venv/bin/python benchmarks/connections.py --stage v3 --servers 2

The generator is `--processes` separate processes (default 2) speaking Engine.IO v4 over
a bare WebSocket (aiohttp): the open packet, `40{auth}` to join the namespace, `3` to
every server ping; nothing else is sent, so each connection is a logged-in, idle user.
A full client (python-socketio's AsyncClient) would cost the generator far more memory
per connection and measure the same server. Every connection is a different user (v4,
v5: with a token the stage accepts). Each process needs a file descriptor per
connection: the benchmark raises its soft limit to the hard limit (`ulimit -Hn`), which
the stage processes inherit, and says so when a process would need more.

The connections are held `--hold` seconds (default 30, past one 25 s Engine.IO ping
round, so the server has kept them through a heartbeat); the servers' own
`imlab_connections` gauge is read to count what they hold. Prints a table per process
and the machine; `connections.json` and the stage's logs go to
runs/<time>-connections-<stage>/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import re
import resource
import sys
import time
import urllib.request
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import psutil  # type: ignore[import-untyped]

from imlab import stages
from imlab.cluster import Cluster, add_cluster_args, machine_info, package_versions, spec_from_args
from imlab.experiment.runfolder import new_run_dir
from imlab.services import install_signal_handlers

FD_SPARE = 200  # descriptors a process needs besides its connections (logs, Redis, Kafka)
_GAUGE = re.compile(r"^imlab_connections\{[^}]*\} (\S+)$", re.M)


def raise_fd_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one; (soft before, soft now, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return soft, new, hard


# ---------------------------------------------------------------- the generator


@dataclass
class Job:
    """One generator process's share: its users, and the URL each connects to."""

    index: int
    targets: list[tuple[str, str]]  # (user, server url)
    stage: str
    secret: str
    concurrency: int
    timeout: float


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://", 1).rstrip("/") + "/socket.io/?EIO=4&transport=websocket"


def auth_for(job: Job, user: str) -> dict[str, str]:
    info = stages.stage(job.stage)
    if not info.uses_tokens:
        return {"user": user}
    from imlab.auth import issue_token

    return {"token": issue_token(user, job.secret, ttl=info.token_ttl(3600.0))}


async def _open(
    session: aiohttp.ClientSession, job: Job, user: str, url: str
) -> aiohttp.ClientWebSocketResponse:
    """One logged-in connection: Engine.IO open, namespace connect with auth, its ack."""
    ws = await session.ws_connect(ws_url(url), autoping=True, heartbeat=None, max_msg_size=0)
    try:
        opened = await ws.receive(timeout=job.timeout)
        if opened.type != aiohttp.WSMsgType.TEXT or not str(opened.data).startswith("0"):
            raise ConnectionError(f"no Engine.IO open packet: {opened.type} {opened.data!r}")
        await ws.send_str("40" + json.dumps(auth_for(job, user)))
        while True:
            msg = await ws.receive(timeout=job.timeout)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"closed while connecting: {msg.type} {msg.data!r}")
            data = str(msg.data)
            if data == "2":
                await ws.send_str("3")
            elif data.startswith("40"):
                return ws
            elif data.startswith("44"):
                raise ConnectionError(f"refused: {data[2:200]}")
    except BaseException:
        await ws.close()
        raise


async def _keep(ws: aiohttp.ClientWebSocketResponse, dropped: list[str], user: str) -> None:
    """Answer the server's pings until the connection closes (counted as dropped)."""
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT and msg.data == "2":
            await ws.send_str("3")
    dropped.append(user)


async def _generate(job: Job, pipe: Connection) -> None:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    session = aiohttp.ClientSession(connector=connector)
    sem = asyncio.Semaphore(job.concurrency)
    held: list[aiohttp.ClientWebSocketResponse] = []
    keepers: list[asyncio.Task[None]] = []
    dropped: list[str] = []
    errors: dict[str, int] = {}
    times: list[float] = []

    async def one(user: str, url: str) -> None:
        async with sem:
            try:
                ws = await asyncio.wait_for(_open(session, job, user, url), job.timeout)
            except Exception as exc:  # counted and reported, never fatal
                key = f"{type(exc).__name__}: {str(exc)[:120]}"
                errors[key] = errors.get(key, 0) + 1
                return
        times.append(time.time())
        held.append(ws)
        keepers.append(asyncio.create_task(_keep(ws, dropped, user)))

    start = time.time()
    await asyncio.gather(*(one(u, url) for u, url in job.targets))
    pipe.send({"process": job.index, "opened": len(held), "failed": sum(errors.values()),
               "errors": errors, "start": start, "last": max(times, default=start)})  # fmt: skip
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, pipe.recv)  # hold until the parent has measured
    pipe.send({"process": job.index, "dropped": len(dropped)})
    for t in keepers:
        t.cancel()
    # No polite close handshake for thousands of sockets: the session is dropped and the
    # process exits, and the kernel closes what is left.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(session.close(), 5.0)


def generator_process(job: Job, pipe: Connection) -> None:
    raise_fd_limit()
    asyncio.run(_generate(job, pipe))


# ---------------------------------------------------------------- measuring the servers


def memory(pid: int) -> dict[str, float]:
    """RSS and USS of one process, in MiB."""
    p = psutil.Process(pid)
    full = p.memory_full_info()
    return {"rss_mib": full.rss / 2**20, "uss_mib": full.uss / 2**20}


def held_by(url: str) -> int | None:
    """What the server says it holds (its `imlab_connections` gauge), or None."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as resp:
            found = _GAUGE.search(resp.read().decode())
    except OSError:
        return None
    return int(float(found.group(1))) if found else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    soft_before, soft, hard = raise_fd_limit()  # before the stage starts: it inherits it
    spec = spec_from_args(args.stage, args)
    fronts = spec.front
    per_server = -(-args.connections // fronts)
    per_process = -(-args.connections // args.processes)
    print(f"file descriptors: soft limit {soft_before} raised to {soft} (hard {hard}); each "
          f"{spec.info.front.name} will hold about {per_server:,}, each generator process "
          f"{per_process:,}")  # fmt: skip
    for who, need in ((spec.info.front.name, per_server), ("generator process", per_process)):
        if need + FD_SPARE > soft:
            print(f"WARNING: a {who} needs about {need + FD_SPARE:,} descriptors, over the "
                  f"limit {soft:,}: expect failed connections (raise `ulimit -Hn` as root, or "
                  f"add {spec.info.front.name}s / --processes)")  # fmt: skip
    run_dir = Path(args.out) if args.out else new_run_dir("connections", args.stage)
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    with Cluster(spec, run_dir) as cluster:
        names = list(cluster.nodes)
        urls = [cluster.nodes[n].url for n in names]
        pids = {n: cluster.nodes[n].pid for n in names}
        time.sleep(args.settle)
        before = {n: memory(pid) for n, pid in pids.items() if pid}
        targets = [(f"idle{i:06d}", urls[i % len(urls)]) for i in range(args.connections)]
        jobs = [
            Job(k, targets[k :: args.processes], args.stage, spec.secret, args.concurrency,
                args.timeout)
            for k in range(args.processes)
        ]  # fmt: skip
        print(f"{args.stage}: {len(names)} {spec.info.front.name}(s) up; opening "
              f"{args.connections:,} connections from {args.processes} processes, "
              f"{args.concurrency} in flight each ...", flush=True)  # fmt: skip
        pipes, procs = [], []
        for job in jobs:
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=generator_process, args=(job, theirs), daemon=True)
            proc.start()
            pipes.append(mine)
            procs.append(proc)
        try:
            opened = [p.recv() for p in pipes]
            start = min(o["start"] for o in opened)
            last = max(o["last"] for o in opened)
            total = sum(o["opened"] for o in opened)
            print(f"opened {total:,} in {last - start:.1f} s; holding {args.hold:g} s ...",
                  flush=True)  # fmt: skip
            time.sleep(args.settle)
            after = {n: memory(pid) for n, pid in pids.items() if pid}
            held_after = {n: held_by(u) for n, u in zip(names, urls, strict=True)}
            time.sleep(max(0.0, args.hold - args.settle))
            end = {n: memory(pid) for n, pid in pids.items() if pid}
            held_end = {n: held_by(u) for n, u in zip(names, urls, strict=True)}
            for p in pipes:
                p.send("stop")
            dropped = sum(p.recv()["dropped"] for p in pipes)
        finally:
            for proc in procs:
                proc.join(20)
                if proc.is_alive():
                    proc.kill()
    errors: dict[str, int] = {}
    for o in opened:
        for k, v in o["errors"].items():
            errors[k] = errors.get(k, 0) + v
    servers: list[dict[str, Any]] = []
    for n in names:
        held = held_after.get(n) or 0
        grown = after[n]["rss_mib"] - before[n]["rss_mib"]
        servers.append({
            "name": n, "pid": pids[n], "before": before[n], "after": after[n], "end": end[n],
            "held_after": held_after.get(n), "held_end": held_end.get(n),
            "kb_per_conn_rss": grown * 1024 / held if held else None,
            "kb_per_conn_uss": (after[n]["uss_mib"] - before[n]["uss_mib"]) * 1024 / held
            if held else None,
        })  # fmt: skip
    held_total = sum(s["held_after"] or 0 for s in servers)
    grown_total = sum(s["after"]["rss_mib"] - s["before"]["rss_mib"] for s in servers)
    return {
        "stage": args.stage,
        "front": spec.info.front.name,
        "asked": args.connections,
        "opened": total,
        "failed": sum(o["failed"] for o in opened),
        "errors": errors,
        "dropped_while_held": dropped,
        "connect_seconds": last - start,
        "connect_rate": total / (last - start) if last > start else None,
        "held_total": held_total,
        "kb_per_conn_rss": grown_total * 1024 / held_total if held_total else None,
        "servers": servers,
        "fd_limit": {"soft_before": soft_before, "soft": soft, "hard": hard},
        "args": {k: v for k, v in vars(args).items() if k != "secret"},
        "machine": machine_info(),
        "versions": package_versions(),
        "run_dir": str(run_dir),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def table(rec: dict[str, Any]) -> str:
    lines = [
        f"| {rec['front']} | pid | RSS before MiB | RSS after MiB | RSS after hold MiB "
        "| connections held (server's gauge) | KB/connection (RSS) | KB/connection (USS) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in rec["servers"]:
        lines.append(
            f"| {s['name']} | {s['pid']} | {_f(s['before']['rss_mib'])} "
            f"| {_f(s['after']['rss_mib'])} | {_f(s['end']['rss_mib'])} "
            f"| {s['held_after'] if s['held_after'] is not None else '-'} "
            f"(end: {s['held_end'] if s['held_end'] is not None else '-'}) "
            f"| {_f(s['kb_per_conn_rss'])} | {_f(s['kb_per_conn_uss'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--stage", default="v4", choices=stages.names())
    ap.add_argument("--connections", type=int, default=20_000)
    ap.add_argument("--processes", type=int, default=2, help="generator processes (default 2)")
    ap.add_argument("--concurrency", type=int, default=50,
                    help="connects in flight per generator process (the servers' accept "
                    "backlog is 128)")  # fmt: skip
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds for one connect")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds before each memory sample")  # fmt: skip
    ap.add_argument("--hold", type=float, default=30.0,
                    help="seconds to hold them (past a 25 s ping round by default)")  # fmt: skip
    ap.add_argument("--out", default=None, help="run folder (default runs/<time>-connections-)")
    add_cluster_args(ap)
    args = ap.parse_args(argv)
    if args.connections < 1 or args.processes < 1 or args.concurrency < 1:
        ap.error("--connections, --processes and --concurrency must be positive")
    install_signal_handlers()
    rec = run(args)
    print()
    print(table(rec))
    rate = rec["connect_rate"]
    print(
        f"\n{rec['stage']}: {rec['opened']:,} of {rec['asked']:,} connections opened "
        f"({rec['failed']:,} failed) in {rec['connect_seconds']:.1f} s, "
        f"{_f(rate, 0)} connections/s from {args.processes} generator processes on the same "
        f"machine; servers held {rec['held_total']:,}; {rec['dropped_while_held']:,} dropped "
        f"while held; RSS grew {_f(rec['kb_per_conn_rss'])} KB per connection over all "
        f"{rec['front']}s (Centrifugo publishes about 30 KB)"
    )
    for err, n in sorted(rec["errors"].items(), key=lambda kv: -kv[1])[:5]:
        print(f"  {n:,} x {err}")
    print(f"fd limit: {json.dumps(rec['fd_limit'])}; {rec['when']}")
    print(f"machine: {json.dumps(rec['machine'])}")
    out = Path(rec["run_dir"]) / "connections.json"
    out.write_text(json.dumps(rec, indent=1))
    print(f"record: {out}")
    return 0 if rec["failed"] == 0 and rec["dropped_while_held"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
