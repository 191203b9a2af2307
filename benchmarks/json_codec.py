"""What the JSON module costs per Socket.IO packet, in-process and without the network:
encoding and decoding the packets one v1 direct message makes (the `send` event, its ack,
the `message` push) through the stages' packet class, with the std module engine.io
uses and with `imlab.fastjson` (orjson); and `Message.to_dict` against
`dataclasses.asdict`. Far below what a load run can resolve, so timed here on their own.

    .venv/bin/python benchmarks/json_codec.py [--repeat 20000]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import timeit
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import engineio.json as std_json
from socketio import packet as sp

from imlab import fastjson
from imlab import protocol as p
from imlab.cluster import machine_info
from imlab.sioguard import GuardedPacket


def dm_packets() -> list[tuple[int, Any]]:
    """The event, ack and push of one direct message, as the server sees them."""
    body = "x" * 32
    send = ["send", {"to": "u0001-ab12", "client_msg_id": "c-000123", "body": body,
                     "sent_at": 1764640000.123456}]  # fmt: skip
    msg = p.Message(
        "dm:u0001-ab12:u0002-ab12", "1764640000123-0", 17, "u0002-ab12", body,
        1764640000.123456, 1764640000.125, "c-000123",
    )  # fmt: skip
    return [
        (sp.EVENT, send),
        (sp.ACK, [p.ok_ack(msg_id=msg.msg_id, seq=msg.seq, conv=msg.conv)]),
        (sp.EVENT, ["message", msg.to_dict()]),
    ]


def per_message_us(module: ModuleType, repeat: int) -> dict[str, float]:
    """µs to encode and to decode the three packets, best of 5 rounds of `repeat`."""
    GuardedPacket.json = module
    try:
        packets = [GuardedPacket(kind, data=data, id=5) for kind, data in dm_packets()]
        wires = [pkt.encode() for pkt in packets]

        def encode() -> None:
            for pkt in packets:
                pkt.encode()

        def decode() -> None:
            for wire in wires:
                GuardedPacket(encoded_packet=wire)

        out = {}
        for name, fn in (("encode", encode), ("decode", decode)):
            times = timeit.repeat(fn, number=repeat, repeat=5)
            out[name] = round(min(times) / repeat * 1e6, 2)
            out[name + "_median"] = round(statistics.median(times) / repeat * 1e6, 2)
        return out
    finally:
        del GuardedPacket.json


def to_dict_us(repeat: int) -> dict[str, float]:
    """µs per call, best of 5 rounds of `repeat`, of one message's dict both ways."""
    msg = p.Message("dm:a:b", "1764640000123-0", 17, "b", "x" * 32, 1.5, 2.5, "c-000123")
    return {
        name: round(min(timeit.repeat(fn, number=repeat, repeat=5)) / repeat * 1e6, 2)
        for name, fn in (("asdict", lambda: dataclasses.asdict(msg)), ("to_dict", msg.to_dict))
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20000)
    args = ap.parse_args()
    m = machine_info()
    print(f"machine: {m['hostname']}, {m['cpu_count']} cores, Python {m['python']}")
    print("µs per direct message's three packets (send event, ack, push), best of 5:")
    for name, module in (("std json", std_json), ("orjson shim", fastjson)):
        f = per_message_us(module, args.repeat)
        print(f"  {name:12} encode {f['encode']:6.2f}  decode {f['decode']:6.2f}"
              f"  (medians {f['encode_median']:.2f} / {f['decode_median']:.2f})")  # fmt: skip
    d = to_dict_us(args.repeat * 5)
    print(f"Message as a dict: dataclasses.asdict {d['asdict']:.2f} µs, "
          f"Message.to_dict {d['to_dict']:.2f} µs")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
