"""The project's own fuzz (imlab.fuzz, hypothesis) against every real stage: a few hundred
generated cases per client event, reserved and unknown event names, connects with odd
`auth`, and undecodable packets. No `internal`, every call answered (or the connection
closed with a reason where that is the documented answer), the session unchanged, and a
fresh pair of clients still chats afterwards. The seed is printed on failure."""

from __future__ import annotations

import os
import random

import pytest

from imlab import protocol as p
from imlab import stages
from imlab.fuzz import DOCUMENTED_CODES, EVENT_KINDS, Fuzzer, Tally
from imlab.fuzz.fuzzer import event_kinds

from ..conftest import ALL_STAGES, StageUnderTest

every_stage = pytest.mark.parametrize("cluster", ALL_STAGES, indirect=True)

# 120 a kind per stage in the suite (five stages); benchmarks/fuzz.py runs 2,000.
PER_EVENT = int(os.environ.get("IMLAB_FUZZ_CASES", "120"))
SEED = int(os.environ.get("IMLAB_FUZZ_SEED", str(random.randrange(2**32))))


def fuzzer(sut: StageUnderTest) -> Fuzzer:
    # Tokens of 10 minutes: within what every token stage accepts (v5: at most 15).
    return Fuzzer(sut.cluster.endpoints[0], sut.stage, sut.cluster.spec.secret, token_ttl=600)


def check(tally: Tally, what: str, *, disconnects: bool = False) -> None:
    where = f"{what}, seed {SEED} (IMLAB_FUZZ_SEED): {tally.summary()} {tally.samples}"
    assert tally.tried > 0, where
    assert tally.internal == 0, where
    assert tally.no_ack == 0, where
    assert set(tally.errors) <= DOCUMENTED_CODES, where
    if disconnects:
        assert tally.disconnects + sum(tally.errors.values()) >= tally.tried, where
    else:
        assert tally.disconnects == 0, where


@every_stage
@pytest.mark.parametrize("kind", EVENT_KINDS)
async def test_fuzzed_events_are_all_answered_without_internal(
    sut: StageUnderTest, kind: str
) -> None:
    fz = fuzzer(sut)
    check(await fz.events(kind, PER_EVENT, SEED), kind)
    assert await fz.pair_still_chats()


EXTENDED = [k for k in event_kinds(p.FEATURE_EVENTS) if k not in EVENT_KINDS]


@pytest.mark.parametrize(
    "cluster",
    [s for s in ALL_STAGES if stages.stage(s).features & set(p.FEATURE_EVENTS)],
    indirect=True,
)
@pytest.mark.parametrize("kind", EXTENDED)
async def test_fuzzed_authz_and_receipt_events_are_answered_without_internal(
    sut: StageUnderTest, kind: str
) -> None:
    fz = fuzzer(sut)
    check(await fz.events(kind, PER_EVENT, SEED), kind)
    assert await fz.pair_still_chats()


@every_stage
async def test_fuzzed_connects_are_accepted_or_refused_with_a_reason(sut: StageUnderTest) -> None:
    fz = fuzzer(sut)
    check(await fz.connects(PER_EVENT // 2, SEED), "connect")
    assert await fz.pair_still_chats()


@every_stage
async def test_fuzzed_undecodable_packets_close_with_a_reason(sut: StageUnderTest) -> None:
    fz = fuzzer(sut)
    tally = await fz.undecodable(PER_EVENT // 10, SEED)
    check(tally, "undecodable", disconnects=True)
    assert tally.errors == {"bad_request": tally.tried}, tally.summary()
    assert await fz.pair_still_chats()
