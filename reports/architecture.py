"""What each stage is made of, as data: its processes and stores (nodes) and what flows
between them (edges), numbered along the path of one message.

This is the one description of the stages' architecture: the report draws it
(`reports.diagrams`), `markdown()` writes it as text for the stages' STEP.md files,
and a stage's code is expected to do what its entry says. The mechanisms the seed
leaves open are written down here as the plainest real choice (a Redis pub/sub
channel per server or gateway for the hand-off); a stage that chooses otherwise
changes its entry here and in its STEP.md together. A stage beyond v4 is one more
entry.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Node:
    """A process, a store or a channel, placed on a grid of columns and rows."""

    id: str
    label: str
    kind: str  # client | server | gateway | worker | redis | kafka | channel
    col: float
    row: float
    note: str = ""  # what it holds or does, in a few words
    many: bool = False  # one of several alike (N servers, G gateways, W workers)


@dataclass(frozen=True, slots=True)
class Edge:
    """Something that flows from one node to another."""

    src: str
    dst: str
    label: str
    # Position on one message's path (parallel branches share one); 0 = off it (login,
    # catch-up).
    step: int = 0
    bend: float = 0.0  # curvature; keeps two arrows between the same boxes apart
    at: float = 0.5  # where along the arrow its label sits (0 at src, 1 at dst)


@dataclass(frozen=True, slots=True)
class Architecture:
    stage: str
    title: str
    seed_section: int  # the seed's section, 1..6 (docs/SEED.md maps them to 一..六)
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    handoff: str  # how a message reaches a member connected elsewhere
    open_problem: str  # the seed's own open problem, which the harness measures

    def node(self, node_id: str) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(f"{self.stage}: no node {node_id!r}")

    def path(self) -> list[Edge]:
        """The edges on the message path, in step order."""
        return sorted((e for e in self.edges if e.step), key=lambda e: e.step)


V1 = Architecture(
    stage="v1",
    title="one server, one-to-one chat only",
    seed_section=2,
    nodes=(
        Node("a", "client A", "client", 0, 1),
        Node("s", "server", "server", 1.3, 1, note="user → socket map, in memory"),
        Node("b", "client B", "client", 2.6, 1),
    ),
    edges=(
        Edge("a", "s", "send {to: B}", step=1),
        Edge("s", "b", "push message", step=2),
        Edge("s", "a", "echo + ack", step=3, bend=0.35),
    ),
    handoff="none needed: one process holds every connection",
    open_problem=(
        "no groups, and nothing is stored: a message to someone offline is refused, "
        "and one pushed into a socket that just died is lost"
    ),
)

V2 = Architecture(
    stage="v2",
    title="one server + Redis: groups and stored history",
    seed_section=3,
    nodes=(
        Node("a", "client A", "client", 0, 1),
        Node("s", "server", "server", 1.3, 1, note="groups; pushes to members connected here"),
        Node("b", "client B", "client", 2.6, 1, note="keeps max seq x per conversation"),
        Node("r", "Redis", "redis", 1.3, 0, note="messages with a seq per conversation; groups"),
    ),
    edges=(
        Edge("a", "s", "send {group}", step=1),
        Edge("s", "r", "INCR seq + store (one Lua script)", step=2),
        Edge("s", "b", "push to members", step=3, bend=-0.3),
        Edge("s", "a", "echo + ack", step=4, bend=0.35),
        Edge("b", "s", "on reconnect: latest y, sync after x", bend=-0.3),
    ),
    handoff="none needed: one process holds every connection",
    open_problem="one server does everything: under load, latency climbs",
)

V3 = Architecture(
    stage="v3",
    title="N servers + Redis routing + a Kafka topic per group",
    seed_section=4,
    nodes=(
        Node("a", "client A", "client", 0, 2),
        Node("sa", "server A", "server", 1.3, 2, note="Socket.IO + Kafka consumer", many=True),
        Node("k", "Kafka", "kafka", 2.7, 2, note="a topic per group (one partition)"),
        Node("p", "Redis pub/sub", "channel", 1.3, 1, note="a channel per server"),
        Node("r", "Redis", "redis", 2.7, 1, note="user → server; groups; messages + seq"),
        Node("b", "client B", "client", 0, 0),
        Node("sb", "server B", "server", 1.3, 0, note="Socket.IO + Kafka consumer", many=True),
    ),
    edges=(
        Edge("a", "sa", "send {group}", step=1),
        Edge("sa", "k", "publish to the group's topic", step=2, bend=-0.25),
        Edge("k", "sa", "consume the group in order", step=3, bend=-0.25),
        Edge("sa", "r", "store with seq; members' servers", step=4, at=0.62),
        Edge("sa", "a", "push to members here", step=5, bend=0.35),
        Edge("sa", "p", "{user, message} to B's server", step=6),
        Edge("p", "sb", "hand-off", step=7),
        Edge("sb", "b", "push", step=8),
        Edge("sb", "r", "login: user → server"),
    ),
    handoff=(
        "the server whose consumer holds the group's partition publishes each member's "
        "copy on the Redis pub/sub channel of that member's server (at most once: "
        "a copy published while that server is down is gone, and the member syncs)"
    ),
    open_problem=(
        "connection handling and message processing are coupled in one process: "
        "hard to test, change and scale apart"
    ),
)

V4 = Architecture(
    stage="v4",
    title="G gateways + W consumer workers + Redis + Kafka",
    seed_section=5,
    nodes=(
        Node("a", "client A", "client", 0, 2),
        Node("ga", "gateway A", "gateway", 1.3, 2, note="connections; token check", many=True),
        Node("k", "Kafka", "kafka", 2.7, 2, note="a topic per group (one partition)"),
        Node("r", "Redis", "redis", 2.7, 1, note="user → gateway; groups; messages + seq"),
        Node("w", "worker", "worker", 4.1, 1, note="Kafka consumer group", many=True),
        Node("b", "client B", "client", 0, 0),
        Node("gb", "gateway B", "gateway", 1.3, 0, note="pushes what workers send", many=True),
        Node("p", "Redis pub/sub", "channel", 2.7, 0, note="a channel per gateway"),
    ),
    edges=(
        Edge("a", "ga", "send {group}; token checked at connect", step=1),
        Edge("ga", "r", "store with seq", step=2),
        Edge("ga", "k", "publish to the group's topic (no receipt)", step=3),
        Edge("k", "w", "consume", step=4),
        Edge("w", "r", "members; each one's gateway", step=5),
        Edge("w", "p", "{gateway, users, message}", step=6),
        Edge("p", "gb", "B's gateway channel", step=7),
        Edge("gb", "b", "push", step=8),
        Edge("gb", "r", "login: user → gateway"),
    ),
    handoff=(
        "a worker publishes {gateway, users, message} on the Redis pub/sub channel of the "
        "members' gateway, which pushes it to those of them connected there (at most once)"
    ),
    open_problem=(
        "identity is checked but nothing authorizes who may send what; Redis is a single "
        "point of failure for routing; a failed Kafka publish loses the message: no receipt"
    ),
)

ARCHITECTURES: dict[str, Architecture] = {a.stage: a for a in (V1, V2, V3, V4)}


def markdown(arch: Architecture) -> str:
    """The description as Markdown, for a stage's STEP.md."""
    lines = [f"**{arch.stage}: {arch.title}** (seed §{arch.seed_section})", ""]
    lines.append("Parts:")
    for n in arch.nodes:
        many = " (one of several)" if n.many else ""
        note = f": {n.note}" if n.note else ""
        lines.append(f"- {n.label}{many}{note}")
    lines += ["", "One message, step by step:"]
    names = {n.id: n.label for n in arch.nodes}
    for e in arch.path():
        lines.append(f"{e.step}. {names[e.src]} → {names[e.dst]}: {e.label}")
    others = [e for e in arch.edges if not e.step]
    if others:
        lines += ["", "Off that path:"]
        lines += [f"- {names[e.src]} → {names[e.dst]}: {e.label}" for e in others]
    lines += ["", f"Hand-off: {arch.handoff}.", f"Open problem: {arch.open_problem}."]
    return "\n".join(lines) + "\n"
