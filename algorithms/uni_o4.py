"""Uni-O4 (Lei, He, Lu, Hu, Gao, Xu, ICLR 2024) — single-file PyTorch implementation.

Paper: Uni-O4: Unifying Online and Offline Deep RL with Multi-Step On-Policy Optimization,
https://arxiv.org/abs/2311.03351. Official code: https://github.com/Lei-Kun/Uni-O4 (read for facts only).

Offline: IQL values V̂_τ, Q̂_τ (--no-iql: Monte-Carlo V + SARSA Q); ensemble BC of n Gaussian policies (Eq. 6); a
dynamics ensemble, used only for OPE; multi-step PPO-clip of every member against its reference policy π_k with
A = Q̂ − V̂, where π_k ← π only when π's AM-Q (Q̂ along rollouts in the model) strictly beats the best so far.
Online: PPO from the member OPE selects and from V̂. --phases offline | online (PPO from scratch) | offline-online.

    python algorithms/uni_o4.py --dataset-id o2o/pendulum/medium-replay-v0        # CPU budgets
    python algorithms/uni_o4.py paper-hopper-medium-replay --seed 0              # a paper configuration (PAPER_CONFIGS)

Deviations from the paper / official code (every one is deliberate):
- Eq. 6 (`--bc-reg paper`, the default): member i maximises log π_i + α(log π_i − log max_j π_j) at dataset pairs,
  the max over all members, π_i included, the others held fixed: the term is −relu(max_{j≠i} log π_j − log π_i) ≤ 0,
  a bounded reweighting (1 to 1 + α) of the MLE gradient. The official default (max over j ≠ i, detached) is a no-op
  under Adam: `--bc-reg official`; `none` is plain MLE.
- Only terminations cut the bootstrap (official: terminal or timeout); the SARSA target (--no-iql: one Q network with
  a Polyak target) does not bootstrap at an episode's last transition; MC returns run to the episode's end.
- Actions are mapped affinely from the env's Box to [−1, 1]; a zero state std becomes 1 (official: std + 1e-10).
- OPE with common random numbers: the start states and the model noise are the same in every round, so the reference's
  score is exactly the best so far (official: resampled each round). AM-Q averages min(Q̂1, Q̂2) over the model pairs
  visited before termination; a non-finite model state terminates.
- Termination rules for Hopper, Walker2d, HalfCheetah (official termination_fns.py) and Pendulum (never); other envs
  learn a classifier from the data's terminals, or, with none, never terminate (a warning; --termination never).
- Selection by OPE alone. `--select-with-env` is the official top-k by AM-Q then the best real return; its env steps
  are a hidden online budget, reported as `selection_env_steps`.
- One policy parameterisation in both phases: log σ = −5 + 2.5(t + 1) (official online adds a second tanh). Log-probs
  are taken on the raw Gaussian sample; the action is clamped to [−1, 1] for the env (and offline for Q̂).
- With reward scaling, online V is a fresh net (--value-refit-hidden-dim) with a linear output, regressed onto MC
  returns of the scaled dataset rewards (official: 3×256, ReLU output); `dynamic` scaling starts from the dataset's
  statistics. Without scaling V starts from V̂. Online-only runs use the dataset's state statistics too.
- Per-member gradient clipping offline; ε = 0.25·(1 − min(step − 1, 200)/1e4) as official (≈0.245 whatever
  --offline-steps is); learning rates decay linearly to 0 over --offline-steps / --online-steps.
- Evaluation: offline after BC, every --eval-freq improvement steps and at the end (official: every member every 500
  steps); online at env step 0 and after the update of the first rollout ending at or after each due step.
- Paper configs follow the official code where it and the paper disagree (`bc_reg`, `select_with_env`); its 3-episode
  online evaluations and its selection among final rather than accepted policies are not representable.
Warning: AM-Q scores with the Q̂ that drives the improvement, so the gate cannot catch Q̂'s errors; budget the values.
"""

import contextlib
import copy
import json
import math
import os
import random
import socket
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Literal, Optional

import gymnasium as gym
import minari
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]  # the name of this experiment
    seed: int = 1  # seed of the experiment
    torch_deterministic: bool = True  # if toggled, `torch.backends.cudnn.deterministic=True`
    cuda: bool = True  # if toggled, cuda will be used when available (CPU otherwise)
    track: bool = False  # if toggled, this experiment will be tracked with Weights and Biases
    wandb_project_name: str = "o2o"  # the wandb's project name
    wandb_entity: Optional[str] = None  # the entity (team) of wandb's project
    save_model: bool = False  # write offline.pt (every member's π_k, V̂, Q̂, the model, the selection) and online.pt
    load_offline: Optional[str] = None  # an offline.pt to fine-tune (no offline training); its flags must match
    compile: bool = False  # torch.compile the improvement step and the PPO update (CUDA: mode reduce-overhead)
    run_dir: Optional[str] = None  # where logs, checkpoints and summary.json go (default: runs/{run_name})
    dataset_id: str = "o2o/pendulum/medium-replay-v0"  # a local Minari dataset, or a remote one with --download
    download: bool = False  # fetch the dataset from Minari's remote server when it is not on the local disk
    offline_steps: int = 1_000  # improvement (PPO) steps per member; 0 keeps the BC policies (paper: 1e4)
    online_steps: int = 20_000  # online environment steps; 0 skips the online phase (paper: 1e6)
    eval_freq: int = 5_000  # evaluate every this many improvement steps offline, environment steps online
    early_eval_freq: int = 0  # online: also evaluate every this many env steps up to --early-eval-until (0: off)
    early_eval_until: int = 0  # online: env steps over which --early-eval-freq applies
    eval_episodes: int = 10  # number of deterministic evaluation episodes
    eval_stochastic: bool = False  # also evaluate the sampled policy (its own noise): `stochastic_score`
    batch_size: int = 512  # minibatch size of values, BC and offline improvement (paper: 512)
    # ---- Uni-O4 ----
    phases: Literal["offline-online", "offline", "online"] = "offline-online"  # which phases run
    state_norm: bool = True  # normalise states by the dataset mean/std (frozen, also online)
    gamma: float = 0.99  # discount γ
    # values (official critic.py)
    iql: bool = True  # IQL V̂_τ + double Q̂_τ; --no-iql: MC V + SARSA Q with ω-weighted advantages
    value_steps: int = 5_000  # V/Q gradient steps (paper: 2e6; walker2d-medium-replay 5e5)
    value_lr: float = 1e-4  # Adam learning rate of V and Q
    v_hidden_dim: int = 512  # width of V's hidden layers
    v_depth: int = 3  # number of V's hidden layers
    q_hidden_dim: int = 1024  # width of each Q head's hidden layers
    q_depth: int = 2  # number of each Q head's hidden layers
    omega: float = 0.7  # expectile τ of the IQL V step (the ω advantage weight of --no-iql)
    tau: float = 0.005  # Polyak rate of the target Q
    target_update_freq: int = 2  # update the target Q every this many value steps
    # ensemble behaviour cloning (official BC_ensemble.py)
    num_policies: int = 4  # ensemble size n
    bc_steps: int = 5_000  # BC gradient steps (paper: 4e5)
    bc_lr: float = 1e-4  # Adam learning rate of BC
    bc_hidden_dim: int = 256  # width of the policy's hidden layers (the paper's scripts also use 512)
    bc_depth: int = 3  # number of the policy's hidden layers
    pi_activation: Literal["relu", "tanh"] = "relu"  # policy activation (tanh: halfcheetah medium, medium-replay)
    bc_alpha: float = 0.1  # α, weight of the disagreement term of Eq. 6
    bc_reg: Literal["paper", "official", "none"] = "paper"  # Eq. 6's term: the paper's, the official no-op, or none
    # dynamics model for OPE (official transition_model/)
    dyn_members: int = 7  # dynamics ensemble members
    dyn_elites: int = 5  # elite members used in model rollouts
    dyn_hidden_dim: int = 200  # width of the dynamics MLPs
    dyn_depth: int = 4  # number of hidden layers of the dynamics MLPs
    dyn_lr: float = 1e-3  # Adam learning rate of the dynamics model
    dyn_batch_size: int = 256  # dynamics minibatch size
    dyn_patience: int = 5  # stop after this many epochs without a >1% holdout gain of any member
    dyn_max_epochs: Optional[int] = 50  # cap on dynamics epochs (paper: None, early stopping only)
    termination: Literal["auto", "hopper", "walker2d", "halfcheetah", "never", "learned"] = "auto"  # model's rule
    term_steps: int = 2_000  # steps of the learned termination classifier (envs without a rule)
    # offline improvement and OPE (official abppo.py, dynamics_eval.py)
    offline_actor_lr: float = 1e-4  # initial Adam learning rate of the improvement (linear decay to 0)
    clip_ratio: float = 0.25  # ε of offline PPO-clip, decayed by clip_schedule
    clip_decay_steps: int = 200  # steps during which ε decays, then stays frozen (official: 200)
    clip_decay_horizon: int = 10_000  # where ε's line would reach 0 (official: its 1e4 steps, whatever the budget)
    ope_freq: int = 100  # score each member by AM-Q every this many improvement steps
    ope_horizon: int = 50  # model rollout length H of AM-Q (paper: 1000)
    ope_num_states: int = 128  # start states of the AM-Q rollouts (paper: 512)
    select_with_env: bool = False  # official selection: top-k by AM-Q, then the best real return
    select_top_k: int = 3  # k of --select-with-env
    # online PPO (official ppo_finetune/)
    num_steps: int = 2048  # environment steps per PPO rollout
    minibatch_size: int = 128  # PPO minibatch size
    update_epochs: int = 10  # K, PPO epochs per rollout (paper: 5-30 per dataset)
    online_actor_lr: float = 2e-5  # online actor learning rate (linear decay to 0 over --online-steps)
    online_critic_lr: float = 2e-4  # online critic learning rate (linear decay to 0 over --online-steps)
    gae_lambda: float = 0.95  # λ of GAE
    online_clip: float = 0.05  # ε of online PPO-clip and of value clipping
    ent_coef: float = 0.01  # entropy coefficient
    max_grad_norm: float = 0.5  # gradient-norm clip (offline and online)
    reward_scale: Literal["none", "number", "dynamic"] = "none"  # online: none, × factor, ÷ running return std
    reward_scale_factor: float = 0.1  # factor of --reward-scale number
    value_refit_steps: int = 2_000  # steps re-fitting V to scaled MC returns when rewards are scaled (paper: 1e6)
    value_refit_hidden_dim: Optional[int] = None  # width of that V (None: --v-hidden-dim; official scripts: 256)


# ======== ALGO LOGIC: networks. Ensembles stack their members' weights (n, in, out): one baddbmm per layer ========
class VectorizedLinear(nn.Module):
    """n independent linear layers as one batched matmul: x (n, B, in) -> (n, B, out); weight (n, in, out),
    bias (n, 1, out)."""

    def __init__(self, in_features: int, out_features: int, n: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(n, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(n, 1, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """n MLPs; x (n, B, in), or (B, in) shared by the members; `members` runs a subset. Each member gets nn.Linear's
    init, or an orthogonal one (`orthogonal_gain`, zero bias)."""

    def __init__(self, n, in_dim, hidden, depth, out_dim, act: Callable = F.relu, orthogonal_gain=None):
        super().__init__()
        dims = [in_dim] + [hidden] * depth + [out_dim]
        self.layers = nn.ModuleList(VectorizedLinear(i, o, n) for i, o in zip(dims[:-1], dims[1:]))
        self.act, self.n = act, n
        for layer in self.layers:
            for i in range(n):
                if orthogonal_gain is not None:
                    nn.init.orthogonal_(layer.weight.data[i].T, gain=orthogonal_gain)
                    continue
                w = torch.empty(layer.out_features, layer.in_features)
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
                layer.weight.data[i] = w.T
                bound = 1 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.bias.data[i], -bound, bound)

    def forward(self, x, members=None):
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.n if members is None else len(members), -1, -1)
        for i, layer in enumerate(self.layers):
            x = layer(x) if members is None else torch.baddbmm(layer.bias[members], x, layer.weight[members])
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(x; mu, exp(log_std)) summed over the last dim."""
    return (-0.5 * ((x - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


class GaussianPolicyEnsemble(nn.Module):
    """n Gaussian policies. A tanh on the whole output: μ = tanh part (in [−1, 1]); log σ = −5 + 2.5(t + 1),
    t the other tanh part, so log σ ∈ [−5, 0]; π = Normal(μ, σ), unsquashed (official net.py)."""

    def __init__(self, n, obs_dim, act_dim, hidden=256, depth=3, activation="relu"):
        super().__init__()
        act = torch.tanh if activation == "tanh" else F.relu
        self.net = EnsembleMLP(n, obs_dim, hidden, depth, 2 * act_dim, act, orthogonal_gain=1.0)
        self.n, self.act_dim = n, act_dim

    def forward(self, obs):
        mu, t = torch.tanh(self.net(obs)).chunk(2, -1)
        return mu, -5.0 + 2.5 * (t + 1.0)

    def log_prob(self, obs, act):
        mu, log_std = self(obs)
        return gaussian_log_prob(act, mu, log_std)

    def copy_members_from(self, other: "GaussianPolicyEnsemble", mask: torch.Tensor):
        """π_k ← π for the members where mask is True (torch.where: the device never synchronises with the host)."""
        with torch.no_grad():
            for p, q in zip(self.parameters(), other.parameters()):
                p.copy_(torch.where(mask.view(-1, *([1] * (p.dim() - 1))), q, p))

    def extract(self, i: int) -> "GaussianPolicyEnsemble":
        single = copy.deepcopy(self)
        with torch.no_grad():
            for p in single.parameters():
                p.data = p.data[i : i + 1].clone()
        single.n = single.net.n = 1
        return single


class DoubleQ(nn.Module):
    """Q̂1, Q̂2 as a 2-member ensemble on [s, a] (IQL); `heads=1` for the single SARSA Q of --no-iql. Callers take
    the min over the heads, the identity for one head."""

    def __init__(self, obs_dim, act_dim, hidden=1024, depth=2, heads=2):
        super().__init__()
        self.net = EnsembleMLP(heads, obs_dim + act_dim, hidden, depth, 1)

    def forward(self, obs, act):
        return self.net(torch.cat([obs, act], -1)).squeeze(-1)  # (heads, B)


def mlp(in_dim: int, out_dim: int, hidden: int, depth: int = 2) -> nn.Sequential:
    dims = [in_dim] + [hidden] * depth
    layers = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(dims[-1], out_dim))


class ValueNet(nn.Module):
    def __init__(self, obs_dim, hidden=512, depth=3):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, depth)

    def forward(self, obs):
        return self.net(obs).squeeze(-1)


class StateNorm:
    """(s − mean) / std with the dataset's statistics, frozen in both phases."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, device):
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device)

    def __call__(self, obs):
        return (obs - self.mean) / self.std


# ======== ALGO LOGIC: data. The dataset as device tensors (the offline stages sample it); one PPO rollout ========
def state_statistics(obs: np.ndarray, state_norm: bool) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's state mean and std (a zero std replaced by 1); (0, 1) without --state-norm."""
    mean, std = obs.mean(0), obs.std(0)
    std = np.where(std < 1e-12, 1.0, std)
    if not state_norm:
        return np.zeros_like(mean), np.ones_like(std)
    return mean, std


def mc_returns(rewards: np.ndarray, episode_ends: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = r_t + γ·G_{t+1}, the discounted return to the episode's end (`episode_ends` marks each last step)."""
    out, ret = [], 0.0
    for r, end in zip(reversed(rewards.tolist()), reversed(episode_ends.tolist())):
        ret = r + (0.0 if end else gamma * ret)
        out.append(ret)
    return np.array(out[::-1], dtype=rewards.dtype)


def dataset_tensors(data: dict, norm: StateNorm, a_center, a_half, gamma: float, device) -> dict[str, torch.Tensor]:
    """The dataset on the device, keyed like every batch: normalised `obs`/`next_obs`, `act` mapped to [−1, 1],
    `rew`, `term`; and for the SARSA path `ends` (an episode's last transition), `next_act` (a′, unused at
    episode ends) and `mc` (the discounted return to the episode's end)."""

    def to_tensor(x):
        return torch.as_tensor(x, dtype=torch.float32, device=device)

    act = np.clip((data["actions"] - a_center) / a_half, -1, 1)
    return dict(
        obs=norm(to_tensor(data["observations"])),
        act=to_tensor(act),
        rew=to_tensor(data["rewards"]),
        next_obs=norm(to_tensor(data["next_observations"])),
        term=to_tensor(data["terminals"]),
        ends=to_tensor(data["episode_ends"]),
        next_act=to_tensor(np.concatenate([act[1:], act[-1:]])),
        mc=to_tensor(mc_returns(data["rewards"], data["episode_ends"], gamma)),
    )


def sample(data_t: dict, keys, batch_size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A minibatch of `keys`, its indices drawn on the device from `gen`."""
    i = torch.randint(data_t["obs"].shape[0], (batch_size,), generator=gen, device=data_t["obs"].device)
    return {k: data_t[k][i] for k in keys}


class Rollout:
    """One PPO rollout, preallocated: `obs` (normalised), `act` (the raw Gaussian sample), `logp` on the device;
    `rew` (scaled), `next_obs` (raw), `term`, `done` (term or trunc) on the host, where GAE runs."""

    def __init__(self, n: int, obs_dim: int, act_dim: int, device):
        self.obs = torch.empty(n, obs_dim, device=device)
        self.act = torch.empty(n, act_dim, device=device)
        self.logp = torch.empty(n, device=device)
        self.rew = np.empty(n, dtype=np.float32)
        self.next_obs = np.empty((n, obs_dim), dtype=np.float32)
        self.term = np.empty(n, dtype=np.float64)
        self.done = np.empty(n, dtype=np.float64)


# ======== ALGO LOGIC: losses and updates ========
@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float):
    """Polyak averaging θ' ← (1 − τ)·θ' + τ·θ over all parameters, in one fused call."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def value_losses(value, critic, critic_target, batch: dict, args: Args) -> tuple[torch.Tensor, torch.Tensor]:
    """IQL: expectile-τ regression of V̂(s) onto min Q̂_target(s, a), and Q̂(s, a) onto r + γ(1 − term)V̂(s′).
    --no-iql: V regressed onto the MC return, the single SARSA Q onto r + γ(1 − term)Q̂_target(s′, a′), not
    bootstrapped at an episode's last transition (no a′ there). Returns (v_loss, q_loss), Q̂ summed over heads."""
    obs, act, rew, next_obs, term = (batch[k] for k in ("obs", "act", "rew", "next_obs", "term"))
    if args.iql:
        with torch.no_grad():
            q_target = critic_target(obs, act).min(0).values
        u = q_target - value(obs)
        v_loss = (torch.where(u > 0, args.omega, 1 - args.omega) * u**2).mean()
        with torch.no_grad():
            target = rew + args.gamma * (1 - term) * value(next_obs)
    else:
        v_loss = ((value(obs) - batch["mc"]) ** 2).mean()
        with torch.no_grad():
            no_bootstrap = torch.maximum(term, batch["ends"])
            target = rew + args.gamma * (1 - no_bootstrap) * critic_target(next_obs, batch["next_act"]).min(0).values
    q_loss = ((critic(obs, act) - target) ** 2).mean(1).sum()
    return v_loss, q_loss


def bc_loss(pi: GaussianPolicyEnsemble, obs, act, alpha: float, reg: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over members of −J(π_i), J of Eq. 6: log π_i(a|s) + α·(log π_i(a|s) − log max_j π_j(a|s)) at dataset
    pairs, j over the whole ensemble (see the header). Returns (loss, per-member NLL (n,), detached)."""
    mu, log_std = pi(obs)  # (n, B, act_dim)
    logp = gaussian_log_prob(act, mu, log_std)  # (n, B)
    loss = -logp.mean(1)
    if pi.n > 1 and reg != "none" and alpha != 0:
        eye = torch.eye(pi.n, dtype=torch.bool, device=obs.device)[:, :, None]
        others = logp.detach().unsqueeze(0).expand(pi.n, -1, -1).masked_fill(eye, -float("inf"))  # (i, j, B)
        best_other = others.max(1).values  # max_{j≠i} log π_j(a|s), the other members held fixed
        if reg == "official":  # max over j ≠ i, detached: the gradient is −(1+α)∇log π_i, a no-op under Adam
            loss = loss - alpha * (logp - best_other).mean(1)
        else:  # the paper's max includes π_i: log π_i − max(log π_i, best_other) = −relu(best_other − log π_i) ≤ 0
            loss = loss + alpha * F.relu(best_other - logp).mean(1)
    return loss.sum(), -logp.detach().mean(1)


def offline_ppo_loss(pi, pi_ref, critic: DoubleQ, value: ValueNet, obs, noise, clip, iql: bool, omega: float):
    """PPO-clip on dataset states with actions a = μ_k + σ_k·noise from π_k (the reference) and A = min Q̂ − V̂,
    z-scored per member (`noise` ~ N(0, 1) of shape (n, B, act_dim)). Returns (loss summed over members, ratio ρ)."""
    n, batch_size = pi.n, obs.shape[0]
    with torch.no_grad():
        mu_k, log_std_k = pi_ref(obs)
        act = mu_k + log_std_k.exp() * noise  # (n, B, act_dim)
        logp_k = gaussian_log_prob(act, mu_k, log_std_k)
        obs_rep = obs.unsqueeze(0).expand(n, -1, -1).reshape(n * batch_size, -1)
        act_env = act.clamp(-1, 1).reshape(n * batch_size, -1)  # Q̂ never saw actions outside [−1, 1]
        adv = (critic(obs_rep, act_env).min(0).values - value(obs_rep)).view(n, batch_size)
        adv = (adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-10)
        if not iql:
            adv = torch.where(adv > 0, omega * adv, (1 - omega) * adv)
    ratio = (pi.log_prob(obs, act) - logp_k).exp()
    # Policy loss
    pg_loss1 = ratio * adv
    pg_loss2 = ratio.clamp(1 - clip, 1 + clip) * adv
    loss = -torch.min(pg_loss1, pg_loss2).mean(1)
    return loss.sum(), ratio


def clip_grad_norm_per_member(params, max_norm: float):
    """Gradient-norm clipping applied to each member separately (leading dim = member)."""
    params = [p for p in params if p.grad is not None]
    sq = sum(p.grad.pow(2).flatten(1).sum(1) for p in params)
    scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(scale.view(-1, *([1] * (p.dim() - 1))))


def clip_schedule(step: int, args: Args) -> float:
    """ε at improvement step `step` (1-based): linear decay for `clip_decay_steps` steps along the line that reaches 0
    at `clip_decay_horizon`, then frozen (official: freezes at 0.245, whatever --offline-steps is)."""
    return args.clip_ratio * (1 - min(step - 1, args.clip_decay_steps) / args.clip_decay_horizon)


def compile_fn(fn, device: torch.device):
    """torch.compile for --compile: CUDA graphs on a GPU (LeanRL's mode), the default mode on a CPU."""
    return torch.compile(fn, mode="reduce-overhead" if device.type == "cuda" else None)


class UniO4:
    """The offline stages: V̂ (`value`), Q̂ (`critic`) and its Polyak target, the policy ensemble π (`actor`) and the
    reference π_k (`actor_ref`), with their optimisers (Adam over the stacked weights: the members' losses are summed,
    so one Adam equals one per member). Updates take a batch dict and return dicts of detached tensors."""

    def __init__(self, args: Args, obs_dim: int, act_dim: int, device):
        self.args = args
        self.value = ValueNet(obs_dim, args.v_hidden_dim, args.v_depth).to(device)
        heads = 2 if args.iql else 1
        self.critic = DoubleQ(obs_dim, act_dim, args.q_hidden_dim, args.q_depth, heads=heads).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=args.value_lr, fused=True)  # fused: faster
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=args.value_lr, fused=True)
        n, hidden, depth = args.num_policies, args.bc_hidden_dim, args.bc_depth
        self.actor = GaussianPolicyEnsemble(n, obs_dim, act_dim, hidden, depth, args.pi_activation).to(device)
        self.actor_ref = copy.deepcopy(self.actor).requires_grad_(False)  # π_k
        self.bc_opt = torch.optim.Adam(self.actor.parameters(), lr=args.bc_lr, fused=True)
        self.improve_opt = torch.optim.Adam(self.actor.parameters(), lr=args.offline_actor_lr)  # a fresh Adam
        self.improve_loss = compile_fn(offline_ppo_loss, torch.device(device)) if args.compile else offline_ppo_loss

    def value_update(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """One V and one Q update; the Polyak target update every `target_update_freq` steps (`step` 1-based)."""
        v_loss, q_loss = value_losses(self.value, self.critic, self.critic_target, batch, self.args)
        self.value_opt.zero_grad()
        v_loss.backward()
        self.value_opt.step()
        self.critic_opt.zero_grad()
        q_loss.backward()
        self.critic_opt.step()
        if step % self.args.target_update_freq == 0:
            soft_update(self.critic_target, self.critic, self.args.tau)
        return dict(v_loss=v_loss.detach(), q_loss=q_loss.detach())

    def bc_update(self, batch: dict) -> dict[str, torch.Tensor]:
        """One ensemble-BC step, every member on the same minibatch: `bc_loss` summed over members, `nll` (n,)."""
        loss, nll = bc_loss(self.actor, batch["obs"], batch["act"], self.args.bc_alpha, self.args.bc_reg)
        self.bc_opt.zero_grad()
        loss.backward()
        self.bc_opt.step()
        return dict(bc_loss=loss.detach(), nll=nll)

    def improve_update(self, batch: dict, clip: float) -> dict[str, torch.Tensor]:
        """One offline PPO step of every member against π_k (actions' noise from the global generator):
        `policy_loss` summed over members, `ratio_dev` = mean |ρ − 1|."""
        obs = batch["obs"]
        noise = torch.randn(self.actor.n, obs.shape[0], self.actor.act_dim, device=obs.device)
        if self.args.compile:  # a tensor, so that the decaying ε does not recompile the step
            clip = torch.full((), clip, device=obs.device)
        nets = (self.actor, self.actor_ref, self.critic, self.value)
        loss, ratio = self.improve_loss(*nets, obs, noise, clip, self.args.iql, self.args.omega)
        self.improve_opt.zero_grad()
        loss.backward()
        clip_grad_norm_per_member(self.actor.parameters(), self.args.max_grad_norm)
        self.improve_opt.step()
        return dict(policy_loss=loss.detach(), ratio_dev=(ratio.detach() - 1).abs().mean())

    def checkpoint(self, meta: dict, selected: int, dyn, norm: StateNorm, results: dict) -> dict:
        """`offline.pt`: every member's π_k, V̂, Q̂, the dynamics model, the selected member, the state statistics,
        the offline results of summary.json and `meta` (what a load checks)."""
        nets = dict(actor=self.actor_ref, value=self.value, critic=self.critic, dyn=dyn)
        ckpt = dict(
            meta=meta, selected_member=selected, state_mean=norm.mean, state_std=norm.std, offline_results=results
        )
        return ckpt | {k: m.state_dict() for k, m in nets.items()}

    def load_checkpoint(self, ckpt: dict):
        """The saved final policies (as π and π_k), V̂ and Q̂."""
        for module, key in ((self.actor_ref, "actor"), (self.actor, "actor"), (self.value, "value")):
            module.load_state_dict(ckpt[key])
        for module in (self.critic, self.critic_target):
            module.load_state_dict(ckpt["critic"])


def ppo_losses(actor, critic, mb: dict, clip: float, ent_coef: float):
    """Online PPO on a minibatch of the rollout (keys obs, act, logp, adv, ret, v_old): the clipped surrogate with
    an entropy bonus for the actor, the clipped value loss for the critic."""
    mu, log_std = actor(mb["obs"])
    logp = gaussian_log_prob(mb["act"], mu[0], log_std[0])
    ratio = (logp - mb["logp"]).exp()
    entropy = (log_std[0] + 0.5 * math.log(2 * math.pi * math.e)).sum(-1).mean()
    # Policy loss
    adv = mb["adv"]
    pg_loss1 = ratio * adv
    pg_loss2 = ratio.clamp(1 - clip, 1 + clip) * adv
    pg_loss = -torch.min(pg_loss1, pg_loss2).mean()
    actor_loss = pg_loss - ent_coef * entropy
    # Value loss
    v = critic(mb["obs"])
    v_clipped = mb["v_old"] + (v - mb["v_old"]).clamp(-clip, clip)
    v_loss = torch.max((v - mb["ret"]) ** 2, (v_clipped - mb["ret"]) ** 2).mean()
    clipfrac = ((ratio.detach() - 1).abs() > clip).float().mean()
    return actor_loss, v_loss, pg_loss, entropy, clipfrac


class OnlinePPO:
    """The online stage: the actor (one member, from the selected offline policy) and the critic (V̂ or its re-fit),
    with their Adam optimisers (eps 1e-5, learning rates decayed by `anneal`)."""

    def __init__(self, actor: GaussianPolicyEnsemble, critic: ValueNet, args: Args):
        self.actor, self.critic, self.args = actor, critic, args
        self.actor_opt = torch.optim.Adam(actor.parameters(), lr=args.online_actor_lr, eps=1e-5)
        self.critic_opt = torch.optim.Adam(critic.parameters(), lr=args.online_critic_lr, eps=1e-5)
        self.losses = compile_fn(ppo_losses, next(actor.parameters()).device) if args.compile else ppo_losses

    def anneal(self, frac: float):
        self.actor_opt.param_groups[0]["lr"] = self.args.online_actor_lr * frac
        self.critic_opt.param_groups[0]["lr"] = self.args.online_critic_lr * frac

    def ppo_update(self, mb: dict) -> dict[str, torch.Tensor]:
        """One minibatch update of the actor and the critic (disjoint parameters: one backward of the sum), each
        gradient-norm clipped. Returns detached policy_loss, value_loss, entropy, clipfrac."""
        args = self.args
        actor_loss, v_loss, pg_loss, entropy, clipfrac = self.losses(
            self.actor, self.critic, mb, args.online_clip, args.ent_coef
        )
        self.actor_opt.zero_grad()
        self.critic_opt.zero_grad()
        (actor_loss + v_loss).backward()
        nn.utils.clip_grad_norm_(self.actor.parameters(), args.max_grad_norm)
        nn.utils.clip_grad_norm_(self.critic.parameters(), args.max_grad_norm)
        self.actor_opt.step()
        self.critic_opt.step()
        return dict(
            policy_loss=pg_loss.detach(), value_loss=v_loss.detach(), entropy=entropy.detach(), clipfrac=clipfrac
        )


# ======== ALGO LOGIC: the offline stages: values, ensemble BC ========
VALUE_KEYS = ("obs", "act", "rew", "next_obs", "term")
SARSA_KEYS = VALUE_KEYS + ("ends", "next_act", "mc")


def fit_values(agent: UniO4, data_t: dict, args: Args, gen: torch.Generator, log):
    """`value_steps` updates of V̂ and Q̂ on minibatches drawn on the device from `gen`; logged every 1000 steps."""
    keys, t0 = VALUE_KEYS if args.iql else SARSA_KEYS, time.time()
    for step in range(1, args.value_steps + 1):
        batch = sample(data_t, keys, args.batch_size, gen)
        stats = agent.value_update(batch, step)
        if step % 1000 == 0 or step == args.value_steps:  # a logging step: statistics come to the host
            with torch.no_grad():
                v_values = agent.value(batch["obs"]).mean()
            tags = {"losses/v_loss": stats["v_loss"], "losses/q_loss": stats["q_loss"], "values/v_values": v_values}
            log_scalars(log, "offline", step, tags)
    print(f"[offline/values] {args.value_steps} steps in {time.time() - t0:.0f}s", flush=True)


def train_bc(agent: UniO4, data_t: dict, args: Args, gen: torch.Generator, log):
    """`bc_steps` ensemble-BC updates, every member on the same minibatch; logged every 1000 steps."""
    for step in range(1, args.bc_steps + 1):
        stats = agent.bc_update(sample(data_t, ("obs", "act"), args.batch_size, gen))
        if step % 1000 == 0 or step == args.bc_steps:  # each member's minibatch NLL: a collapsing member shows here
            nll = {f"bc/nll_member{m}": v for m, v in enumerate(stats["nll"].tolist())}
            log_scalars(log, "offline", step, {"losses/bc_loss": stats["bc_loss"].item() / agent.actor.n, **nll})


@torch.no_grad()
def bc_nll(pi: GaussianPolicyEnsemble, data_t: dict, seed: int, max_samples: int = 10_000, chunk: int = 2_048):
    """Per-member mean −log π_i(a|s) over `max_samples` dataset pairs drawn without replacement (a generator of its own,
    seeded with `seed`), a tensor (n,)."""
    n_data, device = data_t["obs"].shape[0], data_t["obs"].device
    idx = torch.randperm(n_data, generator=torch.Generator(device=device).manual_seed(seed), device=device)
    idx = idx[:max_samples]
    total = torch.zeros(pi.n, device=device)
    for b in range(0, len(idx), chunk):
        i = idx[b : b + chunk]
        total -= pi.log_prob(data_t["obs"][i], data_t["act"][i]).sum(1)
    return total / len(idx)


# ======== ALGO LOGIC: the OPE gate: dynamics model, termination, AM-Q, the gated multi-step improvement ========
class DynamicsEnsemble(nn.Module):
    """Probabilistic dynamics ensemble (official transition_model/, from OfflineRL-Kit): a Gaussian over [Δs, r]
    with a soft-bounded log-variance; rollouts use the elites."""

    WEIGHT_DECAYS = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)  # per layer, the last for the output layer

    def __init__(self, obs_dim, act_dim, members=7, elites=5, hidden=200, depth=4):
        super().__init__()
        self.obs_dim, self.out_dim = obs_dim, obs_dim + 1
        self.net = EnsembleMLP(members, obs_dim + act_dim, hidden, depth, 2 * self.out_dim, F.silu)
        self.max_logvar = nn.Parameter(torch.full((self.out_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((self.out_dim,), -10.0))
        self.register_buffer("in_mu", torch.zeros(obs_dim + act_dim))
        self.register_buffer("in_std", torch.ones(obs_dim + act_dim))
        self.register_buffer("elites", torch.arange(elites))
        self.members, self.n_elites = members, elites

    def forward(self, x, members=None):
        mean, logvar = self.net((x - self.in_mu) / self.in_std, members).chunk(2, -1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar

    def weight_decay(self):
        decays = list(self.WEIGHT_DECAYS[: len(self.net.layers) - 1]) + [self.WEIGHT_DECAYS[-1]]
        decays += [self.WEIGHT_DECAYS[-2]] * (len(self.net.layers) - len(decays))
        return sum(d * 0.5 * (layer.weight**2).sum() for d, layer in zip(decays, self.net.layers))

    @torch.no_grad()
    def step(self, obs: torch.Tensor, act: torch.Tensor, gen: Optional[torch.Generator] = None):
        """One model step on raw states: every elite predicts, one random elite per sample is used."""
        mean, logvar = self(torch.cat([obs, act], -1), self.elites)
        noise = torch.randn(mean.shape, generator=gen, device=obs.device)
        sample = mean + noise * (0.5 * logvar).exp()
        pick = torch.randint(self.n_elites, (obs.shape[0],), generator=gen, device=obs.device)
        out = sample[pick, torch.arange(obs.shape[0], device=obs.device)]
        return obs + out[:, :-1], out[:, -1]


def dynamics_update(model: DynamicsEnsemble, opt, x, y) -> dict[str, torch.Tensor]:
    """One step on per-member minibatches x (M, B, in), y (M, B, out): Gaussian NLL + weight decay + the
    log-variance bound penalty. Returns the loss, detached."""
    mean, logvar = model(x)
    inv_var = (-logvar).exp()
    nll = (((mean - y) ** 2) * inv_var).mean((1, 2)).sum() + logvar.mean((1, 2)).sum()
    logvar_bound = 0.01 * (model.max_logvar.sum() - model.min_logvar.sum())
    loss = nll + model.weight_decay() + logvar_bound
    opt.zero_grad()
    loss.backward()
    opt.step()
    return dict(dyn_loss=loss.detach())


def train_dynamics(model: DynamicsEnsemble, obs, act, rew, next_obs, args: Args, gen: torch.Generator):
    """Bootstrap per member, holdout min(20%, 1000), stop after `dyn_patience` epochs without a >1% holdout gain of
    any member, keep each member's best weights, elites = lowest holdout MSE. Returns (epochs, elite and per-member
    holdout MSE; the mean holdout MSE of every epoch)."""
    device = obs.device
    x, y = torch.cat([obs, act], -1), torch.cat([next_obs - obs, rew[:, None]], -1)
    perm = torch.randperm(x.shape[0], generator=gen, device=device)
    n_hold = min(int(0.2 * x.shape[0]), 1000)
    hold, train = perm[:n_hold], perm[n_hold:]
    model.in_mu.copy_(x[train].mean(0))
    model.in_std.copy_(torch.where(x[train].std(0) < 1e-12, torch.ones_like(model.in_std), x[train].std(0)))
    opt = torch.optim.Adam(model.parameters(), lr=args.dyn_lr)
    boot = train[torch.randint(len(train), (model.members, len(train)), generator=gen, device=device)]
    best = torch.full((model.members,), float("inf"), device=device)
    best_state = copy.deepcopy(model.net.state_dict())
    since_update, holdout_curve = 0, []
    while True:
        idx = boot[:, torch.randperm(len(train), generator=gen, device=device)]
        for b in range(0, len(train), args.dyn_batch_size):
            bi = idx[:, b : b + args.dyn_batch_size]
            dynamics_update(model, opt, x[bi], y[bi])
        with torch.no_grad():
            mean, _ = model(x[hold].unsqueeze(0).expand(model.members, -1, -1))
            hold_mse = ((mean - y[hold]) ** 2).mean((1, 2))
        improved = hold_mse < 0.99 * best  # a >1% holdout gain
        state = model.net.state_dict()
        for k in best_state:  # per-member snapshot of the improved members
            best_state[k][improved] = state[k][improved].clone()
        best = torch.where(improved, hold_mse, best)
        since_update = 0 if improved.any() else since_update + 1
        holdout_curve.append(float(hold_mse.mean()))
        if since_update >= args.dyn_patience or len(holdout_curve) >= (args.dyn_max_epochs or math.inf):
            break
    model.net.load_state_dict(best_state)
    model.elites.copy_(torch.argsort(best)[: model.n_elites])
    elite_mse = float(best[model.elites].mean())
    info = dict(epochs=len(holdout_curve), elite_holdout_mse=elite_mse, holdout_mse=best.tolist())
    return info, holdout_curve


# Termination rules of model rollouts, on raw next states (official termination_fns.py): not (healthy).
def _term_hopper(s):
    bounded = torch.isfinite(s).all(-1) & (s[:, 1:].abs() < 100).all(-1)
    return ~(bounded & (s[:, 0] > 0.7) & (s[:, 1].abs() < 0.2))


def _term_walker2d(s):
    return ~((s.abs() < 100).all(-1) & (s[:, 0] > 0.8) & (s[:, 0] < 2.0) & (s[:, 1].abs() < 1.0))


def _term_never(s):
    return torch.zeros(s.shape[0], dtype=torch.bool, device=s.device)


TERMINATION_RULES = dict(hopper=_term_hopper, walker2d=_term_walker2d, halfcheetah=lambda s: ~(s.abs() < 100).all(-1))
NEVER_TERMINATES = ("pendulum",)


def select_termination(env_id: str, terminals: np.ndarray, choice: str = "auto") -> tuple[str, str]:
    """-> (rule name, reason). Raises DatasetError for `learned` without any terminal in the data; warns when an
    unknown env's data has no terminations (then the model never terminates)."""
    name = env_id.split("/")[-1].lower()
    if choice == "learned" and not terminals.any():
        raise DatasetError("--termination learned needs terminal transitions, and the dataset has none")
    if choice != "auto":
        return choice, f"--termination {choice}"
    rule = next((key for key in TERMINATION_RULES if name.startswith(key)), None)
    if rule is not None:
        return rule, f"rule for {env_id}"
    if name.startswith(NEVER_TERMINATES):
        return "never", f"{env_id} never terminates"
    if terminals.any():
        return "learned", f"no rule for {env_id}: classifier learned from {int(terminals.sum())} terminals"
    warn(
        f"no termination rule for env '{env_id}' and no terminal transition in the dataset: model rollouts of AM-Q "
        "will assume the env never terminates. If it can terminate, AM-Q is biased; pass --termination never to "
        "accept this and silence the warning."
    )
    return "never", f"no rule for {env_id} and no terminals in the data: assumed never terminates"


class LearnedTermination(nn.Module):
    """P(terminal | s') classifier for envs without a hand-written rule."""

    def __init__(self, obs_dim, hidden=200):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, 2)
        self.register_buffer("mu", torch.zeros(obs_dim))
        self.register_buffer("std", torch.ones(obs_dim))

    def forward(self, s):
        return self.net((s - self.mu) / self.std).squeeze(-1)

    @torch.no_grad()
    def __call__(self, s):
        return super().__call__(s) > 0

    def fit(self, next_obs, term, steps, batch_size, gen: torch.Generator) -> float:
        self.mu.copy_(next_obs.mean(0))
        self.std.copy_(next_obs.std(0).clamp_min(1e-6))
        pos_weight = ((1 - term).sum() / term.sum().clamp_min(1)).clamp(1, 100)
        opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        for _ in range(steps):
            i = torch.randint(len(next_obs), (batch_size,), generator=gen, device=next_obs.device)
            loss = F.binary_cross_entropy_with_logits(self.forward(next_obs[i]), term[i], pos_weight=pos_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss)


def fit_model(data: dict, data_t: dict, termination: tuple[str, str], args: Args, gen, log):
    """The dynamics ensemble on raw states and the termination rule (`termination`: its name and why) of the model
    rollouts. Returns (model, termination function, summary of the fit, the rule's description)."""
    obs_dim, act_dim, device = data_t["obs"].shape[1], data_t["act"].shape[1], data_t["obs"].device
    sizes = (args.dyn_members, args.dyn_elites, args.dyn_hidden_dim, args.dyn_depth)
    dyn = DynamicsEnsemble(obs_dim, act_dim, *sizes).to(device)
    obs, next_obs = (torch.as_tensor(data[k], device=device) for k in ("observations", "next_observations"))
    info, holdout_curve = train_dynamics(dyn, obs, data_t["act"], data_t["rew"], next_obs, args, gen)
    for epoch, mse in enumerate(holdout_curve, 1):
        log.scalar("offline", "dynamics/holdout_mse", mse, epoch)
    rule, reason = termination
    term_fn = TERMINATION_RULES.get(rule, _term_never)
    if rule == "learned":
        term_fn = LearnedTermination(obs_dim).to(device)
        reason += f" (final BCE {term_fn.fit(next_obs, data_t['term'], args.term_steps, args.batch_size, gen):.4f})"
    fit = f"{info['epochs']} epochs, elite holdout MSE {info['elite_holdout_mse']:.5f}"
    print(f"[offline/dynamics] {fit}; termination: {rule}: {reason}", flush=True)
    return dyn, term_fn, info, f"{rule}: {reason}"


class AMQGate:
    """The OPE gate. AM-Q of each member: the mean min(Q̂1, Q̂2) over the pairs its deterministic policy visits in the
    model before termination, from raw start states `s0`, with the same model noise in every round (`seed`: common
    random numbers). `best`: the AM-Q of each member's reference π_k, the best so far."""

    def __init__(self, dyn, term_fn, critic, norm: StateNorm, s0: torch.Tensor, horizon: int, seed: int):
        self.dyn, self.term_fn, self.critic, self.norm, self.s0 = dyn, term_fn, critic, norm, s0
        self.horizon, self.seed, self.best = horizon, seed, None

    @torch.no_grad()
    def am_q(self, pi: GaussianPolicyEnsemble) -> torch.Tensor:
        n, batch_size = pi.n, self.s0.shape[0]
        gen = torch.Generator(device=self.s0.device).manual_seed(self.seed)
        s = self.s0.unsqueeze(0).expand(n, -1, -1).reshape(n * batch_size, -1)
        alive = torch.ones(n * batch_size, dtype=torch.bool, device=s.device)
        total, count = torch.zeros(n * batch_size, device=s.device), torch.zeros(n * batch_size, device=s.device)
        for _ in range(self.horizon):  # no early exit once all are dead: testing it would synchronise the device
            obs = self.norm(s)
            act = pi(obs.view(n, batch_size, -1))[0].clamp(-1, 1).reshape(n * batch_size, -1)
            total += torch.where(alive, self.critic(obs, act).min(0).values, 0.0)  # not ×alive: inf·0 = NaN
            count += alive.float()
            s, _ = self.dyn.step(s, act, gen)
            bad = ~torch.isfinite(s).all(-1)
            s = torch.where(bad[:, None], torch.zeros_like(s), s)
            alive &= ~(self.term_fn(s) | bad)
        return total.view(n, batch_size).sum(1) / count.view(n, batch_size).sum(1)

    def accept(self, pi: GaussianPolicyEnsemble, pi_ref: GaussianPolicyEnsemble) -> tuple[torch.Tensor, torch.Tensor]:
        """π_k ← π for the members whose AM-Q strictly beats the best so far. Returns (AM-Q of π, accepted)."""
        scores = self.am_q(pi)
        accepted = scores > self.best
        pi_ref.copy_members_from(pi, accepted)
        self.best = torch.where(accepted, scores, self.best)
        return scores, accepted


def improve_offline(agent: UniO4, gate: AMQGate, data_t: dict, args: Args, gen, log, run_eval: Callable):
    """The multi-step improvement: `offline_steps` PPO-clip steps of every member against its reference π_k, and every
    `ope_freq` steps (and at the last) an OPE round of the gate. Real evaluations of the best member every
    `eval_freq` steps. Returns the accepted rounds of each member and their steps."""
    n = agent.actor.n
    accepts, accept_steps = np.zeros(n, dtype=int), [[] for _ in range(n)]
    t0 = time.time()
    for step in range(1, args.offline_steps + 1):
        agent.improve_opt.param_groups[0]["lr"] = args.offline_actor_lr * (1 - (step - 1) / args.offline_steps)
        clip = clip_schedule(step, args)
        stats = agent.improve_update(sample(data_t, ("obs",), args.batch_size, gen), clip)
        if step % 100 == 0:
            tags = {"losses/policy_loss": stats["policy_loss"].item() / n, "losses/ratio_dev": stats["ratio_dev"]}
            tags.update({"charts/clip_ratio": clip, "charts/SPS": step / (time.time() - t0)})
            log_scalars(log, "offline", step, tags)
        if step % args.ope_freq == 0 or step == args.offline_steps:
            scores, accepted = gate.accept(agent.actor, agent.actor_ref)
            scores, accepted = scores.tolist(), [int(a) for a in accepted.tolist()]  # to the host once per round
            for m, ok in enumerate(accepted):
                accepts[m], accept_steps[m] = accepts[m] + ok, accept_steps[m] + [step] * ok
                log_scalars(log, "offline", step, {f"ope/amq_member{m}": scores[m], f"ope/accept_member{m}": ok})
            print(f"[offline/ope] step {step}: AM-Q {[round(x, 2) for x in scores]} accept {accepted}", flush=True)
        if step % args.eval_freq == 0 and step != args.offline_steps:
            run_eval(agent.actor_ref, int(gate.best.argmax()), "offline", step)
    return accepts, accept_steps


# ======== ALGO LOGIC: the online stage (PPO): reward scaling, value re-fit, rollout, GAE, minibatch epochs ========
class RunningReturnStd:
    """÷ running std of the discounted return (dynamic reward scaling), reset at episode starts."""

    def __init__(self, gamma):
        self.gamma, self.ret, self.n, self.mean, self.m2 = gamma, 0.0, 0, 0.0, 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n > 1 else 1.0

    def __call__(self, r: float, episode_start: bool) -> float:
        self.ret = r + (0.0 if episode_start else self.gamma * self.ret)
        self.n += 1
        d = self.ret - self.mean
        self.mean += d / self.n
        self.m2 += d * (self.ret - self.mean)
        return r / (self.std + 1e-8)

    def warm_up(self, rewards: np.ndarray, episode_ends: np.ndarray):
        """Run the statistics over every dataset reward in order (episodes delimited by `episode_ends`)."""
        episode_start = True
        for r, end in zip(rewards.tolist(), episode_ends.tolist()):
            self(r, episode_start)
            episode_start = end


def make_reward_scale(args: Args, data: dict) -> Optional[Callable[[float, bool], float]]:
    """r ↦ scaled r for --reward-scale (None: unscaled); `dynamic` starts from the whole dataset's statistics."""
    if args.reward_scale == "number":
        return lambda r, episode_start: r * args.reward_scale_factor
    if args.reward_scale == "dynamic":
        scale_fn = RunningReturnStd(args.gamma)
        scale_fn.warm_up(data["rewards"], data["episode_ends"])
        return scale_fn
    return None


def refit_value(critic: ValueNet, obs: torch.Tensor, returns: torch.Tensor, args: Args, gen) -> dict:
    """`value_refit_steps` Adam steps regressing the fresh online V onto the scaled MC returns."""
    opt = torch.optim.Adam(critic.parameters(), lr=args.value_lr)
    loss = torch.zeros(())
    for _ in range(args.value_refit_steps):
        i = torch.randint(returns.shape[0], (args.batch_size,), generator=gen, device=returns.device)
        # Value loss
        loss = ((critic(obs[i]) - returns[i]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return dict(refit_loss=loss.detach())


def online_critic(value: Optional[ValueNet], scale_fn, data: dict, data_t: dict, args: Args, gen) -> ValueNet:
    """The critic fine-tuning starts from: V̂ when rewards are unscaled; with scaled rewards a fresh V re-fit to MC
    returns of the dataset rewards × reward_scale_factor (`number`) or ÷ the std of the warmed-up `scale_fn`
    (`dynamic`: the scale the online rewards start with); online-only, a fresh V."""
    obs_dim, device = data_t["obs"].shape[1], data_t["obs"].device
    if value is None:
        return ValueNet(obs_dim, args.v_hidden_dim, args.v_depth).to(device)
    if scale_fn is None:
        return value
    critic = ValueNet(obs_dim, args.value_refit_hidden_dim or args.v_hidden_dim, args.v_depth).to(device)
    if args.reward_scale == "number":
        rewards = data["rewards"] * args.reward_scale_factor
    else:
        rewards = data["rewards"] / (scale_fn.std + 1e-8)
    returns = mc_returns(rewards.astype(np.float32), data["episode_ends"], args.gamma)
    refit_value(critic, data_t["obs"], torch.as_tensor(returns, dtype=torch.float32, device=device), args, gen)
    return critic


def gae(rewards, values, next_values, terminated, dones, gamma: float, lam: float):
    """GAE: bootstrapping is cut only by `terminated`; the recursion is reset at every episode end (`dones`,
    time limits included), where V(s') of the truncated state still bootstraps δ."""
    adv = np.zeros_like(rewards)
    last = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        delta = rewards[t] + gamma * (1 - terminated[t]) * next_values[t] - values[t]
        last = delta + gamma * lam * (1 - dones[t]) * last
        adv[t] = last
    return adv


def collect_rollout(env, actor, norm: StateNorm, env_state: dict, n_rollout: int, act_map, scale_fn, log) -> Rollout:
    """`n_rollout` env steps with the stochastic actor. `env_state` (obs, ep_ret, ep_len, episode_start, step)
    carries across rollouts; finished episodes are logged. One device→host copy per step, for the action."""
    a_center, a_half = act_map
    device = next(actor.parameters()).device
    rollout = Rollout(n_rollout, env_state["obs"].size, actor.act_dim, device)
    for t in range(n_rollout):
        obs = norm(torch.as_tensor(env_state["obs"], dtype=torch.float32, device=device).reshape(1, -1))
        with torch.no_grad():
            mu, log_std = actor(obs)
            act = (mu + log_std.exp() * torch.randn_like(mu))[0, 0]
            logp = gaussian_log_prob(act, mu[0, 0], log_std[0, 0])
        next_obs, rew, term, trunc, _ = env.step(a_center + a_half * act.clamp(-1, 1).cpu().numpy())
        env_state["step"] += 1
        env_state["ep_ret"], env_state["ep_len"] = env_state["ep_ret"] + float(rew), env_state["ep_len"] + 1
        rew_used = float(rew) if scale_fn is None else scale_fn(float(rew), env_state["episode_start"])
        env_state["episode_start"] = False
        rollout.obs[t], rollout.act[t], rollout.logp[t] = obs[0], act, logp
        rollout.rew[t], rollout.next_obs[t] = rew_used, next_obs
        rollout.term[t], rollout.done[t] = float(term), float(term or trunc)
        if term or trunc:
            log.scalar("online", "charts/episodic_return", env_state["ep_ret"], env_state["step"])
            log.scalar("online", "charts/episodic_length", env_state["ep_len"], env_state["step"])
            env_state.update(obs=env.reset()[0], ep_ret=0.0, ep_len=0, episode_start=True)
        else:
            env_state["obs"] = next_obs
    return rollout


def ppo_epochs(ppo: OnlinePPO, rollout: Rollout, norm: StateNorm, args: Args, gen) -> tuple[dict, int]:
    """GAE on the rollout, then `update_epochs` epochs of minibatch updates. Returns the means of each statistic
    over every minibatch (detached tensors) and the number of minibatch updates."""
    n_rollout, device = rollout.obs.shape[0], rollout.obs.device
    b_next_obs = norm(torch.as_tensor(rollout.next_obs, dtype=torch.float32, device=device))
    with torch.no_grad():
        values, next_values = ppo.critic(rollout.obs).cpu().numpy(), ppo.critic(b_next_obs).cpu().numpy()
    adv = gae(rollout.rew, values, next_values, rollout.term, rollout.done, args.gamma, args.gae_lambda)
    b_returns = torch.as_tensor(adv + values, dtype=torch.float32, device=device)
    b_adv = torch.as_tensor(adv, dtype=torch.float32, device=device)
    if n_rollout > 1:
        b_adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-5)
    b_values = torch.as_tensor(values, dtype=torch.float32, device=device)
    batch = dict(obs=rollout.obs, act=rollout.act, logp=rollout.logp, adv=b_adv, ret=b_returns, v_old=b_values)
    totals: dict[str, torch.Tensor] = {}
    n_updates = 0
    for _ in range(args.update_epochs):
        perm = torch.randperm(n_rollout, generator=gen, device=device)
        for start in range(0, n_rollout, args.minibatch_size):
            mb_inds = perm[start : start + args.minibatch_size]
            stats = ppo.ppo_update({k: v[mb_inds] for k, v in batch.items()})
            totals = {k: totals.get(k, 0) + v for k, v in stats.items()}
            n_updates += 1
    return {k: v / n_updates for k, v in totals.items()}, n_updates


def online_eval_due(args: Args, lo: int, hi: int) -> bool:
    """Whether an online evaluation fell due at an env step t in (lo, hi]: t % eval_freq == 0, or an early step
    (t <= early_eval_until and t % early_eval_freq == 0). Asked after each rollout's update (hi: env steps so far,
    lo: at the previous rollout's end), so a due step is evaluated at the first rollout end at or after it."""
    if (lo // args.eval_freq + 1) * args.eval_freq <= hi:
        return True
    if args.early_eval_freq > 0:
        first_early = (lo // args.early_eval_freq + 1) * args.early_eval_freq
        return first_early <= min(hi, args.early_eval_until)
    return False


# ======== ALGO LOGIC: main: offline (values, BC, dynamics, gated improvement, selection), then online PPO ========
def main(args: Args) -> dict:
    validate(args)
    try:  # data, environment and checkpoint checks happen before the run directory exists
        dataset = load_minari_dataset(args.dataset_id, args.download)
        data = dataset_to_transitions(dataset)
        eval_env = make_eval_env(dataset)
        space = eval_env.action_space
        if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            raise DatasetError(f"action space {space} is unbounded; Uni-O4's tanh-mean policy needs bounds")
        env_id = dataset.env_spec.id if dataset.env_spec is not None else ""
        obs_dim, act_dim = data["observations"].shape[1], data["actions"].shape[1]
        termination = (args.termination, "")
        if args.phases != "online" and args.load_offline is None:
            termination = select_termination(env_id, data["terminals"], args.termination)
        meta = offline_meta(args, env_id, obs_dim, act_dim)
        state_stats = state_statistics(data["observations"], args.state_norm)
        ckpt = load_offline_checkpoint(args.load_offline, meta) if args.load_offline else None
        if ckpt is not None:
            check_saved_statistics(ckpt, state_stats, args)
    except DatasetError as e:
        fail(str(e))
    run_name = f"{args.dataset_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = args.run_dir or os.path.join("runs", run_name)
    if args.track:
        import wandb

        wandb_cfg = dict(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True)
        wandb.init(**wandb_cfg, config=vars(args), name=run_name, save_code=True)
    seed_everything(args.seed, args.torch_deterministic)
    rng = np.random.default_rng(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    log = RunLogger(args, run_dir)
    act_map = (((space.high + space.low) / 2).astype(np.float32), ((space.high - space.low) / 2).astype(np.float32))
    norm = StateNorm(*state_stats, device)
    data_t = dataset_tensors(data, norm, *act_map, args.gamma, device)
    gen = torch.Generator(device=device).manual_seed(args.seed)  # minibatch indices are drawn on the device

    def run_eval(pi, member: int, phase: str = "", step: int = 0, returns=None, seed_offset: int = 10_000):
        """Member `member`'s real returns (`returns`: already measured), its score (normalized, else the mean
        return) and the env steps spent; with a `phase`, one point of that curve (--eval-stochastic: and the
        sampled policy's score)."""
        policy, steps = (pi, member, eval_env, norm, act_map, args.eval_episodes, args.seed + seed_offset), 0
        if returns is None:
            with log.timer("eval"):
                returns, steps = evaluate_policy(*policy)
        score = normalized_score(dataset, float(returns.mean()))
        if phase:
            extra = {}
            if args.eval_stochastic:
                with log.timer("eval"):
                    stochastic, _ = evaluate_policy(*policy, noise=np.random.default_rng(args.seed + seed_offset))
                mean = float(stochastic.mean())
                extra = dict(stochastic_return=mean, stochastic_score=normalized_score(dataset, mean))
                log_scalars(log, phase, step, {f"eval/{k}": v for k, v in extra.items() if v is not None})
            log.eval(phase, step, returns, score, **extra)
        return returns, score if score is not None else float(returns.mean()), steps

    # the initial actor of --phases online, drawn first in every run, so every run draws its weights in one order
    actor = GaussianPolicyEnsemble(1, obs_dim, act_dim, args.bc_hidden_dim, args.bc_depth, args.pi_activation)
    actor, value = actor.to(device), None
    results = dict(termination_rule=None, selection_env_steps=0, offline_gradient_steps=0, diagnostics={})
    if ckpt is not None or args.phases != "online":
        agent = UniO4(args, obs_dim, act_dim, device)
        if ckpt is not None:
            agent.load_checkpoint(ckpt)
            sel = int(ckpt["selected_member"])
            print(f"[offline] loaded {args.load_offline} (selected member {sel}): no offline training", flush=True)
            run_eval(agent.actor_ref, sel, "offline", args.offline_steps)
            results.update(ckpt["offline_results"], offline_loaded_from=args.load_offline)
        else:
            sel, dyn, offline_results = train_offline(
                agent, args, data, data_t, norm, termination, log, gen, rng, run_eval
            )
            results.update(offline_results)
            if args.save_model:
                torch.save(agent.checkpoint(meta, sel, dyn, norm, results), os.path.join(run_dir, "offline.pt"))
        actor, value = agent.actor_ref.extract(sel).requires_grad_(True), agent.value

    online_steps = args.online_steps if args.phases != "offline" else 0
    online_grad_steps = 0
    if online_steps > 0:
        online_grad_steps = train_online(actor, value, args, dataset, data, data_t, norm, act_map, log, gen, run_eval)
    summary = log.summary(online_env_steps=online_steps, online_gradient_steps=online_grad_steps, **results)
    stage_times = {k: round(v, 1) for k, v in summary["stage_times"].items()}
    print(f"summary: offline {summary['offline']} | online {summary['online']} | stage times {stage_times}", flush=True)
    return summary


def train_offline(agent: UniO4, args: Args, data, data_t, norm, termination, log, gen, rng, run_eval: Callable):
    """Values, ensemble BC, the dynamics model, the AM-Q-gated improvement, the selection. Returns (selected member,
    dynamics model, the offline results of summary.json); the final policies are agent.actor_ref's members."""
    with log.timer("values"):
        fit_values(agent, data_t, args, gen, log)
    with log.timer("bc"):
        train_bc(agent, data_t, args, gen, log)
        bc_member_nll = bc_nll(agent.actor, data_t, args.seed).tolist()
    print(f"[offline/bc] {args.bc_steps} steps; member NLL {[round(x, 3) for x in bc_member_nll]}", flush=True)
    with log.timer("dynamics"):
        dyn, term_fn, dyn_info, term_rule = fit_model(data, data_t, termination, args, gen, log)

    with log.timer("improvement"):
        s0 = data["observations"][rng.integers(0, len(data_t["obs"]), args.ope_num_states)]  # raw start states
        s0 = torch.as_tensor(s0, device=data_t["obs"].device)
        gate = AMQGate(dyn, term_fn, agent.critic, norm, s0, args.ope_horizon, seed=int(rng.integers(1 << 31)))
        agent.actor_ref.load_state_dict(agent.actor.state_dict())  # π_k ← the BC policy
        bc_amq = gate.best = gate.am_q(agent.actor_ref)
        log_scalars(log, "offline", 0, {f"ope/amq_member{m}": x for m, x in enumerate(bc_amq.tolist())})
        bc_member = int(bc_amq.argmax())
        bc = evaluate_members(agent.actor_ref, run_eval, log, 0)
        run_eval(agent.actor_ref, bc_member, "offline", 0, returns=bc[bc_member][0])
        accepts, accept_steps = improve_offline(agent, gate, data_t, args, gen, log, run_eval)

    with log.timer("offline_eval"):  # selection and the final offline evaluation
        sel, selection_env_steps = int(gate.best.argmax()), 0
        if args.select_with_env:  # official: the top k by AM-Q, then the best real return (a hidden online budget)
            top = torch.argsort(gate.best, descending=True)[: args.select_top_k].tolist()
            tried = [run_eval(agent.actor_ref, m, seed_offset=20_000) for m in top]
            sel, selection_env_steps = top[int(np.argmax([t[0].mean() for t in tried]))], sum(t[2] for t in tried)
            print(f"[offline] --select-with-env spent {selection_env_steps} real env steps choosing member {sel}")
        final = bc
        if args.offline_steps > 0 or sel != bc_member:  # else nothing changed since the evaluation after BC
            final = evaluate_members(agent.actor_ref, run_eval, log, args.offline_steps)
            run_eval(agent.actor_ref, sel, "offline", args.offline_steps, returns=final[sel][0])
    gate_log = dict(bc_amq=bc_amq, final_amq=gate.best, accepts=accepts, accept_steps=accept_steps)
    results = offline_summary(args, bc, final, bc_member, sel, bc_member_nll, **gate_log)
    results.update(termination_rule=term_rule, selection_env_steps=selection_env_steps, dynamics=dyn_info)
    return sel, dyn, results


def train_online(actor, value, args: Args, dataset, data, data_t, norm, act_map, log, gen, run_eval: Callable) -> int:
    """PPO fine-tuning of `actor` (one member) for --online-steps env steps, the critic from `value` (V̂, None: a fresh
    V); evaluations at step 0 and when due. Returns the number of minibatch updates."""
    with log.timer("online_setup"):
        scale_fn = make_reward_scale(args, data)
        critic = online_critic(value, scale_fn, data, data_t, args, gen)
    ppo = OnlinePPO(actor, critic, args)
    run_eval(actor, 0, "online", 0)  # the curve starts at the policy fine-tuning starts from
    env = dataset.recover_environment()
    if not isinstance(env.observation_space, gym.spaces.Box):
        env = gym.wrappers.FlattenObservation(env)
    env_state = dict(obs=env.reset(seed=args.seed)[0], ep_ret=0.0, ep_len=0, episode_start=True, step=0)
    start_time, grad_steps = time.time(), 0
    while env_state["step"] < args.online_steps:
        with log.timer("online"):
            rollout_start = env_state["step"]
            ppo.anneal(1 - rollout_start / args.online_steps)
            n_rollout = min(args.num_steps, args.online_steps - rollout_start)
            rollout = collect_rollout(env, actor, norm, env_state, n_rollout, act_map, scale_fn, log)
            stats, n_updates = ppo_epochs(ppo, rollout, norm, args, gen)
            grad_steps, step = grad_steps + n_updates, env_state["step"]
            # means over every minibatch of the update (all epochs), brought to the host once per rollout
            tags = {f"losses/{k}": v for k, v in zip(stats, torch.stack(list(stats.values())).tolist())}
            log_scalars(log, "online", step, {**tags, "charts/SPS": step / (time.time() - start_time)})
        if online_eval_due(args, rollout_start, step) or step == args.online_steps:
            run_eval(actor, 0, "online", step)  # after the update, at the rollout's end
    if args.save_model:  # the fine-tuned policy, with the frozen state statistics it acts on
        ckpt = dict(actor=actor.state_dict(), critic=critic.state_dict(), state_mean=norm.mean, state_std=norm.std)
        torch.save(ckpt, os.path.join(log.run_dir, "online.pt"))
    return grad_steps


@torch.no_grad()
def evaluate_policy(pi, member: int, env, norm: StateNorm, act_map, episodes: int, seed: int, noise=None):
    """Returns of `episodes` episodes of member `member`'s clamped mean action (the paper's evaluation), or, given a
    numpy Generator `noise`, of a clamped sample of its Gaussian; and the env steps they took."""
    steps = 0

    def act(obs):
        nonlocal steps
        steps += 1
        mu, log_std = pi(norm(torch.as_tensor(obs, dtype=torch.float32, device=norm.mean.device).reshape(1, -1)))
        a = mu[member, 0]
        if noise is not None:
            eps = torch.as_tensor(noise.standard_normal(a.shape[-1]), dtype=a.dtype, device=a.device)
            a = a + log_std[member, 0].exp() * eps
        return act_map[0] + act_map[1] * a.clamp(-1, 1).cpu().numpy()

    return evaluate(env, act, episodes, seed), steps


def evaluate_members(pi, run_eval: Callable, log, step: int) -> list:
    """run_eval of every member of `pi`: (returns, score, env steps) each; their mean returns logged at `step`."""
    out = [run_eval(pi, m) for m in range(pi.n)]
    log_scalars(log, "offline", step, {f"eval/member{m}_return": float(r[0].mean()) for m, r in enumerate(out)})
    return out


def log_scalars(log, phase: str, step: int, tags: dict):
    for tag, value in tags.items():
        log.scalar(phase, tag, float(value), step)


def offline_summary(args, bc, final, bc_member, sel, bc_member_nll, bc_amq, final_amq, accepts, accept_steps) -> dict:
    """summary.json's offline results: `bc`, `final`: run_eval of every member after BC and at the end."""
    bc_scores, final_scores, final_amq = [float(r[1]) for r in bc], [float(r[1]) for r in final], final_amq.tolist()
    diagnostics = dict(
        bc_member_scores=bc_scores,
        bc_member_nll=bc_member_nll,
        accepted_rounds=int(accepts.sum()),
        accepted_rounds_per_member=accepts.tolist(),
        accepted_round_steps=accept_steps,
        ope_rounds=math.ceil(args.offline_steps / args.ope_freq),
        final_amq_member=final_amq,
        final_score_member=final_scores,
        selected_member=sel,
        selected_final_amq=final_amq[sel],
        selected_final_score=final_scores[sel],
    )
    scores = dict(bc_score=bc_scores[bc_member], improved_score=final_scores[sel], bc_amq=bc_amq.tolist())
    steps = dict(offline_gradient_steps=args.offline_steps)
    return dict(**scores, bc_member=bc_member, selected_member=sel, **steps, diagnostics=diagnostics)


# ======== Per-file setup (not algorithm logic): flag checks, offline checkpoint, paper configurations ========
def validate(args: Args):
    positive = "eval_freq eval_episodes batch_size num_policies ope_freq ope_horizon ope_num_states num_steps "
    positive += "minibatch_size update_epochs dyn_members dyn_batch_size select_top_k clip_decay_horizon"
    checks = [(getattr(args, k) <= 0, f"--{k.replace('_', '-')} must be > 0") for k in positive.split()]
    checks += [
        (args.dyn_elites > args.dyn_members, f"--dyn-elites ({args.dyn_elites}) cannot exceed --dyn-members"),
        (not 0 < args.omega < 1 or not 0 < args.gamma <= 1, "--omega must be in (0, 1) and --gamma in (0, 1]"),
        (args.phases == "online" and args.online_steps <= 0, "--phases online needs --online-steps > 0"),
        (args.early_eval_freq > 0 and args.early_eval_until <= 0, "--early-eval-freq > 0 needs --early-eval-until > 0"),
        (args.clip_decay_steps > args.clip_decay_horizon, "--clip-decay-steps > --clip-decay-horizon: ε would be < 0"),
        (
            args.load_offline is not None and args.phases != "offline-online",
            f"--load-offline fine-tunes a saved offline phase: it needs --phases offline-online, got {args.phases}",
        ),
    ]
    check_flags(checks)


# The flags the saved offline models were built or trained with: a run loading them must have the same values. Not
# checked: the seed (several seeds may fine-tune one offline phase), the evaluation, logging and online flags.
OFFLINE_FLAGS = (
    "state_norm gamma batch_size max_grad_norm iql value_steps value_lr v_hidden_dim v_depth q_hidden_dim q_depth "
    "omega tau target_update_freq num_policies bc_steps bc_lr bc_hidden_dim bc_depth pi_activation bc_alpha bc_reg "
    "dyn_members dyn_elites dyn_hidden_dim dyn_depth dyn_lr dyn_batch_size dyn_patience dyn_max_epochs termination "
    "term_steps offline_steps offline_actor_lr clip_ratio clip_decay_steps clip_decay_horizon ope_freq ope_horizon "
    "ope_num_states select_with_env select_top_k"
).split()


def offline_meta(args: Args, env_id: str, obs_dim: int, act_dim: int) -> dict:
    shapes = dict(env_id=env_id, dataset_id=args.dataset_id, obs_dim=obs_dim, act_dim=act_dim)
    return dict(format="uni_o4-offline-v2", **shapes, **{k: getattr(args, k) for k in OFFLINE_FLAGS})


def check_saved_statistics(ckpt: dict, state_stats: tuple[np.ndarray, np.ndarray], args: Args):
    """The state statistics a loaded offline phase was trained with must be this dataset's (DatasetError otherwise)."""
    saved = (ckpt["state_mean"].numpy(), ckpt["state_std"].numpy())
    if not all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(saved, state_stats)):
        raise DatasetError(
            f"--load-offline: the state statistics of '{args.dataset_id}' differ from those '{args.load_offline}' was "
            "trained with (other data, or the dataset was rebuilt since); train the offline phase again"
        )


# Paper configurations: `python algorithms/uni_o4.py paper-<env>-<quality> [--flag value ...]`, the D4RL locomotion rows
# of the paper (no random datasets; here our local rebuilds, benchmark/make_datasets.py). Sources in
# github.com/Lei-Kun/Uni-O4: offline main.py (run by scripts/mujoco_loco/<task>.sh), online ppo_finetune/main.py
# (ppo_finetune/scripts/mujoco_loco/<task>.sh); the model's transition_model/configs/gym/default.py. Where a script
# sweeps a value, the first; where the repository holds two versions of a fine-tuning script, the one at 6e28311 (the
# walker2d ones at HEAD are invalid bash).
_PAPER_COMMON = {
    # main.py: bppo_steps 1e4; ppo_finetune/main.py: max_train_steps 1e6, evaluate_freq 5e3 (our 10 episodes: Table 1's)
    **dict(offline_steps=10_000, online_steps=1_000_000, eval_freq=5_000, eval_episodes=10),
    # main.py: batch sizes 512, v_steps = q_bc_steps 2e6, v_lr = q_lr 1e-4, V 3×512, Q 2×1024, omega 0.7, target 2
    **dict(batch_size=512, value_steps=2_000_000, value_lr=1e-4, v_hidden_dim=512, v_depth=3, q_hidden_dim=1024),
    **dict(q_depth=2, omega=0.7, target_update_freq=2, gamma=0.99, tau=0.005),  # gamma, tau: default.py
    # main.py: num_policies 4, bc_steps 4e5, bc_lr 1e-4, 3×256 (the scripts' first width of {256, 512}), alpha_bc 0.1
    **dict(num_policies=4, bc_steps=400_000, bc_lr=1e-4, bc_hidden_dim=256, bc_depth=3, bc_alpha=0.1),
    # BC_ensemble.py's default (kl_bc = data, kl_type = heuristic) is the official no-op, not the paper's Eq. 6 term
    **dict(pi_activation="relu", bc_reg="official"),
    # default.py: n_ensemble 7, n_elites 5, 4×200, dynamics_lr 1e-3, max_epochs_since_update 5, no epoch cap; batch 256
    **dict(dyn_members=7, dyn_elites=5, dyn_hidden_dim=200, dyn_depth=4, dyn_lr=1e-3, dyn_batch_size=256),
    **dict(dyn_patience=5, dyn_max_epochs=None, termination="auto"),  # termination_fns.py's rules, picked by env
    # main.py: bppo_lr 1e-4 (linear decay), clip_ratio 0.25 (decay off after step 200 of 1e4), eval_step 100,
    # rollout_step 1000 (hme.sh sweeps {1000, 500}), rollout_batch_size 512
    **dict(offline_actor_lr=1e-4, clip_ratio=0.25, clip_decay_steps=200, clip_decay_horizon=10_000, ope_freq=100),
    **dict(ope_horizon=1_000, ope_num_states=512),
    # ppo_finetune/ppo.py load_pi_value: the top 3 by last AM-Q, then the best real return (the paper: OPE alone)
    **dict(select_with_env=True, select_top_k=3),
    # ppo_finetune/main.py: batch_size 2048, mini_batch_size 128, lr_c 2e-4, lamda 0.95, epsilon 0.05, entropy 0.01,
    # gradient clip 0.5 (also abppo.py), r_scale 0.1, V re-fit 1e6 steps
    **dict(num_steps=2048, minibatch_size=128, online_critic_lr=2e-4, gae_lambda=0.95, online_clip=0.05),
    **dict(ent_coef=0.01, max_grad_norm=0.5, reward_scale_factor=0.1, value_refit_steps=1_000_000),
}
# scripts/mujoco_loco/<task>.sh: --is_state_norm, --is_iql (absent: the non-IQL path), --pi_activation_f; the
# fine-tuning script: --scale_strategy (absent: none, the offline V is loaded; else --v_hidden_width 256), --lr_a,
# --K_epochs
_PAPER_TASKS = {  # task: _PAPER_FIELDS, then other settings
    "hopper-medium": (True, True, "relu", "number", 2e-5, 10, {}),  # HEAD sweeps lr_a {1e-5, 2e-5}, K {5, 10}
    "hopper-medium-replay": (True, True, "relu", "number", 2e-5, 10, {}),  # lr_a, K in both versions' sweeps
    # hme.sh passes --env hopper-medium-replay-v2, read as a slip; it sweeps width {256, 512}; lr_a {6e-6, 1e-6}
    "hopper-medium-expert": (True, False, "relu", "number", 6e-6, 5, {}),
    "halfcheetah-medium": (True, True, "tanh", "dynamic", 3e-5, 30, {}),
    "halfcheetah-medium-replay": (False, True, "tanh", "number", 3e-5, 20, {}),  # scale_strategy {number, dynamic}
    "halfcheetah-medium-expert": (True, False, "relu", "dynamic", 2e-5, 10, {}),
    "walker2d-medium": (
        True,
        True,
        "relu",
        "none",
        3e-5,
        30,
        dict(dyn_max_epochs=30),
    ),  # configs/gym/walker2d_medium.py
    "walker2d-medium-replay": (True, True, "relu", "none", 3e-5, 30, dict(value_steps=500_000)),  # --v_steps 5e5
    "walker2d-medium-expert": (True, True, "relu", "none", 2e-5, 30, {}),
}
_PAPER_FIELDS = ("state_norm", "iql", "pi_activation", "reward_scale", "online_actor_lr", "update_epochs")
PAPER_CONFIGS: dict[str, dict] = {
    f"paper-{task}": {
        "dataset_id": "o2o/{}/{}-v0".format(*task.split("-", 1)),
        **_PAPER_COMMON,
        **dict(zip(_PAPER_FIELDS, row)),
        "value_refit_hidden_dim": None if row[3] == "none" else 256,
        **other,
    }
    for task, (*row, other) in _PAPER_TASKS.items()
}


# ==============================================================================================
# HARNESS: the same in the three files (tests/test_conventions.py checks it): Minari loading and checks,
# evaluation, logging, checkpoints, errors, the command line. Skip it on a first read.
# ==============================================================================================
class DatasetError(ValueError):
    """Bad input (dataset, checkpoint): the message says what was wrong and what to do; exit 2."""


BUILD = "use a local dataset such as o2o/pendulum/medium-v0 (build them with `python benchmark/make_datasets.py`)"


def load_minari_dataset(dataset_id: str, download: bool = False) -> minari.MinariDataset:
    """A local Minari dataset, or a remote one downloaded first with `download`."""
    local = minari.list_local_datasets()
    if dataset_id not in local and not download:
        raise DatasetError(
            f"dataset '{dataset_id}' is not on the local disk ({minari.storage.get_dataset_path()}; local: "
            f"{', '.join(sorted(local)) or 'none'}); {BUILD}, or pass --download to fetch a remote Minari dataset"
        )
    if dataset_id not in local:
        try:  # fail in seconds without a network (huggingface_hub would retry for ~30 s)
            socket.create_connection(("huggingface.co", 443), timeout=5).close()
        except OSError as e:
            raise DatasetError(f"cannot download '{dataset_id}': Minari's remote is unreachable ({e}); {BUILD}") from e
        try:
            minari.download_dataset(dataset_id)
        except Exception as e:
            raise DatasetError(
                f"could not download '{dataset_id}': {type(e).__name__}: {e}; check the id with `minari list remote`, "
                f"or {BUILD}"
            ) from e
    try:
        dataset = minari.load_dataset(dataset_id)
        dataset[0]  # minari reads lazily: open the data now, so a corrupted file is reported here
        return dataset
    except Exception as e:
        raise DatasetError(
            f"dataset '{dataset_id}' could not be read ({type(e).__name__}: {e}); it may be corrupted: "
            f"`minari delete {dataset_id}`, then build or download it again"
        ) from e


def _flatten_obs(space: gym.Space, obs) -> np.ndarray:
    """(T, obs_dim); Dict/Tuple of Boxes flattened in gymnasium's FlattenObservation order."""
    if isinstance(space, gym.spaces.Box):
        return np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)
    if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        keys = space.spaces.keys() if isinstance(space, gym.spaces.Dict) else range(len(space.spaces))
        return np.concatenate([_flatten_obs(space.spaces[k], obs[k]) for k in keys], axis=1)
    raise DatasetError(f"observation space {space} is not supported: only Box, or Dict/Tuple of Boxes")


def check_episode(dataset: minari.MinariDataset, ep, obs: np.ndarray) -> None:
    """An episode of N steps has N+1 observations and N actions, rewards, terminations, truncations, of the spaces'
    widths, and ends at its last step and only there; else DatasetError naming the dataset, episode and field."""
    where = f"dataset '{dataset.spec.dataset_id}', episode {ep.id}"
    rows = dict(observations=len(obs) - 1, actions=len(ep.actions), rewards=len(ep.rewards))
    rows.update(terminations=len(ep.terminations), truncations=len(ep.truncations))
    n = max(rows.values(), key=list(rows.values()).count)  # the step count most fields agree on
    widths = dict(observations=(obs.shape[1:], (gym.spaces.flatdim(dataset.observation_space),)))
    widths.update(actions=(np.shape(ep.actions)[1:], dataset.action_space.shape))
    bad = [k for k in rows if rows[k] != n] + [k for k, (have, need) in widths.items() if tuple(have) != tuple(need)]
    if bad or n == 0:
        raise DatasetError(
            f"{where}: '{(bad + ['observations'])[0]}' does not fit an episode of {n} steps (N+1 observations; N "
            "actions, rewards, terminations, truncations; the spaces' widths); rebuild the dataset"
        )
    term, trunc = np.asarray(ep.terminations, dtype=bool), np.asarray(ep.truncations, dtype=bool)
    for field, flags in (("terminations", term), ("truncations", trunc)):
        if flags[:-1].any():
            raise DatasetError(f"{where}: '{field}' ends the episode before its last step; rebuild the dataset")
    if not (term[-1] or trunc[-1]):
        raise DatasetError(f"{where}: its last step is in neither 'terminations' nor 'truncations'; rebuild it")


def dataset_to_transitions(dataset: minari.MinariDataset) -> dict[str, np.ndarray]:
    """(s, a, r, s', terminal) from the episodes: s = obs[:-1], s' = obs[1:]; only terminations cut the bootstrap
    (truncations do not). `episode_ends` marks each episode's last transition."""
    if not isinstance(dataset.action_space, gym.spaces.Box):
        raise DatasetError(f"action space {dataset.action_space} is not continuous (Box); these algorithms need Box")
    parts = {k: [] for k in ("observations", "actions", "rewards", "next_observations", "terminals", "episode_ends")}
    for ep in dataset.iterate_episodes():
        obs = _flatten_obs(dataset.observation_space, ep.observations)
        check_episode(dataset, ep, obs)
        n = len(ep.rewards)
        parts["observations"].append(obs[:-1])
        parts["next_observations"].append(obs[1:])
        parts["actions"].append(np.asarray(ep.actions, dtype=np.float32).reshape(n, -1))
        parts["rewards"].append(np.asarray(ep.rewards, dtype=np.float32))
        parts["terminals"].append(np.asarray(ep.terminations, dtype=np.float32))
        parts["episode_ends"].append(np.arange(n) == n - 1)
    data = {k: np.concatenate(v) for k, v in parts.items()}
    for k, v in data.items():
        if not np.isfinite(v).all():
            raise DatasetError(f"dataset '{dataset.spec.dataset_id}' holds NaN or inf in '{k}'; rebuild or clean it")
    return data


def make_eval_env(dataset: minari.MinariDataset, **make_kwargs) -> gym.Env:
    """The dataset's evaluation environment, checked against the dataset's spaces."""
    try:
        env = dataset.recover_environment(eval_env=True, **make_kwargs)
    except Exception as e:
        raise DatasetError(f"could not build the environment of '{dataset.spec.dataset_id}': {e}") from e
    if env.observation_space != dataset.observation_space or env.action_space != dataset.action_space:
        raise DatasetError(
            f"dataset '{dataset.spec.dataset_id}' does not match its environment: observation space "
            f"{dataset.observation_space} vs {env.observation_space}, action space {dataset.action_space} vs "
            f"{env.action_space}"
        )
    return env if isinstance(env.observation_space, gym.spaces.Box) else gym.wrappers.FlattenObservation(env)


def normalized_score(dataset: minari.MinariDataset, mean_return: float) -> Optional[float]:
    """D4RL-style score ×100, or None when the dataset has no reference scores."""
    try:
        return 100.0 * float(minari.get_normalized_score(dataset, np.array([mean_return]))[0])
    except ValueError:
        return None


def evaluate(env: gym.Env, act: Callable[[np.ndarray], np.ndarray], episodes: int, seed: int) -> np.ndarray:
    """Returns of `episodes` episodes acting with `act`, env seeds seed, seed + 1, …"""
    returns = np.zeros(episodes)
    for i in range(episodes):
        obs, done = env.reset(seed=seed + i)[0], False
        while not done:
            obs, r, terminated, truncated, _ = env.step(act(obs))
            returns[i] += float(r)
            done = terminated or truncated
    return returns


class RunLogger:
    """TensorBoard (`{phase}/{CleanRL tag}`: offline curves by gradient step, online by env step), the evaluations,
    stage times (`with log.timer(stage)`) and summary.json."""

    def __init__(self, args, run_dir: str):
        self.run_dir, self.args, self.start = run_dir, args, time.time()
        self.writer = SummaryWriter(run_dir)
        table = "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
        self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
        self.evals: list[dict] = []
        self.stage_times: dict[str, float] = {}

    @contextlib.contextmanager
    def timer(self, stage: str):
        t = time.time()
        try:
            yield
        finally:
            self.stage_times[stage] = self.stage_times.get(stage, 0.0) + time.time() - t

    def scalar(self, phase: str, tag: str, value: float, step: int):
        self.writer.add_scalar(f"{phase}/{tag}", value, step)

    def eval(self, phase: str, step: int, returns: np.ndarray, score: Optional[float], **extra):
        self.scalar(phase, "eval/episodic_return", float(returns.mean()), step)
        if score is not None:
            self.scalar(phase, "eval/normalized_score", score, step)
        ev = dict(phase=phase, step=step, mean_return=float(returns.mean()), std_return=float(returns.std()))
        self.evals.append(dict(ev, normalized_score=score, wall_time=time.time() - self.start, **extra))
        shown = "".join(
            f" | {k} {v:.2f}" for k, v in dict(normalized_score=score, **extra).items() if isinstance(v, float)
        )
        print(f"[{phase}] step {step}: return {returns.mean():.1f} ± {returns.std():.1f}{shown}", flush=True)

    def summary(self, **extra) -> dict:
        """summary.json, written atomically: args, evaluations, stage times and, per phase, final and best score
        (normalized ×100 where the dataset has reference scores, else the return; `metric` says which)."""
        out = dict(args=asdict(self.args), seed=self.args.seed, dataset_id=self.args.dataset_id, **extra)
        out.update(wall_time=time.time() - self.start, evaluations=self.evals, stage_times=self.stage_times)
        for phase in ("offline", "online"):
            ev = [e for e in self.evals if e["phase"] == phase]
            key = "normalized_score" if ev and ev[-1]["normalized_score"] is not None else "mean_return"
            scores, returns = [e[key] for e in ev], [e["mean_return"] for e in ev]
            out[phase] = dict(metric=key, final_score=scores[-1], best_score=max(scores)) if ev else None
            if ev:
                out[phase].update(final_return=returns[-1], best_return=max(returns))
        with open(os.path.join(self.run_dir, "summary.json.tmp"), "w") as f:
            json.dump(out, f, indent=2)
        os.replace(os.path.join(self.run_dir, "summary.json.tmp"), os.path.join(self.run_dir, "summary.json"))
        self.writer.close()
        return out


def load_offline_checkpoint(path: str, meta: dict) -> dict:
    """A checkpoint saved at the end of the offline phase (`torch.save(dict(meta=meta, ...))`), checked against this
    run: every key of `meta` must match but `dataset_id` (fine-tuning on other data only warns)."""
    if not os.path.isfile(path):
        raise DatasetError(f"--load-offline: no such file '{path}'")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        saved = ckpt["meta"]
    except Exception as e:
        raise DatasetError(
            f"--load-offline: '{path}' is not an offline checkpoint ({type(e).__name__}: {e}); "
            "save one with --save-model"
        ) from e
    for key, want in meta.items():
        if key != "dataset_id" and saved.get(key) != want:
            raise DatasetError(
                f"--load-offline: '{path}' was made with {key}={saved.get(key)!r} but this run has "
                f"{key}={want!r}; pass matching flags, or train the offline phase"
            )
    if saved.get("dataset_id") != meta.get("dataset_id"):
        warn(f"the offline checkpoint was trained on {saved.get('dataset_id')}, fine-tuning uses {meta['dataset_id']}")
    return ckpt


def seed_everything(seed: int, torch_deterministic: bool):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic


def fail(msg: str):
    """Clear error to stderr and exit 2, before anything is written."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def warn(msg: str):
    print(f"warning: {msg}", file=sys.stderr)


def check_flags(checks: list[tuple[bool, str]]):
    """`validate`'s table: exit 2 with the message of the first (condition, message) whose condition holds."""
    for bad, msg in checks:
        if bad:
            fail(msg)


# D4RL locomotion -> Minari's remote id of the same env and quality (medium only: Minari has no medium-replay or
# medium-expert, and its data is re-collected on v5 envs, not D4RL's)
REMOTE_IDS = {f"o2o/{e}/medium-v0": f"mujoco/{e}/medium-v0" for e in ("hopper", "halfcheetah", "walker2d")}


def paper_config_cli(argv: Optional[list[str]] = None) -> Args:
    """`python <file>.py [CONFIG] [--flag value ...]`: a first word naming one of PAPER_CONFIGS replaces the defaults;
    flags override both. With --download, a config's local dataset becomes Minari's remote id (REMOTE_IDS)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv.pop(0) if argv and not argv[0].startswith("-") else None
    if name is not None and name not in PAPER_CONFIGS:
        fail(f"unknown config {name!r}; choose one of {', '.join(PAPER_CONFIGS)}, or none for the defaults")
    listing = "\n".join(f"  {k}: {v['dataset_id']}" for k, v in PAPER_CONFIGS.items())
    description = f"{__doc__}\nNamed configs (`python {os.path.basename(__file__)} CONFIG [flags]`):\n{listing}"
    args = tyro.cli(Args, default=Args(**PAPER_CONFIGS.get(name, {})), args=argv, description=description)
    if name is not None and args.download and args.dataset_id == PAPER_CONFIGS[name]["dataset_id"]:
        if args.dataset_id not in REMOTE_IDS:
            fail(
                f"{name}: Minari has no remote copy of {args.dataset_id}'s D4RL dataset; build the local one with "
                "`python benchmark/make_datasets.py`, or pass --dataset-id"
            )
        args.dataset_id = REMOTE_IDS[args.dataset_id]
    return args


if __name__ == "__main__":
    main(paper_config_cli())
