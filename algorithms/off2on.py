"""Off2On: balanced replay + pessimistic Q-ensemble (Lee, Seo, Lee, Abbeel, Shin, CoRL 2021) — single-file PyTorch.

Paper: Offline-to-Online Reinforcement Learning via Balanced Replay and Pessimistic Q-Ensemble,
https://arxiv.org/abs/2107.00591. Official code: https://github.com/shlee94/Off2OnRL (fine-tuning only).

1. Offline: N CQL(H) agents, each a tanh-Gaussian SAC actor and twin critics (2x256 MLPs), trained together as
   stacked ensembles, each member on its own minibatches from its own initialisation.
2. Online: the N actors fused by moment matching into one tanh-Gaussian; all N x 2 critics kept. Member i's target is
   its own clipped double-Q at one next action shared by all members; the actor maximises the ensemble mean of the
   per-member min-Q. Plain SAC (no CQL term), α re-initialised to 1, fresh optimizers, targets copied from the critics.
3. Balanced replay: RL minibatches drawn proportionally to priorities over offline + online data. A density-ratio net
   w_ψ(s,a) ≈ d_online/d_offline, trained with a Jensen-Shannon variational loss, sets the priorities
   clamp(w^{1/T} / mean_offline w^{1/T}, 1e-3, 1e3) of every sampled transition at every step; new transitions enter
   at the running maximum, the first epoch's holding a share f (`init_online_fraction`) of the mass.

Deviations from the paper / official code:
- No offline code was released (only CQL checkpoints): the offline phase is the official CQL recipe (aviralkumar2907/
  CQL, README "D4RL Experiments"): CQL(H) over 10 uniform + 10 current- + 10 next-policy actions, fixed α_cql = 5,
  log-sum-exp temperature 1, deterministic backup, BC warm-up (40k of 1M steps) with CQL's log-likelihood, actor lr
  1e-4, log σ ≥ −5 (online, Off2On's −20). Each member tunes its own α; members come from one seeded generator.
- rlkit initialisation: hidden weights U(±1/√out_features) (`fanin_init` reads size[0] of an (out, in) weight),
  output layers U(±3e-3) (actor ±1e-3), hidden biases 0.1 (CQL) or 0 (w_ψ, whose output bias starts at 1).
- Networks see actions rescaled to [-1, 1]; log-probs and the entropy target −|A| live there.
- Priorities: a float64 vector sampled by cumsum + searchsorted (exact stratified sampling), not a float32 sum tree;
  capacity |D| + online steps (nothing overwritten); of duplicate indices in a batch one (equally fresh) value wins.
  Offline rows, the online FIFO (the last `online_buffer_size` online rows) and the prioritized buffer share storage.
- One Adam with parameter groups for the official separate Adams (Adam is elementwise: the same update).
- Evaluation: `eval_episodes` complete deterministic episodes of the fused policy (official: 5000 steps per epoch), at
  online step 0, at the first epoch boundary at or after each due step, and at the end.
- Online episodes end at the env's time limit (bootstrapped); a partial last epoch trains in proportion to its steps.
- Defaults: the README demo where it overrides the code (`first_epoch_multiplier` 5, not 10; `init_online_fraction`
  0.75, not 0.5) and CPU-sized budgets; the `paper-<env>-<quality>` configs have the paper's.
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

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # online log σ clamp (Off2On's policy), also applied to the fused σ
CQL_LOG_STD_MIN = -5.0  # offline log σ floor (official CQL's TanhGaussianPolicy)
CQL_MEAN_MIN, CQL_MEAN_MAX = -9.0, 9.0  # official CQL clamps the mean in its BC log-likelihood only
CQL_ATANH_EPS = 1e-6  # official CQL floors 1 ± a at this in atanh and adds it to 1 − a² in the tanh correction
EPS = 1e-10  # inside the JS logs and the priority normaliser


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]  # the name of this experiment
    seed: int = 1  # seed of the experiment
    torch_deterministic: bool = True  # if toggled, `torch.backends.cudnn.deterministic=True`
    cuda: bool = True  # if toggled, cuda will be used when available (CPU otherwise)
    track: bool = False  # if toggled, track with Weights and Biases (wandb must be installed)
    wandb_project_name: str = "o2o"  # the wandb's project name
    wandb_entity: Optional[str] = None  # the entity (team) of wandb's project
    save_model: bool = False  # save the offline ensemble (`offline.pt`, for --load-offline) and the final model
    run_dir: Optional[str] = None  # where logs, checkpoints and summary.json go (default: runs/{run_name})
    dataset_id: str = "o2o/pendulum/medium-replay-v0"  # Minari dataset id: local, or remote with --download
    download: bool = False  # fetch the dataset from Minari's remote server when it is not on the local disk
    offline_steps: int = 20_000  # gradient steps per member, all members at once (paper: 1M; 0 skips the phase)
    online_steps: int = 20_000  # environment steps (paper: 250k; 0 skips the phase)
    eval_freq: int = 5_000  # evaluate every this many steps (offline gradient steps; online env steps)
    early_eval_freq: int = 0  # online: also evaluate every this many env steps up to early_eval_until (0: off)
    early_eval_until: int = 0  # online: env steps over which early_eval_freq applies
    eval_episodes: int = 10  # number of deterministic evaluation episodes
    batch_size: int = 256  # minibatch size (per member offline; the RL batch online)
    # ---- networks and SAC, both phases
    ensemble_size: int = 5  # N, the number of CQL agents / Q-ensemble members
    hidden_dim: int = 256  # width of the 2 hidden layers of every network
    gamma: float = 0.99  # discount γ
    tau: float = 0.005  # Polyak rate τ of the target critics (every step)
    critic_lr: float = 3e-4  # critic learning rate (both phases)
    log_freq: int = 100  # log the offline losses every this many gradient steps
    # ---- offline: CQL(H)
    offline_actor_lr: float = 1e-4  # actor and α learning rate offline (official CQL recipe)
    cql_alpha: float = 5.0  # α_cql, the weight of the CQL(H) term (official CQL: 5 or 10)
    cql_n_actions: int = 10  # actions sampled per source (uniform, current policy, next policy) in the log-sum-exp
    cql_lagrange: bool = False  # tune α_cql by dual descent towards cql_target_gap (official CQL's Lagrange variant)
    cql_target_gap: float = 10.0  # target of log-sum-exp minus data Q with --cql-lagrange
    bc_steps: Optional[int] = None  # BC warm-up steps of the actors (default: 4% of offline_steps)
    load_offline: Optional[str] = None  # an `offline.pt` saved with --save-model: skips offline training
    # ---- online (official ours.py and its README demo)
    online_actor_lr: float = 3e-4  # actor and α learning rate online
    epoch_env_steps: int = 1000  # environment steps collected per epoch
    epoch_grad_steps: int = 1000  # gradient steps per epoch, after its collection
    first_epoch_multiplier: int = 5  # the first epoch does this many times epoch_grad_steps
    online_cql: bool = False  # ablation: keep the CQL term online (the paper fine-tunes with plain SAC)
    # ---- balanced replay
    replay: Literal["balanced", "uniform", "online-only"] = "balanced"  # RL batches: w_ψ priorities, or uniform
    temperature: float = 5.0  # T: priorities use w^{1/T}
    init_online_fraction: float = 0.75  # f: the first epoch_env_steps online rows start with this share of the mass
    weight_net_lr: float = 3e-4  # learning rate of the density-ratio net w_ψ
    weight_net_batch_size: int = 256  # online and offline samples each, per density-ratio step
    online_buffer_size: int = 250_000  # the online FIFO w_ψ draws its online samples from
    compile: bool = False  # torch.compile the update steps (CUDA: mode "reduce-overhead", i.e. CUDA graphs)


# ======== ALGO LOGIC: networks. Stacked ensembles: x (n, B, in) -> (n, B, out), one batched matmul per layer ========
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


def params(layer: VectorizedLinear, detach: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`detach` reads the parameters without a graph to them: the actor's Q-term must not move the critic."""
    return (layer.weight.detach(), layer.bias.detach()) if detach else (layer.weight, layer.bias)


class VectorizedMLP(nn.Module):
    """n independent ReLU MLPs with `depth` hidden layers, initialised as rlkit: hidden weights U(±1/√out_features),
    biases `hidden_bias`; output layer U(±last_init), or its bias filled with `last_bias`."""

    def __init__(self, in_dim, out_dim, n, hidden=256, depth=2, last_init=3e-3, last_bias=None, hidden_bias=0.1):
        super().__init__()
        dims = [in_dim] + [hidden] * depth
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
        """x (n, B, ·) -> (n, B, out_dim); `first` > 0 starts at that hidden layer (x is the previous activation)."""
        for layer in self.hidden[first:]:
            weight, bias = params(layer, detach)
            x = torch.bmm(x, weight).add_(bias).relu_()  # in place: no second activation-sized tensor
        weight, bias = params(self.last, detach)
        return torch.baddbmm(bias, x, weight)


class ActorEnsemble(nn.Module):
    """N tanh-Gaussian SAC actors; one output layer holds both the mean and the log σ head of each member."""

    def __init__(self, obs_dim: int, act_dim: int, n: int, hidden: int = 256):
        super().__init__()
        self.n = n
        self.net = VectorizedMLP(obs_dim, 2 * act_dim, n, hidden, last_init=1e-3)

    def forward(self, obs: torch.Tensor, log_std_min: float = LOG_STD_MIN) -> tuple[torch.Tensor, torch.Tensor]:
        """obs (N, B, obs_dim) -> pre-tanh μ_i and log σ_i (N, B, act_dim), log σ clamped to [log_std_min, 2]."""
        mu, log_std = self.net(obs).chunk(2, dim=-1)
        return mu, log_std.clamp(log_std_min, LOG_STD_MAX)

    def fused(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs (B, obs_dim) -> the moment-matched pre-tanh μ, σ (B, act_dim) of the N actors."""
        mu, log_std = self(obs.unsqueeze(0).expand(self.n, *obs.shape))
        return fuse_moments(mu, log_std)


class CriticEnsemble(nn.Module):
    """N members x twin critics stacked as 2N nets [Q1_0..Q1_{N-1}, Q2_0..Q2_{N-1}]. The first layer is applied as
    W_s·s + W_a·a, so Q at K actions per state (the CQL log-sum-exp) computes W_s·s once per state."""

    def __init__(self, obs_dim: int, act_dim: int, n: int, hidden: int = 256):
        super().__init__()
        self.n, self.obs_dim = n, obs_dim
        self.net = VectorizedMLP(obs_dim + act_dim, 1, 2 * n, hidden, last_init=3e-3)

    def forward(self, obs: torch.Tensor, act: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """obs (N, B, obs_dim); act (N, B, act_dim) or (N, B, K, act_dim). Member i's critics read row i.
        Returns Q1 and Q2 of every member: (2, N, B) or (2, N, B, K)."""
        n, batch = self.n, obs.shape[1]
        weight, bias = params(self.net.hidden[0], detach)
        w_obs, w_act = weight[:, : self.obs_dim], weight[:, self.obs_dim :]
        h_obs = torch.baddbmm(bias, obs.reshape(n, batch, -1).repeat(2, 1, 1), w_obs)  # (2N, B, H)
        h = torch.bmm(act.reshape(n, -1, act.shape[-1]).repeat(2, 1, 1), w_act)  # (2N, B·K, H)
        # out of place: an in-place add on a view of bmm's output would make autograd copy the whole gradient back
        h = (h.view(2 * n, batch, -1, h.shape[-1]) + h_obs.unsqueeze(2)).relu_()
        q = self.net(h.view(2 * n, -1, h.shape[-1]), detach, first=1)
        return q.view(2, n, *act.shape[1:-1])


def density_ratio_net(obs_dim: int, act_dim: int, hidden: int = 256) -> VectorizedMLP:
    """w_ψ(s, a): one MLP as Off2On's ConcatMlp (zero hidden biases), output bias 1 so that w ≈ 1 at the start."""
    return VectorizedMLP(obs_dim + act_dim, 1, 1, hidden, last_init=3e-3, last_bias=1.0, hidden_bias=0.0)


def density_ratio(w_net: VectorizedMLP, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """w_ψ(s, a) = relu(net(s, a)) ≥ 0 for (B, ·) inputs -> (B,)."""
    return F.relu(w_net(torch.cat([obs, act], dim=-1).unsqueeze(0))).view(-1)


def js_density_ratio_loss(w_online: torch.Tensor, w_offline: torch.Tensor) -> torch.Tensor:
    """Variational Jensen-Shannon loss whose minimiser is w* = d_online / d_offline."""
    return -torch.log(2.0 / (w_offline + 1.0) + EPS).mean() - torch.log(2.0 * w_online / (w_online + 1.0) + EPS).mean()


# Tanh-Gaussian policies: per member, and moment-matched over the members (the fused online actor)
def fuse_moments(mu: torch.Tensor, log_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Moment matching of N pre-tanh Gaussians (dim 0): μ = mean μ_i, σ² = mean σ_i² + var μ_i (the official
    mean(σ_i² + μ_i²) − μ², as the law of total variance so float32 does not cancel), σ clamped."""
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
    """log π(a|s) of dataset actions for the BC warm-up, as official CQL's `TanhGaussianPolicy.log_prob` (the only
    atanh): mean clamped to [−9, 9], 1 ± a floored at 1e-6, tanh correction log(1 − a² + 1e-6)."""
    mu = mu.clamp(CQL_MEAN_MIN, CQL_MEAN_MAX)
    z = 0.5 * (torch.log((1 + action).clamp_min(CQL_ATANH_EPS)) - torch.log((1 - action).clamp_min(CQL_ATANH_EPS)))
    normal = -0.5 * ((z - mu) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return (normal - torch.log(1 - action**2 + CQL_ATANH_EPS)).sum(-1)


# ======== ALGO LOGIC: replay. One storage (the dataset, then every online transition), three ways to sample it ========
class ReplayStorage:
    """Preallocated rows: [0, n_offline) the dataset (actions rescaled to [-1, 1]), then online rows (kept)."""

    KEYS = ("obs", "act", "rew", "next_obs", "term")

    def __init__(self, data: dict[str, np.ndarray], capacity: int, act_scale, act_bias, device):
        self.device, self.n_offline = device, len(data["rewards"])
        names = dict(obs="observations", act="actions", rew="rewards", next_obs="next_observations", term="terminals")
        self.t = {k: torch.zeros(capacity, *data[name].shape[1:], device=device) for k, name in names.items()}
        for k, name in names.items():
            self.t[k][: self.n_offline] = torch.as_tensor(data[name], dtype=torch.float32, device=device)
        scale, bias = (torch.as_tensor(x, dtype=torch.float32, device=device) for x in (act_scale, act_bias))
        self.t["act"][: self.n_offline] = ((self.t["act"][: self.n_offline] - bias) / scale).clamp(-1, 1)
        self.size = self.n_offline

    def add(self, obs, act_unit, rew, next_obs, term):
        """Append online transitions (numpy arrays, actions already in [-1, 1])."""
        rows = slice(self.size, self.size + len(rew))
        for k, v in zip(self.KEYS, (obs, act_unit, rew, next_obs, term)):
            self.t[k][rows] = torch.as_tensor(np.asarray(v), dtype=torch.float32, device=self.device)
        self.size += len(rew)

    def get(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[idx] for k, v in self.t.items()}

    def offline_indices(self, shape) -> torch.Tensor:
        return torch.randint(0, self.n_offline, shape, device=self.device)

    def online_indices(self, n: int, fifo: int) -> torch.Tensor:
        lo = max(self.n_offline, self.size - fifo)
        return torch.randint(lo, self.size, (n,), device=self.device)


class ProportionalSampler:
    """Stratified proportional sampling over float64 priorities by cumsum + searchsorted (a sum tree, vectorised)."""

    def __init__(self, capacity: int, device):
        self.p = torch.zeros(capacity, dtype=torch.float64, device=device)
        self.size = 0
        self.max_p = torch.ones((), dtype=torch.float64, device=device)  # running max = insertion priority

    def add(self, n: int):
        self.p[self.size : self.size + n] = self.max_p
        self.size += n

    def sample(self, batch: int) -> torch.Tensor:
        cdf = torch.cumsum(self.p[: self.size], 0)
        strata = torch.arange(batch, device=cdf.device, dtype=torch.float64)
        u = (strata + torch.rand(batch, device=cdf.device, dtype=torch.float64)) / batch
        return torch.searchsorted(cdf, u * cdf[-1], right=True).clamp_max(self.size - 1)

    def update(self, idx: torch.Tensor, priority: torch.Tensor):
        priority = priority.to(torch.float64)
        self.p[idx] = priority
        self.max_p = torch.maximum(self.max_p, priority.max())


# ======== ALGO LOGIC: losses and the two update steps ========
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


def sac_policy_losses(log_alpha, pi_logp, q_pi, act_dim: int):
    """SAC's actor loss E[α log π(a|s) − Q(s, a)] and temperature loss −E[log α (log π + H̄)] with the entropy
    target H̄ = −|A|, summed over members. log α broadcasts over the batch (last) dim of pi_logp and q_pi."""
    alpha = log_alpha.exp().detach()
    actor_loss = (alpha * pi_logp - q_pi).mean(-1).sum()
    alpha_loss = -(log_alpha * (pi_logp.detach() - act_dim)).mean(-1).sum()
    return actor_loss, alpha_loss, alpha


class Off2On:
    """N CQL(H) agents (one α and α′ each), then after `start_online()` the fine-tuned ensemble. The updates take a
    batch dict (obs, act in [-1, 1], rew, next_obs, term) and return detached tensors (no host sync per step)."""

    def __init__(self, obs_dim: int, act_dim: int, args: Args, device):
        self.args, self.device, self.obs_dim, self.act_dim = args, torch.device(device), obs_dim, act_dim
        keep_freed_memory()
        n, hidden = args.ensemble_size, args.hidden_dim
        self.actor = ActorEnsemble(obs_dim, act_dim, n, hidden).to(device)
        self.critic = CriticEnsemble(obs_dim, act_dim, n, hidden).to(device)
        self.critic_target = CriticEnsemble(obs_dim, act_dim, n, hidden).to(device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.log_alpha = torch.zeros(n, device=device, requires_grad=True)
        self.log_alpha_prime = torch.zeros(n, device=device, requires_grad=True)
        self.w_net: Optional[VectorizedMLP] = None  # online only
        self.opt = self._adam(args.offline_actor_lr)
        self.offline_update, self.online_update = self._offline_update, self._online_update
        if args.compile:  # CUDA: CUDA graphs (with a capturable Adam); CPU: the default mode
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self.offline_update = torch.compile(self._offline_update, mode=mode)
            self.online_update = torch.compile(self._online_update, mode=mode)

    def _adam(self, actor_lr: float, w_net: Optional[nn.Module] = None) -> torch.optim.Adam:
        groups = [
            dict(params=self.actor.parameters(), lr=actor_lr),
            dict(params=[self.log_alpha], lr=actor_lr),
            dict(params=self.critic.parameters(), lr=self.args.critic_lr),
            dict(params=[self.log_alpha_prime], lr=self.args.critic_lr),
        ]
        if w_net is not None:
            groups.append(dict(params=w_net.parameters(), lr=self.args.weight_net_lr))
        capturable = self.args.compile and self.device.type == "cuda"
        return torch.optim.Adam(groups, fused=self.device.type in ("cpu", "cuda"), capturable=capturable)

    def _step(self, *losses: torch.Tensor):
        """One backward and one Adam step. Each loss reaches only its own parameters: TD and CQL terms the critics
        (targets and proposal actions carry no graph), the actor loss the actors (critics read with detach=True),
        the α loss log α (log π detached), the α′ loss log α′ (gap detached), the density-ratio loss w_ψ."""
        self.opt.zero_grad(set_to_none=True)
        sum(losses).backward()
        self.opt.step()
        soft_update(self.critic_target, self.critic, self.args.tau)

    def _offline_update(self, batch: dict[str, torch.Tensor], bc: bool) -> dict[str, torch.Tensor]:
        """One CQL(H) step of all N members on their own (N, B, ·) minibatches; `bc`: log π(a_data) in place of Q."""
        args, actor, critic, n = self.args, self.actor, self.critic, self.args.ensemble_size
        obs, act, rew, next_obs, term = (batch[k] for k in ReplayStorage.KEYS)
        mu, log_std = actor(obs, CQL_LOG_STD_MIN)
        std = log_std.exp()
        pi_a, pi_logp = tanh_normal_sample(mu, std)  # (N, B, A), (N, B)
        q_pi = bc_log_prob(mu, std, act) if bc else critic(obs, pi_a, detach=True).min(0).values
        actor_loss, alpha_loss, alpha = sac_policy_losses(self.log_alpha[:, None], pi_logp, q_pi, self.act_dim)
        with torch.no_grad():
            next_mu, next_log_std = actor(next_obs, CQL_LOG_STD_MIN)
            next_std = next_log_std.exp()
            next_a, _ = tanh_normal_sample(next_mu, next_std)
            target_q = self.critic_target(next_obs, next_a).min(0).values  # deterministic backup: no entropy term
            y = rew + args.gamma * (1 - term) * target_q  # (N, B)
        q_data, gap = critic_with_cql_gap(
            critic, obs, act, mu.detach(), std.detach(), next_mu, next_std, args.cql_n_actions
        )
        td_loss = ((q_data - y) ** 2).mean(-1).sum()
        cql_loss, alpha_prime_loss = cql_penalty(args, gap, self.log_alpha_prime)
        self._step(td_loss, cql_loss, actor_loss, alpha_loss, alpha_prime_loss)
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
        """One α re-initialised to 1, α′ reset, a fresh w_ψ and optimizer, and the targets copied from the critics (as
        official fine-tuning loads both from the offline critics), not the lagged Polyak averages."""
        args = self.args
        self.log_alpha = torch.zeros((), device=self.device, requires_grad=True)
        self.log_alpha_prime = torch.zeros(args.ensemble_size, device=self.device, requires_grad=True)
        self.w_net = density_ratio_net(self.obs_dim, self.act_dim, args.hidden_dim).to(self.device)
        self.opt = self._adam(args.online_actor_lr, self.w_net)
        self.critic_target.load_state_dict(self.critic.state_dict())

    def _online_update(self, batch: dict[str, torch.Tensor], w_batches=None) -> dict[str, torch.Tensor]:
        """One SAC step of the fused actor and all N x 2 critics on the RL batch (tensors (B, ·)); with `w_batches` =
        (online batch, offline batch) (balanced replay) also one w_ψ step, and `priority` (B,) in the stats."""
        args, actor, critic, n = self.args, self.actor, self.critic, self.args.ensemble_size
        obs, act, rew, next_obs, term = (batch[k] for k in ReplayStorage.KEYS)
        rep = lambda x: x.unsqueeze(0).expand(n, *x.shape)  # noqa: E731  the same batch for every member
        mu, std = actor.fused(obs)
        pi_a, pi_logp = tanh_normal_sample(mu, std)
        q_pi = critic(rep(obs), rep(pi_a), detach=True).min(0).values.mean(0)  # ensemble mean of per-member min-Q
        actor_loss, alpha_loss, alpha = sac_policy_losses(self.log_alpha, pi_logp, q_pi, self.act_dim)
        with torch.no_grad():
            next_mu, next_std = actor.fused(next_obs)
            next_a, next_logp = tanh_normal_sample(next_mu, next_std)  # one a' shared by all members
            target_q = self.critic_target(rep(next_obs), rep(next_a)).min(0).values  # (N, B): own clipped Q
            y = rew + args.gamma * (1 - term) * (target_q - alpha * next_logp)
        losses, stats = [actor_loss, alpha_loss], dict(actor_loss=actor_loss.detach(), alpha=alpha)
        if args.online_cql:
            policy = (rep(mu.detach()), rep(std.detach()), rep(next_mu), rep(next_std))
            q_data, gap = critic_with_cql_gap(critic, rep(obs), rep(act), *policy, args.cql_n_actions)
            losses += cql_penalty(args, gap, self.log_alpha_prime)
            stats["cql_gap"] = gap.detach().mean()
        else:
            q_data = critic(rep(obs), rep(act))
        td_loss = ((q_data - y) ** 2).mean(-1).sum()
        losses.append(td_loss)
        stats.update(
            qf_loss=td_loss.detach() / (2 * n), qf_values=q_data.detach().mean(), alpha_loss=alpha_loss.detach()
        )
        if w_batches is not None:
            w_loss, w_stats = self._density_ratio_loss(obs, act, *w_batches)
            losses.append(w_loss)
            stats.update(w_stats)
        self._step(*losses)
        return stats

    def _density_ratio_loss(self, obs, act, online: dict, offline: dict) -> tuple[torch.Tensor, dict]:
        """w_ψ's JS loss on an online and an offline batch, and the RL batch's new priorities from ψ before this
        step: clamp(w^{1/T} / mean_offline w^{1/T}, 1e-3, 1e3)."""
        w_on = density_ratio(self.w_net, online["obs"], online["act"])
        w_off = density_ratio(self.w_net, offline["obs"], offline["act"])
        with torch.no_grad():
            w_rl = density_ratio(self.w_net, obs, act)
            normaliser = (w_off.detach() ** (1 / self.args.temperature)).mean() + EPS
            priority = (w_rl ** (1 / self.args.temperature) / normaliser).clamp(1e-3, 1e3)
        w_loss = js_density_ratio_loss(w_on, w_off)
        means = dict(density_ratio_online=w_on.detach().mean(), density_ratio_offline=w_off.detach().mean())
        return w_loss, dict(means, density_ratio_loss=w_loss.detach(), priority_mean=priority.mean(), priority=priority)

    def checkpoint(self) -> dict:
        """The networks' state dicts (what offline.pt and the final model hold)."""
        state = {k: getattr(self, k).state_dict() for k in ("actor", "critic", "critic_target")}
        if self.w_net is not None:
            state["w_net"] = self.w_net.state_dict()
        return state

    def load_offline(self, ckpt: dict):
        for k in ("actor", "critic", "critic_target"):
            getattr(self, k).load_state_dict(ckpt[k])


# ======== ALGO LOGIC: main, the offline loop and the online loop ========
def main(args: Args) -> dict:
    validate(args)
    try:  # data, environment and checkpoint checks happen before the run directory exists
        dataset = load_minari_dataset(args.dataset_id, args.download)
        data = dataset_to_transitions(dataset)
        eval_env = make_eval_env(dataset)
        env_id = eval_env.spec.id if eval_env.spec else str(dataset.spec.env_spec)
        obs_dim, act_dim = data["observations"].shape[1], data["actions"].shape[1]
        meta = offline_meta(args, env_id, obs_dim, act_dim)
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

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=vars(args), name=run_name, save_code=True)  # fmt: skip
    seed_everything(args.seed, args.torch_deterministic)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    log = RunLogger(args, run_dir)
    print(f"off2on: {args.dataset_id} ({len(data['rewards'])} transitions), N={args.ensemble_size}, device {device}")

    storage = ReplayStorage(data, len(data["rewards"]) + args.online_steps, act_scale, act_bias, device)
    agent = Off2On(obs_dim, act_dim, args, device)
    act_scale_t, act_bias_t = (torch.as_tensor(x, dtype=torch.float32, device=device) for x in (act_scale, act_bias))

    @torch.no_grad()
    def act_deterministic(obs: np.ndarray) -> np.ndarray:
        mu, _ = agent.actor.fused(torch.as_tensor(obs, dtype=torch.float32, device=device).view(1, -1))
        return (torch.tanh(mu) * act_scale_t + act_bias_t).view(-1).cpu().numpy()

    def run_eval(phase: str, step: int):
        with log.timer("eval"):
            returns = evaluate(eval_env, act_deterministic, args.eval_episodes, seed=args.seed + 10_000)
            log.eval(phase, step, returns, normalized_score(dataset, float(returns.mean())))

    offline_done = 0  # offline phase: N CQL(H) agents, or a saved ensemble
    if ckpt is not None:
        agent.load_offline(ckpt)
        offline_done = int(ckpt["offline_steps"])
        print(f"loaded offline ensemble from {args.load_offline} ({offline_done} gradient steps); skipping training")
        run_eval("offline", offline_done)
    elif args.offline_steps > 0:
        train_offline(args, agent, storage, log, run_eval)
        offline_done = args.offline_steps
    if args.save_model and ckpt is None and offline_done > 0:
        path = os.path.join(run_dir, "offline.pt")
        torch.save(dict(meta=meta, offline_steps=offline_done, **agent.checkpoint()), path)
        print(f"saved offline ensemble to {path} (reuse it with --load-offline {path})")

    online = dict(env_steps=0, grad_steps=0, last_epoch_stats={}, diagnostics={})
    if args.online_steps > 0:  # online phase: fused actor, N x 2 critics, balanced replay
        env = dataset.recover_environment()
        env = env if isinstance(env.observation_space, gym.spaces.Box) else gym.wrappers.FlattenObservation(env)
        online = train_online(args, agent, storage, env, log, run_eval, act_scale, act_bias)
        env.close()
    if args.save_model:
        torch.save(dict(meta=meta, **agent.checkpoint()), os.path.join(run_dir, f"{args.exp_name}.pt"))
    eval_env.close()
    trained_offline, grad_steps = ckpt is None and args.offline_steps > 0, online["grad_steps"]
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
    """`offline_steps` CQL(H) steps, the first `bc_steps` with the BC warm-up; evaluations every `eval_freq` steps."""
    bc_steps = args.bc_steps if args.bc_steps is not None else int(0.04 * args.offline_steps)
    for step in range(1, args.offline_steps + 1):
        with log.timer("offline"):
            batch = storage.get(storage.offline_indices((args.ensemble_size, args.batch_size)))
            stats = agent.offline_update(batch, bc=step <= bc_steps)
            if step % args.log_freq == 0:
                log_offline_stats(args, log, stats, step)
        if step % args.eval_freq == 0 or step == args.offline_steps:
            run_eval("offline", step)


def train_online(args, agent: Off2On, storage, env: gym.Env, log, run_eval, act_scale, act_bias) -> dict:
    """Fine-tuning in epochs: collect `epoch_env_steps` with the stochastic fused policy, then train (update-to-data
    ratio 1, a longer first epoch). Returns the step counts, the last epoch's means and the per-epoch diagnostics."""
    n_off = storage.n_offline
    agent.start_online()
    sampler = ProportionalSampler(n_off + args.online_steps, storage.device)
    sampler.add(n_off)  # offline leaves at 1; the first 1000 online rows (as official) hold a share f of the mass
    f = args.init_online_fraction
    sampler.max_p.fill_(n_off * f / ((1 - f) * 1000))
    env.action_space.seed(args.seed)
    run_eval("online", 0)  # the policy fine-tuning starts from
    keys = ("env_steps", "online_fraction", *(BALANCED_DIAGNOSTICS if args.replay == "balanced" else ()))
    diagnostics, last_epoch = {k: [] for k in keys}, {}
    t_start, env_steps, grad_steps, epoch = time.time(), 0, 0, 0
    while env_steps < args.online_steps:
        n_collect = min(args.epoch_env_steps, args.online_steps - env_steps)
        # a partial last epoch trains in proportion to the env steps it collected (rounded)
        full = args.epoch_grad_steps * (args.first_epoch_multiplier if epoch == 0 else 1)
        n_grad = int(full * n_collect / args.epoch_env_steps + 0.5)
        seed = args.seed if epoch == 0 else None  # a seeded reset on the first epoch only
        with log.timer("online"):
            collect(agent, env, storage, log, n_collect, env_steps, act_scale, act_bias, seed)
            sampler.add(n_collect)
            env_steps, grad_steps, epoch = env_steps + n_collect, grad_steps + n_grad, epoch + 1
            with log.timer("online_updates"):
                sums = online_updates(args, agent, storage, sampler, n_grad)
            if n_grad > 0:
                last_epoch = log_online_epoch(
                    args, log, sums, n_grad, env_steps, grad_steps, diagnostics, sampler, t_start
                )
        if env_steps < args.online_steps and online_eval_due(args, env_steps - n_collect, env_steps):
            run_eval("online", env_steps)
    run_eval("online", env_steps)
    return dict(env_steps=env_steps, grad_steps=grad_steps, last_epoch_stats=last_epoch, diagnostics=diagnostics)


@torch.no_grad()
def collect(agent: Off2On, env, storage, log, n_steps: int, env_steps: int, act_scale, act_bias, seed=None):
    """One epoch's collection from a fresh reset: `n_steps` steps of the stochastic fused policy, stored at the end."""
    obs, _ = env.reset(seed=seed)
    ep_ret, ep_len = 0.0, 0
    rows = {k: [] for k in ReplayStorage.KEYS}
    for _ in range(n_steps):
        mu, std = agent.actor.fused(torch.as_tensor(obs, dtype=torch.float32, device=storage.device)[None])
        a_unit = tanh_normal_sample(mu, std)[0].view(-1).cpu().numpy()
        next_obs, r, terminated, truncated, _ = env.step(a_unit * act_scale + act_bias)
        for k, v in zip(ReplayStorage.KEYS, (obs, a_unit, r, next_obs, float(terminated))):
            rows[k].append(v)
        env_steps, ep_ret, ep_len, obs = env_steps + 1, ep_ret + float(r), ep_len + 1, next_obs
        if terminated or truncated:
            log.scalar("online", "charts/episodic_return", ep_ret, env_steps)
            log.scalar("online", "charts/episodic_length", ep_len, env_steps)
            obs, _ = env.reset()
            ep_ret, ep_len = 0.0, 0
    storage.add(*(np.stack(rows[k]) for k in ReplayStorage.KEYS))


def online_updates(args: Args, agent: Off2On, storage: ReplayStorage, sampler: ProportionalSampler, n_grad: int):
    """`n_grad` online steps on RL batches drawn by `--replay`. Under balanced replay each step also trains w_ψ, and
    the transitions it drew take w_ψ's new priorities. Returns the steps' statistics summed (device tensors)."""
    n_off, sums = storage.n_offline, {}
    for _ in range(n_grad):
        w_batches = None
        if args.replay == "balanced":
            idx = sampler.sample(args.batch_size)
            w_batches = (storage.get(storage.online_indices(args.weight_net_batch_size, args.online_buffer_size)),
                         storage.get(storage.offline_indices((args.weight_net_batch_size,))))  # fmt: skip
        else:  # uniform over offline + online rows, or online rows only
            lo = 0 if args.replay == "uniform" else n_off
            idx = torch.randint(lo, storage.size, (args.batch_size,), device=storage.device)
        stats = agent.online_update(storage.get(idx), w_batches)
        is_online = (idx >= n_off).float()
        stats["online_fraction"] = is_online.mean()
        if w_batches is not None:
            priority = stats.pop("priority")
            sampler.update(idx, priority)
            # the priorities balanced replay gave the batch's online and offline rows: sums and counts
            is_offline = 1 - is_online
            stats.update(priority_sum_online=(priority * is_online).sum(), n_online=is_online.sum())
            stats.update(priority_sum_offline=(priority * is_offline).sum(), n_offline=is_offline.sum())
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v
    return sums


def keep_freed_memory():
    """Let glibc's malloc reuse freed memory instead of unmapping it: else each CQL step's ~80 MB activations (hopper)
    are page-faulted and zeroed anew, a third of a CPU step. Process-wide; a user's MALLOC_* setting wins."""
    if platform.libc_ver()[0] != "glibc" or any(k.startswith("MALLOC_") for k in os.environ):
        return
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    libc.mallopt(m_mmap_threshold, 1 << 30)  # blocks up to 1 GiB come from the heap and return to it
    libc.mallopt(m_trim_threshold, 1 << 30)  # keep up to 1 GiB of free heap rather than trimming it


# ======== Per-file setup: logging, the evaluation schedule, flag checks, the paper's configs, checkpoint meta ========
BALANCED_DIAGNOSTICS = ("density_ratio_online", "density_ratio_offline", "priority_online", "priority_offline")


def log_offline_stats(args: Args, log, stats: dict, step: int):
    stats = {k: float(v) for k, v in stats.items()}  # one host sync per log_freq steps
    for k, v in stats.items():
        log.scalar("offline", f"losses/{k}", v, step)
    sps = step / max(log.stage_times.get("offline", 0.0), 1e-9)
    log.scalar("offline", "charts/SPS", sps, step)
    if step % (10 * args.log_freq) == 0:
        losses = "qf_loss {qf_loss:.3f} cql_gap {cql_gap:.2f} Q {qf_values:.1f}".format(**stats)
        print(f"[offline] step {step}/{args.offline_steps}: {losses} {sps:.1f} steps/s", flush=True)


def log_online_epoch(args, log, sums, n_grad, env_steps, grad_steps, diagnostics, sampler, t_start) -> dict:
    """An epoch's means (one host sync per epoch; the mean priority of the online and offline rows drawn, where the
    epoch drew any), logged to TensorBoard and appended to summary.json's diagnostics; returns the means."""
    totals = {k: float(v) for k, v in sums.items()}
    means = {k: v / n_grad for k, v in totals.items() if not k.startswith(("priority_sum_", "n_"))}
    for part in ("online", "offline"):
        if totals.get(f"n_{part}", 0.0) > 0:
            means[f"priority_{part}"] = totals[f"priority_sum_{part}"] / totals[f"n_{part}"]
    diagnostics["env_steps"].append(env_steps)
    for k in diagnostics.keys() - {"env_steps"}:
        diagnostics[k].append(means.get(k))
    for k, v in means.items():
        group = "replay" if k.startswith(("density", "priority", "online_fraction")) else "losses"
        log.scalar("online", f"{group}/{k}", v, env_steps)
    if args.replay == "balanced":
        log.scalar("online", "replay/max_priority", float(sampler.max_p), env_steps)
    gsps = grad_steps / log.stage_times["online_updates"]
    log.scalar("online", "charts/SPS", env_steps / (time.time() - t_start), env_steps)
    log.scalar("online", "charts/grad_steps_per_second", gsps, env_steps)
    line = "qf_loss {qf_loss:.3f} alpha {alpha:.3f} online fraction of RL batch {online_fraction:.2f}".format(**means)
    if args.replay == "balanced":
        line += " | w online {density_ratio_online:.2f} offline {density_ratio_offline:.2f}".format(**means)
    print(f"[online] env step {env_steps}/{args.online_steps}: {line} | {gsps:.1f} grad steps/s", flush=True)
    return means


def online_eval_due(args: Args, lo: int, hi: int) -> bool:
    """Whether an online evaluation fell due at an env step t in (lo, hi]: t % eval_freq == 0, or an early step
    (t <= early_eval_until and t % early_eval_freq == 0). Asked at each epoch boundary hi (previous boundary lo)."""
    if (lo // args.eval_freq + 1) * args.eval_freq <= hi:
        return True
    if args.early_eval_freq > 0:
        first_early = (lo // args.early_eval_freq + 1) * args.early_eval_freq
        return first_early <= min(hi, args.early_eval_until)
    return False


def validate(args: Args):
    positive = "eval_freq eval_episodes batch_size ensemble_size hidden_dim log_freq cql_n_actions epoch_env_steps "
    positive += "first_epoch_multiplier temperature weight_net_batch_size online_buffer_size"
    # a learning rate of 0 freezes that part (the tests' no-learning control)
    non_negative = "offline_steps online_steps early_eval_freq early_eval_until epoch_grad_steps cql_alpha critic_lr "
    non_negative += "offline_actor_lr online_actor_lr weight_net_lr"
    flag = lambda k: "--" + k.replace("_", "-")  # noqa: E731
    checks = [(getattr(args, k) <= 0, f"{flag(k)} must be > 0") for k in positive.split()]
    checks += [(getattr(args, k) < 0, f"{flag(k)} must be >= 0") for k in non_negative.split()]
    checks += [
        (args.bc_steps is not None and args.bc_steps < 0, "--bc-steps must be >= 0"),
        (not 0.0 <= args.gamma <= 1.0, "--gamma must be in [0, 1]"),
        (not 0.0 < args.tau <= 1.0, "--tau must be in (0, 1]"),
        (not 0.0 < args.init_online_fraction < 1.0, "--init-online-fraction must be in (0, 1)"),
        (args.early_eval_freq > 0 and args.early_eval_until <= 0, "--early-eval-freq > 0 needs --early-eval-until > 0"),
    ]
    check_flags(checks)


# The paper's runs: halfcheetah, hopper, walker2d x random, medium, medium-replay, medium-expert (D4RL -v0, Sec. 5).
# Per-dataset settings were never released: every config carries the defaults above (official ours.py with the README
# demo's overrides, shlee94/Off2OnRL; offline, the official CQL recipe on the released checkpoints' sizes) and the
# paper's budgets: 1M offline steps (the checkpoints' actor_1000000.pt) with the CQL recipe's 40k BC warm-up; 250k
# online steps (ours.py runs 251 epochs of 1000 env steps, its last evaluation after 250k); evaluation every 1000-step
# epoch, 5 complete episodes for ours.py's 5000 evaluation steps.
PAPER_BUDGET = dict(offline_steps=1_000_000, bc_steps=40_000, online_steps=250_000, eval_freq=1_000, eval_episodes=5)
PAPER_CONFIGS: dict[str, dict] = {
    f"paper-{env}-{quality}": dict(dataset_id=f"o2o/{env}/{quality}-v0", **PAPER_BUDGET)
    for env in ("hopper", "halfcheetah", "walker2d")
    for quality in ("random", "medium", "medium-replay", "medium-expert")
}


def offline_meta(args: Args, env_id: str, obs_dim: int, act_dim: int) -> dict:
    """What an offline checkpoint must share with the run that loads it (`dataset_id` may differ, with a warning)."""
    return dict(format="off2on-offline-ensemble-v1", env_id=env_id, dataset_id=args.dataset_id, obs_dim=obs_dim,
                act_dim=act_dim, ensemble_size=args.ensemble_size, hidden_dim=args.hidden_dim)  # fmt: skip


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
