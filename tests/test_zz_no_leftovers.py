"""Runs last (file order): nothing the suite started is still running."""

from __future__ import annotations

import psutil

from imlab import services

WATCHED = ("redis-server", "tansu", "versions.")


def test_no_service_process_is_left_behind() -> None:
    leftovers = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
            if child.status() != psutil.STATUS_ZOMBIE and any(w in cmd for w in WATCHED):
                leftovers.append(f"{child.pid}: {cmd}")
        except psutil.NoSuchProcess:
            continue
    assert not leftovers, "processes left running:\n" + "\n".join(leftovers)
    assert not services._live
