"""benchmark/throughput.py: its table holds every row it was asked for, with ratios of rates timed in one run; its
bare-PyTorch references are real updates; a missing peer library or dataset is a clear error."""

import importlib.util
import json
from dataclasses import replace

import pytest
import torch

import throughput


def test_the_bare_references_learn_a_fixed_batch():
    """Each reference is a real update: on one fixed batch its losses fall (they would not with the steps removed)."""
    gen = torch.Generator().manual_seed(0)
    data = throughput._tiny_data()
    batch = throughput.sample_batch(data, 32, gen)
    torch.manual_seed(0)
    for ref in (throughput.BareIQL(3, 2, 32), throughput.BareAWAC(3, 2, 32), throughput.BareCQL(3, 2, 32, n_actions=4)):
        sa = torch.cat([batch["obs"], batch["act"]], -1)
        before = [p.clone() for p in ref.q1.parameters()]
        q_before = ref.q1(sa).detach()
        for _ in range(20):
            ref.update(batch)
        assert any(not torch.equal(a, b) for a, b in zip(before, ref.q1.parameters()))
        target_moved = any(not torch.equal(a, b) for a, b in zip(ref.q1_t.parameters(), before))
        assert target_moved, "Polyak left the target where it started"
        assert not torch.allclose(ref.q1(sa).detach(), q_before)


def test_table_has_every_row_with_consistent_ratios(tiny_mujoco_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tiny_mujoco_root))
    out = tmp_path / "throughput.md"
    args = throughput.Args(
        dataset_id="o2o/hopper/medium-replay-v0",
        threads=[1],
        warmup=0,
        block=1,
        repeats=1,
        online=["famo2o"],
        online_steps=64,
        out=str(out),
    )
    table = throughput.main(args)
    assert out.read_text().strip() == table.strip()
    raw = json.loads(out.with_suffix(".json").read_text())
    for row, (title, _) in throughput.ROWS.items():
        rates = raw[f"{row}/1"]
        line = next(line for line in table.splitlines() if line.startswith(f"| {title} | 1 |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        ours, ref, ratio = float(cells[2]), float(cells[3]), float(cells[4].rstrip("×"))
        assert ours == pytest.approx(rates["ours"] * rates["per"], abs=0.06)
        assert ratio == pytest.approx(rates["ours"] * rates["per"] / rates["reference"], abs=0.006)
        assert ref > 0
    assert raw["online/famo2o/1"] > 0
    assert "| famo2o.py | 1 |" in table


@pytest.mark.skipif(importlib.util.find_spec("d3rlpy") is not None, reason="d3rlpy is installed here")
def test_peers_without_d3rlpy_say_what_to_install(tiny_mujoco_root):
    with pytest.raises(SystemExit, match="requirements-peers.txt"):
        throughput.main(throughput.Args(peers=True, threads=[1], online=[]))


def test_unknown_dataset_or_row_is_a_clear_error(minari_root):
    with pytest.raises(SystemExit, match="not on the local disk"):
        throughput.main(throughput.Args(dataset_id="o2o/nope/medium-v0", threads=[1], online=[]))
    with pytest.raises(SystemExit, match="unknown rows"):
        throughput.main(throughput.Args(rows=["nope"], threads=[1], online=[]))


def test_flops_count_a_linear_layer_by_hand():
    """Forward y = xWᵀ + b: 2·B·in·out; backward: only the weight gradient (x needs none), 2·B·in·out more."""
    layer = torch.nn.Linear(7, 5)
    x = torch.randn(3, 7)
    total, by_module = throughput.count_flops(lambda: layer(x).sum().backward())
    assert total == pytest.approx(2 * 2 * 3 * 7 * 5 / 1e9)
    assert by_module == {"Linear": pytest.approx(total)}


def test_flops_table_has_every_row(tiny_mujoco_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tiny_mujoco_root))
    out = tmp_path / "flops.md"
    table = throughput.main(throughput.Args(dataset_id="o2o/hopper/medium-replay-v0", flops=True, out=str(out)))
    raw = json.loads(out.with_suffix(".json").read_text())
    assert set(raw) == set(throughput.ROWS)
    for row, (title, _) in throughput.ROWS.items():
        line = next(line for line in table.splitlines() if line.startswith(f"| {title} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[1]) == pytest.approx(raw[row]["ours"], abs=6e-4)
        assert float(cells[3].rstrip("×")) == pytest.approx(raw[row]["ours"] / raw[row]["reference"], abs=6e-3)
        assert sum(raw[row]["ours_by_network"].values()) <= raw[row]["ours"] * (1 + 1e-9)
    # the adaptive balance model is extra work on top of the same IQL networks
    assert raw["famo2o-adaptive-iql"]["ours"] > raw["famo2o-fixed"]["ours"]


def test_profile_shares_find_the_matrix_products():
    """A stack of wide Linear layers spends most of its self time in addmm; the shares sum to one."""
    net = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(4)])
    x = torch.randn(512, 256)
    shares = throughput.profile_shares(lambda: net(x).sum().backward(), updates=5, warmup=1)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert sum(v for k, v in shares.items() if k in throughput.MATMUL_OPS) > 0.5


def test_profile_table_has_every_row(tiny_mujoco_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tiny_mujoco_root))
    out = tmp_path / "profile.md"
    args = throughput.Args(dataset_id="o2o/hopper/medium-replay-v0", profile=True, threads=[1], block=2, repeats=1)
    table = throughput.main(replace(args, out=str(out)))
    raw = json.loads(out.with_suffix(".json").read_text())
    assert set(raw) == set(throughput.ROWS)
    for row, (title, _) in throughput.ROWS.items():
        line = next(line for line in table.splitlines() if line.startswith(f"| {title} |"))
        assert line.split("|")[2].strip() == f"{100 * raw[row]['matmul']:.0f} %"
        assert 0 < raw[row]["matmul"] + raw[row]["optimizer"] <= 1 + 1e-9
        assert raw[row]["optimizer"] > 0, f"{row}: the optimizer step was not found in the profile"
    with pytest.raises(SystemExit, match="one at a time"):
        throughput.main(replace(args, flops=True))
