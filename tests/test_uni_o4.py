"""Tests of algorithms/uni_o4.py: unit tests of each piece, learning runs as a user would launch them, bad input."""

import copy

import numpy as np
import pytest
import torch
from conftest import run_algo, run_cli

import uni_o4 as U

SCRIPT = "algorithms/uni_o4.py"
# Small networks and step budgets for the CPU test machine; the defaults are the paper's sizes.
SMALL = [
    "--q-hidden-dim", "128", "--v-hidden-dim", "128", "--bc-hidden-dim", "128", "--dyn-hidden-dim", "64",
    "--ope-num-states", "64", "--ope-horizon", "30", "--eval-episodes", "5", "--dyn-max-epochs", "20",
]  # fmt: skip


# ------------------------------------------------------------------ unit tests
def test_ensemble_bc_equals_per_member_training():
    torch.manual_seed(0)
    n, obs_dim, act_dim = 3, 3, 2
    ens = U.GaussianPolicyEnsemble(n, obs_dim, act_dim, hidden=16, depth=2)
    singles = [ens.extract(i) for i in range(n)]
    opt = torch.optim.Adam(ens.parameters(), lr=1e-3)
    opts = [torch.optim.Adam(p.parameters(), lr=1e-3) for p in singles]
    for _ in range(20):
        s, a = torch.randn(32, obs_dim), torch.rand(32, act_dim) * 2 - 1
        loss = U.bc_loss(ens, s, a, alpha=0.1, reg="none")
        opt.zero_grad()
        loss.backward()
        opt.step()
        for p, o in zip(singles, opts):
            lo = U.bc_loss(p, s, a, alpha=0.1, reg="none")
            o.zero_grad()
            lo.backward()
            o.step()
    for i, p in enumerate(singles):
        for pe, ps in zip(ens.parameters(), p.parameters()):
            torch.testing.assert_close(pe[i], ps[0], rtol=1e-5, atol=1e-6)


def _train(reg, steps=30):
    torch.manual_seed(0)
    ens = U.GaussianPolicyEnsemble(4, 3, 1, hidden=16, depth=2)
    opt = torch.optim.Adam(ens.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        s, a = torch.randn(64, 3, generator=g), torch.rand(64, 1, generator=g) * 2 - 1
        loss = U.bc_loss(ens, s, a, alpha=0.1, reg=reg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ens


def test_disagreement_term_has_gradient_and_official_variant_is_a_no_op():
    torch.manual_seed(0)
    ens = U.GaussianPolicyEnsemble(4, 3, 1, hidden=16, depth=2)
    s, a = torch.randn(64, 3), torch.rand(64, 1) * 2 - 1
    # gradient of the regulariser alone = gradient(loss with α) − gradient(loss without α)
    grads = {}
    for reg in ("kl", "none", "official"):
        ens.zero_grad()
        U.bc_loss(ens, s, a, alpha=0.1, reg=reg).backward()
        grads[reg] = torch.cat([p.grad.flatten() for p in ens.parameters()])
    assert (grads["kl"] - grads["none"]).norm() > 1e-4 * grads["none"].norm()
    # the official term's gradient is exactly α·(−∇log π): a rescaling of the MLE gradient
    torch.testing.assert_close(grads["official"], 1.1 * grads["none"], rtol=1e-4, atol=1e-7)
    # ... which Adam ignores: the trained weights match plain MLE BC, while the KL term changes them
    w = {reg: torch.cat([p.flatten() for p in _train(reg).parameters()]) for reg in ("none", "official", "kl")}
    torch.testing.assert_close(w["official"], w["none"], rtol=1e-3, atol=1e-5)
    assert (w["kl"] - w["none"]).abs().max() > 1e-4


def test_dynamics_fits_a_linear_system():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    A = torch.tensor([[0.9, 0.1], [-0.2, 0.8]])
    B = torch.tensor([[0.5], [-0.3]])
    s = torch.randn(3000, 2)
    a = torch.rand(3000, 1) * 2 - 1
    s2 = s @ A.T + a @ B.T
    r = (s**2).sum(1) * -1.0
    args = U.Args(dyn_hidden_dim=64, dyn_max_epochs=60, dyn_members=3, dyn_elites=2)
    model = U.DynamicsEnsemble(2, 1, 3, 2, hidden=64, depth=4)
    info = U.train_dynamics(model, s, a, r, s2, args, None, rng)
    target_var = torch.cat([s2 - s, r[:, None]], 1).var(0).mean().item()
    assert info["elite_holdout_mse"] < 0.02 * target_var, (info, target_var)
    st = torch.randn(200, 2)
    at = torch.rand(200, 1) * 2 - 1
    with torch.no_grad():
        mean, _ = model(torch.cat([st, at], 1), model.elites)
    err = (mean[..., :2] + st - (st @ A.T + at @ B.T)).pow(2).mean().item()
    assert err < 0.02, err


class _PointModel:
    """Known model of a 1-d point: s' = s + 0.1 a; Q(s, a) = −s'^2 (high near the origin)."""

    def step(self, s, a, gen=None):
        return s + 0.1 * a, -(s**2).sum(1)


class _PointQ(torch.nn.Module):
    def forward(self, s, a):
        q = -((s + 0.1 * a) ** 2).sum(1)
        return torch.stack([q, q + 1.0])


def test_am_q_ranks_a_good_policy_above_a_random_one():
    torch.manual_seed(0)
    pi = U.GaussianPolicyEnsemble(2, 1, 1, hidden=8, depth=1)
    with torch.no_grad():  # member 0: μ = tanh(−5 s) steers to the origin; member 1: random weights
        for p in pi.parameters():
            p[0] = 0
        pi.net.layers[0].weight[0, 0, 0] = 1.0
        pi.net.layers[1].weight[0, 0, 0] = -5.0
    norm = U.StateNorm(np.zeros(1), np.ones(1), "cpu")
    s0 = torch.linspace(-2, 2, 64)[:, None]
    scores = U.am_q(pi, _PointModel(), U._term_never, _PointQ(), norm, s0, horizon=30, seed=0)
    assert scores[0] > scores[1] + 0.1, scores
    # common random numbers: the same policy gets the same score
    torch.testing.assert_close(scores, U.am_q(pi, _PointModel(), U._term_never, _PointQ(), norm, s0, 30, 0))


def test_accept_rule_replaces_reference_only_on_strictly_better_score():
    torch.manual_seed(0)
    pi = U.GaussianPolicyEnsemble(3, 2, 1, hidden=8, depth=1)
    ref = copy.deepcopy(pi)
    with torch.no_grad():
        for p in pi.parameters():
            p.add_(1.0)
    best = torch.tensor([1.0, 1.0, 1.0])
    acc = U.accept_rule(torch.tensor([1.5, 1.0, 0.5]), best)  # better, equal, worse
    assert acc.tolist() == [True, False, False]
    ref.copy_members_from(pi, acc)
    for p, q in zip(ref.parameters(), pi.parameters()):
        assert torch.equal(p[0], q[0]) and not torch.equal(p[1], q[1]) and not torch.equal(p[2], q[2])


def test_gae_truncation_vs_termination():
    g, lam = 0.9, 0.5
    r = np.array([1.0, 2.0, 3.0])
    v = np.array([10.0, 20.0, 30.0])
    v2 = np.array([20.0, 5.0, 7.0])  # V(s') of each step; step 1 ends an episode, step 2 ends the rollout
    for terminated, boot in ((0.0, 1.0), (1.0, 0.0)):  # truncation bootstraps V(s'), termination does not
        adv = U.gae(r, v, v2, np.array([0.0, terminated, 0.0]), np.array([0.0, 1.0, 0.0]), g, lam)
        d2 = 3 + g * 7 - 30
        d1 = 2 + g * boot * 5 - 20
        d0 = 1 + g * 20 - 10
        np.testing.assert_allclose(adv, [d0 + g * lam * d1, d1, d2])  # recursion reset at the episode end


# ------------------------------------------------------------------ learning runs (subprocess)
@pytest.fixture(scope="module")
def offline_runs(minari_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uni_o4")
    flags = [
        "--dataset-id", "o2o/pendulum/medium-v0", "--phases", "offline-online", "--seed", "1",
        "--value-steps", "2000", "--bc-steps", "2000", "--offline-steps", "500", "--online-steps", "4096",
        "--eval-freq", "2048", *SMALL,
    ]  # fmt: skip
    full = run_algo(SCRIPT, *flags, minari_root=minari_root, run_dir=tmp / "full")
    # negative control: no BC and no improvement -> randomly initialised policies
    neg = run_algo(SCRIPT, *flags, "--bc-steps", "0", "--offline-steps", "0", "--online-steps", "0",
                   minari_root=minari_root, run_dir=tmp / "neg")  # fmt: skip
    return full, neg


def test_offline_improvement_learns(offline_runs):
    full, neg = offline_runs
    bc, improved = full["bc_score"], full["improved_score"]
    print(f"BC {bc:.1f} -> improved {improved:.1f} (gap {improved - bc:+.1f}); negative control {neg['bc_score']:.1f}")
    assert full["offline"]["final_score"] == improved
    assert improved >= bc - TOL_IMPROVE, (bc, improved)
    assert improved > 30, improved  # random ≈ 0, dataset ≈ 52
    assert neg["offline"]["final_score"] < 15, neg["offline"]
    assert len(full["final_amq"]) == 4 and full["dynamics"]["elite_holdout_mse"] < 1.0


def test_online_ppo_does_not_collapse(offline_runs):
    full, _ = offline_runs
    assert full["online_env_steps"] == 4096 and full["online_gradient_steps"] > 0
    assert full["online"]["final_score"] >= full["improved_score"] - TOL_ONLINE, (full["online"], full["improved_score"])


# ------------------------------------------------------------------ bad input
def test_unknown_dataset_fails_cleanly(minari_root, tmp_path):
    proc = run_cli(SCRIPT, "--dataset-id", "o2o/nope/medium-v0", "--run-dir", str(tmp_path / "r"),
                   minari_root=minari_root)  # fmt: skip
    assert proc.returncode == 2 and "not on the local disk" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_bad_flags_fail_cleanly(minari_root, tmp_path):
    proc = run_cli(SCRIPT, "--offline-steps", "-1", minari_root=minari_root)
    assert proc.returncode == 2 and "--offline-steps" in proc.stderr


def test_unknown_env_without_terminations_warns(capsys):
    rule, reason = U.select_termination("Acrobat-v9", np.zeros(100), "auto")
    assert rule == "never" and "never terminates" in reason
    assert "no termination rule" in capsys.readouterr().err
    assert U.select_termination("Acrobat-v9", np.array([0.0, 1.0]), "auto")[0] == "learned"
    assert U.select_termination("Hopper-v5", np.zeros(3), "auto")[0] == "hopper"
    assert U.select_termination("Pendulum-v1", np.zeros(3), "auto")[0] == "never"
    with pytest.raises(U.DatasetError):
        U.select_termination("Acrobat-v9", np.zeros(100), "learned")
