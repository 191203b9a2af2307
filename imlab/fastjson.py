"""A JSON module for python-socketio (`json=`: `dumps` and `loads`) that uses orjson and
decodes everything to what engine.io's own module (the std json, integers of at most 100
digits) decodes it to; `codec()` picks it or the std one by `IMLAB_JSON` (orjson|std).

Where orjson would differ, the std module does the work: integers orjson cannot hold in
64 bits (it would read them as floats, so any run of 19 or more digits goes to the std
decoder), what orjson refuses to decode (NaN, lone surrogates, ...) and what it refuses to
encode (integers over 64 bits, non-string keys, lone surrogates). What orjson writes is
compact UTF-8 where the std module escapes non-ASCII; both decode to the same values.
One difference is left: a float NaN or infinity is written as `null` (the std module
writes `NaN`, which no JSON parser but Python's reads).
"""

from __future__ import annotations

import os
import re
import sys
from types import ModuleType
from typing import Any

import engineio.json as std_json
import orjson

# orjson reads an integer beyond the 64-bit range as a float; the std decoder keeps it
# exact (and refuses one over 100 digits, engine.io's limit).
DEFAULT = "orjson"  # what IMLAB_JSON is when unset

_LONG_DIGITS = re.compile(r"\d{19}")
_LONG_DIGITS_BYTES = re.compile(rb"\d{19}")


def loads(s: str | bytes, **kwargs: Any) -> Any:
    long = _LONG_DIGITS.search(s) if isinstance(s, str) else _LONG_DIGITS_BYTES.search(s)
    if kwargs or long:
        return std_json.loads(s, **kwargs)
    try:
        return orjson.loads(s)
    except orjson.JSONDecodeError:
        return std_json.loads(s)  # accepts what orjson refuses, or raises as before


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
