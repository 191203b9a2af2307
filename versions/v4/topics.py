"""Where a v4 message goes in Kafka; the gateways write there, the workers read it.

The seed's layout: a group's messages on a topic named after the group (one
partition, so one order), 1:1 messages on the shared `im.dm` keyed by
conversation. `--group-topics shared` puts all groups on `im.groups` instead.
"""

from __future__ import annotations

DM_TOPIC = "im.dm"
PARTITIONS = 8  # of each shared topic
SHARED_GROUP_TOPIC = "im.groups"
GROUP_TOPIC_PREFIX = "im.group."
PATTERN = r"^im\.(dm|groups|group\..+)$"
CHOICES = ("per-group", "shared")


def base_topics(scheme: str) -> dict[str, int]:
    """The topics every process creates at start (and after a broker restart)."""
    topics = {DM_TOPIC: PARTITIONS}
    if scheme == "shared":
        topics[SHARED_GROUP_TOPIC] = PARTITIONS
    return topics


def topic_for(conv: str, scheme: str) -> tuple[str, int]:
    """The topic of a conversation and the partition count it is created with."""
    if conv.startswith("dm:"):
        return DM_TOPIC, PARTITIONS
    if scheme == "shared":
        return SHARED_GROUP_TOPIC, PARTITIONS
    return GROUP_TOPIC_PREFIX + conv.removeprefix("group:"), 1
