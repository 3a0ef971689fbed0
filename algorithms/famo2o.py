"""FamO2O (Wang et al., NeurIPS 2023) — single-file PyTorch implementation, on IQL (default) or AWAC.

Paper: Train Once, Get a Family: State-Adaptive Balances for Offline-to-Online Reinforcement Learning,
       https://arxiv.org/abs/2310.17966
Official code: https://github.com/LeapLabTHU/FamO2O (JAX; read for facts only; nothing copied)

Two models replace the base algorithm's single improvement/constraint balance:
- the universal model π_u(a | s, β): a policy conditioned on a 6-d sinusoidal code of the balance coefficient β
  (the AWR inverse temperature), trained over a range of β, so it is a family of policies;
- the balance model π_b(β | s): a 1-d SAC-style policy that picks, per state, the β whose universal-model action the
  target critic values most. Offline, the actor's β is uniform in [β_lo, β_hi]; online, it is sampled from π_b;
  acting always uses the mode of π_b.
The critic / value learning of the base algorithm is unchanged.

    python algorithms/famo2o.py --dataset-id o2o/pendulum/medium-replay-v0              # IQL base, CPU budgets
    python algorithms/famo2o.py --base awac                                              # AWAC base
    python algorithms/famo2o.py --balance fixed --fixed-beta 3                           # ablation: base alone
    python algorithms/famo2o.py --offline-steps 1000000 --online-steps 1000000           # the paper's budgets
    python algorithms/famo2o.py paper-hopper-medium-replay --seed 0                      # a paper configuration

Paper configurations: a first word `paper-<env>-<quality>` (hopper, halfcheetah, walker2d × medium, medium-replay,
medium-expert: the paper's D4RL locomotion rows) sets all of FamO2O+IQL's settings and budgets for that dataset
(PAPER_CONFIGS, each value with its source; flags still override them; `--help` lists them). The IQL locomotion
config was never released, so they are the released IQL code's defaults (jax_iql/family_train_finetune.py,
jax_iql/family_learner.py), identical for every dataset. Where that code and the paper disagree they follow the
code: `--weight-mode batch_mean` (the file's default stays the paper's per_sample). Not taken from the code: its
default cosine actor-lr decay (it would freeze the universal model online; the released AntMaze config is constant,
and so is this file) and its extra evaluations in the last 35k steps of each phase. With `--download` a config's
local dataset becomes Minari's `mujoco/<env>/medium-v0` where one exists (medium only); otherwise it exits 2.

Logged beyond the project's common tags: `{phase}/eval/beta_mean|beta_std` and the histogram `{phase}/eval/beta` (the
β the balance model chose in each evaluation), `online/charts/beta*` (the β acted with while collecting), and
`losses/balance_loss|balance_entropy|alpha|alpha_loss|balance_beta_mean|actor_beta_mean|adv_weight|advantage`.
summary.json's `beta` holds mean, std, range and a 10-bin histogram over [β_lo, β_hi] of the last of each (kept
as it was; the time series below are separate).

Balance-model diagnostics, every `--log-freq` gradient steps on that step's batch, as TensorBoard
`{phase}/diagnostics/*` and as lists with their `step` in summary.json["diagnostics"][phase] (FamO2O.
balance_diagnostics): the acting β's mean and spread across states (`beta_mean`, `beta_std`), the critic's pull on β
`dq_dbeta` = mean |d min Q_targ(s, μ_u(s, enc(β)))/dβ|, how much the universal model's action depends on β at all
`action_spread` = mean |μ_u(s, β_hi) − μ_u(s, β_lo)|, `alpha`, and `q_entropy_ratio` = |dQ/dβ|·(β_hi − β_lo)/(4α),
roughly where in (−1, 1) the critic can push tanh(u) against the entropy term while it is small: ≪ 1 means β stays
at the middle of its range. At CPU budgets it is ≪ 1 (the universal model barely depends on β yet and α falls from
1 by about `--alpha-lr` per step in log α), so β stays ≈ (β_lo + β_hi)/2. To let it move sooner at small budgets,
start α small or let it fall faster: on o2o/pendulum/medium-replay-v0 (seed 1, 3000 offline steps) the ratio is 0.13
and β's spread across states 0.14 by default, 0.75 and 0.69 with `--alpha-lr 3e-3`, 4.9 and 0.79 with
`--init-alpha 0.01` (already 1.5 and 0.48 at step 1000); the normalized scores were ≈ 102 in all three.

Deviations from the paper / official code (and choices where neither says):
- Step budgets default to CPU size (20k offline gradient steps, 20k online env steps); the paper's 1M + 1M are
  `--offline-steps 1000000 --online-steps 1000000` (set by every paper configuration). All other defaults are
  FamO2O+IQL's locomotion ones (jax_iql/family_learner.py defaults: expectile 0.8, β ∈ [1, 5], lr 3e-4 everywhere,
  batch 256, γ 0.99, τ 0.005, weight clip 100, 2M buffer), except the weight mode (per_sample, see below).
- Advantage weight: the default `--weight-mode per_sample` is the paper's intent, w_j = min(exp(β_j·A_j), 100).
  The released IQL code broadcasts a [B] advantage against a [B, 1] β, which trains with the batch-averaged
  w_j = (1/B)·Σ_i min(exp(β_i·A_j), 100); that is `--weight-mode batch_mean` (what reproduced the paper's AntMaze
  table). The log-prob is conditioned on the sample's own β_j in both modes.
  With batch_mean the weight does not depend on the sample's own β_j, so every β regresses onto the same weighted
  data: the universal model's β-dependence comes only from function approximation, and the balance model has
  nothing to adapt to (β cannot adapt by construction; a warning is printed when it is combined with adaptive β).
- Actor learning rate is constant. The unreleased locomotion config would have inherited a cosine decay over all
  updates (`FamilyLearner`'s default `opt_decay_schedule` in jax_iql/family_learner.py), which reaches 0 exactly when
  online training starts; the AntMaze config (jax_iql/configs/family_antmaze_finetune_config.py) is constant.
- Actions are mapped affinely from the env's Box to [-1, 1] (the official code assumes D4RL's [-1, 1] actions);
  dataset actions are then clipped to ±(1 − 1e-5) as in the official code.
- Reward preprocessing is `--reward-scale-mode`: `locomotion` (default; r·1000/(max − min episode return of the
  dataset), the paper's locomotion rule), `goal` (r − 1, the AntMaze rule) or `none`. It is applied at sampling time
  to offline and online transitions alike. For Pendulum (200-step episodes, r ∈ [-16.3, 0], no terminations) the
  locomotion rule multiplies rewards by ≈ 0.77 (medium-replay), close to raw; it is the default because it is the
  rule the paper uses for dense-reward control and keeps the file's defaults unit-free.
- Evaluation: `--eval-episodes` (10) deterministic episodes every `--eval-freq` steps and at the end of each phase,
  instead of 100 episodes every 100k steps; the online phase is also evaluated at env step 0 (before any interaction
  or update: the score fine-tuning starts from) and, with `--early-eval-freq`, every that many env steps during the
  first `--early-eval-until` env steps. The summary's `offline` entry comes from offline-phase evaluations (the last
  one at the end of the offline phase) and `online` from online-phase evaluations (step 0 included).
- GPU: no host synchronisation in the update step (closed-form Gaussian log-densities instead of
  torch.distributions, whose argument checks sync; minibatch indices drawn on the device; statistics computed only
  on logging steps, returned as detached tensors and copied to the host there in one transfer); an online step
  copies one tensor to the host (the action and β) and one to the device (s′, r and the terminal flag).
- Speed, same numbers: fused Adam, in-place ReLUs, one Polyak call over all parameters, V_new on [s; s′] in one
  pass. (Concatenating AWAC's three Q_targ passes measured slower on CPU: larger fresh allocations cost more than
  the calls they save.)
  `--compile` wraps the update in torch.compile (CUDA graphs on CUDA, mode="reduce-overhead"), with eager's random
  stream (inductor's fallback_random), so a seed gives the same run as without it.
- Online terminals: only `terminated` cuts the bootstrap (gymnasium's flags replace the old `TimeLimit.truncated` key).
- The balance model and the temperature are updated with `loss.backward(inputs=balance params)`: gradients flow
  through the universal actor's input and the target critic, whose parameters are never touched (same result as
  JAX's functional update with frozen parameters).
- Twin Q is one vectorized ensemble (stacked [2, in, out] weights), numerically the same as two networks.
- Buffer: one array of capacity min(--buffer-size, dataset + online steps), offline data first, online transitions
  appended, uniform sampling, FIFO overwrite if ever full (as the CQL code; the IQL code never fills its buffer).
- AWAC base (`--base awac`; the paper reports it but its code was never released). Choices:
  * critic: twin Q, target y = r + γ·(1 − term)·min Q_targ(s', a'), a' ~ π_u(·| s', enc(β')) with β' the balance model's
    mode at s' (the β the agent would act with there; the fixed β in the ablation), a' clipped to [-1, 1];
  * advantage A = min Q_targ(s, a) − min Q_targ(s, ã), ã ~ π_u(·| s, enc(β_j)) clipped to [-1, 1] like a′ (one
    sample, as rlkit's AWAC, but with the target critic, like the IQL variant and the balance loss; rlkit uses the
    online Q);
  * actor: the same weighted regression as IQL with β as inverse temperature (AWAC's exp(A/λ), λ = 1/β), same
    β range [1, 5], same clip and weight modes; no batch-softmax normalization (rlkit's option), no V network;
  * the same networks, learning rates and universal/balance models as the IQL variant.
- `--balance fixed` is the ablation: a single β (`--fixed-beta`; default 3 with IQL, plain IQL's locomotion value,
  and 1 with AWAC, AWAC's usual λ = 1, e.g. CORL's `awac_lambda`) for training and acting, no balance model or
  temperature updates; the universal model still receives enc(β), a constant input, which makes it the base
  algorithm alone.
- `--capture-video` records one deterministic episode after training (needs the env's rgb_array renderer).
- Checkpoints (`--save-model`): every model, every Adam state and log α, at the end of the run
  (`{exp_name}.cleanrl_model`) and at the end of the offline phase (`offline_checkpoint.pt`). `--load-offline PATH`
  starts the online phase from the latter, as if the offline phase had just ended (the official code carries models
  and optimiser states across the switch): it refuses, with exit 2, a checkpoint of another env, observation or
  action size, base, balance, β range, fixed β or width, and warns on another dataset. The random-number stream is
  not saved, so the online phase after a load is a different sample from the one after training in the same run.
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
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available (CPU otherwise)"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases (wandb must be installed)"""
    wandb_project_name: str = "o2o"
    """the wandb's project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of wandb's project"""
    capture_video: bool = False
    """whether to capture videos of the final evaluation episode (into the run directory's `videos/`)"""
    save_model: bool = False
    """whether to save model checkpoints into the run directory: the final agent (`{exp_name}.cleanrl_model`) and,
    after offline training, the offline phase's end (`offline_checkpoint.pt`, for --load-offline)"""
    run_dir: Optional[str] = None
    """where logs, checkpoints and summary.json go (default: runs/{run_name})"""
    dataset_id: str = "o2o/pendulum/medium-replay-v0"
    """Minari dataset id: a local one (see `python benchmark/make_datasets.py`) or a remote one with --download"""
    download: bool = False
    """fetch the dataset from Minari's remote server when it is not on the local disk"""
    offline_steps: int = 20_000
    """number of offline gradient steps (0 skips the offline phase; the paper uses 1_000_000)"""
    load_offline: Optional[str] = None
    """path of an `offline_checkpoint.pt` saved with --save-model: skips offline training and fine-tunes the saved
    models, optimiser states and temperature (--offline-steps is then ignored)"""
    online_steps: int = 20_000
    """number of online environment steps, one gradient step each (0 skips the online phase; paper: 1_000_000)"""
    eval_freq: int = 5_000
    """evaluate every this many steps (gradient steps offline, environment steps online)"""
    early_eval_freq: int = 0
    """online phase: also evaluate every this many env steps during the first `early_eval_until` env steps, to
    resolve the start-of-fine-tuning dip (0: off)"""
    early_eval_until: int = 0
    """online phase: env steps over which `early_eval_freq` applies"""
    eval_episodes: int = 10
    """number of deterministic evaluation episodes"""
    batch_size: int = 256
    """minibatch size"""
    # ---- FamO2O ----
    base: Literal["iql", "awac"] = "iql"
    """base algorithm: `iql` (twin Q + expectile V + AWR, the released code) or `awac` (paper only, see header)"""
    balance: Literal["adaptive", "fixed"] = "adaptive"
    """`adaptive`: FamO2O's balance model picks β per state; `fixed`: one β (`--fixed-beta`), the base alone"""
    beta_lo: float = 1.0
    """lower end of the balance coefficient range [β_lo, β_hi] (AWR inverse temperature; AntMaze used [8, 14])"""
    beta_hi: float = 5.0
    """upper end of the balance coefficient range"""
    fixed_beta: Optional[float] = None
    """the single β of `--balance fixed`; default by base: 3 for IQL (plain IQL's locomotion inverse temperature),
    1 for AWAC (AWAC's usual λ = 1, i.e. exp(A/λ) with β = 1/λ)"""
    weight_mode: Literal["per_sample", "batch_mean"] = "per_sample"
    """`per_sample`: min(exp(β_j A_j), 100) (the paper); `batch_mean`: mean_i min(exp(β_i A_j), 100) (official code).
    With batch_mean a sample's weight does not depend on its own β_j, so the universal model cannot learn different
    policies for different β and the balance model has nothing to adapt to (a warning is printed with adaptive β)"""
    weight_clip: float = 100.0
    """upper clip of the advantage weight"""
    expectile: float = 0.8
    """IQL expectile τ_e of the V regression (FamO2O's default; plain IQL locomotion uses 0.7)"""
    gamma: float = 0.99
    """discount factor γ"""
    tau: float = 0.005
    """Polyak rate of the target twin Q"""
    actor_lr: float = 3e-4
    """learning rate of the universal model (constant)"""
    critic_lr: float = 3e-4
    """learning rate of the twin Q"""
    value_lr: float = 3e-4
    """learning rate of V (IQL)"""
    balance_lr: float = 3e-4
    """learning rate of the balance model"""
    alpha_lr: float = 3e-4
    """learning rate of the balance model's log-temperature log α"""
    init_alpha: float = 1.0
    """initial entropy temperature α of the balance model"""
    target_entropy: float = -0.5
    """target entropy of the balance model's 1-d distribution"""
    hidden_dim: int = 256
    """width of the two hidden layers of every network"""
    buffer_size: int = 2_000_000
    """replay capacity (offline data first, online transitions appended)"""
    reward_scale_mode: Literal["locomotion", "goal", "none"] = "locomotion"
    """`locomotion`: r·1000/(max−min dataset episode return); `goal`: r − 1 (AntMaze); `none`: raw rewards"""
    log_freq: int = 1_000
    """log losses and the β distribution every this many gradient steps"""
    compile: bool = False
    """torch.compile the update step (on CUDA with CUDA graphs, mode="reduce-overhead"); same results within float
    rounding, a one-off compilation cost at the first updates"""


# ----------------------------------------------------------------------------------------------
# ALGO LOGIC: networks. Every Linear: orthogonal init with gain √2, zero bias (as the official flax code).
# ----------------------------------------------------------------------------------------------
def encode_beta(beta: torch.Tensor, n: float = 10_000.0, d: int = 6) -> torch.Tensor:
    """enc(β): β [...] -> [..., d], interleaved sin/cos of β / n^(2i/d), i = 0..d/2−1 (divisors 1, ≈21.5, ≈464 for
    d = 6). Applied to the mapped β (e.g. in [1, 5]); the network never sees the raw β."""
    divisors = n ** (torch.arange(0, d, 2, dtype=beta.dtype, device=beta.device) / d)
    angles = beta.unsqueeze(-1) / divisors  # [..., d/2]
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)


def orthogonal_init(module: nn.Module, gain: float = math.sqrt(2)):
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight, gain)
        nn.init.zeros_(module.bias)


def mlp(in_dim: int, out_dim: int, hidden: int) -> nn.Sequential:
    # in-place ReLUs: a Linear's backward does not need its output, and one fresh activation less per layer is faster
    relu = nn.ReLU(inplace=True)
    net = nn.Sequential(nn.Linear(in_dim, hidden), relu, nn.Linear(hidden, hidden), relu, nn.Linear(hidden, out_dim))
    net.apply(orthogonal_init)
    return net


class VectorizedLinear(nn.Module):
    """n independent Linear layers as one batched matmul: x [n, B, in] -> [n, B, out]; weights stacked (n, in, out)."""

    def __init__(self, in_features: int, out_features: int, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(n, 1, out_features))
        for w in self.weight:  # init only, not a hot path
            nn.init.orthogonal_(w, math.sqrt(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class TwinQ(nn.Module):
    """Q_1, Q_2 (s, a) as one vectorized ensemble; returns [2, B]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, n: int = 2):
        super().__init__()
        self.n = n
        self.net = nn.Sequential(
            VectorizedLinear(obs_dim + act_dim, hidden, n),
            nn.ReLU(inplace=True),
            VectorizedLinear(hidden, hidden, n),
            nn.ReLU(inplace=True),
            VectorizedLinear(hidden, 1, n),
        )

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], -1).unsqueeze(0).expand(self.n, -1, -1)
        return self.net(x).squeeze(-1)


class ValueNet(nn.Module):
    """V(s) -> [B] (IQL)."""

    def __init__(self, obs_dim: int, hidden: int):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


class UniversalActor(nn.Module):
    """π_u(a | s, β): Gaussian N(tanh(f(s, enc(β))), σ) with a state-independent log σ clipped to [−5, 2].
    The tanh is on the mean only (no squashed distribution), so dataset actions need no atanh."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.net = mlp(obs_dim + 6, act_dim, hidden)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def forward(self, obs: torch.Tensor, beta_code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tanh(self.net(torch.cat([obs, beta_code], -1)))
        return mean, self.log_std.clamp(-5.0, 2.0).exp().expand_as(mean)

    def log_prob(self, obs: torch.Tensor, beta_code: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Diagonal Gaussian log-density in closed form (torch.distributions.Normal validates its arguments,
        which synchronizes a GPU on every call)."""
        mean, std = self(obs, beta_code)
        return gaussian_log_prob((act - mean) / std, std.log()).sum(-1)

    def rsample(self, obs: torch.Tensor, beta_code: torch.Tensor) -> torch.Tensor:
        mean, std = self(obs, beta_code)
        return mean + std * torch.randn_like(mean)


def gaussian_log_prob(eps: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(x; μ, σ) from the standardized ε = (x − μ)/σ and log σ, element-wise."""
    return -0.5 * eps.pow(2) - log_std - 0.5 * math.log(2.0 * math.pi)


def tanh_log_det(u: torch.Tensor) -> torch.Tensor:
    """log(1 − tanh(u)²) = 2·(log 2 − u − softplus(−2u)), finite for any u (no atanh of z)."""
    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))


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
        mu = self.net(obs).squeeze(-1)
        log_std = self.log_std.clamp(-10.0, 2.0)
        eps = torch.randn_like(mu)
        u = mu + log_std.exp() * eps
        logp = gaussian_log_prob(eps, log_std) - tanh_log_det(u)
        return self.to_beta(torch.tanh(u)), logp

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.to_beta(torch.tanh(self.net(obs).squeeze(-1)))


# ----------------------------------------------------------------------------------------------
# ALGO LOGIC: replay buffer. Offline data first, online transitions appended, uniform sampling
# ----------------------------------------------------------------------------------------------
class ReplayBuffer:
    """Transitions on the device; `sample` returns rewards as reward_scale·r + reward_shift (`--reward-scale-mode`,
    applied at sampling time to offline and online transitions alike)."""

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


# ----------------------------------------------------------------------------------------------
# ALGO LOGIC: losses and the update step
# ----------------------------------------------------------------------------------------------
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


DEFAULT_FIXED_BETA = dict(iql=3.0, awac=1.0)  # plain IQL's locomotion β = 3; AWAC's λ = 1 (CORL's awac_lambda)


def resolve_fixed_beta(args: Args) -> float:
    """The β of `--balance fixed`: `--fixed-beta`, or the base's default (IQL 3, AWAC 1) when it is not given."""
    return DEFAULT_FIXED_BETA[args.base] if args.fixed_beta is None else float(args.fixed_beta)


class FamO2O:
    """All models, optimizers and the gradient step. Models read start-of-step parameters unless stated."""

    def __init__(self, obs_dim: int, act_dim: int, args: Args, device: torch.device):
        self.args, self.device = args, device
        h = args.hidden_dim
        self.actor = UniversalActor(obs_dim, act_dim, h).to(device)
        self.q = TwinQ(obs_dim, act_dim, h).to(device)
        self.q_target = TwinQ(obs_dim, act_dim, h).to(device)
        self.q_target.load_state_dict(self.q.state_dict())
        self.q_target.requires_grad_(False)
        self.value = ValueNet(obs_dim, h).to(device) if args.base == "iql" else None
        self.balance = BalanceModel(obs_dim, h, args.beta_lo, args.beta_hi).to(device)
        self.log_alpha = torch.tensor([math.log(args.init_alpha)], device=device, requires_grad=True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=args.actor_lr, fused=True)
        self.q_opt = torch.optim.Adam(self.q.parameters(), lr=args.critic_lr, fused=True)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=args.value_lr, fused=True) if self.value else None
        self.balance_opt = torch.optim.Adam(self.balance.parameters(), lr=args.balance_lr, fused=True)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=args.alpha_lr, fused=True)
        self.adaptive = args.balance == "adaptive"
        if args.compile:
            # inductor's own random numbers would differ from eager's: keep eager's stream, so a seed gives one run
            torch._inductor.config.fallback_random = True
            self.update = torch.compile(self.update, mode="reduce-overhead" if device.type == "cuda" else None)

    def checkpoint(self) -> dict:
        """Every model, optimiser state and log α: what training needs to carry on exactly (the official code keeps
        its models and Adam states across the phase switch)."""
        opts = ("actor_opt", "q_opt", "value_opt", "balance_opt", "alpha_opt")
        return dict(
            actor=self.actor.state_dict(),
            balance=self.balance.state_dict(),
            q=self.q.state_dict(),
            q_target=self.q_target.state_dict(),
            value=self.value.state_dict() if self.value else None,
            log_alpha=self.log_alpha.detach().cpu(),
            **{k: getattr(self, k).state_dict() if getattr(self, k) else None for k in opts},
        )

    def load_checkpoint(self, ckpt: dict):
        """Inverse of `checkpoint` (onto this agent's device)."""
        for k in ("actor", "balance", "q", "q_target", "value"):
            if getattr(self, k) is not None:
                getattr(self, k).load_state_dict(ckpt[k])
        for k in ("actor_opt", "q_opt", "value_opt", "balance_opt", "alpha_opt"):
            if getattr(self, k) is not None:
                getattr(self, k).load_state_dict(ckpt[k])
        with torch.no_grad():
            self.log_alpha.copy_(ckpt["log_alpha"])

    # -- β helpers --
    def fixed_beta(self, n: int) -> torch.Tensor:
        return torch.full((n,), resolve_fixed_beta(self.args), device=self.device)

    @torch.no_grad()
    def acting_beta(self, obs: torch.Tensor) -> torch.Tensor:
        """β the agent acts with: the balance model's mode (or the fixed β)."""
        return self.balance.mode(obs) if self.adaptive else self.fixed_beta(len(obs))

    @torch.no_grad()
    def sample_action(self, obs: torch.Tensor, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """For one observation [1, obs_dim] on the device: the action in [-1, 1] [act_dim] (π_u's mean, or a sample
        of it, at the acting β) and that β [1], both left on the device."""
        beta = self.acting_beta(obs)
        mean, std = self.actor(obs, encode_beta(beta))
        a = mean if deterministic else mean + std * torch.randn_like(mean)
        return a.clamp(-1.0, 1.0)[0], beta

    def act(self, obs: np.ndarray, deterministic: bool) -> tuple[np.ndarray, float]:
        """Action in [-1, 1] and the β used, for one host observation."""
        o = torch.as_tensor(obs, dtype=torch.float32, device=self.device).reshape(1, -1)
        out = torch.cat(self.sample_action(o, deterministic)).cpu().numpy()  # one device -> host copy per env step
        return out[:-1], float(out[-1])

    def balance_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SAC-style loss of π_b over its 1-d action β: mean[α·log π_b(z|s) − min Q_targ(s, ã)], with ã the universal
        actor's reparameterized action at (s, enc(β)). The graph runs through the actor's input and the target Q;
        the caller restricts backward to the balance parameters."""
        beta, logp = self.balance.rsample(obs)
        a = self.actor.rsample(obs, encode_beta(beta))
        q = self.q_target(obs, a).min(0).values
        alpha = self.log_alpha.exp().detach()
        return (alpha * logp - q).mean(), logp.detach(), beta.detach()

    def balance_diagnostics(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Can the balance model move? Measured at the β the agent acts with (π_b's mode, or the fixed β) on `obs`:
        - beta_mean, beta_std: mean and spread (std across the states) of that β;
        - dq_dbeta: mean over states of |d min Q_targ(s, μ_u(s, enc(β))) / dβ|, the critic's pull on β (the signal
          the balance loss follows; μ_u is the universal model's mean action, whose gradient equals the sample's);
        - action_spread: mean over states and action dims of |μ_u(s, β_hi) − μ_u(s, β_lo)|, how much the universal
          model's action depends on β at all (0: every β gives the same action, nothing to choose);
        - q_entropy_ratio: mean of |dQ/dβ|·(β_hi − β_lo)/(4α). In u (pre-tanh) the balance loss's entropy term pulls
          towards the middle of the range with 2α·tanh(u) and the critic with dQ/dβ·(β_hi − β_lo)/2·(1 − tanh²u);
          their balance puts z = tanh(u) ≈ this ratio while it is small, so ≪ 1 means β stays near the middle;
        - alpha: the entropy temperature α.
        Logging-step only (not in the hot loop). Returns detached 0-d tensors."""
        beta = self.acting_beta(obs).clone().requires_grad_(True)
        with torch.enable_grad():
            mean, _ = self.actor(obs, encode_beta(beta))
            q = self.q_target(obs, mean).min(0).values
            (dq,) = torch.autograd.grad(q.sum(), beta)  # per-state derivative: state i only sees its own β_i
        with torch.no_grad():
            ends = [torch.full((len(obs),), b, device=self.device) for b in (self.args.beta_lo, self.args.beta_hi)]
            lo, hi = (self.actor(obs, encode_beta(b))[0] for b in ends)
            alpha = self.log_alpha.exp()[0]
            return dict(
                beta_mean=beta.detach().mean(),
                beta_std=beta.detach().std(unbiased=False),
                dq_dbeta=dq.abs().mean(),
                action_spread=(hi - lo).abs().mean(),
                q_entropy_ratio=(dq.abs() * (self.args.beta_hi - self.args.beta_lo) / (4.0 * alpha)).mean(),
                alpha=alpha,
            )

    def update(self, batch: dict[str, torch.Tensor], online: bool, stats: bool = False) -> dict[str, torch.Tensor]:
        """One gradient step: V → balance → α → universal actor → Q → Polyak. Returns the losses, and with `stats`
        (the loop's logging steps) the statistics logged beside them, as detached tensors (no device sync here; the
        caller converts them when it logs). Random draws come in the same order as they always have (β, a′, ã, the
        balance sample), so a seed gives the same run."""
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
            q_targ = self.q_target(obs, act).min(0).values  # min(Q1_targ, Q2_targ)(s, a)
            if args.base == "awac":  # next action for the TD target, from start-of-step actor and balance model
                next_beta = self.acting_beta(next_obs)
                next_act = self.actor.rsample(next_obs, encode_beta(next_beta)).clamp(-1.0, 1.0)
                next_v = self.q_target(next_obs, next_act).min(0).values
                # ã is clipped to the action box like a′ (and like the actions the agent executes)
                base_act = self.actor.rsample(obs, encode_beta(beta)).clamp(-1.0, 1.0)
                baseline = self.q_target(obs, base_act).min(0).values
                adv = q_targ - baseline

        # 1) V by expectile regression (IQL)
        if args.base == "iql":
            v = self.value(obs)
            value_loss = expectile_loss(q_targ - v, args.expectile)
            self.value_opt.zero_grad(set_to_none=True)
            value_loss.backward()
            self.value_opt.step()
            with torch.no_grad():  # V_new feeds both the advantage and the Q target: one pass over [s; s′]
                v_new, next_v = self.value(torch.cat([obs, next_obs])).split(batch_size)
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
                info.update(
                    balance_entropy=entropy.detach(),
                    alpha=self.log_alpha.exp().detach(),
                    balance_beta_mean=b_beta.mean().detach(),
                )

        # 4) universal actor: advantage-weighted regression on dataset actions, conditioned on enc(β_j)
        weights = advantage_weights(beta, adv, args.weight_mode, args.weight_clip)
        log_prob = self.actor.log_prob(obs, encode_beta(beta), act)
        actor_loss = -(weights * log_prob).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()

        # 5) twin Q towards r + γ·(1 − term)·V_new(s') (IQL) or r + γ·(1 − term)·min Q_targ(s', a') (AWAC)
        y = rew + args.gamma * (1 - term) * next_v
        q = self.q(obs, act)
        q_loss = (q - y.unsqueeze(0)).pow(2).sum(0).mean()
        self.q_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        self.q_opt.step()

        # 6) Polyak
        soft_update(self.q_target, self.q, args.tau)

        info.update(actor_loss=actor_loss.detach(), qf_loss=q_loss.detach())
        if stats:
            info.update(
                qf1_values=q[0].mean().detach(),
                qf2_values=q[1].mean().detach(),
                advantage=adv.mean().detach(),
                adv_weight=weights.mean().detach(),
                actor_beta_mean=beta.mean().detach(),
                actor_std=self.actor.log_std.clamp(-5, 2).exp().mean().detach(),
            )
        return info


# ----------------------------------------------------------------------------------------------
# ALGO LOGIC: main. The offline loop (β uniform for the actor), then the online loop (β from π_b)
# ----------------------------------------------------------------------------------------------
def main(args: Args) -> dict:
    validate(args)
    args = replace(args, fixed_beta=resolve_fixed_beta(args))  # record the β actually used in summary.json
    try:  # load data BEFORE creating the run dir, so bad input leaves nothing behind
        dataset = load_minari_dataset(args.dataset_id, args.download)
        data = dataset_to_transitions(dataset)
        eval_env = make_eval_env(dataset)
        r_scale, r_shift = reward_transform(data, args.reward_scale_mode)
        env_id = eval_env.spec.id if eval_env.spec else str(dataset.spec.env_spec)
        meta = offline_meta(args, env_id, data["observations"].shape[1], data["actions"].shape[1])
        ckpt = load_offline_checkpoint(args.load_offline, meta) if args.load_offline else None
    except DatasetError as e:
        fail(str(e))
    if not isinstance(dataset.action_space, gym.spaces.Box) or not np.all(np.isfinite(dataset.action_space.low)):
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
    obs_dim, act_dim = data["observations"].shape[1], data["actions"].shape[1]
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

    eval_seed = args.seed * 1_000 + 100_000
    beta_summary: dict = {}  # summary.json's `beta`: the last evaluation of each phase, the last online window

    def run_eval(phase: str, step: int):
        with log.timer("eval"), log.timer(f"{phase}_eval"):
            stats = BetaStats(args.beta_lo, args.beta_hi)

            def policy(o):
                a, beta = agent.act(o, deterministic=True)
                stats.add(beta)
                return to_env(a)

            returns = evaluate(eval_env, policy, args.eval_episodes, eval_seed)
            s = log_beta(log, phase, step, stats.flush(), "eval")
            score = normalized_score(dataset, float(returns.mean()))
            log.eval(phase, step, returns, score, eval_beta_mean=s["mean"], eval_beta_std=s["std"])
            beta_summary[f"{phase}_final_eval"] = s

    # balance-model diagnostics on logging steps: TensorBoard `{phase}/diagnostics/*` and summary.json["diagnostics"]
    diagnostics: dict = {phase: dict(step=[]) for phase in ("offline", "online")}

    def log_update(phase: str, step: int, info: dict, obs: torch.Tensor):
        values = torch.stack([v.reshape(()) for v in info.values()]).tolist()  # one device -> host copy for all
        for k, v in zip(info, values):
            log.scalar(phase, f"losses/{k}", v, step)
        d = diagnostics[phase]
        d["step"].append(step)
        stats = agent.balance_diagnostics(obs)
        for k, v in zip(stats, torch.stack(list(stats.values())).tolist()):
            d.setdefault(k, []).append(v)
            log.scalar(phase, f"diagnostics/{k}", v, step)

    offline_done = 0
    if ckpt is not None:  # --load-offline: the saved offline phase, evaluated as it ended
        agent.load_checkpoint(ckpt)
        offline_done = int(ckpt["offline_steps"])
        print(f"loaded the offline phase from {args.load_offline} ({offline_done} gradient steps); skipping it")
        run_eval("offline", offline_done)
    else:
        offline_done = offline_loop(args, agent, buffer, log, log_update, run_eval)
        if args.save_model and offline_done > 0:
            path = os.path.join(run_dir, "offline_checkpoint.pt")
            torch.save(dict(meta=meta, offline_steps=offline_done, **agent.checkpoint()), path)
            print(f"saved the offline phase to {path} (fine-tune from it with --load-offline {path})")

    online_updates = 0
    if args.online_steps > 0:
        env = dataset.recover_environment()
        if not isinstance(env.observation_space, gym.spaces.Box):
            env = gym.wrappers.FlattenObservation(env)
        # the policy fine-tuning starts from, on the online curve at env step 0 (before any interaction or update)
        run_eval("online", 0)
        acting = online_loop(args, agent, buffer, env, to_env, log, log_update, run_eval)
        if acting is not None:
            beta_summary["online_acting_last_window"] = acting
        online_updates = args.online_steps
        env.close()

    if args.save_model:
        torch.save(dict(meta=meta, **agent.checkpoint()), os.path.join(run_dir, f"{args.exp_name}.cleanrl_model"))
    if args.capture_video:
        try:
            venv = gym.wrappers.RecordVideo(
                make_eval_env(dataset, render_mode="rgb_array"), os.path.join(run_dir, "videos"), disable_logger=True
            )
            evaluate(venv, lambda o: to_env(agent.act(o, deterministic=True)[0]), 1, eval_seed)
            venv.close()
        except Exception as e:  # a missing renderer must not lose the run's results
            warn(f"video capture failed ({type(e).__name__}: {e})")
    times, offline_trained = log.stage_times, args.offline_steps > 0 and ckpt is None
    summary = log.summary(
        base=args.base,
        balance=args.balance,
        reward_scale=r_scale,
        reward_shift=r_shift,
        offline_gradient_steps=offline_done,
        offline_loaded_from=args.load_offline,
        online_env_steps=args.online_steps,
        online_gradient_steps=online_updates,
        throughput=dict(
            offline_grad_steps_per_s=args.offline_steps / times["offline"] if offline_trained else None,
            online_steps_per_s=args.online_steps / times["online"] if args.online_steps else None,
        ),
        beta=beta_summary,
        diagnostics=diagnostics,
    )
    eval_env.close()
    return summary


def offline_loop(args: Args, agent: FamO2O, buffer: ReplayBuffer, log: "RunLogger", log_update, run_eval) -> int:
    """`--offline-steps` gradient steps on the dataset, the actor's β uniform in [β_lo, β_hi]. Returns the step
    count. stage_times["offline"] is the loop without its evaluations."""
    start = time.time()
    for step in range(1, args.offline_steps + 1):
        with log.timer("offline"):
            batch = buffer.sample(args.batch_size)
            logging = step % args.log_freq == 0
            info = agent.update(batch, online=False, stats=logging)
            if logging:
                log_update("offline", step, info, batch["obs"])
                sps = step / (time.time() - start)
                log.scalar("offline", "charts/SPS", sps, step)
                if step % (10 * args.log_freq) == 0:
                    print(
                        f"[offline] step {step}/{args.offline_steps}: {sps:.0f} grad steps/s, "
                        f"actor loss {float(info['actor_loss']):.3f}, Q {float(info['qf1_values']):.1f}",
                        flush=True,
                    )
        if eval_due(step, args.offline_steps, args, online=False):
            run_eval("offline", step)
    return args.offline_steps


def online_loop(
    args: Args, agent: FamO2O, buffer: ReplayBuffer, env: gym.Env, to_env, log: "RunLogger", log_update, run_eval
) -> Optional[dict]:
    """`--online-steps` env steps, each followed by one gradient step, the actor's β sampled from π_b; transitions
    are appended to the buffer that holds the dataset. Returns the statistics of the β acted with in the last window
    between evaluations. stage_times["online"] is the loop without its evaluations."""
    device, start = buffer.device, time.time()
    env.action_space.seed(args.seed)
    obs, _ = env.reset(seed=args.seed)
    obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device).reshape(-1)
    ep_ret, ep_len, acting, last_window = 0.0, 0, BetaStats(args.beta_lo, args.beta_hi), None
    for step in range(1, args.online_steps + 1):
        with log.timer("online"):
            act_t, beta_t = agent.sample_action(obs_t[None], deterministic=False)
            a_beta = torch.cat([act_t, beta_t]).cpu().numpy()  # one device -> host copy per env step
            acting.add(a_beta[-1:])
            next_obs, r, terminated, truncated, _ = env.step(to_env(a_beta[:-1]))
            # s', r and the terminal flag reach the device in one host -> device copy
            row = np.concatenate([np.asarray(next_obs, dtype=np.float32).ravel(), [r, float(terminated)]])
            row_t = torch.as_tensor(row, dtype=torch.float32, device=device)
            next_obs_t = row_t[:-2]
            buffer.add(obs_t, act_t, row_t[-2], next_obs_t, row_t[-1])
            ep_ret, ep_len = ep_ret + float(r), ep_len + 1
            obs_t = next_obs_t
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
                log_update("online", step, info, batch["obs"])
                sps = step / (time.time() - start)
                log.scalar("online", "charts/SPS", sps, step)
                if step % (10 * args.log_freq) == 0:
                    print(f"[online] step {step}/{args.online_steps}: {sps:.0f} env+grad steps/s", flush=True)
        if eval_due(step, args.online_steps, args, online=True):
            last_window = log_beta(log, "online", step, acting.flush(), "charts") or last_window
            run_eval("online", step)
    return last_window


# ----------------------------------------------------------------------------------------------
# Per-file setup, not algorithm logic: flag checks, paper configurations, reward scale, checkpoints, β records
# ----------------------------------------------------------------------------------------------
def validate(args: Args):
    """Reject impossible flags before anything is loaded or written (tyro already rejects unknown choices)."""
    steps = ("offline_steps", "online_steps")
    counts = ("eval_freq", "eval_episodes", "batch_size", "hidden_dim", "buffer_size", "log_freq")
    check_flags(
        [
            (
                not args.beta_lo < args.beta_hi,
                f"the β range needs --beta-lo < --beta-hi, got [{args.beta_lo}, {args.beta_hi}]",
            ),
            (
                args.beta_lo < 0 or (args.fixed_beta is not None and args.fixed_beta < 0),
                "β is an inverse temperature: --beta-lo and --fixed-beta must be ≥ 0",
            ),
            *((getattr(args, k) < 0, f"--{k.replace('_', '-')} must be ≥ 0") for k in steps),
            *((getattr(args, k) < 1, f"--{k.replace('_', '-')} must be ≥ 1") for k in counts),
            (not 0.0 < args.expectile < 1.0, "--expectile must be in (0, 1)"),
            (
                not 0.0 <= args.gamma <= 1.0 or not 0.0 < args.tau <= 1.0,
                "--gamma must be in [0, 1] and --tau in (0, 1]",
            ),
            (args.weight_clip <= 0 or args.init_alpha <= 0, "--weight-clip and --init-alpha must be > 0"),
            (
                args.early_eval_freq < 0 or args.early_eval_until < 0,
                "--early-eval-freq and --early-eval-until must be ≥ 0",
            ),
            (
                args.early_eval_freq > 0 and args.early_eval_until == 0,
                "--early-eval-freq > 0 needs --early-eval-until > 0 (the env steps over which it applies)",
            ),
        ]
    )
    if args.weight_mode == "batch_mean" and args.balance == "adaptive":
        warn(
            "--weight-mode batch_mean makes each sample's advantage weight independent of its own β, so the "
            "universal model cannot learn β-dependent policies and the adaptive β has nothing to adapt "
            "(use --weight-mode per_sample to adapt β)"
        )


# Paper configurations: `python algorithms/famo2o.py paper-hopper-medium-replay [--flag value ...]`.
# FamO2O+IQL on the paper's D4RL locomotion datasets (its results table's "IQL+FamO2O" column: hopper, halfcheetah,
# walker2d × medium, medium-replay, medium-expert, -v2 in D4RL; here our local D4RL-style rebuilds, see
# benchmark/make_datasets.py). The FamO2O+IQL locomotion config was never released, so every value is what the
# released IQL code runs with when no config overrides it: the flag defaults of jax_iql/family_train_finetune.py and
# the constructor defaults of FamilyLearner in jax_iql/family_learner.py (LeapLabTHU/FamO2O). None of them depends
# on the dataset, so the nine configs differ only in their dataset.
_FAMO2O_IQL_LOCOMOTION = dict(
    base="iql",  # the paper's "IQL+FamO2O" rows; IQL is the base of the released code (AWAC's was not released)
    balance="adaptive",  # FamO2O itself (`fixed` is the ablation)
    offline_steps=1_000_000,  # family_train_finetune.py: num_pretraining_steps = 1e6
    online_steps=1_000_000,  # family_train_finetune.py: max_steps = 1e6 env steps, one gradient step each
    # family_train_finetune.py: eval_interval = 1e5, eval_episodes = 100. Its extra evaluations every 5k steps over
    # the last 35k of each phase (last_eval_interval, last_eval_start_steps) have no flag here: our choice, each
    # phase still ends with an evaluation, the score the paper's table reports for the online phase
    eval_freq=100_000,
    eval_episodes=100,
    batch_size=256,  # family_train_finetune.py: batch_size = 256
    beta_lo=1.0,  # family_learner.py: family_coefficient_range = (1.0, 5.0)
    beta_hi=5.0,
    # official code, not the paper: family_actor.py multiplies the [B] advantage by the [B, 1] β, the batch-averaged
    # weight of the header (the paper's per-sample weight is the file's default, --weight-mode per_sample); with it
    # the run prints the warning that β cannot adapt
    weight_mode="batch_mean",
    weight_clip=100.0,  # family_actor.py: jnp.minimum(exp_a, 100.0)
    expectile=0.8,  # family_learner.py: expectile = 0.8
    gamma=0.99,  # family_learner.py: discount = 0.99
    tau=0.005,  # family_learner.py: tau = 0.005
    # family_learner.py: actor_lr = 3e-4. Its default opt_decay_schedule="cosine" over max_steps (1e6) counts the
    # pretraining updates too, so it would reach 0 when the online phase starts and keep the universal model frozen
    # online. Not released for locomotion: our choice is the constant rate of the released AntMaze config
    # (jax_iql/configs/family_antmaze_finetune_config.py, opt_decay_schedule = None); this file has no schedule
    actor_lr=3e-4,
    critic_lr=3e-4,  # family_learner.py: critic_lr = 3e-4
    value_lr=3e-4,  # family_learner.py: value_lr = 3e-4
    balance_lr=3e-4,  # family_learner.py: the balance model's optimiser is optax.adam(actor_lr)
    alpha_lr=3e-4,  # family_learner.py: hierarchical_temp_lr = 3e-4
    init_alpha=1.0,  # family_learner.py: hierarchical_init_temperature = 1.0
    target_entropy=-0.5,  # family_learner.py: target_entropy None -> -1/2
    hidden_dim=256,  # family_learner.py: hidden_dims = (256, 256)
    buffer_size=2_000_000,  # family_train_finetune.py: replay_buffer_size = 2e6
    reward_scale_mode="locomotion",  # family_train_finetune.py: r·1000/(max − min trajectory return) on hopper etc.
    log_freq=1_000,  # family_train_finetune.py: log_interval = 1000
)
PAPER_CONFIGS: dict[str, dict] = {
    f"paper-{env}-{quality}": dict(dataset_id=f"o2o/{env}/{quality}-v0", **_FAMO2O_IQL_LOCOMOTION)
    for env in ("hopper", "halfcheetah", "walker2d")
    for quality in ("medium", "medium-replay", "medium-expert")
}


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


OFFLINE_FORMAT = "famo2o-offline-v1"
# flags the saved models were built or trained with, which a run that loads them must share
OFFLINE_MATCH = ("env_id", "obs_dim", "act_dim", "base", "balance", "beta_lo", "beta_hi", "fixed_beta", "hidden_dim")


def offline_meta(args: Args, env_id: str, obs_dim: int, act_dim: int) -> dict:
    """What an offline checkpoint records about the run that made it (checked by `load_offline_checkpoint`)."""
    return dict(
        format=OFFLINE_FORMAT,
        env_id=env_id,
        dataset_id=args.dataset_id,
        obs_dim=obs_dim,
        act_dim=act_dim,
        base=args.base,
        balance=args.balance,
        beta_lo=args.beta_lo,
        beta_hi=args.beta_hi,
        fixed_beta=resolve_fixed_beta(args) if args.balance == "fixed" else None,
        hidden_dim=args.hidden_dim,
    )


def load_offline_checkpoint(path: str, expected: dict) -> dict:
    """Read a checkpoint saved at the end of the offline phase and check that it fits this run; DatasetError (exit 2,
    before anything is written) on a missing or foreign file or a mismatched flag."""
    if not os.path.isfile(path):
        raise DatasetError(f"--load-offline: no such file '{path}'")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        meta = ckpt["meta"]
        assert meta["format"] == OFFLINE_FORMAT, f"format {meta['format']!r}"
    except Exception as e:
        raise DatasetError(
            f"--load-offline: '{path}' is not a FamO2O offline checkpoint ({type(e).__name__}: {e}); "
            "save one with --save-model"
        ) from e
    for key in OFFLINE_MATCH:
        if meta.get(key) != expected[key]:
            raise DatasetError(
                f"--load-offline: '{path}' was trained with {key}={meta.get(key)!r} but this run has "
                f"{key}={expected[key]!r} (checkpoint dataset: {meta.get('dataset_id')}); pass matching flags, "
                "or train the offline phase for this run"
            )
    if meta["dataset_id"] != expected["dataset_id"]:
        warn(f"the offline checkpoint was trained on {meta['dataset_id']}, fine-tuning uses {expected['dataset_id']}")
    return ckpt


def eval_due(step: int, last: int, args: Args, online: bool) -> bool:
    """Whether to evaluate after `step` of a phase of `last` steps: every `eval_freq` steps and at the last step; in
    the online phase also every `early_eval_freq` env steps up to `early_eval_until`. (Online step 0 is evaluated
    before the loop.)"""
    early = online and args.early_eval_freq > 0 and step <= args.early_eval_until
    return step % args.eval_freq == 0 or step == last or (early and step % args.early_eval_freq == 0)


class BetaStats:
    """Record of the β the agent acts with, logged as mean/std/histogram so the balance model's choices show."""

    def __init__(self, lo: float, hi: float, bins: int = 10):
        self.edges = np.linspace(lo, hi, bins + 1)
        self.values: list[float] = []

    def add(self, betas):
        self.values.extend(np.asarray(betas, dtype=np.float64).ravel().tolist())

    def flush(self) -> Optional[dict]:
        if not self.values:
            return None
        v = np.array(self.values)
        self.values = []
        hist = np.histogram(np.clip(v, self.edges[0], self.edges[-1]), bins=self.edges)[0]
        return dict(
            mean=float(v.mean()),
            std=float(v.std()),
            min=float(v.min()),
            max=float(v.max()),
            histogram=hist.tolist(),
            bin_edges=self.edges.round(4).tolist(),
            raw=v,
        )


def log_beta(log: "RunLogger", phase: str, step: int, stats: Optional[dict], prefix: str) -> Optional[dict]:
    """`{phase}/{prefix}/beta_mean|beta_std` scalars and a `{phase}/{prefix}/beta` histogram; `prefix` is `eval`
    (β chosen in deterministic evaluation) or `charts` (β the agent acted with while collecting online data)."""
    if stats is None:
        return None
    raw = stats.pop("raw")
    log.scalar(phase, f"{prefix}/beta_mean", stats["mean"], step)
    log.scalar(phase, f"{prefix}/beta_std", stats["std"], step)
    log.writer.add_histogram(f"{phase}/{prefix}/beta", raw, step)
    return stats


# ==============================================================================================
# HARNESS: the same in famo2o.py, off2on.py and uni_o4.py (tests/test_conventions.py checks that it is
# identical): Minari loading and checks, evaluation, logging, seeding, errors, the command line. Skip it on
# a first read; the algorithm is above.
# ==============================================================================================
class DatasetError(ValueError):
    """Bad dataset input: the message says what was wrong and what to do."""


def load_minari_dataset(dataset_id: str, download: bool = False) -> minari.MinariDataset:
    """Load a local Minari dataset, or download it first when `download` is set."""
    local = minari.list_local_datasets()
    if dataset_id not in local:
        if not download:
            names = ", ".join(sorted(local)) or "none"
            raise DatasetError(
                f"dataset '{dataset_id}' is not on the local disk "
                f"(MINARI_DATASETS_PATH={os.environ.get('MINARI_DATASETS_PATH', '~/.minari/datasets')}).\n"
                f"  local datasets: {names}\n"
                "  build the project's local datasets with `python benchmark/make_datasets.py`, "
                "or pass --download to fetch a remote Minari dataset."
            )
        remote = os.environ.get("MINARI_REMOTE", "hf://farama-minari")
        host = {"hf": "huggingface.co", "gcp": "storage.googleapis.com"}.get(remote.split("://")[0])
        try:  # fail fast (huggingface_hub would retry for ~30 s) when there is no network
            if host:
                socket.create_connection((host, 443), timeout=5).close()
        except OSError as e:
            raise DatasetError(
                f"cannot download '{dataset_id}': Minari's remote {remote} is unreachable ({host}: {e}).\n"
                "  on a machine with a network, run again with --download; here, use a local dataset "
                "such as o2o/pendulum/medium-v0 (build them with `python benchmark/make_datasets.py`)."
            ) from e
        try:
            minari.download_dataset(dataset_id)
        except Exception as e:  # no network, unknown remote id, missing minari[hf]
            raise DatasetError(
                f"could not download '{dataset_id}' from Minari's remote: {type(e).__name__}: {e}\n"
                "  check the id with `minari list remote` on a machine with a network, or use a local dataset "
                "such as o2o/pendulum/medium-v0 (build them with `python benchmark/make_datasets.py`)."
            ) from e
    try:
        dataset = minari.load_dataset(dataset_id)
        dataset[0]  # minari reads lazily: open the data now, so a corrupted file is reported here
        return dataset
    except Exception as e:
        raise DatasetError(
            f"dataset '{dataset_id}' exists but could not be read ({type(e).__name__}: {e}); "
            f"it may be corrupted: delete it with `minari delete {dataset_id}` and build or download it again."
        ) from e


def _flatten_obs(space: gym.Space, obs) -> np.ndarray:
    """Stack an episode's observations as (T, obs_dim); Dict/Tuple of Boxes are flattened in the
    order gymnasium's FlattenObservation uses, so dataset and environment agree."""
    if isinstance(space, gym.spaces.Box):
        return np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)
    if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        keys = space.spaces.keys() if isinstance(space, gym.spaces.Dict) else range(len(space.spaces))
        return np.concatenate([_flatten_obs(space.spaces[k], obs[k]) for k in keys], axis=1)
    raise DatasetError(f"observation space {space} is not supported: only Box, or Dict/Tuple of Boxes")


def check_episode(dataset: minari.MinariDataset, ep, obs: np.ndarray) -> None:
    """Refuse an episode whose fields disagree, naming the dataset, the episode and the field: N+1 observations and
    N actions, rewards, terminations and truncations, of the spaces' widths, ended by (only) its last step."""
    where = f"dataset '{dataset.spec.dataset_id}', episode {ep.id}"
    steps = {
        "observations": len(obs) - 1,
        "actions": len(ep.actions),
        "rewards": len(ep.rewards),
        "terminations": len(ep.terminations),
        "truncations": len(ep.truncations),
    }
    counts = list(steps.values())
    n = max(counts, key=counts.count)  # the step count most fields agree on
    for field, k in steps.items():
        if k != n:
            have, need = (k + 1, n + 1) if field == "observations" else (k, n)
            raise DatasetError(
                f"{where}: '{field}' has {have} rows where the other fields need {need} (an episode of N steps has "
                "N+1 observations and N actions, rewards, terminations, truncations); rebuild the dataset"
            )
    if n == 0:
        raise DatasetError(f"{where}: the episode has no steps; rebuild the dataset")
    widths = {
        "observations": (obs.shape[1:], (gym.spaces.flatdim(dataset.observation_space),)),
        "actions": (np.shape(ep.actions)[1:], dataset.action_space.shape),
    }
    for field, (have, need) in widths.items():
        if tuple(have) != tuple(need):
            raise DatasetError(
                f"{where}: '{field}' rows have shape {tuple(have)}, the dataset's space needs {tuple(need)}; "
                "rebuild the dataset"
            )
    term, trunc = np.asarray(ep.terminations, dtype=bool), np.asarray(ep.truncations, dtype=bool)
    if not (term[-1] or trunc[-1]):
        raise DatasetError(
            f"{where}: its last step is set in neither 'terminations' nor 'truncations', so the episode is cut off "
            "(a Minari episode ends with one of them); rebuild the dataset"
        )
    for field, flags in (("terminations", term), ("truncations", trunc)):
        early = np.flatnonzero(flags[:-1])
        if early.size:
            raise DatasetError(
                f"{where}: '{field}' ends the episode at step {early[0]} of {n}, before its last step; rebuild the "
                "dataset"
            )


def dataset_to_transitions(dataset: minari.MinariDataset) -> dict[str, np.ndarray]:
    """(s, a, r, s', terminal) arrays from the episodes: s = obs[:-1], s' = obs[1:]; only terminations
    cut the bootstrap (truncations do not). `episode_ends` marks each episode's last transition."""
    if not isinstance(dataset.action_space, gym.spaces.Box):
        raise DatasetError(f"action space {dataset.action_space} is not continuous (Box); these algorithms need Box")
    parts: dict[str, list] = {
        k: [] for k in ("observations", "actions", "rewards", "next_observations", "terminals", "episode_ends")
    }
    for ep in dataset.iterate_episodes():
        obs = _flatten_obs(dataset.observation_space, ep.observations)
        check_episode(dataset, ep, obs)
        n = len(ep.rewards)
        parts["observations"].append(obs[:-1])
        parts["next_observations"].append(obs[1:])
        parts["actions"].append(np.asarray(ep.actions, dtype=np.float32).reshape(n, -1))
        parts["rewards"].append(np.asarray(ep.rewards, dtype=np.float32))
        parts["terminals"].append(np.asarray(ep.terminations, dtype=np.float32))
        ends = np.zeros(n, dtype=bool)
        ends[-1] = True
        parts["episode_ends"].append(ends)
    data = {k: np.concatenate(v) for k, v in parts.items()}
    for k, v in data.items():
        if v.dtype != bool and not np.isfinite(v).all():
            raise DatasetError(f"dataset '{dataset.spec.dataset_id}' holds NaN or inf in '{k}'; rebuild or clean it")
    return data


def make_eval_env(dataset: minari.MinariDataset, **make_kwargs) -> gym.Env:
    """The dataset's evaluation environment, checked against the dataset's spaces."""
    try:
        env = dataset.recover_environment(eval_env=True, **make_kwargs)
    except Exception as e:
        raise DatasetError(
            f"could not build the environment of '{dataset.spec.dataset_id}': {type(e).__name__}: {e}"
        ) from e
    if env.observation_space != dataset.observation_space or env.action_space != dataset.action_space:
        raise DatasetError(
            f"dataset '{dataset.spec.dataset_id}' does not match its environment {env.spec.id if env.spec else env}: "
            f"observation space {dataset.observation_space} vs {env.observation_space}, "
            f"action space {dataset.action_space} vs {env.action_space}"
        )
    if not isinstance(env.observation_space, gym.spaces.Box):
        env = gym.wrappers.FlattenObservation(env)
    return env


def normalized_score(dataset: minari.MinariDataset, mean_return: float) -> Optional[float]:
    """D4RL-style score ×100, or None when the dataset has no reference scores."""
    try:
        return 100.0 * float(minari.get_normalized_score(dataset, np.array([mean_return]))[0])
    except ValueError:
        return None


def evaluate(env: gym.Env, act: Callable[[np.ndarray], np.ndarray], episodes: int, seed: int) -> np.ndarray:
    """Returns of `episodes` episodes acting with `act` (deterministic), seeded for reproducibility."""
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, ret = False, 0.0
        while not done:
            obs, r, terminated, truncated, _ = env.step(act(obs))
            ret += float(r)
            done = terminated or truncated
        returns.append(ret)
    return np.array(returns)


class RunLogger:
    """TensorBoard writer, evaluation record and stage clock. Tags are `{phase}/{CleanRL tag}`: `offline/*` curves
    are indexed by each offline stage's own step counter, `online/*` curves by environment steps."""

    def __init__(self, args, run_dir: str):
        self.run_dir, self.args, self.start = run_dir, args, time.time()
        self.writer = SummaryWriter(run_dir)
        self.writer.add_text(
            "hyperparameters",
            "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()),
        )
        self.evals: list[dict] = []
        self.stage_times: dict[str, float] = {}

    @contextlib.contextmanager
    def timer(self, stage: str):
        """`with log.timer("offline"):` adds the block's wall time to summary.json's `stage_times[stage]`."""
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
        self.evals.append(
            dict(
                phase=phase,
                step=step,
                mean_return=float(returns.mean()),
                std_return=float(returns.std()),
                normalized_score=score,
                wall_time=time.time() - self.start,
                **extra,
            )
        )
        print(
            f"[{phase}] step {step}: return {returns.mean():.1f} ± {returns.std():.1f}"
            + (f" | normalized score {score:.1f}" if score is not None else "")
            + "".join(f" | {k} {v:.2f}" for k, v in extra.items() if isinstance(v, float)),
            flush=True,
        )

    def summary(self, **extra) -> dict:
        """Write summary.json atomically (tmp file + rename) and return it."""
        out = dict(
            args=asdict(self.args),
            seed=self.args.seed,
            dataset_id=self.args.dataset_id,
            wall_time=time.time() - self.start,
            evaluations=self.evals,
            stage_times=self.stage_times,
        )
        out.update(extra)
        for phase in ("offline", "online"):
            ev = [e for e in self.evals if e["phase"] == phase]
            key = "normalized_score" if ev and ev[-1]["normalized_score"] is not None else "mean_return"
            out[phase] = (
                None
                if not ev
                else dict(
                    final_score=ev[-1][key],
                    best_score=max(e[key] for e in ev),
                    metric=key,
                    final_return=ev[-1]["mean_return"],
                    best_return=max(e["mean_return"] for e in ev),
                )
            )
        tmp = os.path.join(self.run_dir, "summary.json.tmp")
        with open(tmp, "w") as f:
            json.dump(out, f, indent=2)
        os.replace(tmp, os.path.join(self.run_dir, "summary.json"))
        self.writer.close()
        return out


def seed_everything(seed: int, torch_deterministic: bool):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic


def fail(msg: str):
    """Clear error to stderr and a non-zero exit, before anything is written."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def warn(msg: str):
    print(f"warning: {msg}", file=sys.stderr)


def check_flags(checks: list[tuple[bool, str]]):
    """`validate`'s table: exit 2 with the message of the first (condition, message) whose condition holds."""
    for bad, msg in checks:
        if bad:
            fail(msg)


def load_offline_checkpoint(path: str, meta: dict) -> dict:
    """Read a checkpoint saved at the end of the offline phase (`torch.save(dict(meta=meta, ...))`) and check that it
    fits this run: every key of `meta` must match, except `dataset_id` (fine-tuning on other data only warns).
    DatasetError (exit 2, before anything is written) on a missing or foreign file or a mismatched flag."""
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
                f"--load-offline: '{path}' was made with {key}={saved.get(key)!r} but this run has {key}={want!r} "
                f"(checkpoint dataset: {saved.get('dataset_id')}); pass matching flags, or train the offline phase"
            )
    if saved.get("dataset_id") != meta.get("dataset_id"):
        warn(f"the offline checkpoint was trained on {saved.get('dataset_id')}, fine-tuning uses {meta['dataset_id']}")
    return ckpt


# D4RL locomotion -> Minari's remote ids of the same env and quality, where Minari has one (medium-replay and
# medium-expert have none; Minari's are re-collected on v5 envs, not D4RL's data)
REMOTE_IDS = {f"o2o/{e}/medium-v0": f"mujoco/{e}/medium-v0" for e in ("hopper", "halfcheetah", "walker2d")}


def paper_config_cli(argv: Optional[list[str]] = None) -> Args:
    """`python <file>.py [CONFIG] [--flag value ...]`: an optional first word names one of PAPER_CONFIGS, whose
    values replace the defaults; flags override both. With --download, a config's local dataset becomes Minari's
    remote id of the same env and quality (REMOTE_IDS), where there is one."""
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
