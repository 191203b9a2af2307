"""Load shapes for saturation runs: Locust asks `tick()` every second how many users
should be running; the step shape adds users in equal steps until the plan's total.

Imported by the locustfile only when the plan asks for a shape (Locust uses any shape
class it finds in the locustfile).
"""

from __future__ import annotations

from locust import LoadTestShape

from loadtest.protocol import read_plan


class StepLoadShape(LoadTestShape):
    """`step` more users every `every` seconds up to the plan's user count, then hold;
    the runner ends the run (after the drain and the final sync), never the shape."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.plan = read_plan()

    def tick(self) -> tuple[int, float]:
        shape = self.plan.shape
        assert shape is not None
        users = shape.users_at(self.get_run_time(), self.plan.n)  # type: ignore[no-untyped-call]
        return users, float(max(shape.step, 1))
