"""The services module starts real Redis and the real broker on free loopback ports,
says why when a start fails, and leaves no process behind (also on Ctrl-C/SIGTERM)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from imlab.brokers import ApacheKafka, BrokerUnavailable, Tansu, java_binary, resolve_kind
from imlab.services import ProcessService, RedisService, ServiceError


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_redis_starts_answers_and_stops(tmp_path: Path) -> None:
    with RedisService(tmp_path) as svc:
        assert svc.running() and svc.host == "127.0.0.1"
        r = redis.Redis.from_url(svc.url)
        assert r.ping() and r.set("k", "v") and r.get("k") == b"v"
        pid = svc.pid
        r.close()
    assert pid is not None and gone(pid)
    assert (tmp_path / "redis.log").read_text()


def test_durable_redis_keeps_data_across_a_kill(tmp_path: Path) -> None:
    svc = RedisService(tmp_path, durable=True).start()
    try:
        r = redis.Redis.from_url(svc.url)
        r.set("kept", "yes")
        r.close()
        time.sleep(1.2)  # appendfsync everysec
        svc.kill()
        svc.start()
        r = redis.Redis.from_url(svc.url)
        assert r.get("kept") == b"yes"
        r.close()
    finally:
        svc.stop()


@pytest.mark.parametrize("kind", [ApacheKafka, Tansu])
def test_a_kafka_broker_starts_and_answers_metadata(
    tmp_path: Path, kind: type[ApacheKafka] | type[Tansu]
) -> None:
    with kind(tmp_path) as broker:
        assert broker.answering() and len(broker.nodes) == 1
        pid = broker.nodes[0].pid
        info = broker.info()
        assert info["name"] == broker.kind and info["brokers"] == 1
    assert pid is not None and gone(pid)
    assert broker.nodes[0].log_path.read_text() is not None


def test_a_cluster_id_that_starts_with_a_dash_formats(tmp_path: Path) -> None:
    """Cluster ids are URL-safe base64: one in 64 starts with '-', which the storage
    tool once took for an option (a start failed at random)."""
    broker = ApacheKafka(tmp_path)
    broker.cluster_id = "-" + broker.cluster_id[1:]
    with broker:
        assert broker.answering() == [1]


def test_apache_kafka_keeps_its_data_across_a_kill(tmp_path: Path) -> None:
    """Unlike Tansu, a restarted Apache Kafka node comes back with its topics."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def topics(bootstrap: str, create: str | None = None) -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            if create:
                await admin.create_topics([NewTopic(create, 1, 1)])
            return list(await admin.list_topics())
        finally:
            await admin.close()

    with ApacheKafka(tmp_path) as broker:
        assert "kept" in asyncio.run(topics(broker.bootstrap, "kept"))
        node = broker.nodes[0]
        node.kill()
        assert not broker.answering()
        node.start()
        assert "kept" in asyncio.run(topics(broker.bootstrap))


def test_no_java_is_one_clear_sentence(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BrokerUnavailable, match="install a JDK") as err:
        java_binary()
    assert "\n" not in str(err.value)
    assert resolve_kind("auto") == "tansu"
    assert capsys.readouterr().err.strip().count("\n") == 0  # one line says so
    assert resolve_kind("kafka") == "kafka"  # an explicit choice is kept (and fails later)


def test_a_failed_start_raises_with_the_log_tail(tmp_path: Path) -> None:
    bad = ProcessService(
        [sys.executable, "-c", "import sys; print('boom: cannot start'); sys.exit(3)"],
        tmp_path,
        name="broken",
    )
    with pytest.raises(ServiceError, match="boom: cannot start"):
        bad.start(timeout=5)
    assert not bad.running()


def test_pause_and_resume(tmp_path: Path) -> None:
    with RedisService(tmp_path) as svc:
        svc.pause()
        r = redis.Redis.from_url(svc.url, socket_timeout=0.3)
        with pytest.raises(redis.exceptions.TimeoutError):
            r.ping()
        svc.resume()
        assert r.ping()
        r.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_no_service_survives_its_parent_being_interrupted(tmp_path: Path, sig: int) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from imlab.services import RedisService, install_signal_handlers
        from imlab.brokers import ApacheKafka
        install_signal_handlers()
        r = RedisService(sys.argv[1]).start()
        k = ApacheKafka(sys.argv[1]).start()
        print(r.pid, k.nodes[0].pid, flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    os.kill(proc.pid, sig)
    proc.wait(20)
    deadline = time.monotonic() + 10
    while not all(gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(gone(p) for p in pids), "redis-server or the broker outlived its parent"
