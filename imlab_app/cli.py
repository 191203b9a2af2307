"""The `imlab` command: run a stage, a local cluster, a terminal chat, and (from the
load, simulation and report packages) load tests, simulations and reports.

Each subcommand is a small function; packages outside `imlab/` add theirs through
a `register(subparsers)` function listed in `_PLUGINS`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from imlab import stages
from imlab.cluster import (
    DEFAULT_SECRET,
    SECRET_FILE,
    Cluster,
    ClusterSpec,
    add_cluster_args,
    spec_from_args,
)
from imlab.experiment.runfolder import new_run_dir
from imlab.services import RedisService, Service, install_signal_handlers, stop_all
from imlab_app import stagectl

Command = Callable[[argparse.Namespace], int]

# Modules with `register(subparsers)` adding their own subcommands.
_PLUGINS: list[str] = [
    "imlab_app.stagectl",
    "loadtest.cli",
    "loadtest.capacity",
    "reports.cli",
    "sim.cli",
    "imlab_app.compare",
    "imlab_app.tour",
]


# ---------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    """One stage server in the foreground (v1-v3); v2/v3 start their own Redis if none given."""
    stage = args.stage
    info = stages.stage(stage)
    redis_url = args.redis_url
    argv = [sys.executable, "-m", info.front.module, "--port", str(args.port)]
    argv += ["--host", args.host]
    if info.needs_redis:
        if redis_url is None:
            redis = RedisService().start()
            redis_url = redis.url
            print(f"started redis-server at {redis_url} (log {redis.log_path})", flush=True)
        argv += ["--redis-url", redis_url]
    if info.needs_kafka:
        if args.kafka_bootstrap is None:
            print(f"{stage} needs a broker: use `imlab up {stage}` or pass --kafka-bootstrap",
                  file=sys.stderr)  # fmt: skip
            return 2
        argv += ["--kafka-bootstrap", args.kafka_bootstrap]
    print(f"serving {stage} on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    proc = subprocess.Popen(argv)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        # also on SIGTERM (a SystemExit here): the server must not outlive this command
        _stop_child(proc)
        stop_all()


def _stop_child(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- up


def cmd_up(args: argparse.Namespace) -> int:
    """A whole stage on this machine until Ctrl-C or until Redis or the broker is gone.

    A stage process that dies is reported and the rest keep serving (failover is
    the lesson); `imlab kill`, `imlab pause` and `imlab restart` act on it.
    """
    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir("up", args.stage)
    cluster = Cluster(spec_from_args(args.stage, args), run_dir)
    print(f"starting {args.stage} into {run_dir} ...", flush=True)
    with cluster:
        _write_up_manifest(cluster)
        print(f"stage {args.stage} is up:")
        if cluster.redis_url:
            print(f"  redis   {cluster.redis_url}")
        if cluster.db_url:
            print(f"  db      {cluster.db_url}")
        if cluster.kafka is not None:
            b = cluster.kafka
            print(f"  kafka   {b.bootstrap}  ({b.kind} {b.version}, {b.brokers} broker(s))")
        elif cluster.kafka_bootstrap:
            print(f"  kafka   {cluster.kafka_bootstrap}")
        for name, svc in {**cluster.nodes, **cluster.workers}.items():
            print(f"  {name:<10} {svc.url}  (log {svc.log_path})")
        urls = " ".join(f"--url {u}" for u in cluster.endpoints)
        own = args.secret == DEFAULT_SECRET or stages.stage(args.stage).secret_per_run
        secret = "" if own else f" --secret {args.secret}"
        hint = (
            f"--token $(imlab token alice{secret})"
            if stages.stage(args.stage).uses_tokens
            else "--user alice"
        )
        print(f"chat with: imlab chat {urls} {hint}")
        print(f"manifest: {run_dir / 'cluster.json'}  (Ctrl-C stops everything)")
        print("faults from another terminal: imlab kill NODE | imlab restart NODE | "
              "imlab pause redis|broker SECONDS", flush=True)  # fmt: skip
        try:
            return _watch(cluster, args.for_seconds)
        except KeyboardInterrupt:
            print("\nstopping ...")
            return 0


def _write_up_manifest(cluster: Cluster) -> None:
    infra: dict[str, dict[str, Any]] = {}
    if cluster.redis is not None:
        infra["redis"] = {"pid": cluster.redis.pid, "url": cluster.redis.url}
    if cluster.sentinel is not None:  # redis-0 (first master), redis-1, sentinel-0..2
        for svc in cluster.sentinel.services():
            infra[svc.name] = {"pid": svc.pid, "url": cluster.sentinel.url}
    if cluster.postgres is not None:
        infra["postgres"] = {"pid": cluster.postgres.pid, "url": cluster.postgres.url}
    if cluster.kafka is not None:
        # `broker` is the first node (the whole broker when there is one); each node by name
        for i, node in enumerate(cluster.kafka.nodes):
            entry = {"pid": node.pid, "bootstrap": cluster.kafka.bootstrap}
            infra[node.name] = entry
            if i == 0:
                infra["broker"] = entry
    cluster.write_manifest({"up_pid": os.getpid(), "infra": infra})


def _watch(cluster: Cluster, for_seconds: float) -> int:
    from imlab_app.stagectl import answer, exit_reason, requests

    brokers: list[Service] = list(cluster.kafka.nodes) if cluster.kafka is not None else []
    procs = {**cluster.nodes, **cluster.workers}
    down: set[str] = set()
    while True:
        redis = cluster.redis
        gone: list[Service] = [redis] if redis is not None and not redis.running() else []
        pg = cluster.postgres
        if pg is not None and not pg.running():
            gone.append(pg)
        if brokers and not any(b.running() for b in brokers):
            gone += brokers  # a cluster of three keeps going on two
        for base in gone:
            print(f"{base.name} is gone ({exit_reason(base)}); the stage cannot run without "
                  f"it: stopping. Log tail:\n{base.log_tail()}", flush=True)  # fmt: skip
        if gone:
            return 1
        for name, svc in procs.items():
            if svc.running():
                down.discard(name)
            elif name not in down:
                down.add(name)
                alive = [n for n, s in procs.items() if s.running()]
                print(f"{name} exited ({exit_reason(svc)}); the stage keeps running on "
                      f"{', '.join(alive) or 'nothing'}. `imlab restart {name}` starts it again",
                      flush=True)  # fmt: skip
        for name, request in requests(cluster.run_dir):
            proc = procs.get(name)
            if proc is None:
                answer(request, f"failed: no process {name!r}")
                continue
            try:
                proc.restart()
            except Exception as exc:  # reported to the asking terminal; the stage goes on
                answer(request, f"failed: {name}: {error_line(exc)}")
                continue
            down.discard(name)
            _write_up_manifest(cluster)
            text = f"{name} restarted on {proc.url} (pid {proc.pid})"
            print(text, flush=True)
            answer(request, text)
        if for_seconds and time.time() - (cluster.started_at or 0) > for_seconds:
            return 0
        time.sleep(0.5)


# ---------------------------------------------------------------- chat


def cmd_chat(args: argparse.Namespace) -> int:
    """An interactive terminal chat client."""
    from imlab_app.chat import chat

    if not args.user and not args.token:
        print("imlab chat: give --user NAME (v1-v3) or --token TOKEN (v4)", file=sys.stderr)
        return 2
    return asyncio.run(chat(args.user, args.url, args.token))


# ---------------------------------------------------------------- demo


async def _demo(run_dir: Path) -> int:
    from imlab.client import AsyncChatClient, HistoryRecorder

    with Cluster(ClusterSpec("v2"), run_dir) as cluster:
        rec = HistoryRecorder(run_dir / "history-demo.jsonl")
        names = ("alice", "bob", "carol")
        a, b, c = (AsyncChatClient(n, cluster.endpoints, recorder=rec) for n in names)
        for cl in (a, b, c):
            await cl.connect()
        print(f"v2 up at {cluster.endpoints[0]}, redis {cluster.redis_url}")
        await a.send(to="bob", body="chi le ma? (have you eaten?)")
        group = await a.create_group(["bob", "carol"], "lunch")
        gid = group["group_id"]
        await b.send(group=gid, body="gan sha qu? (where to?)")
        await c.disconnect()
        print("carol drops off; bob and alice keep talking ...")
        await b.send(group=gid, body="qu chi fan (let's eat)")
        await a.send(group=gid, body="noodles?")
        await c.connect()
        conv = f"group:{gid}"
        await c.wait_for(lambda: len(c.messages(conv)) == 3, 5, "carol's catch-up")
        for cl in (a, b, c):
            print(
                f"\n{cl.user} saw (push {cl.received_via['push']}, sync {cl.received_via['sync']}):"
            )
            for conv_id, msgs in sorted(cl.received.items()):
                for m in msgs:
                    print(f"  {conv_id} #{m.seq} {m.sender}: {m.body}")
        for cl in (a, b, c):
            await cl.close()
        rec.close()
    print(f"\nrun folder: {run_dir}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """A scripted three-person conversation on v2: the seed's Lao Wang story, with a drop."""
    return asyncio.run(_demo(new_run_dir("demo", "v2")))


# ---------------------------------------------------------------- token


def cmd_token(args: argparse.Namespace) -> int:
    """Print a signed token for a user of a token stage (v4, v5)."""
    from imlab import auth

    secret, ttl = args.secret, args.ttl
    if secret is None:
        # The stage `imlab up` runs: its own secret (v5 has no default), its token life.
        try:
            run_dir, data = stagectl.find_stage(args.run_dir)
        except stagectl.StageCtlError:
            if args.run_dir is not None:
                raise
            run_dir, data = None, {}
        path = run_dir / SECRET_FILE if run_dir is not None else None
        secret = path.read_text() if path is not None and path.is_file() else DEFAULT_SECRET
        stage = data.get("spec", {}).get("stage")
        if stage in stages.names():
            ttl = stages.stage(stage).token_ttl(ttl)
    print(auth.issue_token(args.user, secret, ttl=ttl))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    """Revoke every token of a user issued until now, on the stage `imlab up` runs (v5)."""
    from imlab.sqlstore import SqlStore

    _, data = stagectl.find_stage(args.run_dir)
    url = data.get("db_url")
    if not url:
        print("imlab revoke: this stage keeps no revocation list (v5 does)", file=sys.stderr)
        return 2

    async def revoke() -> int:
        store = SqlStore(str(url), max_size=1)
        await store.start()
        try:
            return await store.revoke(user=args.user, issued_before=time.time() + 1)
        finally:
            await store.close()

    row = asyncio.run(revoke())
    print(f"revoked every token of {args.user} (revocation {row}); gateways close its "
          "connections within a second")  # fmt: skip
    return 0


# ---------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake said in two lines instead of the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n(`{self.prog} --help` shows the usage)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="imlab", description="A laboratory for the evolution of an IM server (v1..v4)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "serve",
        help="run one stage server in the foreground (v1-v3)",
        description="Run one server of stage v1, v2 or v3 in the foreground until Ctrl-C. "
        "v2 and v3 start their own Redis unless --redis-url is given; v3 also needs a "
        "broker (--kafka-bootstrap), so a whole v3 is easier with `imlab up v3`.",
    )
    s.add_argument("stage", choices=[i.name for i in stages.registry().values() if i.serve])
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--redis-url", default=None, help="v2/v3: Redis to use (default: start one)")
    s.add_argument("--kafka-bootstrap", default=None, help="v3: Kafka bootstrap HOST:PORT")
    s.set_defaults(func=cmd_serve)

    u = sub.add_parser(
        "up",
        help="start a whole stage (Redis, broker, all processes)",
        description="Start every process of a stage on this machine (Redis and the broker "
        "where the stage needs them), print the URLs to chat with, and keep them running "
        "until Ctrl-C. Logs and cluster.json go to the run folder.",
    )
    u.add_argument("stage", choices=stages.names())
    add_cluster_args(u)
    u.add_argument("--run-dir", default=None, help="where logs and the manifest go")
    u.add_argument("--for-seconds", type=float, default=0, help="stop after this long (0: never)")
    u.set_defaults(func=cmd_up)

    c = sub.add_parser(
        "chat",
        help="interactive terminal chat",
        description="A terminal chat client for a running stage: direct messages, groups, "
        "and lines showing drops, reconnects and catch-up by sync. /help inside lists "
        "the commands.",
    )
    c.add_argument("--url", action="append", required=True, help="server URL (repeatable)")
    c.add_argument("--user", default=None, help="user id (v1-v3)")
    c.add_argument("--token", default=None, help="signed token (v4; see `imlab token`)")
    c.set_defaults(func=cmd_chat)

    t = sub.add_parser(
        "token",
        help="issue a signed token for v4/v5",
        description="Print a signed token naming USER, for `imlab chat --token` against v4 "
        "or v5. Without --secret: the secret of the stage `imlab up` runs (v5 makes one per "
        "run), else v4's development default.",
    )
    t.add_argument("user")
    t.add_argument("--secret", default=None, help="the stage's signing secret")
    t.add_argument("--run-dir", default=None, help="the `imlab up` run to read it from")
    t.add_argument(
        "--ttl", type=float, default=3600.0, help="seconds until it expires (v5: 900 at most)"
    )
    t.set_defaults(func=cmd_token)

    rv = sub.add_parser(
        "revoke",
        help="revoke a user's tokens on the running v5",
        description="Revoke every token USER holds on the stage `imlab up` runs (v5): its "
        "connections close within a second and cannot come back until it has a new token.",
    )
    rv.add_argument("user")
    rv.add_argument("--run-dir", default=None, help="the `imlab up` run (default: the newest)")
    rv.set_defaults(func=cmd_revoke)

    d = sub.add_parser(
        "demo",
        help="a scripted conversation on v2 with a drop and a catch-up",
        description="Start v2 with its own Redis, play a three-person conversation in which "
        "one person drops off and catches up by sync, print what each saw, and stop.",
    )
    d.set_defaults(func=cmd_demo)

    for module in _PLUGINS:
        importlib.import_module(module).register(sub)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    for name, sp in sub.choices.items():
        if not sp.description:
            sp.description = _help_of(sub, name)
        # SUPPRESS keeps `imlab --debug CMD` from being reset by the subparser's default.
        sp.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def _help_of(sub: Any, name: str) -> str:
    for action in sub._choices_actions:
        if action.dest == name and action.help:
            text = str(action.help)
            return text[0].upper() + text[1:] + "."
    return name


def error_line(exc: BaseException) -> str:
    """An error as one line a user can act on; the exception type only when it adds meaning."""
    from imlab.client import ClientError
    from imlab_app.chat import ChatError
    from imlab_app.stagectl import StageCtlError

    text = " ".join(str(exc).split())
    known = (ChatError, ClientError, StageCtlError, ValueError, OSError, TimeoutError)
    if isinstance(exc, known) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    install_signal_handlers()
    args = build_parser().parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"imlab {args.command}: {error_line(exc)}", file=sys.stderr)
        print("(imlab --debug ... shows the traceback)", file=sys.stderr)
        return 1
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
