"""kill -9 over Kinesis (issue 16, slow): the lambda job and the archiver, restarted, exact.

1. The job (:mod:`tests.faults.kinesis_jobs`: Kinesis-archived lake → ``LambdaSource`` over a
   ``KinesisStream`` → hourly windows → DuckDB upserts, file:// checkpoints) is killed with
   SIGKILL in the lake phase, at the handoff and in the stream phase (seeded points, both
   handoffs), restarted with the same command until it finishes; the store must equal DuckDB SQL
   over every record put (:func:`tests.faults.oracle.compare_hourly`) — one lost or duplicated
   record changes a (user, hour) row.
2. The archiver runs unbounded in a subprocess while records are being put, and is killed with
   SIGKILL at seeded moments (between and during commits), restarted each time; at the end a
   bounded run catches up: the union of committed rows must be every record put, exactly once,
   and the recorded positions the acknowledged last sequence number + 1 per shard.

Replay one trial: ``pytest tests/faults/test_kinesis_kill.py -m slow -k "seed-3"``. Figures
(``FIGURES …`` lines, ``-s``): kills, phases hit, checkpoints restored, recovery times.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from lake.kinesis_archiver import KinesisArchiver
from lake.writer import ParquetLakeWriter
from tests.faults import jobs, oracle
from tests.faults.harness import (
    PHASES,
    RunResult,
    TrialResult,
    phase_lines,
    run_job,
    run_trial,
    summarize,
)
from tests.faults.kinesis_jobs import command, config, prepare_hourly
from tests.integration.test_archiver import SCHEMA, TIME, encode, ids, lake_table, rows
from tests.integration.test_kinesis_archiver import next_positions, put
from tests.services.kinesis import KinesisService

pytestmark = [pytest.mark.kinesis, pytest.mark.slow, pytest.mark.timeout(600)]

EVENTS = 8_000
THROTTLE_MS = 8
HANDOFFS = ("offsets", "timestamp")
SEEDS = list(range(12))  # each (first-kill phase, handoff) pair twice
ROOT = Path(__file__).resolve().parents[2]


class Setup:
    """One stream + archiver-written lake shared by the module's job trials."""

    def __init__(self, kinesis: KinesisService, root: Path) -> None:
        self.kinesis = kinesis
        self.root = root
        self.stream = kinesis.new_stream(2, prefix="faults")
        self.lake = str(root / "lake")
        self.dataset = asyncio.run(
            prepare_hourly(
                kinesis.client(),
                kinesis.endpoint_url,
                self.stream,
                self.lake,
                events=EVENTS,
                seed=5,
                archived=16 / 24,
            )
        )
        self.baselines: dict[str, RunResult] = {}

    def command(self, name: str, handoff: str) -> list[str]:
        return command(
            lake=self.lake,
            stream=self.stream,
            endpoint=self.kinesis.endpoint_url,
            checkpoints=(self.root / f"ckpt-{name}").as_uri(),
            duckdb=self.root / f"{name}.duckdb",
            handoff=handoff,
            interval="150ms",
            throttle_ms=THROTTLE_MS,
        )

    def baseline(self, handoff: str) -> RunResult:
        if handoff not in self.baselines:
            result = run_job(self.command(f"baseline-{handoff}", handoff))
            assert result.done is not None, result.stderr[-3000:]
            self.baselines[handoff] = result
        return self.baselines[handoff]

    def check(self, name: str) -> oracle.HourlyCheck:
        store = jobs.read_hourly_duckdb(self.root / f"{name}.duckdb")
        return oracle.compare_hourly(
            store, self.dataset.table, cutoff=self.dataset.cutoff, positions=self.dataset.positions
        )


@pytest.fixture(scope="module")
def setup(kinesis_server: KinesisService, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return Setup(kinesis_server, tmp_path_factory.mktemp("kinesis-kill"))


def report(name: str, trials: list[TrialResult]) -> None:
    figures = summarize(trials)
    for t in trials:
        print(
            f"seed={t.seed} plans={[str(p) for p in t.plans]} kills={t.kill_phases} "
            f"restored_from={[r.restored_from for r in t.runs[1:]]}"
        )
    print(f"FIGURES {name}: {json.dumps(figures, default=str)}")


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_uninterrupted_job_matches_input(setup: Setup, handoff: str) -> None:
    """No fault: the oracle itself must pass, and the data set has both sides."""
    run = setup.baseline(handoff)
    check = setup.check(f"baseline-{handoff}")
    print(f"FIGURES kinesis-uninterrupted-{handoff}: {phase_lines(run)} {run.seconds:.2f}s")
    assert check.ok, check.message(f"uninterrupted, handoff={handoff}")
    assert 0 < setup.dataset.lake_rows < EVENTS and setup.dataset.commits > 1


@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed-{s}" for s in SEEDS])
def test_kill_job_and_restart(setup: Setup, seed: int) -> None:
    phase, handoff = PHASES[seed % 3], HANDOFFS[(seed // 3) % 2]
    name = f"kill-{handoff}-{seed}-{uuid.uuid4().hex[:6]}"
    result = run_trial(
        seed,
        setup.command(name, handoff),
        max_kills=2,
        phase=phase,
        lines=phase_lines(setup.baseline(handoff)),
    )
    report(f"kinesis-kill-seed-{seed}", [result])
    check = setup.check(name)
    label = (
        f"handoff={handoff} seed={seed} plans={[str(p) for p in result.plans]} "
        f"kills={result.kill_phases} restored_from={[r.restored_from for r in result.runs[1:]]}"
    )
    assert check.ok, check.message(label)


ARCHIVER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from lake.kinesis_archiver import KinesisArchiver
    from lake.writer import ParquetLakeWriter
    from lambdasource.sources.kinesis.config import KinesisConfig
    from tests.integration.test_archiver import SCHEMA, TIME

    endpoint, stream, root = sys.argv[1:4]
    config = KinesisConfig(endpoint_url=endpoint, region="us-east-1",
                           access_key_id="testing", secret_access_key="testing")
    archiver = KinesisArchiver(stream, ParquetLakeWriter(root, TIME), TIME, config=config,
                               schema=SCHEMA, commit_rows=150, commit_interval="100ms",
                               min_call_interval="20ms", shard_discovery="200ms")
    print("STARTED", flush=True)
    asyncio.run(archiver.run())
    """
)


def test_kill_archiver_while_records_arrive(kinesis: KinesisService, tmp_path: Path) -> None:
    """The union of committed rows is every record put, once, across seeded kill -9s."""
    stream = kinesis.new_stream(3)
    root = tmp_path / "lake"
    script = tmp_path / "archive.py"
    script.write_text(ARCHIVER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(16)
    batches = [rows(400, seed=100 + i, first_id=10_000 * i) for i in range(8)]
    extra = [rows(300, seed=200 + i, first_id=200_000 + 10_000 * i) for i in range(4)]
    acks: list[dict[int, list[int]]] = []
    kills = 0
    for round_ in range(4):
        proc = subprocess.Popen(
            [sys.executable, str(script), kinesis.endpoint_url, stream, str(root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        try:
            assert proc.stdout is not None
            started = proc.stdout.readline()
            assert started.startswith(b"STARTED"), proc.stderr.read() if proc.stderr else b""
            for table in batches[2 * round_ : 2 * round_ + 2]:
                acks.append(put(kinesis, stream, encode(table)))
                time.sleep(rng.uniform(0.05, 0.6))
            acks.append(put(kinesis, stream, encode(extra[round_])))
            time.sleep(rng.choice([0.0, 0.03, 0.1, 0.25]))  # often mid-buffer or mid-commit
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        kills += proc.returncode == -signal.SIGKILL
    lake = ParquetLakeWriter(root, TIME)
    commits_before = len(lake.commits())
    summary = asyncio.run(
        KinesisArchiver(
            stream, lake, TIME, config=config(kinesis.endpoint_url), schema=SCHEMA, stop_at="latest"
        ).run()
    )
    expected: Counter[int] = Counter()
    for table in batches + extra:
        expected.update(table.column("event_id").to_pylist())
    got = ids(lake_table(ParquetLakeWriter(root, TIME)))
    print(
        f"FIGURES kinesis-archiver-kill: kills={kills} commits_before_catch_up={commits_before} "
        f"caught_up_records={summary.records}"
    )
    assert kills == 4 and commits_before > 4
    assert got == expected, (
        f"missing {sum((expected - got).values())}, duplicated {sum((got - expected).values())}"
    )
    assert lake.offsets() == next_positions(*acks)
