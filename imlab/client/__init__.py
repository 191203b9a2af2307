"""The client SDK: an asyncio client (`aio`) for tests, tools and the terminal chat, and a
synchronous one with the same surface (`sync`) for Locust under gevent.

Both hold one sans-I/O core (`core.ClientCore`): it keeps the max seq per conversation,
hands messages over in seq order (`inbox.Inbox`), runs the seed's catch-up rule on every
(re)connect, and returns the history records (docs/PROTOCOL.md section 5) as data, which
a `history.HistoryRecorder` writes. The transports only move requests and acks.
"""

from imlab.client.aio import AsyncChatClient
from imlab.client.core import (
    ClientCore,
    ClientError,
    ConnectRefused,
    NoServerReachable,
    ordered_endpoints,
)
from imlab.client.history import HistoryRecorder
from imlab.client.inbox import Inbox
from imlab.client.sync import SyncChatClient

__all__ = [
    "AsyncChatClient",
    "ClientCore",
    "ClientError",
    "ConnectRefused",
    "HistoryRecorder",
    "Inbox",
    "NoServerReachable",
    "SyncChatClient",
    "ordered_endpoints",
]
