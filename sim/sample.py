"""A sampled population (`imlab sim --sample F`): a random fraction of the conversations is
simulated message by message, and the rest of the population is load in aggregate.

A million users cannot each be a SimPy process in minutes, but their sum is only an
arrival stream at each server. So `sample_scenario` keeps the conversations of a
seeded random sample (closed over shared members, as `sim.run.trace_plan` does), and
`load_population` turns every FIFO server of the model (the server or gateway event
loops, the v3/v4 consumers, Redis) into a `LoadedServer`: before it serves a
sampled job it serves the unsampled population's jobs that arrived since the last
one. Each sampled job is followed by `scale - 1` copies evenly spaced over the gap
between two sampled sends, each with the work of one of the last 64 sampled jobs
there, so the rate and mix of requests, pushes, relays and Redis commands are the
population's; and the sample's send phases are spread over the sample as the
population's are over everybody, so the stream is as even as the load tool's.
Queueing for the sample is then the population's.

What the sample can see: latency distributions, acked and delivered ratios, queue
growth and saturation of every server, the effect of faults on the sampled messages.
What it cannot: an event rarer than about one in (sampled messages) (a loss of one
message in a million is most likely not in the sample; the sample's counts are
scaled estimates, never exact population counts), redis-py's pool limit (the pool
holds the sample's calls only), per-user effects of the unsampled users (their
reconnects after a crash follow the sampled ones' only as a rate), and any burst
shorter than the gap between two sampled sends (a copy trails its sampled job by up
to that gap), and, near saturation (the busiest process above ~0.7), the fine
regularity of the load tool's schedule: there the sample's p99 runs high (v2 at 0.8:
17 ms against 8 ms). At 10,000 users and 0.05 msgs/s a tenth agrees within 5 % for v2
and v4 (tests/unit/test_sim_sample.py); v3's push p50 comes out 10 % low.
The Kafka consumers see the population's records as a rate: a fetch that finds no
sampled record returns at once when unsampled ones came since the last fetch.
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

__all__ = ["LoadedServer", "load_population", "sample_conversations", "sample_scenario"]

_RECENT = 64


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
    `gap` is the time between two sampled sends (1 / (sampled users x rate))."""
    rng = random.Random(f"{seed}/population")
    return [LoadedServer(s, scale, gap, rng.getrandbits(64)) for s in servers]
