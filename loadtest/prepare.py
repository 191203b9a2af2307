"""Before the load: ask the stage what it can do (its `hello` features) and create the
planned groups, each by its first member, with the asyncio client SDK."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path

from imlab import stages
from imlab.client import AsyncChatClient, HistoryRecorder
from imlab.cluster import Cluster
from imlab.experiment.scenarios import check_scenario, group_indices
from loadtest.external import ExternalStage
from loadtest.plan import LoadPlan


class LoadRunError(RuntimeError):
    """The run could not be carried out (the message says which step failed)."""


async def prepare(
    plan: LoadPlan, cluster: Cluster | ExternalStage, history: Path, secret: str
) -> tuple[set[str], dict[str, list[str]]]:
    """Ask the stage what it can do, then create the planned groups (their first
    member creates each). Returns the stage's features and {group_id: members}."""
    recorder = HistoryRecorder(history)

    def client(user: str) -> AsyncChatClient:
        token = None
        if stages.stage(plan.stage).uses_tokens:
            auth = importlib.import_module("imlab.auth")  # v4 tokens
            token = auth.issue_token(user, secret, ttl=plan.token_ttl)
        return AsyncChatClient(
            user, cluster.endpoints, reconnect=False, recorder=recorder, token=token
        )

    try:
        probe = client(plan.users[0])
        await probe.connect()
        features = set(probe.features)
        await probe.close()
        check_scenario(plan.scenario, plan.n, plan.group_size, features)
        if not plan.uses_groups:
            return features, {}
        gate = asyncio.Semaphore(16)

        async def create(members: list[str]) -> tuple[str, list[str]]:
            async with gate:
                creator = client(members[0])
                await creator.connect()
                try:
                    ack = await creator.create_group(members[1:], name="load")
                finally:
                    await creator.close()
                if not ack.get("ok"):
                    raise LoadRunError(f"create_group for {members[0]} failed: {ack}")
                return str(ack["group_id"]), sorted(ack.get("members") or members)

        plans = [
            [plan.users[i] for i in idx]
            for idx in group_indices(plan.scenario, plan.n, plan.group_size)
        ]
        created = await asyncio.gather(*(create(m) for m in plans))
        return features, dict(created)
    finally:
        recorder.close()
