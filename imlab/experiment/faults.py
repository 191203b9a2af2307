"""The fault spec shared by the simulator and the real load tool, parsed into dataclasses.

A spec is a comma-separated list such as
`redis-outage:30s@60s,kafka-loss:0.01,broker-kill:10s@30s,crash:gateway-1@45s,churn:0.2`.
A Sentinel set (v5) adds `redis-master-kill@20s` and PostgreSQL `db-restart:5s@30s`;
a stage with a revocation list (v5) `token-revoke:3@4s`.
Times are offsets from the start of the run. Part of the experiment contract
(`imlab.experiment`): the simulator, the load tool and the fault injector read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise
from typing import ClassVar

__all__ = [
    "REDIS_MASTER_DOWN",
    "RUN_LONG",
    "BrokerDown",
    "BrokerKill",
    "Churn",
    "Crash",
    "DbRestart",
    "Fault",
    "FaultPlan",
    "FaultSpecError",
    "KafkaLoss",
    "RedisMasterKill",
    "RedisOutage",
    "RedisRestart",
    "TokenRevoke",
    "format_duration",
    "parse_duration",
    "parse_faults",
]


class FaultSpecError(ValueError):
    """A fault spec that cannot be parsed; the message names the item and the expected form."""


@dataclass(frozen=True, slots=True)
class _Window:
    """A fault with a time window: it starts at `start` and lasts `duration` seconds."""

    start: float
    duration: float
    kind: ClassVar[str] = "window"
    target: ClassVar[str] = ""

    @property
    def end(self) -> float:
        return self.start + self.duration

    def window(self, run_end: float) -> tuple[float, float]:
        return self.start, min(self.end, run_end)

    def spec(self) -> str:
        return f"{self.kind}:{format_duration(self.duration)}@{format_duration(self.start)}"


@dataclass(frozen=True, slots=True)
class RedisOutage(_Window):
    """Redis answers nothing from `start` for `duration` seconds."""

    kind: ClassVar[str] = "redis-outage"
    target: ClassVar[str] = "redis"


@dataclass(frozen=True, slots=True)
class RedisRestart(_Window):
    """Redis is killed at `start` and started again `duration` seconds later (same port).

    Live runs keep an append-only file, so what Redis had acknowledged survives."""

    kind: ClassVar[str] = "redis-restart"
    target: ClassVar[str] = "redis"


# How long a killed Redis master stays down before it is started again (as a replica)
# when the spec does not say: `redis-master-kill@T` = `redis-master-kill:5s@T`.
REDIS_MASTER_DOWN = 5.0


@dataclass(frozen=True, slots=True)
class RedisMasterKill(_Window):
    """The current master of a Redis Sentinel set is killed (SIGKILL) at `start`; the
    sentinels promote its replica, and the killed node is started again `duration`
    seconds later as a replica of the new master. The window is the node's absence;
    clients see errors only until the failover (about 2.3 s, docs/SERVICES.md)."""

    kind: ClassVar[str] = "redis-master-kill"
    target: ClassVar[str] = "redis"

    def spec(self) -> str:
        at = format_duration(self.start)
        if self.duration == REDIS_MASTER_DOWN:
            return f"{self.kind}@{at}"
        return f"{self.kind}:{format_duration(self.duration)}@{at}"


@dataclass(frozen=True, slots=True)
class DbRestart(_Window):
    """PostgreSQL is stopped (a fast shutdown) at `start` and started again `duration`
    seconds later; it keeps its data."""

    kind: ClassVar[str] = "db-restart"
    target: ClassVar[str] = "postgres"


@dataclass(frozen=True, slots=True)
class BrokerDown(_Window):
    """A Kafka broker is stopped at `start` (a controlled shutdown) and started again
    `duration` seconds later; with `scope="all"` every broker of the cluster is.

    Apache Kafka keeps its data across the restart; a memory-only broker (Tansu)
    comes back empty. On a one-broker cluster "one" is the whole cluster."""

    scope: str = "one"
    kind: ClassVar[str] = "broker-down"
    target: ClassVar[str] = "kafka"

    def spec(self) -> str:
        scope = "all:" if self.scope == "all" else ""
        return f"{self.kind}:{scope}{format_duration(self.duration)}@{format_duration(self.start)}"


@dataclass(frozen=True, slots=True)
class BrokerKill(BrokerDown):
    """As `BrokerDown`, but the broker is killed (SIGKILL): no controlled shutdown."""

    kind: ClassVar[str] = "broker-kill"


@dataclass(frozen=True, slots=True)
class KafkaLoss:
    """Each Kafka publish is lost with this probability, for the whole run."""

    probability: float
    kind: ClassVar[str] = "kafka-loss"
    target: ClassVar[str] = "kafka"

    def window(self, run_end: float) -> tuple[float, float]:
        return 0.0, run_end

    def spec(self) -> str:
        return f"{self.kind}:{self.probability!r}"


@dataclass(frozen=True, slots=True)
class Crash:
    """The process `target` (e.g. `server-0`, `gateway-1`, `worker-2`) dies at `at`."""

    target: str
    at: float
    kind: ClassVar[str] = "crash"

    def window(self, run_end: float) -> tuple[float, float]:
        return self.at, run_end

    def spec(self) -> str:
        return f"{self.kind}:{self.target}@{format_duration(self.at)}"


@dataclass(frozen=True, slots=True)
class Churn:
    """This fraction of the users cycles between online and offline for the whole run."""

    fraction: float
    kind: ClassVar[str] = "churn"
    target: ClassVar[str] = "clients"

    def window(self, run_end: float) -> tuple[float, float]:
        return 0.0, run_end

    def spec(self) -> str:
        return f"{self.kind}:{self.fraction!r}"


@dataclass(frozen=True, slots=True)
class TokenRevoke:
    """At `at`, every token of `count` of the run's users is revoked (chosen from the
    run's seed); their connections close and they never come back. Only a stage that
    keeps a revocation list (v5) can suffer it."""

    count: int
    at: float
    kind: ClassVar[str] = "token-revoke"
    target: ClassVar[str] = "tokens"

    def window(self, run_end: float) -> tuple[float, float]:
        return self.at, run_end

    def spec(self) -> str:
        return f"{self.kind}:{self.count}@{format_duration(self.at)}"


Fault = (
    RedisOutage
    | RedisRestart
    | RedisMasterKill
    | DbRestart
    | BrokerDown
    | BrokerKill
    | KafkaLoss
    | Crash
    | Churn
    | TokenRevoke
)

# Faults that last the whole send window rather than a scheduled window; a run's manifest
# records them from the send window's start to its end, real and simulated alike.
RUN_LONG = frozenset({KafkaLoss.kind, Churn.kind})


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """The parsed faults of one run, in spec order, with typed views by kind."""

    items: tuple[Fault, ...] = ()

    @property
    def redis_outages(self) -> list[RedisOutage]:
        return [f for f in self.items if isinstance(f, RedisOutage)]

    @property
    def redis_restarts(self) -> list[RedisRestart]:
        return [f for f in self.items if isinstance(f, RedisRestart)]

    @property
    def redis_master_kills(self) -> list[RedisMasterKill]:
        return [f for f in self.items if isinstance(f, RedisMasterKill)]

    @property
    def db_restarts(self) -> list[DbRestart]:
        return [f for f in self.items if isinstance(f, DbRestart)]

    @property
    def broker_downs(self) -> list[BrokerDown]:
        return [f for f in self.items if isinstance(f, BrokerDown)]

    @property
    def crashes(self) -> list[Crash]:
        return [f for f in self.items if isinstance(f, Crash)]

    @property
    def token_revokes(self) -> list[TokenRevoke]:
        return [f for f in self.items if isinstance(f, TokenRevoke)]

    @property
    def kafka_loss(self) -> float:
        """The publish drop probability (0 when no `kafka-loss` is given)."""
        return next((f.probability for f in self.items if isinstance(f, KafkaLoss)), 0.0)

    @property
    def churn(self) -> float:
        """The fraction of users that churn (0 when no `churn` is given)."""
        return next((f.fraction for f in self.items if isinstance(f, Churn)), 0.0)

    def spec(self) -> str:
        """The canonical spec string; it parses back to an equal plan (times to the µs)."""
        return ",".join(f.spec() for f in self.items)

    def __bool__(self) -> bool:
        return bool(self.items)


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)?")
_TARGET_RE = re.compile(r"[a-z][a-z0-9_]*-\d+")
_FORMS = {
    RedisOutage.kind: "redis-outage:<duration>@<start>, e.g. redis-outage:30s@60s",
    RedisRestart.kind: "redis-restart:<duration>@<start>, e.g. redis-restart:5s@20s",
    RedisMasterKill.kind: (
        "redis-master-kill[:<down>]@<start>, e.g. redis-master-kill@20s "
        f"(the killed master is restarted after {REDIS_MASTER_DOWN:g}s unless <down> says)"
    ),
    DbRestart.kind: "db-restart:<duration>@<start>, e.g. db-restart:5s@30s",
    BrokerDown.kind: "broker-down:[all:]<duration>@<start>, e.g. broker-down:10s@30s",
    BrokerKill.kind: "broker-kill:[all:]<duration>@<start>, e.g. broker-kill:all:5s@30s",
    KafkaLoss.kind: "kafka-loss:<probability>, e.g. kafka-loss:0.01",
    Crash.kind: "crash:<process>@<time>, e.g. crash:gateway-1@45s",
    Churn.kind: "churn:<fraction of users>, e.g. churn:0.2",
    TokenRevoke.kind: "token-revoke:<users>@<time>, e.g. token-revoke:3@4s",
}


def parse_duration(text: str) -> float:
    """Seconds in `text`: a number with an optional unit ms, s (the default), m or h."""
    m = _DURATION_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a duration (say 500ms, 30s, 2m, 1h)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def format_duration(seconds: float) -> str:
    """The spec form of a duration, to the microsecond: 30 -> `30s`, 0.25 -> `0.25s`."""
    return f"{seconds:.6f}".rstrip("0").rstrip(".") + "s"


def parse_faults(spec: str) -> FaultPlan:
    """Parse a comma-separated fault spec; an empty spec or `none` means no faults.

    Raises FaultSpecError naming the bad item and the form it should take.
    """
    text = spec.strip()
    if text in ("", "none"):
        return FaultPlan()
    items = tuple(_parse_item(raw.strip()) for raw in text.split(","))
    _check_consistent(items)
    return FaultPlan(items)


def _parse_item(item: str) -> Fault:
    if not item:
        raise FaultSpecError("empty item in the fault spec (a stray comma?)")
    kind, sep, arg = item.partition(":")
    if "@" in kind:  # a fault with only a time: redis-master-kill@20s
        kind, _, when = kind.partition("@")
        sep, arg = ":", "@" + when
    kind = kind.strip()
    if kind not in _FORMS:
        known = ", ".join(sorted(_FORMS))
        raise FaultSpecError(f"unknown fault {item!r}: the kinds are {known}")
    if not sep or not arg.strip():
        raise FaultSpecError(f"bad fault {item!r}: expected {_FORMS[kind]}")
    try:
        return _parse_arg(kind, arg.strip())
    except ValueError as exc:
        raise FaultSpecError(f"bad fault {item!r}: {exc}; expected {_FORMS[kind]}") from None


def _parse_arg(kind: str, arg: str) -> Fault:
    if kind == KafkaLoss.kind:
        return KafkaLoss(_fraction(arg, "probability"))
    if kind == Churn.kind:
        return Churn(_fraction(arg, "fraction"))
    head, at, when = arg.partition("@")
    if not at:
        raise ValueError("missing @<start>")
    start = parse_duration(when)
    if kind == Crash.kind:
        if _TARGET_RE.fullmatch(head) is None:
            raise ValueError(f"{head!r} is not a process name like server-0 or gateway-1")
        return Crash(head, start)
    if kind == TokenRevoke.kind:
        if not head.isdigit() or int(head) < 1:
            raise ValueError(f"{head!r} is not a number of users (1 or more)")
        return TokenRevoke(int(head), start)
    if kind == RedisMasterKill.kind and not head:
        return RedisMasterKill(start, REDIS_MASTER_DOWN)
    scope = "one"
    if kind in (BrokerDown.kind, BrokerKill.kind) and ":" in head:
        scope, _, head = head.partition(":")
        if scope != "all":
            raise ValueError(f"{scope!r} is not a scope (leave it out for one broker, or say all)")
    duration = parse_duration(head)
    if duration <= 0:
        raise ValueError("the duration must be positive")
    if kind == RedisOutage.kind:
        return RedisOutage(start, duration)
    if kind == RedisRestart.kind:
        return RedisRestart(start, duration)
    if kind == RedisMasterKill.kind:
        return RedisMasterKill(start, duration)
    if kind == DbRestart.kind:
        return DbRestart(start, duration)
    if kind == BrokerKill.kind:
        return BrokerKill(start, duration, scope)
    return BrokerDown(start, duration, scope)


def _fraction(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"the {what} must be between 0 and 1")
    return value


def _check_consistent(items: tuple[Fault, ...]) -> None:
    for kind in (KafkaLoss.kind, Churn.kind, TokenRevoke.kind):
        if sum(f.kind == kind for f in items) > 1:
            raise FaultSpecError(f"{kind} is given more than once")
    crashed = [f.target for f in items if isinstance(f, Crash)]
    twice = sorted({t for t in crashed if crashed.count(t) > 1})
    if twice:
        raise FaultSpecError(f"crash:{twice[0]} is given more than once")
    redis_windows = [
        f for f in items if isinstance(f, RedisOutage | RedisRestart | RedisMasterKill)
    ]
    groups = (
        redis_windows,
        [f for f in items if isinstance(f, BrokerDown)],
        [f for f in items if isinstance(f, DbRestart)],
    )
    for group in groups:
        windows = sorted(group, key=lambda f: f.start)
        for a, b in pairwise(windows):
            if b.start < a.end:
                raise FaultSpecError(f"{a.spec()} and {b.spec()} overlap")
