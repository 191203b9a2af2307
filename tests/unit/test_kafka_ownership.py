"""Partition ownership (imlab.membership.owner): rendezvous hashing over the live members.
Pure logic; the stages' tests show it at work on the real broker."""

from __future__ import annotations

from collections import Counter

from aiokafka.structs import TopicPartition

from imlab.membership import owner

GROUPS = [TopicPartition(f"im.group.g{i}", 0) for i in range(1, 3001)]


def test_group_topics_spread_evenly_over_the_members() -> None:
    for members in (["server-0", "server-1", "server-2"], ["worker-0", "worker-1"]):
        share = Counter(owner(tp, members) for tp in GROUPS)
        assert set(share) == set(members)
        fair = len(GROUPS) / len(members)
        assert all(0.85 * fair < n < 1.15 * fair for n in share.values()), share


def test_a_leaving_member_moves_only_its_own_partitions() -> None:
    members = ["server-0", "server-1", "server-2"]
    for tp in GROUPS:
        before = owner(tp, members)
        after = owner(tp, members[:2])
        assert after == before or before == "server-2"


def test_every_member_computes_the_same_owner_whatever_the_list_order() -> None:
    members = ["gateway-b", "gateway-a", "gateway-c"]
    for tp in GROUPS[:200]:
        assert owner(tp, members) == owner(tp, sorted(members)) == owner(tp, members[::-1])
