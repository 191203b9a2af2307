"""The locustfile `imlab load` runs: the plan-driven `ChatUser`, plus the step shape
when the plan has one. Run it through `imlab load`, which writes the plan first."""

from __future__ import annotations

import locust.runners

from loadtest.protocol import read_plan
from loadtest.users import ChatUser

__all__ = ["ChatUser"]

# A worker busy with hundreds of connecting users can miss Locust's heartbeats for a few
# seconds; the master then declares it missing and, when it comes back, moves users
# between processes (stopping some mid-run). A user is a planned identity, not a
# replaceable load unit, so the master is told to wait a minute instead of 3 s.
locust.runners.HEARTBEAT_LIVENESS = 60

if read_plan().shape is not None:
    from loadtest.shapes import StepLoadShape

    __all__ += ["StepLoadShape"]
