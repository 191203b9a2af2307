"""Runs last (file order): nothing the suite started is still running, not even an
orphan whose parent died. Every process the suite starts inherits a per-session
environment mark (set in conftest), so it is found by that mark, not by parentage."""

from __future__ import annotations

import os

import psutil

from imlab import services

from .conftest import SESSION_MARK


def test_no_service_process_is_left_behind() -> None:
    mark = os.environ[SESSION_MARK]
    leftovers = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(SESSION_MARK) == mark:
                leftovers.append(f"{proc.pid}: {' '.join(proc.cmdline())}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    assert not leftovers, "processes left running:\n" + "\n".join(leftovers)
    assert not services._live
