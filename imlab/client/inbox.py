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

    def start_after(self, conv: str, seq: int) -> list[tuple[Message, str]]:
        """Nothing at or below `seq` of `conv` is this client's to see (it joined the
        group then): deliver from `seq + 1` on, with what waited behind that point."""
        cur = self.max_seq.get(conv, 0)
        if seq <= cur:
            return []
        waiting = self.pending.get(conv, {})
        for s in [s for s in waiting if s <= seq]:
            del waiting[s]
        out = []
        nxt = seq + 1
        while nxt in waiting:
            out.append(waiting.pop(nxt))
            nxt += 1
        self.max_seq[conv] = nxt - 1
        if not waiting:
            self.pending.pop(conv, None)
        return out

    def gaps(self) -> dict[str, int]:
        """Conversations with a gap, and the seq to sync after."""
        return {conv: self.max_seq.get(conv, 0) for conv in self.pending}
