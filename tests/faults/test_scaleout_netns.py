"""Scale-out across "machines": workers in separate network namespaces (issue 15 "Show").

Two workers of one job each run in their own network namespace (``ip netns``, own address on a
bridge, tests/services/netns.py): they share no loopback and no port with each other or with
the test — only the network. Everything they use is reached over it, on the bridge's host
address: an Apache Kafka broker (the consumer group and the stream), moto's S3 server (the
lakes *and* the checkpoint store), PostgreSQL (the store). The job is the fault suite's hourly
job (tests/faults/scaleout_jobs.py: lambda source with the offsets handoff → Tumbling(1h)
emit="every" → PostgreSQL), run per worker with ``python -m tests.faults.scaleout_jobs --join``.

Checked: both workers got partitions (so both "machines" worked), every partition has
checkpoints of its own in S3, and the store equals the DuckDB SQL reference of the input record
by record (tests/faults/oracle.py: a lost or duplicated record anywhere fails).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults import oracle
from tests.faults.jobs import read_hourly_postgres
from tests.faults.scaleout_jobs import prepare_partitioned
from tests.services.apache_kafka import ApacheKafkaService
from tests.services.netns import NamespaceNetwork
from tests.services.ports import free_port
from tests.services.postgres import PostgresService

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
KEY_ID = SECRET = "testing"


@pytest.fixture(scope="module")
def network() -> Iterator[NamespaceNetwork]:
    with NamespaceNetwork(2, subnet=232) as net:
        yield net


def _s3_environment(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
    }


def _worker(
    net: NamespaceNetwork, index: int, arguments: list[str], env: dict[str, str]
) -> subprocess.Popen[str]:
    command = net.command(
        index,
        [
            sys.executable,
            "-m",
            "tests.faults.scaleout_jobs",
            *arguments,
            "--worker-id",
            f"ns{index}",
        ],
    )
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_workers_in_separate_network_namespaces_fill_the_store_exactly(
    network: NamespaceNetwork,
) -> None:
    from moto.server import ThreadedMotoServer

    host = network.host_address
    kafka = ApacheKafkaService.start(host=host)
    s3_port = free_port()
    s3 = ThreadedMotoServer(ip_address=host, port=s3_port, verbose=False)
    s3.start()
    postgres = PostgresService.start(host=host)
    saved = {name: os.environ.get(name) for name in _s3_environment("")}
    try:
        endpoint = f"http://{host}:{s3_port}"
        os.environ.update(_s3_environment(endpoint))
        import botocore.session

        bucket = f"netns-{uuid.uuid4().hex[:8]}"
        botocore.session.get_session().create_client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
        ).create_bucket(Bucket=bucket)
        topic = kafka.new_topic(PARTITIONS, "netns")
        data = asyncio.run(
            prepare_partitioned(
                kafka.bootstrap,
                topic,
                f"s3://{bucket}/lakes",
                partitions=PARTITIONS,
                events=4000,
                seed=23,
            )
        )
        dsn = postgres.new_database()
        checkpoints = f"s3://{bucket}/checkpoints"
        arguments = [
            "--join",
            f"netns-{uuid.uuid4().hex[:8]}",
            "--lake-root",
            data.lake_root,
            "--topic",
            topic,
            "--bootstrap",
            kafka.bootstrap,
            "--postgres",
            dsn,
            "--checkpoints",
            checkpoints,
        ]
        env = {**os.environ, **_s3_environment(endpoint), "PYTHONPATH": str(ROOT)}
        workers = [_worker(network, index, arguments, env) for index in range(2)]
        outputs = [worker.communicate(timeout=240) for worker in workers]
        for index, (worker, (_, errors)) in enumerate(zip(workers, outputs, strict=True)):
            assert worker.returncode == 0, f"worker ns{index} exited {worker.returncode}:\n{errors}"
        owned = [
            {p for line in _lines(out) if line["event"] == "assigned" for p in line["partitions"]}
            for out, _ in outputs
        ]
        assert all(owned), f"a worker never owned a partition: {owned}"
        listed = (
            botocore.session.get_session()
            .create_client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id=KEY_ID,
                aws_secret_access_key=SECRET,
            )
            .list_objects_v2(Bucket=bucket, Prefix="checkpoints/tasks/")
        )
        tasks = {item["Key"].split("/")[2] for item in listed.get("Contents", [])}
        assert tasks == {f"{topic}-{p}" for p in range(PARTITIONS)}
        store = asyncio.run(read_hourly_postgres(dsn))
        check = oracle.compare_hourly(
            store, data.table, cutoff=data.cutoff, positions=data.positions
        )
        assert check.ok, check.message("workers in network namespaces")
        print(f"netns workers {network.addresses} owned {owned}: {check.totals()}")
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        postgres.stop()
        s3.stop()
        kafka.stop()
