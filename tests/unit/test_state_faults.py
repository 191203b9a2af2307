"""The v5 state-service faults (a Sentinel master kill, a PostgreSQL restart) as the
fault spec spells them, how the simulator approximates them, and the Redis URLs the
stage processes are given."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from imlab.experiment.faults import (
    REDIS_MASTER_DOWN,
    DbRestart,
    FaultSpecError,
    RedisMasterKill,
    RedisOutage,
    parse_faults,
)
from imlab.redisconn import SentinelURL, connect, parse_sentinel_url
from sim.chaos import Chaos
from sim.params import Params

pytestmark = pytest.mark.unit


def test_a_master_kill_needs_only_its_time() -> None:
    plan = parse_faults("redis-master-kill@20s,db-restart:5s@30s")
    assert plan.items == (RedisMasterKill(20.0, REDIS_MASTER_DOWN), DbRestart(30.0, 5.0))
    assert plan.redis_master_kills == [RedisMasterKill(20.0, REDIS_MASTER_DOWN)]
    assert plan.db_restarts == [DbRestart(30.0, 5.0)]
    assert plan.items[0].target == "redis" and plan.items[1].target == "postgres"


def test_a_master_kill_may_say_how_long_the_node_stays_down() -> None:
    assert parse_faults("redis-master-kill:8s@1m").items == (RedisMasterKill(60.0, 8.0),)


@pytest.mark.parametrize(
    "spec",
    ["redis-master-kill@20s", "redis-master-kill:8s@20s", "db-restart:2.5s@1m,churn:0.1"],
)
def test_the_new_kinds_spell_back_to_the_same_plan(spec: str) -> None:
    plan = parse_faults(spec)
    assert parse_faults(plan.spec()) == plan
    assert plan.spec() == spec.replace("1m", "60s")


def test_redis_windows_of_every_kind_may_not_overlap() -> None:
    ok = parse_faults("redis-outage:3s@1s,redis-master-kill@10s,db-restart:20s@5s")
    assert ok.redis_outages == [RedisOutage(1.0, 3.0)]
    with pytest.raises(FaultSpecError, match="overlap"):
        parse_faults("redis-outage:10s@5s,redis-master-kill@8s")
    with pytest.raises(FaultSpecError, match="overlap"):
        parse_faults("db-restart:10s@5s,db-restart:1s@6s")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("redis-master-kill", "expected redis-master-kill\\[:<down>\\]@<start>"),
        ("redis-master-kill@", "'' is not a duration"),
        ("redis-master-kill:0s@1s", "the duration must be positive"),
        ("db-restart:5s", "missing @<start>; expected db-restart:<duration>@<start>"),
        ("db-restart@5s", "'' is not a duration"),
        ("db-restart:soon@5s", "'soon' is not a duration"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(FaultSpecError, match=message):
        parse_faults(spec)


class _Server:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float]] = []

    def down(self, start: float, end: float) -> None:
        self.calls.append(("down", start, end))

    def pause(self, start: float, end: float) -> None:
        self.calls.append(("pause", start, end))


def _model(spec: str) -> Any:
    return SimpleNamespace(
        send_start=100.0,
        faults=parse_faults(spec),
        store=SimpleNamespace(redis=(s := _Server()), shards=[s]),
        broker=None,
        p=Params(),
    )


def test_the_simulator_takes_a_master_kill_for_redis_down_during_the_failover() -> None:
    m = _model("redis-master-kill@20s")
    Chaos(m).apply()
    assert m.store.redis.calls == [("down", 120.0, 120.0 + Params().redis_failover)]


def test_the_simulator_refuses_a_db_restart_where_the_model_has_no_database() -> None:
    m = _model("db-restart:5s@20s")
    m.stage = "v4"
    with pytest.raises(ValueError, match="the v4 model has no database"):
        Chaos(m).apply()
    m.db = object()  # v5's model applies it itself
    Chaos(m).apply()


def test_a_sentinel_url_names_the_sentinels_and_the_master() -> None:
    url = "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380,localhost:26381/imlab"
    assert parse_sentinel_url(url) == SentinelURL(
        (("127.0.0.1", 26379), ("127.0.0.1", 26380), ("localhost", 26381)), "imlab", 0
    )
    assert parse_sentinel_url("redis+sentinel://h:1/m/3").db == 3


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis+sentinel://127.0.0.1/imlab",
        "redis+sentinel://127.0.0.1:1",
        "redis+sentinel://127.0.0.1:1/imlab/x",
    ],
)
def test_a_malformed_sentinel_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_sentinel_url(url)


async def test_connect_builds_a_client_for_either_kind_without_connecting() -> None:
    plain = connect("redis://127.0.0.1:1/2")
    assert plain.connection_pool.connection_kwargs["db"] == 2
    await plain.aclose()
    watched = connect("redis+sentinel://127.0.0.1:1,127.0.0.1:2/imlab", socket_timeout=3)
    kwargs = watched.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 3 and kwargs["socket_connect_timeout"] == 2.0
    assert watched.connection_pool.service_name == "imlab"  # type: ignore[attr-defined]
    await watched.aclose()


def test_token_revoke_parses_and_is_refused_where_it_cannot_be_done() -> None:
    from imlab.chaos import revoked_users
    from imlab.experiment.faults import TokenRevoke
    from imlab.experiment.scenarios import PlanError
    from loadtest.runner import LoadOptions, _check_faults
    from sim.run import check_modelled

    plan = parse_faults("token-revoke:3@4s")
    assert plan.items == (TokenRevoke(3, 4.0),) and plan.token_revokes == [TokenRevoke(3, 4.0)]
    assert plan.spec() == "token-revoke:3@4s"
    for bad in ("token-revoke:0@4s", "token-revoke:x@4s", "token-revoke:3"):
        with pytest.raises(FaultSpecError):
            parse_faults(bad)
    with pytest.raises(FaultSpecError, match="more than once"):
        parse_faults("token-revoke:1@1s,token-revoke:1@2s")
    _check_faults(LoadOptions("v5", users=16), plan)
    with pytest.raises(PlanError, match="keeps no revocation list"):
        _check_faults(LoadOptions("v4", users=16), plan)
    with pytest.raises(PlanError, match="only 2 users"):
        _check_faults(LoadOptions("v5", users=2), plan)
    with pytest.raises(PlanError, match="does not model token revocation"):
        check_modelled(plan)
    users = [f"u{i}" for i in range(16)]
    assert revoked_users(users, 3, 1) == revoked_users(users, 3, 1)
    assert len(set(revoked_users(users, 3, 1))) == 3
