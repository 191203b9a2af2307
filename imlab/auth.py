"""Signed identity tokens for stage v4 (seed section 五: "验证playerId1的身份").

A token is a JWT signed with HS256 under a shared secret: `sub` is the user id,
`iat`/`exp` bound its life (integers, at most the lifetime the verifying stage allows),
`jti` names it uniquely. `verify_token` says exactly why a token is refused. This is
identity only: nothing here decides what a user may do, and nothing can revoke a token
before it expires (the seed's open problem (a); `jti` is there so a later stage can keep
a revocation list). `refresh_token` trades a live identity for a new token (new `jti`)
for the same user, so a stage can keep tokens short-lived (`SHORT_TTL`).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass

import jwt

from imlab.protocol import ProtocolError, check_user_id

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32  # RFC 7518 section 3.2: an HS256 key has at least 256 bits
SECRET_ENV = "IMLAB_SECRET"
DEFAULT_TTL = 3600.0
MAX_LIFETIME = 24 * 3600.0  # the default for `verify_token`; a stage may set its own
MAX_TOKEN_ID = 128
# A stage that lets clients refresh their tokens can keep them short-lived: a stolen
# token is then good for minutes. These are the suggested defaults for such a stage.
SHORT_TTL = 300.0
SHORT_MAX_LIFETIME = 900.0
_REQUIRED = ["sub", "iat", "exp", "jti"]
# PyJWT would accept a numeric string (or a float, or a 4,000-digit integer) as a time;
# the times are checked here instead, as integers.
_TIME_CLAIMS = ("iat", "exp", "nbf")


class AuthError(Exception):
    """A token that does not prove an identity; `reason` says why, for the refusal."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Identity:
    """What a verified token proves."""

    user: str
    issued_at: float
    expires_at: float
    token_id: str


def check_secret(secret: str) -> bytes:
    key = secret.encode()
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"the signing secret must be at least {MIN_SECRET_BYTES} bytes long")
    return key


def secret_from_env(explicit: str | None = None) -> str:
    """`explicit` if given, else $IMLAB_SECRET; raises ValueError when neither is set."""
    secret = explicit or os.environ.get(SECRET_ENV)
    if not secret:
        raise ValueError(f"no signing secret: pass --secret or set ${SECRET_ENV}")
    check_secret(secret)
    return secret


@dataclass(frozen=True, slots=True)
class Issued:
    """A new token and what it proves (what `verify_token` would return for it)."""

    token: str
    identity: Identity


def issue(user: str, secret: str, ttl: float = DEFAULT_TTL, *, now: float | None = None) -> Issued:
    """A token for `user`, valid for `ttl` seconds from `now` (default: the clock), with
    a new `jti`."""
    check_user_id(user)
    at = time.time() if now is None else now
    issued, expires = int(at), int(at + ttl)
    jti = uuid.uuid4().hex
    claims = {"sub": user, "iat": issued, "exp": expires, "jti": jti}
    token = jwt.encode(claims, check_secret(secret), algorithm=ALGORITHM)
    return Issued(token, Identity(user, float(issued), float(expires), jti))


def issue_token(
    user: str, secret: str, ttl: float = DEFAULT_TTL, *, now: float | None = None
) -> str:
    """A token for `user`, valid for `ttl` seconds from `now` (default: the clock)."""
    return issue(user, secret, ttl, now=now).token


def refresh_token(
    identity: Identity,
    secret: str,
    ttl: float = SHORT_TTL,
    *,
    now: float | None = None,
    max_lifetime: float = SHORT_MAX_LIFETIME,
) -> Issued:
    """A new token for the user `identity` (a verified token) proves, with a new `jti`,
    valid for `ttl` seconds from `now`. Only a live identity is refreshed: one that has
    expired at `now` raises AuthError (the client must log in again), so a refresh
    never extends a token that could no longer connect. `ttl` must be at least a
    second and at most `max_lifetime` (the lifetime the verifying stage accepts)."""
    at = time.time() if now is None else now
    if not 1 <= ttl <= max_lifetime:
        raise ValueError(f"ttl must be within [1, {max_lifetime:g}] seconds, not {ttl!r}")
    if identity.expires_at <= at:
        raise AuthError("token expired")
    return issue(identity.user, secret, ttl, now=at)


def unverified_expiry(token: object) -> float | None:
    """When `token` says it expires (`exp`), read WITHOUT checking its signature: for a
    client planning its refresh, never for a decision about trust. None if unreadable."""
    if not isinstance(token, str):
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


def verify_token(
    token: object,
    secret: str,
    *,
    leeway: float = 0.0,
    max_lifetime: float = MAX_LIFETIME,
    now: float | None = None,
) -> Identity:
    """The identity `token` proves at `now` (default: the clock), or AuthError with the
    reason it proves none. A token may live at most `max_lifetime` seconds."""
    if token is None or token == "":
        raise AuthError("missing token")
    if not isinstance(token, str):
        raise AuthError("token must be a string")
    try:
        claims = jwt.decode(
            token,
            check_secret(secret),
            algorithms=[ALGORITHM],
            leeway=leeway,
            options={
                "require": _REQUIRED,
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise AuthError("bad token signature (forged, or signed with another secret)") from None
    except jwt.InvalidAlgorithmError:
        raise AuthError(f"token not signed with {ALGORITHM}") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"token lacks the {exc.claim!r} claim") from None
    except jwt.DecodeError:
        raise AuthError("malformed token") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from None
    user = claims["sub"]
    try:
        check_user_id(user)
    except ProtocolError:
        raise AuthError("token subject is not a valid user id") from None
    issued, expires = _check_times(
        claims, time.time() if now is None else now, leeway, max_lifetime
    )
    jti = claims["jti"]
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_TOKEN_ID or not jti.isprintable():
        raise AuthError(f"token id (jti) must be 1-{MAX_TOKEN_ID} printable characters")
    return Identity(user=user, issued_at=float(issued), expires_at=float(expires), token_id=jti)


def _check_times(
    claims: dict[str, object], now: float, leeway: float, max_lifetime: float
) -> tuple[int, int]:
    for name in _TIME_CLAIMS:
        value = claims.get(name)
        if name in claims and (isinstance(value, bool) or not isinstance(value, int)):
            raise AuthError(f"token claim {name!r} must be an integer (seconds since the epoch)")
    issued, expires = claims["iat"], claims["exp"]
    assert isinstance(issued, int) and isinstance(expires, int)
    if expires <= now - leeway:
        raise AuthError("token expired")
    if issued > now + leeway:
        raise AuthError("token issued in the future")
    nbf = claims.get("nbf")
    if isinstance(nbf, int) and nbf > now + leeway:
        raise AuthError("token not valid yet (nbf)")
    if expires <= issued:
        raise AuthError("token expires before it was issued")
    if expires - issued > max_lifetime:
        raise AuthError(f"token lifetime exceeds the {max_lifetime:.0f} s this stage allows")
    return issued, expires
