"""The project's own fuzz of a running stage, from outside (`fuzzer`), with the cases
`strategies` generates. tests/test_fuzz.py and benchmarks/fuzz.py use it.
"""

from imlab.fuzz.fuzzer import DOCUMENTED_CODES, EVENT_KINDS, Fuzzer, Tally, event_kinds
from imlab.fuzz.strategies import auths, cases, generate, payloads, undecodable

__all__ = [
    "DOCUMENTED_CODES",
    "EVENT_KINDS",
    "Fuzzer",
    "Tally",
    "auths",
    "cases",
    "event_kinds",
    "generate",
    "payloads",
    "undecodable",
]
