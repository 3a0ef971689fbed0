"""Shared fixtures: a temporary Minari root holding the small local datasets, built once per session,
and a helper that runs an algorithm script the way a user does (a subprocess) and reads its summary."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmark"))
sys.path.insert(0, str(ROOT / "algorithms"))

import make_datasets  # noqa: E402

PENDULUM_EPISODES = 50  # 10k transitions per quality (medium-expert 20k): ~5 s to build all five


# One torch thread in this process and in every subprocess, set before any fixture runs (session and module fixtures
# train too): the tests' small matmuls gain nothing from more, and two workers with two threads each oversubscribe
# the 2-core machine, which made runs many times slower.
ONE_THREAD = dict(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
os.environ.update(ONE_THREAD)
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def minari_root(tmp_path_factory) -> Path:
    """A temporary MINARI_DATASETS_PATH with o2o/pendulum/<quality>-v0 built in it."""
    root = tmp_path_factory.mktemp("minari")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    args = make_datasets.Args(envs=["pendulum"], episodes=PENDULUM_EPISODES, seed=0)
    assert make_datasets.main(args) == 0
    yield root
    if old is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = old


def run_cli(script: str, *flags: str, minari_root: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run `python <script> <flags>` as a user would, with the test datasets; no GPU."""
    env = dict(os.environ, MINARI_DATASETS_PATH=str(minari_root), CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    env.update(ONE_THREAD)
    return subprocess.run(
        [sys.executable, str(ROOT / script), *flags], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def run_algo(script: str, *flags: str, minari_root: Path, run_dir: Path, timeout: float = 900) -> dict:
    """Run an algorithm script to completion and return its summary.json."""
    proc = run_cli(script, *flags, "--run-dir", str(run_dir), "--no-cuda", minari_root=minari_root, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{script} {' '.join(flags)} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
        )
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="session")
def tiny_mujoco_root(tmp_path_factory) -> Path:
    """A MINARI_DATASETS_PATH with small o2o/hopper/{medium,medium-replay}-v0 (3000 transitions each) rolled out
    from the shipped behaviour policies: enough to run a MuJoCo config end to end, not to learn."""
    root = tmp_path_factory.mktemp("tiny_mujoco")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        args = make_datasets.Args(envs=["hopper"], qualities=["medium", "medium-replay"], transitions=3000, seed=0)
        assert make_datasets.main(args) == 0
    return root
