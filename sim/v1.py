"""Model of stage v1 (`versions/v1/server.py`, seed section 二): one server, 1:1 only.

Login binds `user -> connection` in the server's memory. A send whose recipient is
not in that table is answered `recipient_offline`; otherwise the message is pushed
to the recipient and echoed to the sender, then acked `ok`. Nothing is stored and
messages carry no seq, so there is no catch-up: a push into a connection whose
client has silently gone (the server still lists it) is lost although the sender
was told `ok` — the loss the `churn` scenario measures. Groups are `unsupported`.
"""

from __future__ import annotations

from sim.client import User
from sim.server import FEATURE_DM, Msg, Node, ProtocolRefusal, Steps
from sim.stage import StageModel


class V1(StageModel):
    stage = "v1"
    features = frozenset({FEATURE_DM})

    def handle_send(self, node: Node, *, user: User, msg: Msg) -> Steps:
        if msg.conv.gid is not None:
            raise ProtocolRefusal("unsupported")
        to = next(m for m in msg.conv.members if m != user.idx)
        if to not in node.local:
            raise ProtocolRefusal("recipient_offline")
        yield from self.push(node, [to, user.idx], msg)
        return None
