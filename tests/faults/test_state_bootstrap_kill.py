"""kill -9 of a job bootstrapped from state (issue 14 §4), then restart with the same command:
the whole upsert store must equal what the input events give.

The job (:mod:`tests.faults.jobs`, ``--job sliding-sums --bootstrap-mode state``):
archiver-written lake → ``LambdaSource`` (``handoff="offsets"`` or ``"timestamp"``) →
``key_by(user_id)`` → ``Sliding(2h, 30m)`` ``emit="every"`` (count, sum/min/max of event ids,
sum of amounts) → a DuckDB store keyed by ``(user_id, window_end)``, ``flush="all"``,
checkpoints every 150 ms. The pass (phase ``lake``) builds the window's state from the lake and
writes it as checkpoint 1; the stream phase goes on from it.

Kills: during the pass (no checkpoint yet: the restart runs the pass again, its upserts
idempotent), at the handoff (right after checkpoint 1) and in the stream phase (a periodic
checkpoint). The oracle (:func:`expected_store`) is DuckDB SQL over the generated events: per
(user, 2h window) with at least one event, its count, id sum, min and max id and amount sum —
so one lost or doubled record anywhere changes a row (a lost and a doubled record in one window
leave the count but not the id sum). Never the job's counters.

Broker: Tansu in the default run (like the kill suite), Apache Kafka in -m slow.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from lambdasource.timeutil import to_micros
from tests.faults import jobs
from tests.faults.harness import (
    ROOT,
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

EVENTS = 8_000
THROTTLE_MS = 8
ARCHIVED = 16 / 24  # the lake: the day's first 16 hours; the rest only on the stream
SIZE_US = jobs.WINDOW.size
SLIDE_US = jobs.WINDOW.slide
HANDOFFS = ("offsets", "timestamp")

_EXPECTED_SQL = f"""
WITH events AS (
    SELECT user_id, event_id, amount, epoch_us(event_time) AS t FROM input
), ends AS (
    SELECT user_id, event_id, amount,
           (floor(t / {SLIDE_US})::BIGINT + 1 + k) * {SLIDE_US} AS window_end
    FROM events, range(0, {SIZE_US // SLIDE_US}) AS steps(k)
)
SELECT user_id, window_end, count(*) AS n, sum(event_id)::BIGINT AS id_sum,
       min(event_id) AS id_min, max(event_id) AS id_max, sum(amount) AS amount
FROM ends GROUP BY ALL
"""

_DIFF_SQL = """
SELECT coalesce(e.user_id, g.user_id) AS user_id, coalesce(e.window_end, g.window_end) AS end_us,
       e.n AS exp_n, g.n AS got_n, e.id_sum AS exp_id_sum, g.id_sum AS got_id_sum,
       e.id_min IS DISTINCT FROM g.id_min OR e.id_max IS DISTINCT FROM g.id_max AS bounds_differ,
       g.window_start_us AS got_start
FROM expected e FULL OUTER JOIN got g ON e.user_id = g.user_id AND e.window_end = g.window_end
WHERE e.n IS DISTINCT FROM g.n OR e.id_sum IS DISTINCT FROM g.id_sum
   OR e.id_min IS DISTINCT FROM g.id_min OR e.id_max IS DISTINCT FROM g.id_max
   OR abs(e.amount - g.amount) > 1e-9 * greatest(1.0, abs(e.amount))
   OR g.window_start_us IS DISTINCT FROM g.window_end - {size}
ORDER BY 2, 1
"""


def expected_store(events: pa.Table) -> pa.Table:
    """The rows an exact run leaves: per (user, window_end) of every 2h window holding events."""
    con = duckdb.connect()
    con.register("input", events.select(["event_time", "event_id", "user_id", "amount"]))
    return con.sql(_EXPECTED_SQL).to_arrow_table()


STORE_COLUMNS = [
    "user_id",
    "window_start",
    "window_end",
    "n",
    "id_sum",
    "id_min",
    "id_max",
    "amount",
]


def read_duckdb(path: Path) -> pa.Table:
    """The job's DuckDB store, times as µs (``window_start_us``, ``window_end``)."""
    with duckdb.connect(str(path), read_only=True) as con:
        return con.sql(
            f"SELECT user_id, epoch_us(window_start) AS window_start_us, "
            f"epoch_us(window_end) AS window_end, n, id_sum, id_min, id_max, amount "
            f"FROM {jobs.SUMS_TABLE}"
        ).to_arrow_table()


async def read_postgres(dsn: str) -> pa.Table:
    """The job's PostgreSQL store, in :func:`read_duckdb`'s shape."""
    import asyncpg

    con = await asyncpg.connect(dsn)
    try:
        rows = await con.fetch(f"SELECT {', '.join(STORE_COLUMNS)} FROM {jobs.SUMS_TABLE}")
    finally:
        await con.close()
    columns = {name: [row[name] for row in rows] for name in STORE_COLUMNS}
    for name in ("window_start", "window_end"):
        columns[name] = [to_micros(value) for value in columns[name]]
    table = pa.table(columns)
    return table.rename_columns(
        [c if c != "window_start" else "window_start_us" for c in table.column_names]
    )


def store_differences(got: pa.Table, events: pa.Table, limit: int = 8) -> list[str]:
    """Each (user, window) where the store (:func:`read_duckdb`'s shape) and the oracle differ
    (empty: equal), with the records lost (expected − stored count; negative: doubled)."""
    con = duckdb.connect()
    con.register("expected", expected_store(events))
    con.register("got", got)
    rows = con.execute(_DIFF_SQL.format(size=SIZE_US)).fetchall()
    out = [
        f"user_id={user} window_end={end}: expected n={exp_n} id_sum={exp_sum}, "
        f"got n={got_n} id_sum={got_sum} (lost {(exp_n or 0) - (got_n or 0)}"
        f"{', bounds differ' if bounds else ''}, start={start})"
        for user, end, exp_n, got_n, exp_sum, got_sum, bounds, start in rows
    ]
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


class Setup:
    """One data set (archiver-written lake + topic) for a module's trials."""

    def __init__(self, broker: Broker, root: Path) -> None:
        self.broker = broker
        self.root = root
        self.topic = f"state-kill-{uuid.uuid4().hex[:8]}"
        broker.create_topic(self.topic, 2)
        self.dataset = asyncio.run(
            jobs.prepare_hourly(
                broker.bootstrap,
                self.topic,
                str(root / "lake"),
                events=EVENTS,
                seed=9,
                archived=ARCHIVED,
            )
        )
        self.baselines: dict[str, RunResult] = {}

    def command(
        self, name: str, handoff: str, throttle_ms: float = THROTTLE_MS, dsn: str | None = None
    ) -> list[str]:
        return job_command(
            job="sliding-sums",
            bootstrap_mode="state",
            handoff=handoff,
            lake=self.dataset.lake,
            topic=self.topic,
            bootstrap=self.broker.bootstrap,
            checkpoints=(self.root / f"ckpt-{name}").as_uri(),
            duckdb=None if dsn else str(self.root / f"{name}.duckdb"),
            postgres=dsn,
            interval="150ms",
            throttle_ms=throttle_ms,
        )

    def baseline(self, handoff: str) -> RunResult:
        """The uninterrupted run (its progress lines place the kill points)."""
        if handoff not in self.baselines:
            result = run_job(self.command(f"baseline-{handoff}", handoff))
            assert result.done is not None, result.stderr[-3000:]
            self.baselines[handoff] = result
        return self.baselines[handoff]

    def check(self, name: str, label: str, dsn: str | None = None) -> None:
        store = (
            asyncio.run(read_postgres(dsn)) if dsn else read_duckdb(self.root / f"{name}.duckdb")
        )
        diffs = store_differences(store, self.dataset.table)
        assert not diffs, f"{label}: the store differs from the input's windows:\n" + "\n".join(
            diffs
        )


@pytest.fixture(scope="module", params=broker_params(default=("tansu",)))
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    broker = session_broker(request)
    return Setup(broker, tmp_path_factory.mktemp(f"state-kill-{broker.name}"))


def trial(
    setup: Setup,
    seed: int,
    phase: str,
    handoff: str,
    max_kills: int = 1,
    postgres: PostgresService | None = None,
) -> TrialResult:
    name = f"{phase}-{handoff}-{seed}-{uuid.uuid4().hex[:6]}"
    dsn = postgres.new_database() if postgres else None
    result = run_trial(
        seed,
        setup.command(name, handoff, dsn=dsn),
        max_kills=max_kills,
        phase=phase,
        lines=phase_lines(setup.baseline(handoff)),
    )
    final = result.final
    label = (
        f"handoff={handoff} seed={seed} plans={[str(p) for p in result.plans]} "
        f"kills={result.kill_phases} restored_from={[r.restored_from for r in result.runs[1:]]} "
        f"(job's own figures: bootstrap={final.get('bootstrap')} late={final['late']})"
    )
    print(f"{name}: {label}")
    setup.check(name, label, dsn)
    return result


def kill_when(command: list[str], ready: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Run the job and SIGKILL it at its first stream-phase progress line for which ``ready``
    holds; its progress lines up to there."""
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines: list[dict[str, Any]] = []
    try:
        for raw in proc.stdout:
            line = json.loads(raw)
            if line.get("event") != "progress":
                continue
            lines.append(line)
            if line["phase"] == "stream" and ready(line):
                proc.send_signal(signal.SIGKILL)
                break
        else:
            raise AssertionError(f"the job ended before the kill: {lines[-3:]}")
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()
    return lines


def report(name: str, trials: list[TrialResult]) -> None:
    figures = {k: round(v, 3) if isinstance(v, float) else v for k, v in summarize(trials).items()}
    print(f"FIGURES {name}: {json.dumps(figures)}")


def replay_command(setup: Setup, name: str, handoff: str) -> list[str]:
    """The same job with ``--bootstrap-mode replay``."""
    command = setup.command(name, handoff)
    index = command.index("--bootstrap-mode")
    return [*command[: index + 1], "replay", *command[index + 2 :]]


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_uninterrupted_state_bootstrap_matches_input(setup: Setup, handoff: str) -> None:
    """No fault: the pass ran and wrote checkpoint 1, and the oracle passes (else a trial's
    failure means nothing); so does the same job replaying the lake."""
    run = setup.baseline(handoff)
    assert run.done is not None
    bootstrap = run.done["bootstrap"]
    assert bootstrap["mode"] == "state" and bootstrap["checkpoint_id"] == 1, bootstrap
    lines = phase_lines(run)
    assert lines["lake"] >= 3 and lines["stream"] >= 3, lines  # room for kills in both phases
    setup.check(f"baseline-{handoff}", f"uninterrupted, handoff={handoff}")
    # the same job replaying the lake: the same oracle holds, and its time for comparison
    name = f"baseline-replay-{handoff}"
    replay = run_job(replay_command(setup, name, handoff))
    assert replay.done is not None and replay.done["bootstrap"]["mode"] == "replay"
    setup.check(name, f"uninterrupted replay, handoff={handoff}")
    figures = {
        "state_run_s": round(run.seconds, 2),
        "pass_s": round(bootstrap["seconds"], 2),
        "replay_run_s": round(replay.seconds, 2),
        "replay_lake_lines": phase_lines(replay)["lake"],
        "state_lake_lines": lines["lake"],
    }
    print(f"FIGURES uninterrupted-{handoff}: {json.dumps(figures)}")


def test_kill_during_and_after_the_pass(setup: Setup) -> None:
    """A kill during the pass (the restart runs it again: no checkpoint yet), one at the
    handoff (the lake read, the state being built or checkpoint 1 being written: either) and
    one in the stream phase (the restart resumes from a checkpoint, no second pass)."""
    cases = [(401, "lake", "offsets"), (402, "handoff", "timestamp"), (403, "stream", "offsets")]
    results = [trial(setup, seed, phase, handoff) for seed, phase, handoff in cases]
    report("state-kill-default", results)
    killed = [r for r in results if r.kills]
    assert len(killed) >= 2, [r.kill_phases for r in results]
    for result in killed:
        after = result.runs[1]
        assert after.done is not None
        if after.restored_from is None:  # killed before checkpoint 1: the pass again
            assert result.kill_phases[0] in ("lake", "handoff"), result.kill_phases
            assert after.done["bootstrap"]["mode"] == "state", after.done["bootstrap"]
        else:
            assert result.kill_phases[0] != "lake", result.kill_phases
            assert after.done["bootstrap"]["seconds"] is None  # resumed: no second pass


def test_restart_from_a_stream_phase_checkpoint_reads_no_lake_again(setup: Setup) -> None:
    """Killed in the stream phase after a periodic checkpoint (>= 2) completed: the restart
    resumes from it and reads no lake record again (lake records in windows still open at its
    watermark would count twice), and the store is exact. (Failed before 476a378: the lake
    source restored at its end snapshotted no position, so the restart re-read the lake.)"""
    name = f"stream-checkpoint-{uuid.uuid4().hex[:6]}"
    command = setup.command(name, "offsets", throttle_ms=40)
    lines = kill_when(command, lambda line: (line.get("checkpoints") or 0) >= 2)
    assert lines[-1]["phase"] == "stream", lines[-1]
    after = run_job(command)
    assert after.done is not None, after.stderr[-3000:]
    assert after.restored_from is not None and after.restored_from >= 2, after.restored_from
    lake_again = after.done["rows"]["lake"]
    diffs = store_differences(read_duckdb(setup.root / f"{name}.duckdb"), setup.dataset.table)
    assert lake_again == 0 and not diffs, (
        f"restart from checkpoint {after.restored_from}: read {lake_again} lake rows again; "
        f"store differences: {diffs}"
    )


@pytest.mark.postgres
def test_kill_state_bootstrap_postgres(setup: Setup, postgres: PostgresService) -> None:
    """The same into a PostgreSQL store: a kill during the pass and one in the stream phase."""
    results = [
        trial(setup, seed, phase, handoff, postgres=postgres)
        for seed, phase, handoff in [(501, "lake", "timestamp"), (502, "stream", "offsets")]
    ]
    report("state-kill-postgres", results)
    assert sum(r.kills for r in results) >= 1


@pytest.mark.slow
@pytest.mark.parametrize("seed", list(range(12)), ids=[f"seed-{s}" for s in range(12)])
def test_kill_state_bootstrap_seeded(setup: Setup, seed: int) -> None:
    """Up to three kills per trial; the first in each phase × handoff in turn."""
    phase = ("lake", "handoff", "stream")[seed % 3]
    result = trial(setup, seed, phase, HANDOFFS[(seed // 3) % 2], max_kills=3)
    report(f"state-kill-seed-{seed}", [result])
