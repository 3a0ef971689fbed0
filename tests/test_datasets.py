"""The local dataset builder: shapes, the N+1 observations rule, reference scores, quality ordering,
and that re-running never corrupts an existing dataset."""

import os

import gymnasium as gym
import minari
import numpy as np
import pytest

import make_datasets
from conftest import PENDULUM_EPISODES, run_cli


def _normalized(ds) -> float:
    return float(make_datasets.episode_scores(ds)[1].mean())


@pytest.mark.parametrize("quality", make_datasets.QUALITIES)
def test_shapes_and_metadata(minari_root, quality):
    ds = minari.load_dataset(make_datasets.dataset_id("pendulum", quality))
    factor = 2 if quality == "medium-expert" else 1
    assert ds.total_episodes == factor * PENDULUM_EPISODES
    assert ds.total_steps == factor * PENDULUM_EPISODES * 200
    for ep in ds.iterate_episodes():
        n = len(ep.actions)
        assert ep.observations.shape == (n + 1, 3)  # reset observation + one per step
        assert ep.actions.shape == (n, 1) and ep.rewards.shape == (n,)
        assert not ep.terminations.any() and ep.truncations[-1]  # Pendulum only truncates, at 200 steps
        assert np.abs(ep.actions).max() <= 2.0
    recipe = make_datasets.RECIPES["pendulum"]
    assert ds.storage.metadata["ref_min_score"] == recipe.ref_min_score
    assert ds.storage.metadata["ref_max_score"] == recipe.ref_max_score
    eval_env = ds.recover_environment(eval_env=True)
    assert eval_env.spec.id == "Pendulum-v1" and eval_env.spec.max_episode_steps == 200


def test_qualities_are_ordered(minari_root):
    score = {
        q: _normalized(minari.load_dataset(make_datasets.dataset_id("pendulum", q))) for q in make_datasets.QUALITIES
    }
    assert abs(score["random"]) < 15
    assert score["expert"] > 90
    assert 25 < score["medium"] < 75
    assert score["random"] < score["medium-replay"] < score["medium"]
    assert score["medium"] < score["medium-expert"] < score["expert"]


def test_medium_replay_spans_the_range(minari_root):
    ds = minari.load_dataset(make_datasets.dataset_id("pendulum", "medium-replay"))
    _, scores = make_datasets.episode_scores(ds)
    first, last = scores[: len(scores) // 3].mean(), scores[-len(scores) // 3 :].mean()
    assert first < 20 < last  # early episodes near random, late ones near medium


def test_reference_scores_match_the_policies():
    """The stored reference scores are what the random policy and the expert controller really get
    (re-measured on fewer episodes than the 100 behind the constants, hence the tolerance)."""
    recipe = make_datasets.RECIPES["pendulum"]
    env = gym.make(recipe.env_id)
    rng = np.random.default_rng(1)
    rand = [make_datasets.rollout(env, lambda o: rng.uniform(-2, 2, 1), 500 + i, i) for i in range(30)]
    expert = [make_datasets.rollout(env, make_datasets.pendulum_expert, 500 + i, i) for i in range(30)]
    rand_mean = np.mean([sum(b.rewards) for b in rand])
    expert_mean = np.mean([sum(b.rewards) for b in expert])
    assert abs(rand_mean - recipe.ref_min_score) < 120  # std of one random episode ≈ 256
    assert abs(expert_mean - recipe.ref_max_score) < 40  # std of one expert episode ≈ 88


def test_rerun_skips_and_overwrite_rebuilds(minari_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    args = make_datasets.Args(envs=["pendulum"], qualities=["random"], episodes=3, seed=0)
    assert make_datasets.main(args) == 0
    did = make_datasets.dataset_id("pendulum", "random")
    assert make_datasets.build("pendulum", "random", 0, overwrite=False, episodes=5) == "skipped"
    assert minari.load_dataset(did).total_episodes == 3
    assert make_datasets.build("pendulum", "random", 0, overwrite=True, episodes=5) == "built"
    assert minari.load_dataset(did).total_episodes == 5
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith(".o2o-build-")]
    assert leftovers == [] and minari.list_local_datasets() == {did: minari.list_local_datasets()[did]}


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(minari, "create_dataset_from_buffers", broken)
    with pytest.raises(RuntimeError):
        make_datasets.build("pendulum", "random", 0, overwrite=False, episodes=2)
    assert os.listdir(tmp_path) == []


def test_cli_rejects_unknown_quality(minari_root):
    proc = run_cli("benchmark/make_datasets.py", "--qualities", "superb", minari_root=minari_root)
    assert proc.returncode == 2 and "unknown env or quality" in proc.stderr
