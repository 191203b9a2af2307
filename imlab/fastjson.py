"""A JSON module for python-socketio (`json=`: `dumps` and `loads`) that encodes with
orjson and decodes with engine.io's own module (the std json, integers of at most 100
digits); `codec()` picks it or the std one by `IMLAB_JSON` (orjson|std).

Only encoding is orjson's: timed on one direct message's packets
(benchmarks/json_codec.py) it cuts the encoding cost by about six, while decoding with
orjson saved nothing measurable and would need care to read what the std module reads
(orjson turns integers over 64 bits into floats). What orjson refuses to encode
(integers over 64 bits, non-string keys, lone surrogates) goes to the std module. What
orjson writes is compact UTF-8 where the std module escapes non-ASCII; both decode to
the same values. One difference is left: a float NaN or infinity is written as `null`
(the std module writes `NaN`, which no JSON parser but Python's reads).
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import Any

import engineio.json as std_json
import orjson

DEFAULT = "orjson"  # what IMLAB_JSON is when unset

loads = std_json.loads


def dumps(obj: Any, **kwargs: Any) -> str:
    """Compact JSON text; `separators` and the other std options are ignored unless orjson
    cannot encode `obj`, and then the std module gets them."""
    try:
        return orjson.dumps(obj).decode()
    except TypeError:
        return str(std_json.dumps(obj, **kwargs))


def codec() -> ModuleType | None:
    """This module or None (python-socketio's default) as `IMLAB_JSON` says (orjson|std)."""
    choice = os.environ.get("IMLAB_JSON", DEFAULT)
    if choice == "std":
        return None
    if choice != "orjson":
        raise ValueError(f"IMLAB_JSON must be orjson or std, not {choice!r}")
    return sys.modules[__name__]
