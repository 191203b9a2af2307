"""What every test folder shares, and how the folders differ:

- `unit/`: pure logic, the simulator, the checker on synthetic histories; starts no
  process (marker `unit`; `make test-fast` runs these alone, in seconds);
- `stages/`: real stages started through `imlab.cluster` (real Redis, real Apache
  Kafka), one cluster per stage per test module (marker `stages`);
- `e2e/`: whole commands end to end (`imlab load`, `imlab up`, `imlab compare`,
  live faults) in subprocesses (marker `e2e`).

Fixtures: the stages and a client factory that closes its clients. A stage that
cannot start fails the test with the services' log tails; nothing is skipped
because a service is missing. At the end of the session no process the suite
started may still run (checked by an environment mark every such process inherits).
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from imlab import services
from imlab.client import AsyncChatClient
from imlab.cluster import Cluster, ClusterSpec
from imlab.services import stop_all

# Inherited by every process the suite starts; test_zz_no_leftovers looks for it.
SESSION_MARK = "IMLAB_TEST_SESSION"
os.environ.setdefault(SESSION_MARK, uuid.uuid4().hex)

# Every stage the contract suite runs against, with the process counts it uses.
STAGE_SPECS: dict[str, dict[str, int]] = {
    "v1": {},
    "v2": {},
    "v3": {"servers": 3},
    "v4": {"servers": 2, "workers": 2},
    "v5": {"servers": 2, "workers": 2},
}
ALL_STAGES = list(STAGE_SPECS)
HISTORY_STAGES = [s for s in ALL_STAGES if s != "v1"]


@dataclass
class StageUnderTest:
    """A running stage and a factory of clients that speak for fresh users."""

    cluster: Cluster
    clients: list[AsyncChatClient] = field(default_factory=list)
    _n: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def stage(self) -> str:
        return self.cluster.spec.stage

    def users(self, n: int) -> list[str]:
        """Fresh user ids, unique in this cluster's lifetime."""
        tag = uuid.uuid4().hex[:6]
        return [f"u{next(self._n)}-{tag}" for _ in range(n)]

    def token(self, user: str) -> str | None:
        from imlab import auth, stages

        if not stages.stage(self.stage).uses_tokens:
            return None

        # 10 minutes: within what every token stage accepts (v5: at most 15).
        return auth.issue_token(user, self.cluster.spec.secret, ttl=600)

    def client(self, user: str, **kw: object) -> AsyncChatClient:
        c = AsyncChatClient(user, self.cluster.endpoints, token=self.token(user), **kw)  # type: ignore[arg-type]
        self.clients.append(c)
        return c

    async def connected(self, *users: str) -> list[AsyncChatClient]:
        out = []
        for u in users:
            c = self.client(u)
            await c.connect()
            out.append(c)
        return out

    async def close_clients(self) -> None:
        for c in self.clients:
            await c.close()
        self.clients.clear()


def start_cluster(stage: str, tmp: Path) -> Cluster:
    spec = ClusterSpec(stage, **STAGE_SPECS.get(stage, {}))
    return Cluster(spec, tmp / f"cluster-{stage}").start()


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """The stage named by the test's `stage` parameter (indirect), one per module."""
    stage: str = request.param
    c = start_cluster(stage, tmp_path_factory.mktemp(stage))
    try:
        yield c
    finally:
        c.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
async def sut(cluster: Cluster, request: pytest.FixtureRequest) -> AsyncIterator[StageUnderTest]:
    s = StageUnderTest(cluster)
    try:
        yield s
    finally:
        await s.close_clients()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print_log_tails(cluster)


def print_log_tails(cluster: Cluster, lines: int = 30) -> None:
    """What every process of the stage logged last: printed with a failing test's output."""
    for svc in cluster.services():
        print(f"----- {svc.name}: {svc.log_path}\n{svc.log_tail(lines)}")


FOLDER_MARKERS = {"unit": "unit", "stages": "stages", "e2e": "e2e"}


def pytest_configure(config: pytest.Config) -> None:
    for marker, what in (
        ("unit", "pure logic; starts no process"),
        ("stages", "runs real stages (Redis, Kafka, stage processes)"),
        ("e2e", "whole commands end to end, in subprocesses"),
    ):
        config.addinivalue_line("markers", f"{marker}: {what}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test carries the marker of its folder, so `-m unit` and the like select."""
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        if folder in FOLDER_MARKERS:
            item.add_marker(FOLDER_MARKERS[folder])


def leftover_processes() -> list[str]:
    """Processes that carry this session's mark and still run (orphans included)."""
    mark = os.environ[SESSION_MARK]
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(SESSION_MARK) == mark:
                found.append(f"{proc.pid}: {' '.join(proc.cmdline())}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop what is still registered, then fail the session if anything the suite
    started outlived it."""
    registered = len(services._live)
    stop_all()
    deadline = time.monotonic() + 10.0
    left = leftover_processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = leftover_processes()
    if registered or left:
        print(f"\nleft behind by the suite: {registered} registered service(s) at the end; "
              "still running:\n" + "\n".join(left or ["(none)"]))  # fmt: skip
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
