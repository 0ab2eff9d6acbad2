"""Both notebooks run end to end with small parameters (``LS_NOTEBOOK_SMALL=1``) in a real kernel.

The kernel is the ``python3`` kernel spec started with this interpreter (``sys.executable``), so
it sees the venv's packages. The notebooks start their own embedded broker (Tansu). The committed
notebooks carry the outputs of their full-size runs (checked without executing them).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import nbclient
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def execute(name: str) -> Any:
    """Execute ``notebooks/name`` small; returns the executed notebook (raises on a cell error)."""
    from jupyter_client.manager import KernelManager

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    km = KernelManager(kernel_name="python3")
    spec = km.kernel_spec
    assert spec is not None, "no python3 kernel spec (python -m ipykernel install --sys-prefix)"
    spec.argv[0] = sys.executable
    client = nbclient.NotebookClient(
        nb, km=km, timeout=110, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute(env={**os.environ, "LS_NOTEBOOK_SMALL": "1"})
    return nb


def outputs(nb: Any) -> tuple[str, list[str]]:
    """All stream text of the notebook, and the MIME types of its rich outputs."""
    text: list[str] = []
    kinds: list[str] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                text.append(out.text)
            elif out.output_type in ("display_data", "execute_result"):
                kinds.extend(out.data)
            elif out.output_type == "error":
                raise AssertionError(f"{out.ename}: {out.evalue}")
    return "".join(text), kinds


def committed_outputs(name: str) -> str:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    return "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )


@pytest.mark.kafka
def test_watermark_skew_memory_notebook_runs_small() -> None:
    nb = execute("watermark_skew_memory.ipynb")
    text, kinds = outputs(nb)
    assert "8 configurations in" in text
    assert "late records in every configuration: 0" in text
    for backlog in ("2h", "8h"):
        assert f"backlog {backlog:>4}: peak state unaligned" in text
    # the bound, as the operator after the source sees it
    assert (
        "aligned runs whose max lead at the next operator is within max_drift + "
        "out_of_orderness: 5 of 5; rows beyond the bound: 0"
    ) in text
    assert kinds.count("image/png") == 4
    assert "text/markdown" in kinds


@pytest.mark.kafka
def test_bootstrap_notebook_runs_small_and_verifies_the_store() -> None:
    nb = execute("bootstrap_30d_sliding.ipynb")
    text, kinds = outputs(nb)
    assert "verified: 300 keys match the DuckDB SQL reference" in text
    assert "recorded offsets (the lake is complete below these): p0@" in text
    assert "late records 0" in text
    assert kinds.count("image/png") == 2


def test_committed_notebooks_carry_full_size_outputs() -> None:
    skew = committed_outputs("watermark_skew_memory.ipynb")
    assert "configurations in" in skew and "users" in skew
    assert "2,000 users" not in skew  # not the small run
    assert "GiB" in skew  # the full run's contrast is counted in gigabytes
    assert "late records in every configuration: 0" in skew
    nb = nbformat.read(NOTEBOOKS / "watermark_skew_memory.ipynb", as_version=4)
    pngs = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(pngs) == 4
    boot = committed_outputs("bootstrap_30d_sliding.ipynb")
    assert "verified:" in boot and "300 keys" not in boot


@pytest.mark.kafka
def test_unaligned_state_grows_with_backlog_and_aligned_stays_flat() -> None:
    """The contrast the skew notebook plots, asserted on the harness itself (small sizes)."""
    from benchmarks.skew import StudyEnv, run_config

    env = StudyEnv(lake_span="1d", events_per_hour=4_000, users=2_000)
    try:
        run_config("2h", False, env=env)  # warm-up
        rows = {
            (backlog, aligned): run_config(backlog, aligned, env=env)
            for backlog in ("2h", "12h")
            for aligned in (False, True)
        }
    finally:
        env.close()
    for row in rows.values():
        assert row["late"] == 0
        assert row["rows_out"] > 0
    state = {k: r["peak_state_bytes"] for k, r in rows.items()}
    assert state[("12h", False)] > 1.5 * state[("12h", True)]
    assert state[("12h", False)] > 1.3 * state[("2h", False)]
    assert state[("12h", True)] < 1.3 * state[("2h", True)]
    # Measured at the operator after the source: unaligned, stream records arrive the whole
    # lake span ahead of the watermark; aligned, no record is beyond max_drift + out_of_orderness.
    # (the unaligned lead depends on how far the lake got before the stream's records arrived:
    # 14.7–15.2 h on a loaded machine, more than 20 h on a quiet one; the bound is 0.5 h)
    assert rows[("12h", False)]["max_lead_h"] > 10
    assert rows[("12h", False)]["rows_beyond_bound"] > 0
    for backlog in ("2h", "12h"):
        aligned = rows[(backlog, True)]
        assert aligned["bound_h"] == pytest.approx(0.5 + 30 / 3600)  # 30m + 30s
        assert 0 < aligned["max_lead_h"] <= aligned["bound_h"]
        assert aligned["rows_beyond_bound"] == 0
        assert aligned["probe_rows"] == aligned["lake_rows"] + aligned["stream_rows"]
    assert rows[("12h", True)]["held_s"] > 0
