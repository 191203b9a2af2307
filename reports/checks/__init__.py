"""The checker's checks, one property each (delivery, duplicates, ordering, seqs,
latency, series, faults, availability), composed into a run's metrics.json by `compose`."""

from reports.checks.base import ANOMALY_KINDS, Check, Result
from reports.checks.compose import CHECKER_VERSION, CHECKS, compose
from reports.checks.table import summary_table
from reports.checks.verdict import VERDICTS, verdict_text

__all__ = ["ANOMALY_KINDS", "CHECKER_VERSION", "CHECKS", "VERDICTS", "Check", "Result",
           "compose", "summary_table", "verdict_text"]  # fmt: skip
