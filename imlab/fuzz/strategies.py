"""What the fuzz sends: hypothesis strategies for every client event's payload (junk
and near-valid), Socket.IO's reserved names, connect `auth` objects and signed tokens
with odd claims, and packets that cannot be decoded; `generate` draws from them.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

import jwt
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from imlab import protocol as p
from imlab import stages

T = TypeVar("T")


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
    convs = st.one_of(
        st.just(p.dm_conv(me, peer)),
        _group_ids.map(lambda g: f"group:{g}"),
        st.builds(lambda a, b: f"dm:{a}:{b}", _near_ids, _near_ids),
        _text,
    )
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
        near = {"conv": _maybe(convs), "after_seq": _maybe(_ints), "limit": _maybe(_ints)}
    elif event == p.RECEIPT:
        near = {"conv": _maybe(convs), "seq": _maybe(_ints)}
    elif event in (p.GROUP_ADD, p.GROUP_REMOVE):
        near = {
            "group": _maybe(_group_ids),
            "members": _maybe(st.lists(users, min_size=0, max_size=5)),
        }
    elif event == p.GROUP_LEAVE:
        near = {"group": _maybe(_group_ids)}
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
    if event == p.RECEIPT:
        return {"conv": st.just(p.dm_conv(me, peer)), "seq": st.integers(1, 100)}
    if event in (p.GROUP_ADD, p.GROUP_REMOVE):
        members = st.lists(st.just(peer) | _user_ids, min_size=1, max_size=5)
        return {"group": st.from_regex(r"g[0-9]{1,4}", fullmatch=True), "members": members}
    if event == p.GROUP_LEAVE:
        return {"group": st.from_regex(r"g[0-9]{1,4}", fullmatch=True)}
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
            lambda s: s not in p.ALL_CLIENT_EVENTS and s not in p.RESERVED_EVENTS
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


# ---------------------------------------------------------------- hostile tokens

# The kinds of token a stage with tokens must refuse, whatever else is in them.
ATTACKS = ("expired", "forged", "alg_none", "wrong_alg", "wrong_type", "too_long", "revoked")


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(claims: dict[str, Any], alg: str) -> str:
    """A token with header `alg` and no signature (the `alg: none` trick)."""
    import json

    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{header}.{body}."


def _sign(claims: dict[str, Any], key: str, alg: str) -> str:
    """`claims` signed; PyJWT's warning that a key is short for HS384/512 is beside the point."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jwt.encode(claims, key, algorithm=alg)


def _claims(user: st.SearchStrategy[str], now: int, life: int) -> st.SearchStrategy[Any]:
    """Claims that would be valid for `life` seconds from about `now`."""
    return st.builds(
        lambda u, back, jti: {"sub": u, "iat": now - back, "exp": now - back + life, "jti": jti},
        user,
        st.integers(0, min(60, life // 2)),
        st.from_regex(r"[a-f0-9]{8,32}", fullmatch=True),
    )


def token_attacks(
    attack: str,
    secret: str,
    *,
    max_life: int = 900,
    revoked: list[str] | None = None,
    now: int | None = None,
) -> st.SearchStrategy[dict[str, Any]]:
    """`auth` objects carrying one kind of token (`ATTACKS`) that must be refused:
    - expired: signed right, `exp` already past;
    - forged: signed with another secret;
    - alg_none: `alg: none` (any spelling), or HS256 claimed with the signature cut off;
    - wrong_alg: signed with the right secret by another algorithm (HS384/HS512);
    - wrong_type: signed right, a claim of the wrong type (sub, iat, exp, jti, nbf);
    - too_long: signed right, living longer than the stage allows (`max_life` s);
    - revoked: one of the tokens in `revoked` (issued, then revoked by the caller).
    """
    at = int(time.time()) if now is None else now
    life = max(2, min(600, max_life))
    users = _user_ids
    good = _claims(users, at, life)
    if attack == "expired":
        past = st.builds(
            lambda u, ago, span, jti: {
                "sub": u,
                "iat": at - ago - span,
                "exp": at - ago,
                "jti": jti,
            },
            users,
            st.integers(1, 10**6),
            st.integers(1, life),
            st.from_regex(r"[a-f0-9]{8}"),
        )
        tokens = past.map(lambda c: jwt.encode(c, secret, algorithm="HS256"))
    elif attack == "forged":
        others = st.from_regex(r"[A-Za-z0-9]{32,48}", fullmatch=True).filter(lambda s: s != secret)
        tokens = st.builds(lambda c, k: jwt.encode(c, k, algorithm="HS256"), good, others)
    elif attack == "alg_none":
        algs = st.sampled_from(["none", "None", "NONE", "nOnE", ""])
        cut = good.map(lambda c: jwt.encode(c, secret, algorithm="HS256").rsplit(".", 1)[0] + ".")
        tokens = st.one_of(st.builds(_unsigned, good, algs), cut)
    elif attack == "wrong_alg":
        algs = st.sampled_from(["HS384", "HS512"])
        tokens = st.builds(lambda c, a: _sign(c, secret, a), good, algs)
    elif attack == "wrong_type":
        odd = st.one_of(
            st.none(),
            st.booleans(),
            st.floats(),
            _text,
            st.lists(_ints, max_size=2),
            st.dictionaries(_text, _ints, max_size=2),
        )
        numeric = st.one_of(
            st.none(),
            st.booleans(),
            _text,
            st.lists(_ints, max_size=2),
            st.floats().filter(lambda f: not f.is_integer() if f == f else True),
            st.integers(at - 10, at + life).map(str),
        )

        def retype(c: dict[str, Any], claim: str, sub: Any, num: Any) -> dict[str, Any]:
            out = dict(c)
            out[claim] = sub if claim in ("sub", "jti") else num
            return out

        names = st.sampled_from(["sub", "iat", "exp", "jti", "nbf"])
        claims = st.builds(
            retype, good, names, odd.filter(lambda v: not isinstance(v, str)), numeric
        )
        tokens = claims.map(lambda c: jwt.encode(c, secret, algorithm="HS256"))
    elif attack == "too_long":
        long = st.builds(
            lambda u, extra, jti: {"sub": u, "iat": at, "exp": at + max_life + extra, "jti": jti},
            users,
            st.integers(60, 10**7),
            st.from_regex(r"[a-f0-9]{8}"),
        )
        tokens = long.map(lambda c: jwt.encode(c, secret, algorithm="HS256"))
    elif attack == "revoked":
        if not revoked:
            raise ValueError("revoked tokens are needed for the `revoked` attack")
        tokens = st.sampled_from(revoked)
    else:
        raise ValueError(f"unknown attack {attack!r}; the attacks are {', '.join(ATTACKS)}")
    return st.fixed_dictionaries({"token": tokens})
