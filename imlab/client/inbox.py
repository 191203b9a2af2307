"""Per-conversation delivery in seq order, the client's ordering rule; pure logic, no I/O."""

from __future__ import annotations

from imlab.protocol import Message


class Inbox:
    """Per-conversation delivery in seq order.

    A message with the next seq is delivered at once (with any buffered
    successors); one ahead of a gap waits until the gap is filled (by push or
    sync); one at or below the max seq is a duplicate and dropped. Messages
    without a seq (stage v1) are delivered as they come. Each delivered message
    keeps the path it came by: a push held behind a gap is still a push.
    """

    def __init__(self) -> None:
        self.max_seq: dict[str, int] = {}
        self.pending: dict[str, dict[int, tuple[Message, str]]] = {}
        self.duplicates = 0

    def accept(self, msg: Message, via: str = "push") -> list[tuple[Message, str]]:
        if msg.seq is None:
            return [(msg, via)]
        conv = msg.conv
        cur = self.max_seq.get(conv, 0)
        if msg.seq <= cur:
            self.duplicates += 1
            return []
        waiting = self.pending.setdefault(conv, {})
        if msg.seq != cur + 1:
            if msg.seq in waiting:
                self.duplicates += 1
            else:
                waiting[msg.seq] = (msg, via)
            return []
        out = [(msg, via)]
        nxt = msg.seq + 1
        while nxt in waiting:
            out.append(waiting.pop(nxt))
            nxt += 1
        self.max_seq[conv] = nxt - 1
        if not waiting:
            del self.pending[conv]
        return out

    def gaps(self) -> dict[str, int]:
        """Conversations with a gap, and the seq to sync after."""
        return {conv: self.max_seq.get(conv, 0) for conv in self.pending}
