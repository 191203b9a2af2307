"""Model of stage v2 (`versions/v2/server.py`, seed section 三): one server plus Redis.

A send is checked against the group's members (one Redis call for a group),
stored first with the conversation's next seq (the store's Lua append: one Redis
call), then pushed to every member connected here (the sender's echo included),
then acked with its seq. While Redis is paused (SIGSTOP) the calls wait until
redis-py's 5 s socket timeout and the client gets `unavailable`; the paused append
still runs when Redis resumes, so such a message is stored but never pushed: the
members find it by gap repair or catch-up, and the checker counts it as delivered
though not acked — nothing acked is lost. While Redis is down (killed) calls fail
at once. A client that was away catches up with `latest` and `sync`.
"""

from __future__ import annotations

from sim.client import User
from sim.server import FEATURE_DM, FEATURE_GROUPS, FEATURE_HISTORY, Msg, Node, Steps
from sim.stage import StageModel


class V2(StageModel):
    stage = "v2"
    features = frozenset({FEATURE_DM, FEATURE_GROUPS, FEATURE_HISTORY})
    uses_redis = True

    def members_of(self, node: Node, msg: Msg) -> Steps:
        """`Server.members_of`: a dm's two users, or the group's members from Redis."""
        if msg.conv.gid is None:
            return msg.conv.members
        members = yield from self.redis_call(node, lambda: msg.conv.members, keys=(msg.conv.cid,))
        return members

    def handle_send(self, node: Node, *, user: User, msg: Msg) -> Steps:
        members = yield from self.members_of(node, msg)
        seq = yield from self.redis_call(node, lambda: self.store.append(msg), keys=(msg.conv.cid,))
        yield from self.push(node, members, msg)
        return seq
