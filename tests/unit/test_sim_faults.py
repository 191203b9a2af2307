"""The fault spec parser shared by the simulator and the load tool."""

from __future__ import annotations

import pytest

from imlab.experiment.faults import (
    BrokerDown,
    Churn,
    Crash,
    FaultPlan,
    FaultSpecError,
    KafkaLoss,
    RedisOutage,
    RedisRestart,
    parse_duration,
    parse_faults,
)


def test_every_kind_parses_into_its_dataclass() -> None:
    plan = parse_faults(
        "redis-outage:30s@60s,kafka-loss:0.01,broker-down:10s@30s,"
        "crash:gateway-1@45s,crash:server-0@1m,churn:0.2"
    )
    assert plan.items == (
        RedisOutage(start=60.0, duration=30.0),
        KafkaLoss(probability=0.01),
        BrokerDown(start=30.0, duration=10.0),
        Crash(target="gateway-1", at=45.0),
        Crash(target="server-0", at=60.0),
        Churn(fraction=0.2),
    )
    assert plan.redis_outages == [RedisOutage(60.0, 30.0)]
    assert plan.broker_downs == [BrokerDown(30.0, 10.0)]
    assert [c.target for c in plan.crashes] == ["gateway-1", "server-0"]
    assert plan.kafka_loss == 0.01
    assert plan.churn == 0.2


def test_redis_restart_and_outage_windows_may_not_overlap() -> None:
    plan = parse_faults("redis-restart:5s@20s,redis-outage:10s@30s,broker-down:5s@22s")
    assert plan.redis_restarts == [RedisRestart(20.0, 5.0)]
    assert plan.redis_outages == [RedisOutage(30.0, 10.0)]
    with pytest.raises(FaultSpecError, match="overlap"):
        parse_faults("redis-restart:15s@20s,redis-outage:10s@30s")


@pytest.mark.parametrize("spec", ["", "  ", "none"])
def test_empty_spec_means_no_faults(spec: str) -> None:
    plan = parse_faults(spec)
    assert plan == FaultPlan()
    assert not plan
    assert plan.kafka_loss == 0.0 and plan.churn == 0.0


def test_whitespace_around_items_is_ignored() -> None:
    assert parse_faults(" churn:0.5 , kafka-loss: 0.1 ").items == (Churn(0.5), KafkaLoss(0.1))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("30", 30.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_spec_round_trips() -> None:
    spec = "redis-outage:0.5s@2m,kafka-loss:0.001,broker-down:10s@30s,crash:worker-3@45.25s"
    plan = parse_faults(spec)
    assert parse_faults(plan.spec()) == plan
    assert (
        plan.spec()
        == "redis-outage:0.5s@120s,kafka-loss:0.001,broker-down:10s@30s,crash:worker-3@45.25s"
    )


def test_windows_for_the_manifest() -> None:
    plan = parse_faults(
        "redis-outage:30s@60s,crash:gateway-1@45s,kafka-loss:0.1,broker-down:50s@80s"
    )
    assert [(f.kind, f.target, f.window(100.0)) for f in plan.items] == [
        ("redis-outage", "redis", (60.0, 90.0)),
        ("crash", "gateway-1", (45.0, 100.0)),
        ("kafka-loss", "kafka", (0.0, 100.0)),
        ("broker-down", "kafka", (80.0, 100.0)),
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "redis:30s@1s",
            "unknown fault 'redis:30s@1s': the kinds are broker-down, broker-kill, churn",
        ),
        ("redis-outage:30s", "missing @<start>; expected redis-outage:<duration>@<start>"),
        ("redis-outage", "expected redis-outage:<duration>@<start>, e.g. redis-outage:30s@60s"),
        ("broker-down:ten@1s", "'ten' is not a duration"),
        ("broker-down:10s@-1s", "'-1s' is not a duration"),
        ("broker-down:0s@1s", "the duration must be positive"),
        ("kafka-loss:1.5", "the probability must be between 0 and 1"),
        ("kafka-loss:lots", "'lots' is not a number"),
        ("churn:-0.1", "the fraction must be between 0 and 1"),
        ("crash:gateway@45s", "'gateway' is not a process name like server-0"),
        ("crash:server-0", "missing @<start>"),
        ("churn:0.1,", "empty item in the fault spec"),
        ("churn:0.1,churn:0.2", "churn is given more than once"),
        ("kafka-loss:0.1,kafka-loss:0.2", "kafka-loss is given more than once"),
        ("crash:server-0@1s,crash:server-0@2s", "crash:server-0 is given more than once"),
        (
            "redis-outage:30s@60s,redis-outage:10s@80s",
            "redis-outage:30s@60s and redis-outage:10s@80s overlap",
        ),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(FaultSpecError) as info:
        parse_faults(spec)
    assert message in str(info.value)


def test_fault_spec_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        parse_faults("meteor:1")
