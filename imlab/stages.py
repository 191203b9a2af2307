"""The registry of stages: what each `versions/vN/` declares about itself in its
`stage.toml` (its features, its kinds of process and their default counts, how
clients identify themselves, the services it needs, its model, the faults that show
its lessons). Everything outside `versions/` asks here instead of testing a stage's
name; a new stage is a new folder with a `stage.toml`. The stages' code is never
imported: a role names its module, which is run as a process.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from imlab import protocol as p

AUTH_KINDS = ("user", "token")
# "sentinel": a Redis Sentinel set (master, replica, 3 sentinels) instead of one Redis;
# "postgres": a PostgreSQL server (imlab.services)
SERVICES = ("redis", "kafka", "sentinel", "postgres")

# The seed numbers its sections 一..六; docs/SEED.md maps them. Whatever imlab prints
# (reports, the tour) says "seed §N": a machine without a CJK font shows the Chinese
# numerals as empty boxes.
SEED_NUMERALS = "一二三四五六"


def seed_ref(section: str | int) -> str:
    """`"四"` (or `4`, `"4"`) as `"seed §4"`."""
    text = str(section).strip()
    if text in SEED_NUMERALS:
        return f"seed §{SEED_NUMERALS.index(text) + 1}"
    if text.isascii() and text.isdigit():
        return f"seed §{int(text)}"
    raise ValueError(f"not a section of the seed: {section!r} (一..六 or 1..6)")


@dataclass(frozen=True)
class Role:
    """One kind of process of a stage (`server`, `gateway`, `worker`)."""

    name: str
    module: str
    count: int
    client_facing: bool
    scalable: bool


@dataclass(frozen=True)
class StageInfo:
    name: str
    title: str
    seed_section: str
    features: frozenset[str]
    auth: str
    needs: frozenset[str]
    serve: bool
    model: str
    roles: tuple[Role, ...]
    faults_full: tuple[str, ...]
    faults_quick: tuple[str, ...]
    stores_before_publish: bool = False
    max_token_life: float | None = None  # seconds; tokens living longer are refused
    secret_per_run: bool = False  # no usable default secret: each run makes its own

    @property
    def needs_redis(self) -> bool:
        return "redis" in self.needs

    @property
    def needs_kafka(self) -> bool:
        return "kafka" in self.needs

    @property
    def needs_sentinel(self) -> bool:
        """Redis as a Sentinel set; its processes get a `redis+sentinel://` URL."""
        return "sentinel" in self.needs

    @property
    def needs_postgres(self) -> bool:
        return "postgres" in self.needs

    @property
    def uses_redis(self) -> bool:
        """Any Redis (one server or a Sentinel set): its processes get `--redis-url`."""
        return self.needs_redis or self.needs_sentinel

    @property
    def uses_tokens(self) -> bool:
        return self.auth == "token"

    @property
    def keeps_revocations(self) -> bool:
        """Tokens can be revoked before they expire (a revocation list in the stage's
        database, feature "authz"): what `imlab revoke` and `token-revoke` need."""
        return self.uses_tokens and self.needs_postgres and p.FEATURE_AUTHZ in self.features

    def token_ttl(self, wanted: float) -> float:
        """The life to give a client's token: `wanted`, within what the stage accepts."""
        return wanted if self.max_token_life is None else min(wanted, self.max_token_life)

    @property
    def has_groups(self) -> bool:
        return p.FEATURE_GROUPS in self.features

    @property
    def front(self) -> Role:
        """The client-facing role (servers, gateways)."""
        return next(r for r in self.roles if r.client_facing)

    @property
    def back(self) -> Role | None:
        """The role behind it, if any (v4's workers)."""
        return next((r for r in self.roles if not r.client_facing), None)

    @property
    def seed_ref(self) -> str:
        """The seed's section as printed: `seed §4` (never the Chinese numeral)."""
        return seed_ref(self.seed_section)


def _parse(data: dict[str, Any], where: str) -> StageInfo:
    try:
        roles = tuple(
            Role(
                r["name"],
                r["module"],
                int(r["count"]),
                bool(r["client_facing"]),
                bool(r["scalable"]),
            )
            for r in data["roles"]
        )
        info = StageInfo(
            name=str(data["name"]),
            title=str(data["title"]),
            seed_section=str(data["seed_section"]),
            features=frozenset(data["features"]),
            auth=str(data["auth"]),
            needs=frozenset(data["needs"]),
            serve=bool(data["serve"]),
            model=str(data.get("model", "")),
            roles=roles,
            faults_full=tuple(data["faults"]["full"]),
            faults_quick=tuple(data["faults"]["quick"]),
            stores_before_publish=bool(data.get("stores_before_publish", False)),
            secret_per_run=bool(data.get("secret_per_run", False)),
            max_token_life=(float(data["max_token_life"]) if "max_token_life" in data else None),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: not a valid stage declaration ({exc!r})") from None
    try:
        seed_ref(info.seed_section)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if info.auth not in AUTH_KINDS or not info.needs <= set(SERVICES):
        raise ValueError(f"{where}: auth must be one of {AUTH_KINDS}, needs within {SERVICES}")
    if info.needs_redis and info.needs_sentinel:
        raise ValueError(f"{where}: needs one Redis, either redis or sentinel")
    if sum(r.client_facing for r in roles) != 1:
        raise ValueError(f"{where}: a stage has exactly one client-facing role")
    return info


@functools.cache
def registry() -> dict[str, StageInfo]:
    """Every stage found under `versions/`, in name order."""
    found: dict[str, StageInfo] = {}
    root = resources.files("versions")
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        decl = entry / "stage.toml"
        if entry.is_dir() and decl.is_file():
            info = _parse(tomllib.loads(decl.read_text(encoding="utf-8")), str(decl))
            found[info.name] = info
    return found


def names() -> tuple[str, ...]:
    return tuple(registry())


def stage(name: str) -> StageInfo:
    """The stage called `name`; ValueError naming the choices when there is none."""
    try:
        return registry()[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; choose from {', '.join(registry())}") from None
