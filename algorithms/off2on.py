"""Off2On: balanced replay + pessimistic Q-ensemble (Lee, Seo, Lee, Abbeel, Shin, CoRL 2021) — single-file PyTorch.

Paper: Offline-to-Online Reinforcement Learning via Balanced Replay and Pessimistic Q-Ensemble,
https://arxiv.org/abs/2107.00591
Official code: https://github.com/shlee94/Off2OnRL (fine-tuning only; read for facts, nothing copied)

The method, offline and online, in this one file:
1. Offline: N (default 5) CQL(H) agents, each a tanh-Gaussian SAC actor and twin critics (2x256 MLPs), trained together
   as stacked ensembles, each member on its own minibatches from its own initialization.
2. Online: the N actors are fused by moment matching into one tanh-Gaussian; all N x 2 critics are kept. Member i's
   target is its own clipped double-Q at a next action shared by all members; the actor maximizes the ensemble mean of
   the per-member min-Q. Plain SAC losses (no CQL term), α re-initialized to 1, fresh optimizers, target critics
   hard-copied from the (trained or loaded) critics.
3. Balanced replay: RL minibatches are drawn proportionally to priorities over offline + online data. A density-ratio
   net w_ψ(s,a) ≈ d_online/d_offline, trained with a Jensen-Shannon variational loss, sets the priorities
   clamp(w^{1/T} / mean_offline w^{1/T}, 1e-3, 1e3) of every sampled transition at every step.

Symbols follow the paper: N ensemble size, α SAC temperature, α_cql CQL weight, w_ψ density ratio,
T priority temperature, f `init_online_fraction`.

Deviations from the paper / official code:
- The official release has no offline code, only CQL checkpoints for halfcheetah-medium. The offline phase here follows
  the official CQL recipe (aviralkumar2907/CQL: README "D4RL Experiments", d4rl/examples/cql_mujoco_new.py): CQL(H),
  10 uniform + 10 current-policy + 10 next-policy actions, fixed α_cql=5, deterministic backup, BC warm-up, policy
  lr 1e-4, on the checkpoints' 2x256 networks. The CQL log-sum-exp temperature is fixed to 1 (the recipe's value),
  not a flag.
- Initialisation follows rlkit: hidden weights U(±1/√out_features) (rlkit's `fanin_init` reads size[0] of an
  (out, in) weight), output layers U(±3e-3) (actor heads ±1e-3); hidden biases 0.1 for the CQL actors and critics
  (official CQL's rlkit `Mlp`), 0 for the density-ratio net (Off2On's `ConcatMlp`), whose output bias starts at 1.
  Off2On's own critic init never matters: its critics are loaded from CQL.
- Each offline member tunes its own α (as separate CQL runs would); online there is one α for the fused actor.
- Members are seeded from one generator (stacked init, per-member random indices) instead of separate runs with
  seeds 4i+s.
- Default offline budget is CPU-sized (20k gradient steps); the paper's budget is `--offline-steps 1000000`. On one CPU
  thread a default offline step (5 members, batch 256, 30 CQL actions per state) takes about 0.8 s (1.3 s before
  `keep_freed_memory`) and an online step about 0.08 s; the paper's budget wants a GPU. The BC warm-up defaults to
  4% of the offline steps, which is the official 40k at 1M.
- Offline members follow official CQL's TanhGaussianPolicy: log σ clamped to [−5, 2] (online, Off2On's [−20, 2]),
  and the BC warm-up log-likelihood of dataset actions as official CQL computes it (mean clamped to [−9, 9], atanh
  with 1 ± a floored at 1e-6, tanh correction log(1 − a² + 1e-6)). Log-probs of policy samples never use atanh.
- Networks see actions rescaled to [-1, 1] (D4RL MuJoCo actions already are); the environment gets them rescaled back.
  Log-probs and the entropy target −|A| live in the [-1, 1] space.
- Prioritized sampling uses a float64 priority vector with cumsum + searchsorted (exact proportional stratified
  sampling) instead of a float32 sum tree, so small priorities are not lost next to a large total. Capacity is
  |D| + online steps (the official power of two never overwrites either). Duplicate indices in one update keep one of
  their (equally fresh) values instead of strictly the last.
- One Adam with parameter groups replaces the separate Adams (Q1 stack, Q2 stack, actor, α, w_ψ); Adam is elementwise,
  so this is the same update. All losses use pre-update parameters, as in the official single forward pass.
- Evaluation runs `eval_episodes` complete deterministic episodes (official: 5000 steps before every epoch) online at
  env step 0 (before any online interaction, the policy fine-tuning starts from), at the first epoch boundary at or
  after each multiple of `eval_freq` environment steps (and of `early_eval_freq` up to `early_eval_until`), and at
  the end.
- The offline phase is evaluated with the fused policy, i.e. the policy that starts fine-tuning.
- Online episodes end at the environment's own time limit (a truncation, bootstrapped), like the official max path
  length on the unwrapped env. Epoch length and first-epoch multiplier are flags; the multiplier scales the first
  epoch's gradient steps only. When `online_steps` is not a multiple of the epoch length, the partial last epoch
  (official runs have none) trains `epoch_grad_steps` in proportion to the env steps it collected.
- Named configs `paper-<env>-<quality>` (PAPER_CONFIGS, `python off2on.py paper-hopper-medium`) carry the paper's
  budgets (1M offline steps per member, 250k online steps) and the official hyperparameters. Per-dataset settings
  were not released, so all twelve share one set: ours.py's defaults, the README demo's overrides, and for the
  offline phase the official CQL recipe with α_cql = 5 (its README allows 5 or 10; our choice). The official loop
  runs 251 epochs, but its last evaluation comes before the 251st epoch's collection, after 250k env steps: the
  configs stop there, at the paper's 250k. Evaluation every 1000 steps with 5 episodes stands in for the official
  5000 evaluation steps per epoch.
- Defaults follow the official README demo where it overrides the code: `first_epoch_multiplier` 5 (code: 10),
  `init_online_fraction` 0.75 (code: 0.5).
- The three buffers (offline, online FIFO, prioritized) share one storage: offline rows first, online rows appended;
  the FIFO is the most recent `online_buffer_size` online rows.
- Ablations as flags: `--replay uniform` (uniform over offline + online), `--replay online-only`, `--ensemble-size`,
  `--online-cql` (keep the CQL term online), `--cql-lagrange` (Lagrange-tuned α_cql).
"""

import contextlib
import ctypes
import json
import math
import os
import platform
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

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # online log σ clamp (Off2On's TanhGaussianPolicy), also applied to the fused σ
CQL_LOG_STD_MIN = -5.0  # offline log σ floor of official CQL's TanhGaussianPolicy (d4rl/rlkit/torch/sac/policies.py)
CQL_MEAN_MIN, CQL_MEAN_MAX = -9.0, 9.0  # official CQL clamps the mean in its BC log-likelihood only
CQL_ATANH_EPS = 1e-6  # official CQL's atanh floors 1 ± a at this, and its tanh correction adds it to 1 − a²
EPS = 1e-10  # inside the JS logs and the priority normaliser


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
    """save the offline ensemble (`offline_ensemble.pt`, reusable with --load-offline) and the final model"""
    run_dir: Optional[str] = None
    """where logs, checkpoints and summary.json go (default: runs/{run_name})"""
    dataset_id: str = "o2o/pendulum/medium-replay-v0"
    """Minari dataset id: a local one (see `python benchmark/make_datasets.py`) or a remote one with --download"""
    download: bool = False
    """fetch the dataset from Minari's remote server when it is not on the local disk"""
    offline_steps: int = 20_000
    """offline gradient steps per member, all members at once (paper: 1_000_000; 0 skips the offline phase)"""
    online_steps: int = 20_000
    """number of online environment steps (paper: 250_000; 0 skips the online phase)"""
    eval_freq: int = 5_000
    """evaluate every this many steps (gradient steps offline; environment steps online, at the first epoch boundary
    at or after each due step)"""
    early_eval_freq: int = 0
    """online phase: also evaluate every this many env steps during the first `early_eval_until` env steps, to
    resolve the start-of-fine-tuning dip (0: off); online evaluations run at the first epoch boundary at or after
    each due step"""
    early_eval_until: int = 0
    """online phase: env steps over which `early_eval_freq` applies"""
    eval_episodes: int = 10
    """number of deterministic evaluation episodes"""
    batch_size: int = 256
    """minibatch size (per member offline; the RL batch online)"""
    # ---- shared networks and SAC ----
    ensemble_size: int = 5
    """N, the number of CQL agents / Q-ensemble members"""
    hidden_dim: int = 256
    """width of the 2 hidden layers of every network"""
    gamma: float = 0.99
    """discount γ"""
    tau: float = 0.005
    """Polyak rate τ of the target critics (every step)"""
    q_lr: float = 3e-4
    """critic learning rate (both phases)"""
    log_freq: int = 100
    """log losses every this many gradient steps"""
    # ---- offline phase: CQL(H) ----
    offline_policy_lr: float = 1e-4
    """actor and α learning rate offline (official CQL recipe)"""
    cql_alpha: float = 5.0
    """α_cql, the weight of the CQL(H) regulariser (10.0 for narrow data)"""
    cql_n_actions: int = 10
    """actions sampled per source (uniform, current policy, next policy) in the CQL log-sum-exp"""
    cql_lagrange: bool = False
    """tune α_cql by dual gradient descent towards `cql_target_gap` (official CQL's Lagrange variant)"""
    cql_target_gap: float = 10.0
    """target of log-sum-exp minus data Q with --cql-lagrange"""
    bc_steps: Optional[int] = None
    """offline BC warm-up steps of the actor (default: 4% of offline_steps = official 40k of 1M)"""
    load_offline: Optional[str] = None
    """path of an `offline_ensemble.pt` saved with --save-model: skips offline training"""
    # ---- online phase ----
    policy_lr: float = 3e-4
    """actor and α learning rate online"""
    epoch_env_steps: int = 1000
    """environment steps collected per online epoch"""
    epoch_grad_steps: int = 1000
    """gradient steps per online epoch (after the epoch's collection; a partial last epoch does its share, rounded)"""
    first_epoch_multiplier: int = 5
    """the first epoch does this many times epoch_grad_steps (official default 10, README demo 5)"""
    online_cql: bool = False
    """ablation: keep the CQL term online (the paper fine-tunes with plain SAC)"""
    # ---- balanced replay ----
    replay: Literal["balanced", "uniform", "online-only"] = "balanced"
    """RL minibatches: balanced (density-ratio priorities), uniform over offline+online, or online data only"""
    temperature: float = 5.0
    """T: priorities use w^{1/T}"""
    init_online_fraction: float = 0.75
    """f: the first epoch_env_steps online transitions start with this share of the priority mass (README demo 0.75)"""
    weight_net_lr: float = 3e-4
    """learning rate of the density-ratio net w_ψ"""
    weight_net_batch_size: int = 256
    """online and offline samples each, per density-ratio step"""
    online_buffer_size: int = 250_000
    """capacity of the online FIFO the density-ratio net reads its online samples from"""
    # ---- speed ----
    compile: bool = False
    """torch.compile the offline and online update steps (CUDA: mode "reduce-overhead", i.e. CUDA graphs, with a
    capturable Adam; CPU: the default mode)"""


# ==============================================================================================
# ALGO LOGIC: networks. Stacked ensembles: x of shape (n, B, in) -> (n, B, out), one batched matmul per layer
# ==============================================================================================
class VectorizedLinear(nn.Module):
    """n independent linear layers: weight (n, in, out), bias (n, 1, out)."""

    def __init__(self, in_features: int, out_features: int, n: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(n, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n, 1, out_features))

    def params(self, detach: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        # `detach` reads the parameters without building a graph to them: the actor's Q-term must not move the critic
        return (self.weight.detach(), self.bias.detach()) if detach else (self.weight, self.bias)

    def forward(self, x: torch.Tensor, detach: bool = False) -> torch.Tensor:
        weight, bias = self.params(detach)
        return torch.baddbmm(bias, x, weight)


def linear_relu_(x: torch.Tensor, layer: VectorizedLinear, detach: bool = False) -> torch.Tensor:
    """relu(x W + b) with the bias added and the ReLU applied in place on the matmul's output: bmm's backward needs
    only its inputs and ReLU's only its output, so autograd allows it, and no second activation-sized tensor is
    allocated (the CQL pass's activations are ~80 MB at hopper's shapes)."""
    weight, bias = layer.params(detach)
    return torch.bmm(x, weight).add_(bias).relu_()


class VectorizedMLP(nn.Module):
    """n independent ReLU MLPs with `layers` hidden layers. Hidden layers as rlkit's `fanin_init` + `b_init_value`:
    weights U(±1/√out_features) (it reads size[0] of nn.Linear's (out, in) weight, so the bound is set by the layer's
    width, not its input) and bias `hidden_bias`; output layer U(±last_init), or its bias filled with `last_bias`
    (the density-ratio net starts at w ≈ 1)."""

    def __init__(self, in_dim, out_dim, n, hidden=256, layers=2, last_init=3e-3, last_bias=None, hidden_bias=0.1):
        super().__init__()
        dims = [in_dim] + [hidden] * layers
        self.hidden = nn.ModuleList(VectorizedLinear(i, o, n) for i, o in zip(dims[:-1], dims[1:]))
        self.last = VectorizedLinear(hidden, out_dim, n)
        with torch.no_grad():
            for layer in self.hidden:
                bound = 1.0 / math.sqrt(layer.out_features)
                layer.weight.uniform_(-bound, bound)
                layer.bias.fill_(hidden_bias)
            self.last.weight.uniform_(-last_init, last_init)
            if last_bias is None:
                self.last.bias.uniform_(-last_init, last_init)
            else:
                self.last.bias.fill_(last_bias)

    def forward(self, x: torch.Tensor, detach: bool = False, first: int = 0) -> torch.Tensor:
        """x (n, B, ·) -> (n, B, out_dim). `first` > 0 starts at that hidden layer (x is then the previous layer's
        activation)."""
        for layer in self.hidden[first:]:
            x = linear_relu_(x, layer, detach)
        return self.last(x, detach)


class ActorEnsemble(nn.Module):
    """N tanh-Gaussian SAC actors; one output layer holds both the mean and the log σ head of each member."""

    def __init__(self, obs_dim: int, act_dim: int, n: int, hidden: int = 256):
        super().__init__()
        self.n = n
        self.net = VectorizedMLP(obs_dim, 2 * act_dim, n, hidden, last_init=1e-3)

    def forward(self, obs: torch.Tensor, log_std_min: float = LOG_STD_MIN) -> tuple[torch.Tensor, torch.Tensor]:
        """obs (N, B, obs_dim) -> pre-tanh mean μ_i and log σ_i, each (N, B, act_dim); log σ clamped to
        [log_std_min, 2] (offline CQL passes −5, online Off2On keeps −20)."""
        mu, log_std = self.net(obs).chunk(2, dim=-1)
        return mu, log_std.clamp(log_std_min, LOG_STD_MAX)

    def fused(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs (B, obs_dim) -> the moment-matched pre-tanh μ, σ (B, act_dim) of the N actors."""
        mu, log_std = self(obs.unsqueeze(0).expand(self.n, *obs.shape))
        return fuse_moments(mu, log_std)


class CriticEnsemble(nn.Module):
    """N members x twin critics stacked as 2N nets: [Q1_0..Q1_{N-1}, Q2_0..Q2_{N-1}]. The first layer is applied as
    W·[s; a] = W_s·s + W_a·a (its weight split into observation and action rows), so Q at K actions per state
    (the CQL log-sum-exp) computes W_s·s once per state, not once per action."""

    def __init__(self, obs_dim: int, act_dim: int, n: int, hidden: int = 256):
        super().__init__()
        self.n, self.obs_dim = n, obs_dim
        self.net = VectorizedMLP(obs_dim + act_dim, 1, 2 * n, hidden, last_init=3e-3)

    def forward(self, obs: torch.Tensor, act: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """obs (N, B, obs_dim); act (N, B, act_dim), or (N, B, K, act_dim) for K actions at each state. Member i's
        two critics read row i. Returns (2, N, B), or (2, N, B, K): Q1 and Q2 of every member."""
        n, batch = self.n, obs.shape[1]
        first = self.net.hidden[0]
        weight, bias = first.params(detach)
        w_obs, w_act = weight[:, : self.obs_dim], weight[:, self.obs_dim :]
        h_obs = torch.baddbmm(bias, obs.reshape(n, batch, -1).repeat(2, 1, 1), w_obs)  # (2N, B, H), with b
        h = torch.bmm(act.reshape(n, -1, act.shape[-1]).repeat(2, 1, 1), w_act)  # (2N, B·K, H)
        # out of place: an in-place add on a view of bmm's output would make autograd copy the whole gradient back
        h = (h.view(2 * n, batch, -1, h.shape[-1]) + h_obs.unsqueeze(2)).relu_()  # every action with its own s
        q = self.net(h.view(2 * n, -1, h.shape[-1]), detach, first=1)
        return q.view(2, n, *act.shape[1:-1])


def density_ratio_net(obs_dim: int, act_dim: int, hidden: int = 256) -> VectorizedMLP:
    """w_ψ(s, a): one MLP as Off2On's ConcatMlp (zero hidden biases); the output bias starts at 1 so w ≈ 1
    (apply ReLU to the output)."""
    return VectorizedMLP(obs_dim + act_dim, 1, 1, hidden, last_init=3e-3, last_bias=1.0, hidden_bias=0.0)


def density_ratio(w_net: VectorizedMLP, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """w_ψ(s, a) ≥ 0 for (B, ·) inputs -> (B,)."""
    return F.relu(w_net(torch.cat([obs, act], dim=-1).unsqueeze(0))).view(-1)


def js_density_ratio_loss(w_online: torch.Tensor, w_offline: torch.Tensor) -> torch.Tensor:
    """Variational Jensen-Shannon f-divergence loss whose minimiser is w* = d_online / d_offline
    (online samples are the numerator, offline ones the denominator)."""
    return -torch.log(2.0 / (w_offline + 1.0) + EPS).mean() - torch.log(2.0 * w_online / (w_online + 1.0) + EPS).mean()


# Tanh-Gaussian policies: per member, and moment-matched over the members (the fused online actor)
def fuse_moments(mu: torch.Tensor, log_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Moment matching of N pre-tanh Gaussians (dim 0): μ = mean μ_i, σ² = mean σ_i² + var μ_i (the official
    mean(σ_i² + μ_i²) − μ², written as the law of total variance so float32 does not cancel), σ clamped."""
    mean = mu.mean(0)
    var = torch.exp(2 * log_std).mean(0) + mu.var(0, unbiased=False)
    std = var.clamp_min(math.exp(2 * LOG_STD_MIN)).sqrt().clamp_max(math.exp(LOG_STD_MAX))
    return mean, std


def tanh_normal_sample(mu: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised a = tanh(z), z ~ N(μ, σ); log π(a) from z (no atanh), summed over action dims."""
    eps = torch.randn_like(mu)
    z = mu + std * eps
    # log|d tanh(z)/dz| = 2 (log 2 − z − softplus(−2z)), stable for large |z|
    log_prob = -0.5 * eps**2 - torch.log(std) - 0.5 * math.log(2 * math.pi) - 2 * (math.log(2) - z - F.softplus(-2 * z))
    return torch.tanh(z), log_prob.sum(-1)


def bc_log_prob(mu: torch.Tensor, std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """log π(a|s) of dataset actions in [-1, 1] for the BC warm-up, as official CQL's `TanhGaussianPolicy.log_prob`
    computes it (the only atanh, of data actions): mean clamped to [−9, 9], atanh(a) = ½ log((1+a)/(1−a)) with both
    factors floored at 1e-6, and the tanh correction log(1 − a² + 1e-6), so saturated actions stay finite."""
    mu = mu.clamp(CQL_MEAN_MIN, CQL_MEAN_MAX)
    z = 0.5 * (torch.log((1 + action).clamp_min(CQL_ATANH_EPS)) - torch.log((1 - action).clamp_min(CQL_ATANH_EPS)))
    log_prob = (
        -0.5 * ((z - mu) / std) ** 2
        - torch.log(std)
        - 0.5 * math.log(2 * math.pi)
        - torch.log(1 - action**2 + CQL_ATANH_EPS)
    )
    return log_prob.sum(-1)


# ==============================================================================================
# ALGO LOGIC: replay. One storage (offline data first, then every online transition), three ways to sample it
# ==============================================================================================
class ReplayStorage:
    """Preallocated tensors. Rows [0, n_offline) are the dataset, then online transitions are appended (never
    overwritten: capacity is n_offline + online steps). The online FIFO is the last `online_buffer_size` online rows."""

    KEYS = ("obs", "act", "rew", "next_obs", "term")

    def __init__(self, data: dict[str, np.ndarray], capacity: int, act_scale, act_bias, device):
        self.device, self.n_offline = device, len(data["rewards"])
        self.act_scale = torch.as_tensor(act_scale, dtype=torch.float32, device=device)
        self.act_bias = torch.as_tensor(act_bias, dtype=torch.float32, device=device)
        obs_dim, act_dim = data["observations"].shape[1], data["actions"].shape[1]
        self.t = {
            "obs": torch.zeros(capacity, obs_dim, device=device),
            "act": torch.zeros(capacity, act_dim, device=device),
            "rew": torch.zeros(capacity, device=device),
            "next_obs": torch.zeros(capacity, obs_dim, device=device),
            "term": torch.zeros(capacity, device=device),
        }
        src = dict(
            obs=data["observations"],
            act=data["actions"],
            rew=data["rewards"],
            next_obs=data["next_observations"],
            term=data["terminals"],
        )
        for k in self.KEYS:
            self.t[k][: self.n_offline] = torch.as_tensor(src[k], dtype=torch.float32, device=device)
        # networks see actions in [-1, 1]
        self.t["act"][: self.n_offline] = ((self.t["act"][: self.n_offline] - self.act_bias) / self.act_scale).clamp(
            -1, 1
        )
        self.size = self.n_offline

    def add(self, obs, act_unit, rew, next_obs, term):
        """Append online transitions (numpy arrays, actions already in [-1, 1])."""
        n = len(rew)
        for k, v in zip(self.KEYS, (obs, act_unit, rew, next_obs, term)):
            self.t[k][self.size : self.size + n] = torch.as_tensor(
                np.asarray(v), dtype=torch.float32, device=self.device
            )
        self.size += n

    def get(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[idx] for k, v in self.t.items()}

    def offline_indices(self, shape) -> torch.Tensor:
        return torch.randint(0, self.n_offline, shape, device=self.device)

    def online_indices(self, n: int, fifo: int) -> torch.Tensor:
        lo = max(self.n_offline, self.size - fifo)
        return torch.randint(lo, self.size, (n,), device=self.device)


class ProportionalSampler:
    """Proportional, stratified prioritized sampling over float64 priorities: cumsum + searchsorted
    (the sum tree's semantics, vectorized). Every leaf holds at least 1e-3 after the clamp, and a right-sided search
    never lands on a zero-mass leaf, so no batch needs redrawing."""

    def __init__(self, capacity: int, device):
        self.p = torch.zeros(capacity, dtype=torch.float64, device=device)
        self.size = 0
        self.max_p = torch.ones((), dtype=torch.float64, device=device)  # running max = insertion priority

    def add(self, n: int):
        self.p[self.size : self.size + n] = self.max_p
        self.size += n

    def sample(self, batch: int) -> torch.Tensor:
        cdf = torch.cumsum(self.p[: self.size], 0)
        total = cdf[-1]
        u = (
            torch.arange(batch, device=cdf.device, dtype=torch.float64)
            + torch.rand(batch, device=cdf.device, dtype=torch.float64)
        ) / batch
        idx = torch.searchsorted(cdf, u * total, right=True)
        return idx.clamp_max(self.size - 1)

    def update(self, idx: torch.Tensor, priority: torch.Tensor):
        priority = priority.to(torch.float64)
        self.p[idx] = priority
        self.max_p = torch.maximum(self.max_p, priority.max())


# ==============================================================================================
# ALGO LOGIC: losses and the two update steps
# ==============================================================================================
@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float):
    """Polyak averaging θ' ← (1 − τ)·θ' + τ·θ over all parameters, in one fused call."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def cql_actions(mu, std, next_mu, next_std, n_actions) -> tuple[torch.Tensor, torch.Tensor]:
    """The CQL(H) proposal: K uniform, K current-policy and K next-policy actions per state (the last at s, as in
    CQL), and their log densities. mu, std, next_mu, next_std (N, B, A) -> actions (N, B, 3K, A), log q (N, B, 3K)."""
    n, b, act_dim = mu.shape
    rand_a = torch.rand(n, b, n_actions, act_dim, device=mu.device) * 2 - 1
    rand_logp = torch.full((n, b, n_actions), -act_dim * math.log(2.0), device=mu.device)
    expand = lambda x: x.unsqueeze(2).expand(n, b, n_actions, act_dim)  # noqa: E731
    curr_a, curr_logp = tanh_normal_sample(expand(mu), expand(std))
    next_a, next_logp = tanh_normal_sample(expand(next_mu), expand(next_std))
    return torch.cat([rand_a, curr_a, next_a], dim=2), torch.cat([rand_logp, curr_logp, next_logp], dim=2)


def critic_with_cql_gap(critic, obs, act, mu, std, next_mu, next_std, n_actions):
    """Q at the data actions and the CQL(H) gap per critic, from one critic pass over [data action; 3K proposal
    actions] at each state: gap = log Σ exp(Q(s, a_j) − log q(a_j)) over the proposal (importance-sampled
    log-sum-exp) minus the data Q, averaged over states. obs (N, B, ·), act (N, B, A) -> q_data (2, N, B) and
    gap (2, N)."""
    with torch.no_grad():
        actions, log_density = cql_actions(mu, std, next_mu, next_std, n_actions)
    q = critic(obs, torch.cat([act.unsqueeze(2), actions], dim=2))  # (2, N, B, 1 + 3K)
    q_data, q_sampled = q[..., 0], q[..., 1:]
    lse = torch.logsumexp(q_sampled - log_density, dim=-1)
    return q_data, lse.mean(-1) - q_data.mean(-1)


def cql_penalty(args, gap, log_alpha_prime):
    """α_cql · gap, or its Lagrange form α' (α_cql · gap − τ_gap) with α' from dual descent (official CQL)."""
    if not args.cql_lagrange:
        return args.cql_alpha * gap.sum(), gap.new_zeros(())
    alpha_prime = log_alpha_prime.exp().clamp(0.0, 1e6)  # (N,)
    term = args.cql_alpha * gap - args.cql_target_gap  # (2, N)
    return (alpha_prime.detach() * term).sum(), -(alpha_prime * term.detach()).mean(0).sum()


class Off2On:
    """The N-member ensemble and its optimizer. Offline, N independent CQL(H) agents (one α and one α′ per member);
    `start_online()` switches to fine-tuning: the fused actor, all N x 2 critics, a single fresh α, the density-ratio
    net w_ψ and a fresh optimizer. Each phase uses one Adam with parameter groups (actors, log α, critics, log α′,
    w_ψ); Adam is elementwise, so this is the separate Adams of the official code. The update methods take a batch
    dict with keys obs, act (in [-1, 1]), rew, next_obs, term and return a dict of detached tensors."""

    def __init__(self, obs_dim: int, act_dim: int, args: Args, device):
        self.args, self.device, self.obs_dim, self.act_dim = args, torch.device(device), obs_dim, act_dim
        keep_freed_memory()
        n, hidden = args.ensemble_size, args.hidden_dim
        self.actor = ActorEnsemble(obs_dim, act_dim, n, hidden).to(device)
        self.critic = CriticEnsemble(obs_dim, act_dim, n, hidden).to(device)
        # built (not deep-copied) then overwritten: the seeded random stream stays that of earlier versions
        self.critic_target = CriticEnsemble(obs_dim, act_dim, n, hidden).to(device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.log_alpha = torch.zeros(n, device=device, requires_grad=True)  # offline: one α per member
        self.log_alpha_prime = torch.zeros(n, device=device, requires_grad=True)
        self.w_net: Optional[VectorizedMLP] = None  # online only
        self.opt = self._adam(args.offline_policy_lr)
        self.offline_update, self.online_update = self._offline_update, self._online_update
        if args.compile:
            # CUDA graphs need the static addresses and the no-sync step of reduce-overhead; on CPU the default mode
            self.compile_mode = "reduce-overhead" if self.device.type == "cuda" else None
            self.offline_update = torch.compile(self._offline_update, mode=self.compile_mode)
            self.online_update = torch.compile(self._online_update, mode=self.compile_mode)

    def _adam(self, policy_lr: float, w_net: Optional[nn.Module] = None) -> torch.optim.Adam:
        groups = [
            dict(params=self.actor.parameters(), lr=policy_lr),
            dict(params=[self.log_alpha], lr=policy_lr),
            dict(params=self.critic.parameters(), lr=self.args.q_lr),
            dict(params=[self.log_alpha_prime], lr=self.args.q_lr),
        ]
        if w_net is not None:
            groups.append(dict(params=w_net.parameters(), lr=self.args.weight_net_lr))
        # fused: one kernel for all parameters (on CPU 3x faster than the default per-tensor loop, the online step
        # 13% faster, the same numbers); capturable: the step stays on the device, as CUDA graphs need
        capturable = self.args.compile and self.device.type == "cuda"
        return torch.optim.Adam(groups, fused=self.device.type in ("cpu", "cuda"), capturable=capturable)

    def _offline_update(self, batch: dict[str, torch.Tensor], bc: bool) -> dict[str, torch.Tensor]:
        """One CQL(H) step of all N members at once. batch tensors are (N, B, ·): one minibatch per member
        (obs (N, B, obs_dim), act (N, B, act_dim), rew and term (N, B)). `bc`: the actor's BC warm-up loss."""
        args, actor, critic = self.args, self.actor, self.critic
        obs, act, rew, next_obs, term = (batch[k] for k in ReplayStorage.KEYS)
        mu, log_std = actor(obs, CQL_LOG_STD_MIN)
        std = log_std.exp()
        pi_a, pi_logp = tanh_normal_sample(mu, std)  # (N, B, A), (N, B)
        alpha = self.log_alpha.exp().detach()  # (N,)
        alpha_loss = -(self.log_alpha[:, None] * (pi_logp.detach() - self.act_dim)).mean(1).sum()  # target −|A|
        if bc:
            actor_loss = (alpha[:, None] * pi_logp - bc_log_prob(mu, std, act)).mean(1).sum()
        else:
            q_pi = critic(obs, pi_a, detach=True).min(0).values
            actor_loss = (alpha[:, None] * pi_logp - q_pi).mean(1).sum()

        with torch.no_grad():
            next_mu, next_log_std = actor(next_obs, CQL_LOG_STD_MIN)
            next_std = next_log_std.exp()
            next_a, _ = tanh_normal_sample(next_mu, next_std)
            # deterministic backup: no entropy bonus in the offline target
            target_q = self.critic_target(next_obs, next_a).min(0).values
            y = rew + args.gamma * (1 - term) * target_q  # (N, B)
        q_data, gap = critic_with_cql_gap(critic, obs, act, mu.detach(), std.detach(), next_mu, next_std,
                                          args.cql_n_actions)  # fmt: skip
        td_loss = ((q_data - y) ** 2).mean(-1).sum()
        cql_loss, alpha_prime_loss = cql_penalty(args, gap, self.log_alpha_prime)

        # one backward; each loss reaches only its own parameters: td_loss and cql_loss -> critics (y and the
        # proposal actions carry no graph); actor_loss -> actors (the critics are read with detach=True, the CQL
        # term sees mu, std detached); alpha_loss -> log α (log π detached); alpha_prime_loss -> log α′ (gap detached)
        self.opt.zero_grad(set_to_none=True)
        (td_loss + cql_loss + actor_loss + alpha_loss + alpha_prime_loss).backward()
        self.opt.step()
        soft_update(self.critic_target, critic, args.tau)
        n = args.ensemble_size
        return dict(
            qf_loss=td_loss.detach() / (2 * n),
            cql_gap=gap.detach().mean(),
            qf_values=q_data.detach().mean(),
            actor_loss=actor_loss.detach() / n,
            alpha=alpha.mean(),
            alpha_loss=alpha_loss.detach() / n,
            alpha_prime=self.log_alpha_prime.detach().exp().mean(),
        )

    def start_online(self):
        """The offline -> online boundary: α re-initialised to 1 (one α for the fused actor), α′ reset, a fresh w_ψ
        and fresh optimizer, and the targets hard-copied from the critics (official fine-tuning loads both from the
        same offline critics), not the offline phase's lagged Polyak averages."""
        args = self.args
        self.log_alpha = torch.zeros((), device=self.device, requires_grad=True)
        self.log_alpha_prime = torch.zeros(args.ensemble_size, device=self.device, requires_grad=True)
        self.w_net = density_ratio_net(self.obs_dim, self.act_dim, args.hidden_dim).to(self.device)
        self.opt = self._adam(args.policy_lr, self.w_net)
        self.critic_target.load_state_dict(self.critic.state_dict())

    def _online_update(self, batch: dict[str, torch.Tensor], w_batches=None) -> dict[str, torch.Tensor]:
        """One SAC step of the fused actor and all N x 2 critics on the RL batch (tensors (B, ·): obs (B, obs_dim),
        act (B, act_dim), rew and term (B,)), plus, when `w_batches` = (online batch, offline batch) of the same
        keys is given (balanced replay), one density-ratio step; its dict then also holds `priority` (B,), the RL
        batch's new priorities from w_ψ before this step."""
        args, actor, critic, n = self.args, self.actor, self.critic, self.args.ensemble_size
        obs, act, rew, next_obs, term = (batch[k] for k in ReplayStorage.KEYS)
        rep = lambda x: x.unsqueeze(0).expand(n, *x.shape)  # noqa: E731  same batch for every member
        mu, std = actor.fused(obs)
        pi_a, pi_logp = tanh_normal_sample(mu, std)
        alpha = self.log_alpha.exp().detach()  # a single α online
        alpha_loss = -(self.log_alpha * (pi_logp.detach() - self.act_dim)).mean()
        q_pi = critic(rep(obs), rep(pi_a), detach=True).min(0).values.mean(0)  # ensemble mean of per-member min-Q
        actor_loss = (alpha * pi_logp - q_pi).mean()

        with torch.no_grad():
            next_mu, next_std = actor.fused(next_obs)
            next_a, next_logp = tanh_normal_sample(next_mu, next_std)  # one a' shared by all members
            target_q = self.critic_target(rep(next_obs), rep(next_a)).min(0).values  # (N, B): own clipped Q
            y = rew + args.gamma * (1 - term) * (target_q - alpha * next_logp)
        if args.online_cql:
            q_data, gap = critic_with_cql_gap(critic, rep(obs), rep(act), rep(mu.detach()), rep(std.detach()),
                                              rep(next_mu), rep(next_std), args.cql_n_actions)  # fmt: skip
            cql_loss, alpha_prime_loss = cql_penalty(args, gap, self.log_alpha_prime)
        else:
            q_data = critic(rep(obs), rep(act))
            cql_loss = alpha_prime_loss = torch.zeros((), device=self.device)
        td_loss = ((q_data - y) ** 2).mean(-1).sum()
        stats = dict(
            qf_loss=td_loss.detach() / (2 * n),
            qf_values=q_data.detach().mean(),
            actor_loss=actor_loss.detach(),
            alpha=alpha,
            alpha_loss=alpha_loss.detach(),
        )
        if args.online_cql:
            stats["cql_gap"] = gap.detach().mean()

        w_loss = torch.zeros((), device=self.device)
        if w_batches is not None:
            on, off = w_batches
            w_on = density_ratio(self.w_net, on["obs"], on["act"])
            w_off = density_ratio(self.w_net, off["obs"], off["act"])
            w_loss = js_density_ratio_loss(w_on, w_off)
            with torch.no_grad():  # priorities from ψ before this step's update
                w_rl = density_ratio(self.w_net, obs, act)
                normaliser = (w_off.detach() ** (1 / args.temperature)).mean() + EPS
                priority = (w_rl ** (1 / args.temperature) / normaliser).clamp(1e-3, 1e3)
            stats.update(
                density_ratio_loss=w_loss.detach(),
                density_ratio_online=w_on.detach().mean(),
                density_ratio_offline=w_off.detach().mean(),
                priority_mean=priority.mean(),
                priority=priority,
            )

        # one backward; each loss reaches only its own parameters: td_loss and cql_loss -> critics (y and the
        # proposal actions carry no graph); actor_loss -> actors (critics read with detach=True); alpha_loss -> log α;
        # alpha_prime_loss -> log α′ (gap detached); w_loss -> w_ψ (it reads data only)
        self.opt.zero_grad(set_to_none=True)
        (td_loss + cql_loss + actor_loss + alpha_loss + alpha_prime_loss + w_loss).backward()
        self.opt.step()
        soft_update(self.critic_target, critic, args.tau)
        return stats

    def checkpoint(self) -> dict:
        """The networks' state dicts (what offline_ensemble.pt and the final model hold)."""
        state = {k: getattr(self, k).state_dict() for k in ("actor", "critic", "critic_target")}
        if self.w_net is not None:
            state["w_net"] = self.w_net.state_dict()
        return state

    def load_offline(self, ckpt: dict):
        for k in ("actor", "critic", "critic_target"):
            getattr(self, k).load_state_dict(ckpt[k])


# ==============================================================================================
# ALGO LOGIC: main, the offline loop and the online loop
# ==============================================================================================
def main(args: Args) -> dict:
    validate(args)
    # data, environment and checkpoint checks happen before the run directory exists
    try:
        dataset = load_minari_dataset(args.dataset_id, args.download)
        data = dataset_to_transitions(dataset)
        eval_env = make_eval_env(dataset)
        env_id = eval_env.spec.id if eval_env.spec else str(dataset.spec.env_spec)
        obs_dim, act_dim = data["observations"].shape[1], data["actions"].shape[1]
        meta = checkpoint_meta(args, env_id, obs_dim, act_dim)
        ckpt = load_offline_checkpoint(args.load_offline, meta) if args.load_offline else None
    except DatasetError as e:
        fail(str(e))
    space = eval_env.action_space
    if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
        fail(f"action space {space} is unbounded; a tanh policy needs finite bounds")
    act_scale, act_bias = (space.high - space.low) / 2.0, (space.high + space.low) / 2.0

    run_name = f"{args.dataset_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = args.run_dir or os.path.join("runs", run_name)
    os.makedirs(run_dir, exist_ok=True)
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
    print(f"off2on: {args.dataset_id} ({len(data['rewards'])} transitions), N={args.ensemble_size}, device {device}")

    storage = ReplayStorage(data, len(data["rewards"]) + args.online_steps, act_scale, act_bias, device)
    agent = Off2On(obs_dim, act_dim, args, device)
    act_scale_t = torch.as_tensor(act_scale, dtype=torch.float32, device=device)
    act_bias_t = torch.as_tensor(act_bias, dtype=torch.float32, device=device)

    @torch.no_grad()
    def act_deterministic(obs: np.ndarray) -> np.ndarray:
        mu, _ = agent.actor.fused(torch.as_tensor(obs, dtype=torch.float32, device=device).view(1, -1))
        return (torch.tanh(mu) * act_scale_t + act_bias_t).view(-1).cpu().numpy()

    def run_eval(phase: str, step: int):
        with log.timer("eval"):
            returns = evaluate(eval_env, act_deterministic, args.eval_episodes, seed=args.seed + 10_000)
            log.eval(phase, step, returns, normalized_score(dataset, float(returns.mean())))

    # ---------------- offline phase: N CQL(H) agents ----------------
    offline_done = 0
    if ckpt is not None:
        agent.load_offline(ckpt)
        offline_done = int(ckpt["offline_steps"])
        print(f"loaded offline ensemble from {args.load_offline} ({offline_done} gradient steps); skipping training")
        run_eval("offline", offline_done)
    elif args.offline_steps > 0:
        train_offline(args, agent, storage, log, run_eval)
        offline_done = args.offline_steps
    if args.save_model and ckpt is None and offline_done > 0:
        path = os.path.join(run_dir, "offline_ensemble.pt")
        torch.save(dict(meta=meta, offline_steps=offline_done, **agent.checkpoint()), path)
        print(f"saved offline ensemble to {path} (reuse it with --load-offline {path})")

    # ---------------- online phase: fused actor, N x 2 critics, balanced replay ----------------
    online = dict(env_steps=0, grad_steps=0, last_epoch_stats={}, diagnostics={})
    if args.online_steps > 0:
        env = dataset.recover_environment()
        if not isinstance(env.observation_space, gym.spaces.Box):
            env = gym.wrappers.FlattenObservation(env)
        online = train_online(args, agent, storage, env, log, run_eval, act_scale, act_bias)
        env.close()

    if args.capture_video:
        video_env = gym.wrappers.RecordVideo(make_eval_env(dataset, render_mode="rgb_array"), f"{run_dir}/videos")
        evaluate(video_env, act_deterministic, 1, seed=args.seed + 20_000)
        video_env.close()
    if args.save_model:
        torch.save(dict(meta=meta, **agent.checkpoint()), os.path.join(run_dir, f"{args.exp_name}.pt"))
    eval_env.close()
    trained_offline = ckpt is None and args.offline_steps > 0
    grad_steps = online["grad_steps"]
    return log.summary(
        offline_gradient_steps=offline_done,
        offline_loaded_from=args.load_offline,
        online_env_steps=online["env_steps"],
        online_gradient_steps=grad_steps,
        offline_gradient_steps_per_second=args.offline_steps / log.stage_times["offline"] if trained_offline else None,
        online_gradient_steps_per_second=grad_steps / log.stage_times["online_updates"] if grad_steps else None,
        online_last_epoch=online["last_epoch_stats"] or None,
        diagnostics=online["diagnostics"],
        device=str(device),
    )


def train_offline(args: Args, agent: Off2On, storage: ReplayStorage, log: "RunLogger", run_eval: Callable):
    """`offline_steps` CQL(H) steps of all members, each on its own minibatch, the actors' first `bc_steps` on the
    BC warm-up loss; evaluations of the fused policy every `eval_freq` steps and at the end."""
    bc_steps = args.bc_steps if args.bc_steps is not None else int(0.04 * args.offline_steps)
    t_sps = time.time()
    for step in range(1, args.offline_steps + 1):
        with log.timer("offline"):
            batch = storage.get(storage.offline_indices((args.ensemble_size, args.batch_size)))
            stats = agent.offline_update(batch, bc=step <= bc_steps)
            if step % args.log_freq == 0:
                for k, v in stats.items():
                    log.scalar("offline", f"losses/{k}", float(v), step)
                sps = args.log_freq / (time.time() - t_sps)
                log.scalar("offline", "charts/SPS", sps, step)
                t_sps = time.time()
                if step % (10 * args.log_freq) == 0:
                    print(
                        f"[offline] step {step}/{args.offline_steps}: qf_loss {float(stats['qf_loss']):.3f} "
                        f"cql_gap {float(stats['cql_gap']):.2f} Q {float(stats['qf_values']):.1f} {sps:.1f} steps/s",
                        flush=True,
                    )
        if step % args.eval_freq == 0 or step == args.offline_steps:
            t_eval = time.time()
            run_eval("offline", step)
            t_sps += time.time() - t_eval


def train_online(args, agent: Off2On, storage, env: gym.Env, log, run_eval, act_scale, act_bias) -> dict:
    """Fine-tuning in epochs: collect `epoch_env_steps` with the stochastic fused policy, then train (update-to-data
    ratio 1, a longer first epoch) on balanced, uniform or online-only replay; evaluations at step 0, at the first
    epoch boundary at or after each due step, and at the end. Returns the step counts, the last epoch's mean
    statistics and the per-epoch replay diagnostics."""
    device, n_off = storage.device, storage.n_offline
    agent.start_online()
    sampler = ProportionalSampler(storage.n_offline + args.online_steps, device)
    sampler.add(n_off)  # offline leaves at 1.0
    # the first epoch's online transitions hold a fraction f of the mass (reference count 1000 as official)
    f = args.init_online_fraction
    sampler.max_p.fill_(n_off * f / ((1 - f) * 1000))
    env.action_space.seed(args.seed)
    run_eval("online", 0)  # the online curve starts at the policy fine-tuning starts from
    t_start = time.time()
    env_steps = grad_steps = prev_boundary = epoch = 0
    last_epoch_stats: dict = {}
    # per-epoch curves for summary.json (also in TensorBoard under online/replay/): the online share of the RL
    # batches; under balanced replay the mean density ratio w_ψ on the online and offline w-batches and the mean
    # priority of the RL batches' online and offline samples (None for an epoch that drew none of that kind)
    keys = ["online_fraction"]
    if args.replay == "balanced":
        keys += ["density_ratio_online", "density_ratio_offline", "priority_online", "priority_offline"]
    diagnostics = dict(env_steps=[], **{k: [] for k in keys})
    while env_steps < args.online_steps:
        if env_steps > 0 and online_eval_due(args, prev_boundary, env_steps):  # before the epoch's training
            run_eval("online", env_steps)
        prev_boundary = env_steps
        with log.timer("online"):
            n_collect = min(args.epoch_env_steps, args.online_steps - env_steps)
            first_seed = args.seed if epoch == 0 else None  # a seeded reset on the first epoch only
            collect(agent, env, storage, log, n_collect, env_steps, act_scale, act_bias, first_seed)
            sampler.add(n_collect)
            env_steps += n_collect
            # train: update-to-data ratio 1, a longer first epoch; a partial last epoch trains in proportion to the
            # env steps it collected (rounded), so the total stays online_steps / epoch_env_steps x epoch_grad_steps
            full = args.epoch_grad_steps * (args.first_epoch_multiplier if epoch == 0 else 1)
            n_grad = int(full * n_collect / args.epoch_env_steps + 0.5)
            t_grad, sums, psums = time.time(), {}, {}
            with log.timer("online_updates"):
                for _ in range(n_grad):
                    if args.replay == "balanced":
                        idx = sampler.sample(args.batch_size)
                        w_batches = (
                            storage.get(storage.online_indices(args.weight_net_batch_size, args.online_buffer_size)),
                            storage.get(storage.offline_indices((args.weight_net_batch_size,))),
                        )
                    elif args.replay == "uniform":
                        idx, w_batches = torch.randint(0, storage.size, (args.batch_size,), device=device), None
                    else:
                        idx, w_batches = torch.randint(n_off, storage.size, (args.batch_size,), device=device), None
                    stats = agent.online_update(storage.get(idx), w_batches)
                    priority = stats.pop("priority", None)
                    is_online = (idx >= n_off).float()
                    stats["online_fraction"] = is_online.mean()
                    if priority is not None:
                        sampler.update(idx, priority)
                        # priority sums and counts over the RL batch's online and offline samples (device tensors,
                        # reduced once per epoch): the per-epoch means are what balanced replay gives each kind
                        is_offline = 1 - is_online
                        parts = dict(online=priority * is_online, n_online=is_online,
                                     offline=priority * is_offline, n_offline=is_offline)  # fmt: skip
                        for k, v in parts.items():
                            psums[k] = psums.get(k, 0.0) + v.sum()
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + v
                    grad_steps += 1
            if n_grad > 0:
                last_epoch_stats = log_epoch(args, log, sums, psums, n_grad, env_steps, diagnostics, sampler)
                gsps = n_grad / max(time.time() - t_grad, 1e-9)
                log.scalar("online", "charts/SPS", env_steps / (time.time() - t_start), env_steps)
                log.scalar("online", "charts/grad_steps_per_second", gsps, env_steps)
                means = last_epoch_stats
                w_line = (
                    f" | w online {means['density_ratio_online']:.2f} offline {means['density_ratio_offline']:.2f}"
                    if "density_ratio_online" in means
                    else ""
                )
                print(
                    f"[online] env step {env_steps}/{args.online_steps}: qf_loss {means['qf_loss']:.3f} "
                    f"alpha {means['alpha']:.3f} online fraction of RL batch {means['online_fraction']:.2f}"
                    f"{w_line} | {gsps:.1f} grad steps/s",
                    flush=True,
                )
        epoch += 1
    run_eval("online", env_steps)
    return dict(env_steps=env_steps, grad_steps=grad_steps, last_epoch_stats=last_epoch_stats, diagnostics=diagnostics)


@torch.no_grad()
def collect(agent: Off2On, env, storage, log, n_steps: int, env_steps: int, act_scale, act_bias, seed=None):
    """One epoch's collection: a fresh reset (seeded on the first epoch), `n_steps` steps of the stochastic fused
    policy, appended to the storage at the end."""
    obs, _ = env.reset(seed=seed)
    ep_ret, ep_len = 0.0, 0
    rows = {k: [] for k in ReplayStorage.KEYS}
    for _ in range(n_steps):
        mu, std = agent.actor.fused(torch.as_tensor(obs, dtype=torch.float32, device=storage.device)[None])
        a_unit = tanh_normal_sample(mu, std)[0].view(-1).cpu().numpy()  # the one transfer per env step
        next_obs, r, terminated, truncated, _ = env.step(a_unit * act_scale + act_bias)
        for k, v in zip(ReplayStorage.KEYS, (obs, a_unit, r, next_obs, float(terminated))):
            rows[k].append(v)
        env_steps += 1
        ep_ret, ep_len = ep_ret + float(r), ep_len + 1
        obs = next_obs
        if terminated or truncated:
            log.scalar("online", "charts/episodic_return", ep_ret, env_steps)
            log.scalar("online", "charts/episodic_length", ep_len, env_steps)
            obs, _ = env.reset()
            ep_ret, ep_len = 0.0, 0
    storage.add(*(np.stack(rows[k]) for k in ReplayStorage.KEYS))


def log_epoch(args, log, sums, psums, n_grad, env_steps, diagnostics, sampler) -> dict:
    """Reduce an epoch's summed statistics to means (one host sync per epoch), log them and append the diagnostics;
    returns the means."""
    means = {k: float(v) / n_grad for k, v in sums.items()}
    for part in ("online", "offline") if psums else ():
        count = float(psums[f"n_{part}"])
        if count > 0:
            means[f"priority_{part}"] = float(psums[part]) / count
    diagnostics["env_steps"].append(env_steps)
    for k in diagnostics.keys() - {"env_steps"}:
        diagnostics[k].append(means.get(k))
    for k, v in means.items():
        group = "replay" if k.startswith(("density", "priority", "online_fraction")) else "losses"
        log.scalar("online", f"{group}/{k}", v, env_steps)
    if args.replay == "balanced":
        log.scalar("online", "replay/max_priority", float(sampler.max_p), env_steps)
    return means


# ==============================================================================================
# Per-file setup (not algorithm logic): the evaluation schedule, flag checks, the paper's configurations, checkpoints
# ==============================================================================================
def keep_freed_memory():
    """Let glibc's malloc reuse freed memory instead of handing it back to the OS (glibc only; a MALLOC_* setting of
    the user's wins). By default glibc serves blocks above its mmap threshold (128 KiB, adapting to at most 32 MiB)
    with fresh pages and unmaps them on free, so every CQL step's ~80 MB activations (hopper shapes) are page-faulted
    and zeroed anew: this took a third of the step on a CPU VM. The setting is process-wide and idempotent."""
    if platform.libc_ver()[0] != "glibc" or any(k.startswith("MALLOC_") for k in os.environ):
        return
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    libc.mallopt(m_mmap_threshold, 1 << 30)  # blocks up to 1 GiB come from the heap and return to it
    libc.mallopt(m_trim_threshold, 1 << 30)  # keep up to 1 GiB of free heap rather than trimming it


def online_eval_due(args: Args, lo: int, hi: int) -> bool:
    """Whether an online evaluation fell due at an env step t in (lo, hi]: t % eval_freq == 0, or an early step
    (t <= early_eval_until and t % early_eval_freq == 0). The loop asks at each epoch boundary hi (previous
    boundary lo), so each due step is evaluated at the first boundary at or after it; step 0 and the last step
    are always evaluated."""
    if (lo // args.eval_freq + 1) * args.eval_freq <= hi:
        return True
    if args.early_eval_freq > 0:
        first_early = (lo // args.early_eval_freq + 1) * args.early_eval_freq
        return first_early <= min(hi, args.early_eval_until)
    return False


def validate(args: Args):
    lrs = (args.q_lr, args.policy_lr, args.offline_policy_lr, args.weight_net_lr)
    checks = [
        (args.offline_steps < 0, "--offline-steps must be >= 0"),
        (args.online_steps < 0, "--online-steps must be >= 0"),
        (args.eval_freq <= 0, "--eval-freq must be > 0"),
        (args.early_eval_freq < 0, "--early-eval-freq must be >= 0"),
        (args.early_eval_until < 0, "--early-eval-until must be >= 0"),
        (args.early_eval_freq > 0 and args.early_eval_until <= 0, "--early-eval-freq > 0 needs --early-eval-until > 0"),
        (args.eval_episodes <= 0, "--eval-episodes must be > 0"),
        (args.batch_size <= 0, "--batch-size must be > 0"),
        (args.ensemble_size < 1, "--ensemble-size must be >= 1"),
        (args.hidden_dim < 1, "--hidden-dim must be >= 1"),
        (not 0.0 <= args.gamma <= 1.0, "--gamma must be in [0, 1]"),
        (not 0.0 < args.tau <= 1.0, "--tau must be in (0, 1]"),
        (args.log_freq <= 0, "--log-freq must be > 0"),
        (args.cql_alpha < 0.0, "--cql-alpha must be >= 0"),
        (args.cql_n_actions < 1, "--cql-n-actions must be >= 1"),
        (args.bc_steps is not None and args.bc_steps < 0, "--bc-steps must be >= 0"),
        (args.epoch_env_steps < 1, "--epoch-env-steps must be >= 1"),
        (args.epoch_grad_steps < 0, "--epoch-grad-steps must be >= 0"),
        (args.first_epoch_multiplier < 1, "--first-epoch-multiplier must be >= 1"),
        (args.temperature <= 0.0, "--temperature must be > 0"),
        (not 0.0 < args.init_online_fraction < 1.0, "--init-online-fraction must be in (0, 1)"),
        (args.weight_net_batch_size <= 0, "--weight-net-batch-size must be > 0"),
        (args.online_buffer_size <= 0, "--online-buffer-size must be > 0"),
        # a learning rate of 0 freezes that part (Adam then leaves its parameters exactly as they are): the
        # no-learning control of the tests
        (min(lrs) < 0.0, "learning rates must be >= 0"),
    ]
    check_flags(checks)


# The paper's runs, one per D4RL locomotion dataset it reports (halfcheetah, hopper, walker2d x random, medium,
# medium-replay, medium-expert; -v0 data, Sec. 5). Per-dataset settings were never released: the official code
# (shlee94/Off2OnRL, rlkit/examples/ours.py) has one set of defaults and the README one demo command
# (halfcheetah-medium-v0), whose overrides win where they differ. So every config carries the same values; only
# the dataset changes. The offline phase is not in the official release at all: its values are the official CQL
# recipe (aviralkumar2907/CQL: README "D4RL Experiments", d4rl/examples/cql_mujoco_new.py) on the released
# checkpoints' sizes.
_PAPER_COMMON = dict(
    # ---- budgets ----
    offline_steps=1_000_000,  # the released CQL checkpoints' step count (rlkit/data/cql/*/actor_1000000.pt)
    online_steps=250_000,  # ours.py --num_epochs 251 x 1000 env steps; its last evaluation (epoch 250, before that
    # epoch's collection) follows 250k steps, which our final evaluation measures; paper: 250k-step curves
    eval_freq=1_000,  # ours.py evaluates every 1000-env-step epoch; official CQL's cql_mujoco_new.py every 1000
    # gradient steps (num_trains_per_train_loop; its num_eval_steps_per_epoch is 1000 env steps, not 5000)
    eval_episodes=5,  # ours.py num_eval_steps_per_epoch=5000, complete episodes only: 5 at the 1000-step limit
    epoch_env_steps=1_000,  # ours.py num_expl_steps_per_train_loop
    epoch_grad_steps=1_000,  # ours.py num_trains_per_train_loop
    first_epoch_multiplier=5,  # README demo --first_epoch_multiplier 5 (ours.py default 10)
    # ---- networks and SAC (both phases) ----
    ensemble_size=5,  # ours.py --ensemble_size
    hidden_dim=256,  # ours.py layer_size=256, 2 hidden layers (the checkpoints' shapes)
    batch_size=256,  # ours.py algorithm_kwargs batch_size
    gamma=0.99,  # ours.py trainer_kwargs discount
    tau=0.005,  # ours.py trainer_kwargs soft_target_tau, target_update_period=1
    q_lr=3e-4,  # ours.py --lr (CQL README: Q lr 3e-4 offline too)
    # ---- offline CQL(H): not released, the official CQL README's MuJoCo recipe ----
    offline_policy_lr=1e-4,  # CQL README --policy_lr=1e-4
    cql_alpha=5.0,  # CQL README --min_q_weight=(5.0 or 10.0): our choice of the first, for every dataset
    cql_n_actions=10,  # cql_mujoco_new.py num_random=10 (CQL(H), README --min_q_version=3)
    cql_lagrange=False,  # CQL README --lagrange_thresh=-1.0 (fixed α_cql)
    bc_steps=40_000,  # cql_mujoco_new.py --policy_eval_start 40000 (BC warm-up of the actor)
    # ---- online fine-tuning ----
    policy_lr=3e-4,  # README demo --policy_lr 3e-4 (= ours.py default); α lr is the same (ours.py alpha_lr)
    online_cql=False,  # paper: plain SAC online
    replay="balanced",  # paper: balanced replay
    temperature=5.0,  # ours.py --temperature
    init_online_fraction=0.75,  # README demo --init_online_fraction 0.75 (ours.py default 0.5)
    weight_net_lr=3e-4,  # ours.py --weight_net_lr
    weight_net_batch_size=256,  # ours.py --weight_net_batch_size
    online_buffer_size=250_000,  # README demo --online_buffer_size 250000 (= ours.py default)
)
PAPER_CONFIGS: dict[str, dict] = {
    f"paper-{env}-{quality}": dict(dataset_id=f"o2o/{env}/{quality}-v0", **_PAPER_COMMON)
    for env in ("hopper", "halfcheetah", "walker2d")
    for quality in ("random", "medium", "medium-replay", "medium-expert")
}


def checkpoint_meta(args, env_id: str, obs_dim: int, act_dim: int) -> dict:
    return dict(
        format="off2on-offline-ensemble-v1",
        env_id=env_id,
        dataset_id=args.dataset_id,
        obs_dim=obs_dim,
        act_dim=act_dim,
        ensemble_size=args.ensemble_size,
        hidden_dim=args.hidden_dim,
    )


def load_offline_checkpoint(path: str, expected: dict) -> dict:
    """Read and check a saved offline ensemble; DatasetError-style message on any mismatch."""
    if not os.path.isfile(path):
        raise DatasetError(f"--load-offline: no such file '{path}'")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        meta = ckpt["meta"]
    except Exception as e:
        raise DatasetError(f"--load-offline: '{path}' is not an off2on offline checkpoint ({type(e).__name__}: {e})")
    if meta.get("format") != expected["format"]:
        raise DatasetError(f"--load-offline: '{path}' has format {meta.get('format')!r}, expected {expected['format']}")
    for key in ("env_id", "obs_dim", "act_dim", "ensemble_size", "hidden_dim"):
        if meta.get(key) != expected[key]:
            raise DatasetError(
                f"--load-offline: '{path}' was trained with {key}={meta.get(key)!r} but this run has "
                f"{key}={expected[key]!r} (checkpoint dataset: {meta.get('dataset_id')}); "
                "pre-train for this environment and ensemble size, or pass matching flags."
            )
    if meta["dataset_id"] != expected["dataset_id"]:
        warn(f"offline ensemble was trained on {meta['dataset_id']}, fine-tuning uses {expected['dataset_id']}")
    return ckpt


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
