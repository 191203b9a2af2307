"""The fuzz's cases for the events of the features "authz" and "receipts": drawn for
each, some valid (the parsers accept them) and some not."""

from __future__ import annotations

from typing import Any

import pytest

from imlab import protocol as p
from imlab.fuzz import EVENT_KINDS, cases, event_kinds, generate
from imlab.fuzz.strategies import ATTACKS, token_attacks

PARSERS: dict[str, Any] = {
    p.RECEIPT: p.parse_receipt,
    p.GROUP_ADD: p.parse_group_change,
    p.GROUP_REMOVE: p.parse_group_change,
    p.GROUP_LEAVE: p.parse_group_leave,
    p.REFRESH: p.parse_empty,
}


def test_event_kinds_add_what_each_feature_adds() -> None:
    assert event_kinds() == EVENT_KINDS == event_kinds([p.FEATURE_HISTORY])
    assert set(event_kinds([p.FEATURE_AUTHZ, p.FEATURE_RECEIPTS])) - set(EVENT_KINDS) == set(
        p.EXTENDED_CLIENT_EVENTS
    )


@pytest.mark.parametrize("event", p.EXTENDED_CLIENT_EVENTS)
def test_each_new_event_gets_valid_and_invalid_cases(event: str) -> None:
    outcomes = set()
    for name, args in generate(cases(event, "me", "peer"), 150, seed=1):
        assert name == event
        if len(args) != 1:
            continue
        try:
            PARSERS[event](args[0])
            outcomes.add("ok")
        except p.ProtocolError:
            outcomes.add("bad")
    assert outcomes == {"ok", "bad"}


def test_unknown_names_avoid_every_known_event() -> None:
    for name, _ in generate(cases("unknown", "me", "peer"), 100, seed=2):
        assert name not in p.ALL_CLIENT_EVENTS


# ---------------------------------------------------------------- hostile tokens

SECRET = "s" * 40


@pytest.mark.parametrize("attack", [a for a in ATTACKS if a != "revoked"])
def test_every_hostile_token_is_refused_by_the_verifier_v5_uses(attack: str) -> None:
    from imlab import auth

    drawn = generate(token_attacks(attack, SECRET, max_life=900), 150, seed=3)
    assert len(drawn) >= 50
    for case in drawn:
        with pytest.raises(auth.AuthError):
            auth.verify_token(case["token"], SECRET, max_lifetime=900)


def test_the_good_claims_the_attacks_start_from_are_accepted() -> None:
    # so a refusal above is the attack's doing, not a broken base token
    from imlab import auth

    issued = auth.issue("alice", SECRET, 600)
    assert auth.verify_token(issued.token, SECRET, max_lifetime=900).user == "alice"


def test_revoked_attack_draws_from_the_tokens_given() -> None:
    drawn = generate(token_attacks("revoked", SECRET, revoked=["t1", "t2"]), 20, seed=1)
    assert {c["token"] for c in drawn} <= {"t1", "t2"}
    with pytest.raises(ValueError):
        token_attacks("revoked", SECRET)
    with pytest.raises(ValueError):
        token_attacks("nonsense", SECRET)
