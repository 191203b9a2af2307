"""Unit tests of `imlab.auth`: tokens round-trip, and every bad token is refused
with its own reason (the gateway passes the reason to the client at connect)."""

from __future__ import annotations

import time

import jwt
import pytest

from imlab import auth

SECRET = "s" * 32


def test_token_round_trip_carries_user_and_lifetime() -> None:
    now = float(int(time.time()))
    token = auth.issue_token("alice", SECRET, ttl=60, now=now)
    ident = auth.verify_token(token, SECRET)
    assert ident.user == "alice"
    assert (ident.issued_at, ident.expires_at) == (now, now + 60)
    assert len(ident.token_id) == 32


def test_every_token_has_its_own_id() -> None:
    a = auth.verify_token(auth.issue_token("alice", SECRET), SECRET)
    b = auth.verify_token(auth.issue_token("alice", SECRET), SECRET)
    assert a.token_id != b.token_id


def _signed(claims: dict[str, object], key: str = SECRET) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


# Built at collection time, judged maybe many minutes later (the whole suite runs in
# between): valid claims live an hour, the "future" token is issued a month ahead.
NOW = time.time()
FULL = {"sub": "alice", "iat": int(NOW), "exp": int(NOW + 3600), "jti": "j1"}
MONTH = 30 * 86400

REFUSED: list[tuple[str, object, str]] = [
    ("none", None, "missing token"),
    ("empty", "", "missing token"),
    ("not a string", {"sub": "alice"}, "token must be a string"),
    ("garbage", "abc.def.ghi", "malformed token"),
    ("forged", _signed(FULL, "f" * 32), "bad token signature"),
    ("expired", auth.issue_token("alice", SECRET, ttl=-1), "token expired"),
    ("alg none", jwt.encode({"sub": "alice"}, None, algorithm="none"), "not signed with HS256"),
    ("no jti", _signed({k: v for k, v in FULL.items() if k != "jti"}), "lacks the 'jti'"),
    ("no exp", _signed({k: v for k, v in FULL.items() if k != "exp"}), "lacks the 'exp'"),
    ("bad user", _signed({**FULL, "sub": "a b"}), "not a valid user id"),
    ("future", _signed({**FULL, "iat": int(NOW + MONTH), "exp": int(NOW + MONTH + 300)}), "future"),
    (
        "exp as numeric string",
        _signed({**FULL, "exp": str(int(NOW + 3600))}),
        "'exp' must be an int",
    ),
    ("iat as bool", _signed({**FULL, "iat": True}), "'iat' must be an integer"),
    ("exp as float", _signed({**FULL, "exp": NOW + 3600.5}), "'exp' must be an integer"),
    ("exp in year 9999", _signed({**FULL, "exp": 253402300799}), "lifetime exceeds"),
    ("101-digit exp", _signed({**FULL, "exp": int("9" * 101)}), "lifetime exceeds"),
    ("exp before iat", _signed({**FULL, "exp": int(NOW) - 1, "iat": int(NOW)}), "expired"),
    ("jti not a string", _signed({**FULL, "jti": 7}), "JWT ID must be a string"),
    ("subject with a newline", _signed({**FULL, "sub": "alice\n"}), "not a valid user id"),
]


@pytest.mark.parametrize(("case", "token", "reason"), REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_tokens_are_refused_with_a_reason(case: str, token: object, reason: str) -> None:
    with pytest.raises(auth.AuthError) as err:
        auth.verify_token(token, SECRET)
    assert reason in err.value.reason


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        auth.issue_token("alice", "short")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        auth.secret_from_env("short")


def test_secret_comes_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(auth.SECRET_ENV, raising=False)
    with pytest.raises(ValueError, match="no signing secret"):
        auth.secret_from_env(None)
    monkeypatch.setenv(auth.SECRET_ENV, "e" * 40)
    assert auth.secret_from_env(None) == "e" * 40
    assert auth.secret_from_env("x" * 33) == "x" * 33


def test_invalid_user_cannot_get_a_token() -> None:
    with pytest.raises(Exception, match="user must be"):
        auth.issue_token("not ok!", SECRET)


def test_the_stage_sets_the_longest_lifetime() -> None:
    now = float(int(time.time()))
    token = auth.issue_token("alice", SECRET, ttl=7200, now=now)
    assert auth.verify_token(token, SECRET, max_lifetime=7200).expires_at == now + 7200
    with pytest.raises(auth.AuthError, match="lifetime exceeds the 3600 s"):
        auth.verify_token(token, SECRET, max_lifetime=3600)


def test_a_token_stops_proving_anything_when_it_expires() -> None:
    token = auth.issue_token("alice", SECRET, ttl=60, now=1_000_000.0)
    assert auth.verify_token(token, SECRET, now=1_000_059.0).user == "alice"
    with pytest.raises(auth.AuthError, match="token expired"):
        auth.verify_token(token, SECRET, now=1_000_060.0)


def test_refresh_gives_the_same_user_a_new_token_id_and_a_new_life() -> None:
    now = float(int(time.time()))
    old = auth.verify_token(auth.issue_token("alice", SECRET, ttl=60, now=now - 30), SECRET)
    new = auth.refresh_token(old, SECRET, ttl=auth.SHORT_TTL, now=now)
    ident = auth.verify_token(new.token, SECRET, max_lifetime=auth.SHORT_MAX_LIFETIME)
    assert ident == new.identity
    assert ident.user == "alice" and ident.token_id != old.token_id
    assert (ident.issued_at, ident.expires_at) == (now, now + auth.SHORT_TTL)


def test_refresh_refuses_an_expired_identity_and_a_life_beyond_the_limit() -> None:
    ident = auth.verify_token(auth.issue_token("alice", SECRET, ttl=60, now=1000.0), SECRET,
                              now=1010.0)  # fmt: skip
    with pytest.raises(auth.AuthError, match="expired"):
        auth.refresh_token(ident, SECRET, now=1060.0)
    for ttl in (0.5, auth.SHORT_MAX_LIFETIME + 1):
        with pytest.raises(ValueError):
            auth.refresh_token(ident, SECRET, ttl=ttl, now=1010.0)
    assert auth.SHORT_TTL <= auth.SHORT_MAX_LIFETIME < auth.MAX_LIFETIME


def test_a_short_lived_stage_refuses_a_long_token() -> None:
    now = float(int(time.time()))
    token = auth.issue_token("alice", SECRET, ttl=auth.SHORT_MAX_LIFETIME + 1, now=now)
    with pytest.raises(auth.AuthError, match="lifetime"):
        auth.verify_token(token, SECRET, max_lifetime=auth.SHORT_MAX_LIFETIME, now=now)


def test_a_client_can_read_when_its_token_expires_without_the_secret() -> None:
    token = auth.issue_token("alice", SECRET, ttl=60, now=1000.0)
    assert auth.unverified_expiry(token) == 1060.0
    assert auth.unverified_expiry("not a token") is None
    assert auth.unverified_expiry(None) is None
    assert auth.unverified_expiry(jwt.encode({"exp": "soon"}, SECRET, algorithm="HS256")) is None
