"""kill -9 of a checkpointed bootstrap at random moments, then restart with the same command: the
whole upsert store must equal what the input events give, so one lost or duplicated record
anywhere fails.

The job (:mod:`tests.faults.jobs`, ``--job hourly``): archiver-written lake → ``LambdaSource``
(``handoff="offsets"`` or ``"timestamp"``) → ``key_by(user_id)`` → ``Tumbling(1h)``
``emit="every"`` (count, distinct ids, sum of ids, sum of amounts) → an upsert store keyed by
``(user_id, window_end)``. The oracle (:mod:`tests.faults.oracle`) is DuckDB SQL over the
generated events, never the job's counters or watermark.

Scenarios: ``plain`` (kill, restart); ``archiver`` (after the first kill, ``lake.archiver``
archives the rest of the topic into the lake while the job is dead); ``compaction`` (after the
first kill, ``lake.maintenance.compact`` rewrites the lake's partitions while the job is dead).
Kill points are drawn from the seed (``random.Random(seed)``) over the lake phase, the handoff
and the stream phase; the first kill's phase and the handoff are chosen from the seed so every
combination is covered. Replay one trial with e.g.
``pytest tests/faults/test_kill_restart.py -m slow -k "archiver and seed-3"``.

Brokers: every test runs per broker (ids ``[tansu]`` / ``[apache]``, one data set each): Tansu in
the default run, Apache Kafka in -m slow.

Figures per test (``FIGURES name: {...}``, ``-s`` to see them): trials, kills, phases hit,
recovery time (restart → caught up), checkpoint durations.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.faults import jobs, oracle
from tests.faults.harness import (
    PHASES,
    RunResult,
    TrialResult,
    job_command,
    phase_lines,
    run_job,
    run_trial,
    summarize,
)
from tests.services.brokers import Broker, broker_params, session_broker
from tests.services.postgres import PostgresService

EVENTS = 12_000
THROTTLE_MS = 8
ARCHIVED = 16 / 24  # the lake: the day's first 16 hours (~46% of the records); the rest: stream
HANDOFFS = ("offsets", "timestamp")
SCENARIOS = ("plain", "archiver", "compaction")
SLOW_SEEDS = list(range(30))  # plain: each (first-kill phase, handoff) pair 5 times
SCENARIO_SEEDS = list(range(12))  # archiver / compaction: each pair twice


def first_kill(seed: int) -> tuple[str, str]:
    """The first kill's phase and the handoff of a seeded trial (covers every pair in turn)."""
    return PHASES[seed % 3], HANDOFFS[(seed // 3) % 2]


class Setup:
    """One data set (archiver-written lake + topic) shared by a module's trials; scenarios that
    change the lake work on a copy of it."""

    def __init__(self, broker: Broker, root: Path, seed: int = 5) -> None:
        self.broker = broker
        self.root = root
        self.topic = f"faults-{uuid.uuid4().hex[:8]}"
        broker.create_topic(self.topic, 2)  # on Apache Kafka without time retention
        self.pristine = root / "lake"
        self.dataset = asyncio.run(
            jobs.prepare_hourly(
                broker.bootstrap,
                self.topic,
                str(self.pristine),
                events=EVENTS,
                seed=seed,
                archived=ARCHIVED,
            )
        )
        self.baselines: dict[str, RunResult] = {}
        self.iceberg_commits: int | None = None

    def lake_for(self, name: str, scenario: str, kind: str = "parquet") -> str:
        """The pristine lake, or a private copy when the scenario changes the lake. Iceberg lakes
        (their metadata holds absolute paths) are written anew, commit by commit, as the archiver
        wrote the Parquet one."""
        if kind == "iceberg":
            if scenario == "plain":
                return self.pristine_iceberg()
            lake = f"{jobs.ICEBERG}{self.root / f'lake-{name}'}"
            jobs.write_lake_prefix(self.dataset, lake)
            return lake
        if scenario == "plain":
            return str(self.pristine)
        target = self.root / f"lake-{name}"
        shutil.copytree(self.pristine, target)
        return str(target)

    def pristine_iceberg(self) -> str:
        lake = f"{jobs.ICEBERG}{self.root / 'lake-iceberg'}"
        if self.iceberg_commits is None:
            self.iceberg_commits = jobs.write_lake_prefix(self.dataset, lake)
        return lake

    def command(
        self, name: str, handoff: str, lake: str | None = None, dsn: str | None = None
    ) -> list[str]:
        return job_command(
            job="hourly",
            handoff=handoff,
            lake=lake or str(self.pristine),
            topic=self.topic,
            bootstrap=self.broker.bootstrap,
            checkpoints=(self.root / f"ckpt-{name}").as_uri(),
            duckdb=None if dsn else str(self.root / f"{name}.duckdb"),
            postgres=dsn,
            interval="150ms",
            throttle_ms=THROTTLE_MS,
        )

    def baseline(self, handoff: str, kind: str = "parquet") -> RunResult:
        """The uninterrupted run (its progress lines place the kill points)."""
        key = f"{kind}-{handoff}"
        if key not in self.baselines:
            lake = self.pristine_iceberg() if kind == "iceberg" else None
            result = run_job(self.command(f"baseline-{key}", handoff, lake))
            assert result.done is not None, result.stderr[-3000:]
            self.baselines[key] = result
        return self.baselines[key]

    def check(self, store: Any, label: str) -> oracle.HourlyCheck:
        return oracle.compare_hourly(
            store,
            self.dataset.table,
            cutoff=self.dataset.cutoff,
            positions=self.dataset.positions,
        )


def between_kills(scenario: str, setup: Setup, lake: str) -> Callable[[int], Any] | None:
    """What happens to the lake while the job is dead (after the first kill only)."""
    if scenario == "plain":
        return None

    def act(kill: int) -> Any:
        if kill > 0:
            return None
        if scenario == "archiver":
            summary = asyncio.run(jobs.archive(setup.broker.bootstrap, setup.topic, lake))
            # the whole topic is in the lake now
            assert summary.commits > 0 and summary.offsets == partition_sizes(setup), summary
            return {"archived_rows": summary.rows, "commits": summary.commits}
        result = jobs.compact_lake(lake)
        assert result.partitions > 0, f"compaction had nothing to do: {result}"
        return {"compacted_partitions": result.partitions, "files_before": result.files_before}

    return act


def partition_sizes(setup: Setup) -> dict[int, int]:
    """Records per Kafka partition of the topic (from the input's positions)."""
    parts = setup.dataset.positions.column("partition").to_pylist()
    return {p: parts.count(p) for p in sorted(set(parts))}


def report(name: str, trials: list[TrialResult], extra: dict[str, Any] | None = None) -> None:
    figures = summarize(trials)
    for key in list(figures):
        if isinstance(figures[key], float):
            figures[key] = round(figures[key], 3)
    for t in trials:
        print(
            f"seed={t.seed} plans={[str(p) for p in t.plans]} kills={t.kill_phases} "
            f"restored_from={[r.restored_from for r in t.runs[1:]]} between={t.between}"
        )
    print(f"FIGURES {name}: {json.dumps({**figures, **(extra or {})})}")


def trial(
    setup: Setup,
    seed: int,
    *,
    scenario: str = "plain",
    handoff: str | None = None,
    phase: str | None = None,
    max_kills: int = 3,
    postgres: PostgresService | None = None,
    kind: str = "parquet",
) -> TrialResult:
    """One seeded trial checked against the oracle; the first kill's phase and the handoff
    default to :func:`first_kill`'s."""
    drawn_phase, drawn_handoff = first_kill(seed)
    handoff = handoff or drawn_handoff
    phase = phase or drawn_phase
    # unique: a default-run and a slow trial may share a seed, never their store or checkpoints
    name = f"{scenario}-{handoff}-{seed}-{kind}" + ("-pg" if postgres else "")
    name += f"-{uuid.uuid4().hex[:6]}"
    lake = setup.lake_for(name, scenario, kind)
    dsn = postgres.new_database() if postgres else None
    lines = phase_lines(setup.baseline(handoff, kind))
    result = run_trial(
        seed,
        setup.command(name, handoff, lake, dsn),
        max_kills=max_kills,
        phase=phase,
        lines=lines,
        between=between_kills(scenario, setup, lake),
    )
    store = (
        asyncio.run(jobs.read_hourly_postgres(dsn))
        if dsn
        else jobs.read_hourly_duckdb(setup.root / f"{name}.duckdb")
    )
    check = setup.check(store, name)
    final = result.final
    label = (
        f"lake={kind} scenario={scenario} handoff={handoff} seed={seed} plans={[str(p) for p in result.plans]} "
        f"kills={result.kill_phases} restored_from={[r.restored_from for r in result.runs[1:]]} "
        f"between={result.between} (job's own figures: late={final['late']} "
        f"dead_letters={final['dead_letters']} handoff={final.get('handoff')})"
    )
    print(f"{name}: {json.dumps(check.summary())}")
    assert check.ok, check.message(label)
    return result


# --- the uninterrupted runs -------------------------------------------------------------------


@pytest.fixture(scope="module", params=broker_params(default=("tansu",)))
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """One data set per broker: Tansu in the default run, Apache Kafka in -m slow."""
    broker = session_broker(request)
    return Setup(broker, tmp_path_factory.mktemp(f"kill-{broker.name}"))


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_uninterrupted_run_matches_input(setup: Setup, handoff: str) -> None:
    """No fault: the oracle itself must pass (else every trial's failure means nothing)."""
    run = setup.baseline(handoff)
    store = jobs.read_hourly_duckdb(setup.root / f"baseline-parquet-{handoff}.duckdb")
    check = setup.check(store, f"baseline-{handoff}")
    print(f"FIGURES uninterrupted-{handoff}: {json.dumps(phase_lines(run))} {run.seconds:.2f}s")
    assert check.ok, check.message(f"uninterrupted run, handoff={handoff}")
    # the data set really exercises both sides of the handoff
    assert setup.dataset.lake_rows > 0 and setup.dataset.lake_rows < EVENTS
    assert setup.dataset.commits > 1


# --- default run: a few fast trials ------------------------------------------------------------


def test_kill_restart_default(setup: Setup) -> None:
    """A few fast trials for every run: one kill in each phase, both handoffs."""
    cases = [
        (101, "lake", "offsets"),
        (102, "handoff", "timestamp"),
        (103, "stream", "offsets"),
        (104, "stream", "timestamp"),
    ]
    results = [trial(setup, s, phase=p, handoff=h, max_kills=1) for s, p, h in cases]
    report("kill-default", results)
    kills = [r.kills for r in results]
    assert sum(kills) >= 3, kills  # the job may outrun a late kill point, not all of them
    restored = [r.restored_from for t in results for r in t.runs[1:]]
    assert any(r is not None for r in restored), restored  # really resumed from a checkpoint


def test_kill_lake_changes_while_dead_default(setup: Setup) -> None:
    """One archiver and one compaction between kill and restart, resumed from a checkpoint.

    A kill point is a progress line of an uninterrupted run; on a loaded machine the job can
    finish before it (every trial is still checked by the oracle): then the next seed is
    tried, until a kill with the lake change between really happened (three seeds at most)."""
    results = []
    landed = []
    for scenario, handoff, seeds in (
        ("archiver", "offsets", (2, 12, 22)),
        ("compaction", "timestamp", (5, 15, 25)),
    ):
        for seed in seeds:
            result = trial(
                setup, seed, scenario=scenario, phase="stream", handoff=handoff, max_kills=1
            )
            results.append(result)
            if result.kills == 1 and result.between:
                landed.append(scenario)
                break
    report("kill-lake-changes-default", results)
    assert landed == ["archiver", "compaction"], [(r.seed, r.between) for r in results]


# --- slow: seeded trials -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS, ids=[f"seed-{s}" for s in SLOW_SEEDS])
def test_kill_restart_seeded(setup: Setup, seed: int) -> None:
    result = trial(setup, seed)
    report(f"kill-plain-seed-{seed}", [result])


@pytest.mark.slow
@pytest.mark.parametrize("seed", SCENARIO_SEEDS, ids=[f"seed-{s}" for s in SCENARIO_SEEDS])
def test_kill_archiver_between(setup: Setup, seed: int) -> None:
    """The archiver commits the rest of the topic into the lake while the job is dead."""
    result = trial(setup, seed, scenario="archiver", max_kills=2)
    report(f"kill-archiver-seed-{seed}", [result])


@pytest.mark.slow
@pytest.mark.parametrize("seed", SCENARIO_SEEDS, ids=[f"seed-{s}" for s in SCENARIO_SEEDS])
def test_kill_compaction_between(setup: Setup, seed: int) -> None:
    """A compaction rewrites the lake's partitions while the job is dead."""
    result = trial(setup, seed, scenario="compaction", max_kills=2)
    report(f"kill-compaction-seed-{seed}", [result])


# --- PostgreSQL store ----------------------------------------------------------------------------


@pytest.mark.postgres
def test_kill_restart_postgres(setup: Setup, postgres: PostgresService) -> None:
    results = [
        trial(setup, seed, phase=phase, handoff=handoff, max_kills=1, postgres=postgres)
        for seed, phase, handoff in [(201, "lake", "timestamp"), (202, "stream", "offsets")]
    ]
    report("kill-postgres-default", results)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS[:8], ids=[f"seed-{s}" for s in SLOW_SEEDS[:8]])
def test_kill_restart_seeded_postgres(setup: Setup, postgres: PostgresService, seed: int) -> None:
    result = trial(setup, seed, postgres=postgres)
    report(f"kill-postgres-seed-{seed}", [result])


# --- Iceberg lake ---------------------------------------------------------------------------------


@pytest.mark.iceberg
def test_kill_restart_iceberg(setup: Setup) -> None:
    """The same trials over an Iceberg lake (hours(ts) partitions, SQLite catalog): uninterrupted,
    a kill in the lake phase, and the archiver appending while the job is dead."""
    run = setup.baseline("offsets", "iceberg")
    store = jobs.read_hourly_duckdb(setup.root / "baseline-iceberg-offsets.duckdb")
    check = setup.check(store, "baseline-iceberg")
    assert check.ok, check.message("uninterrupted run over the Iceberg lake")
    assert (setup.iceberg_commits or 0) > 1 and run.done is not None
    results = [
        trial(setup, 301, phase="lake", handoff="timestamp", max_kills=1, kind="iceberg"),
        trial(
            setup,
            302,
            scenario="archiver",
            phase="stream",
            handoff="offsets",
            max_kills=1,
            kind="iceberg",
        ),
    ]
    report("kill-iceberg-default", results)


@pytest.mark.iceberg
@pytest.mark.slow
@pytest.mark.parametrize("seed", SCENARIO_SEEDS, ids=[f"seed-{s}" for s in SCENARIO_SEEDS])
def test_kill_restart_seeded_iceberg(setup: Setup, seed: int) -> None:
    """Even seeds: plain kills; odd seeds: the archiver appends while the job is dead."""
    scenario = "plain" if seed % 2 == 0 else "archiver"
    result = trial(setup, seed, scenario=scenario, max_kills=2, kind="iceberg")
    report(f"kill-iceberg-{scenario}-seed-{seed}", [result])
