"""Running :mod:`tests.faults.jobs` in subprocesses: start, follow its progress lines, kill -9 at
a chosen point, restart, and time the recovery. Shared by the kill tests and the benchmark."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("lake", "handoff", "stream")


@dataclass
class KillPlan:
    """Kill ``delay`` seconds after the job reports ``phase`` for the ``after``-th time
    (counting from 0; the handoff is reported once)."""

    phase: str
    after: int
    delay: float = 0.0

    @classmethod
    def draw(cls, rng: random.Random, phase: str | None = None) -> KillPlan:
        phase = phase or rng.choice(PHASES)
        after = {"lake": rng.randrange(0, 10), "handoff": 0, "stream": rng.randrange(0, 3)}[phase]
        return cls(phase, after, round(rng.uniform(0.0, 0.04), 3))

    def __str__(self) -> str:
        return f"{self.phase}#{self.after}+{self.delay * 1000:.0f}ms"


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
        """The checkpoint this run resumed from (None: started fresh)."""
        for line in self.lines:
            if line.get("event") == "progress":
                value = line.get("restored_from")
                return None if value is None else int(value)
        done = self.done
        return None if done is None else done["checkpoints"]["restored_from"]

    @property
    def phase_at_kill(self) -> str | None:
        progress = [line for line in self.lines if line.get("event") == "progress"]
        return progress[-1]["phase"] if self.killed and progress else None


@dataclass
class TrialResult:
    seed: int
    plans: list[KillPlan]
    runs: list[RunResult] = field(default_factory=list)

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
            if seen >= plan.after:
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


def run_trial(
    seed: int, cmd: list[str], *, max_kills: int = 2, phase: str | None = None
) -> TrialResult:
    """Kill the job 1..``max_kills`` times at drawn points (the first in ``phase`` if given),
    restarting it with the same command each time, then let it finish."""
    rng = random.Random(seed)
    plans = [KillPlan.draw(rng, phase)]
    plans += [KillPlan.draw(rng) for _ in range(rng.randrange(0, max_kills))]
    trial = TrialResult(seed, plans)
    for plan in plans:
        result = run_job(cmd, plan)
        trial.runs.append(result)
        if not result.killed:
            break
        assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    if trial.runs[-1].killed:
        trial.runs.append(run_job(cmd))
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
    return {
        "trials": len(trials),
        "kills": sum(t.kills for t in trials),
        "kill_phases": [r.phase_at_kill for t in trials for r in t.runs if r.killed],
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
