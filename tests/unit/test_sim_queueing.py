"""The simulation core against queueing theory, and its reproducibility.

Theory: a Station fed by Poisson arrivals reproduces the mean waiting time of
M/M/1 and M/M/c (Erlang C) within 5% at utilisation 0.5 and 0.8, on a fixed
seed. Reproducibility: one seed gives byte-identical histories.
"""

from __future__ import annotations

import json
import random
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import simpy
from simpy.events import Event

from imlab.experiment.faults import parse_faults
from sim.core import Deterministic, Exponential, LogNormal, RandomStreams
from sim.history import RunWriter
from sim.kafka import Broker
from sim.kafka_group import Consumer
from sim.theory import erlang_c, mg1_mean_wait, mm1_mean_wait, mmc_mean_wait
from tests.sim_oracles import DownPolicy, NetworkLink, Station

SEED = 1


def simulated_mean_wait(servers: int, rho: float, customers: int, seed: int) -> float:
    """Mean wait of `customers` Poisson arrivals at a station of exp(1) servers at load rho."""
    env = simpy.Environment()
    streams = RandomStreams(seed)
    station = Station(env, "s", Exponential(1.0), streams.stream("service"), servers=servers)
    arrivals = streams.stream("arrivals")
    rate = rho * servers

    def source() -> Generator[Event, Any, None]:
        for _ in range(customers):
            yield env.timeout(arrivals.expovariate(rate))
            station.submit()

    env.process(source())
    env.run()
    assert station.served == customers
    return station.waits.mean


# Customers per case: enough for 5% on the fixed seed, few enough for ~6 s in all.
# Seeds 1-30 run locally with these counts, relative error |simulated/theory - 1|:
#   M/M/1 rho=0.5 100k: median 1.3%, max 4.5%, 30/30 within 5%; seed 1: 1.7%
#   M/M/1 rho=0.8 200k: median 1.9%, max 7.5%, 25/30 within 5%; seed 1: 1.3%
#   M/M/2 rho=0.5 100k: median 1.5%, max 6.3%, 28/30 within 5%; seed 1: 1.5%
#   M/M/2 rho=0.8 200k: median 2.1%, max 8.4%, 25/30 within 5%; seed 1: 1.2%
# Seed 1 sits at or below the median in every case, with 3.3-3.8 points to spare; it
# was fixed before the sweep. At rho=0.8 the waits are so autocorrelated that the
# error shrinks slowly (250k still lets 4/30 seeds past 5%). If a change in the order
# of random draws pushes a case past 5%, rerun the sweep before suspecting the core,
# and do not shop for a seed.
@pytest.mark.parametrize(
    ("servers", "rho", "customers"),
    [(1, 0.5, 100_000), (1, 0.8, 200_000), (2, 0.5, 100_000), (2, 0.8, 200_000)],
)
def test_mean_wait_matches_erlang_c(servers: int, rho: float, customers: int) -> None:
    theory = mmc_mean_wait(rho * servers, 1.0, servers)
    simulated = simulated_mean_wait(servers, rho, customers, SEED)
    assert simulated == pytest.approx(theory, rel=0.05)


def test_theory_formulas() -> None:
    assert mm1_mean_wait(0.8, 1.0) == pytest.approx(4.0)
    # M/M/2: C = 2rho²/(1 + rho)
    assert erlang_c(2, 1.6) == pytest.approx(2 * 0.8**2 / 1.8)
    assert mmc_mean_wait(1.6, 1.0, 2) == pytest.approx(2 * 0.64 / 1.8 / 0.4)
    assert mg1_mean_wait(0.8, 1.0, 1.0) == pytest.approx(mm1_mean_wait(0.8, 1.0))
    assert mg1_mean_wait(0.8, 1.0, 0.0) == pytest.approx(2.0)  # M/D/1: half of M/M/1
    with pytest.raises(ValueError, match="unstable"):
        erlang_c(2, 2.0)


# --------------------------------------------------------------------------- reproducibility


@dataclass
class ToyRun:
    history: bytes
    sent: int = 0
    refused: int = 0
    acked_ok: set[str] = field(default_factory=set)
    delivered: set[str] = field(default_factory=set)


def toy_im_run(folder: Path, seed: int) -> ToyRun:
    """A small IM-like model touching every part: users send through a server station
    to a Kafka topic, a consumer delivers over links to the members, under faults.

    Like v4 it acks once the publish returns, whatever the broker did, so
    `kafka-loss` and `broker-down` lose acknowledged messages.
    """
    env = simpy.Environment()
    streams = RandomStreams(seed)
    plan = parse_faults("redis-outage:1s@3s,kafka-loss:0.05,broker-down:0.5s@6s")
    users = [f"u{i}" for i in range(12)]
    groups = {"g0": users[:6], "g1": users[4:]}
    server = Station(
        env,
        "server-0",
        LogNormal.from_mean_p99(0.002, 0.010),
        streams.stream("server"),
        servers=2,
        down_policy=DownPolicy.REFUSE,
    )
    broker = Broker(
        env, streams.stream("kafka"), link=Deterministic(0.001), drop_prob=plan.kafka_loss
    )
    topic = broker.topic("messages", partitions=2)
    consumer: Consumer[tuple[str, str, str, int]] = Consumer(
        broker, "server-0", streams.stream("consumer"), fetch_wait=0.1
    )
    consumer.assign(topic.partitions)
    links = {u: NetworkLink(env, Exponential(0.005), streams.stream(f"link/{u}")) for u in users}
    seqs: dict[str, int] = {}
    out = ToyRun(b"")
    run = RunWriter(folder, stage="toy", scenario="repro", seed=seed, params={"users": 12})
    h = run.history
    for outage in plan.redis_outages:
        server.outage(outage.start, outage.duration)
        h.fault(outage.kind, outage.target, outage.start, outage.end)
    for down in plan.broker_downs:
        broker.outage(down.start, down.duration)
        h.fault(down.kind, down.target, down.start, down.end)

    def user(name: str) -> Generator[Event, Any, None]:
        rng = streams.stream(f"user/{name}")
        for n in range(15):
            yield env.timeout(rng.expovariate(2.0))
            if env.now > 9.0:
                return
            gid = rng.choice([g for g, members in groups.items() if name in members])
            conv, msg = f"group:{gid}", f"{name}-{n}"
            h.send(env.now, name, conv, msg)
            out.sent += 1
            visit = yield server.submit()
            if not visit.ok:
                h.ack(env.now, name, conv, msg, ok=False, err=visit.err)
                out.refused += 1
                continue
            seqs[conv] = seq = seqs.get(conv, 0) + 1
            yield topic.publish(conv, (conv, msg, name, seq))
            h.ack(env.now, name, conv, msg, ok=True, seq=seq)
            out.acked_ok.add(msg)

    def arrive(m: tuple[str, str, str, str, int]) -> None:
        member, conv, msg, sender, seq = m
        h.recv(env.now, member, conv, msg, sender=sender, seq=seq)
        out.delivered.add(msg)

    def deliver() -> Generator[Event, Any, None]:
        while True:
            for record in (yield consumer.poll()):
                conv, msg, sender, seq = record.value
                for member in groups[conv.removeprefix("group:")]:
                    if member != sender:
                        links[member].deliver((member, conv, msg, sender, seq), arrive)

    for u in users:
        env.process(user(u))
    env.process(deliver())
    env.run(until=12.0)
    run.finish(ended_at=10.0, drain_end=12.0, groups=groups, faults=plan.items)
    out.history = (folder / "history.jsonl").read_bytes()
    return out


def test_same_seed_gives_identical_history(tmp_path: Path) -> None:
    first = toy_im_run(tmp_path / "a", seed=42).history
    second = toy_im_run(tmp_path / "b", seed=42).history
    other = toy_im_run(tmp_path / "c", seed=43).history
    assert first == second
    assert first != other
    events = [json.loads(line)["ev"] for line in first.splitlines()]
    assert set(events) == {"send", "ack", "recv", "fault"}


def test_simulated_run_is_judged_by_the_checker(tmp_path: Path) -> None:
    checker = pytest.importorskip("reports.checker")
    toy = toy_im_run(tmp_path, seed=42)
    metrics = checker.check(tmp_path)
    assert metrics["checker"]["malformed_lines"] == 0
    assert metrics["sends"]["attempted"] == toy.sent
    assert metrics["sends"]["acked_ok"] == len(toy.acked_ok)
    assert metrics["sends"]["acked_error_by_code"] == {"unavailable": toy.refused}
    assert toy.refused > 0 and toy.acked_ok - toy.delivered
    assert metrics["deliveries"]["lost_messages"] == len(toy.acked_ok - toy.delivered)
    assert metrics["deliveries"]["unexpected"] == 0
    assert metrics["deliveries"]["duplicated"] == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["source"] == "sim" and manifest["seed"] == 42
    assert [f["kind"] for f in manifest["faults"]] == ["redis-outage", "kafka-loss", "broker-down"]


def test_random_streams_do_not_touch_the_global_generator() -> None:
    state = random.getstate()
    simulated_mean_wait(1, 0.5, 1000, SEED)
    assert random.getstate() == state
