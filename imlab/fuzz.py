"""The project's own fuzz of a running stage, from outside, as a hostile client would:
hypothesis generates payloads for every client event (pure junk and near-valid ones),
Socket.IO's reserved names, unknown events, `auth` objects (and signed tokens with odd
claims) for connect, and packets that cannot be decoded; each goes through a real
Socket.IO client and its answer is tallied: ok, error code, no ack, disconnect.

Needs the dev extra (hypothesis). tests/test_fuzz.py runs a few hundred cases per event;
benchmarks/fuzz.py runs thousands and reports the server's memory too.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import engineio
import jwt
import socketio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from imlab import protocol as p
from imlab import stages

T = TypeVar("T")

EVENT_KINDS = (p.HELLO, p.SEND, p.CREATE_GROUP, p.LATEST, p.SYNC, "unknown", "reserved")
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
        }


def generate(strategy: st.SearchStrategy[T], n: int, seed: int) -> list[T]:
    """Up to `n` values of `strategy` (hypothesis as a generator: no shrinking)."""
    out: list[T] = []

    @settings(
        max_examples=n,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(strategy)
    def collect(value: T) -> None:
        out.append(value)

    hypothesis_seed(seed)(collect)()
    return out


# ---------------------------------------------------------------- strategies

# Integers stay within engine.io's 100-digit limit here: longer ones are undecodable
# packets, fuzzed on their own (they close the connection by design).
_ints = st.integers(min_value=-(10**98), max_value=10**98)
_text = st.text(st.characters(exclude_categories=()), max_size=40)
_scalars = st.none() | st.booleans() | _ints | st.floats() | _text
junk: st.SearchStrategy[Any] = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_user_ids = st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True)
_near_ids = st.one_of(
    _user_ids,
    _user_ids.map(lambda s: s + "\n"),
    st.text(st.characters(codec="ascii"), max_size=70),
)
_group_ids = st.from_regex(r"g[0-9]{1,4}", fullmatch=True) | _near_ids


def _maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(valid, valid, junk)


def payloads(event: str, me: str, peer: str) -> st.SearchStrategy[Any]:
    """Junk, or a dict whose fields are each valid-looking or junk, plus stray fields."""
    users = _maybe(st.sampled_from([peer, me]) | _near_ids)
    near: dict[str, st.SearchStrategy[Any]] = {}
    if event == p.SEND:
        near = {
            "to": users,
            "group": _maybe(_group_ids),
            "client_msg_id": _maybe(st.from_regex(r"[\x21-\x7e]{1,130}", fullmatch=True)),
            "body": _maybe(st.text(st.characters(exclude_categories=()), max_size=300)),
            "sent_at": _maybe(st.floats() | _ints),
            "sender": users,
        }
    elif event == p.CREATE_GROUP:
        near = {
            "members": _maybe(st.lists(users, min_size=0, max_size=5)),
            "name": _maybe(st.text(st.characters(exclude_categories=()), max_size=110)),
        }
    elif event == p.SYNC:
        convs = st.one_of(
            st.just(p.dm_conv(me, peer)),
            _group_ids.map(lambda g: f"group:{g}"),
            st.builds(lambda a, b: f"dm:{a}:{b}", _near_ids, _near_ids),
            _text,
        )
        near = {"conv": _maybe(convs), "after_seq": _maybe(_ints), "limit": _maybe(_ints)}
    dicts = st.fixed_dictionaries({}, optional={**near, "extra": junk})
    valid = st.fixed_dictionaries(_valid_fields(event, me, peer))
    one_off = st.tuples(valid, st.sampled_from(sorted(near) or ["extra"]), junk, st.booleans())
    return st.one_of(junk, dicts, valid, one_off.map(_mutate), one_off.map(_mutate))


def _valid_fields(event: str, me: str, peer: str) -> dict[str, st.SearchStrategy[Any]]:
    if event == p.SEND:
        return {
            "to": st.just(peer),
            "client_msg_id": st.from_regex(r"[\x21-\x7e]{1,128}", fullmatch=True),
            "body": st.text(max_size=300),
            "sent_at": st.floats(allow_nan=False, allow_infinity=False),
        }
    if event == p.CREATE_GROUP:
        members = st.lists(st.just(peer) | _user_ids, min_size=1, max_size=5)
        return {"members": members, "name": st.text(st.characters(codec="utf-8"), max_size=100)}
    if event == p.SYNC:
        return {
            "conv": st.just(p.dm_conv(me, peer)),
            "after_seq": st.integers(0, 100),
            "limit": st.integers(1, p.MAX_SYNC_LIMIT),
        }
    return {}


def _mutate(case: tuple[dict[str, Any], str, Any, bool]) -> dict[str, Any]:
    """A valid payload with one field replaced by junk, or dropped."""
    valid, key, value, drop = case
    out = dict(valid)
    if drop:
        out.pop(key, None)
    else:
        out[key] = value
    return out


def cases(kind: str, me: str, peer: str) -> st.SearchStrategy[tuple[str, tuple[Any, ...]]]:
    """(event name, arguments): mostly one payload, sometimes none or two."""
    if kind == "unknown":
        names: st.SearchStrategy[str] = _text.filter(
            lambda s: s not in p.CLIENT_EVENTS and s not in p.RESERVED_EVENTS
        )
        event = p.HELLO
    elif kind == "reserved":
        names = st.sampled_from(sorted(p.RESERVED_EVENTS))
        event = p.HELLO
    else:
        names = st.just(kind)
        event = kind
    one = payloads(event, me, peer).map(lambda x: (x,))
    args = st.one_of(one, one, one, st.just(()), st.tuples(junk, junk))
    return st.tuples(names, args)


def auths(stage: str, secret: str | None) -> st.SearchStrategy[Any]:
    now = int(time.time())
    times = st.one_of(
        st.integers(now - 100, now + 100_000),
        st.integers(-(10**30), 10**30),
        st.integers(now, now + 100).map(str),
        st.booleans(),
        st.floats(),
    )
    near: st.SearchStrategy[Any] = st.fixed_dictionaries({}, optional={"user": _maybe(_near_ids)})
    if stages.stage(stage).uses_tokens and secret is not None:
        claims = st.fixed_dictionaries(
            {},
            optional={
                "sub": _maybe(_near_ids),
                "iat": times,
                "exp": times,
                "jti": _maybe(_text),
                "nbf": times,
            },
        )
        key = secret
        tokens = claims.map(lambda c: jwt.encode(c, key, algorithm="HS256"))
        near = st.fixed_dictionaries({"token": st.one_of(tokens, tokens, junk)})
    return st.one_of(junk, near, near)


# ---------------------------------------------------------------- undecodable input

_BIG = st.integers(101, 400).map(lambda n: "9" * n)
_DEEP = st.integers(1000, 5000).map(lambda n: "[" * n + "]" * n)


def undecodable() -> st.SearchStrategy[list[str | bytes]]:
    """Engine.io message frames python-socketio cannot decode (a connection's last words)."""
    payload = st.one_of(
        _BIG.map(lambda b: f'{{"sent_at":{b}}}'), _DEEP, _BIG.map(lambda b: f"[{b}]")
    )
    event = st.builds(lambda e, x: f'21["{e}",{x}]', st.sampled_from(p.CLIENT_EVENTS), payload)
    binary = st.builds(
        lambda x, atts: [f'51-7["{p.SEND}",{x}]', *atts],
        payload,
        st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=3),
    )
    return st.one_of(event.map(lambda f: [f]), binary)


def undecodable_connects() -> st.SearchStrategy[str]:
    return st.one_of(
        _BIG.map(lambda b: f'0{{"user":{b},"token":{b}}}'),
        _DEEP.map(lambda d: f"0{d}"),
        st.just('51-{"_placeholder":true,"num":0}'),
        _text.map(lambda t: "0{" + t),
    )


# ---------------------------------------------------------------- the fuzzer


class Fuzzer:
    """Runs generated cases against one endpoint of a running stage."""

    def __init__(
        self, url: str, stage: str, secret: str | None = None, *, timeout: float = 5.0
    ) -> None:
        self.url = url
        self.stage = stage
        self.secret = secret
        self.timeout = timeout
        self.tag = uuid.uuid4().hex[:6]

    def auth_for(self, user: str) -> dict[str, Any]:
        if stages.stage(self.stage).uses_tokens:
            from imlab import auth

            assert self.secret is not None, "v4 needs the token secret"
            return {"token": auth.issue_token(user, self.secret)}
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
        `hello` for the identity it claimed) or refused with a code and a reason."""
        tally = Tally()
        for auth_data in generate(auths(self.stage, self.secret), n, seed):
            tally.tried += 1
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
            try:
                hello = await client.call(p.HELLO, {}, timeout=self.timeout)
                _classify(tally, hello, auth_data)
            except socketio.exceptions.TimeoutError:
                tally.no_ack += 1
                tally.bad("connected, no hello ack", auth_data)
            finally:
                await client.disconnect()
        return tally

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
