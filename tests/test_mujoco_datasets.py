"""The MuJoCo half of the dataset builder, end to end on Hopper-v5 with a tiny SAC run: checkpoints are
written and indexed, medium/expert are picked as D4RL did, and every quality is built with D4RL's
reference scores and gymnasium's termination flags. (The shipped policies are checked in
test_shipped_policies.py.)"""

import json

import minari
import numpy as np
import pytest

import make_datasets
from conftest import run_cli


def _fake_run(tmp_path, returns):
    ckpts = [dict(step=1000 * (i + 1), file=f"actor_{i}.pt", eval_return=r) for i, r in enumerate(returns)]
    for c in ckpts:
        (tmp_path / c["file"]).write_bytes(b"")
    (tmp_path / "checkpoints.json").write_text(
        json.dumps(
            dict(env_id="Hopper-v5", seed=1, args=dict(total_timesteps=10_000, checkpoint_freq=1000), checkpoints=ckpts)
        )
    )
    return tmp_path


def test_ship_picks_expert_best_and_medium_a_third(tmp_path, monkeypatch):
    train = tmp_path / "train"
    train.mkdir()
    returns = [10, 200, 900, 1100, 1500, 3000, 2500]
    _fake_run(train, returns)
    monkeypatch.setattr(make_datasets, "POLICY_DIR", str(tmp_path / "policies"))
    monkeypatch.setattr(make_datasets, "torch_load_meta", lambda p: dict(low=[-1.0] * 3, high=[1.0] * 3))
    meta = make_datasets.ship_policies("hopper", str(train), replay_steps=3)
    assert meta["expert"]["eval_return"] == 3000
    assert meta["medium"]["eval_return"] == 900  # nearest 3000 / 3, before the best checkpoint
    seq = [c["step"] for c in meta["replay_sequence"]]
    assert seq == sorted(seq) and seq[0] == 1000 and seq[-1] == meta["medium"]["step"]
    shipped = {p.name for p in (tmp_path / "policies" / "hopper").iterdir()}
    assert shipped == {"policies.json", "actor_0.pt", "actor_1.pt", "actor_2.pt", "actor_5.pt"}
    # the command reproduces the run as far as it went (7 checkpoints), with its checkpoint frequency
    assert "--seed 1 --total-timesteps 7000 --checkpoint-freq 1000" in meta["command"]


def test_missing_policies_give_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(make_datasets, "POLICY_DIR", str(tmp_path))
    assert make_datasets.main(make_datasets.Args(envs=["walker2d"])) == 2
    err = capsys.readouterr().err
    assert "no behaviour policies shipped for 'walker2d'" in err and "benchmark/sac.py" in err


@pytest.fixture(scope="module")
def tiny_hopper(tmp_path_factory):
    """A 600-step SAC run on Hopper-v5 (300 of them learning), its checkpoints shipped to a temporary dir."""
    tmp = tmp_path_factory.mktemp("hopper")
    proc = run_cli(
        "benchmark/sac.py",
        "--env-id",
        "Hopper-v5",
        "--total-timesteps",
        "600",
        "--learning-starts",
        "300",
        "--checkpoint-freq",
        "200",
        "--batch-size",
        "32",
        "--eval-episodes",
        "1",
        "--no-cuda",
        "--checkpoint-dir",
        str(tmp / "train"),
        "--run-dir",
        str(tmp / "tb"),
        minari_root=tmp,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


def test_sac_writes_indexed_checkpoints(tiny_hopper):
    index = json.loads((tiny_hopper / "train" / "checkpoints.json").read_text())
    assert [c["step"] for c in index["checkpoints"]] == [200, 400, 600]
    assert all((tiny_hopper / "train" / c["file"]).exists() for c in index["checkpoints"])


def test_build_every_quality(tiny_hopper, monkeypatch):
    monkeypatch.setattr(make_datasets, "POLICY_DIR", str(tiny_hopper / "policies"))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tiny_hopper / "minari"))
    assert make_datasets.main(make_datasets.Args(envs=["hopper"], ship_from=str(tiny_hopper / "train"))) == 0
    assert make_datasets.main(make_datasets.Args(envs=["hopper"], transitions=400)) == 0
    for q in make_datasets.QUALITIES:
        ds = minari.load_dataset(f"o2o/hopper/{q}-v0")
        factor = 2 if q == "medium-expert" else 1
        assert factor * 400 <= ds.total_steps < factor * (400 + 1000)  # whole episodes, at least the target
        assert ds.storage.metadata["ref_min_score"] == -20.272305
        assert ds.storage.metadata["ref_max_score"] == 3234.3
        eps = list(ds.iterate_episodes())
        assert all(len(e.observations) == len(e.actions) + 1 for e in eps)
        # hopper falls: episodes end in a termination (or, rarely, the 1000-step time limit)
        assert all(e.terminations[-1] or e.truncations[-1] for e in eps)
        assert sum(e.terminations.sum() for e in eps) > 0
        assert ds.recover_environment(eval_env=True).spec.id == "Hopper-v5"
        assert np.isfinite(np.concatenate([e.actions for e in eps])).all()
