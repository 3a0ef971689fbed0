"""benchmark/sac.py, the behaviour-policy trainer: checkpoints are indexed, and a run killed between checkpoints and
resumed with --resume writes the same checkpoints, bit for bit, as a run that was never interrupted (what lets a
1M-step run span several working sessions). Tiny sizes on Hopper-v5: 50 random steps, then updates on 32-sample
batches, a checkpoint (and a saved run state) every 100 steps."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, run_cli

TINY = ["--env-id", "Hopper-v5", "--learning-starts", "50", "--checkpoint-freq", "100", "--batch-size", "32"]
TINY += ["--eval-episodes", "1", "--buffer-size", "5000", "--no-cuda"]


def _sac(tmp, name: str, *flags: str) -> subprocess.CompletedProcess:
    """A run in tmp/name (a resumed run keeps the TensorBoard directory it started with)."""
    run_dir = [] if "--resume" in flags else ["--run-dir", str(tmp / f"{name}_tb")]
    return run_cli("benchmark/sac.py", *TINY, "--checkpoint-dir", str(tmp / name), *run_dir, *flags, minari_root=tmp)


def _weights(path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sac")
    proc = _sac(tmp, "full", "--total-timesteps", "400")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


def test_checkpoints_are_indexed_with_both_returns(uninterrupted):
    index = json.loads((uninterrupted / "full" / "checkpoints.json").read_text())
    assert [c["step"] for c in index["checkpoints"]] == [100, 200, 300, 400]
    for c in index["checkpoints"]:
        assert (uninterrupted / "full" / c["file"]).exists()
        assert {"eval_return", "eval_return_stochastic"} <= set(c)
    assert (uninterrupted / "full" / "state.pt").exists()


def test_a_killed_run_resumes_to_the_same_checkpoints(uninterrupted, tmp_path):
    """Kill -9 a run as soon as it has saved its state (step 100 or 200: mid-episode, mid-training), resume it, and
    compare the later checkpoints with the uninterrupted run's, exactly."""
    env = dict(__import__("os").environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "benchmark/sac.py"), *TINY, "--total-timesteps", "100000"]
    cmd += ["--checkpoint-dir", str(tmp_path / "run"), "--run-dir", str(tmp_path / "tb")]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = tmp_path / "run" / "state.pt"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(state, weights_only=False)["step"]
    assert saved in (100, 200, 300)
    resumed = _sac(tmp_path, "run", "--total-timesteps", "400", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step {saved}" in resumed.stdout
    for step in range(saved + 100, 401, 100):
        a = _weights(uninterrupted / "full" / f"actor_{step:07d}.pt")
        b = _weights(tmp_path / "run" / f"actor_{step:07d}.pt")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), step
    full = json.loads((uninterrupted / "full" / "checkpoints.json").read_text())["checkpoints"]
    run = json.loads((tmp_path / "run" / "checkpoints.json").read_text())["checkpoints"]
    assert run == full


def test_resume_is_not_a_no_op(uninterrupted, tmp_path):
    """The comparison above can fail: resuming from another run's state, the weights differ."""
    proc = _sac(tmp_path, "other", "--total-timesteps", "200", "--seed", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = _weights(uninterrupted / "full" / "actor_0000200.pt")
    b = _weights(tmp_path / "other" / "actor_0000200.pt")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_what_it_cannot_continue(uninterrupted, tmp_path):
    missing = _sac(tmp_path, "nothing", "--total-timesteps", "400", "--resume")
    assert missing.returncode == 2 and "state.pt" in missing.stderr and "no run state" in missing.stderr
    other = _sac(uninterrupted, "full", "--total-timesteps", "800", "--resume", "--seed", "3")
    assert other.returncode == 2 and "seed=1" in other.stderr
    done = _sac(uninterrupted, "full", "--total-timesteps", "400", "--resume")
    assert done.returncode == 2 and "already at step 400" in done.stderr
    again = _sac(uninterrupted, "full", "--total-timesteps", "400")
    assert again.returncode == 2 and "--resume" in again.stderr
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "state.pt").write_bytes(b"not a state")
    corrupt = _sac(tmp_path, "corrupt", "--total-timesteps", "400", "--resume")
    assert corrupt.returncode == 2 and "could not be read" in corrupt.stderr
    assert sorted(p.name for p in (tmp_path / "corrupt").iterdir()) == ["state.pt"]
