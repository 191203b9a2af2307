"""Simulated runs written as real ones: docs/PROTOCOL.md section 5 history records and a run folder.

`History` turns what simulated clients do into the event records real clients
write, with simulated time mapped to epoch seconds from a fixed base, and hands
them to a `Recorder`. `JsonlRecorder` writes every record, buffered;
`RunWriter` lays out the run folder (`history.jsonl` and `manifest.json`) that
the checker in `reports/` reads. A key whose value is None is left out of a
record (the checker reads an absent key as null), except an ack's `ok`, `err`
and `seq` and a send's `intended`, which are always written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from imlab.cluster import machine_info, package_versions
from imlab.experiment import history as H
from imlab.experiment.faults import Fault

__all__ = [
    "SIM_EPOCH",
    "History",
    "JsonlRecorder",
    "MemoryRecorder",
    "Recorder",
    "RunWriter",
]

SIM_EPOCH = 1_700_000_000.0
"""Epoch seconds of simulated time 0 unless told otherwise: fixed, so a seed fixes the bytes."""

Record = dict[str, Any]


class Recorder(Protocol):
    """Where history records go. Implementations may keep all, sample or aggregate them."""

    def write(self, record: Record) -> None: ...

    def close(self) -> None: ...


class MemoryRecorder:
    """Keeps the records in a list (tests, small runs)."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def write(self, record: Record) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass


class JsonlRecorder:
    """Writes one compact JSON object a line, encoding into a buffer flushed in large chunks."""

    def __init__(self, path: Path | str, *, buffer_records: int = 16_384) -> None:
        self.path = Path(path)
        self.count = 0
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        self._buffer: list[str] = []
        self._limit = buffer_records

    def write(self, record: Record) -> None:
        self._buffer.append(self._encode(record))
        if len(self._buffer) >= self._limit:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self.count += len(self._buffer)
            self._file.write("\n".join(self._buffer))
            self._file.write("\n")
            self._buffer = []

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()


class History:
    """The clients' side of a simulated run, as docs/PROTOCOL.md section 5 event records.

    Every method takes the simulated time `t` of the event; records carry
    `base_epoch + t`, rounded to the microsecond.
    """

    def __init__(self, recorder: Recorder, *, base_epoch: float = SIM_EPOCH) -> None:
        self.recorder = recorder
        self.base_epoch = base_epoch

    def epoch(self, t: float) -> float:
        return round(self.base_epoch + t, 6)

    def send(
        self,
        t: float,
        user: str,
        conv: str,
        msg: str,
        *,
        intended: float | None = None,
        node: str | None = None,
        **extra: Any,
    ) -> None:
        """A client sent a message; `intended` is when its schedule meant it to go."""
        rec: Record = {"t": self.epoch(t), "ev": H.SEND, "user": user, "conv": conv, "msg": msg}
        rec["intended"] = rec["t"] if intended is None else self.epoch(intended)
        self._write(rec, node=node, **extra)

    def ack(
        self,
        t: float,
        user: str,
        conv: str,
        msg: str,
        *,
        ok: bool,
        err: str | None = None,
        seq: int | None = None,
        node: str | None = None,
        **extra: Any,
    ) -> None:
        rec: Record = {"t": self.epoch(t), "ev": H.ACK, "user": user, "conv": conv, "msg": msg}
        rec["seq"] = seq
        rec["ok"] = ok
        rec["err"] = err
        self._write(rec, node=node, **extra)

    def recv(
        self,
        t: float,
        user: str,
        conv: str,
        msg: str,
        *,
        sender: str,
        via: str = "push",
        seq: int | None = None,
        node: str | None = None,
        **extra: Any,
    ) -> None:
        """A client handed a message to its application; `via` is `push` or `sync`."""
        rec: Record = {"t": self.epoch(t), "ev": H.RECV, "user": user, "conv": conv, "msg": msg}
        self._write(rec, seq=seq, via=via, sender=sender, node=node, **extra)

    def connect(
        self,
        t: float,
        user: str,
        *,
        ok: bool = True,
        err: str | None = None,
        node: str | None = None,
        **extra: Any,
    ) -> None:
        rec: Record = {"t": self.epoch(t), "ev": H.CONNECT, "user": user}
        self._write(rec, ok=ok, err=err, node=node, **extra)

    def disconnect(self, t: float, user: str, *, node: str | None = None, **extra: Any) -> None:
        rec: Record = {"t": self.epoch(t), "ev": H.DISCONNECT, "user": user}
        self._write(rec, node=node, **extra)

    def sync(
        self,
        t: float,
        user: str,
        conv: str,
        *,
        after_seq: int,
        latest_seq: int | None,
        n: int,
        ok: bool = True,
        err: str | None = None,
        node: str | None = None,
        **extra: Any,
    ) -> None:
        """A sync page arrived: `n` messages after `after_seq`, the latest being `latest_seq`
        (the keys `imlab.client` records)."""
        rec: Record = {"t": self.epoch(t), "ev": H.SYNC, "user": user, "conv": conv}
        rec.update(after_seq=after_seq, n=n, latest_seq=latest_seq)
        self._write(rec, ok=ok, err=err, node=node, **extra)

    def group(
        self, t: float, user: str, group_id: str, members: Iterable[str], **extra: Any
    ) -> None:
        """`user` created group `group_id` with these members."""
        rec: Record = {"t": self.epoch(t), "ev": H.GROUP, "user": user}
        rec.update(conv=f"group:{group_id}", members=list(members))
        self._write(rec, **extra)

    def fault(self, kind: str, target: str, start: float, end: float | None, **extra: Any) -> None:
        """A fault window, recorded at its start; `end` None while it has no end."""
        rec: Record = {"t": self.epoch(start), "ev": H.FAULT, "kind": kind, "target": target}
        rec.update(start=rec["t"], end=None if end is None else self.epoch(end))
        self._write(rec, **extra)

    def emit(self, t: float, ev: str, **fields: Any) -> None:
        """Any other event; None-valued fields are left out."""
        self._write({"t": self.epoch(t), "ev": ev}, **fields)

    def close(self) -> None:
        self.recorder.close()

    def _write(self, rec: Record, **optional: Any) -> None:
        for key, value in optional.items():
            if value is not None:
                rec[key] = value
        self.recorder.write(rec)


class RunWriter:
    """A simulated run's folder: `history.jsonl` while running, `manifest.json` at the end.

    Use as a context manager, or call `finish()`; the manifest says the run is a
    simulation (`source: sim`) and records the seed, so it can be re-run.
    """

    def __init__(
        self,
        folder: Path | str,
        *,
        stage: str,
        scenario: str,
        seed: int,
        params: Mapping[str, Any] | None = None,
        base_epoch: float = SIM_EPOCH,
        recorder: Recorder | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stage = stage
        self.scenario = scenario
        self.seed = seed
        self.params = dict(params or {})
        self.history = History(
            recorder or JsonlRecorder(self.folder / "history.jsonl"), base_epoch=base_epoch
        )
        self._wall_start = time.perf_counter()
        self.manifest_path: Path | None = None

    def finish(
        self,
        *,
        ended_at: float,
        groups: Mapping[str, Iterable[str]] | None = None,
        faults: Iterable[Fault] = (),
        drain_end: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Close the history and write the manifest; times are simulated seconds.

        `ended_at` is when the load stopped, `drain_end` when the run stopped
        waiting for stragglers; each fault's window is clipped to the run's end.
        """
        self.history.close()
        h = self.history
        run_end = ended_at if drain_end is None else drain_end
        manifest: dict[str, Any] = {
            "stage": self.stage,
            "scenario": self.scenario,
            "source": "sim",
            "seed": self.seed,
            "params": self.params,
            "started_at": h.epoch(0.0),
            "ended_at": h.epoch(ended_at),
            "groups": {gid: list(members) for gid, members in (groups or {}).items()},
            "faults": [_fault_entry(h, f, run_end) for f in faults],
            "machine": machine_info(),
            "versions": package_versions(),
            "wall_seconds": round(time.perf_counter() - self._wall_start, 3),
        }
        if drain_end is not None:
            manifest["drain_end"] = h.epoch(drain_end)
        manifest.update(extra or {})
        self.manifest_path = self.folder / "manifest.json"
        self.manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        return self.manifest_path

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.history.close()


def _fault_entry(h: History, fault: Fault, run_end: float) -> dict[str, Any]:
    start, end = fault.window(run_end)
    return {
        "kind": fault.kind,
        "target": fault.target,
        "start": h.epoch(start),
        "end": h.epoch(end),
        "spec": fault.spec(),
    }
