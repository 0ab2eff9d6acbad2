"""kill -9 of one of 3 workers of a scaled-out job (issue 15 §3 "A worker that dies loses
nothing"), on Apache Kafka with a PostgreSQL store.

6 partitions keyed by user, one lake per partition, the hourly job (tests/faults/scaleout_jobs.py)
throttled so it runs for several seconds; once every worker owns partitions and has read some
records, one worker is killed with SIGKILL. The group's session timeout (6 s) expels it, the
survivors get its partitions in the rebalance, restore them from their newest checkpoints and
finish the job. The store must equal the SQL reference of the input record by record
(tests/faults/oracle.py), and the dead worker's partitions must have been restored from a
checkpoint (not started over). Time to recover = from the kill to the survivors' assignment that
holds the dead worker's partitions (printed; the README reports it).

Run: ``.venv/bin/python -m pytest tests/faults/test_scaleout_failover.py -m slow -s``
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.integration.test_scaleout import WorkerProcess, make_setup, wait_for
from tests.services.apache_kafka import ApacheKafkaService
from tests.services.brokers import Broker
from tests.services.postgres import PostgresService

pytestmark = [pytest.mark.slow, pytest.mark.apache_kafka, pytest.mark.postgres]

SESSION_TIMEOUT_S = 6  # Apache Kafka's group.min.session.timeout.ms


@pytest.mark.parametrize("seed", [21, 22])
def test_kill_one_of_three_workers(
    apache_kafka: ApacheKafkaService, postgres: PostgresService, tmp_path: Path, seed: int
) -> None:
    setup = make_setup(
        Broker("apache", apache_kafka), postgres, tmp_path, events=9000, seed=seed, partitions=6
    )
    total = setup.data.table.num_rows
    options = {"interval": "300ms", "throttle_ms": 40, "session_timeout": f"{SESSION_TIMEOUT_S}s"}
    names = ["A", "B", "C"]
    workers = {
        name: WorkerProcess.start(name, setup.worker_command(name, **options)) for name in names
    }
    try:
        wait_for(
            lambda: (
                all(w.assigned() for w in workers.values())
                and sum(len(w.assigned() or []) for w in workers.values()) == 6
            ),
            "three workers sharing six partitions",
            timeout=60,
        )
        wait_for(
            lambda: (
                all(w.records() > 0 for w in workers.values())
                and sum(w.records() for w in workers.values()) >= total // 4
            ),
            "a quarter of the input read",
            timeout=60,
        )
        victim = workers["B"]
        lost = victim.assigned() or []
        killed_at = time.time()
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(10)
        survivors = [workers["A"], workers["C"]]

        def taken_over() -> float | None:
            """When the last of B's partitions appeared in a survivor's assignment."""
            when: dict[int, float] = {}
            for worker in survivors:
                for line in worker.lines:
                    if line["event"] == "assigned" and line["t"] > killed_at:
                        for partition in set(line["partitions"]) & set(lost):
                            when.setdefault(partition, line["t"])
            return max(when.values()) if set(when) == set(lost) else None

        wait_for(lambda: taken_over() is not None, "the survivors to take B's partitions", 60)
        recovered = (taken_over() or killed_at) - killed_at
        runs = survivors[0].finish(timeout=120) + survivors[1].finish(timeout=120)
    finally:
        for worker in workers.values():
            if worker.process.poll() is None:
                worker.process.kill()
    check = setup.check(f"kill -9 of 1 of 3 workers (seed {seed})")
    taken = [
        run
        for run in runs
        if int(run["task"].rsplit("-", 1)[1]) in lost and run["ended_at"] > killed_at
    ]
    assert taken and all(run["restored_from"] is not None for run in taken), taken
    read = sum(run["records"] for run in runs)
    print(
        f"kill -9 (seed {seed}): B owned {lost}; the survivors owned them {recovered:.1f}s after "
        f"the kill (session timeout {SESSION_TIMEOUT_S}s); {check.totals()}; survivors' task "
        f"runs read {read} records"
    )
