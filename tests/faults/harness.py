"""Running :mod:`tests.faults.jobs` in subprocesses: start, follow its progress lines, kill -9 at
a chosen point, act on the lake while the job is dead (``between``), restart, and time the
recovery. Shared by the kill tests."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("lake", "handoff", "stream")


@dataclass
class KillPlan:
    """Kill ``delay`` seconds after the job's progress line number ``at`` of ``phase`` (lines
    every ``--progress`` seconds; the handoff is reported once). ``at`` is drawn as a fraction
    of the lines an uninterrupted run reports in that phase (:func:`phase_lines`), so kill
    points spread over the whole phase; drawn from a ``random.Random(seed)`` (independent of
    ``PYTHONHASHSEED``)."""

    phase: str
    fraction: float
    delay: float = 0.0
    at: int = 0

    @classmethod
    def draw(
        cls, rng: random.Random, phase: str | None = None, lines: dict[str, int] | None = None
    ) -> KillPlan:
        phase = phase or rng.choice(PHASES)
        fraction = round(rng.random(), 3)
        delay = round(rng.uniform(0.0, 0.04), 3)
        if phase == "handoff":
            return cls(phase, 0.0, delay, 0)
        default = {"lake": 10, "stream": 3}[phase]
        count = max(1, (lines or {}).get(phase, default))
        # a restarted run reports fewer lines than the uninterrupted one: keep to its first 80%
        return cls(phase, fraction, delay, int(fraction * count * 0.8))

    def __str__(self) -> str:
        return f"{self.phase}#{self.at}+{self.delay * 1000:.0f}ms"


@dataclass
class RunResult:
    killed: bool
    seconds: float
    lines: list[dict[str, Any]]
    returncode: int
    stderr: str

    @property
    def done(self) -> dict[str, Any] | None:
        last = self.lines[-1] if self.lines else None
        return last if last and last.get("event") == "done" else None

    @property
    def restored_from(self) -> int | None:
        """The checkpoint this run resumed from (None: started fresh). Early progress lines may
        precede the restore, so the first line naming one counts (or the done line)."""
        for line in self.lines:
            if line.get("event") == "progress" and line.get("restored_from") is not None:
                return int(line["restored_from"])
        done = self.done
        value = None if done is None else done["checkpoints"]["restored_from"]
        return None if value is None else int(value)

    @property
    def phase_at_kill(self) -> str | None:
        progress = [line for line in self.lines if line.get("event") == "progress"]
        return progress[-1]["phase"] if self.killed and progress else None


@dataclass
class TrialResult:
    seed: int
    plans: list[KillPlan]
    runs: list[RunResult] = field(default_factory=list)
    between: list[Any] = field(default_factory=list)  # what ``between`` returned per kill

    @property
    def kill_phases(self) -> list[str | None]:
        return [r.phase_at_kill for r in self.runs if r.killed]

    @property
    def kills(self) -> int:
        return sum(r.killed for r in self.runs)

    @property
    def recovery_s(self) -> list[float]:
        """Restart → caught up (the run after each kill, to its end)."""
        return [b.seconds for a, b in zip(self.runs, self.runs[1:], strict=False) if a.killed]

    @property
    def final(self) -> dict[str, Any]:
        done = self.runs[-1].done
        assert done is not None, f"seed={self.seed}: the last run did not finish"
        return done


def job_command(**options: Any) -> list[str]:
    cmd = [sys.executable, "-m", "tests.faults.jobs"]
    for name, value in options.items():
        if value is None:
            continue
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    return cmd


def run_job(
    cmd: list[str],
    plan: KillPlan | None = None,
    timeout: float = 90.0,
    env: dict[str, str] | None = None,
) -> RunResult:
    """Run the job; with ``plan`` SIGKILL it at that point (if it gets there before ending)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    lines: list[dict[str, Any]] = []
    seen = 0
    killed = False
    deadline = started + timeout
    try:
        for raw in proc.stdout:
            if time.perf_counter() > deadline:
                proc.kill()
                raise TimeoutError(f"job did not finish within {timeout}s: {cmd}")
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            lines.append(line)
            if plan is None or line.get("event") != "progress" or line["phase"] != plan.phase:
                continue
            if seen >= plan.at:
                if plan.delay:
                    time.sleep(plan.delay)
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
            seen += 1
        proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    proc.stdout.close()
    return RunResult(killed, time.perf_counter() - started, lines, proc.returncode, stderr)


def phase_lines(run: RunResult) -> dict[str, int]:
    """Progress lines per phase of a run (the uninterrupted run's: where kills can land)."""
    counts = dict.fromkeys(PHASES, 0)
    for line in run.lines:
        if line.get("event") == "progress":
            counts[line["phase"]] += 1
    return counts


def run_trial(
    seed: int,
    cmd: list[str],
    *,
    max_kills: int = 2,
    phase: str | None = None,
    lines: dict[str, int] | None = None,
    between: Callable[[int], Any] | None = None,
    timeout: float = 90.0,
) -> TrialResult:
    """Kill the job 1..``max_kills`` times at drawn points (the first in ``phase`` if given),
    call ``between(i)`` after kill ``i`` while the job is dead (e.g. archive or compact the
    lake), restart it with the same command each time, then let it finish."""
    rng = random.Random(seed)
    plans = [KillPlan.draw(rng, phase, lines)]
    plans += [KillPlan.draw(rng, None, lines) for _ in range(rng.randrange(0, max_kills))]
    trial = TrialResult(seed, plans)
    for plan in plans:
        result = run_job(cmd, plan, timeout=timeout)
        trial.runs.append(result)
        if not result.killed:
            break
        assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
        if between is not None:
            trial.between.append(between(trial.kills - 1))
    if trial.runs[-1].killed:
        trial.runs.append(run_job(cmd, timeout=timeout))
    last = trial.runs[-1]
    assert last.done is not None and last.returncode == 0, (
        f"seed={seed}: job failed after restart (rc={last.returncode}):\n{last.stderr[-3000:]}"
    )
    return trial


def summarize(trials: list[TrialResult]) -> dict[str, Any]:
    recoveries = [s for t in trials for s in t.recovery_s]
    durations: list[float] = []  # trigger → every sink flushed (runtime)
    writes: list[float] = []  # trigger → manifest written (coordinator), per finished run
    for t in trials:
        for run in t.runs:
            if run.done:
                ck = run.done["checkpoints"]
                durations += [float(v) for v in ck["durations_s"].values()]
                if ck["max_duration_s"] is not None:
                    writes.append(float(ck["max_duration_s"]))
    phases = [p for t in trials for p in t.kill_phases]
    return {
        "trials": len(trials),
        "kills": sum(t.kills for t in trials),
        "phases_hit": {p: phases.count(p) for p in PHASES if p in phases},
        "kill_phases": phases,
        "restored_from": [
            b.restored_from
            for t in trials
            for a, b in zip(t.runs, t.runs[1:], strict=False)
            if a.killed
        ],
        "recovery_mean_s": sum(recoveries) / len(recoveries) if recoveries else None,
        "recovery_max_s": max(recoveries) if recoveries else None,
        "checkpoint_mean_s": sum(durations) / len(durations) if durations else None,
        "checkpoint_max_s": max(durations) if durations else None,
        "checkpoint_written_max_s": max(writes) if writes else None,
        "checkpoints": len(durations),
    }
