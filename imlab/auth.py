"""Signed identity tokens for stage v4 (seed section 五: "验证playerId1的身份").

A token is a JWT signed with HS256 under a shared secret: `sub` is the user id,
`iat`/`exp` bound its life, `jti` names it uniquely. `verify_token` says exactly
why a token is refused. This is identity only: nothing here decides what a user
may do, and nothing can revoke a token before it expires (the seed's open
problem (a); `jti` is there so a later stage can keep a revocation list).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass

import jwt

from imlab.protocol import check_user_id

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32  # RFC 7518 section 3.2: an HS256 key has at least 256 bits
SECRET_ENV = "IMLAB_SECRET"
DEFAULT_TTL = 3600.0
_REQUIRED = ["sub", "iat", "exp", "jti"]


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


def verify_token(token: object, secret: str, *, leeway: float = 0.0) -> Identity:
    """The identity `token` proves, or AuthError with the reason it proves none."""
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
            options={"require": _REQUIRED},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidSignatureError:
        raise AuthError("bad token signature (forged, or signed with another secret)") from None
    except jwt.InvalidAlgorithmError:
        raise AuthError(f"token not signed with {ALGORITHM}") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"token lacks the {exc.claim!r} claim") from None
    except jwt.ImmatureSignatureError:
        raise AuthError("token issued in the future") from None
    except jwt.DecodeError:
        raise AuthError("malformed token") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from None
    user = claims["sub"]
    try:
        check_user_id(user)
    except Exception:
        raise AuthError("token subject is not a valid user id") from None
    return Identity(
        user=user,
        issued_at=float(claims["iat"]),
        expires_at=float(claims["exp"]),
        token_id=str(claims["jti"]),
    )
