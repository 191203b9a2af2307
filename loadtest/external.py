"""A server that `imlab load` did not start (`imlab load --url`, `LoadOptions.urls`):
a peer such as benchmarks/node_peer/, or a stage someone runs by hand. The load goes
to its URLs and speaks the named stage's protocol (its auth, its features); imlab
starts and stops nothing, and can put no fault on it.

It stands in for `imlab.cluster.Cluster` where the runner uses one: the endpoints, the
processes whose CPU is sampled (`pids`, when the caller knows them), the logs folder
and the manifest."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imlab.cluster import machine_info, package_versions


@dataclass(frozen=True)
class Process:
    """One process of the external server, for the CPU sampler."""

    pid: int


class ExternalStage:
    def __init__(
        self, stage: str, urls: Sequence[str], run_dir: Path, pids: Sequence[int] = ()
    ) -> None:
        if not urls:
            raise ValueError("an external server needs at least one URL")
        self.stage, self.urls, self.run_dir = stage, list(urls), run_dir
        self.pids = list(pids)
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.started_at = 0.0

    @property
    def endpoints(self) -> list[str]:
        return list(self.urls)

    def start(self) -> ExternalStage:
        self.started_at = time.time()
        return self

    def stop(self) -> None:
        """Nothing to stop: whoever started the server stops it."""

    def services(self) -> list[Process]:
        return [Process(pid) for pid in self.pids]

    def broker_info(self) -> dict[str, Any] | None:
        return None

    def manifest(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "external": True,  # started outside imlab; `stage` names the protocol it speaks
            "started_at": self.started_at,
            "endpoints": self.endpoints,
            "processes": {f"external-{i}": {"pid": pid} for i, pid in enumerate(self.pids)},
            "machine": machine_info(),
            "versions": package_versions(),
        }
