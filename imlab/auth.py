"""Signed identity tokens for stage v4 (seed section 五: "验证playerId1的身份").

A token is a JWT signed with HS256 under a shared secret: `sub` is the user id,
`iat`/`exp` bound its life (integers, at most the lifetime the verifying stage allows),
`jti` names it uniquely. `verify_token` says exactly why a token is refused. This is
identity only: nothing here decides what a user may do, and nothing can revoke a token
before it expires (the seed's open problem (a); `jti` is there so a later stage can keep
a revocation list).
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


def issue_token(
    user: str, secret: str, ttl: float = DEFAULT_TTL, *, now: float | None = None
) -> str:
    """A token for `user`, valid for `ttl` seconds from `now` (default: the clock)."""
    check_user_id(user)
    issued = time.time() if now is None else now
    claims = {
        "sub": user,
        "iat": int(issued),
        "exp": int(issued + ttl),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, check_secret(secret), algorithm=ALGORITHM)


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
