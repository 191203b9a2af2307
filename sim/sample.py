"""A sampled population (`imlab sim --sample F`): a random fraction of the conversations is
simulated message by message, and the rest of the population is load in aggregate.

A million users cannot each be a SimPy process in minutes, but their sum is only an
arrival stream at each server. So `sample_scenario` keeps the conversations of a
seeded random sample (closed over shared members, as `sim.run.trace_plan` does), and
`load_population` turns every FIFO server of the model (the server or gateway event
loops, the v3/v4 consumers, Redis, the broker's CPU) into a `LoadedServer`: before it
serves a sampled job it serves the unsampled population's jobs that arrived since the
last one, each with the work of one of the last 64 sampled jobs there, so the rate
and mix of requests, pushes, relays and Redis commands are the population's.

When does a population job arrive? A server that is the only one of its kind (v2's
server, one Redis, one broker CPU) sees every sampled job, and the sample's send
phases are spread over the sample as the population's are over everybody; so each
sampled job is followed by `scale - 1` copies evenly spaced over the gap between two
sampled sends, and the stream is as even as the load tool's. A server of a kind with
several members (gateway-*, worker-*, redis-* shards, kafka-* leaders: `kind_of`) is
a `KindServer`: it sees a random few of the sampled jobs, in clumps and unevenly
(22 sampled users per gateway are ±21 % apart, where the population's hash spreads a
million to a fraction of a percent). Copies after its own jobs would multiply both
into bursts and hot servers the population does not have (100,000 users on 44
gateways: the busiest at 0.75 against a mean of 0.63 with a twentieth sampled, 0.69
with a fifth; with a kind's stream, 0.64 and 0.64 against 0.62 and 0.63). So the
population's jobs come to it as an even stream at its kind's sampled rate per member
(over the last second) times `scale - 1`, with the work of the kind's recent sampled
jobs: each member gets its even share of the kind's load and mix.

What the sample can see: latency distributions, acked and delivered ratios, queue
growth and saturation of every server, the effect of faults on the sampled messages.
What it cannot: an event rarer than about one in (sampled messages) (a loss of one
message in a million is most likely not in the sample; the sample's counts are
scaled estimates, never exact population counts), redis-py's pool limit (the pool
holds the sample's calls only), per-user effects of the unsampled users (their
reconnects after a crash follow the sampled ones' only as a rate), any burst
shorter than the gap between two sampled sends (a copy trails its sampled job by up
to that gap; a kind's stream follows its rate over the last second), an unevenness
between the members of a kind (each gets its kind's mean), and, near saturation (the
busiest process above ~0.7), the fine regularity of the load tool's schedule: there
the sample's p99 runs high (v2 at 0.8: 17 ms against 8 ms). At 10,000 users and 0.05
msgs/s a tenth agrees within 5 % for v2 and v4 (tests/unit/test_sim_sample.py); v3's push
p50 comes out 10 % low.
The Kafka consumers see the population's records as a rate: each fetch counts how many
of theirs came since the last look (a Poisson draw; one of them may answer a waiting
fetch), and the loop holds for their CPU, one after another, before it commits
(`sim.kafka_group.Consumer.background_hold`). Their CPU itself reaches the worker as
the kind's even stream, not in the fetch's batch, so a sampled record does not queue
behind its batch-mates, and their Redis round trips are not held for: with them the
sample ran 7-12 % slow at 10,000 users. So near a busy worker the sample's push
latencies are low. v4, the same calibration, `--sample` against everybody simulated:

    users (msgs/s, topology)         sample   push p50    push p99    before the hold
    10,000 (500; 2 gw, 2 wk)          0.1      +3 %        +5 %        within 5 %
    20,000 (2,000; 9 gw, 2 wk)        0.2      -24 %       -1 %        -33 %, -24 %
    100,000 (10,000; 44 gw, 8 wk)     0.05     -35 %       -14 %       -50 %, -47 %

(workers at 1,000-1,250 records/s each in the last two). At 100,000 users the ack p50 is
also 15 % low (2.8 against 3.4 ms): the gateways' population stream is even, where the
full model's relays come in bursts. Charging the population's worker CPU in each
fetch's batch, instead of as a stream, is the next step.
The checker's figures (metrics.json) are exact for the sampled conversations.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import replace
from typing import Any

import numpy as np

from sim.engine import FifoServer, Refused
from sim.scenario import SimScenario, schedule_phases

__all__ = [
    "Kind",
    "KindServer",
    "LoadedServer",
    "kind_of",
    "load_population",
    "sample_conversations",
    "sample_scenario",
]

_RECENT = 64
_SILENCE = 8.0  # a server that saw no sampled job for this many of its mean gaps was idle
_WINDOW = 1.0  # seconds over which a kind's sampled rate is counted
# A kind's mix is its last 1,024 sampled jobs': a few seconds of 64 per member would carry
# the connect phase's costly jobs seconds into the send window (gateways above 100 %).
_KIND_RECENT = 1024


def kind_of(name: str) -> str:
    """The kind of a process or service from its name: gateway-3 -> gateway, redis -> redis."""
    head, _, tail = name.rpartition("-")
    return head if head and tail.isdigit() else name


class Kind:
    """The servers of one kind (`members` of them) and their sampled jobs per second over
    the last `_WINDOW` seconds (two buckets, the older one fading out)."""

    __slots__ = ("members", "now", "prev", "recent", "seen", "since", "start")

    def __init__(self, members: int) -> None:
        self.members = members
        self.recent = np.zeros(_KIND_RECENT)  # the kind's last sampled jobs' work
        self.seen = 0
        self.start = 0.0  # the current bucket's start
        self.now = 0  # sampled jobs in the current bucket
        self.prev = -1  # in the bucket before (-1: none yet)
        self.since = -1.0  # the first job's time

    def saw(self, t: float) -> None:
        if self.since < 0.0:
            self.since = self.start = t
        elif t >= self.start + _WINDOW:
            ahead = int((t - self.start) / _WINDOW)
            self.prev = self.now if ahead == 1 else 0
            self.now = 0
            self.start += ahead * _WINDOW
        self.now += 1

    def record(self, s: float) -> None:
        self.recent[self.seen % self.recent.size] = s
        self.seen += 1

    def rate(self, t: float, copies: float) -> float:
        """The population's unsampled jobs per second at one member, at `t`."""
        if self.prev < 0:
            seen = self.now / max(t - self.since, _WINDOW / 8)
        else:
            fade = 1.0 - min(1.0, (t - self.start) / _WINDOW)
            seen = (self.prev * fade + self.now) / _WINDOW
        return copies * seen / self.members


class LoadedServer(FifoServer):
    """A FIFO server that also serves the population's jobs: `scale - 1` copies of each
    sampled job, evenly spaced over the `gap` after it, with the work of a recent one."""

    __slots__ = (
        "_at",
        "_gen",
        "_recent",
        "_rng",
        "_seen",
        "_step",
        "_work",
        "bg_jobs",
        "copies",
        "gap",
    )

    def __init__(self, server: FifoServer, scale: float, gap: float, seed: int) -> None:
        super().__init__(server.name)
        self._windows = list(server._windows)
        self.copies = max(0.0, scale - 1.0)
        self.gap = gap
        self._step = gap / max(scale, 1.0)
        self._rng = random.Random(seed)
        self._gen = np.random.Generator(np.random.PCG64(seed))
        self._recent = np.zeros(_RECENT)  # the last sampled jobs' service times
        self._seen = 0
        self._at: np.ndarray[Any, np.dtype[np.float64]] = np.empty(0)  # copies not served yet
        self._work: np.ndarray[Any, np.dtype[np.float64]] = np.empty(0)
        self.bg_jobs = 0

    def serve(self, t: float, s: float) -> float:
        if self._at.size:
            self._background(t)
        done = super().serve(t, s)
        self._recent[self._seen % _RECENT] = s
        self._seen += 1
        n = int(self.copies)
        if self._rng.random() < self.copies - n:
            n += 1
        if n:
            at = t + self._step * np.arange(1, n + 1, dtype=np.float64)
            self._at = np.concatenate((self._at, at)) if self._at.size else at
            # A copy's work is drawn from the recent jobs': copies of one long job would
            # come as a burst of long jobs, which the population does not send.
            work = self._recent[self._gen.integers(0, min(self._seen, _RECENT), n)]
            self._work = np.concatenate((self._work, work)) if self._work.size else work
        return done

    def _background(self, t: float) -> None:
        """Serve, in arrival order, the copies that arrived by `t`."""
        due = self._at <= t
        if not due.any():
            return
        times, services = self._at[due], self._work[due]
        self._at, self._work = self._at[~due], self._work[~due]
        order = np.argsort(times, kind="stable")
        times, services = times[order], services[order]
        self.bg_jobs += times.size
        if self._windows:  # faults: job by job, through the pauses and down windows
            for a, w in zip(times.tolist(), services.tolist(), strict=True):
                with contextlib.suppress(Refused):
                    FifoServer.serve(self, max(a, 0.0), w)
                    self.jobs -= 1
            return
        # Lindley over the batch in closed form: free_n = max(t_n, free_{n-1}) + s_n.
        work = np.cumsum(services)
        total = float(work[-1])
        self.free_at = total + max(self.free_at, float(np.max(times - (work - services))))
        self.busy += total


class KindServer(LoadedServer):
    """A loaded server of a kind with several members: the population's jobs come as an
    even stream at the kind's sampled rate per member times `scale - 1` (not after the
    server's own sampled jobs), each with the work of one of the kind's last 1,024
    sampled jobs (the kind's mix, not this member's few), served in arrival order
    before each sampled job."""

    __slots__ = ("_ia", "_kind", "_last", "_next")

    def __init__(self, server: FifoServer, scale: float, gap: float, seed: int, kind: Kind) -> None:
        super().__init__(server, scale, gap, seed)
        self._kind = kind
        self._ia = gap  # moving mean of the gap between two sampled jobs here
        self._last = -1.0
        self._next = 0.0  # when the population's next job arrives here

    def serve(self, t: float, s: float) -> float:
        if self._last >= 0.0:
            self._ia += (t - self._last - self._ia) / _RECENT
        self._last = t
        kind = self._kind
        kind.saw(t)
        self._stream(t)
        done = FifoServer.serve(self, t, s)
        kind.record(s)
        self._seen += 1
        return done

    def _stream(self, t: float) -> None:
        """Serve, in arrival order, the population's jobs that arrived by `t`."""
        rate = self._kind.rate(t, self.copies)
        nxt = self._next
        if not self._seen or rate <= 0.0:
            self._next = t
            return
        if t - nxt > _SILENCE * self._ia:  # no sampled job here for long: nor any other
            nxt = t - self._ia
        if nxt > t:
            return
        step = 1.0 / rate
        k = int((t - nxt) / step) + 1
        self._next = nxt + k * step
        self._at = nxt + step * np.arange(k, dtype=np.float64)
        kind = self._kind
        self._work = kind.recent[self._gen.integers(0, min(kind.seen, kind.recent.size), k)]
        self._background(t)


def sample_conversations(sc: SimScenario, fraction: float, seed: int) -> list[int]:
    """A seeded random `fraction` of the conversations (at least one), closed over members
    who are in several conversations."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--sample takes a fraction in (0, 1], not {fraction}")
    n = len(sc.convs)
    k = max(1, round(n * fraction))
    order = list(range(n))
    random.Random(f"{seed}:sample").shuffle(order)
    chosen = set(order[:k])
    while True:
        extra = {ci for c in list(chosen) for u in sc.convs[c].members for ci in sc.user_convs[u]}
        if extra <= chosen:
            return sorted(chosen)
        chosen |= extra


def sample_scenario(sc: SimScenario, fraction: float, seed: int) -> tuple[SimScenario, float]:
    """The scenario of the sampled conversations' members, renumbered, with each user's
    name and churn clock as in the whole population but the send phases spread over
    the sample (as the population's are over everybody); and the scale (population
    users per sampled user)."""
    convs = sample_conversations(sc, fraction, seed)
    users = sorted({u for c in convs for u in sc.convs[c].members})
    new_user = {u: i for i, u in enumerate(users)}
    new_conv = {c: i for i, c in enumerate(convs)}
    sub = replace(
        sc,
        users=len(users),
        names=[sc.names[u] for u in users],
        convs=[
            replace(
                sc.convs[c],
                index=new_conv[c],
                members=tuple(new_user[m] for m in sc.convs[c].members),
            )
            for c in convs
        ],
        send_conv=[new_conv[sc.send_conv[u]] for u in users],
        user_convs=[[new_conv[c] for c in sc.user_convs[u]] for u in users],
        churners=frozenset(new_user[u] for u in sc.churners if u in new_user),
        origin=users,
    )
    sub.phases = schedule_phases(sub)  # the sample's sends as evenly spread as everybody's
    return sub, sc.users / len(users)


def load_population(
    servers: list[FifoServer], scale: float, gap: float, seed: int
) -> list[LoadedServer]:
    """Loaded versions of `servers` (the caller puts them where the originals were);
    `gap` is the time between two sampled sends (1 / (sampled users x rate)). Servers
    named alike but for a trailing -N are of one kind (gateway-0, gateway-1, ...)."""
    rng = random.Random(f"{seed}/population")
    kinds = [kind_of(s.name) for s in servers]
    count = {k: kinds.count(k) for k in set(kinds)}
    shared = {k: Kind(n) for k, n in count.items()}
    return [
        KindServer(s, scale, gap, rng.getrandbits(64), shared[k])
        if count[k] > 1
        else LoadedServer(s, scale, gap, rng.getrandbits(64))
        for s, k in zip(servers, kinds, strict=True)
    ]
