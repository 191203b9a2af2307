"""Duplicates: no expected recipient receives a message twice, and nobody receives a
message that was never sent or that was not meant for them."""

from __future__ import annotations

from reports.checks.base import Check, Result, judged
from reports.checks.index import Index


def duplicates(index: Index) -> Result:
    d = index.deliveries
    unexpected = d.unexpected_unknown + d.unexpected_not_recipient
    figures = {
        "duplicated": d.duplicated,
        "duplicated_pairs": len(d.duplicated_pairs),
        "unexpected": unexpected,
        "unexpected_never_sent": d.unexpected_unknown,
        "unexpected_not_recipient": d.unexpected_not_recipient,
        "unexpected_examples": d.unexpected_examples,
    }
    return judged({"deliveries": figures}, {"duplicated": d.duplicated, "unexpected": unexpected})


DUPLICATES = Check("duplicates", ("deliveries",), ("duplicated", "unexpected"), duplicates)
