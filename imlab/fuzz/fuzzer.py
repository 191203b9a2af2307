"""The project's own fuzz of a running stage, from outside, as a hostile client would:
hypothesis generates payloads for every client event (pure junk and near-valid ones),
Socket.IO's reserved names, unknown events, `auth` objects (and signed tokens with odd
claims) for connect, and packets that cannot be decoded; each goes through a real
Socket.IO client and its answer is tallied: ok, error code, no ack, disconnect.

The cases come from `imlab.fuzz.strategies` (the dev extra's hypothesis).
tests/test_fuzz.py runs a few hundred cases per event; benchmarks/fuzz.py runs
thousands and reports the server's memory too.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import engineio
import socketio

from imlab import protocol as p
from imlab import stages
from imlab.fuzz.strategies import (
    ATTACKS,
    auths,
    cases,
    generate,
    token_attacks,
    undecodable,
    undecodable_connects,
)

EVENT_KINDS = (p.HELLO, p.SEND, p.CREATE_GROUP, p.LATEST, p.SYNC, "unknown", "reserved")


def event_kinds(features: Iterable[str] = ()) -> tuple[str, ...]:
    """The kinds to fuzz on a stage with `features`: the base ones, and the events each
    feature adds (`refresh`, `receipt`, `group_add`, ...; p.FEATURE_EVENTS)."""
    have = set(features)
    extra = [e for f, events in p.FEATURE_EVENTS.items() if f in have for e in events]
    return EVENT_KINDS + tuple(extra)


DOCUMENTED_CODES = frozenset(str(c) for c in p.ErrorCode) - {"internal"}
SAMPLES = 5  # failing cases kept per tally, for the report


@dataclass
class Tally:
    """What one family of cases got back."""

    tried: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    no_ack: int = 0
    disconnects: int = 0
    skipped: int = 0
    samples: list[str] = field(default_factory=list)
    # connects: attempts per hostile token kind (strategies.ATTACKS), and how many of
    # those the stage let in (each one a hole: they must all be refused)
    attacks: Counter[str] = field(default_factory=Counter)
    accepted_bad: int = 0

    @property
    def internal(self) -> int:
        return self.errors["internal"]

    def bad(self, what: str, case: object) -> None:
        if len(self.samples) < SAMPLES:
            self.samples.append(f"{what}: {case!r}"[:300])

    def summary(self) -> dict[str, Any]:
        return {
            "tried": self.tried,
            "ok": self.ok,
            "errors": dict(sorted(self.errors.items())),
            "no_ack": self.no_ack,
            "disconnects": self.disconnects,
            "internal": self.internal,
            "skipped": self.skipped,
            "attacks": dict(sorted(self.attacks.items())),
            "accepted_bad": self.accepted_bad,
        }


class Fuzzer:
    """Runs generated cases against one endpoint of a running stage."""

    def __init__(
        self,
        url: str,
        stage: str,
        secret: str | None = None,
        *,
        timeout: float = 5.0,
        token_ttl: float | None = None,
        db_url: str | None = None,
    ) -> None:
        self.url = url
        self.db_url = db_url  # a stage with revocation (v5): revoked tokens are tried too
        self.token_ttl = token_ttl  # None: auth.DEFAULT_TTL; a short-lived stage needs less
        self.stage = stage
        self.secret = secret
        self.timeout = timeout
        self.tag = uuid.uuid4().hex[:6]

    def auth_for(self, user: str) -> dict[str, Any]:
        if stages.stage(self.stage).uses_tokens:
            from imlab import auth

            assert self.secret is not None, "v4 needs the token secret"
            ttl = auth.DEFAULT_TTL if self.token_ttl is None else self.token_ttl
            return {"token": auth.issue_token(user, self.secret, ttl)}
        return {"user": user}

    async def login(self, user: str, on_error: Callable[[Any], None] | None = None) -> Any:
        client = socketio.AsyncClient(reconnection=False)
        if on_error is not None:
            client.on(p.ERROR, on_error)
        await client.connect(
            self.url, auth=self.auth_for(user), transports=["websocket"], wait_timeout=10
        )
        return client

    async def events(self, kind: str, n: int, seed: int, *, max_groups: int = 10) -> Tally:
        """`n` generated calls of one event kind on one logged-in client."""
        me, peer = f"fz-{self.tag}-{kind[:4]}", f"fz-{self.tag}-peer"
        tally = Tally()
        groups = 0
        peer_client = await self.login(peer)
        client = await self.login(me)
        try:
            for event, args in generate(cases(kind, me, peer), n, seed):
                if event == p.CREATE_GROUP and _valid_group(args, me):
                    if groups >= max_groups:
                        tally.skipped += 1
                        continue
                    groups += 1
                tally.tried += 1
                if not client.connected:
                    tally.disconnects += 1
                    tally.bad("disconnected before", (event, args))
                    client = await self.login(me)
                try:
                    ack = await client.call(event, args, timeout=self.timeout)
                except socketio.exceptions.TimeoutError:
                    if client.connected:
                        tally.no_ack += 1
                        tally.bad("no ack", (event, args))
                    else:
                        tally.disconnects += 1
                        tally.bad("disconnect", (event, args))
                    continue
                _classify(tally, ack, (event, args))
            hello = await client.call(p.HELLO, {}, timeout=self.timeout)
            if not (isinstance(hello, dict) and hello.get("user") == me):
                tally.bad("session changed", hello)
                tally.errors["session_changed"] += 1
        finally:
            await client.disconnect()
            await peer_client.disconnect()
        return tally

    async def connects(self, n: int, seed: int) -> Tally:
        """`n` connect attempts with generated `auth`: each is accepted (and then answers
        `hello` for the identity it claimed) or refused with a code and a reason. On a
        stage with tokens half of them carry a hostile token (`strategies.ATTACKS`:
        expired, forged, `alg: none`, another algorithm, wrong-typed claims, too long a
        life where the stage caps it, revoked where `db_url` reaches its revocations),
        as many of each kind, which must all be refused."""
        tally = Tally()
        attempts: list[tuple[str | None, Any]] = []
        hostile = await self._attacks(n // 2, seed) if self._has_tokens else []
        generic = generate(auths(self.stage, self.secret), n - len(hostile), seed)
        attempts = [(None, a) for a in generic]
        # interleaved, so a stage that degrades shows it in both families
        step = max(1, len(attempts) // max(1, len(hostile)))
        for i, one in enumerate(hostile):
            attempts.insert(min(len(attempts), i * (step + 1)), one)
        for attack, auth_data in attempts:
            tally.tried += 1
            if attack is not None:
                tally.attacks[attack] += 1
            client = socketio.AsyncClient(reconnection=False)
            refusals: list[Any] = []
            client.on("connect_error", refusals.append)
            try:
                await client.connect(
                    self.url, auth=auth_data, transports=["websocket"], wait_timeout=self.timeout
                )
            except socketio.exceptions.ConnectionError as exc:
                reason = p.parse_refusal(refusals[0]) if refusals else None
                if reason is None or not reason["message"]:
                    tally.no_ack += 1
                    tally.bad(f"refused without a reason ({exc})", auth_data)
                else:
                    tally.errors[reason["code"]] += 1
                    if reason["code"] not in DOCUMENTED_CODES:
                        tally.bad(f"refused with {reason}", auth_data)
                await client.disconnect()
                continue
            if attack is not None:
                tally.accepted_bad += 1
                tally.bad(f"{attack} token accepted", auth_data)
            try:
                hello = await client.call(p.HELLO, {}, timeout=self.timeout)
                _classify(tally, hello, auth_data)
            except socketio.exceptions.TimeoutError:
                tally.no_ack += 1
                tally.bad("connected, no hello ack", auth_data)
            finally:
                await client.disconnect()
        return tally

    @property
    def _has_tokens(self) -> bool:
        return stages.stage(self.stage).uses_tokens and self.secret is not None

    async def _attacks(self, n: int, seed: int) -> list[tuple[str | None, Any]]:
        """`n` hostile token attempts, as many of each kind that applies to the stage."""
        assert self.secret is not None
        info = stages.stage(self.stage)
        kinds = [a for a in ATTACKS if a not in ("too_long", "revoked")]
        if info.max_token_life is not None:
            kinds.append("too_long")
        revoked: list[str] = []
        if self.db_url is not None:
            revoked = await self._revoked_tokens()
            kinds.append("revoked")
        max_life = int(info.max_token_life or 86_400)
        out: list[tuple[str | None, Any]] = []
        for k, kind in enumerate(kinds):
            share = n // len(kinds) + (k < n % len(kinds))
            strategy = token_attacks(kind, self.secret, max_life=max_life, revoked=revoked)
            out += [(kind, a) for a in generate(strategy, share, seed + k)]
        return out

    async def _revoked_tokens(self, users: int = 6, per_user: int = 4) -> list[str]:
        """Tokens that were good, then revoked in the stage's database: every token of
        half the users (by user and time), one token each of the others (by its id)."""
        from imlab import auth
        from imlab.sqlstore import SqlStore

        assert self.secret is not None and self.db_url is not None
        ttl = self.token_ttl if self.token_ttl is not None else 300.0
        store = SqlStore(self.db_url, max_size=1)
        await store.start()
        tokens: list[str] = []
        try:
            for u in range(users):
                user = f"fz-{self.tag}-revoked-{u}"
                issued = [auth.issue(user, self.secret, ttl) for _ in range(per_user)]
                if u % 2 == 0:
                    await store.revoke(user=user, issued_before=time.time() + 1.0)
                    tokens += [i.token for i in issued]
                else:
                    await store.revoke(token_id=issued[0].identity.token_id)
                    tokens.append(issued[0].token)
        finally:
            await store.close()
        return tokens

    async def undecodable(self, n: int, seed: int) -> Tally:
        """`n` undecodable packets, half on a logged-in connection (it must get an `error`
        event and be disconnected), half in place of the connect (a `connect_error`)."""
        tally = Tally()
        frames = generate(undecodable(), n - n // 2, seed)
        for frame in frames:
            tally.tried += 1
            errors: list[Any] = []
            client = await self.login(f"fz-{self.tag}-raw", errors.append)
            for part in frame:
                await client.eio.send(part)
            deadline = time.monotonic() + self.timeout
            while (client.connected or not errors) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if errors and not client.connected:
                tally.disconnects += 1
                tally.errors[str(errors[0].get("code"))] += 1
            else:
                tally.no_ack += 1
                tally.bad("not closed with a reason", frame)
            await client.disconnect()
        for raw in generate(undecodable_connects(), n // 2, seed):
            try:
                raw.encode("utf-8")
            except UnicodeEncodeError:
                continue  # no client can put it on the wire: a text frame is UTF-8
            tally.tried += 1
            reply = await self._raw_connect(raw)
            if reply is None:
                tally.no_ack += 1
                tally.bad("no connect_error", raw)
                continue
            tally.errors[reply["code"]] += 1
            if reply["code"] not in DOCUMENTED_CODES or not reply["message"]:
                tally.bad(f"connect refused with {reply}", raw)
        return tally

    async def _raw_connect(self, frame: str) -> dict[str, str] | None:
        eio = engineio.AsyncClient()
        got: asyncio.Queue[Any] = asyncio.Queue()
        eio.on("message", got.put_nowait)
        await eio.connect(self.url, transports=["websocket"], engineio_path="socket.io")
        try:
            await eio.send(frame)
            reply = await asyncio.wait_for(got.get(), timeout=self.timeout)
        except TimeoutError:
            return None
        finally:
            await eio.disconnect()
        if not (isinstance(reply, str) and reply.startswith(str(socketio.packet.CONNECT_ERROR))):
            return {"code": "unexpected", "message": str(reply)[:100]}
        return p.parse_refusal(socketio.packet.Packet(encoded_packet=reply).data)

    async def pair_still_chats(self) -> bool:
        """A fresh pair of clients can still exchange a direct message."""
        a_user, b_user = f"fz-{self.tag}-after-a", f"fz-{self.tag}-after-b"
        got: asyncio.Queue[Any] = asyncio.Queue()
        b = await self.login(b_user)
        b.on(p.MESSAGE, got.put_nowait)
        a = await self.login(a_user)
        try:
            send = {"to": b_user, "client_msg_id": "after", "body": "still here", "sent_at": 1.0}
            ack = await a.call(p.SEND, send, timeout=self.timeout)
            msg = await asyncio.wait_for(got.get(), timeout=self.timeout)
            return bool(ack.get("ok")) and msg.get("sender") == a_user
        finally:
            await a.disconnect()
            await b.disconnect()


def _valid_group(args: tuple[Any, ...], me: str) -> bool:
    try:
        p.parse_create_group(args[0] if len(args) == 1 else None, me)
    except p.ProtocolError:
        return False
    return len(args) == 1


def _classify(tally: Tally, ack: object, case: object) -> None:
    if not isinstance(ack, dict) or not isinstance(ack.get("ok"), bool):
        tally.errors["malformed_ack"] += 1
        tally.bad(f"malformed ack {ack!r}", case)
    elif ack["ok"]:
        tally.ok += 1
    else:
        code = str(ack.get("error", {}).get("code"))
        tally.errors[code] += 1
        if code not in DOCUMENTED_CODES:
            tally.bad(f"error {ack['error']}", case)
