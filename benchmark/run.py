"""Benchmark runner: algorithms × datasets × seeds, launched exactly as a user would run the scripts.

    python benchmark/run.py --preset quickstart                 # ~10 min on 2 CPU cores
    python benchmark/run.py --preset ablations --seeds 4 --workers 2
    python benchmark/run.py --preset mujoco-local --full --launcher ray --ray-address auto
    python benchmark/run.py --preset quickstart --dry-run       # print the commands only

Each cell runs `python algorithms/<algo>.py --dataset-id D --seed S --run-dir DIR <flags>` in its own process,
with OMP/MKL threads limited to `--threads` so parallel workers do not oversubscribe the cores. A cell whose
run directory already holds summary.json is skipped, so an interrupted grid resumes where it stopped; a failed
cell is reported with its log and does not stop the others. At the end, the results of every finished cell are
turned into tables (`results.md`, `results.csv`, `runs.csv`, `diagnostics.md`) and learning-curve plots
(`curves_*.png`, read from each run's summary.json) in `--out`, and into the preset's report, `README.md` there:
the grid, the tables, the curves, the diagnostics, then the hand-written `notes.md` beside it verbatim, if any.
`--report-only` rewrites all of it from the finished cells without running anything.

`--launcher ray` runs each cell as a Ray task (`--ray-address` for an existing cluster, else a local Ray
instance). On a cluster, the repository, the datasets (MINARI_DATASETS_PATH) and `--out` must be reachable at the
same paths on every node (a shared filesystem), as for any launcher that runs scripts in place.
"""

import csv
import json
import os
import platform
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
OFFLINE_CHECKPOINT = "offline.pt"  # what each file's `--save-model` writes after offline and `--load-offline` reads
# flags renamed in the algorithm files (issue 26): summaries written before keep the old `args` names
ARG_RENAMES = {
    "off2on": {"critic_lr": "q_lr", "offline_actor_lr": "offline_policy_lr", "online_actor_lr": "policy_lr"},
    "uni_o4": {"offline_actor_lr": "pi_lr", "online_actor_lr": "lr_actor", "online_critic_lr": "lr_critic"},
}


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    algo: str
    label: str  # the row name in tables: the algorithm plus its variant
    dataset: str
    seed: int
    flags: tuple[str, ...] = ()
    load_from: Optional["Cell"] = None  # an offline-only cell whose saved offline phase this cell starts from
    config: Optional[str] = None  # a named config of the algorithm file (`paper-<env>-<quality>`), before the flags

    def run_dir(self, out: Path) -> Path:
        return out / "runs" / self.label / self.dataset.replace("/", "_") / f"seed{self.seed}"

    def command(self, out: Path) -> list[str]:
        load = ["--load-offline", str(self.load_from.run_dir(out) / OFFLINE_CHECKPOINT)] if self.load_from else []
        return [
            sys.executable,
            str(ROOT / "algorithms" / f"{self.algo}.py"),
            *([self.config] if self.config else []),
            "--dataset-id",
            self.dataset,
            "--seed",
            str(self.seed),
            "--run-dir",
            str(self.run_dir(out)),
            *self.flags,
            *load,
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
# mujoco-cpu: each paper's central claim beside its own baseline on locomotion, sized for a 2-core CPU machine
# (every cell ≤ 90 min on one thread). Seeds per dataset: the primary dataset gets 3, the secondary 2.
CPU_DATASETS = {"o2o/hopper/medium-replay-v0": 3, "o2o/halfcheetah/medium-replay-v0": 2}
# 10-episode evaluations, every 5k steps, and every 1k (Uni-O4: every 2048-step rollout) in the first 10k online
# env steps, where the start-of-fine-tuning dip is. Reductions from the papers' settings are listed in CPU_REDUCTIONS.
CPU_EVAL = "--eval-freq 5000 --eval-episodes 10 --early-eval-freq 1000 --early-eval-until 10000"
CPU_BUDGET = {
    "uni_o4": (
        "--value-steps 20000 --q-hidden-dim 256 --v-hidden-dim 256 --bc-steps 10000 --dyn-max-epochs 20 "
        "--offline-steps 300 --online-steps 100000 "
        "--eval-freq 5000 --eval-episodes 10 --early-eval-freq 2048 --early-eval-until 20480"
    ),
    "off2on": f"--offline-steps 5000 --cql-n-actions 4 --online-steps 25000 {CPU_EVAL}",
    "famo2o": f"--offline-steps 20000 --online-steps 25000 {CPU_EVAL}",
}
CPU_REDUCTIONS = {  # what CPU_BUDGET changes from each file's paper config, for the results table
    "uni_o4": "value steps 2M→20k, Q/V width 1024/512→256, BC steps 400k→10k per member, dynamics ≤ 20 epochs, "
    "improvement steps 10k→300, AM-Q horizon 1000→50 on 512→128 states, V re-fit 1M→2k steps, online 1M→100k env "
    "steps; the file's defaults elsewhere (the paper's Eq. 6 BC term, no per-dataset script settings)",
    "off2on": "offline 1M→5k steps per member (BC warm-up 40k→200), CQL actions 10→4 per source, online 250k→25k "
    "env steps",
    "famo2o": "offline 1M→20k steps, online 1M→25k env steps; per-sample weights (the paper's; the official code's "
    "batch_mean cannot adapt β)",
}
CPU_ARMS = {
    "off2on": {
        "balanced": "--replay balanced",
        "uniform": "--replay uniform",
        "online-only": "--replay online-only",
        "single-cql": "--ensemble-size 1 --replay uniform",  # the paper's plain baseline: one CQL agent, uniform replay
    },
    "famo2o": {"adaptive": "--base iql --balance adaptive", "fixed": "--base iql --balance fixed"},
    "uni_o4": {"ope-gated": "", "bc-only": "--offline-steps 0"},
}
# arms whose offline phase is identical: one offline-only cell per dataset × seed trains and saves it, they load it
SHARED_OFFLINE = {"off2on": ("balanced", "uniform", "online-only")}
# (claim, baseline) pairs the results compare: the paper says the first beats the second
CLAIMS = [  # mujoco-cpu's arms, then the ablations preset's names for the FamO2O and Uni-O4 pairs
    ("off2on[balanced]", "off2on[uniform]"),
    ("off2on[balanced]", "off2on[online-only]"),
    ("off2on[balanced]", "off2on[single-cql]"),
    ("famo2o[adaptive]", "famo2o[fixed]"),
    ("uni_o4[ope-gated]", "uni_o4[bc-only]"),
    ("famo2o[iql-adaptive]", "famo2o[iql-fixed]"),
    ("famo2o[awac-adaptive]", "famo2o[awac-fixed]"),
]
MUJOCO_DATASETS = [
    f"o2o/{e}/{q}-v0"
    for e in ("hopper", "halfcheetah", "walker2d")
    for q in ("medium", "medium-replay", "medium-expert")
]
REMOTE_DATASETS = [f"mujoco/{e}/{q}-v0" for e in ("hopper", "halfcheetah", "walker2d") for q in ("medium", "expert")]


@dataclass
class Args:
    preset: Literal["quickstart", "ablations", "mujoco-cpu", "mujoco-local", "minari-remote", "smoke"] = "quickstart"
    """which grid to run (see the README for each preset's budget)"""
    algorithms: list[str] = field(default_factory=lambda: list(ALGORITHMS))
    """restrict the grid to these algorithm files"""
    datasets: Optional[list[str]] = None
    """override the preset's dataset ids"""
    seeds: Optional[int] = None
    """number of seeds per cell (seeds start_seed, start_seed+1, ...); default 2, mujoco-cpu: 3 on hopper, 2 on
    halfcheetah"""
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
    report_only: bool = False
    """run nothing: rebuild the tables and plots from the cells that have finished (e.g. while another call of
    the runner is still working through the grid)"""


def build_grid(args: Args) -> list[Cell]:
    """The preset's cells, in the order they should start: dataset by dataset, seed by seed, so a grid stopped
    part-way holds every arm of the first seeds; offline-only cells come before the cells that load them."""
    if args.preset == "mujoco-cpu":
        return _cpu_grid(args)
    seeds = range(args.start_seed, args.start_seed + (args.seeds or 2))
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
    cells = []
    for a in algos:
        for label, vflags in variants[a].items():
            for d in datasets:
                # --full: each file's paper config for the dataset sets hyperparameters and budgets (the command's
                # --dataset-id still names the dataset); datasets without one fall back to MUJOCO_FULL_BUDGET
                config = paper_config(d) if args.full else None
                flags = (" --download" if args.preset == "minari-remote" else "") if config else budget[a]
                cells += [Cell(a, label, d, s, tuple(shlex.split(f"{flags} {vflags} {args.extra_flags}")), None, config)
                          for s in seeds]  # fmt: skip
    return cells


def paper_config(dataset: str) -> Optional[str]:
    """The algorithm files' named config for a D4RL locomotion dataset: o2o/<env>/<quality>-v0 (or Minari's remote
    mujoco/<env>/medium-v0) -> paper-<env>-<quality>; None where the papers report no such dataset."""
    parts = dataset.split("/")
    if len(parts) != 3 or parts[0] not in ("o2o", "mujoco") or parts[1] not in make_datasets.MUJOCO:
        return None
    quality = parts[2].removesuffix("-v0")
    return f"paper-{parts[1]}-{quality}" if quality in ("medium", "medium-replay", "medium-expert") else None


def _cpu_grid(args: Args) -> list[Cell]:
    """mujoco-cpu: CPU_ARMS on CPU_DATASETS; the SHARED_OFFLINE arms load one `<algo>[offline]` cell's checkpoint.
    Flags are budget, --extra-flags, then the arm's and the cell's role (offline-only / load), which --extra-flags
    cannot override (the last of a repeated flag wins)."""
    algos = sorted((a for a in ALGORITHMS if a in args.algorithms), key=lambda a: a not in SHARED_OFFLINE)
    datasets = {d: args.seeds or CPU_DATASETS.get(d, 2) for d in (args.datasets or CPU_DATASETS)}
    cells = []
    for d, n_seeds in datasets.items():
        for s in range(args.start_seed, args.start_seed + n_seeds):
            for a in algos:
                parent = None
                if a in SHARED_OFFLINE:
                    flags = f"{CPU_BUDGET[a]} {args.extra_flags} --online-steps 0 --save-model"
                    parent = Cell(a, f"{a}[offline]", d, s, tuple(shlex.split(flags)))
                    cells.append(parent)
                for arm, arm_flags in CPU_ARMS[a].items():
                    flags = tuple(shlex.split(f"{CPU_BUDGET[a]} {args.extra_flags} {arm_flags}"))
                    cells.append(
                        Cell(a, f"{a}[{arm}]", d, s, flags, parent if arm in SHARED_OFFLINE.get(a, ()) else None)
                    )
    return cells


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


def run_cell(cmd: list[str], run_dir: str, log_file: str, threads: int) -> tuple[int, float]:
    """Run one cell's command in a fresh process; returns (exit code, seconds). Also the Ray task body."""
    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished earlier attempt: start it again
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    t0 = time.time()
    with open(log_file, "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if os.path.isdir(run_dir):  # where the cell ran (on Ray: the node's), for the report
        Path(run_dir, "machine.json").write_text(json.dumps(dict(machine_info(), threads=threads), indent=2))
    return code, time.time() - t0


def machine_info() -> dict:
    """The CPU, core count and the versions that change a run's digits (torch, MuJoCo), without importing them."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for pkg in ("torch", "mujoco"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return dict(cpu=cpu, cores=os.cpu_count(), **versions)


def unfinished(cells: list[Cell], out: Path) -> list[Cell]:
    """Cells without a summary.json, plus any offline cell they load whose checkpoint is gone (checkpoints are not
    committed with the results, so a fresh clone re-runs the offline cell before its remaining dependents)."""
    todo = [c for c in cells if not (c.run_dir(out) / "summary.json").exists()]
    parents = {c.load_from for c in todo if c.load_from is not None}
    stale = {p for p in parents if not (p.run_dir(out) / OFFLINE_CHECKPOINT).exists()}
    return [c for c in cells if c in todo or c in stale]


def log_path(cell: Cell, out: Path) -> Path:
    return out / "logs" / f"{cell.label}__{cell.dataset.replace('/', '_')}__{cell.seed}.log"


def launch(cells: list[Cell], args: Args, out: Path, run=run_cell) -> list[tuple[Cell, str]]:
    """Run every cell, each as soon as a worker is free and the cell it loads (if any) has finished; returns the
    failures as (cell, log path). A cell whose parent failed is not run and counts as failed."""
    failures, done = [], 0
    waiting = list(cells)  # in build_grid's order
    finished: set[Cell] = set()
    parents = {c.load_from for c in cells if c.load_from is not None}

    def ready(c: Cell) -> bool:
        p = c.load_from
        return p is None or p in finished or (p not in cells and (p.run_dir(out) / "summary.json").exists())

    def report(cell: Cell, code: int, secs: float, note: str = ""):
        nonlocal done
        done += 1
        log = str(log_path(cell, out))
        status = "ok" if code == 0 else f"FAILED (exit {code}, log {log}){note}"
        print(
            f"[{done}/{len(cells)}] {cell.label} {cell.dataset} seed {cell.seed}: {status} ({secs / 60:.1f} min)",
            flush=True,
        )
        if code == 0:
            finished.add(cell)
        else:
            failures.append((cell, log))
            # the cells that load this one cannot run: report them failed now, with the reason
            for c in [c for c in waiting if c.load_from == cell]:
                waiting.remove(c)
                log_path(c, out).parent.mkdir(parents=True, exist_ok=True)
                log_path(c, out).write_text(f"not run: the offline cell it loads failed ({log})\n")
                report(c, 1, 0.0, f" — its offline cell {cell.label} failed")

    def next_ready() -> Optional[Cell]:
        while (c := next((c for c in waiting if ready(c)), None)) is not None:
            waiting.remove(c)
            if (c.run_dir(out) / "summary.json").exists() and (
                c not in parents or (c.run_dir(out) / OFFLINE_CHECKPOINT).exists()
            ):  # finished since this call started (another runner on the same --out): keep it
                print(f"{c.label} {c.dataset} seed {c.seed}: finished meanwhile, skipped", flush=True)
                finished.add(c)
                continue
            return c
        return None

    def job(c: Cell):
        return c.command(out), str(c.run_dir(out)), str(log_path(c, out)), args.threads

    if args.launcher == "ray":
        import ray

        ray.init(
            address=args.ray_address,
            include_dashboard=False,
            log_to_driver=False,
            **({} if args.ray_address else {"num_cpus": args.workers * args.threads}),
        )
        task = ray.remote(num_cpus=args.threads)(run)
        submit = lambda c: task.remote(*job(c))  # noqa: E731
        wait = lambda pending: ray.wait(list(pending), num_returns=1)[0][0]  # noqa: E731
        result = ray.get
        slots = len(cells)  # Ray queues tasks by their CPU request itself
    else:
        pool = ThreadPoolExecutor(args.workers)
        submit = lambda c: pool.submit(run, *job(c))  # noqa: E731
        wait = lambda pending: next(iter(as_completed(pending)))  # noqa: E731
        result = lambda f: f.result()  # noqa: E731
        slots = args.workers
    pending: dict = {}
    while waiting or pending:
        while len(pending) < slots and (c := next_ready()) is not None:
            pending[submit(c)] = c
        if not pending:  # only cells whose parent is neither here nor finished: cannot happen via build_grid
            for c in waiting:
                report(c, 1, 0.0, " — the offline cell it loads has not finished")
            break
        ref = wait(pending)
        report(pending.pop(ref), *result(ref))
    if args.launcher == "ray":
        ray.shutdown()
    else:
        pool.shutdown()
    return failures


# ---------------------------------------------------------------------------------------------
# Results: tables and plots
# ---------------------------------------------------------------------------------------------
PHASE_KEYS = ("offline_final", "offline_best", "online_final", "online_best")
CLAIM_METRICS = ("offline_final", "online_final", "online_auc")  # what each claim is judged on
# smallest IQM gap (normalized points) a verdict may call an effect: evaluations of near-deterministic policies give
# near-point intervals, so two policies that both stand still (2.23 vs 2.21) would otherwise separate
MIN_EFFECT = 1.0
OFFLINE_UNIT = {  # the x-axis of each file's offline curve
    "famo2o": "gradient steps",
    "off2on": "gradient steps (per member)",
    "uni_o4": "improvement steps (after values, BC, dynamics)",
}


def _phase_curve(summary: dict, phase: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, scores) of a phase's evaluations in summary.json: normalized score, else raw return."""
    ev = [e for e in summary["evaluations"] if e["phase"] == phase]
    key = "normalized_score" if ev and ev[-1]["normalized_score"] is not None else "mean_return"
    return np.array([e["step"] for e in ev], dtype=float), np.array([e[key] for e in ev], dtype=float)


def online_auc(summary: dict) -> Optional[float]:
    """Area under the online evaluation curve divided by its length in env steps: the score averaged over the
    online phase (trapezoids between evaluations), so a dip after the offline→online switch lowers it."""
    x, y = _phase_curve(summary, "online")
    if len(x) == 0:
        return None
    return float(y[0]) if len(x) == 1 else float(np.trapezoid(y, x) / (x[-1] - x[0]))


def _summary(cell: Cell, out: Path) -> Optional[dict]:
    path = cell.run_dir(out) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def load_results(cells: list[Cell], out: Path) -> list[dict]:
    """One row per finished cell, from its summary.json; a cell that loaded a saved offline phase reports the offline
    scores of the cell that trained it (whose own row has no online columns)."""
    rows = []
    for c in cells:
        s = _summary(c, out)
        if s is None:
            continue
        offline_from = _summary(c.load_from, out) if c.load_from else s
        row = dict(label=c.label, dataset=c.dataset, seed=c.seed, wall_time_min=s["wall_time"] / 60)
        for phase, src in (("offline", offline_from), ("online", s)):
            p = (src or {}).get(phase) or {}
            row[f"{phase}_final"], row[f"{phase}_best"] = p.get("final_score"), p.get("best_score")
        row["online_auc"] = online_auc(s)
        row["gradient_steps"] = sum(v for k, v in s.items() if k.endswith("gradient_steps") and isinstance(v, int))
        row["env_steps"] = s.get("online_env_steps", 0)
        rows.append(row)
    return rows


def iqm_ci(values: list[float], reps: int = 2000) -> tuple[float, float, float]:
    """Interquartile mean over seeds and its 95 % stratified-bootstrap confidence interval (rliable; one task, so
    stratified = over seeds). With fewer than 4 seeds the IQM trims nothing and equals the mean."""
    from rliable import library as rly
    from rliable import metrics

    scores = {"x": np.asarray(values, dtype=float)[:, None]}
    point, ci = rly.get_interval_estimates(
        scores, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps, random_state=np.random.RandomState(0)
    )
    return float(point["x"][0]), float(ci["x"][0, 0]), float(ci["x"][1, 0])


def _mean_std(values) -> str:
    v = [x for x in values if x is not None]
    return "—" if not v else f"{np.mean(v):.1f} ± {np.std(v):.1f}"


def _mean_std_g(values) -> str:  # diagnostics span orders of magnitude: 3 significant digits
    v = [x for x in values if x is not None]
    return "—" if not v else f"{np.mean(v):.3g} ± {np.std(v):.2g}"


def _iqm_str(values) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "—"
    m, lo, hi = iqm_ci(v)
    return f"{m:.1f} [{lo:.1f}, {hi:.1f}]"


def claim_verdicts(rows: list[dict]) -> list[dict]:
    """For each CLAIMS pair present on a dataset: the IQM and CI of both arms per metric, and whether the intervals
    separate (claim above baseline: 'holds'; below: 'reversed'; overlapping: 'inconclusive'; separate but IQMs
    closer than MIN_EFFECT: 'negligible'; no verdict from one seed per arm). A metric both arms share seed for seed
    (the same offline phase) is left out."""
    verdicts = []
    for dataset in sorted({r["dataset"] for r in rows}):
        by_label = {}
        for r in rows:
            if r["dataset"] == dataset:
                by_label.setdefault(r["label"], []).append(r)
        for claim, base in CLAIMS:
            if claim not in by_label or base not in by_label:
                continue
            for metric in CLAIM_METRICS:
                a = [r[metric] for r in by_label[claim] if r[metric] is not None]
                b = [r[metric] for r in by_label[base] if r[metric] is not None]
                if not a or not b or a == b:  # missing, or one shared phase (Off2On's arms load one offline cell)
                    continue
                (ma, la, ha), (mb, lb, hb) = iqm_ci(a), iqm_ci(b)
                verdict = "holds" if la > hb else "reversed" if ha < lb else "inconclusive"
                if verdict != "inconclusive" and abs(ma - mb) < MIN_EFFECT:
                    verdict = "negligible"
                if min(len(a), len(b)) < 2:  # one seed: the interval is a point, there is nothing to separate
                    verdict = "needs ≥ 2 seeds"
                verdicts.append(
                    dict(
                        dataset=dataset,
                        claim=claim,
                        baseline=base,
                        metric=metric,
                        seeds=(len(a), len(b)),
                        claim_iqm=(ma, la, ha),
                        baseline_iqm=(mb, lb, hb),
                        verdict=verdict,
                    )  # fmt: skip
                )
    return verdicts


def _flat_numbers(d: dict, prefix: str = "") -> dict[str, float]:
    """Scalar view of a summary's diagnostics: numbers as they are, lists of numbers by their last value."""
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flat_numbers(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[prefix + k] = float(v)
        elif isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            flat[f"{prefix}{k}[-1]"] = float(v[-1])
    return flat


def write_diagnostics(cells: list[Cell], out: Path) -> str:
    """diagnostics.md: each arm's summary.json["diagnostics"] (last values), mean ± std over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        s = _summary(c, out)
        if s and s.get("diagnostics"):
            groups.setdefault((c.label, c.dataset), []).append(_flat_numbers(s["diagnostics"]))
    md = ["### diagnostics", "", "Each run's `summary.json[\"diagnostics\"]`: numbers, and the last value of each "
          "list; mean ± std over seeds.", ""]  # fmt: skip
    for (label, dataset), g in sorted(groups.items()):
        keys = sorted({k for d in g for k in d})
        md += [f"**{label}** on `{dataset}` ({len(g)} seeds): "
               + "; ".join(f"{k} {_mean_std_g(d.get(k) for d in g)}" for k in keys), ""]  # fmt: skip
    text = "\n".join(md) + "\n"
    (out / "diagnostics.md").write_text(text)
    return text


def write_tables(rows: list[dict], out: Path, title: str, notes: Optional[dict[str, str]] = None) -> str:
    """results.md (mean ± std and IQM [95 % CI] over seeds, then the claims), results.csv (the same, numeric) and
    runs.csv (one row per run)."""
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
        "*final* = last evaluation of the phase, *best* = best evaluation of the phase, *online AUC* = the score "
        "averaged over the online phase (area under its evaluation curve / its env steps); IQM [95 % CI] = "
        "interquartile mean over seeds with a stratified-bootstrap interval (rliable, 2000 resamples).",
        "",
        "| algorithm | dataset | seeds | offline final | offline best | online final | online best | online AUC "
        "| online final IQM [95 % CI] | online AUC IQM [95 % CI] | wall time (min) | gradient steps | env steps |",
        "|" + "---|" * 13,
    ]
    numeric = (*PHASE_KEYS, "online_auc")
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "algorithm",
                "dataset",
                "seeds",
                *[f"{k}_{s}" for k in numeric for s in ("mean", "std")],
                "online_final_iqm",
                "online_final_ci_low",
                "online_final_ci_high",
                "wall_time_min",
                "gradient_steps",
                "env_steps",
            ]  # fmt: skip
        )
        for (label, dataset), g in sorted(groups.items()):
            stats = []
            for k in numeric:
                v = [r[k] for r in g if r[k] is not None]
                stats += [np.mean(v) if v else "", np.std(v) if v else ""]
            finals = [r["online_final"] for r in g if r["online_final"] is not None]
            iqm = list(iqm_ci(finals)) if finals else ["", "", ""]
            w.writerow(
                [
                    label,
                    dataset,
                    len(g),
                    *stats,
                    *iqm,
                    np.mean([r["wall_time_min"] for r in g]),
                    g[0]["gradient_steps"],
                    g[0]["env_steps"],
                ]  # fmt: skip
            )
            md.append(
                f"| {label} | {dataset} | {len(g)} | "
                + " | ".join(_mean_std(r[k] for r in g) for k in numeric)
                + f" | {_iqm_str(r['online_final'] for r in g)} | {_iqm_str(r['online_auc'] for r in g)}"
                + f" | {np.mean([r['wall_time_min'] for r in g]):.1f} | {g[0]['gradient_steps']} "
                f"| {g[0]['env_steps']} |"
            )
    if notes:
        md += ["", "**Reduced from the papers' settings** (same for every arm of a file):", ""]
        md += [f"- {algo}: {text}" for algo, text in notes.items()]
    verdicts = claim_verdicts(rows)
    if verdicts:
        md += [
            "",
            "**Claims** — each method beside its own baseline, IQM [95 % CI] over seeds; *holds* when the claim's "
            "interval lies above the baseline's, *reversed* when below, *inconclusive* when they overlap, "
            f"*negligible* when they separate but the IQMs are within {MIN_EFFECT:g} normalized point.",
            "",
            "| dataset | claim | baseline | metric | seeds | claim | baseline | verdict |",
            "|" + "---|" * 8,
        ]
        for v in verdicts:
            fmt = "{:.1f} [{:.1f}, {:.1f}]".format
            md.append(
                f"| {v['dataset']} | {v['claim']} | {v['baseline']} | {v['metric']} | {v['seeds'][0]} vs "
                f"{v['seeds'][1]} | {fmt(*v['claim_iqm'])} | {fmt(*v['baseline_iqm'])} | {v['verdict']} |"
            )
    text = "\n".join(md) + "\n"
    (out / "results.md").write_text(text)
    return text


def _data_score(dataset: str) -> Optional[float]:
    """The dataset's own normalized score (mean over episodes), for a reference line on the plots."""
    try:
        import minari

        return float(make_datasets.episode_scores(minari.load_dataset(dataset))[1].mean())
    except Exception:  # not local, or no reference scores: no line
        return None


def plot_curves(cells: list[Cell], out: Path) -> list[Path]:
    """One PNG per dataset: a column per algorithm, its offline curve on top (x: that file's offline unit) and its
    online curve below (x: env steps, starting at 0 with the score fine-tuning starts from); mean ± std over seeds,
    read from each run's summary.json. Arms that load a shared offline cell appear in the online panel only. The
    plotted points are also written to curves.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths, points = [], []
    finished = [c for c in cells if (c.run_dir(out) / "summary.json").exists()]
    for dataset in sorted({c.dataset for c in finished}):
        # a column per algorithm with a finished cell here, so a grid in progress draws no empty panels
        algos = [a for a in ALGORITHMS if any(c.algo == a and c.dataset == dataset for c in finished)]
        fig, axes = plt.subplots(2, len(algos), figsize=(4.5 * len(algos), 7), squeeze=False)
        data = _data_score(dataset)
        for col, algo in enumerate(algos):
            for row, phase in enumerate(("offline", "online")):
                ax = axes[row, col]
                for label in sorted({c.label for c in cells if c.dataset == dataset and c.algo == algo}):
                    runs = [c for c in cells if c.label == label and c.dataset == dataset]
                    if phase == "offline" and all(c.load_from is not None for c in runs):
                        continue  # its offline phase is the loaded cell's, drawn once under that cell's label
                    curves = [_phase_curve(s, phase) for s in (_summary(c, out) for c in runs) if s is not None]
                    curves = [cv for cv in curves if len(cv[0])]
                    if not curves:
                        continue
                    x = curves[0][0]
                    ys = np.stack([np.interp(x, sx, sy) for sx, sy in curves])
                    mean, std = ys.mean(0), ys.std(0)
                    ax.plot(x, mean, marker="o", markersize=3, label=f"{label} (n={len(curves)})")
                    ax.fill_between(x, mean - std, mean + std, alpha=0.2)
                    points += [
                        (dataset, phase, label, int(xi), mi, si, len(curves)) for xi, mi, si in zip(x, mean, std)
                    ]
                if data is not None:
                    ax.axhline(data, color="grey", linestyle="--", linewidth=1, label="data")
                ax.set(
                    title=f"{algo}: {phase}", xlabel=OFFLINE_UNIT[algo] if phase == "offline" else "environment steps"
                )
                if ax.has_data():
                    ax.legend(fontsize=7)
            axes[0, col].set_ylabel("normalized score (eval)")
            axes[1, col].set_ylabel("normalized score (eval)")
        fig.suptitle(dataset)
        fig.tight_layout()
        path = out / f"curves_{dataset.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    with open(out / "curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "phase", "label", "step", "mean", "std", "seeds"])
        w.writerows(points)
    return paths


# ---------------------------------------------------------------------------------------------
# The preset's report: README.md next to its results
# ---------------------------------------------------------------------------------------------
def grid_command(args: Args) -> str:
    """The runner call that runs (or, with its summaries in place, regenerates) this grid: the flags that shape it."""
    cmd = ["python", "benchmark/run.py", "--preset", args.preset]
    if sorted(args.algorithms) != sorted(ALGORITHMS):
        cmd += ["--algorithms", *args.algorithms]
    if args.datasets:
        cmd += ["--datasets", *args.datasets]
    if args.seeds is not None:
        cmd += ["--seeds", str(args.seeds)]
    if args.start_seed != 1:
        cmd += ["--start-seed", str(args.start_seed)]
    if args.extra_flags:
        cmd.append(f"--extra-flags={args.extra_flags}")
    if args.full:
        cmd.append("--full")
    if args.out:
        cmd += ["--out", args.out]
    return shlex.join(cmd)


def _flag_values(flags: tuple[str, ...]) -> dict[str, object]:
    """`--x-y 3 --flag --no-other` -> {x_y: '3', flag: True, other: False}; the last of a repeated flag wins."""
    values, i = {}, 0
    while i < len(flags):
        key = flags[i].removeprefix("--").replace("-", "_")
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            values[key], i = flags[i + 1], i + 2
        else:
            values[key.removeprefix("no_")], i = not key.startswith("no_"), i + 1
    return values


def _same(recorded, flag) -> bool:
    if isinstance(flag, bool) or isinstance(recorded, bool):
        return recorded == flag
    try:
        return float(recorded) == float(flag)
    except (TypeError, ValueError):
        return str(recorded) == str(flag)


def recorded_arg(algo: str, args: dict, name: str):
    """A flag's value in a summary's `args`, also from summaries written before the flag's rename (ARG_RENAMES)."""
    if name in args:
        return args[name]
    return args.get(ARG_RENAMES.get(algo, {}).get(name, name), KeyError)


def flag_mismatches(cells: list[Cell], out: Path) -> list[str]:
    """Finished cells whose recorded args differ from the flags this runner gives them now (a budget changed since)."""
    lines = []
    for c in cells:
        s = _summary(c, out)
        if s is None or "args" not in s:
            continue
        for name, value in _flag_values(c.flags).items():
            got = recorded_arg(c.algo, s["args"], name)
            if got is not KeyError and not _same(got, value):
                lines.append(f"{c.label} {c.dataset} seed {c.seed}: `{name}` ran with {got}, now {value}")
    return lines


def _range(seeds: list[int]) -> str:
    seeds = sorted(seeds)
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}–{seeds[-1]}"


def write_report(cells: list[Cell], args: Args, out: Path, results: str, diagnostics: str, plots: list[Path]) -> str:
    """README.md in the results directory: the grid (arms, datasets, seeds, flags, the command, where it ran), the
    tables and claims, the curves, the diagnostics, then `notes.md` verbatim when one is committed beside them (the
    hand-written analysis; the runner never writes it)."""
    finished = [c for c in cells if (c.run_dir(out) / "summary.json").exists()]
    summaries = {c: _summary(c, out) for c in finished}
    md = [
        f"# Benchmark report: `{args.preset}`",
        "",
        f"Written by `benchmark/run.py` from the runs' `summary.json` files; `{grid_command(args)} --report-only` "
        "rewrites it without training. Edit `notes.md` (the analysis at the end), not this file.",
        "",
    ]
    notes = out / "notes.md"
    notes_text = notes.read_text().rstrip() if notes.exists() else None
    if notes_text:  # its first paragraph up front (what to read the numbers with), the whole of it at the end
        lead = notes_text.split("\n\n", 1)[0]
        md += ["From the analysis at the end (`notes.md`):", "", *(f"> {ln}" for ln in lead.splitlines()), ""]
    md += [
        "## The grid",
        "",
        f"{len(cells)} cells, {len(finished)} finished. Regenerate the grid (finished cells are skipped):",
        "",
        "```bash",
        grid_command(args),
        "```",
        "",
    ]
    datasets: dict[str, list[int]] = {}
    for c in cells:
        datasets.setdefault(c.dataset, [])
        if c.seed not in datasets[c.dataset]:
            datasets[c.dataset].append(c.seed)
    md += ["Datasets: " + "; ".join(f"`{d}` ({_range(s)})" for d, s in datasets.items()) + ".", ""]
    md += ["| arm | algorithm file | flags (each cell adds `--dataset-id D --seed S --run-dir DIR`) |", "|---|---|---|"]
    arms: dict[str, Cell] = {}
    for c in cells:
        arms.setdefault(c.label, c)
    for label, c in arms.items():
        flags = f"`{shlex.join(c.flags)}`" if c.flags else "(the file's defaults)"
        if c.config:
            flags = f"named config `paper-<env>-<quality>` of the dataset, then {flags}"
        if c.load_from:
            flags += f", then `--load-offline` the `{c.load_from.label}` cell's `{OFFLINE_CHECKPOINT}`"
        md.append(f"| {label} | `algorithms/{c.algo}.py` | {flags} |")
    md.append("")
    if finished:
        walls = [summaries[c]["wall_time"] / 3600 for c in finished]
        longest = max(finished, key=lambda c: summaries[c]["wall_time"])
        md += [
            f"Wall time: {sum(walls):.1f} hours over the {len(finished)} finished cells (the sum of each cell's "
            f"`wall_time`), the longest {max(walls) * 60:.0f} min ({longest.label} on `{longest.dataset}`, seed "
            f"{longest.seed}).",
            "",
        ]
    machines: dict[str, int] = {}
    for c in finished:
        path = c.run_dir(out) / "machine.json"
        if path.exists():
            m = json.loads(path.read_text())
            key = (f"{m.get('cpu')}, {m.get('cores')} cores, {m.get('threads')} thread(s) per cell; torch "
                   f"{m.get('torch')}, MuJoCo {m.get('mujoco')}")  # fmt: skip
            machines[key] = machines.get(key, 0) + 1
    devices = sorted({str(summaries[c].get("device")) for c in finished if summaries[c].get("device")})
    if machines:
        md += ["Where the cells ran (each run directory's `machine.json`):", ""]
        md += [f"- {k}: {n} cells" for k, n in machines.items()]
        md += [f"- cells without a `machine.json`: {len(finished) - sum(machines.values())}", ""]
    else:
        md += ["Machine: not recorded in these runs (the runner writes each cell's `machine.json` since issue 26; "
               "`notes.md` says where they ran).", ""]  # fmt: skip
    if devices:
        md += [f"Torch device recorded in the summaries: {', '.join(devices)}.", ""]
    mismatches = flag_mismatches(cells, out)
    if mismatches:
        md += [f"**{len(mismatches)} recorded arguments differ from the flags above** (the budget changed after "
               "these cells ran; their `summary.json` `args` hold what ran):", ""]  # fmt: skip
        md += [f"- {m}" for m in mismatches[:20]]
        md += ([f"- … and {len(mismatches) - 20} more"] if len(mismatches) > 20 else []) + [""]
    md += ["## Results", "", results.rstrip(), ""]
    if plots:
        md += ["## Curves", ""]
        md += [f"![{p.stem}]({p.name})\n" for p in plots]
        md.append("The plotted points are in `curves.csv`; the dashed line is the dataset's own score, read from "
                  "the local build of the machine that drew the plot.")  # fmt: skip
        md.append("")
    md += ["## Diagnostics", "", diagnostics.replace("### diagnostics\n\n", "", 1).rstrip(), ""]
    if notes_text:
        md += ["## Analysis", "", "Hand-written, from `notes.md` beside this file:", "", notes_text, ""]
    text = "\n".join(md)
    (out / "README.md").write_text(text)
    return text


def main(args: Args) -> int:
    bad = [a for a in args.algorithms if a not in ALGORITHMS]
    if bad or (args.seeds is not None and args.seeds < 1) or args.workers < 1 or args.threads < 1:
        print(
            f"error: unknown algorithms {bad} (choose from {list(ALGORITHMS)}), or --seeds/--workers/--threads below 1",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out or ROOT / "benchmark" / "results" / args.preset).resolve()
    cells = build_grid(args)
    todo = unfinished(cells, out)
    if args.dry_run:
        for c in cells:
            print(("(done) " if c not in todo else "") + " ".join(c.command(out)))
        return 0
    print(
        f"{args.preset}: {len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run "
        f"({args.launcher}, {args.workers} workers × {args.threads} threads) -> {out}",
        flush=True,
    )
    if args.report_only:
        todo = []
    if args.preset != "minari-remote":
        ensure_local_datasets([c.dataset for c in todo])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    failures = launch(todo, args, out) if todo else []
    rows = load_results(cells, out)
    finished = sum((c.run_dir(out) / "summary.json").exists() for c in cells)
    print(f"{time.time() - t0:.0f} s this call")
    notes = {a: CPU_REDUCTIONS[a] for a in ALGORITHMS if a in args.algorithms} if args.preset == "mujoco-cpu" else None
    results = write_tables(rows, out, f"{args.preset} ({finished} of {len(cells)} cells finished)", notes)
    print(results)
    diagnostics = write_diagnostics(cells, out)
    plots = plot_curves(cells, out)
    for p in plots:
        print(f"plot: {p}")
    write_report(cells, args, out, results, diagnostics, plots)
    print(f"report: {out / 'README.md'}")
    for cell, log in failures:
        tail = Path(log).read_text().splitlines()[-15:]
        print(
            f"\nFAILED: {cell.label} {cell.dataset} seed {cell.seed} — {log}\n  " + "\n  ".join(tail), file=sys.stderr
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
