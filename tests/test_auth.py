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


NOW = time.time()
FULL = {"sub": "alice", "iat": int(NOW), "exp": int(NOW + 60), "jti": "j1"}

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
    ("future", _signed({**FULL, "iat": int(NOW + 600), "exp": int(NOW + 900)}), "future"),
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
