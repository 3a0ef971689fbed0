"""The benchmark runner on a tiny grid: two algorithms × one dataset × two seeds, a few hundred steps,
through the local process pool and through Ray; tables and plots agree with each run's summary.json,
finished cells are skipped on a second call, and a failing cell is reported without stopping the rest."""

import csv
import json
import sys
from pathlib import Path

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


def test_tiny_grid(minari_root, tmp_path):
    out, launcher = tmp_path / "local", "local"
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
    # the end of a grid run writes the report: the tables, the curves, where each cell ran; no notes.md, no analysis
    report = (out / "README.md").read_text()
    assert table.strip() in report and "](curves_o2o_pendulum_medium-replay-v0.png)" in report
    machine = json.loads(
        (out / "runs" / "famo2o" / "o2o_pendulum_medium-replay-v0" / "seed1" / "machine.json").read_text()
    )
    assert machine["threads"] == 1 and f"{machine['cpu']}, {machine['cores']} cores" in report
    assert "## Analysis" not in report
    assert (out / "curves_o2o_pendulum_medium-replay-v0.png").exists()
    # the plotted points are the seeds' mean of the evaluations in summary.json, online curves start at step 0
    with open(out / "curves.csv") as f:
        points = [p for p in csv.DictReader(f) if p["dataset"] == "o2o/pendulum/medium-replay-v0"]
    for label in ("famo2o", "off2on"):
        summaries = [json.loads((out / "runs" / label / "o2o_pendulum_medium-replay-v0" / f"seed{s}" /
                                 "summary.json").read_text()) for s in (1, 2)]  # fmt: skip
        for phase in ("offline", "online"):
            plotted = [
                (int(p["step"]), float(p["mean"])) for p in points if p["label"] == label and p["phase"] == phase
            ]
            evals = [[e for e in s["evaluations"] if e["phase"] == phase] for s in summaries]
            expected = [(e0["step"], (e0["normalized_score"] + e1["normalized_score"]) / 2) for e0, e1 in zip(*evals)]
            assert [x for x, _ in plotted] == [x for x, _ in expected] and len(plotted) >= (
                2 if phase == "online" else 1
            )
            assert [y for _, y in plotted] == pytest.approx([y for _, y in expected])
        assert plotted[0][0] == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/*/summary.json")}

    # a second call resumes: the finished cells are skipped (their files untouched), only the failing ones run again
    again = run_cli("benchmark/run.py", *grid, minari_root=minari_root, timeout=1800)
    assert "8 cells, 4 already done, 4 to run" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/*/summary.json")} == stamps and len(stamps) == 4


def test_ray_grid_with_a_shared_offline_cell(minari_root, tmp_path):
    """One call through Ray: mujoco-cpu's Off2On arms on pendulum at a tiny budget; the replay arms load the offline
    cell's checkpoint, and each reports that cell's offline score."""
    tiny = (  # --ensemble-size 2 for speed; the single-CQL arm's own --ensemble-size 1 comes after it and wins
        "--offline-steps 50 --online-steps 200 --ensemble-size 2 --hidden-dim 32 --batch-size 32 --cql-n-actions 2 "
        "--epoch-env-steps 100 --epoch-grad-steps 50 --first-epoch-multiplier 1 --eval-freq 100 --eval-episodes 2"
    )
    out, dataset = tmp_path / "ray", "o2o/pendulum/medium-replay-v0"
    grid = ["--preset", "mujoco-cpu", "--algorithms", "off2on", "--datasets", dataset, "--seeds", "1",
            "--launcher", "ray", "--workers", "2", f"--extra-flags={tiny}", "--out", str(out)]  # fmt: skip
    proc = run_cli("benchmark/run.py", *grid, minari_root=minari_root, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def summary(label):
        return json.loads(
            (out / "runs" / label / "o2o_pendulum_medium-replay-v0" / "seed1" / "summary.json").read_text()
        )

    with open(out / "runs.csv") as f:
        rows = {r["label"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"off2on[offline]", "off2on[balanced]", "off2on[uniform]", "off2on[online-only]",
                         "off2on[single-cql]"}  # fmt: skip
    assert rows["off2on[offline]"]["online_final"] == ""  # the shared offline cell: offline columns only
    offline = summary("off2on[offline]")
    for label in ("off2on[balanced]", "off2on[uniform]", "off2on[online-only]"):
        loaded = summary(label)["args"]["load_offline"]
        assert loaded.endswith("off2on[offline]/o2o_pendulum_medium-replay-v0/seed1/offline.pt")
        assert float(rows[label]["offline_final"]) == pytest.approx(offline["offline"]["final_score"])
    assert summary("off2on[single-cql]")["args"]["ensemble_size"] == 1  # the arm's flag beats --extra-flags
    assert "| off2on[balanced] | off2on[uniform] | online_final |" in (out / "results.md").read_text()
    with open(out / "curves.csv") as f:
        plotted = {(p["phase"], p["label"]) for p in csv.DictReader(f)}
    # the shared offline phase is drawn once; the arms that loaded it only online
    assert {label for phase, label in plotted if phase == "offline"} == {"off2on[offline]", "off2on[single-cql]"}
    assert {label for phase, label in plotted if phase == "online"} == set(rows) - {"off2on[offline]"}


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


# ---- mujoco-cpu: shared offline checkpoints, ordering, statistics ----
def test_cpu_grid_shares_one_offline_phase_per_dataset_and_seed():
    cells = run.build_grid(run.Args(preset="mujoco-cpu"))
    hopper = [c for c in cells if c.dataset == "o2o/hopper/medium-replay-v0"]
    assert {c.seed for c in hopper} == {1, 2, 3}
    assert {c.seed for c in cells if c.dataset == "o2o/halfcheetah/medium-replay-v0"} == {1, 2}
    for c in cells:
        cmd = " ".join(c.command(ROOT))
        if c.label == "off2on[offline]":
            assert cmd.endswith("--online-steps 0 --save-model") and c.load_from is None
        elif c.label in ("off2on[balanced]", "off2on[uniform]", "off2on[online-only]"):
            parent = c.load_from
            assert (parent.label, parent.dataset, parent.seed) == ("off2on[offline]", c.dataset, c.seed)
            assert cmd.endswith(f"--load-offline {parent.run_dir(ROOT) / run.OFFLINE_CHECKPOINT}")
            assert cells.index(parent) < cells.index(c)  # the offline cell is queued first
        else:
            assert c.load_from is None and "--load-offline" not in cmd
    # the arms of each claim are one flag apart and on the same budget
    single = next(c for c in hopper if c.label == "off2on[single-cql]")
    assert "--ensemble-size 1 --replay uniform" in " ".join(single.flags)
    assert {(claim, base) for claim, base in run.CLAIMS} >= {("famo2o[adaptive]", "famo2o[fixed]")}
    ablations = run.build_grid(run.Args(preset="ablations", seeds=1))
    assert {c.label for c in cells + ablations} >= {x for pair in run.CLAIMS for x in pair}
    # --extra-flags cannot undo a cell's role: the offline cell stays offline-only
    extra = run.build_grid(run.Args(preset="mujoco-cpu", algorithms=["off2on"], extra_flags="--online-steps 7"))
    assert next(c for c in extra if c.label == "off2on[offline]").flags[-2:] == ("0", "--save-model")


def _fake_cells(out):
    parent = run.Cell("off2on", "off2on[offline]", "d", 1)
    kids = [run.Cell("off2on", f"off2on[{k}]", "d", 1, (), parent) for k in ("a", "b")]
    return [parent, *kids, run.Cell("famo2o", "famo2o", "d", 1)]


def test_launch_starts_a_loading_cell_only_after_its_offline_cell(tmp_path):
    started, ended = [], []

    def fake_run(cmd, run_dir, log_file, threads):
        started.append(run_dir)
        if "--load-offline" in cmd:  # the checkpoint it loads must exist by now
            assert Path(cmd[cmd.index("--load-offline") + 1]).exists()
        Path(run_dir).mkdir(parents=True)
        (Path(run_dir) / run.OFFLINE_CHECKPOINT).write_text("ckpt")
        ended.append(run_dir)
        return 0, 0.0

    cells = _fake_cells(tmp_path)
    args = run.Args(preset="mujoco-cpu", workers=2)
    assert run.launch(cells, args, tmp_path, run=fake_run) == []
    assert sorted(started) == sorted(str(c.run_dir(tmp_path)) for c in cells)
    parent_done = ended.index(str(cells[0].run_dir(tmp_path)))
    for kid in cells[1:3]:
        assert started.index(str(kid.run_dir(tmp_path))) > parent_done


def test_launch_skips_the_cells_of_a_failed_offline_cell(tmp_path, capsys):
    ran = []

    def fake_run(cmd, run_dir, log_file, threads):
        ran.append(run_dir)
        return (1 if "offline" in run_dir else 0), 0.0

    cells = _fake_cells(tmp_path)
    failures = run.launch(cells, run.Args(preset="mujoco-cpu", workers=1), tmp_path, run=fake_run)
    assert {c.label for c, _ in failures} == {"off2on[offline]", "off2on[a]", "off2on[b]"}
    assert len(ran) == 2  # the offline cell and famo2o; the two loading cells never started
    assert "its offline cell off2on[offline] failed" in capsys.readouterr().out
    assert "not run" in run.log_path(cells[1], tmp_path).read_text()


def test_resume_reruns_an_offline_cell_whose_checkpoint_is_gone(tmp_path):
    cells = _fake_cells(tmp_path)
    parent, kid_a = cells[0], cells[1]
    for c in (parent, kid_a):
        c.run_dir(tmp_path).mkdir(parents=True)
        (c.run_dir(tmp_path) / "summary.json").write_text("{}")
    todo = run.unfinished(cells, tmp_path)  # a fresh clone: results committed, checkpoint not
    assert parent in todo and kid_a not in todo and cells[2] in todo
    (parent.run_dir(tmp_path) / run.OFFLINE_CHECKPOINT).write_text("ckpt")
    assert parent not in run.unfinished(cells, tmp_path)


def _summary(online, offline=(0.0,)):
    evals = [dict(phase="offline", step=1000 * (i + 1), normalized_score=v, mean_return=v) for i, v in
             enumerate(offline)] + [dict(phase="online", step=s, normalized_score=v, mean_return=v) for s, v in
                                    online]  # fmt: skip
    return dict(evaluations=evals)


def test_online_auc_is_the_time_averaged_score():
    # 0 → 10 over the first 1000 steps, then 10 until 3000: area 5000 + 20000 over 3000 steps
    assert run.online_auc(_summary([(0, 0.0), (1000, 10.0), (3000, 10.0)])) == pytest.approx(25000 / 3000)
    assert run.online_auc(_summary([])) is None


def test_iqm_ci_and_claim_verdicts():
    m, lo, hi = run.iqm_ci([10.0, 11.0, 12.0, 13.0])
    assert m == pytest.approx(11.5) and lo < m < hi and 10.0 <= lo and hi <= 13.0
    assert run.iqm_ci([5.0, 5.0, 5.0]) == (5.0, 5.0, 5.0)

    def rows(label, values, metric="online_final"):
        return [{"label": label, "dataset": "d", "seed": i, **dict.fromkeys(run.CLAIM_METRICS), metric: v}
                for i, v in enumerate(values)]  # fmt: skip

    verdicts = run.claim_verdicts(rows("famo2o[adaptive]", [50, 52, 54]) + rows("famo2o[fixed]", [10, 12, 14]))
    assert [(v["metric"], v["verdict"]) for v in verdicts] == [("online_final", "holds")]
    overlap = run.claim_verdicts(rows("famo2o[adaptive]", [10, 30, 50]) + rows("famo2o[fixed]", [20, 30, 40]))
    assert overlap[0]["verdict"] == "inconclusive"
    reversed_ = run.claim_verdicts(rows("uni_o4[ope-gated]", [1, 2, 3]) + rows("uni_o4[bc-only]", [7, 8, 9]))
    assert reversed_[0]["verdict"] == "reversed"
    # two standing-still policies: point-like intervals that separate by 0.02 are no effect
    tiny = run.claim_verdicts(rows("uni_o4[ope-gated]", [2.23, 2.23]) + rows("uni_o4[bc-only]", [2.21, 2.21]))
    assert tiny[0]["verdict"] == "negligible"
    single = run.claim_verdicts(rows("uni_o4[ope-gated]", [1]) + rows("uni_o4[bc-only]", [9, 8]))
    assert single[0]["verdict"] == "needs ≥ 2 seeds"


def test_a_half_finished_cell_restarts_clean(tmp_path):
    run_dir = tmp_path / "runs" / "famo2o" / "d" / "seed1"
    run_dir.mkdir(parents=True)
    (run_dir / "events.out.tfevents.stale").write_text("from an interrupted attempt")
    show = "import os, sys; d = sys.argv[1]; print(sorted(os.listdir(d)) if os.path.exists(d) else 'clean')"
    cmd = [sys.executable, "-c", show, str(run_dir)]
    code, _ = run.run_cell(cmd, str(run_dir), str(tmp_path / "logs" / "x.log"), threads=1)
    assert code == 0 and (tmp_path / "logs" / "x.log").read_text().strip() == "clean"


def test_missing_local_datasets_are_built_and_a_failed_build_is_reported(monkeypatch):
    built = []
    monkeypatch.setattr(run.make_datasets, "main", lambda a: built.append((a.envs, a.qualities)) or 0)
    monkeypatch.setattr("minari.list_local_datasets", lambda: {"o2o/hopper/medium-v0": None})
    run.ensure_local_datasets(["o2o/hopper/medium-v0", "o2o/hopper/medium-replay-v0", "mujoco/hopper/expert-v0"])
    assert built == [(["hopper"], ["medium-replay"])]  # only the missing local one; remote ids are not built
    monkeypatch.setattr(run.make_datasets, "main", lambda a: 1)
    with pytest.raises(SystemExit, match="could not build o2o/hopper/medium-replay-v0"):
        run.ensure_local_datasets(["o2o/hopper/medium-replay-v0"])


def test_report_only_runs_nothing(minari_root, tmp_path):
    proc = run_cli("benchmark/run.py", *TINY_GRID, "--out", str(tmp_path), "--report-only", minari_root=minari_root)
    assert proc.returncode == 0 and "0 of 4 cells finished" in proc.stdout and not (tmp_path / "runs").exists()


def test_full_mujoco_grid_uses_each_files_paper_config(minari_root, tmp_path):
    import importlib

    proc = run_cli("benchmark/run.py", "--preset", "mujoco-local", "--full", "--seeds", "1", "--out", str(tmp_path),
                   "--dry-run", minari_root=minari_root)  # fmt: skip
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and len(lines) == 27
    for line in lines:
        script, config, *rest = line.split()[1:]
        env, quality = rest[rest.index("--dataset-id") + 1].split("/")[1:]
        assert config == f"paper-{env}-{quality.removesuffix('-v0')}" and "--offline-steps" not in rest
        # the config exists in that file, and names the same dataset
        module = importlib.import_module(Path(script).stem)
        assert module.PAPER_CONFIGS[config]["dataset_id"] == f"o2o/{env}/{quality}"
    cpu = run.build_grid(run.Args(preset="mujoco-local", seeds=1))  # without --full: the CPU budgets, no config
    assert all(c.config is None and "--offline-steps" in c.flags for c in cpu)


def test_launch_skips_a_cell_another_runner_finished(tmp_path):
    cells = _fake_cells(tmp_path)
    other = cells[3]  # famo2o: finished by another call of the runner after this one listed its work
    other.run_dir(tmp_path).mkdir(parents=True)
    (other.run_dir(tmp_path) / "summary.json").write_text("{}")
    ran = []

    def fake_run(cmd, run_dir, log_file, threads):
        ran.append(run_dir)
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / run.OFFLINE_CHECKPOINT).write_text("ckpt")
        return 0, 0.0

    assert run.launch(cells, run.Args(preset="mujoco-cpu", workers=1), tmp_path, run=fake_run) == []
    assert str(other.run_dir(tmp_path)) not in ran and len(ran) == 3


def test_curves_of_a_grid_in_progress_draw_only_algorithms_with_results(tmp_path, monkeypatch):
    """Cells of off2on defined but not run: the figure gets famo2o's column only, not empty off2on panels."""
    import matplotlib.pyplot as plt

    cells = _fake_cells(tmp_path)
    famo2o = cells[-1]
    famo2o.run_dir(tmp_path).mkdir(parents=True)
    evaluations = [dict(phase=p, step=s, normalized_score=v, mean_return=v) for p, s, v in
                   [("offline", 10, 1.0), ("online", 0, 1.0), ("online", 10, 2.0)]]  # fmt: skip
    (famo2o.run_dir(tmp_path) / "summary.json").write_text(json.dumps(dict(evaluations=evaluations)))
    columns, subplots = [], plt.subplots
    monkeypatch.setattr(plt, "subplots", lambda rows, cols, **kw: columns.append(cols) or subplots(rows, cols, **kw))
    assert len(run.plot_curves(cells, tmp_path)) == 1
    assert columns == [1]
    with open(tmp_path / "curves.csv") as f:
        assert {p["label"] for p in csv.DictReader(f)} == {"famo2o"}


# ---- the preset's report: benchmark/results/<preset>/README.md ----
def _finished_cell(cell, out, score, args=None):
    """A summary.json as the files write it (offline and online evaluations), without running the file."""
    evaluations = [dict(phase="offline", step=100, normalized_score=score, mean_return=score),
                   dict(phase="online", step=0, normalized_score=score, mean_return=score),
                   dict(phase="online", step=100, normalized_score=score + 1, mean_return=score + 1)]  # fmt: skip
    phases = {
        p: dict(final_score=score + (p == "online"), best_score=score + (p == "online")) for p in ("offline", "online")
    }
    cell.run_dir(out).mkdir(parents=True)
    summary = dict(args=args or {}, wall_time=60.0, evaluations=evaluations, online_env_steps=100, **phases)
    (cell.run_dir(out) / "summary.json").write_text(json.dumps(summary))


def test_report_holds_the_grid_the_tables_and_the_notes_verbatim(tmp_path):
    args = run.Args(preset="smoke", algorithms=["famo2o"], seeds=2, out=str(tmp_path), report_only=True)
    cells = run.build_grid(args)
    for c in cells:
        _finished_cell(c, tmp_path, 40.0 + c.seed)
    notes = "A hand-written analysis: *old data*.\n\n- with a list, `code` and a [link](../x.md)\n"
    (tmp_path / "notes.md").write_text(notes)
    assert run.main(args) == 0
    report = (tmp_path / "README.md").read_text()
    assert report.startswith("# Benchmark report: `smoke`")
    assert "> A hand-written analysis: *old data*." in report.split("## The grid")[0]  # its first paragraph up front
    # the grid: its command, datasets and seeds, each arm's flags
    assert f"python benchmark/run.py --preset smoke --algorithms famo2o --seeds 2 --out {tmp_path}" in report
    assert "`o2o/pendulum/medium-replay-v0` (seeds 1–2)" in report
    assert f"| famo2o | `algorithms/famo2o.py` | `{run.SMOKE_BUDGET['famo2o']}` |" in report
    # the tables as results.md holds them, the curves by a relative link, the diagnostics, then the notes verbatim
    results = (tmp_path / "results.md").read_text()
    assert "| famo2o | o2o/pendulum/medium-replay-v0 | 2 | 41.5 ± 0.5 |" in results and results.strip() in report
    assert "![curves_o2o_pendulum_medium-replay-v0](curves_o2o_pendulum_medium-replay-v0.png)" in report
    assert "## Diagnostics" in report
    assert report.endswith("## Analysis\n\nHand-written, from `notes.md` beside this file:\n\n" + notes)
    assert "Machine: not recorded" in report  # no machine.json: these cells were not run by the runner
    assert (tmp_path / "notes.md").read_text() == notes  # the runner never writes notes.md

    (tmp_path / "notes.md").unlink()
    assert run.main(args) == 0
    report = (tmp_path / "README.md").read_text()
    assert results.strip() in report and "## Analysis" not in report and "hand-written" not in report.lower()
    assert not (tmp_path / "notes.md").exists()


def test_report_reads_args_by_their_old_names_and_flags_a_changed_budget(tmp_path):
    """Summaries written before the issue-26 renames keep `q_lr`, `pi_lr`, ...: the report reads them all the same."""
    off2on = run.Cell("off2on", "off2on", "d", 1, ("--critic-lr", "3e-4", "--offline-steps", "100", "--no-compile"))
    uni_o4 = run.Cell("uni_o4", "uni_o4", "d", 1, ("--offline-actor-lr", "1e-4", "--online-critic-lr", "1e-3"))
    _finished_cell(off2on, tmp_path, 1.0, args=dict(q_lr=3e-4, offline_steps=200, compile=False))
    _finished_cell(uni_o4, tmp_path, 1.0, args=dict(pi_lr=1e-4, lr_critic=1e-3))
    assert run.recorded_arg("off2on", {"q_lr": 0.1}, "critic_lr") == 0.1
    assert run.recorded_arg("famo2o", {"critic_lr": 0.2}, "critic_lr") == 0.2
    assert run.flag_mismatches([off2on, uni_o4], tmp_path) == ["off2on d seed 1: `offline_steps` ran with 200, now 100"]
    _finished_cell(run.Cell("uni_o4", "uni_o4", "d", 2, uni_o4.flags), tmp_path, 1.0, args=dict(lr_critic=3e-3))
    assert run.flag_mismatches([run.Cell("uni_o4", "uni_o4", "d", 2, uni_o4.flags)], tmp_path) == [
        "uni_o4 d seed 2: `online_critic_lr` ran with 0.003, now 1e-3"
    ]
