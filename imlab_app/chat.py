"""`imlab chat`: a terminal chat that shows the mechanics the lessons are about.

Besides messages (`12:00:03 [group:g1 #4] bob: text`) it prints a line when the
connection drops, which node a reconnect landed on, and how many messages each
catch-up recovered by sync for which conversation. Acks read as sentences. The
lines come from the client SDK's hooks; the SDK itself prints nothing.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from imlab.client import AsyncChatClient, ClientError, NoServerReachable
from imlab.protocol import Message

HELP = """commands:
  /to USER TEXT          send a direct message
  /group A,B,C [NAME]    create a group with these members (you are added)
  /g GROUP_ID TEXT       send to a group
  /groups                list the groups you know
  /latest                show the latest seq of each conversation
  /drop [SECONDS]        drop the connection; come back at once, or after SECONDS
                         (messages sent to you meanwhile come back by sync)
  /quit                  leave
"""

# The Socket.IO library's own loggers; their lines would interleave with the chat's.
LIBRARY_LOGGERS = ("socketio", "socketio.client", "engineio", "engineio.client")


class ChatError(Exception):
    """The chat cannot start (no server reachable, identity refused)."""


def clock(ts: float) -> str:
    """Local wall-clock time of an epoch timestamp, HH:MM:SS."""
    return time.strftime("%H:%M:%S", time.localtime(ts))


def message_line(m: Message, via: str) -> str:
    seq = "" if m.seq is None else f" #{m.seq}"
    by = "  (by sync)" if via == "sync" else ""
    return f"{clock(m.server_ts)} [{m.conv}{seq}] {m.sender}: {m.body}{by}"


def _error(ack: dict[str, Any]) -> str:
    err = ack.get("error") or {}
    return f"refused: {err.get('code', 'error')}: {err.get('message', '')}".rstrip(": ")


def send_ack_line(ack: dict[str, Any]) -> str:
    if not ack.get("ok"):
        return _error(ack)
    at = ack.get("server_ts")
    when = f" at {clock(at)}" if isinstance(at, int | float) else ""
    if ack.get("seq") is None:
        return f"sent to {ack.get('conv')}{when} (no seq: this stage stores nothing)"
    return f"sent{when}: [{ack.get('conv')} #{ack['seq']}]"


def group_ack_line(ack: dict[str, Any]) -> str:
    if not ack.get("ok"):
        return _error(ack)
    members = ", ".join(str(m) for m in ack.get("members") or [])
    return f"group {ack.get('group_id')} created ({ack.get('conv')}): {members}"


def latest_ack_line(ack: dict[str, Any]) -> str:
    if not ack.get("ok"):
        return _error(ack)
    seqs = ack.get("seqs") or {}
    if not seqs:
        return "latest: no conversations yet"
    return "latest: " + ", ".join(f"{c} #{s}" for c, s in sorted(seqs.items()))


class Screen:
    """Lines printed above the `> ` prompt, whichever task prints them."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.prompting = False  # input() is waiting, its prompt on the last line

    def say(self, line: str) -> None:
        self.out.write(f"\r{line}\n" + ("> " if self.prompting else ""))
        self.out.flush()


def silence_library_logging() -> None:
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).disabled = True


def _client(
    user: str | None, urls: Sequence[str], token: str | None, screen: Screen
) -> AsyncChatClient:
    client = AsyncChatClient(
        user or "anonymous",
        urls,
        token=token,
        on_message=lambda m, via: screen.say(message_line(m, via)),
    )

    def on_connect(url: str, node: str | None, again: bool) -> None:
        if again:
            screen.say(f"* reconnected to {node} ({url})")
        else:
            screen.say(
                f"connected to {node} ({client.stage}) at {url} as {client.user}; "
                "/help for commands"
            )

    def on_disconnect(reason: str | None, again: bool) -> None:
        why = f" ({reason})" if reason else ""
        screen.say(f"* connection dropped{why}; " + ("reconnecting ..." if again else "offline"))

    def on_catch_up(conv: str, n: int, after: int) -> None:
        if n:
            s = "" if n == 1 else "s"
            screen.say(f"* caught up {n} message{s} of {conv} by sync (after #{after})")

    def on_group(g: dict[str, Any]) -> None:
        members = ", ".join(str(m) for m in g.get("members") or [])
        screen.say(f"* added to group {g.get('group_id')} by {g.get('creator')}: {members}")

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_catch_up = on_catch_up
    client.on_group = on_group
    return client


async def _back_after(client: AsyncChatClient, seconds: float, screen: Screen) -> None:
    await asyncio.sleep(seconds)
    try:
        await client.connect()
    except ClientError as exc:
        screen.say(f"* could not come back: {exc}")


async def chat(
    user: str | None, urls: Sequence[str], token: str | None, out: TextIO = sys.stdout
) -> int:
    """Run the chat on stdin until /quit or end of input."""
    silence_library_logging()
    screen = Screen(out)
    client = _client(user, urls, token, screen)
    background: set[asyncio.Task[None]] = set()
    try:
        try:
            await client.connect()
        except NoServerReachable as exc:
            raise ChatError(
                f"no server reachable at {', '.join(urls)} (is the stage up? `imlab up STAGE`)"
            ) from exc
        except ClientError as exc:
            raise ChatError(str(exc)) from exc
        loop = asyncio.get_running_loop()
        while True:
            screen.prompting = True
            try:
                line = (await loop.run_in_executor(None, input, "> ")).strip()
            finally:
                screen.prompting = False
            if not line:
                continue
            cmd, _, rest = line.partition(" ")
            if cmd == "/quit":
                break
            try:
                reply = await _command(client, cmd, rest.strip(), screen, background)
            except ClientError as exc:
                reply = f"error: {exc}"
            if reply:
                out.write(reply + "\n")
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        for task in background:
            task.cancel()
        await client.close()
    return 0


async def _command(
    client: AsyncChatClient,
    cmd: str,
    rest: str,
    screen: Screen,
    background: set[asyncio.Task[None]],
) -> str:
    if cmd == "/help":
        return HELP
    if cmd == "/to":
        to, _, text = rest.partition(" ")
        return send_ack_line(await client.send(to=to, body=text))
    if cmd == "/g":
        gid, _, text = rest.partition(" ")
        return send_ack_line(await client.send(group=gid, body=text))
    if cmd == "/group":
        members, _, name = rest.partition(" ")
        return group_ack_line(await client.create_group([m for m in members.split(",") if m], name))
    if cmd == "/groups":
        groups = client.groups
        return "\n".join(f"{g}: {', '.join(m)}" for g, m in groups.items()) or "(no groups)"
    if cmd == "/latest":
        return latest_ack_line(await client.latest())
    if cmd == "/drop":
        try:
            seconds = float(rest or 0)
        except ValueError:
            return "usage: /drop [SECONDS]"
        if seconds <= 0:
            await client.disconnect(reconnect=True)
            return ""
        await client.disconnect(reconnect=False)
        task = asyncio.ensure_future(_back_after(client, seconds, screen))
        background.add(task)
        task.add_done_callback(background.discard)
        return f"* staying offline for {seconds:g} s"
    return "unknown command; /help lists them"
