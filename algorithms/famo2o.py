"""FamO2O (Wang et al., NeurIPS 2023) — single-file PyTorch implementation, on IQL (default) or AWAC.

Paper: Train Once, Get a Family: State-Adaptive Balances for Offline-to-Online Reinforcement Learning,
https://arxiv.org/abs/2310.17966. Official code: https://github.com/LeapLabTHU/FamO2O (JAX; read, nothing copied)

Two models replace the base algorithm's single improvement/constraint balance: the universal model π_u(a | s, β), a
policy conditioned on a sinusoidal code of the balance coefficient β (the AWR inverse temperature) and trained over a
range of β, a family of policies; and the balance model π_b(β | s), a 1-d SAC-style policy that picks, per state, the
β whose universal-model action the target critic values most. Offline the actor's β is uniform in [β_lo, β_hi],
online it is sampled from π_b; acting uses π_b's mode. The base algorithm's critic / value learning is unchanged.

    python algorithms/famo2o.py --dataset-id o2o/pendulum/medium-replay-v0     # IQL base, CPU budgets
    python algorithms/famo2o.py --base awac --balance fixed                     # ablation: AWAC alone
    python algorithms/famo2o.py paper-hopper-medium-replay --seed 0             # a paper configuration

Deviations from the paper / official code (and choices where neither says):
- CPU-sized budgets (20k offline gradient steps, 20k online env steps; the paper configurations set the paper's
  1M + 1M). Every other default is FamO2O+IQL's locomotion one but the weight mode.
- `--weight-mode per_sample` (default) is the paper's w_j = min(exp(β_j·A_j), 100). The released code broadcasts a
  [B] advantage against a [B, 1] β: w_j = (1/B)·Σ_i min(exp(β_i·A_j), 100) (`batch_mean`, used by the paper
  configurations; it reproduced the AntMaze table), which does not depend on the sample's own β_j: β cannot adapt.
- Constant actor lr: the unreleased locomotion config would inherit a cosine decay over all updates, which reaches 0
  when online training starts; the released AntMaze config is constant.
- Actions are mapped affinely from the env's Box to [-1, 1], dataset actions clipped to ±(1 − 1e-5) (official code).
  Rewards: r·1000/(max − min dataset episode return), the paper's dense-reward rule, applied at sampling time.
- Evaluation: `--eval-episodes` deterministic episodes every `--eval-freq` steps, at the end of each phase and at
  online step 0 (paper: 100 every 100k). Online, only `terminated` cuts the bootstrap.
- π_b and α step with `loss.backward(inputs=balance params)`: gradients flow through the universal actor's input and
  the target critic, whose parameters stay untouched (as JAX's functional update).
- AWAC base (code never released): y = r + γ·(1 − term)·min Q_targ(s', a'), a' ~ π_u(·| s', enc(β')) at π_b's mode;
  A = min Q_targ(s, a) − min Q_targ(s, ã), ã ~ π_u(·| s, enc(β_j)), one sample, target critic (rlkit: online Q);
  a' and ã clipped to [-1, 1]; the actor is IQL's weighted regression (AWAC's exp(A/λ) with β = 1/λ); no V.
- `--balance fixed` (ablation): one β (`--fixed-beta`; 3 with IQL, 1 with AWAC) and no π_b: the base algorithm alone.
- `--load-offline` fine-tunes the `offline.pt` of `--save-model` (all models, Adam states and log α, which the
  official code keeps across the switch) with a new random stream.
"""

import contextlib
import json
import math
import os
import random
import socket
import sys
import time
from dataclasses import asdict, dataclass, replace
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
    track: bool = False  # if toggled, track with Weights and Biases (wandb must be installed)
    wandb_project_name: str = "o2o"  # the wandb's project name
    wandb_entity: Optional[str] = None  # the entity (team) of wandb's project
    save_model: bool = False  # save the final agent and the offline phase's end (`offline.pt`, for --load-offline)
    run_dir: Optional[str] = None  # where logs, checkpoints and summary.json go (default: runs/{run_name})
    dataset_id: str = "o2o/pendulum/medium-replay-v0"  # Minari dataset id: local, or remote with --download
    download: bool = False  # fetch the dataset from Minari's remote server when it is not on the local disk
    offline_steps: int = 20_000  # offline gradient steps (paper: 1M; 0 skips the phase)
    load_offline: Optional[str] = None  # an `offline.pt` saved with --save-model: fine-tune it, skip offline training
    online_steps: int = 20_000  # online env steps, one gradient step each (paper: 1M; 0 skips the phase)
    eval_freq: int = 5_000  # evaluate every this many steps (offline gradient steps; online env steps)
    early_eval_freq: int = 0  # online: also evaluate every this many env steps up to early_eval_until (0: off)
    early_eval_until: int = 0  # online: env steps over which early_eval_freq applies
    eval_episodes: int = 10  # number of deterministic evaluation episodes
    batch_size: int = 256  # minibatch size
    # ---- FamO2O; defaults: FamO2O+IQL's (jax_iql/family_learner.py), except weight_mode
    base: Literal["iql", "awac"] = "iql"  # base algorithm: iql (the released code) or awac (paper only)
    balance: Literal["adaptive", "fixed"] = "adaptive"  # adaptive: π_b picks β per state; fixed: one β, the base alone
    beta_lo: float = 1.0  # lower end of the range [β_lo, β_hi] of β, the AWR inverse temperature (AntMaze: [8, 14])
    beta_hi: float = 5.0  # upper end of the β range
    fixed_beta: Optional[float] = None  # the β of --balance fixed (default: 3 with IQL, 1 with AWAC)
    # per_sample: min(exp(β_j A_j), 100) (the paper); batch_mean: mean_i min(exp(β_i A_j), 100) (official code), with
    # which the universal model cannot learn different policies for different β (nothing for π_b to adapt)
    weight_mode: Literal["per_sample", "batch_mean"] = "per_sample"
    weight_clip: float = 100.0  # upper clip of the advantage weight
    expectile: float = 0.8  # IQL expectile of the V regression (plain IQL locomotion: 0.7)
    gamma: float = 0.99  # discount γ
    tau: float = 0.005  # Polyak rate of the target twin Q
    actor_lr: float = 3e-4  # learning rate of the universal model (constant)
    critic_lr: float = 3e-4  # learning rate of the twin Q
    value_lr: float = 3e-4  # learning rate of V (IQL)
    balance_lr: float = 3e-4  # learning rate of the balance model
    alpha_lr: float = 3e-4  # learning rate of the balance model's log-temperature log α
    init_alpha: float = 1.0  # initial entropy temperature α of the balance model
    target_entropy: float = -0.5  # target entropy of the balance model's 1-d distribution
    hidden_dim: int = 256  # width of the two hidden layers of every network
    buffer_size: int = 2_000_000  # replay capacity (offline data first, online transitions appended)
    reward_scale_mode: Literal["locomotion", "goal", "none"] = "locomotion"  # r·1000/(max−min return), r − 1, or raw
    log_freq: int = 1_000  # log losses, β and the balance diagnostics every this many gradient steps
    compile: bool = False  # torch.compile the update step (CUDA: mode "reduce-overhead", i.e. CUDA graphs)


# ---- ALGO LOGIC: networks. Every Linear: orthogonal init with gain √2, zero bias (as the official flax code).
def encode_beta(beta: torch.Tensor, n: float = 10_000.0, d: int = 6) -> torch.Tensor:
    """enc(β): β [...] -> [..., d], interleaved sin/cos of β / n^(2i/d), i = 0..d/2−1 (divisors 1, ≈21.5, ≈464 for
    d = 6). Applied to the mapped β (e.g. in [1, 5]); the network never sees the raw β."""
    divisors = n ** (torch.arange(0, d, 2, dtype=beta.dtype, device=beta.device) / d)
    angles = beta.unsqueeze(-1) / divisors  # [..., d/2]
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)


def mlp(in_dim: int, out_dim: int, hidden: int, depth: int = 2) -> nn.Sequential:
    layers = []
    for i in range(depth):  # in-place ReLUs: a Linear's backward does not need its output
        layers += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.ReLU(inplace=True)]
    net = nn.Sequential(*layers, nn.Linear(hidden, out_dim))
    for layer in net[::2]:
        nn.init.orthogonal_(layer.weight, math.sqrt(2))
        nn.init.zeros_(layer.bias)
    return net


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


class TwinQ(nn.Module):
    """Q_1, Q_2 (s, a) as one vectorized ensemble; returns [2, B]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, n: int = 2):
        super().__init__()
        self.n = n
        dims = (obs_dim + act_dim, hidden, hidden, 1)
        layers = [VectorizedLinear(i, o, n) for i, o in zip(dims[:-1], dims[1:])]
        for layer in layers:
            for w in layer.weight:  # each member as mlp's Linear
                nn.init.orthogonal_(w, math.sqrt(2))
        relu = nn.ReLU(inplace=True)
        self.net = nn.Sequential(layers[0], relu, layers[1], relu, layers[2])

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], -1).unsqueeze(0).expand(self.n, -1, -1)
        return self.net(x).squeeze(-1)


def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(x; μ, exp(log σ)) summed over the last dim, in closed form (torch.distributions validates its
    arguments, which synchronizes a GPU on every call)."""
    return (-0.5 * ((x - mu) / log_std.exp()).pow(2) - log_std - 0.5 * math.log(2.0 * math.pi)).sum(-1)


def tanh_log_det(u: torch.Tensor) -> torch.Tensor:
    """log(1 − tanh(u)²) = 2·(log 2 − u − softplus(−2u)), finite for any u (no atanh of z)."""
    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))


class UniversalActor(nn.Module):
    """π_u(a | s, β): Gaussian N(tanh(f(s, enc(β))), σ) with a state-independent log σ clipped to [−5, 2].
    The tanh is on the mean only (no squashed distribution), so dataset actions need no atanh."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.net = mlp(obs_dim + 6, act_dim, hidden)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def forward(self, obs: torch.Tensor, beta_code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean [B, act_dim] and log σ [act_dim]."""
        return torch.tanh(self.net(torch.cat([obs, beta_code], -1))), self.log_std.clamp(-5.0, 2.0)

    def log_prob(self, obs: torch.Tensor, beta_code: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return gaussian_log_prob(act, *self(obs, beta_code))

    def rsample(self, obs: torch.Tensor, beta_code: torch.Tensor) -> torch.Tensor:
        mean, log_std = self(obs, beta_code)
        return mean + log_std.exp() * torch.randn_like(mean)


class BalanceModel(nn.Module):
    """π_b(β | s): u ~ N(μ_b(s), σ_b) with a state-independent log σ_b clipped to [−10, 2], z = tanh(u) and
    β = β_lo + (z + 1)/2 · (β_hi − β_lo)."""

    def __init__(self, obs_dim: int, hidden: int, beta_lo: float, beta_hi: float):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden)
        self.log_std = nn.Parameter(torch.zeros(1))
        self.beta_lo, self.beta_hi = beta_lo, beta_hi

    def to_beta(self, z: torch.Tensor) -> torch.Tensor:
        return self.beta_lo + (z + 1.0) / 2.0 * (self.beta_hi - self.beta_lo)

    def rsample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized β [B] and log π_b(z | s) [B] of the squashed z (tanh Jacobian included; the affine map
        to β only shifts the log-density by a constant and is left out, as in the official code)."""
        mu, log_std = self.net(obs), self.log_std.clamp(-10.0, 2.0)  # [B, 1], [1]
        u = mu + log_std.exp() * torch.randn_like(mu)
        logp = gaussian_log_prob(u, mu, log_std) - tanh_log_det(u).sum(-1)
        return self.to_beta(torch.tanh(u)).squeeze(-1), logp

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.to_beta(torch.tanh(self.net(obs).squeeze(-1)))


# ---- ALGO LOGIC: replay buffer and rewards. Offline data first, online transitions appended, uniform sampling
class ReplayBuffer:
    """Transitions on the device; `sample` returns rewards as reward_scale·r + reward_shift (`reward_transform`)."""

    def __init__(
        self, obs_dim: int, act_dim: int, capacity: int, device: torch.device, reward_scale=1.0, reward_shift=0.0
    ):
        self.capacity, self.device, self.size, self.ptr = capacity, device, 0, 0
        self.reward_scale, self.reward_shift = reward_scale, reward_shift
        self.obs = torch.zeros(capacity, obs_dim, device=device)
        self.next_obs = torch.zeros(capacity, obs_dim, device=device)
        self.act = torch.zeros(capacity, act_dim, device=device)
        self.rew = torch.zeros(capacity, device=device)
        self.term = torch.zeros(capacity, device=device)

    def add_batch(self, obs, act, rew, next_obs, term):
        """Host arrays of n transitions (the dataset); `term` is 1.0 where the episode terminated."""
        n = len(obs)
        idx = (self.ptr + np.arange(n)) % self.capacity
        t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32, device=self.device)  # noqa: E731
        self.obs[idx], self.act[idx], self.rew[idx] = t(obs), t(act), t(rew)
        self.next_obs[idx], self.term[idx] = t(next_obs), t(term)
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def add(self, obs: torch.Tensor, act: torch.Tensor, rew: torch.Tensor, next_obs: torch.Tensor, term: torch.Tensor):
        """One online transition already on the device (no host round trip)."""
        i = self.ptr
        self.obs[i], self.act[i], self.rew[i], self.next_obs[i], self.term[i] = obs, act, rew, next_obs, term
        self.ptr = (self.ptr + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, self.size, (batch_size,), device=self.device)
        rew = self.rew[idx] * self.reward_scale + self.reward_shift
        return dict(obs=self.obs[idx], act=self.act[idx], rew=rew, next_obs=self.next_obs[idx], term=self.term[idx])


def reward_transform(data: dict[str, np.ndarray], mode: str) -> tuple[float, float]:
    """(scale, shift) with r' = scale·r + shift, applied at sampling time to every transition.
    `locomotion`: 1000 / (max − min episode return) over the dataset (IQL's D4RL rule); `goal`: r − 1."""
    if mode == "none":
        return 1.0, 0.0
    if mode == "goal":
        return 1.0, -1.0
    episode_id = np.concatenate([[0], np.cumsum(data["episode_ends"])[:-1]])
    returns = np.bincount(episode_id, weights=data["rewards"].astype(np.float64))
    spread = float(returns.max() - returns.min())
    if spread <= 1e-8:
        raise DatasetError(
            "--reward-scale-mode locomotion needs episodes with different returns (max − min episode return is 0); "
            "use --reward-scale-mode none"
        )
    return 1000.0 / spread, 0.0


# ---- ALGO LOGIC: losses and the update step
def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean |τ − 1(u < 0)|·u² with u = Q − V: positive errors (V below Q) weigh τ, so V tracks an upper expectile."""
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return (weight * diff.pow(2)).mean()


def advantage_weights(beta: torch.Tensor, adv: torch.Tensor, mode: str, clip: float = 100.0) -> torch.Tensor:
    """AWR weights [B] from β [B] and A [B].
    per_sample: w_j = min(exp(β_j A_j), clip) (the paper). batch_mean: w_j = (1/B) Σ_i min(exp(β_i A_j), clip),
    what the official code's [B, 1] × [B] broadcast computes. exp is taken after the clip on the exponent, so large
    advantages never overflow."""
    assert beta.dim() == 1 and adv.dim() == 1, "keep β and A as [B] so broadcasting cannot choose silently"
    log_clip = math.log(clip)
    if mode == "per_sample":
        return torch.exp((beta * adv).clamp(max=log_clip))
    if mode == "batch_mean":
        return torch.exp((beta[:, None] * adv[None, :]).clamp(max=log_clip)).mean(0)
    raise ValueError(f"unknown weight mode {mode!r}")


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float):
    """Polyak averaging θ' ← (1 − τ)·θ' + τ·θ over all parameters, in one fused call."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def resolve_fixed_beta(args: Args) -> float:
    """The β of `--balance fixed`: `--fixed-beta`, else plain IQL's locomotion β = 3 or AWAC's λ = 1 (CORL's)."""
    return dict(iql=3.0, awac=1.0)[args.base] if args.fixed_beta is None else float(args.fixed_beta)


class FamO2O:
    """All models, optimizers and the gradient step."""

    STATE = ("actor", "balance", "critic", "critic_target", "value")
    STATE += tuple(f"{k}_opt" for k in ("actor", "balance", "critic", "value", "alpha"))

    def __init__(self, obs_dim: int, act_dim: int, args: Args, device: torch.device):
        self.args, self.device, self.adaptive = args, device, args.balance == "adaptive"
        h = args.hidden_dim
        self.actor = UniversalActor(obs_dim, act_dim, h).to(device)
        self.critic = TwinQ(obs_dim, act_dim, h).to(device)
        self.critic_target = TwinQ(obs_dim, act_dim, h).to(device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.value = mlp(obs_dim, 1, h).to(device) if args.base == "iql" else None  # V(s) (IQL)
        self.balance = BalanceModel(obs_dim, h, args.beta_lo, args.beta_hi).to(device)
        self.log_alpha = torch.tensor([math.log(args.init_alpha)], device=device, requires_grad=True)
        adam = lambda params, lr: torch.optim.Adam(params, lr=lr, fused=True)  # noqa: E731
        self.actor_opt = adam(self.actor.parameters(), args.actor_lr)
        self.critic_opt = adam(self.critic.parameters(), args.critic_lr)
        self.value_opt = adam(self.value.parameters(), args.value_lr) if self.value else None
        self.balance_opt = adam(self.balance.parameters(), args.balance_lr)
        self.alpha_opt = adam([self.log_alpha], args.alpha_lr)
        if args.compile:
            # inductor's own random numbers would differ from eager's: keep eager's stream, so a seed gives one run
            torch._inductor.config.fallback_random = True
            self.update = torch.compile(self.update, mode="reduce-overhead" if device.type == "cuda" else None)

    def checkpoint(self) -> dict:
        state = {k: getattr(self, k).state_dict() for k in self.STATE if getattr(self, k) is not None}
        return dict(state, log_alpha=self.log_alpha.detach().cpu())

    def load_checkpoint(self, ckpt: dict):
        for k in self.STATE:
            if getattr(self, k) is not None:
                getattr(self, k).load_state_dict(ckpt[k])
        with torch.no_grad():
            self.log_alpha.copy_(ckpt["log_alpha"])

    # -- β helpers and acting --
    def fixed_beta(self, n: int) -> torch.Tensor:
        return torch.full((n,), resolve_fixed_beta(self.args), device=self.device)

    @torch.no_grad()
    def acting_beta(self, obs: torch.Tensor) -> torch.Tensor:
        """β the agent acts with: the balance model's mode (or the fixed β)."""
        return self.balance.mode(obs) if self.adaptive else self.fixed_beta(len(obs))

    @torch.no_grad()
    def sample_action(self, obs: torch.Tensor, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """For one observation [1, obs_dim]: the action in [-1, 1] (π_u's mean or a sample) and β [1], on the device."""
        beta = self.acting_beta(obs)
        a = self.actor(obs, encode_beta(beta))[0] if deterministic else self.actor.rsample(obs, encode_beta(beta))
        return a.clamp(-1.0, 1.0)[0], beta

    def act(self, obs: np.ndarray, deterministic: bool) -> tuple[np.ndarray, float]:
        """Action in [-1, 1] and the β used, for one host observation."""
        o = torch.as_tensor(obs, dtype=torch.float32, device=self.device).reshape(1, -1)
        out = torch.cat(self.sample_action(o, deterministic)).cpu().numpy()  # one device -> host copy per env step
        return out[:-1], float(out[-1])

    def balance_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SAC-style loss of π_b over its 1-d action β: mean[α·log π_b(z|s) − min Q_targ(s, ã)], ã ~ π_u(·| s, enc(β))
        reparameterized; the graph runs through the actor's input and the target Q (backward only into π_b)."""
        beta, logp = self.balance.rsample(obs)
        a = self.actor.rsample(obs, encode_beta(beta))
        q = self.critic_target(obs, a).min(0).values
        alpha = self.log_alpha.exp().detach()
        return (alpha * logp - q).mean(), logp.detach(), beta.detach()

    def update(self, batch: dict[str, torch.Tensor], online: bool, stats: bool = False) -> dict[str, torch.Tensor]:
        """One gradient step: V → balance → α → universal actor → Q → Polyak, each from start-of-step inputs. Returns
        the losses, and with `stats` the statistics logged beside them, as detached tensors (no device sync here)."""
        args, info = self.args, {}
        obs, act, rew, next_obs, term = batch["obs"], batch["act"], batch["rew"], batch["next_obs"], batch["term"]
        batch_size = len(obs)
        with torch.no_grad():
            # β for the universal-actor loss, drawn with start-of-step parameters (before the balance step)
            if not self.adaptive:
                beta = self.fixed_beta(batch_size)
            elif online:
                beta = self.balance.rsample(obs)[0]
            else:
                beta = args.beta_lo + (args.beta_hi - args.beta_lo) * torch.rand(batch_size, device=self.device)
            q_targ = self.critic_target(obs, act).min(0).values  # min(Q1_targ, Q2_targ)(s, a)
            if args.base == "awac":  # next action for the TD target, from start-of-step actor and balance model
                next_beta = self.acting_beta(next_obs)
                next_act = self.actor.rsample(next_obs, encode_beta(next_beta)).clamp(-1.0, 1.0)
                next_v = self.critic_target(next_obs, next_act).min(0).values
                # ã is clipped to the action box like a′ (and like the actions the agent executes)
                base_act = self.actor.rsample(obs, encode_beta(beta)).clamp(-1.0, 1.0)
                adv = q_targ - self.critic_target(obs, base_act).min(0).values

        # 1) V by expectile regression (IQL)
        if args.base == "iql":
            v = self.value(obs).squeeze(-1)
            value_loss = expectile_loss(q_targ - v, args.expectile)
            self.value_opt.zero_grad(set_to_none=True)
            value_loss.backward()
            self.value_opt.step()
            with torch.no_grad():  # V_new feeds both the advantage and the Q target: one pass over [s; s′]
                v_new, next_v = self.value(torch.cat([obs, next_obs])).squeeze(-1).split(batch_size)
                adv = q_targ - v_new
            info["value_loss"] = value_loss.detach()
            if stats:
                info["v_values"] = v.mean().detach()

        # 2) balance model, 3) temperature α (with the α and log-probs of step 2)
        if self.adaptive:
            b_loss, logp, b_beta = self.balance_loss(obs)
            self.balance_opt.zero_grad(set_to_none=True)
            b_loss.backward(inputs=list(self.balance.parameters()))
            self.balance_opt.step()
            entropy = -logp.mean()
            alpha_loss = self.log_alpha.exp() * (entropy - args.target_entropy)
            self.alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_opt.step()
            info.update(balance_loss=b_loss.detach(), alpha_loss=alpha_loss.detach())
            if stats:
                alpha = self.log_alpha.exp().detach()
                info.update(balance_entropy=entropy.detach(), alpha=alpha, balance_beta_mean=b_beta.mean())

        # 4) universal actor: advantage-weighted regression on dataset actions, conditioned on enc(β_j)
        weights = advantage_weights(beta, adv, args.weight_mode, args.weight_clip)
        actor_loss = -(weights * self.actor.log_prob(obs, encode_beta(beta), act)).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()

        # 5) twin Q towards r + γ·(1 − term)·V_new(s') (IQL) or r + γ·(1 − term)·min Q_targ(s', a') (AWAC)
        y = rew + args.gamma * (1 - term) * next_v
        q = self.critic(obs, act)
        q_loss = (q - y.unsqueeze(0)).pow(2).sum(0).mean()
        self.critic_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        self.critic_opt.step()

        # 6) Polyak
        soft_update(self.critic_target, self.critic, args.tau)

        info.update(actor_loss=actor_loss.detach(), qf_loss=q_loss.detach())
        if stats:
            info.update(
                qf1_values=q[0].mean().detach(),
                qf2_values=q[1].mean().detach(),
                advantage=adv.mean(),
                adv_weight=weights.mean(),
                actor_beta_mean=beta.mean(),
                actor_std=self.actor.log_std.clamp(-5, 2).exp().mean().detach(),
            )
        return info


# ---- ALGO LOGIC: main. The offline loop (β uniform for the actor), then the online loop (β from π_b)
def main(args: Args) -> dict:
    validate(args)
    args = replace(args, fixed_beta=resolve_fixed_beta(args))  # record the β actually used in summary.json
    try:  # load data BEFORE creating the run dir, so bad input leaves nothing behind
        dataset = load_minari_dataset(args.dataset_id, args.download)
        data = dataset_to_transitions(dataset)
        eval_env = make_eval_env(dataset)
        r_scale, r_shift = reward_transform(data, args.reward_scale_mode)
        env_id = eval_env.spec.id if eval_env.spec else str(dataset.spec.env_spec)
        obs_dim, act_dim = data["observations"].shape[1], data["actions"].shape[1]
        meta = offline_meta(args, env_id, obs_dim, act_dim)
        ckpt = load_offline_checkpoint(args.load_offline, meta) if args.load_offline else None
    except DatasetError as e:
        fail(str(e))
    if not np.all(np.isfinite(dataset.action_space.low)):
        fail("the action space must be a bounded Box")
    run_name = f"{args.dataset_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = args.run_dir or os.path.join("runs", run_name)
    if args.track:
        import wandb

        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=vars(args),
            name=run_name,
            save_code=True,
        )
    seed_everything(args.seed, args.torch_deterministic)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    log = RunLogger(args, run_dir)
    log.stage_times.update(dict.fromkeys(("offline", "offline_eval", "online", "online_eval", "eval"), 0.0))

    # actions live in [-1, 1] for the networks; the env gets them mapped back to its Box
    low, high = dataset.action_space.low.astype(np.float32), dataset.action_space.high.astype(np.float32)
    a_center, a_half = (high + low) / 2.0, (high - low) / 2.0
    to_env = lambda a: (a_center + a_half * a).astype(dataset.action_space.dtype)  # noqa: E731
    n_data = len(data["rewards"])
    capacity = max(n_data, min(args.buffer_size, n_data + args.online_steps))
    buffer = ReplayBuffer(obs_dim, act_dim, capacity, device, reward_scale=r_scale, reward_shift=r_shift)
    data_act = np.clip((data["actions"] - a_center) / a_half, -1.0 + 1e-5, 1.0 - 1e-5)
    buffer.add_batch(data["observations"], data_act, data["rewards"], data["next_observations"], data["terminals"])
    agent = FamO2O(obs_dim, act_dim, args, device)
    print(
        f"FamO2O+{args.base.upper()} ({args.balance} β in [{args.beta_lo}, {args.beta_hi}], weight {args.weight_mode})"
        f" on {args.dataset_id}: {n_data} transitions, reward ×{r_scale:.4g} {r_shift:+g}, device {device}",
        flush=True,
    )
    beta_summary: dict = {}  # summary.json's `beta`: the last evaluation of each phase, the last online window
    diagnostics: dict = {phase: dict(step=[]) for phase in ("offline", "online")}  # summary.json's `diagnostics`

    def run_eval(phase: str, step: int):
        beta_summary[f"{phase}_final_eval"] = eval_policy(args, agent, dataset, eval_env, to_env, log, phase, step)

    if ckpt is not None:  # --load-offline: the saved offline phase, evaluated as it ended
        agent.load_checkpoint(ckpt)
        offline_done = int(ckpt["offline_steps"])
        print(f"loaded the offline phase from {args.load_offline} ({offline_done} gradient steps); skipping it")
        run_eval("offline", offline_done)
    else:
        offline_done = train_offline(args, agent, buffer, log, diagnostics, run_eval)
        if args.save_model and offline_done > 0:
            path = os.path.join(run_dir, "offline.pt")
            torch.save(dict(meta=meta, offline_steps=offline_done, **agent.checkpoint()), path)
            print(f"saved the offline phase to {path} (fine-tune from it with --load-offline {path})")

    if args.online_steps > 0:
        run_eval("online", 0)  # the policy fine-tuning starts from, before any interaction or update
        acting = train_online(args, agent, buffer, dataset, to_env, log, diagnostics, run_eval)
        beta_summary["online_acting_last_window"] = acting

    if args.save_model:
        torch.save(dict(meta=meta, **agent.checkpoint()), os.path.join(run_dir, f"{args.exp_name}.cleanrl_model"))
    times, offline_trained = log.stage_times, args.offline_steps > 0 and ckpt is None
    summary = log.summary(
        base=args.base,
        balance=args.balance,
        reward_scale=r_scale,
        reward_shift=r_shift,
        offline_gradient_steps=offline_done,
        offline_loaded_from=args.load_offline,
        online_env_steps=args.online_steps,
        online_gradient_steps=args.online_steps,
        throughput=dict(
            offline_grad_steps_per_s=args.offline_steps / times["offline"] if offline_trained else None,
            online_steps_per_s=args.online_steps / times["online"] if args.online_steps else None,
        ),
        beta=beta_summary,
        diagnostics=diagnostics,
    )
    eval_env.close()
    return summary


def train_offline(args: Args, agent: FamO2O, buffer: ReplayBuffer, log: "RunLogger", diagnostics, run_eval) -> int:
    """`--offline-steps` gradient steps on the dataset, the actor's β uniform in [β_lo, β_hi]. Returns the step
    count. stage_times["offline"] is the loop without its evaluations."""
    start = time.time()
    for step in range(1, args.offline_steps + 1):
        with log.timer("offline"):
            batch = buffer.sample(args.batch_size)
            logging = step % args.log_freq == 0
            info = agent.update(batch, online=False, stats=logging)
            if logging:
                log_update(log, diagnostics, agent, "offline", step, info, batch["obs"], start)
        if eval_due(step, args.offline_steps, args, online=False):
            run_eval("offline", step)
    return args.offline_steps


def train_online(
    args: Args, agent: FamO2O, buffer: ReplayBuffer, dataset, to_env, log: "RunLogger", diagnostics, run_eval
) -> dict:
    """`--online-steps` env steps, each followed by one gradient step, the actor's β sampled from π_b; transitions
    are appended to the buffer that holds the dataset. Returns the statistics of the β acted with in the last window
    between evaluations. stage_times["online"] is the loop without its evaluations."""
    env = dataset.recover_environment()
    if not isinstance(env.observation_space, gym.spaces.Box):
        env = gym.wrappers.FlattenObservation(env)
    device, start = buffer.device, time.time()
    env.action_space.seed(args.seed)
    obs, _ = env.reset(seed=args.seed)
    obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device).reshape(-1)
    ep_ret, ep_len, acting = 0.0, 0, []
    for step in range(1, args.online_steps + 1):
        with log.timer("online"):
            act_t, beta_t = agent.sample_action(obs_t[None], deterministic=False)
            a_beta = torch.cat([act_t, beta_t]).cpu().numpy()  # one device -> host copy per env step
            acting.append(float(a_beta[-1]))
            next_obs, r, terminated, truncated, _ = env.step(to_env(a_beta[:-1]))
            row = np.concatenate([np.asarray(next_obs, dtype=np.float32).ravel(), [r, float(terminated)]])
            row_t = torch.as_tensor(row, dtype=torch.float32, device=device)  # s', r, term: one host -> device copy
            buffer.add(obs_t, act_t, row_t[-2], row_t[:-2], row_t[-1])
            ep_ret, ep_len, obs_t = ep_ret + float(r), ep_len + 1, row_t[:-2]
            if terminated or truncated:
                log.scalar("online", "charts/episodic_return", ep_ret, step)
                log.scalar("online", "charts/episodic_length", ep_len, step)
                obs, _ = env.reset()
                obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device).reshape(-1)
                ep_ret, ep_len = 0.0, 0
            batch = buffer.sample(args.batch_size)
            logging = step % args.log_freq == 0
            info = agent.update(batch, online=True, stats=logging)
            if logging:
                log_update(log, diagnostics, agent, "online", step, info, batch["obs"], start)
        if eval_due(step, args.online_steps, args, online=True):
            last_window, acting = log_beta(log, "online", step, acting, "charts", args), []
            run_eval("online", step)
    env.close()
    return last_window


# ---- Per-file setup, not algorithm logic: flag checks, paper configurations, checkpoint meta, evaluation and logging
def validate(args: Args):
    """Reject impossible flags before anything is loaded or written (tyro already rejects unknown choices)."""
    least = dict(offline_steps=0, online_steps=0, eval_freq=1, eval_episodes=1, batch_size=1, hidden_dim=1, log_freq=1)
    lo, hi = args.beta_lo, args.beta_hi
    check_flags(
        [
            (not lo < hi, f"the β range needs --beta-lo < --beta-hi, got [{lo}, {hi}]"),
            (args.early_eval_freq > 0 and args.early_eval_until <= 0, "--early-eval-freq needs --early-eval-until > 0"),
            *((getattr(args, k) < m, f"--{k.replace('_', '-')} must be ≥ {m}") for k, m in least.items()),
        ]
    )
    if args.weight_mode == "batch_mean" and args.balance == "adaptive":
        warn(
            "--weight-mode batch_mean makes each sample's advantage weight independent of its own β, so the universal "
            "model cannot learn β-dependent policies and the adaptive β has nothing to adapt (use per_sample)"
        )


# Paper configurations (`python algorithms/famo2o.py paper-hopper-medium-replay [--flag value ...]`): the paper's
# "IQL+FamO2O" rows on our local D4RL-style rebuilds (benchmark/make_datasets.py). The locomotion config was never
# released, so every value is the released code's default (LeapLabTHU/FamO2O, jax_iql/), the same for every dataset,
# except its cosine actor-lr decay (see the header) and its extra evaluations in the last 35k steps of each phase.
PAPER_CONFIG_IQL = (
    dict(base="iql", balance="adaptive")  # the paper's IQL+FamO2O (the released code's base)
    # family_train_finetune.py: num_pretraining_steps, max_steps, eval_interval, eval_episodes, batch_size
    | dict(offline_steps=1_000_000, online_steps=1_000_000, eval_freq=100_000, eval_episodes=100, batch_size=256)
    # family_train_finetune.py: replay_buffer_size, log_interval, rewards r·1000/(max − min trajectory return)
    | dict(buffer_size=2_000_000, log_freq=1_000, reward_scale_mode="locomotion")
    # family_learner.py: family_coefficient_range, expectile, discount, tau, hierarchical_init_temperature,
    # target_entropy None -> −1/2, hidden_dims (256, 256)
    | dict(beta_lo=1.0, beta_hi=5.0, expectile=0.8, gamma=0.99, tau=0.005, init_alpha=1.0, target_entropy=-0.5)
    # family_learner.py: actor_lr (also the balance model's optax.adam), critic_lr, value_lr, hierarchical_temp_lr
    | dict(actor_lr=3e-4, critic_lr=3e-4, value_lr=3e-4, balance_lr=3e-4, alpha_lr=3e-4, hidden_dim=256)
    # family_actor.py: the [B] advantage times the [B, 1] β (the header's batch-averaged weight), min(·, 100.0)
    | dict(weight_mode="batch_mean", weight_clip=100.0)
)
PAPER_CONFIGS: dict[str, dict] = {
    f"paper-{env}-{quality}": dict(dataset_id=f"o2o/{env}/{quality}-v0", **PAPER_CONFIG_IQL)
    for env in ("hopper", "halfcheetah", "walker2d")
    for quality in ("medium", "medium-replay", "medium-expert")
}


def offline_meta(args: Args, env_id: str, obs_dim: int, act_dim: int) -> dict:
    """What `offline.pt` records and a run that loads it must share (`load_offline_checkpoint`; dataset: a warning)."""
    meta = dict(format="famo2o-offline-v2", env_id=env_id, dataset_id=args.dataset_id, obs_dim=obs_dim, act_dim=act_dim)
    meta.update({k: getattr(args, k) for k in ("base", "balance", "beta_lo", "beta_hi", "hidden_dim")})
    return dict(meta, fixed_beta=resolve_fixed_beta(args) if args.balance == "fixed" else None)


def eval_due(step: int, last: int, args: Args, online: bool) -> bool:
    """Every `eval_freq` steps, at the `last`, and online every `early_eval_freq` steps up to `early_eval_until`."""
    early = online and args.early_eval_freq > 0 and step <= args.early_eval_until
    return step % args.eval_freq == 0 or step == last or (early and step % args.early_eval_freq == 0)


def eval_policy(args: Args, agent: FamO2O, dataset, eval_env, to_env, log: "RunLogger", phase: str, step: int) -> dict:
    """Deterministic episodes at the acting β; logs the return, the score and the β chosen (`{phase}/eval/beta*`)."""
    with log.timer("eval"), log.timer(f"{phase}_eval"):
        betas = []

        def policy(o):
            a, beta = agent.act(o, deterministic=True)
            betas.append(beta)
            return to_env(a)

        returns = evaluate(eval_env, policy, args.eval_episodes, args.seed * 1_000 + 100_000)
        s = log_beta(log, phase, step, betas, "eval", args)
        score = normalized_score(dataset, float(returns.mean()))
        log.eval(phase, step, returns, score, eval_beta_mean=s["mean"], eval_beta_std=s["std"])
        return s


def log_beta(log: "RunLogger", phase: str, step: int, betas: list, prefix: str, args: Args) -> dict:
    """`{phase}/{prefix}/beta_mean|beta_std` and the histogram `{phase}/{prefix}/beta` of the β acted with (`eval`:
    in deterministic evaluation; `charts`: while collecting online). Returns summary.json's record of them."""
    v, edges = np.array(betas), np.linspace(args.beta_lo, args.beta_hi, 11)
    hist = np.histogram(np.clip(v, edges[0], edges[-1]), bins=edges)[0]
    s = dict(mean=float(v.mean()), std=float(v.std()), min=float(v.min()), max=float(v.max()))
    log.scalar(phase, f"{prefix}/beta_mean", s["mean"], step)
    log.scalar(phase, f"{prefix}/beta_std", s["std"], step)
    log.writer.add_histogram(f"{phase}/{prefix}/beta", v, step)
    return dict(s, histogram=hist.tolist(), bin_edges=edges.round(4).tolist())


def log_update(log: "RunLogger", diagnostics: dict, agent: FamO2O, phase: str, step: int, info, obs, start: float):
    """On logging steps: the update's values (`{phase}/losses/*`), the balance diagnostics (`{phase}/diagnostics/*`
    and summary.json["diagnostics"][phase] with their `step`), the speed; one device -> host copy for each dict."""
    values = dict(zip(info, torch.stack([v.reshape(()) for v in info.values()]).tolist()))
    for k, v in values.items():
        log.scalar(phase, f"losses/{k}", v, step)
    stats = balance_diagnostics(agent, obs)
    diagnostics[phase]["step"].append(step)
    for k, v in zip(stats, torch.stack(list(stats.values())).tolist()):
        diagnostics[phase].setdefault(k, []).append(v)
        log.scalar(phase, f"diagnostics/{k}", v, step)
    sps = step / (time.time() - start)
    log.scalar(phase, "charts/SPS", sps, step)
    if step % (10 * agent.args.log_freq) == 0:
        print(f"[{phase}] step {step}: {sps:.0f} steps/s, actor loss {values['actor_loss']:.3f}", flush=True)


def balance_diagnostics(agent: FamO2O, obs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Can β move? At the acting β on `obs`: its mean and spread across states; dq_dbeta = mean |d min Q_targ(s,
    μ_u(s, enc(β)))/dβ|, the critic's pull on β; action_spread = mean |μ_u(s, β_hi) − μ_u(s, β_lo)|, how much the
    action depends on β at all; alpha; q_entropy_ratio = |dQ/dβ|·(β_hi − β_lo)/(4α), about where z = tanh(u) settles
    in (−1, 1) between the critic's pull and the entropy term's 2α·tanh(u) while small (≪ 1: β stays mid-range)."""
    args = agent.args
    beta = agent.acting_beta(obs).clone().requires_grad_(True)
    with torch.enable_grad():
        q = agent.critic_target(obs, agent.actor(obs, encode_beta(beta))[0]).min(0).values
        (dq,) = torch.autograd.grad(q.sum(), beta)  # per state: state i only sees its own β_i
    with torch.no_grad():
        lo, hi = (agent.actor(obs, encode_beta(torch.full_like(beta, b)))[0] for b in (args.beta_lo, args.beta_hi))
        alpha = agent.log_alpha.exp()[0]
        beta = beta.detach()
        return dict(
            beta_mean=beta.mean(),
            beta_std=beta.std(unbiased=False),
            dq_dbeta=dq.abs().mean(),
            action_spread=(hi - lo).abs().mean(),
            q_entropy_ratio=(dq.abs() * (args.beta_hi - args.beta_lo) / (4.0 * alpha)).mean(),
            alpha=alpha,
        )


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
