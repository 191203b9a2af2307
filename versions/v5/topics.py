"""Where a v5 message goes in Kafka: two shared topics, keyed by conversation.

v4 gave each group its own topic; one client creating 1,000 groups then cost the
broker a core for good and every push a tenfold p50 (v4/STEP.md). v5's groups share
`v5.groups` (a conversation keeps one partition, so one order), and creating a group
touches no broker at all.
"""

from __future__ import annotations

DM_TOPIC = "v5.dm"
GROUP_TOPIC = "v5.groups"
PARTITIONS = 8
PATTERN = r"^v5\.(dm|groups)$"
TOPICS = {DM_TOPIC: PARTITIONS, GROUP_TOPIC: PARTITIONS}


def topic_for(conv: str) -> str:
    return DM_TOPIC if conv.startswith("dm:") else GROUP_TOPIC
