"""The Node.js generator end to end: a group load on v4 (tokens, Kafka, seqs) played by
gen.js, after an unrecorded warm-up, is judged by the same checker as a Locust run, from
the same kind of history."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.runner import LoadOptions, run_load


def test_node_generator_plays_a_group_load_on_v4_and_the_checker_judges_it(
    tmp_path: Path,
) -> None:
    result = run_load(
        LoadOptions(
            stage="v4",
            scenario="group",
            users=16,
            rate=2.0,
            duration=3.0,
            generator="node",
            processes=2,
            warmup=1.0,
            run_dir=tmp_path / "run",
            quiet=True,
        )
    )
    m = result.metrics
    assert m["sends"]["acked_ok"] == m["sends"]["attempted"] >= 16 * 2 * 3 - 16
    assert m["deliveries"]["lost"] == 0 and m["deliveries"]["duplicated"] == 0
    assert m["deliveries"]["delivered"] == m["deliveries"]["expected"] > 0
    assert m["summary"]["clean"], result.summary
    gen = result.manifest["load_generator"]
    histories = sorted((tmp_path / "run").glob("history-node*.jsonl"))
    assert len(histories) == 2  # one per process
    seqs = [
        json.loads(line)["seq"]
        for line in histories[0].read_text().splitlines()
        if json.loads(line)["ev"] == "recv"
    ]
    assert seqs and all(isinstance(s, int) and s > 0 for s in seqs)
    # the warm-up's messages took the first seqs and left no event in the history
    assert min(seqs) > 1
    text = "".join(h.read_text() for h in histories)
    assert "warm-" not in text and result.manifest["params"]["warmup"] == 1.0
    assert gen["status"]["warmup_sends"] >= 16
    assert gen["tool"] == "node" and gen["client"] and gen["status"]["final_synced"] == 16
    assert not gen["verdict"]["generator_limited"]
