"""The Kafka protocol's readiness probe: a Metadata request (v4) on a raw socket,
answered by any Kafka-protocol broker (Apache Kafka 4 removed v0-v3; Tansu answers v4).
"""

from __future__ import annotations

import socket
import struct


def kafka_metadata(host: str, port: int, timeout: float = 0.5) -> list[int]:
    """The node ids of the brokers a Kafka Metadata request (v4) lists.

    v4 because Kafka 4 removed v0-v3 (KIP-896); Tansu answers it too. No topics are
    asked for (a null array means all, so an empty one is sent) and none are created.
    """
    client_id = b"imlab-probe"
    header = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id
    body = struct.pack(">ib", 0, 0)  # topics: empty array; allow_auto_topic_creation: false
    request = header + body
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(s, 4))
        payload = _recv_exact(s, size)
    correlation_id, _throttle, n_brokers = struct.unpack(">iii", payload[:12])
    if correlation_id != 7:
        raise OSError("metadata answer with a wrong correlation id")
    ids, pos = [], 12
    for _ in range(n_brokers):
        (node_id,) = struct.unpack(">i", payload[pos : pos + 4])
        (host_len,) = struct.unpack(">h", payload[pos + 4 : pos + 6])
        pos += 6 + host_len + 4  # host, port
        (rack_len,) = struct.unpack(">h", payload[pos : pos + 2])
        pos += 2 + max(rack_len, 0)
        ids.append(node_id)
    return ids


def kafka_metadata_ok(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when the broker answers a Metadata request listing at least one broker."""
    return len(kafka_metadata(host, port, timeout)) >= 1


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf
