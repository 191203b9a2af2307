"""The locustfile `imlab load` runs: the plan-driven `ChatUser`, plus the step shape
when the plan has one. Run it through `imlab load`, which writes the plan first."""

from __future__ import annotations

import os

from loadtest.plan import LoadPlan
from loadtest.users import ChatUser

__all__ = ["ChatUser"]

if LoadPlan.load(os.environ["IMLAB_LOAD_PLAN"]).shape is not None:
    from loadtest.shapes import StepLoadShape

    __all__ += ["StepLoadShape"]
