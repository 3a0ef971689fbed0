"""The behaviour policies shipped in benchmark/policies/: every MuJoCo env has them, each checkpoint loads and
the medium and expert ones reproduce the returns stated in policies.json (same protocol as benchmark/sac.py:
deterministic actions, seeds 10000..10004), and a small build from them gives qualities in D4RL's order."""

import json
import os

import minari
import pytest

import make_datasets
import sac

ENVS = list(make_datasets.MUJOCO)


def _policies(env_name: str) -> dict:
    path = os.path.join(make_datasets.POLICY_DIR, env_name, "policies.json")
    assert os.path.exists(path), f"{path} is missing: the MuJoCo behaviour policies must be shipped"
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize("env_name", ENVS)
def test_every_shipped_checkpoint_loads(env_name):
    meta = _policies(env_name)
    env_id = make_datasets.MUJOCO[env_name][0]
    assert meta["env_id"] == env_id
    assert meta["medium"]["step"] < meta["expert"]["step"] <= meta["steps_trained"]
    assert meta["replay_sequence"][-1] == meta["medium"]
    files = {c["file"] for c in meta["replay_sequence"]} | {meta["medium"]["file"], meta["expert"]["file"]}
    for file in files:
        actor = sac.load_actor(os.path.join(make_datasets.POLICY_DIR, env_name, file))
        assert actor.fc_mean.out_features == len(meta["low"])


@pytest.mark.parametrize("env_name", ENVS)
@pytest.mark.parametrize("which", ["medium", "expert"])
def test_shipped_policy_reproduces_its_return(env_name, which):
    meta = _policies(env_name)
    env_id, lo, hi = make_datasets.MUJOCO[env_name]
    ckpt = meta[which]
    actor = sac.load_actor(os.path.join(make_datasets.POLICY_DIR, env_name, ckpt["file"]))
    ret = sac.evaluate(actor, env_id, episodes=5, seed=10_000, device="cpu")
    # the same protocol gives the same number on the same machine; the tolerance (2 % of the D4RL score
    # range) is for other CPUs and MuJoCo builds, where chaotic contact dynamics may drift
    assert abs(ret - ckpt["eval_return"]) < 0.02 * (hi - lo), (ret, ckpt["eval_return"])


def test_hopper_qualities_are_ordered(tmp_path, monkeypatch):
    """A few episodes of each quality, rolled out from the shipped checkpoints (stochastic actions)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    assert make_datasets.main(make_datasets.Args(envs=["hopper"], episodes=9)) == 0
    score = {
        q: make_datasets.episode_scores(minari.load_dataset(f"o2o/hopper/{q}-v0"))[1] for q in make_datasets.QUALITIES
    }
    mean = {q: float(s.mean()) for q, s in score.items()}
    assert mean["random"] < mean["medium"] < mean["expert"]
    assert mean["medium"] < mean["medium-expert"] < mean["expert"]
    replay = score["medium-replay"]  # episodes in collection order: random actions first, medium last
    assert replay[:3].mean() < 0.5 * mean["medium"] < replay[-3:].mean()
