"""Unit tests of the checker: hand-built histories whose every count is known exactly."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reports.checker import ANOMALY_KINDS, check, main, summary_table
from reports.checks import CHECKS, compose
from reports.checks.index import Index
from reports.history import load_run
from reports.stats import count_inversions, latency_stats

T0 = 1_000.0


class History:
    """Builds a run folder event by event; times are seconds after T0."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def add(self, **event: Any) -> History:
        event["t"] = T0 + event["t"]
        self.events.append(event)
        return self

    def send(
        self, t: float, user: str, conv: str, msg: str, intended: float | None = None
    ) -> History:
        at = t if intended is None else intended
        return self.add(t=t, ev="send", user=user, conv=conv, msg=msg, intended=T0 + at)

    def ack(
        self, t: float, user: str, msg: str, seq: int | None = None, err: str | None = None
    ) -> History:
        return self.add(t=t, ev="ack", user=user, msg=msg, ok=err is None, err=err, seq=seq)

    def sent(self, t: float, user: str, conv: str, msg: str, seq: int | None = None) -> History:
        """A send acked ok 1 ms later."""
        return self.send(t, user, conv, msg).ack(t + 0.001, user, msg, seq)

    def recv(
        self,
        t: float,
        user: str,
        msg: str,
        sender: str,
        conv: str,
        seq: int | None = None,
        via: str = "push",
    ) -> History:
        return self.add(
            t=t, ev="recv", user=user, conv=conv, msg=msg, seq=seq, via=via, sender=sender
        )

    def write(
        self,
        run_dir: Path,
        groups: dict[str, list[str]] | None = None,
        files: int = 1,
        **manifest: Any,
    ) -> Path:
        run_dir.mkdir(parents=True, exist_ok=True)
        last = max((e["t"] for e in self.events), default=T0)
        man: dict[str, Any] = {
            "stage": "test",
            "scenario": "unit",
            "params": {},
            "started_at": T0,
            "ended_at": last,
            "groups": groups or {},
            "faults": [],
            "machine": {},
            "versions": {},
        }
        man.update(manifest)
        (run_dir / "manifest.json").write_text(json.dumps(man))
        # Split by user so each file is one "process"; each file in time order.
        users = sorted({str(e.get("user")) for e in self.events})
        for k in range(files):
            mine = [e for e in self.events if users.index(str(e.get("user"))) % files == k]
            mine.sort(key=lambda e: e["t"])
            text = "".join(json.dumps(e) + "\n" for e in mine)
            (run_dir / f"history-{k}.jsonl").write_text(text)
        return run_dir


def anomalies_except(metrics: dict[str, Any], **expected: int) -> None:
    want = {kind: expected.get(kind, 0) for kind in ANOMALY_KINDS}
    assert metrics["anomalies"] == want


DM_AB = "dm:a:b"
G = "group:g1"


# --------------------------------------------------------------------------- clean runs


def test_clean_dm_has_no_anomalies(tmp_path: Path) -> None:
    h = History()
    h.sent(0.0, "a", DM_AB, "m1", seq=1)
    h.recv(0.010, "b", "m1", "a", DM_AB, seq=1)
    h.recv(0.011, "a", "m1", "a", DM_AB, seq=1)  # echo to the sender
    h.sent(1.0, "b", DM_AB, "m2", seq=2)
    h.recv(1.010, "a", "m2", "b", DM_AB, seq=2)
    h.recv(1.011, "b", "m2", "b", DM_AB, seq=2)
    m = check(h.write(tmp_path))
    anomalies_except(m)
    assert m["summary"]["clean"] is True
    assert m["sends"] == {
        "attempted": 2,
        "acked_ok": 2,
        "acked_error": 0,
        "acked_error_by_code": {},
        "never_acked": 0,
        "cut_off_by_revocation": 0,
        "retried": 0,
        "acks_without_send": 0,
    }
    d = m["deliveries"]
    assert (d["expected"], d["delivered"], d["push"], d["sync"]) == (2, 2, 2, 0)
    assert d["self_receipts"] == 2
    assert m["checker"]["warnings"] == []
    assert json.loads((tmp_path / "metrics.json").read_text()) == m


def test_clean_group_has_no_anomalies(tmp_path: Path) -> None:
    h = History()
    members = ["a", "b", "c", "d"]
    for i, sender in enumerate(["a", "b", "c", "a", "d"], start=1):
        t = float(i)
        h.sent(t, sender, G, f"m{i}", seq=i)
        for k, user in enumerate(members):
            h.recv(t + 0.01 + k * 0.001, user, f"m{i}", sender, G, seq=i)
    m = check(h.write(tmp_path, groups={"g1": members}))
    anomalies_except(m)
    d = m["deliveries"]
    assert (d["expected"], d["delivered"], d["push"]) == (15, 15, 15)
    assert m["ordering"]["order_disagreements"]["member_pairs"] == 0
    assert m["ordering"]["sync_gaps"] == 0


# --------------------------------------------------------------------------- delivery anomalies


def test_lost(tmp_path: Path) -> None:
    h = History()
    h.sent(0.0, "a", DM_AB, "m1", seq=1)  # b never gets it
    h.sent(1.0, "a", G, "m2", seq=1)
    h.recv(1.01, "b", "m2", "a", G, seq=1)  # c never gets it
    h.recv(1.01, "a", "m2", "a", G, seq=1)
    m = check(h.write(tmp_path, groups={"g1": ["a", "b", "c"]}))
    anomalies_except(m, lost=2)
    d = m["deliveries"]
    assert (d["expected"], d["delivered"], d["lost"], d["lost_messages"]) == (3, 1, 2, 2)
    assert [(x["msg"], x["missing"]) for x in d["lost_examples"]] == [
        ("m1", ["b"]),
        ("m2", ["c"]),
    ]
    assert m["summary"]["clean"] is False
    assert sum(m["series"]["lost"]) == 2


def test_ack_after_the_end_is_unjudged_not_lost(tmp_path: Path) -> None:
    h = History()
    h.send(0.0, "a", DM_AB, "m1").ack(5.0, "a", "m1", seq=1)
    m = check(h.write(tmp_path, drain_end=T0 + 2.0))
    anomalies_except(m)
    assert m["deliveries"]["unjudged"] == 1


def test_duplicated(tmp_path: Path) -> None:
    h = History()
    h.sent(0.0, "a", DM_AB, "m1", seq=1)
    h.recv(0.01, "b", "m1", "a", DM_AB, seq=1)
    h.recv(2.0, "b", "m1", "a", DM_AB, seq=1, via="sync")
    h.recv(3.0, "b", "m1", "a", DM_AB, seq=1)
    h.recv(0.02, "a", "m1", "a", DM_AB, seq=1)
    h.recv(0.03, "a", "m1", "a", DM_AB, seq=1)  # a duplicated echo is not counted
    h.sent(4.0, "a", DM_AB, "m2", seq=2)
    h.recv(4.01, "b", "m2", "a", DM_AB, seq=2)
    h.recv(4.02, "b", "m2", "a", DM_AB, seq=2)
    m = check(h.write(tmp_path))
    anomalies_except(m, duplicated=3)
    d = m["deliveries"]
    assert (d["delivered"], d["push"], d["sync"], d["duplicated_pairs"]) == (2, 2, 0, 2)


def test_unexpected(tmp_path: Path) -> None:
    h = History()
    h.sent(0.0, "a", DM_AB, "m1", seq=1)
    h.recv(0.01, "b", "m1", "a", DM_AB, seq=1)
    h.recv(0.01, "c", "m1", "a", DM_AB, seq=1)  # c is not in dm:a:b
    h.recv(0.50, "b", "ghost", "a", DM_AB, seq=7)  # never sent
    h.sent(1.0, "a", G, "m2", seq=1)
    h.recv(1.01, "b", "m2", "a", G, seq=1)
    h.recv(1.01, "x", "m2", "a", G, seq=1)  # x is not a member
    m = check(h.write(tmp_path, groups={"g1": ["a", "b"]}))
    anomalies_except(m, unexpected=3)
    d = m["deliveries"]
    assert (d["unexpected_never_sent"], d["unexpected_not_recipient"]) == (1, 2)
    assert d["delivered"] == d["expected"] == 2


def test_acked_with_error(tmp_path: Path) -> None:
    h = History()
    h.send(0.0, "a", DM_AB, "m1").ack(0.01, "a", "m1", err="recipient_offline")
    h.send(1.0, "a", DM_AB, "m2").ack(1.01, "a", "m2", err="unavailable")
    h.recv(1.02, "b", "m2", "a", DM_AB)  # delivered although the ack said it failed
    h.send(2.0, "a", DM_AB, "m3").ack(2.01, "a", "m3", err="recipient_offline")
    m = check(h.write(tmp_path))
    anomalies_except(m)
    s = m["sends"]
    assert (s["attempted"], s["acked_ok"], s["acked_error"], s["never_acked"]) == (3, 0, 3, 0)
    assert s["acked_error_by_code"] == {"recipient_offline": 2, "unavailable": 1}
    d = m["deliveries"]
    assert (d["expected"], d["lost"], d["error_undelivered"]) == (0, 0, 2)
    assert d["delivered_unacked"] == 1
    assert d["delivered_unacked_by"] == {"acked_error": 1, "never_acked": 0}


def test_never_acked(tmp_path: Path) -> None:
    h = History()
    h.send(0.0, "a", DM_AB, "m1")
    h.send(1.0, "a", DM_AB, "m2")
    h.recv(1.02, "b", "m2", "a", DM_AB)
    m = check(h.write(tmp_path))
    anomalies_except(m)
    s = m["sends"]
    assert (s["attempted"], s["acked_ok"], s["never_acked"]) == (2, 0, 2)
    d = m["deliveries"]
    assert (d["lost"], d["unacked_undelivered"], d["delivered_unacked"]) == (0, 1, 1)
    assert d["delivered_unacked_by"] == {"acked_error": 0, "never_acked": 1}


def test_retry_then_ok_counts_once(tmp_path: Path) -> None:
    h = History()
    h.send(0.0, "a", DM_AB, "m1").ack(0.5, "a", "m1", err="unavailable")
    h.send(1.0, "a", DM_AB, "m1").ack(1.01, "a", "m1", seq=1)
    h.recv(1.02, "b", "m1", "a", DM_AB, seq=1)
    m = check(h.write(tmp_path))
    anomalies_except(m)
    assert m["sends"]["attempted"] == 1
    assert m["sends"]["acked_ok"] == 1
    assert m["sends"]["retried"] == 1


# --------------------------------------------------------------------------- ordering anomalies


def test_seq_backwards(tmp_path: Path) -> None:
    # Two senders, so neither FIFO nor member order is at stake: only c's seq order.
    h = History()
    h.sent(0.0, "a", G, "m1", seq=1)
    h.sent(0.1, "b", G, "m2", seq=2)
    h.recv(0.20, "c", "m2", "b", G, seq=2)
    h.recv(0.30, "c", "m1", "a", G, seq=1)
    h.recv(0.20, "a", "m2", "b", G, seq=2)
    h.recv(0.20, "b", "m1", "a", G, seq=1)
    m = check(h.write(tmp_path, groups={"g1": ["a", "b", "c"]}))
    anomalies_except(m, seq_backwards=1)


def test_seq_reused_by_acks_two_senders_told_the_same_seq(tmp_path: Path) -> None:
    # v4 after its Redis came back empty: m2 is acked with seq 1 again. The client
    # dedups by seq, so b is shown m1 only: m2 is lost too, and the acks show why.
    h = History()
    h.sent(0.0, "a", DM_AB, "m1", seq=1)
    h.recv(0.010, "b", "m1", "a", DM_AB, seq=1)
    h.sent(1.0, "a", DM_AB, "m2", seq=1)
    m = check(h.write(tmp_path))
    anomalies_except(m, seq_reused=1, lost=1)
    o = m["seqs"]
    assert (o["seq_reused"], o["seq_reused_in_acks"], o["seq_reused_convs"]) == (1, 1, 1)
    assert o["seq_reused_examples"] == [
        {"conv": DM_AB, "seq": 1, "msgs": {"m1": ["ack", "recv"], "m2": ["ack"]}}
    ]
    assert m["verdict"]["verdict"] == "anomalous"
    assert "seq_reused 1" in m["verdict"]["why"]


def test_seq_reused_seen_by_two_clients_each_shown_a_different_message(
    tmp_path: Path,
) -> None:
    # Acks carry no seq (as v3's); b and c were each shown a different message as seq 1.
    h = History()
    h.sent(0.0, "a", G, "m1")
    h.sent(0.5, "a", G, "m2")
    h.recv(0.010, "b", "m1", "a", G, seq=1)
    h.recv(0.510, "b", "m2", "a", G, seq=2)
    h.recv(0.011, "c", "m2", "a", G, seq=1)
    h.recv(0.511, "c", "m1", "a", G, seq=2)
    m = check(h.write(tmp_path, groups={"g1": ["a", "b", "c"]}))
    assert m["anomalies"]["seq_reused"] == 2  # seq 1 and seq 2 each name two messages
    assert m["seqs"]["seq_reused_in_acks"] == 0


def test_a_retried_send_acked_twice_with_its_seq_is_no_reuse(tmp_path: Path) -> None:
    h = History()
    h.sent(0.0, "a", DM_AB, "m1", seq=1)
    h.send(0.5, "a", DM_AB, "m1").ack(0.6, "a", "m1", seq=1)  # the retry, deduplicated
    h.ack(0.7, "a", "m1", err="unavailable")  # a refused attempt says nothing about seqs
    h.sent(1.0, "a", DM_AB, "m2", seq=2)
    h.recv(0.010, "b", "m1", "a", DM_AB, seq=1)
    h.recv(1.010, "b", "m2", "a", DM_AB, seq=2)
    h.recv(1.020, "b", "m2", "a", DM_AB, seq=2)  # shown twice: a duplicate, not a reuse
    m = check(h.write(tmp_path))
    anomalies_except(m, duplicated=1)
    assert m["seqs"]["seqs_seen"] == 2
    assert m["seqs"]["seq_reused"] == 0


def test_the_same_seq_in_two_conversations_is_no_reuse(tmp_path: Path) -> None:
    h = History()
    h.sent(0.0, "a", DM_AB, "m1", seq=1)
    h.sent(0.0, "a", "dm:a:c", "m2", seq=1)
    h.recv(0.010, "b", "m1", "a", DM_AB, seq=1)
    h.recv(0.010, "c", "m2", "a", "dm:a:c", seq=1)
    anomalies_except(check(h.write(tmp_path)))


def test_seq_backwards_counts_each_event_below_the_max(tmp_path: Path) -> None:
    h = History()
    senders = {1: "a", 2: "b", 3: "a", 4: "b"}
    for seq, sender in senders.items():
        h.sent(seq * 0.1, sender, G, f"m{seq}", seq=seq)
    for k, seq in enumerate([4, 1, 2, 3]):  # 1, 2 and 3 each arrive below the max 4
        h.recv(1 + k * 0.1, "c", f"m{seq}", senders[seq], G, seq=seq)
    m = check(h.write(tmp_path, groups={"g1": ["a", "b", "c"]}))
    assert m["anomalies"]["seq_backwards"] == 3


def test_member_order_disagreement(tmp_path: Path) -> None:
    # No seqs (as in a stage without them) and one message per sender, so only
    # members' relative orders can disagree.
    h = History()
    h.sent(0.0, "a", G, "m1")
    h.sent(0.1, "b", G, "m2")
    h.sent(0.2, "c", G, "m3")
    orders = {
        "p": ["m1", "m2", "m3"],
        "q": ["m3", "m2", "m1"],  # inverts all three pairs
        "a": ["m2", "m3"],
        "b": ["m1", "m3"],
        "c": ["m1", "m2"],
    }
    senders = {"m1": "a", "m2": "b", "m3": "c"}
    for user, order in orders.items():
        for k, msg in enumerate(order):
            h.recv(1 + k * 0.1, user, msg, senders[msg], G)
    m = check(h.write(tmp_path, groups={"g1": ["a", "b", "c", "p", "q"]}))
    # q disagrees with p on 3 message pairs and with each of a, b, c on 1.
    anomalies_except(m, order_disagreements=6)
    od = m["ordering"]["order_disagreements"]
    assert od["member_pairs"] == 4
    assert od["by_conv"] == {G: {"member_pairs": 4, "inverted_message_pairs": 6}}


def test_identical_orders_are_weighted_by_multiplicity(tmp_path: Path) -> None:
    h = History()
    h.sent(0.0, "a", G, "m1")
    h.sent(0.1, "b", G, "m2")
    orders = {"a": ["m2"], "b": ["m1"], "c": ["m1", "m2"], "d": ["m2", "m1"], "e": ["m2", "m1"]}
    for user, order in orders.items():
        for k, msg in enumerate(order):
            h.recv(1 + k * 0.1, user, msg, "a" if msg == "m1" else "b", G)
    m = check(h.write(tmp_path, groups={"g1": ["a", "b", "c", "d", "e"]}))
    anomalies_except(m, order_disagreements=2)  # (c, d) and (c, e); d and e agree
    assert m["ordering"]["order_disagreements"]["member_pairs"] == 2


def test_fifo_violation(tmp_path: Path) -> None:
    h = History()
    for i in (1, 2, 3):
        h.sent(i * 0.1, "a", DM_AB, f"m{i}")
    for k, msg in enumerate(["m3", "m1", "m2"]):  # (m3, m1) and (m3, m2) inverted
        h.recv(1 + k * 0.1, "b", msg, "a", DM_AB)
    m = check(h.write(tmp_path))
    anomalies_except(m, fifo_violations=2)
    assert m["ordering"]["fifo_violating_streams"] == 1


def test_gap_filled_by_sync(tmp_path: Path) -> None:
    h = History()
    for seq in range(1, 7):
        h.sent(seq * 0.1, "a", DM_AB, f"m{seq}", seq=seq)
    h.recv(0.11, "b", "m1", "a", DM_AB, seq=1)
    h.recv(0.41, "b", "m4", "a", DM_AB, seq=4)  # 2 and 3 missed: first gap
    h.recv(0.51, "b", "m2", "a", DM_AB, seq=2, via="sync")
    h.recv(0.52, "b", "m3", "a", DM_AB, seq=3, via="sync")
    h.recv(2.00, "b", "m5", "a", DM_AB, seq=5, via="sync")  # second gap: 5 and 6
    h.recv(2.01, "b", "m6", "a", DM_AB, seq=6, via="sync")
    h.add(t=0.45, ev="sync", user="b", conv=DM_AB, after=1)
    m = check(h.write(tmp_path))
    anomalies_except(m)
    o = m["ordering"]
    assert (o["sync_recovered"], o["sync_gaps"]) == (4, 2)
    d = m["deliveries"]
    assert (d["push"], d["sync"], d["lost"]) == (2, 4, 0)
    assert m["connections"]["syncs"] == 1


def test_own_messages_shape_gaps_but_are_not_recovered(tmp_path: Path) -> None:
    h = History()
    h.sent(0.1, "a", G, "m1", seq=1)
    h.sent(0.2, "b", G, "m2", seq=2)
    h.sent(0.3, "a", G, "m3", seq=3)
    h.recv(0.21, "b", "m2", "b", G, seq=2)  # b's echo, by push, sits inside the gap
    h.recv(1.0, "b", "m1", "a", G, seq=1, via="sync")
    h.recv(1.0, "b", "m3", "a", G, seq=3, via="sync")
    m = check(h.write(tmp_path / "own-by-push", groups={"g1": ["a", "b"]}))
    assert (m["ordering"]["sync_gaps"], m["ordering"]["sync_recovered"]) == (2, 2)
    h.events[6]["via"] = "sync"  # now 1, 2, 3 all came by sync: one gap
    m = check(h.write(tmp_path / "own-by-sync", groups={"g1": ["a", "b"]}))
    assert (m["ordering"]["sync_gaps"], m["ordering"]["sync_recovered"]) == (1, 2)


# --------------------------------------------------------------------------- latency


def test_latency_percentiles_are_exact(tmp_path: Path) -> None:
    h = History()
    # Ten dm messages, each sent 0.5 ms late: latency counts from the intended time.
    for i in range(1, 11):
        h.send(i + 0.0005, "a", DM_AB, f"m{i}", intended=i).ack(i + 0.503, "a", f"m{i}", seq=i)
        h.recv(i + i / 1000, "b", f"m{i}", "a", DM_AB, seq=i)  # i ms after intended
    # A group message: pushes after 10, 30 and 20 ms; e recovers it by sync after 2 s.
    h.sent(20.0, "a", G, "g", seq=1)
    for user, dt in {"b": 0.010, "c": 0.030, "d": 0.020}.items():
        h.recv(20 + dt, user, "g", "a", G, seq=1)
    h.recv(22.0, "e", "g", "a", G, seq=1, via="sync")
    m = check(h.write(tmp_path, groups={"g1": ["a", "b", "c", "d", "e"]}))
    lat = m["latency_ms"]
    assert lat["push"] == {
        "count": 13,
        "mean": round((55 + 60) / 13, 3),
        "min": 1.0,
        "p50": 7.0,
        "p90": 20.0,
        "p99": 30.0,
        "p99_9": 30.0,
        "max": 30.0,
    }
    assert lat["fanout"]["count"] == 11
    assert lat["fanout"]["max"] == 30.0
    assert lat["fanout"]["p50"] == 6.0
    assert lat["sync_recovery"]["count"] == 1
    assert lat["sync_recovery"]["p50"] == 2000.0
    assert lat["ack"]["count"] == 11
    assert lat["ack"]["p50"] == 503.0
    assert lat["ack"]["min"] == 1.0


def test_nearest_rank_percentiles() -> None:
    stats = latency_stats([float(x) for x in range(1, 1001)])
    assert (stats["p50"], stats["p90"], stats["p99"], stats["p99_9"]) == (500, 900, 990, 999)
    assert latency_stats([]) == {
        "count": 0,
        "mean": None,
        "min": None,
        "p50": None,
        "p90": None,
        "p99": None,
        "p99_9": None,
        "max": None,
    }
    assert latency_stats([4.0, 1.0, 3.0, 2.0])["p50"] == 2.0


def test_count_inversions_matches_brute_force() -> None:
    rng = random.Random(7)
    cases: list[list[int]] = []
    for n in (0, 1, 2, 5, 50, 300, 5000, 9000):  # shuffled: bisect and merge paths
        cases.append([rng.randrange(n // 2 + 1) for _ in range(n)])  # with ties
    for n in (200, 3000, 9000):  # jittered: the short-span path, and one span too wide for it
        for jitter in (3.0, 40.0):
            cases.append([int(i + rng.gauss(0, jitter)) // 2 for i in range(n)])
    for values in cases:
        n = len(values)
        arr = np.asarray(values, dtype=np.int64)
        brute = sum(int((arr[:-k] > arr[k:]).sum()) for k in range(1, n))
        assert count_inversions(values) == brute, n
        assert count_inversions(arr) == brute, n
        assert count_inversions(sorted(values)) == 0


# --------------------------------------------------------------------------- run folders


def test_histories_from_several_files_merge(tmp_path: Path) -> None:
    h = History()
    members = ["a", "b", "c"]
    for i, sender in enumerate(["a", "b", "c", "b"], start=1):
        h.sent(float(i), sender, G, f"m{i}", seq=i)
        for user in members:
            h.recv(i + 0.01, user, f"m{i}", sender, G, seq=i)
    one = check(h.write(tmp_path / "one", groups={"g1": members}))
    three = check(h.write(tmp_path / "three", groups={"g1": members}, files=3))
    assert three["checker"]["files"] == ["history-0.jsonl", "history-1.jsonl", "history-2.jsonl"]
    assert three["checker"]["events"] == one["checker"]["events"] == 20
    for key in ("sends", "deliveries", "latency_ms", "ordering", "anomalies"):
        assert three[key] == one[key], key
    anomalies_except(three)
    run = load_run(tmp_path / "three")
    assert [e["t"] for e in run.events] == sorted(e["t"] for e in run.events)


def test_malformed_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    h = History()
    h.sent(0.0, "a", DM_AB, "m1", seq=1)
    h.recv(0.01, "b", "m1", "a", DM_AB, seq=1)
    run_dir = h.write(tmp_path)
    with open(run_dir / "history-0.jsonl", "a") as f:
        f.write('\n[1, 2]\n{"ev": "recv"}\n{"t": 5, "ev": "recv", "user": "b", "ms')
    m = check(run_dir)
    assert m["checker"]["malformed_lines"] == 3
    assert m["checker"]["events"] == 3
    anomalies_except(m)


def test_group_members_from_history_events(tmp_path: Path) -> None:
    h = History()
    h.add(t=0.0, ev="group", user="a", conv=G, members=["a", "b"])
    h.sent(1.0, "a", G, "m1", seq=1)
    h.recv(1.01, "b", "m1", "a", G, seq=1)
    # The manifest adds c; the union of both sources is the member list.
    m = check(h.write(tmp_path, groups={"g1": ["a", "c"]}))
    anomalies_except(m, lost=1)
    assert m["deliveries"]["lost_examples"][0]["missing"] == ["c"]


def test_unknown_group_is_a_warning(tmp_path: Path) -> None:
    h = History()
    h.sent(0.0, "a", "group:nobody-knows", "m1", seq=1)
    h.recv(0.01, "b", "m1", "a", "group:nobody-knows", seq=1)
    m = check(h.write(tmp_path))
    assert m["checker"]["warnings"] == [
        "1 sends to group:nobody-knows, whose members are unknown: nobody is expected"
    ]
    assert m["anomalies"]["unexpected"] == 1


def test_series_and_faults(tmp_path: Path) -> None:
    h = History()
    h.add(t=0.2, ev="connect", user="b")
    h.sent(0.5, "a", DM_AB, "m1", seq=1)
    h.recv(0.51, "b", "m1", "a", DM_AB, seq=1)
    h.send(1.5, "a", DM_AB, "m2").ack(2.2, "a", "m2", err="unavailable")
    h.sent(2.5, "a", DM_AB, "m3", seq=2)
    h.recv(3.1, "b", "m3", "a", DM_AB, seq=2)
    h.add(t=2.4, ev="disconnect", user="b")
    h.add(t=2.0, ev="fault", kind="kill", target="redis", start=T0 + 2.0, end=T0 + 2.5)
    run_dir = h.write(
        tmp_path,
        faults=[{"kind": "partition", "target": "server-1", "start": T0 + 1, "end": T0 + 1.5}],
    )
    m = check(run_dir)
    s = m["series"]
    assert s["t"] == [0, 1, 2, 3]
    assert s["sends"] == [1, 1, 1, 0]
    assert s["acked_ok"] == [1, 0, 1, 0]
    assert s["acked_error"] == [0, 0, 1, 0]
    assert s["deliveries_push"] == [1, 0, 0, 1]
    assert s["latency_p50_ms"] == [10.0, None, None, 600.0]
    assert s["connects"] == [1, 0, 0, 0]
    assert s["disconnects"] == [0, 0, 1, 0]
    assert [(f["kind"], f["start_rel"], f["end_rel"], f["source"]) for f in m["faults"]] == [
        ("partition", 1.0, 1.5, "manifest"),
        ("kill", 2.0, 2.5, "history"),
    ]
    assert m["throughput"]["window_s"] == 3.1
    assert m["throughput"]["accepted_sends_per_s"] == round(2 / 3.1, 6)


def test_cli_prints_the_summary_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = History()
    h.sent(0.0, "a", DM_AB, "m1", seq=1)
    h.recv(0.01, "b", "m1", "a", DM_AB, seq=1)
    run_dir = h.write(tmp_path)
    assert main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "anomaly: lost" in out
    assert out.rstrip().splitlines()[-1].split() == ["clean", "yes"]
    assert "100.0% acked ok (1 of 1), 0 never acked" in out
    assert summary_table(json.loads((run_dir / "metrics.json").read_text())) in out


def test_empty_run_folder(tmp_path: Path) -> None:
    (tmp_path / "history-0.jsonl").write_text("")
    m = check(tmp_path)
    anomalies_except(m)
    assert m["sends"]["attempted"] == 0
    assert m["latency_ms"]["push"]["count"] == 0
    assert m["checker"]["warnings"] == []
    assert "clean" in summary_table(m)
    assert m["summary"]["clean"] is False
    assert m["verdict"]["verdict"] == "unknown"


def test_lost_message_scheduled_before_the_start_lands_in_the_first_bucket(
    tmp_path: Path,
) -> None:
    h = History()
    h.send(0.2, "a", DM_AB, "m1", intended=-1.5).ack(0.3, "a", "m1", seq=1)
    m = check(h.write(tmp_path))
    assert m["series"]["t"] == [-2, -1, 0]
    assert m["series"]["lost"] == [1, 0, 0]
    assert m["series"]["sends"] == [0, 0, 1]


# --------------------------------------------------------------------------- verdicts


def test_most_sends_never_acked_is_unavailable_not_clean(tmp_path: Path) -> None:
    h = History()
    h.sent(0.0, "a", DM_AB, "m0", seq=1)
    h.recv(0.01, "b", "m0", "a", DM_AB, seq=1)
    for i in range(1, 10):
        h.send(float(i), "a", DM_AB, f"m{i}")  # never acked
    m = check(h.write(tmp_path))
    anomalies_except(m)
    assert m["summary"]["clean"] is False
    assert m["summary"]["verdict"] == m["verdict"]["verdict"] == "unavailable"
    assert m["availability"] == {
        "attempted": 10,
        "acked_ok": 1,
        "ok_ratio": 0.1,
        "never_acked": 9,
        "never_acked_ratio": 0.9,
        "judged_sends": 1,
        "unjudged_sends": 9,
        "cut_off_by_revocation": 0,
    }
    table = summary_table(m)
    assert "10.0% acked ok (1 of 10), 9 never acked" in table
    rows = {line[:30].strip(): line[30:] for line in table.splitlines()}
    assert rows["verdict"].startswith("unavailable: only 1 of 10 sends acked ok")
    assert table.splitlines()[-1].split() == ["clean", "no"]


def test_nothing_acked_at_all_is_not_clean(tmp_path: Path) -> None:
    h = History()
    for i in range(5):
        h.send(float(i), "a", G, f"m{i}")
    m = check(h.write(tmp_path, groups={"g1": ["a", "b"]}))
    assert m["deliveries"]["expected"] == 0
    assert (m["summary"]["verdict"], m["summary"]["clean"]) == ("unavailable", False)


def test_a_few_unjudged_sends_make_the_run_partial(tmp_path: Path) -> None:
    h = History()
    for i in range(4):
        h.sent(float(i), "a", DM_AB, f"m{i}", seq=i + 1)
        h.recv(i + 0.01, "b", f"m{i}", "a", DM_AB, seq=i + 1)
    h.send(4.0, "a", DM_AB, "m4")  # never acked
    m = check(h.write(tmp_path))
    assert (m["summary"]["verdict"], m["summary"]["clean"]) == ("partial", False)
    assert m["availability"]["judged_sends"] == 4


def test_refused_sends_are_judged_and_anomalies_win(tmp_path: Path) -> None:
    h = History()
    h.sent(0.0, "a", DM_AB, "m0", seq=1)
    h.recv(0.01, "b", "m0", "a", DM_AB, seq=1)
    h.send(1.0, "a", DM_AB, "m1").ack(1.001, "a", "m1", err="recipient_offline")
    h.sent(2.0, "a", DM_AB, "m2", seq=2)
    m = check(h.write(tmp_path))
    assert m["availability"]["judged_sends"] == 3
    assert m["summary"]["verdict"] == "anomalous"
    assert m["verdict"]["why"] == "1 anomaly (lost 1)"


# --------------------------------------------------------------------------- crashing checks


def _crash(index: Index) -> Any:
    raise RuntimeError("boom")


def _crashing(name: str) -> tuple[Any, ...]:
    return tuple(replace(c, run=_crash) if c.name == name else c for c in CHECKS)


def test_a_crashing_check_reads_unknown_and_the_others_still_report(tmp_path: Path) -> None:
    h = History()
    h.sent(0.0, "a", DM_AB, "m1", seq=1)
    h.recv(0.010, "b", "m1", "a", DM_AB, seq=1)
    run = load_run(h.write(tmp_path / "run"))
    metrics = compose(run, _crashing("ordering"))
    unknown = {"verdict": "unknown", "error": "check ordering raised RuntimeError: boom"}
    assert metrics["ordering"] == unknown
    assert metrics["deliveries"]["delivered"] == 1
    assert metrics["latency_ms"]["push"]["count"] == 1
    assert metrics["availability"]["judged_sends"] == 1
    assert metrics["anomalies"] == {
        "lost": 0,
        "duplicated": 0,
        "unexpected": 0,
        "seq_backwards": None,
        "seq_reused": 0,
        "order_disagreements": None,
        "fifo_violations": None,
    }
    assert metrics["verdict"]["verdict"] == "unknown"
    assert "ordering (RuntimeError: boom)" in metrics["verdict"]["why"]
    assert not metrics["summary"]["clean"]
    json.dumps(metrics, allow_nan=False)
    assert re.search(r"^anomaly: seq_backwards +-$", summary_table(metrics), re.M)


def test_an_anomaly_outweighs_a_crashing_check(tmp_path: Path) -> None:
    h = History()
    h.sent(0.0, "a", DM_AB, "m1", seq=1)  # never received: lost
    h.sent(1.0, "a", DM_AB, "m2", seq=2)
    h.recv(1.010, "b", "m2", "a", DM_AB, seq=2)
    metrics = compose(load_run(h.write(tmp_path / "run")), _crashing("latency"))
    assert metrics["latency_ms"]["verdict"] == "unknown"
    assert metrics["summary"]["push_p99_ms"] is None
    assert metrics["verdict"]["verdict"] == "anomalous"
    assert metrics["anomalies"]["lost"] == 1


def test_a_run_the_index_cannot_read_is_unknown_throughout(tmp_path: Path) -> None:
    h = History()
    h.sent(0.0, "a", G, "m1", seq=1)
    run_dir = h.write(tmp_path / "run", groups={"g1": 5})  # members not a list
    metrics = check(run_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["verdict"] == metrics["verdict"]
    for section in ("sends", "deliveries", "ordering", "latency_ms", "series", "availability"):
        assert metrics[section]["verdict"] == "unknown"
        assert "TypeError" in metrics[section]["error"]
    assert metrics["verdict"]["verdict"] == "unknown"
    assert metrics["summary"]["events"] == 2
    assert "verdict" in summary_table(metrics)


# --------------------------------------------------------------------------- token-revoke


def revoked_run(tmp_path: Path) -> dict[str, Any]:
    """Group g1 of a, b, c; c is revoked at t=10 (grace 2 s: the line is at t=8)."""
    h = History()
    h.sent(1.0, "a", G, "early", seq=1)  # acked long before: expected of c as usual
    for u in ("b", "c"):
        h.recv(1.01, u, "early", "a", G, seq=1)
    h.sent(7.9, "a", G, "before", seq=2)  # acked before the grace: still expected of c
    for u in ("b", "c"):
        h.recv(7.91, u, "before", "a", G, seq=2)
    h.sent(8.5, "a", G, "graced", seq=3)  # acked within the grace: c received it anyway
    for u in ("b", "c"):
        h.recv(8.51, u, "graced", "a", G, seq=3)
    h.add(t=10.0, ev="revoked", user="c")
    h.add(t=10.3, ev="disconnect", user="c", reason="unauthorized: token revoked")
    h.sent(11.0, "b", G, "after", seq=4)  # acked after T: not expected of c
    h.recv(11.01, "a", "after", "b", G, seq=4)
    h.send(9.9, "c", G, "inflight")  # c's send cut by the close: never acked
    h.send(12.0, "c", G, "dead")  # c's send after T: never acked
    h.send(13.0, "c", G, "refused").ack(13.01, "c", "refused", err="unauthorized")
    h.sent(14.0, "a", G, "late", seq=5)
    h.recv(14.01, "b", "late", "a", G, seq=5)
    return check(h.write(tmp_path / "run", groups={"g1": ["a", "b", "c"]}))


def test_revoked_recipient_is_not_expected_after_the_grace(tmp_path: Path) -> None:
    m = revoked_run(tmp_path)
    anomalies_except(m)
    d = m["deliveries"]
    # 5 ok messages x 2 recipients = 10, less c's two after the line it did not get
    assert (d["expected"], d["delivered"], d["lost"]) == (8, 8, 0)
    assert d["excused_revoked"] == 2
    assert d["revoked_users"] == ["c"]
    s = m["sends"]
    assert (s["cut_off_by_revocation"], s["never_acked"], s["acked_error"]) == (2, 0, 1)
    assert m["availability"]["judged_sends"] == 8
    assert m["verdict"]["verdict"] == "clean"
    assert "2 cut off by revocation" in summary_table(m)


def test_revoked_recipient_still_owes_what_was_acked_before_the_grace(tmp_path: Path) -> None:
    h = History()
    h.sent(7.9, "a", G, "before", seq=1)  # acked 2.1 s before T: expected of c
    h.recv(7.91, "b", "before", "a", G, seq=1)
    h.sent(8.0, "a", G, "at-grace", seq=2)  # acked exactly T - 2 s: not expected of c
    h.recv(8.01, "b", "at-grace", "a", G, seq=2)
    h.add(t=10.0, ev="revoked", user="c")
    m = check(h.write(tmp_path / "run", groups={"g1": ["a", "b", "c"]}))
    anomalies_except(m, lost=1)
    d = m["deliveries"]
    assert (d["expected"], d["delivered"], d["excused_revoked"]) == (3, 2, 1)
    assert d["lost_examples"][0]["msg"] == "before"
    assert d["lost_examples"][0]["missing"] == ["c"]


def test_sends_before_the_grace_never_acked_stay_never_acked(tmp_path: Path) -> None:
    h = History()
    h.send(7.0, "c", DM_AB.replace("b", "c"), "old")  # before T - 2 s: not the revocation's
    h.sent(7.5, "a", "dm:a:c", "ok", seq=1)
    h.recv(7.51, "c", "ok", "a", "dm:a:c", seq=1)
    h.add(t=10.0, ev="revoked", user="c")
    m = check(h.write(tmp_path / "run"))
    assert (m["sends"]["never_acked"], m["sends"]["cut_off_by_revocation"]) == (1, 0)
    assert m["verdict"]["verdict"] == "partial"
