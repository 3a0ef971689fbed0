"""Benchmark runner: algorithms × datasets × seeds, launched exactly as a user would run the scripts.

    python benchmark/run.py --preset quickstart                 # ~10 min on 2 CPU cores
    python benchmark/run.py --preset ablations --seeds 4 --workers 2
    python benchmark/run.py --preset mujoco-local --full --launcher ray --ray-address auto
    python benchmark/run.py --preset quickstart --dry-run       # print the commands only

Each cell runs `python algorithms/<algo>.py --dataset-id D --seed S --run-dir DIR <flags>` in its own process,
with OMP/MKL threads limited to `--threads` so parallel workers do not oversubscribe the cores. A cell whose
run directory already holds summary.json is skipped, so an interrupted grid resumes where it stopped; a failed
cell is reported with its log and does not stop the others. At the end, the results of every finished cell are
turned into tables (`results.md`, `results.csv`, `runs.csv`) and learning-curve plots (`curves_*.png`, read from
the TensorBoard event files) in `--out`.

`--launcher ray` runs each cell as a Ray task (`--ray-address` for an existing cluster, else a local Ray
instance). On a cluster, the repository, the datasets (MINARI_DATASETS_PATH) and `--out` must be reachable at the
same paths on every node (a shared filesystem), as for any launcher that runs scripts in place.
"""

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmark"))

import make_datasets  # noqa: E402

ALGORITHMS = ("uni_o4", "off2on", "famo2o")


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    algo: str
    label: str  # the row name in tables: the algorithm plus its variant
    dataset: str
    seed: int
    flags: tuple[str, ...] = ()

    def run_dir(self, out: Path) -> Path:
        return out / "runs" / self.label / self.dataset.replace("/", "_") / f"seed{self.seed}"

    def command(self, out: Path) -> list[str]:
        return [
            sys.executable,
            str(ROOT / "algorithms" / f"{self.algo}.py"),
            "--dataset-id",
            self.dataset,
            "--seed",
            str(self.seed),
            "--run-dir",
            str(self.run_dir(out)),
            *self.flags,
        ]


# ---------------------------------------------------------------------------------------------
# Presets: per-algorithm budget flags, datasets, variants. Each is documented in the README.
# ---------------------------------------------------------------------------------------------
# Budgets per algorithm and preset. Pendulum budgets are CPU-sized and, for Uni-O4 and Off2On, also shrink the
# networks/ensembles (the files' defaults are the papers'; at those sizes Off2On's offline CQL step takes ~1 s and
# Uni-O4's 1024-wide Q ~0.4 s on one CPU thread). Each budget was calibrated by the algorithm's learning test.
SMOKE_BUDGET = {  # seconds per cell: does everything run?
    "uni_o4": (
        "--value-steps 200 --bc-steps 100 --offline-steps 50 --online-steps 512 --num-steps 256 "
        "--q-hidden-dim 64 --v-hidden-dim 64 --bc-hidden-dim 64 --dyn-hidden-dim 32 --dyn-max-epochs 3 "
        "--ope-freq 25 --ope-num-states 16 --ope-horizon 10 --eval-freq 256 --eval-episodes 2"
    ),
    "off2on": (
        "--offline-steps 100 --online-steps 400 --ensemble-size 2 --batch-size 64 --cql-n-actions 2 "
        "--epoch-env-steps 200 --epoch-grad-steps 200 --first-epoch-multiplier 1 --eval-freq 200 "
        "--eval-episodes 2"
    ),
    "famo2o": "--offline-steps 200 --online-steps 400 --eval-freq 200 --eval-episodes 2",
}
PENDULUM_BUDGET = {  # a few minutes per cell on one CPU thread
    "uni_o4": (
        "--value-steps 5000 --q-hidden-dim 128 --v-hidden-dim 128 --bc-hidden-dim 64 --dyn-hidden-dim 64 "
        "--dyn-max-epochs 20 --ope-num-states 64 --ope-horizon 30 --bc-steps 1000 --offline-steps 300 "
        "--online-steps 4096 --eval-freq 2048 --eval-episodes 5 --value-lr 1e-3 --bc-lr 1e-3 --gamma 0.95"
    ),
    "off2on": (
        "--ensemble-size 2 --batch-size 64 --cql-n-actions 2 --offline-steps 3000 --online-steps 3000 "
        "--first-epoch-multiplier 1 --eval-freq 1000 --eval-episodes 5"
    ),
    "famo2o": "--offline-steps 3000 --online-steps 2000 --eval-freq 1000 --eval-episodes 5",
}
# CPU-sized MuJoCo budgets (hours per cell on one CPU thread); --full gives the papers' budgets
MUJOCO_BUDGET = {
    "uni_o4": "--value-steps 50000 --bc-steps 20000 --offline-steps 1000 --online-steps 100000",
    "off2on": "--offline-steps 20000 --online-steps 50000",
    "famo2o": "--offline-steps 50000 --online-steps 50000",
}
MUJOCO_FULL_BUDGET = {
    "uni_o4": "--value-steps 2000000 --bc-steps 400000 --offline-steps 10000 --online-steps 1000000",
    "off2on": "--offline-steps 1000000 --online-steps 250000",
    "famo2o": "--offline-steps 1000000 --online-steps 1000000",
}
# the papers' central claims, each method beside its own baseline (same file, one flag apart)
ABLATIONS = {
    "off2on": {
        "balanced": "--replay balanced",
        "uniform": "--replay uniform",
        "online-only": "--replay online-only",
    },
    "famo2o": {
        "iql-adaptive": "--base iql --balance adaptive",
        "iql-fixed": "--base iql --balance fixed",
        "awac-adaptive": "--base awac --balance adaptive",
        "awac-fixed": "--base awac --balance fixed",
    },
    "uni_o4": {
        "ope-gated": "",
        "bc-only": "--offline-steps 0",
    },
}
MUJOCO_DATASETS = [
    f"o2o/{e}/{q}-v0"
    for e in ("hopper", "halfcheetah", "walker2d")
    for q in ("medium", "medium-replay", "medium-expert")
]
REMOTE_DATASETS = [f"mujoco/{e}/{q}-v0" for e in ("hopper", "halfcheetah", "walker2d") for q in ("medium", "expert")]


@dataclass
class Args:
    preset: Literal["quickstart", "ablations", "mujoco-local", "minari-remote", "smoke"] = "quickstart"
    """which grid to run (see the README for each preset's budget)"""
    algorithms: list[str] = field(default_factory=lambda: list(ALGORITHMS))
    """restrict the grid to these algorithm files"""
    datasets: Optional[list[str]] = None
    """override the preset's dataset ids"""
    seeds: int = 2
    """number of seeds per cell (seeds start_seed, start_seed+1, ...)"""
    start_seed: int = 1
    """first seed"""
    extra_flags: str = ""
    """flags appended to every command, as one string (e.g. --extra-flags="--eval-episodes 5")"""
    full: bool = False
    """mujoco-local / minari-remote: the papers' budgets instead of CPU-sized ones"""
    workers: int = 2
    """cells run at once"""
    threads: int = 1
    """OMP/MKL/torch threads per cell (workers × threads should not exceed the cores)"""
    launcher: Literal["local", "ray"] = "local"
    """local process pool, or one Ray task per cell"""
    ray_address: Optional[str] = None
    """address of an existing Ray cluster ('auto' to find one); default: start a local Ray instance"""
    out: Optional[str] = None
    """results directory (default benchmark/results/<preset>)"""
    dry_run: bool = False
    """print the commands and exit"""


def build_grid(args: Args) -> list[Cell]:
    seeds = range(args.start_seed, args.start_seed + args.seeds)
    algos = [a for a in ALGORITHMS if a in args.algorithms]
    variants: dict[str, dict[str, str]] = {a: {a: ""} for a in algos}
    if args.preset in ("quickstart", "smoke"):
        datasets = ["o2o/pendulum/medium-replay-v0"]
        budget = SMOKE_BUDGET if args.preset == "smoke" else PENDULUM_BUDGET
    elif args.preset == "ablations":
        datasets, budget = ["o2o/pendulum/medium-replay-v0"], PENDULUM_BUDGET
        variants = {a: {f"{a}[{name}]": flags for name, flags in ABLATIONS[a].items()} for a in algos}
    elif args.preset == "mujoco-local":
        datasets, budget = MUJOCO_DATASETS, MUJOCO_FULL_BUDGET if args.full else MUJOCO_BUDGET
    else:
        datasets, budget = REMOTE_DATASETS, MUJOCO_FULL_BUDGET if args.full else MUJOCO_BUDGET
    if args.preset == "minari-remote":
        budget = {a: flags + " --download" for a, flags in budget.items()}
    datasets = args.datasets or datasets
    return [
        Cell(a, label, d, s, tuple(shlex.split(f"{budget[a]} {vflags} {args.extra_flags}")))
        for a in algos
        for label, vflags in variants[a].items()
        for d in datasets
        for s in seeds
    ]


def ensure_local_datasets(datasets: list[str]):
    """Build any missing o2o/<env>/<quality>-v0 dataset with the local builder."""
    import minari

    local = minari.list_local_datasets()
    for d in sorted(set(datasets)):
        if d.startswith("o2o/") and d not in local:
            _, env, q = d.split("/")
            code = make_datasets.main(make_datasets.Args(envs=[env], qualities=[q.removesuffix("-v0")]))
            if code != 0:
                raise SystemExit(f"error: could not build {d}; see the message above")


def run_cell(cmd: list[str], run_dir: str, log_path: str, threads: int) -> tuple[int, float]:
    """Run one cell's command in a fresh process; returns (exit code, seconds). Also the Ray task body."""
    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished earlier attempt: start it again
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    t0 = time.time()
    with open(log_path, "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    return code, time.time() - t0


def launch(cells: list[Cell], args: Args, out: Path) -> list[tuple[Cell, str]]:
    """Run every cell; returns the failures as (cell, log path)."""
    jobs = [
        (c, str(c.run_dir(out)), str(out / "logs" / f"{c.label}__{c.dataset.replace('/', '_')}__{c.seed}.log"))
        for c in cells
    ]
    failures, done = [], 0

    def report(cell, log, code, secs):
        nonlocal done
        done += 1
        status = "ok" if code == 0 else f"FAILED (exit {code}, log {log})"
        print(
            f"[{done}/{len(jobs)}] {cell.label} {cell.dataset} seed {cell.seed}: {status} ({secs / 60:.1f} min)",
            flush=True,
        )
        if code != 0:
            failures.append((cell, log))

    if args.launcher == "ray":
        import ray

        ray.init(
            address=args.ray_address,
            include_dashboard=False,
            log_to_driver=False,
            **({} if args.ray_address else {"num_cpus": args.workers * args.threads}),
        )
        task = ray.remote(num_cpus=args.threads)(run_cell)
        pending = {task.remote(c.command(out), rd, log, args.threads): (c, log) for c, rd, log in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            cell, log = pending.pop(ready[0])
            report(cell, log, *ray.get(ready[0]))
        ray.shutdown()
    else:
        with ThreadPoolExecutor(args.workers) as pool:
            futures = {pool.submit(run_cell, c.command(out), rd, log, args.threads): (c, log) for c, rd, log in jobs}
            for f in as_completed(futures):
                report(*futures[f], *f.result())
    return failures


# ---------------------------------------------------------------------------------------------
# Results: tables and plots
# ---------------------------------------------------------------------------------------------
PHASE_KEYS = ("offline_final", "offline_best", "online_final", "online_best")


def load_results(cells: list[Cell], out: Path) -> list[dict]:
    """One row per finished cell, from its summary.json."""
    rows = []
    for c in cells:
        path = c.run_dir(out) / "summary.json"
        if not path.exists():
            continue
        s = json.loads(path.read_text())
        row = dict(label=c.label, dataset=c.dataset, seed=c.seed, wall_time_min=s["wall_time"] / 60)
        for phase in ("offline", "online"):
            p = s.get(phase) or {}
            row[f"{phase}_final"], row[f"{phase}_best"] = p.get("final_score"), p.get("best_score")
            row["metric"] = p.get("metric", row.get("metric"))
        row["gradient_steps"] = sum(v for k, v in s.items() if k.endswith("gradient_steps") and isinstance(v, int))
        row["env_steps"] = s.get("online_env_steps", 0)
        rows.append(row)
    return rows


def _mean_std(values) -> str:
    v = [x for x in values if x is not None]
    return "—" if not v else f"{np.mean(v):.1f} ± {np.std(v):.1f}"


def write_tables(rows: list[dict], out: Path, title: str) -> str:
    """results.md (mean ± std over seeds), results.csv (the same, numeric) and runs.csv (one row per run)."""
    if rows:
        with open(out / "runs.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["label"], r["dataset"]), []).append(r)
    md = [
        f"### {title}",
        "",
        "Normalized score ×100 (raw return where the dataset has no reference scores), mean ± std over seeds. "
        "*final* = last evaluation of the phase, *best* = best evaluation of the phase.",
        "",
        "| algorithm | dataset | seeds | offline final | offline best | online final | online best "
        "| wall time (min) | gradient steps | env steps |",
        "|" + "---|" * 10,
    ]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "algorithm",
                "dataset",
                "seeds",
                *[f"{k}_{s}" for k in PHASE_KEYS for s in ("mean", "std")],
                "wall_time_min",
                "gradient_steps",
                "env_steps",
            ]
        )
        for (label, dataset), g in sorted(groups.items()):
            stats = []
            for k in PHASE_KEYS:
                v = [r[k] for r in g if r[k] is not None]
                stats += [np.mean(v) if v else "", np.std(v) if v else ""]
            w.writerow(
                [
                    label,
                    dataset,
                    len(g),
                    *stats,
                    np.mean([r["wall_time_min"] for r in g]),
                    g[0]["gradient_steps"],
                    g[0]["env_steps"],
                ]
            )
            md.append(
                f"| {label} | {dataset} | {len(g)} | "
                + " | ".join(_mean_std(r[k] for r in g) for k in PHASE_KEYS)
                + f" | {np.mean([r['wall_time_min'] for r in g]):.1f} | {g[0]['gradient_steps']} "
                f"| {g[0]['env_steps']} |"
            )
    text = "\n".join(md) + "\n"
    (out / "results.md").write_text(text)
    return text


def read_curve(run_dir: Path, phase: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(steps, values) of the phase's evaluation curve from the TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    for tag in (f"{phase}/eval/normalized_score", f"{phase}/eval/episodic_return"):
        if tag in acc.Tags()["scalars"]:
            ev = acc.Scalars(tag)
            return np.array([e.step for e in ev]), np.array([e.value for e in ev])
    return None


def plot_curves(cells: list[Cell], out: Path) -> list[Path]:
    """One PNG per dataset: offline (x: gradient steps) and online (x: env steps) panels, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for dataset in sorted({c.dataset for c in cells}):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for label in sorted({c.label for c in cells if c.dataset == dataset}):
            for ax, phase in zip(axes, ("offline", "online")):
                curves = [
                    read_curve(c.run_dir(out), phase)
                    for c in cells
                    if c.label == label and c.dataset == dataset and (c.run_dir(out) / "summary.json").exists()
                ]
                curves = [cv for cv in curves if cv is not None and len(cv[0])]
                if not curves:
                    continue
                x = curves[0][0]
                ys = np.stack([np.interp(x, s, v) for s, v in curves])
                ax.plot(x, ys.mean(0), marker="o", markersize=3, label=label)
                ax.fill_between(x, ys.mean(0) - ys.std(0), ys.mean(0) + ys.std(0), alpha=0.2)
        axes[0].set(title="offline phase", xlabel="gradient steps", ylabel="normalized score (eval)")
        axes[1].set(title="online phase", xlabel="environment steps")
        axes[1].legend(fontsize=8)
        fig.suptitle(dataset)
        fig.tight_layout()
        path = out / f"curves_{dataset.replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(args: Args) -> int:
    bad = [a for a in args.algorithms if a not in ALGORITHMS]
    if bad or args.seeds < 1 or args.workers < 1 or args.threads < 1:
        print(
            f"error: unknown algorithms {bad} (choose from {list(ALGORITHMS)}), or --seeds/--workers/--threads below 1",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out or ROOT / "benchmark" / "results" / args.preset).resolve()
    cells = build_grid(args)
    todo = [c for c in cells if not (c.run_dir(out) / "summary.json").exists()]
    if args.dry_run:
        for c in cells:
            print(("(done) " if c not in todo else "") + " ".join(c.command(out)))
        return 0
    print(
        f"{args.preset}: {len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run "
        f"({args.launcher}, {args.workers} workers × {args.threads} threads) -> {out}",
        flush=True,
    )
    if args.preset != "minari-remote":
        ensure_local_datasets([c.dataset for c in todo])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    failures = launch(todo, args, out) if todo else []
    rows = load_results(cells, out)
    print(write_tables(rows, out, f"{args.preset} ({len(cells)} cells, {time.time() - t0:.0f}s this call)"))
    for p in plot_curves(cells, out):
        print(f"plot: {p}")
    for cell, log in failures:
        tail = Path(log).read_text().splitlines()[-15:]
        print(
            f"\nFAILED: {cell.label} {cell.dataset} seed {cell.seed} — {log}\n  " + "\n  ".join(tail), file=sys.stderr
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
