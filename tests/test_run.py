"""The benchmark runner on a tiny grid: two algorithms × one dataset × two seeds, a few hundred steps,
through the local process pool and through Ray; tables and plots agree with each run's summary.json,
finished cells are skipped on a second call, and a failing cell is reported without stopping the rest."""

import csv
import json
import sys

import pytest

import run
from conftest import ROOT, run_cli

# the smoke preset's per-algorithm budgets: a few hundred steps, seconds per cell
TINY_GRID = ["--preset", "smoke", "--algorithms", "famo2o", "off2on", "--seeds", "2"]


def test_dry_run_prints_the_commands(minari_root, tmp_path):
    proc = run_cli("benchmark/run.py", *TINY_GRID, "--out", str(tmp_path), "--dry-run", minari_root=minari_root)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and len(lines) == 4
    assert all("--dataset-id o2o/pendulum/medium-replay-v0" in ln and "--online-steps 400" in ln for ln in lines)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("launcher", ["local", "ray"])
def test_tiny_grid(minari_root, tmp_path, launcher):
    out = tmp_path / launcher
    # two datasets: the cells on the missing one fail (exit 1 overall), the others finish
    grid = [*TINY_GRID, "--out", str(out), "--launcher", launcher, "--datasets", "o2o/pendulum/medium-replay-v0",
            "test/pendulum/missing-v0"]  # fmt: skip
    # a hang guard, not a speed limit: a busy machine can stretch this grid to many minutes
    proc = run_cli("benchmark/run.py", *grid, minari_root=minari_root, timeout=1800)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "FAILED: famo2o test/pendulum/missing-v0 seed 1" in proc.stderr
    assert "is not on the local disk" in proc.stderr  # the failing cell's log is shown
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["label"] for r in rows} == {"famo2o", "off2on"}
    for r in rows:
        run_dir = out / "runs" / r["label"] / "o2o_pendulum_medium-replay-v0" / f"seed{r['seed']}"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert float(r["offline_final"]) == pytest.approx(summary["offline"]["final_score"])
        assert float(r["online_best"]) == pytest.approx(summary["online"]["best_score"])
    table = (out / "results.md").read_text()
    assert "| famo2o | o2o/pendulum/medium-replay-v0 | 2 |" in table
    assert (out / "curves_o2o_pendulum_medium-replay-v0.png").stat().st_size > 10_000

    # a second call resumes: the finished cells are skipped, only the failing ones run again
    again = run_cli("benchmark/run.py", *grid, minari_root=minari_root, timeout=1800)
    assert "8 cells, 4 already done, 4 to run" in again.stdout


def test_bad_arguments(minari_root, tmp_path):
    proc = run_cli("benchmark/run.py", "--algorithms", "dqn", "--out", str(tmp_path), minari_root=minari_root)
    assert proc.returncode == 2 and "unknown algorithms ['dqn']" in proc.stderr


def test_presets_cover_the_papers_claims():
    cells = run.build_grid(run.Args(preset="ablations", seeds=1))
    labels = {c.label for c in cells}
    assert {
        "off2on[balanced]",
        "off2on[uniform]",
        "off2on[online-only]",
        "famo2o[iql-fixed]",
        "famo2o[awac-adaptive]",
        "uni_o4[ope-gated]",
        "uni_o4[bc-only]",
    } <= labels
    mujoco = run.build_grid(run.Args(preset="mujoco-local", seeds=1, algorithms=["off2on"]))
    assert len(mujoco) == 9 and all(c.dataset.startswith("o2o/") for c in mujoco)
    remote = run.build_grid(run.Args(preset="minari-remote", seeds=1, algorithms=["off2on"]))
    assert all("--download" in c.flags for c in remote)
    assert sys.executable == run.Cell("off2on", "off2on", "d", 1).command(ROOT)[0]
