"""Tests of algorithms/famo2o.py: the pieces FamO2O adds (β encoding, balance model and its loss, advantage weights,
expectile sign), learning on the small pendulum datasets run as a user would (with negative controls), the paper
configurations, checkpoints (--save-model, --load-offline), and bad input."""

import math
import os

import numpy as np
import pytest
import torch

import famo2o
from conftest import run_algo, run_cli

SCRIPT = "algorithms/famo2o.py"
DATASET = "o2o/pendulum/medium-replay-v0"


def make_agent(base: str = "iql", balance: str = "adaptive", obs_dim: int = 3, act_dim: int = 1) -> famo2o.FamO2O:
    torch.manual_seed(0)
    return famo2o.FamO2O(obs_dim, act_dim, famo2o.Args(base=base, balance=balance), torch.device("cpu"))


def random_batch(n: int = 64, obs_dim: int = 3, act_dim: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return dict(
        obs=torch.randn(n, obs_dim, generator=g),
        act=torch.rand(n, act_dim, generator=g) * 2 - 1,
        rew=torch.randn(n, generator=g),
        next_obs=torch.randn(n, obs_dim, generator=g),
        term=torch.zeros(n),
    )


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def unchanged(module: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return all(torch.equal(p, q) for p, q in zip(module.parameters(), before))


# ------------------------------------------------------------------------------------------------
# Unit tests
# ------------------------------------------------------------------------------------------------
def test_beta_encoding_is_interleaved_sinusoid():
    beta = torch.tensor([1.0, 2.5, 5.0])
    code = famo2o.encode_beta(beta)
    assert code.shape == (3, 6)
    divisors = [1.0, 10_000 ** (1 / 3), 10_000 ** (2 / 3)]  # 1, ≈21.54, ≈464.2
    for k, b in enumerate(beta.tolist()):
        expected = []
        for d in divisors:
            expected += [math.sin(b / d), math.cos(b / d)]
        assert torch.allclose(code[k], torch.tensor(expected), atol=1e-6)
    # distinct β give distinct codes, and the code is bounded (the raw β is never fed to the network)
    assert not torch.allclose(code[0], code[1])
    assert code.abs().max() <= 1.0
    assert famo2o.encode_beta(torch.tensor([[2.0]])).shape == (1, 1, 6)


def test_gaussian_log_prob_and_mlp():
    x, mu, log_std = torch.randn(5, 3), torch.randn(5, 3), torch.randn(3)
    expected = torch.distributions.Normal(mu, log_std.exp()).log_prob(x).sum(-1)
    torch.testing.assert_close(famo2o.gaussian_log_prob(x, mu, log_std), expected)
    net = famo2o.mlp(4, 2, 8, depth=3)
    assert [m.out_features for m in net if isinstance(m, torch.nn.Linear)] == [8, 8, 8, 2]
    assert net(torch.zeros(7, 4)).shape == (7, 2)


def test_balance_model_maps_into_range_and_log_prob_is_stable():
    bal = famo2o.BalanceModel(3, 256, beta_lo=1.0, beta_hi=5.0)
    obs = torch.randn(128, 3)
    beta, logp = bal.rsample(obs)
    assert beta.shape == logp.shape == (128,)
    assert (beta >= 1.0).all() and (beta <= 5.0).all()
    assert (bal.mode(obs) >= 1.0).all() and (bal.mode(obs) <= 5.0).all()
    # tanh log-det in the softplus form equals log(1 − tanh²u) where the latter is finite...
    u = torch.linspace(-3, 3, 13)
    assert torch.allclose(famo2o.tanh_log_det(u), torch.log(1 - torch.tanh(u) ** 2), atol=1e-5)
    # ...and stays finite where tanh saturates (σ_b can shrink to e^-10, the mean can be far out)
    with torch.no_grad():
        bal.net[-1].bias.fill_(40.0)
        bal.log_std.fill_(-10.0)
    beta, logp = bal.rsample(obs)
    assert torch.isfinite(logp).all() and torch.isfinite(beta).all()


def test_balance_loss_updates_only_balance_but_flows_through_actor_input():
    agent = make_agent()
    obs = random_batch()["obs"]
    nets = [("actor", agent.actor), ("critic", agent.critic), ("critic_target", agent.critic_target)]
    others = {name: (m, snapshot(m)) for name, m in nets}
    bal_before = snapshot(agent.balance)

    loss, _, _ = agent.balance_loss(obs)
    loss.backward(inputs=list(agent.balance.parameters()))
    for name, (m, _) in others.items():
        assert all(p.grad is None for p in m.parameters()), f"balance loss produced gradients for {name}"
    assert agent.log_alpha.grad is None
    agent.balance_opt.step()
    for name, (m, before) in others.items():
        assert unchanged(m, before), f"balance step changed {name}"
    assert not unchanged(agent.balance, bal_before)

    # with α ≈ 0 the only route from the balance net to the loss is −Q_targ(s, π_u(s, enc(β))): the gradient
    # must still be non-zero, i.e. it flows through the universal actor's input
    agent.balance.zero_grad()
    with torch.no_grad():
        agent.log_alpha.fill_(-50.0)
    loss, _, _ = agent.balance_loss(obs)
    loss.backward(inputs=list(agent.balance.parameters()))
    grad_norm = sum(p.grad.norm() ** 2 for p in agent.balance.net.parameters()).sqrt()
    assert grad_norm > 0

    # a direct check on the input: d loss / d enc(β) is non-zero
    beta, _ = agent.balance.rsample(obs)
    code = famo2o.encode_beta(beta.detach()).requires_grad_(True)
    q = agent.critic_target(obs, agent.actor.rsample(obs, code)).min(0).values
    (g,) = torch.autograd.grad(-q.mean(), code)
    assert g.abs().sum() > 0


def test_full_update_runs_and_fixed_balance_leaves_balance_model_alone():
    for base in ("iql", "awac"):
        agent = make_agent(base)
        with torch.no_grad():  # move the target away from Q, so that a Polyak step is far larger than rounding
            for p in agent.critic_target.parameters():
                p.add_(0.1 * torch.randn_like(p))
        target_before = snapshot(agent.critic_target)
        info = agent.update(random_batch(), online=True, stats=True)
        assert all(np.isfinite(float(v)) for v in info.values())
        assert "balance_loss" in info and "alpha" in info
        # Polyak: target ← target + τ·(Q_after − target), with Q after this step's critic update
        tau = agent.args.tau
        for before, q_after, after in zip(target_before, agent.critic.parameters(), agent.critic_target.parameters()):
            torch.testing.assert_close(after, torch.lerp(before, q_after.detach(), tau), rtol=0, atol=1e-6)
        assert not unchanged(agent.critic_target, target_before)
        assert not unchanged(agent.critic_target, snapshot(agent.critic))
    agent = make_agent("iql", balance="fixed")
    bal_before, alpha_before = snapshot(agent.balance), agent.log_alpha.item()
    info = agent.update(random_batch(), online=True, stats=True)
    assert unchanged(agent.balance, bal_before) and agent.log_alpha.item() == alpha_before
    assert float(info["actor_beta_mean"]) == pytest.approx(3.0)


def test_fixed_beta_default_depends_on_base():
    # plain IQL's locomotion β = 3; AWAC's λ = 1 is β = 1; an explicit --fixed-beta wins for either base
    for base, expected in (("iql", 3.0), ("awac", 1.0)):
        info = make_agent(base, balance="fixed").update(random_batch(), online=False, stats=True)
        assert float(info["actor_beta_mean"]) == pytest.approx(expected), base
    torch.manual_seed(0)
    agent = famo2o.FamO2O(3, 1, famo2o.Args(base="awac", balance="fixed", fixed_beta=2.5), torch.device("cpu"))
    assert float(agent.update(random_batch(), online=False, stats=True)["actor_beta_mean"]) == pytest.approx(2.5)


def test_awac_evaluates_the_critic_only_on_actions_in_the_box():
    # the baseline ã of A = Q(s, a) − Q(s, ã) is clipped to [-1, 1] like a′ (σ = e² makes unclipped samples leave it)
    agent = make_agent("awac", balance="fixed")
    with torch.no_grad():
        agent.actor.log_std.fill_(2.0)
    seen: list[torch.Tensor] = []
    agent.critic_target.register_forward_pre_hook(lambda m, inp: seen.append(inp[1].detach().clone()))
    agent.update(random_batch(), online=False)
    assert len(seen) == 3  # Q_targ(s, a), Q_targ(s', a′), Q_targ(s, ã)
    assert all(a.abs().max() <= 1.0 for a in seen)


def test_batch_mean_weight_warns_with_adaptive_beta(capsys):
    famo2o.validate(famo2o.Args(weight_mode="batch_mean"))
    assert "warning: --weight-mode batch_mean" in capsys.readouterr().err
    for quiet in (dict(weight_mode="batch_mean", balance="fixed"), dict(weight_mode="per_sample")):
        famo2o.validate(famo2o.Args(**quiet))
        assert "warning" not in capsys.readouterr().err


def test_balance_diagnostics_match_hand_computation():
    agent = make_agent()
    obs = random_batch()["obs"]
    d = famo2o.balance_diagnostics(agent, obs)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in d.values())
    for m in (agent.actor, agent.balance, agent.critic, agent.critic_target):
        assert all(p.grad is None for p in m.parameters()), "diagnostics must not leave gradients behind"
    beta = agent.balance.mode(obs)
    assert float(d["beta_mean"]) == pytest.approx(float(beta.mean()))
    assert float(d["beta_std"]) == pytest.approx(float(beta.std(unbiased=False)))

    def q_at(b: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return agent.critic_target(obs, agent.actor(obs, famo2o.encode_beta(b))[0]).min(0).values

    h = 1e-2  # central finite difference of min Q_targ(s, μ_u(s, enc(β))) in β, per state
    fd = ((q_at(beta + h) - q_at(beta - h)) / (2 * h)).abs().mean()
    assert float(d["dq_dbeta"]) == pytest.approx(float(fd), rel=0.05)
    with torch.no_grad():
        lo = agent.actor(obs, famo2o.encode_beta(torch.full((64,), 1.0)))[0]
        hi = agent.actor(obs, famo2o.encode_beta(torch.full((64,), 5.0)))[0]
    assert float(d["action_spread"]) == pytest.approx(float((hi - lo).abs().mean()))
    # α = 1 and β ∈ [1, 5]: |dQ/dβ|·(5 − 1)/(4α) is |dQ/dβ| itself
    assert float(d["alpha"]) == pytest.approx(1.0)
    assert float(d["q_entropy_ratio"]) == pytest.approx(float(d["dq_dbeta"]))
    d = famo2o.balance_diagnostics(make_agent(balance="fixed"), obs)
    assert float(d["beta_mean"]) == pytest.approx(3.0) and float(d["beta_std"]) == 0.0


# ------------------------------------------------------------------------------------------------
# Recorded values: the update step's outputs at tiny shapes, recorded with the code of commit b61e4b5, so that
# refactoring and speed work are checked to leave the numbers unchanged (the tolerance allows float summation order
# to change, across CPUs and between eager and fused kernels)
# ------------------------------------------------------------------------------------------------
RECORDED = {
    "iql-adaptive": {
        "updates": {
            "actor_beta_mean": [3.222652, 3.6308584, 4.0764823],
            "actor_loss": [3.3643494, 7.4782553, 20.3841],
            "actor_std": [0.9997001, 0.9994254, 0.9991785],
            "adv_weight": [1.480657, 3.5388114, 10.1818991],
            "advantage": [-0.3975999, -0.3946733, -0.3917078],
            "alpha": [0.9997001, 0.9994065, 0.99911],
            "alpha_loss": [0.776476, 1.3528253, 1.1891513],
            "balance_beta_mean": [3.2575777, 3.1892867, 2.9627924],
            "balance_entropy": [0.276476, 0.8532312, 0.6898575],
            "balance_loss": [-0.0920684, -0.6771302, -0.3861211],
            "qf1_values": [-0.3093265, -0.3017365, -0.294269],
            "qf2_values": [0.5763929, 0.5724401, 0.5684934],
            "qf_loss": [2.2633579, 2.2343867, 2.2059348],
            "v_values": [0.0912099, 0.0882734, 0.0853847],
            "value_loss": [0.2663762, 0.263481, 0.2605672],
        },
        "diagnostics": {
            "action_spread": 0.2244671,
            "alpha": 0.99911,
            "beta_mean": 3.2833524,
            "beta_std": 0.8971893,
            "dq_dbeta": 0.1810388,
            "q_entropy_ratio": 0.1812001,
        },
        "param_sum": 6.772174,
        "log_alpha": -0.0008904,
    },
    "awac-adaptive": {
        "updates": {
            "actor_beta_mean": [3.2797925, 2.8417315, 3.6467178],
            "actor_loss": [3.5357451, 3.6572189, 2.9107761],
            "actor_std": [0.9997001, 0.9994082, 0.9991388],
            "adv_weight": [1.4377195, 1.602363, 1.17812],
            "advantage": [0.0115435, -0.0771339, -0.1078622],
            "alpha": [0.9997001, 0.9993998, 0.9991015],
            "alpha_loss": [0.9141447, 0.9996399, 0.8486044],
            "balance_beta_mean": [3.1022725, 2.0047498, 3.7431786],
            "balance_entropy": [0.4141447, 0.4999399, 0.3491141],
            "balance_loss": [-0.3246174, 0.059363, -0.114059],
            "qf1_values": [-0.4214017, -0.4227124, -0.4232964],
            "qf2_values": [0.4229066, 0.4160568, 0.4094149],
            "qf_loss": [2.4549992, 2.7805529, 2.5886147],
        },
        "diagnostics": {
            "action_spread": 0.1830197,
            "alpha": 0.9991015,
            "beta_mean": 3.0020397,
            "beta_std": 0.7089493,
            "dq_dbeta": 0.1392896,
            "q_entropy_ratio": 0.1394149,
        },
        "param_sum": 1.75794,
        "log_alpha": -0.0008989,
    },
    "iql-fixed": {
        "updates": {
            "actor_beta_mean": [3.0, 3.0, 3.0],
            "actor_loss": [6.0110126, 5.9332151, 5.8577471],
            "actor_std": [0.9997001, 0.9994001, 0.9991003],
            "adv_weight": [2.6574638, 2.6329138, 2.608937],
            "advantage": [-0.3975999, -0.3946733, -0.3917078],
            "qf1_values": [-0.3093265, -0.3017365, -0.294269],
            "qf2_values": [0.5763929, 0.5724401, 0.5684934],
            "qf_loss": [2.2633579, 2.2343867, 2.2059348],
            "v_values": [0.0912099, 0.0882734, 0.0853847],
            "value_loss": [0.2663762, 0.263481, 0.2605672],
        },
        "diagnostics": {
            "action_spread": 0.2240473,
            "alpha": 1.0,
            "beta_mean": 3.0,
            "beta_std": 0.0,
            "dq_dbeta": 0.1381719,
            "q_entropy_ratio": 0.1381719,
        },
        "param_sum": 6.829349,
        "log_alpha": 0.0,
    },
    "awac-fixed": {
        "updates": {
            "actor_beta_mean": [1.0, 1.0, 1.0],
            "actor_loss": [2.5258324, 2.6851096, 3.0802436],
            "actor_std": [0.9997001, 0.999438, 0.9991692],
            "adv_weight": [0.9238197, 1.0461942, 1.2681727],
            "advantage": [-0.0872249, -0.035997, 0.0438182],
            "qf1_values": [-0.4214017, -0.4218123, -0.4218407],
            "qf2_values": [0.4229066, 0.4160204, 0.4097205],
            "qf_loss": [2.3137672, 2.9650376, 3.0393639],
        },
        "diagnostics": {
            "action_spread": 0.1824031,
            "alpha": 1.0,
            "beta_mean": 1.0,
            "beta_std": 0.0,
            "dq_dbeta": 0.0707829,
            "q_entropy_ratio": 0.0707829,
        },
        "param_sum": 1.760227,
        "log_alpha": 0.0,
    },
}


def recorded_run(base: str, balance: str) -> tuple[famo2o.FamO2O, dict[str, torch.Tensor], list[dict]]:
    """A seeded tiny agent (obs 3, act 2, hidden 16) and a batch of 8 sampled from a seeded buffer (about a quarter
    of the transitions terminal); three updates: offline, online, online."""
    obs_dim, act_dim, n = 3, 2, 32
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    args = famo2o.Args(base=base, balance=balance, hidden_dim=16, batch_size=8)
    agent = famo2o.FamO2O(obs_dim, act_dim, args, torch.device("cpu"))
    buffer = famo2o.ReplayBuffer(obs_dim, act_dim, n, torch.device("cpu"))
    term = (torch.rand(n, generator=g) < 0.25).float()
    obs, act = torch.randn(n, obs_dim, generator=g), torch.rand(n, act_dim, generator=g) * 2 - 1
    rew, next_obs = torch.randn(n, generator=g), torch.randn(n, obs_dim, generator=g)
    buffer.add_batch(obs.numpy(), act.numpy(), rew.numpy(), next_obs.numpy(), term.numpy())
    batch = buffer.sample(8)
    infos = [agent.update(batch, online=online, stats=True) for online in (False, True, True)]
    return agent, batch, infos


@pytest.mark.parametrize("case", RECORDED)
def test_update_matches_recorded_values(case):
    agent, batch, infos = recorded_run(*case.split("-"))
    rec = RECORDED[case]
    approx = dict(rel=1e-4, abs=1e-5)
    assert sorted(infos[0]) == sorted(rec["updates"]), "the update returns other statistics than recorded"
    for key, values in rec["updates"].items():
        assert [float(info[key]) for info in infos] == pytest.approx(values, **approx), key
    models = (agent.actor, agent.critic, agent.critic_target, agent.balance, agent.value)
    param_sum = sum(p.detach().sum() for m in models if m is not None for p in m.parameters())
    assert float(param_sum) == pytest.approx(rec["param_sum"], **approx)
    assert float(agent.log_alpha) == pytest.approx(rec["log_alpha"], **approx)
    diagnostics = {k: float(v) for k, v in famo2o.balance_diagnostics(agent, batch["obs"]).items()}
    assert diagnostics == pytest.approx(rec["diagnostics"], **approx)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_update_matches_eager(backend, monkeypatch):
    """--compile: torch.compile of the update gives the eager losses and parameters (AWAC with a fixed β: its update
    draws random actions, so the random stream is checked too). `aot_eager` traces the update through dynamo and
    AOT autograd (its graph breaks at each backward) in a few seconds; inductor, what --compile uses on CPU, adds
    code generation, over a minute of C++ compilation on 2 busy cores, so it runs only with O2O_TEST_INDUCTOR=1."""
    if backend == "inductor" and not os.environ.get("O2O_TEST_INDUCTOR"):
        pytest.skip("inductor's C++ compilation takes over a minute here; set O2O_TEST_INDUCTOR=1 to run it")
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None: compile_(fn, mode=mode, backend=backend))
    agents, infos, batch = [], [], random_batch(8)
    for compiled in (False, True):
        torch.manual_seed(0)
        args = famo2o.Args(base="awac", balance="fixed", hidden_dim=8, compile=compiled)
        agents.append(famo2o.FamO2O(3, 1, args, torch.device("cpu")))
        try:
            infos.append([agents[-1].update(batch, online=False, stats=True) for _ in range(2)])
        except Exception as e:  # no C++ compiler or an unsupported platform: say why instead of failing
            pytest.skip(f"torch.compile does not work here: {type(e).__name__}: {e}")
    for eager, compiled in zip(*infos):
        assert {k: float(v) for k, v in compiled.items()} == pytest.approx({k: float(v) for k, v in eager.items()})
    for p, q in zip(agents[0].actor.parameters(), agents[1].actor.parameters()):
        torch.testing.assert_close(p, q)


# ------------------------------------------------------------------------------------------------
# GPU-readiness: no host synchronisation in the update step
# ------------------------------------------------------------------------------------------------
def test_update_returns_tensors_not_floats():
    for base, balance, online in (("iql", "adaptive", False), ("iql", "adaptive", True), ("awac", "fixed", True)):
        info = make_agent(base, balance).update(random_batch(), online=online, stats=True)
        bad = {k: type(v).__name__ for k, v in info.items() if not isinstance(v, torch.Tensor) or v.requires_grad}
        assert not bad, f"update must return detached tensors (the loop converts them when it logs): {bad}"


def test_update_does_not_build_torch_distributions(monkeypatch):
    # torch.distributions validates its arguments by default, a device sync per call: the log-densities are closed-form
    def refuse(*args, **kwargs):
        raise AssertionError("torch.distributions.Normal used in the update")

    monkeypatch.setattr(torch.distributions, "Normal", refuse)
    for base in ("iql", "awac"):
        make_agent(base).update(random_batch(), online=True)


def test_acting_copies_to_the_host_once_per_step(monkeypatch):
    agent = make_agent()
    calls = []

    def counting(name):
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *args, **kwargs):
            calls.append(name)
            return orig(self, *args, **kwargs)

        return wrapped

    for name in ("cpu", "item", "__float__", "tolist"):  # the ways a device value reaches the host
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    a, beta = agent.act(np.zeros(3, dtype=np.float32), deterministic=False)
    monkeypatch.undo()
    assert calls == ["cpu"], calls
    assert a.shape == (1,) and isinstance(beta, float) and 1.0 <= beta <= 5.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_updates_do_not_synchronize_the_gpu():
    device = torch.device("cuda")
    for base, balance in (("iql", "adaptive"), ("awac", "adaptive"), ("iql", "fixed")):
        torch.manual_seed(0)
        agent = famo2o.FamO2O(3, 1, famo2o.Args(base=base, balance=balance), device)
        buffer = famo2o.ReplayBuffer(3, 1, 1000, device)
        b = random_batch(1000)
        buffer.add_batch(b["obs"].numpy(), b["act"].numpy(), b["rew"].numpy(), b["next_obs"].numpy(), np.zeros(1000))
        agent.update(buffer.sample(256), online=False)  # warm-up: lazy CUDA/cuBLAS initialisation may synchronize
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for online, stats in ((False, False), (False, True), (True, False), (True, True)):
                agent.update(buffer.sample(256), online=online, stats=stats)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------
# Evaluation schedule
# ------------------------------------------------------------------------------------------------
def test_eval_due_schedule():
    args = famo2o.Args(eval_freq=100, early_eval_freq=10, early_eval_until=30)
    online = [t for t in range(1, 251) if famo2o.eval_due(t, 250, args, online=True)]
    assert online == [10, 20, 30, 100, 200, 250]
    offline = [t for t in range(1, 251) if famo2o.eval_due(t, 250, args, online=False)]
    assert offline == [100, 200, 250]  # the early schedule is for the online phase only
    args = famo2o.Args(eval_freq=100)
    assert [t for t in range(1, 251) if famo2o.eval_due(t, 250, args, online=True)] == [100, 200, 250]


def test_advantage_weights_match_hand_computation():
    beta = torch.tensor([1.0, 2.0, 3.0])
    adv = torch.tensor([0.5, -1.0, 3.0])
    e = math.exp
    per_sample = famo2o.advantage_weights(beta, adv, "per_sample", clip=100.0)
    assert torch.allclose(per_sample, torch.tensor([e(0.5), e(-2.0), 100.0]))  # e^9 is clipped
    batch_mean = famo2o.advantage_weights(beta, adv, "batch_mean", clip=100.0)
    expected = [
        (e(0.5) + e(1.0) + e(1.5)) / 3,
        (e(-1.0) + e(-2.0) + e(-3.0)) / 3,
        (e(3.0) + 100.0 + 100.0) / 3,  # e^6, e^9 clipped
    ]
    assert torch.allclose(batch_mean, torch.tensor(expected))
    # batch_mean reproduces the official code's broadcast: [B, 1] β times [B] A -> [B, B], clip, × log π [B], mean
    logp = torch.tensor([-0.3, -1.2, -0.7])
    official = (torch.clamp(torch.exp(beta[:, None] * adv), max=100.0) * logp).mean()
    assert torch.allclose((batch_mean * logp).mean(), official)
    # huge advantages do not overflow
    assert torch.isfinite(famo2o.advantage_weights(beta, torch.full((3,), 1e4), "per_sample")).all()
    with pytest.raises(AssertionError):
        famo2o.advantage_weights(beta[:, None], adv, "per_sample")


def test_expectile_loss_sign_conventions():
    tau = 0.8
    # u = Q − V > 0 (V too low) weighs τ; u < 0 (V too high) weighs 1 − τ
    assert famo2o.expectile_loss(torch.tensor([2.0]), tau).item() == pytest.approx(tau * 4)
    assert famo2o.expectile_loss(torch.tensor([-2.0]), tau).item() == pytest.approx((1 - tau) * 4)
    # minimizing over a constant V for targets {0, 1} gives the τ-expectile, τ (above the mean 0.5)
    q = torch.tensor([0.0, 1.0])
    v = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([v], lr=0.5)
    for _ in range(500):
        opt.zero_grad()
        famo2o.expectile_loss(q - v, tau).backward()
        opt.step()
    assert v.item() == pytest.approx(tau, abs=1e-4)


def test_reward_transform():
    data = dict(
        rewards=np.array([-1.0, -1.0, -3.0, -3.0, -0.5], dtype=np.float32),
        episode_ends=np.array([False, True, False, True, True]),
    )  # episode returns -2, -6, -0.5: spread 5.5
    assert famo2o.reward_transform(data, "locomotion") == pytest.approx((1000 / 5.5, 0.0))
    assert famo2o.reward_transform(data, "goal") == (1.0, -1.0)
    assert famo2o.reward_transform(data, "none") == (1.0, 0.0)


# ------------------------------------------------------------------------------------------------
# Learning, run as a user would (subprocess) on the pendulum medium-replay dataset (dataset score ≈ 29)
# ------------------------------------------------------------------------------------------------
BUDGET = ["--offline-steps", "3000", "--online-steps", "500", "--eval-freq", "500", "--eval-episodes", "5"]
# Calibrated with this exact budget on medium-replay (normalized scores, 5 eval episodes; random ≈ -6, dataset ≈ 29):
# offline after 3000 steps: IQL 98.7 / 87.8 / 93.8, AWAC 91.6 / 82.0 / 90.7 (seeds 1/2/3; AWAC with ã clipped, was
# 91.6 / 81.9 / 93.1 before); untrained policy
# (1 gradient step, negative control): IQL -41.4 / -36.7 / -5.2, AWAC -43.3 / -34.8 / +5.6. Scores stay below -15
# until ~1500 steps and cross 40 between 2000 and 2500 steps, so 3000 steps leaves a margin.
OFFLINE_THRESHOLD = 40.0
# online (500 env steps) minus offline: IQL -33.4 / +3.3 / +5.4, AWAC +7.6 / +9.5 / +3.2 (was +7.6 / +9.3 / +0.8).
# The -33 is one of the five evaluation episodes failing to swing up right after the switch (a known early online
# dip), hence the wide margin.
ONLINE_TOLERANCE = 45.0
# Where there is a measured gain (AWAC, seed 1: 91.6 offline -> 99.2 after 500 env steps, +7.6), the test asserts one.
# With online learning off the policy is the one evaluated at online step 0, so the gain is exactly 0.
AWAC_ONLINE_GAIN = 2.0


@pytest.mark.parametrize("base", ["iql", "awac"])
def test_learns_offline_and_online_does_not_collapse(base, minari_root, tmp_path):
    s = run_algo(
        SCRIPT,
        "--base",
        base,
        "--dataset-id",
        DATASET,
        "--seed",
        "1",
        *BUDGET,
        "--log-freq",
        "250",
        minari_root=minari_root,
        run_dir=tmp_path / "run",
    )
    assert s["offline_gradient_steps"] == 3000 and s["online_env_steps"] == 500 and s["online_gradient_steps"] == 500
    phases = [e["phase"] for e in s["evaluations"]]
    # online: at env step 0 (the policy fine-tuning starts from) and at the end
    assert phases.count("offline") == 6 and [e["step"] for e in s["evaluations"] if e["phase"] == "online"] == [0, 500]
    # `offline` comes from the offline evaluations (last one at the end of the offline phase), `online` from online
    assert (
        s["offline"]["final_score"] == [e for e in s["evaluations"] if e["phase"] == "offline"][-1]["normalized_score"]
    )
    assert s["online"]["final_score"] == s["evaluations"][-1]["normalized_score"]
    assert s["offline"]["final_score"] > OFFLINE_THRESHOLD
    assert s["online"]["final_score"] > s["offline"]["final_score"] - ONLINE_TOLERANCE
    # online step 0 evaluates the policy offline training left; the online updates then change it
    offline_end = [e for e in s["evaluations"] if e["phase"] == "offline"][-1]
    online_start, online_end = [e for e in s["evaluations"] if e["phase"] == "online"]
    assert online_start["mean_return"] == offline_end["mean_return"]
    assert online_end["mean_return"] != online_start["mean_return"], "online updates left the policy unchanged"
    if base == "awac":
        assert online_end["normalized_score"] - online_start["normalized_score"] > AWAC_ONLINE_GAIN
    # the balance model's β distribution is recorded and stays inside the range
    for key in ("offline_final_eval", "online_final_eval", "online_acting_last_window"):
        b = s["beta"][key]
        assert 1.0 <= b["min"] <= b["mean"] <= b["max"] <= 5.0 and sum(b["histogram"]) > 0


NO_LEARNING = ["--actor-lr", "0", "--critic-lr", "0", "--value-lr", "0", "--balance-lr", "0", "--alpha-lr", "0"]


def test_negative_control_learning_off_fails_both_checks(minari_root, tmp_path):
    """The learning test's run (AWAC, whose online gain it asserts) with every learning rate 0: the same budget and
    code path, nothing learned, so it must fail the offline threshold and show no online gain."""
    flags = ("--base", "awac", "--dataset-id", DATASET, "--seed", "1", *BUDGET, *NO_LEARNING)
    s = run_algo(SCRIPT, *flags, minari_root=minari_root, run_dir=tmp_path / "run")
    assert s["offline_gradient_steps"] == 3000 and s["online_gradient_steps"] == 500
    assert s["offline"]["final_score"] < OFFLINE_THRESHOLD
    online_start, online_end = [e for e in s["evaluations"] if e["phase"] == "online"]
    assert online_end["normalized_score"] - online_start["normalized_score"] <= AWAC_ONLINE_GAIN


def test_negative_control_untrained_policy_fails_threshold(minari_root, tmp_path):
    s = run_algo(
        SCRIPT,
        "--dataset-id",
        DATASET,
        "--offline-steps",
        "1",
        "--online-steps",
        "0",
        "--eval-freq",
        "1",
        "--eval-episodes",
        "5",
        minari_root=minari_root,
        run_dir=tmp_path / "run",
    )
    assert s["online"] is None
    assert s["offline"]["final_score"] < OFFLINE_THRESHOLD


TINY_RUN = ("--offline-steps", "30", "--online-steps", "30", "--eval-freq", "30", "--eval-episodes", "1")


def test_fixed_beta_ablation_and_batch_mean_weight_run(minari_root, tmp_path):
    fixed = ("--balance", "fixed", "--fixed-beta", "2.0", "--log-freq", "10", "--early-eval-freq", "4")
    s = run_algo(
        SCRIPT,
        "--dataset-id",
        DATASET,
        *fixed,
        *TINY_RUN,
        "--early-eval-until",
        "10",
        minari_root=minari_root,
        run_dir=tmp_path / "fixed",
    )
    assert s["beta"]["online_final_eval"]["std"] == 0.0 and s["beta"]["online_final_eval"]["mean"] == 2.0
    # online evaluations: env step 0, the early schedule (every 4 up to 10), and the end
    assert [e["step"] for e in s["evaluations"] if e["phase"] == "online"] == [0, 4, 8, 30]
    assert s["online"]["best_score"] == max(e["normalized_score"] for e in s["evaluations"] if e["phase"] == "online")
    # balance diagnostics: per phase, one value per logging step
    for phase in ("offline", "online"):
        d = s["diagnostics"][phase]
        assert d["step"] == [10, 20, 30]
        for key in ("beta_mean", "beta_std", "dq_dbeta", "action_spread", "q_entropy_ratio", "alpha"):
            assert len(d[key]) == 3 and all(isinstance(v, float) and math.isfinite(v) for v in d[key]), key
        assert d["beta_mean"] == [2.0] * 3 and d["beta_std"] == [0.0] * 3
    batch = ("--weight-mode", "batch_mean", "--reward-scale-mode", "none", "--save-model")
    s = run_algo(
        SCRIPT, "--dataset-id", DATASET, *batch, *TINY_RUN, minari_root=minari_root, run_dir=tmp_path / "batch"
    )
    assert s["online"] is not None and (tmp_path / "batch" / "famo2o.cleanrl_model").exists()


# ------------------------------------------------------------------------------------------------
# Bad input: a clear message, exit 2, and no run directory left behind
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(beta_lo=5.0, beta_hi=5.0), "--beta-lo < --beta-hi"),
        (dict(beta_lo=6.0, beta_hi=2.0), "--beta-lo < --beta-hi"),
        (dict(early_eval_freq=5), "--early-eval-freq needs --early-eval-until > 0"),
        (dict(log_freq=0), "--log-freq must be ≥ 1"),
        (dict(online_steps=-1), "--online-steps must be ≥ 0"),
        (dict(dataset_id="o2o/pendulum/nonexistent-v0"), "is not on the local disk"),
    ],
)
def test_bad_input_fails_cleanly(overrides, message, minari_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        famo2o.main(famo2o.Args(run_dir=str(run_dir), cuda=False, **overrides))
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--base", "cql"), "invalid choice 'cql' for argument '--base'. Expected one of ('iql', 'awac')"),
        (("--balance", "learned"), "invalid choice 'learned' for argument '--balance'"),
        (("--beta-lo", "5", "--beta-hi", "2"), "--beta-lo < --beta-hi"),
    ],
)
def test_bad_input_from_the_command_line(flags, message, minari_root, tmp_path):
    """A choice outside its Literal is refused by tyro (which lists the choices), the other checks by `validate`."""
    run_dir = tmp_path / "run"
    proc = run_cli(SCRIPT, *flags, "--run-dir", str(run_dir), "--no-cuda", minari_root=minari_root)
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr
    assert not run_dir.exists()


def test_help_says_batch_mean_cannot_adapt_beta(minari_root):
    proc = run_cli(SCRIPT, "--help", minari_root=minari_root)
    assert proc.returncode == 0, proc.stderr
    assert "cannot learn different" in " ".join(proc.stdout.replace("│", " ").split())  # tyro's box, wrapped


# ------------------------------------------------------------------------------------------------
# Paper configurations: `python algorithms/famo2o.py paper-<env>-<quality> [flags]`
# ------------------------------------------------------------------------------------------------
def test_every_paper_config_parses_and_names_a_buildable_dataset():
    import make_datasets

    envs, qualities = ("hopper", "halfcheetah", "walker2d"), ("medium", "medium-replay", "medium-expert")
    assert sorted(famo2o.PAPER_CONFIGS) == sorted(f"paper-{e}-{q}" for e in envs for q in qualities)
    for name, cfg in famo2o.PAPER_CONFIGS.items():
        famo2o.Args(**cfg)  # only fields that exist
        args = famo2o.paper_config_cli([name])
        assert {k: getattr(args, k) for k in cfg} == cfg, name
        prefix, env, quality = cfg["dataset_id"].split("/")
        assert prefix == "o2o" and quality.endswith("-v0") and name == f"paper-{env}-{quality[: -len('-v0')]}"
        assert env in make_datasets.MUJOCO and quality[: -len("-v0")] in make_datasets.QUALITIES
        # the paper's budgets, and the official code's batch-averaged weight (see the header)
        assert args.offline_steps == args.online_steps == 1_000_000 and args.weight_mode == "batch_mean"


def test_paper_config_runs_end_to_end(tiny_mujoco_root, tmp_path):
    tiny = ("--offline-steps", "20", "--online-steps", "20", "--eval-freq", "20", "--eval-episodes", "1")
    s = run_algo(SCRIPT, "paper-hopper-medium-replay", *tiny, minari_root=tiny_mujoco_root, run_dir=tmp_path / "run")
    cfg = famo2o.PAPER_CONFIGS["paper-hopper-medium-replay"]
    budgets = ("offline_steps", "online_steps", "eval_freq", "eval_episodes")
    assert {k: v for k, v in s["args"].items() if k in cfg and k not in budgets} == {
        k: v for k, v in cfg.items() if k not in budgets
    }
    assert s["dataset_id"] == "o2o/hopper/medium-replay-v0" and s["online_gradient_steps"] == 20
    assert s["offline"]["metric"] == s["online"]["metric"] == "normalized_score"


# ------------------------------------------------------------------------------------------------
# Checkpoints: --save-model, --load-offline; the online phase alone
# ------------------------------------------------------------------------------------------------
def replay_saved_policy(path, summary: dict) -> float:
    """Mean return of the deterministic evaluation (the run's own episodes and seed) of a policy loaded from `path`,
    rebuilt in this process from the run's recorded args."""
    args = famo2o.Args(**summary["args"])
    dataset = famo2o.load_minari_dataset(args.dataset_id)
    env = famo2o.make_eval_env(dataset)
    agent = famo2o.FamO2O(env.observation_space.shape[0], env.action_space.shape[0], args, torch.device("cpu"))
    agent.load_checkpoint(torch.load(path, map_location="cpu", weights_only=True))
    low, high = dataset.action_space.low.astype(np.float32), dataset.action_space.high.astype(np.float32)

    def policy(o):
        a = agent.act(o, deterministic=True)[0]
        return ((high + low) / 2.0 + (high - low) / 2.0 * a).astype(dataset.action_space.dtype)

    returns = famo2o.evaluate(env, policy, args.eval_episodes, args.seed * 1_000 + 100_000)
    env.close()
    return float(returns.mean())


def test_saved_models_reproduce_the_policy_and_load_offline_skips_training(minari_root, tmp_path, capsys):
    tiny = ("--dataset-id", DATASET, "--eval-freq", "30", "--eval-episodes", "2", "--online-steps", "30")
    saved = run_algo(
        SCRIPT, *tiny, "--offline-steps", "30", "--save-model", minari_root=minari_root, run_dir=tmp_path / "save"
    )
    offline_end = [e for e in saved["evaluations"] if e["phase"] == "offline"][-1]
    assert offline_end["step"] == 30
    # the final model and the offline phase's checkpoint each replay their evaluation exactly
    final_model, offline_ckpt = tmp_path / "save" / "famo2o.cleanrl_model", tmp_path / "save" / "offline.pt"
    assert replay_saved_policy(final_model, saved) == saved["evaluations"][-1]["mean_return"]
    assert replay_saved_policy(offline_ckpt, saved) == offline_end["mean_return"]
    assert offline_end["mean_return"] != saved["evaluations"][-1]["mean_return"]  # two different policies

    loaded = run_algo(
        SCRIPT, *tiny, "--load-offline", str(offline_ckpt), minari_root=minari_root, run_dir=tmp_path / "load"
    )
    assert loaded["offline_gradient_steps"] == 30 and loaded["offline_loaded_from"] == str(offline_ckpt)
    assert loaded["throughput"]["offline_grad_steps_per_s"] is None  # nothing was trained offline
    offline_evals = [(e["step"], e["mean_return"]) for e in loaded["evaluations"] if e["phase"] == "offline"]
    assert offline_evals == [(30, offline_end["mean_return"])]
    start = [e for e in loaded["evaluations"] if e["phase"] == "online"][0]
    assert start["step"] == 0 and start["mean_return"] == offline_end["mean_return"]
    assert loaded["online_gradient_steps"] == 30 and loaded["online"] is not None

    # a checkpoint that does not fit the run: exit 2 before anything is written
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    torch.save(dict(meta=dict(format="famo2o-offline-v1")), tmp_path / "old.pt")  # before the critic was renamed
    for path, overrides, message in [
        (offline_ckpt, dict(base="awac"), "was made with base='iql' but this run has base='awac'"),
        (offline_ckpt, dict(hidden_dim=64), "hidden_dim=256"),
        (offline_ckpt, dict(beta_hi=6.0), "beta_hi=5.0"),
        (tmp_path / "missing.pt", {}, "no such file"),
        (tmp_path / "junk.pt", {}, "is not an offline checkpoint"),
        (tmp_path / "old.pt", {}, "was made with format='famo2o-offline-v1'"),
    ]:
        run_dir = tmp_path / "bad"
        with pytest.raises(SystemExit) as exc:
            famo2o.main(famo2o.Args(dataset_id=DATASET, load_offline=str(path), run_dir=str(run_dir), **overrides))
        assert exc.value.code == 2 and not run_dir.exists(), (path, overrides)
        assert message in capsys.readouterr().err, (message, overrides)


def test_online_phase_alone(minari_root, tmp_path):
    s = run_algo(SCRIPT, "--dataset-id", DATASET, "--offline-steps", "0", *TINY_RUN[2:], minari_root=minari_root,
                 run_dir=tmp_path / "run")  # fmt: skip
    assert s["offline"] is None and s["offline_gradient_steps"] == 0
    assert [e["step"] for e in s["evaluations"] if e["phase"] == "online"] == [0, 30]
    assert s["online"] is not None and s["online_env_steps"] == s["online_gradient_steps"] == 30
