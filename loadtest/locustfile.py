"""The locustfile `imlab load` runs: the plan-driven `ChatUser`, plus the step shape
when the plan has one. Run it through `imlab load`, which writes the plan first."""

from __future__ import annotations

import time
from typing import Any

import locust.main
import locust.runners

from loadtest.protocol import read_plan
from loadtest.users import ChatUser

__all__ = ["ChatUser"]

# A worker busy with hundreds of connecting users can miss Locust's heartbeats for a few
# seconds; the master then declares it missing and, when it comes back, moves users
# between processes (stopping some mid-run). A user is a planned identity, not a
# replaceable load unit, so the master is told to wait a minute instead of 3 s.
locust.runners.HEARTBEAT_LIVENESS = 60


class _PromptClock:
    """`locust.main`'s `time`, with sleeps of at most 50 ms: the master checks for its
    worker processes once a second before it starts the users, which held every run
    about a second before its users could connect (workers are ready in ~0.2 s)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, 0.05))


if getattr(locust.main, "time", None) is time:  # as in Locust 2.x; otherwise leave it be
    setattr(locust.main, "time", _PromptClock())  # noqa: B010 - a module global, on purpose

if read_plan().shape is not None:
    from loadtest.shapes import StepLoadShape

    __all__ += ["StepLoadShape"]
