"""The MuJoCo half of the dataset builder on Hopper-v5: medium/expert picked from a SAC run as the README says,
medium-replay built as D4RL made it (the run's replay buffer: each checkpoint's share of transitions proportional to
the env steps it stands for, random actions only for the learning-starts steps), every quality built with D4RL's
reference scores and gymnasium's termination flags, and bad input refused before anything is written. (The shipped
policies are checked in test_shipped_policies.py, sac.py's resumption in test_sac.py.)"""

import json
import os
import shutil

import minari
import numpy as np
import pytest
import torch

import make_datasets
import sac

LOW, HIGH = -np.ones(3, np.float32), np.ones(3, np.float32)


def _actor_file(path, step: int, seed: int):
    torch.manual_seed(seed)
    actor = sac.Actor(11, 3, LOW, HIGH)
    state = {k: v.clone() for k, v in actor.state_dict().items()}
    torch.save(dict(state_dict=state, env_id="Hopper-v5", obs_dim=11, act_dim=3, low=LOW.tolist(), high=HIGH.tolist(),
                    step=step), path)  # fmt: skip


def _fake_run(tmp_path, returns, stochastic, freq=1000, learning_starts=1000):
    """A benchmark/sac.py checkpoint directory with (untrained) actors and the given evaluation returns."""
    tmp_path.mkdir(exist_ok=True)
    ckpts = []
    for i, (r, rs) in enumerate(zip(returns, stochastic)):
        c = dict(step=freq * (i + 1), file=f"actor_{freq * (i + 1):07d}.pt", eval_return=r, eval_return_stochastic=rs)
        _actor_file(tmp_path / c["file"], c["step"], seed=i)
        ckpts.append(c)
    args = dict(total_timesteps=freq * len(returns), checkpoint_freq=freq, learning_starts=learning_starts)
    (tmp_path / "checkpoints.json").write_text(
        json.dumps(dict(env_id="Hopper-v5", seed=1, args=args, checkpoints=ckpts))
    )
    return tmp_path


def _ship(tmp_path, monkeypatch, returns, stochastic, **kw) -> dict:
    monkeypatch.setattr(make_datasets, "POLICY_DIR", str(tmp_path / "policies"))
    os.makedirs(tmp_path / "policies", exist_ok=True)
    # the re-measurement of the medium candidates gives back the run's own stochastic return (untrained actors here)
    by_file = {f"actor_{1000 * (i + 1):07d}.pt": r for i, r in enumerate(stochastic)}
    monkeypatch.setattr(sac, "evaluate", lambda actor, *a, **k: by_file[actor._file])
    real_load = sac.load_actor

    def load(path):
        actor = real_load(path)
        actor._file = os.path.basename(path)
        return actor

    monkeypatch.setattr(sac, "load_actor", load)
    make_datasets.load_actor_checked.cache_clear()
    max_replay = kw.pop("max_replay", 16)
    train = _fake_run(tmp_path / "train", returns, stochastic, **kw)
    return make_datasets.ship_policies("hopper", str(train), max_replay=max_replay)


def test_ship_picks_expert_best_and_medium_nearest_d4rls_medium_data(tmp_path, monkeypatch):
    target = -20.272305 + 0.443 * (3234.3 + 20.272305)  # D4RL hopper-medium-v2's data score 44.3 -> return ≈ 1422
    returns = [10, 200, 900, 1500, 1700, 3000, 2500]
    stochastic = [5, 150, 700, 1300, 1600, 2800, 2400]  # 1300 is nearest 1422 (1600 is 178 off)
    meta = _ship(tmp_path, monkeypatch, returns, stochastic)
    assert abs(target - 1422) < 1
    assert meta["format"] == 2 and meta["expert"]["eval_return"] == 3000
    assert meta["medium"]["step"] == 4000 and meta["medium"]["stochastic_return_10"] == 1300
    assert [c["step"] for c in meta["replay_sequence"]] == [1000, 2000, 3000]  # from learning starts to medium
    shipped = {p.name for p in (tmp_path / "policies" / "hopper").iterdir()}
    assert shipped == {"policies.json"} | {f"actor_{s:07d}.pt" for s in (1000, 2000, 3000, 4000, 6000)}
    assert meta["reproduced"][0]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert "--seed 1 --total-timesteps 7000 --checkpoint-freq 1000" in meta["command"]


def test_medium_is_the_first_checkpoint_at_d4rls_medium_level(tmp_path, monkeypatch):
    """A longer run keeps its medium: a later checkpoint that dips back to the medium level is not a candidate."""
    returns = [10, 300, 1500, 1600, 2500, 3000]
    stochastic = [5, 300, 1900, 1000, 1430, 2900]  # 1430 (step 5000) is nearest 1422, but 1900 reached it first
    meta = _ship(tmp_path, monkeypatch, returns, stochastic)
    assert meta["medium"]["step"] == 3000 and meta["expert"]["step"] == 6000


def test_ship_thins_the_replay_sequence_evenly(tmp_path, monkeypatch):
    returns = list(range(100, 2100, 100))  # 20 checkpoints, best last
    stochastic = [r - 50 for r in returns]
    meta = _ship(tmp_path, monkeypatch, returns, stochastic, max_replay=4)
    steps = [c["step"] for c in meta["replay_sequence"]]
    assert len(steps) == 4 and steps[0] == 1000 and steps == sorted(steps) and steps[-1] < meta["medium"]["step"]


def test_replay_plan_shares_transitions_by_env_steps():
    meta = dict(
        learning_starts=5000,
        medium=dict(step=50_000),
        replay_sequence=[dict(step=s, file=f"a{s}") for s in (5000, 10_000, 30_000)],
    )
    plan = make_datasets.replay_plan(meta, 100_000)
    # random actions for 5k of 50k steps; the checkpoints stand for 5k, 20k and 20k steps
    assert plan == [(None, 10_000), ("a5000", 10_000), ("a10000", 40_000), ("a30000", 40_000)]
    # 1001 = 100.1 + 100.1 + 400.4 + 400.4, rounded cumulatively (100.1, 200.2, 600.6, 1001)
    assert [n for _, n in make_datasets.replay_plan(meta, 1001)] == [100, 100, 401, 400]
    # fewer units than segments (--episodes 3 over 4 equal segments): spread over the run, the last one included
    equal = dict(
        learning_starts=5000,
        medium=dict(step=20_000),
        replay_sequence=[dict(step=s, file=f"a{s}") for s in (5000, 10_000, 15_000)],
    )
    assert [k for k, _ in make_datasets.replay_plan(equal, 3)] == [None, "a5000", "a15000"]


@pytest.fixture(scope="module")
def fake_shipped(tmp_path_factory):
    """A shipped hopper set of untrained actors: learning starts at 1000 of a 6000-step medium, 5 checkpoints."""
    root = tmp_path_factory.mktemp("shipped")
    policies = root / "policies" / "hopper"
    policies.mkdir(parents=True)
    seq = []
    for s in (1000, 2000, 3000, 4000, 5000, 6000, 9000):
        _actor_file(policies / f"actor_{s:07d}.pt", s, seed=s)
        seq.append(dict(step=s, file=f"actor_{s:07d}.pt", eval_return=float(s)))
    meta = dict(format=2, env_id="Hopper-v5", learning_starts=1000, low=LOW.tolist(), high=HIGH.tolist(),
                medium=seq[5], expert=seq[6], replay_sequence=seq[:5], reproduced=[])  # fmt: skip
    (policies / "policies.json").write_text(json.dumps(meta))
    return root


def test_medium_replay_follows_the_plan_exactly(fake_shipped, monkeypatch):
    monkeypatch.setattr(make_datasets, "POLICY_DIR", str(fake_shipped / "policies"))
    make_datasets.load_actor_checked.cache_clear()
    pairs = make_datasets.collect_segments(make_datasets.RECIPES["hopper"], "medium-replay", seed=0, transitions=3000)
    counts: dict = {}
    for segment, buf in pairs:
        counts[segment] = counts.get(segment, 0) + len(buf.rewards)
    # 1000 random steps of a 6000-step run: 1/6 of the data; each checkpoint stands for 1000 steps: 1/6 each
    assert counts == {None: 500, **{f"actor_{s:07d}.pt": 500 for s in (1000, 2000, 3000, 4000, 5000)}}
    segments = [s for s, _ in pairs]
    assert segments == sorted(segments, key=lambda s: -1 if s is None else int(s[6:13]))  # training order
    # a segment's last episode is cut where its share ends, and marked truncated (not terminal)
    ends = [i for i in range(len(pairs) - 1) if pairs[i][0] != pairs[i + 1][0]] + [len(pairs) - 1]
    assert all(pairs[i][1].terminations[-1] or pairs[i][1].truncations[-1] for i in ends)
    random_actions = np.concatenate([b.actions for s, b in pairs if s is None])
    assert random_actions.shape == (500, 3) and np.abs(random_actions).max() <= 1.0


def test_build_every_quality(fake_shipped, tmp_path, monkeypatch):
    monkeypatch.setattr(make_datasets, "POLICY_DIR", str(fake_shipped / "policies"))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    make_datasets.load_actor_checked.cache_clear()
    assert make_datasets.main(make_datasets.Args(envs=["hopper"], transitions=400)) == 0
    for q in make_datasets.QUALITIES:
        ds = minari.load_dataset(f"o2o/hopper/{q}-v0")
        factor = 2 if q == "medium-expert" else 1
        if q == "medium-replay":
            assert ds.total_steps == 400  # exact: the plan cuts episodes at segment ends
        else:
            assert factor * 400 <= ds.total_steps < factor * (400 + 1000)  # whole episodes, at least the target
        assert ds.storage.metadata["ref_min_score"] == -20.272305
        assert ds.storage.metadata["ref_max_score"] == 3234.3
        eps = list(ds.iterate_episodes())
        assert all(len(e.observations) == len(e.actions) + 1 for e in eps)
        assert all(e.terminations[-1] or e.truncations[-1] for e in eps)
        assert sum(e.terminations.sum() for e in eps) > 0  # untrained hoppers fall
        assert ds.recover_environment(eval_env=True).spec.id == "Hopper-v5"
        assert np.isfinite(np.concatenate([e.actions for e in eps])).all()


# ---- bad input: exit 2 naming the file, nothing written
def test_missing_policies_give_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(make_datasets, "POLICY_DIR", str(tmp_path))
    assert make_datasets.main(make_datasets.Args(envs=["walker2d"])) == 2
    err = capsys.readouterr().err
    assert "no behaviour policies shipped for 'walker2d'" in err and "benchmark/sac.py" in err


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_broken_shipped_checkpoint_is_named_and_nothing_is_built(fake_shipped, tmp_path, monkeypatch, capsys, damage):
    policies = tmp_path / "policies"
    shutil.copytree(fake_shipped / "policies", policies)
    victim = policies / "hopper" / "actor_0003000.pt"
    victim.unlink() if damage == "missing" else victim.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(make_datasets, "POLICY_DIR", str(policies))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    make_datasets.load_actor_checked.cache_clear()
    assert make_datasets.main(make_datasets.Args(envs=["hopper"], transitions=200)) == 2
    assert str(victim) in capsys.readouterr().err
    assert not (tmp_path / "minari" / "o2o").exists()  # not even the qualities that do not need that checkpoint


def test_ship_from_a_directory_without_checkpoints_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(make_datasets, "POLICY_DIR", str(tmp_path / "policies"))
    (tmp_path / "run").mkdir()
    assert make_datasets.main(make_datasets.Args(envs=["hopper"], ship_from=str(tmp_path / "run"))) == 2
    assert str(tmp_path / "run" / "checkpoints.json") in capsys.readouterr().err
    assert not (tmp_path / "policies").exists()


def test_ship_from_a_run_with_a_corrupt_checkpoint(tmp_path, monkeypatch, capsys):
    train = _fake_run(tmp_path / "train", [10, 900, 3000], [5, 800, 2900])
    (train / "actor_0002000.pt").write_bytes(b"")
    (tmp_path / "policies" / "hopper").mkdir(parents=True)
    (tmp_path / "policies" / "hopper" / "policies.json").write_text("{}")  # a shipped set that must survive
    monkeypatch.setattr(make_datasets, "POLICY_DIR", str(tmp_path / "policies"))
    make_datasets.load_actor_checked.cache_clear()
    assert make_datasets.main(make_datasets.Args(envs=["hopper"], ship_from=str(train))) == 2
    assert str(train / "actor_0002000.pt") in capsys.readouterr().err
    assert os.listdir(tmp_path / "policies") == ["hopper"]
    assert os.listdir(tmp_path / "policies" / "hopper") == ["policies.json"]
