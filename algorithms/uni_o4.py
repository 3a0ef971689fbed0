"""Uni-O4 (Lei, He, Lu, Hu, Gao, Xu, ICLR 2024) — single-file PyTorch implementation.

Paper: Uni-O4: Unifying Online and Offline Deep RL with Multi-Step On-Policy Optimization,
https://arxiv.org/abs/2311.03351
Official code: https://github.com/Lei-Kun/Uni-O4 (read for facts only; nothing copied)

Pipeline (one file, phases combinable with --phases):
  1. values: IQL expectile V̂_τ and double Q̂_τ on the dataset (--no-iql: Monte-Carlo V + SARSA Q);
  2. ensemble behaviour cloning of n Gaussian policies with a disagreement regulariser (Eq. 6);
  3. a probabilistic dynamics ensemble (members/elites, holdout early stopping), used only for OPE;
  4. offline multi-step PPO-clip per member on dataset states with A = Q̂ − V̂, gated by AM-Q:
     a member's reference policy π_k is replaced only when its AM-Q strictly beats the best so far;
  5. online PPO (GAE, clip, value clip, entropy, frozen dataset state normalisation, reward scaling)
     initialised from the member chosen by OPE and from the offline V̂.
  --phases offline | online (plain PPO from scratch) | offline-online.

    python algorithms/uni_o4.py --dataset-id o2o/pendulum/medium-replay-v0        # CPU budgets
    python algorithms/uni_o4.py paper-hopper-medium-replay --seed 0              # a paper configuration

`--save-model` writes the offline phase to `offline.pt`; `--load-offline <run>/offline.pt` fine-tunes it in another
run (its dataset and the flags its models were trained with are checked), so several online arms can start from one
offline phase. `--compile` compiles the offline improvement step and the online PPO minibatch update.

Paper configurations: a first word `paper-<env>-<quality>` (hopper, halfcheetah, walker2d × medium, medium-replay,
medium-expert: the paper's D4RL locomotion rows; it reports no random datasets) sets every setting and budget of the
official scripts for that dataset (PAPER_CONFIGS, each value with its source; flags still override them; `--help`
lists them): the offline scripts' state normalisation, IQL or non-IQL values, tanh policy layers, V/Q steps and
dynamics epoch cap, the fine-tuning scripts' reward scaling, re-fitted V width, actor lr and epochs. Where the
official code and the paper disagree they follow the code: `--bc-reg official` (the file's default stays the
paper's Eq. 6 term) and `--select-with-env` (top 3 by AM-Q, then the best real return; the paper selects by OPE).
Where a script sweeps a value they take the first; where the repository holds two versions of a fine-tuning script
(hm, hmr, wm, wmr, wme) they take the one at commit 6e28311 (HEAD's walker2d sweeps are invalid bash); the offline
hme.sh runs hopper-medium-replay, which they read as a slip for hopper-medium-expert. Not representable here: the
official online evaluation of 3 episodes beside the offline 10 (one --eval-episodes; the configs use 10), its
offline logging evaluations of every member every 500 steps, selection among the final rather than the accepted
policies, and the deviations below. With `--download` a config's local dataset becomes Minari's
`mujoco/<env>/medium-v0` where one exists (medium only); otherwise it exits 2.

Deviations from the paper / official code (every one is deliberate):
- Disagreement regulariser (ensemble BC, Eq. 6): the paper maximises for each member
  J(π_i) = E_(s,a)~D[log π_i(a|s) + α(log π_i(a|s) − log max_{1≤j≤n} π_j(a|s))], the second term being the
  computable lower bound of the KL to the max-combined policy f = max_j π_j / Z (1 ≤ Z ≤ n). Our default
  `--bc-reg paper` is that term, at dataset pairs as in the official default (`kl_bc=data`), each member
  maximising its own J with the other members held fixed (as the official code detaches them). The max runs over
  all n members, π_i included, as f does: the term is log π_i − max(log π_i, max_{j≠i} log π_j) =
  −relu(max_{j≠i} log π_j − log π_i) ≤ 0, bounded above, and its gradient is α∇log π_i on the pairs another member
  explains better, zero elsewhere — a bounded reweighting (1 to 1 + α) of the MLE gradient, convex in μ_i, so no
  member can run away from the data. The official default differs in one place: its max runs over j ≠ i only and
  is detached, so its gradient is −(1+α)∇log π_i, which Adam ignores (members = independent MLE BC policies);
  that is `--bc-reg official`, `--bc-reg none` is plain MLE. With n = 1 no regulariser is applied. (An earlier
  default here, −α·KL(π_i ‖ stopgrad π_j*) to the most likely other member, after the official non-default
  `distribution` branch, is unbounded: its curvature in μ_i is 1/σ_i² − α/σ_j*², concave once σ_j* < √α·σ_i, and
  on hopper-medium three of four members ran to the tanh bound and scored ≈ 1 against the data's 37.)
- Data conventions follow this project: only terminations cut the bootstrap, truncations bootstrap
  (official: done = terminal OR timeout). The SARSA target (non-IQL path) cannot bootstrap at an episode's last
  transition (no a′), so it does not, as in the official code. The MC return runs to the episode's end.
- --no-iql: one SARSA Q network (as the official `QSarsaLearner`), with its own Polyak target; the IQL path keeps
  the double Q̂ with min targets.
- Actions are mapped affinely from the env's Box to [−1, 1] (identity for MuJoCo), so the policy's tanh mean
  covers any bounded action space; Q̂ and the dynamics model see the mapped actions.
- State std: a zero std is replaced by 1 (official: std + 1e-10).
- OPE: the start states (`--ope-num-states`) are drawn once and the model noise uses the same seed in every round
  (common random numbers), so the candidate and the reference are scored on the same starts and the same model
  noise, and the reference's score is exactly the best-so-far. The official code resamples starts each round and
  compares against a running maximum of differently sampled scores. AM-Q is the mean of min(Q̂1, Q̂2) over the
  visited (non-terminated) model pairs; a non-finite model state counts as a termination.
- Termination rules for Hopper, Walker2d, HalfCheetah (from the official termination_fns.py) and Pendulum (never).
  For any other env a termination classifier is learned from the dataset's terminal transitions; if the dataset
  has none, a warning is printed and the model assumes the env never terminates (`--termination never` silences
  it).
- Selection for the online phase: by OPE alone — the member with the highest best-so-far AM-Q, and its accepted
  reference policy (official: top-3 final policies by last AM-Q, then the best real-env return; that spends real
  episodes the paper does not count). `--select-with-env` does the official thing: it evaluates the top-k
  (`--select-top-k`) accepted policies for `--eval-episodes` real episodes each; those env steps are a hidden
  online budget and are reported as `selection_env_steps` in summary.json.
- One policy parameterisation in both phases: log σ = −5 + 2.5(t + 1) with t the tanh output (official online adds
  a second tanh that changes σ of the same weights). Online log-probs and ratios are taken on the raw Gaussian
  sample; the action is clamped to [−1, 1] only when sent to the env (official: log-prob of the clamped action).
- Online value re-fit (reward scaling on): a fresh V of the offline V's size (--value-refit-hidden-dim: another
  width, the paper configs set the official 256), linear output, regressed onto MC returns of the scaled dataset
  rewards (official: 3×256 with a ReLU on the output, which cannot represent negative returns). Without reward
  scaling V starts from the offline V̂. With `dynamic` scaling the dataset rewards are divided by the running std
  after its warm-up on the whole dataset, the scale the online rewards start with.
- Online learning rates decay linearly to 0 over --online-steps (the paper's horizon is 1M steps: pass that; the
  paper configs do).
- Online evaluation: at env step 0 (the policy fine-tuning starts from), then after the update of the first PPO
  rollout that ends at or after each due step (multiples of --eval-freq, and of --early-eval-freq up to
  --early-eval-until) and at the last step. The online losses and clip fraction logged are means over every
  minibatch of the rollout's update.
- Online-only mode (--phases online) still normalises states with the frozen dataset statistics.
- No caching of V/Q, BC or the dynamics model across runs; no per-500-step real-env logging evaluations offline
  (the env is used offline only for the headline evaluations: after BC and every --eval-freq improvement steps).
- Offline PPO step: the ratio ρ is taken on the raw Gaussian sample (as official), but Q̂ is evaluated at the
  sample clamped to [−1, 1], the action the env would execute: Q̂ never saw actions outside the data's range.
- Per-member gradient-norm clipping (0.5) in the vectorised offline PPO step, like one optimiser per member.
- Offline ε follows the official schedule, 0.25·(1 − min(step − 1, 200)/1e4) (`--clip-decay-steps`,
  `--clip-decay-horizon`): it freezes at ≈0.245 whatever --offline-steps is. The offline learning rate decays
  linearly to 0 over --offline-steps (official: over its 1e4 steps, the same at the paper's budget).
- Minibatch indices are drawn on the device from a torch Generator seeded with --seed; update steps return
  detached tensors and the loops reduce them to floats only when they log, so a GPU is never synchronised in a
  hot loop (one device→host copy per online env step, for the action).
- Step budgets default to CPU sizes; each Args docstring gives the paper's budget (every paper configuration sets
  them). Network sizes are the paper's.
Warning: AM-Q scores with the Q̂ that drives the improvement, so the gate cannot catch Q̂'s errors; budget the values.
Symbols: τ = IQL expectile ω (`omega`), α = disagreement weight (Eq. 6), ε = PPO clip, π_k = reference policy.
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
    """whether to save model checkpoints into the run directory: `offline.pt` after the offline phase (every
    member's accepted policy π_k, V̂, Q̂, the dynamics model, the selected member, the state statistics and the flags
    they were trained with; --load-offline reads it) and `online.pt` after fine-tuning (the actor, the critic, the
    state statistics)"""
    load_offline: Optional[str] = None
    """path of an `offline.pt` saved with --save-model: skips the offline training (values, BC, dynamics,
    improvement, selection) and fine-tunes its selected policy with its V̂; the dataset, the shapes and every flag
    the saved models were built or trained with must match this run's (exit 2 naming the flag otherwise)"""
    compile: bool = False
    """torch.compile the offline improvement step and the online PPO minibatch update (CUDA: mode reduce-overhead,
    i.e. CUDA graphs)"""
    run_dir: Optional[str] = None
    """where logs, checkpoints and summary.json go (default: runs/{run_name})"""
    dataset_id: str = "o2o/pendulum/medium-replay-v0"
    """Minari dataset id: a local one (see `python benchmark/make_datasets.py`) or a remote one with --download"""
    download: bool = False
    """fetch the dataset from Minari's remote server when it is not on the local disk"""
    offline_steps: int = 1_000
    """offline policy-improvement (PPO) gradient steps per member; 0 keeps the BC policies (paper: 1e4)"""
    online_steps: int = 20_000
    """number of online environment steps; 0 skips the online phase (paper: 1e6)"""
    eval_freq: int = 5_000
    """evaluate every this many steps (improvement gradient steps offline; environment steps online, where the PPO
    loop evaluates after the update of the first rollout that ends at or after each due step)"""
    early_eval_freq: int = 0
    """online phase: also evaluate every this many env steps during the first `early_eval_until` env steps, to
    resolve the start-of-fine-tuning dip (0: off); like every online evaluation it runs after the update of the
    first rollout that ends at or after each due step, so steps closer than --num-steps share one evaluation"""
    early_eval_until: int = 0
    """online phase: env steps over which `early_eval_freq` applies"""
    eval_episodes: int = 10
    """number of deterministic evaluation episodes"""
    eval_stochastic: bool = False
    """diagnostic: every evaluation on the run's curves also runs --eval-episodes episodes of the *sampled* policy
    (clamped Gaussian samples, the actions PPO collects with; noise from its own generator, so training is unchanged)
    and records `stochastic_score` / `stochastic_return` beside the deterministic one"""
    batch_size: int = 512
    """minibatch size of value fitting, BC and offline improvement (paper: 512)"""
    # ---- Uni-O4 ----
    phases: Literal["offline-online", "offline", "online"] = "offline-online"
    """which phases run: offline then online, offline only, or online only (plain PPO from scratch)"""
    state_norm: bool = True
    """normalise states by the dataset mean/std (frozen, also online)"""
    gamma: float = 0.99
    """discount γ"""
    # values (official critic.py)
    iql: bool = True
    """IQL expectile V̂_τ + double Q̂_τ; --no-iql: Monte-Carlo V + SARSA Q with ω-weighted advantages"""
    value_steps: int = 5_000
    """value/Q fitting gradient steps (paper: 2e6; walker2d-medium-replay 5e5)"""
    value_lr: float = 1e-4
    """Adam learning rate of V and Q"""
    v_hidden_dim: int = 512
    """width of V's hidden layers"""
    v_depth: int = 3
    """number of V's hidden layers"""
    q_hidden_dim: int = 1024
    """width of each Q head's hidden layers"""
    q_depth: int = 2
    """number of each Q head's hidden layers"""
    omega: float = 0.7
    """expectile τ of the IQL V step (also the ω advantage weighting of the non-IQL path)"""
    tau: float = 0.005
    """Polyak rate of the target Q"""
    target_update_freq: int = 2
    """update the target Q every this many value steps"""
    # behaviour cloning (official BC_ensemble.py)
    num_policies: int = 4
    """ensemble size n"""
    bc_steps: int = 5_000
    """BC gradient steps (paper: 4e5)"""
    bc_lr: float = 1e-4
    """Adam learning rate of BC"""
    bc_hidden_dim: int = 256
    """width of the policy's hidden layers (the paper's scripts also use 512)"""
    bc_depth: int = 3
    """number of the policy's hidden layers"""
    pi_activation: Literal["relu", "tanh"] = "relu"
    """hidden activation of the policy (tanh for halfcheetah medium / medium-replay in the paper)"""
    bc_alpha: float = 0.1
    """α, weight of the disagreement regulariser (Eq. 6)"""
    bc_reg: Literal["paper", "official", "none"] = "paper"
    """disagreement term of Eq. 6: paper = α(log π_i − log max_j π_j) with the max over all members (≤ 0, carries
    gradient); official = the official default (max over j ≠ i, detached), a no-op under Adam; none = plain MLE"""
    # dynamics model for OPE (official transition_model/)
    dyn_members: int = 7
    """dynamics ensemble members"""
    dyn_elites: int = 5
    """elite members used in model rollouts"""
    dyn_hidden_dim: int = 200
    """width of the dynamics MLPs"""
    dyn_depth: int = 4
    """number of hidden layers of the dynamics MLPs"""
    dyn_lr: float = 1e-3
    """Adam learning rate of the dynamics model"""
    dyn_batch_size: int = 256
    """dynamics minibatch size"""
    dyn_patience: int = 5
    """stop after this many epochs without a >1% holdout improvement of any member"""
    dyn_max_epochs: Optional[int] = 50
    """cap on dynamics epochs (paper: none, i.e. early stopping only; pass None)"""
    termination: Literal["auto", "hopper", "walker2d", "halfcheetah", "never", "learned"] = "auto"
    """termination rule of model rollouts: auto picks by env id, else learns one from the dataset"""
    term_steps: int = 2_000
    """gradient steps of the learned termination classifier (used only for envs without a rule)"""
    # offline improvement and OPE (official abppo.py, dynamics_eval.py)
    pi_lr: float = 1e-4
    """initial Adam learning rate of offline improvement (decays linearly to 0)"""
    clip_ratio: float = 0.25
    """ε of offline PPO-clip: ε·(1 − min(step − 1, clip_decay_steps)/clip_decay_horizon), i.e. it decays for
    `clip_decay_steps` steps along a line that would reach 0 at `clip_decay_horizon`, then stays frozen"""
    clip_decay_steps: int = 200
    """steps during which ε decays (the official code freezes it after 200 steps)"""
    clip_decay_horizon: int = 10_000
    """horizon of ε's linear decay (official: its fixed 1e4 improvement steps, so ε freezes at 0.245 whatever
    --offline-steps is)"""
    ope_freq: int = 100
    """score each member by AM-Q every this many improvement steps"""
    ope_horizon: int = 50
    """model rollout length H of AM-Q (paper: 1000)"""
    ope_num_states: int = 128
    """start states of the AM-Q rollouts (paper: 512)"""
    select_with_env: bool = False
    """official member selection: top-k by AM-Q then the best real return (spends hidden online episodes)"""
    select_top_k: int = 3
    """k of --select-with-env"""
    # online PPO (official ppo_finetune/)
    num_steps: int = 2048
    """environment steps per PPO rollout"""
    minibatch_size: int = 128
    """PPO minibatch size"""
    update_epochs: int = 10
    """K, PPO epochs per rollout (paper: 5-30 per dataset)"""
    lr_actor: float = 2e-5
    """online actor learning rate (linear decay to 0 over --online-steps)"""
    lr_critic: float = 2e-4
    """online critic learning rate (linear decay to 0 over --online-steps)"""
    gae_lambda: float = 0.95
    """λ of GAE"""
    online_clip: float = 0.05
    """ε of online PPO-clip and of value clipping"""
    ent_coef: float = 0.01
    """entropy coefficient"""
    max_grad_norm: float = 0.5
    """gradient-norm clip (offline and online)"""
    reward_scale: Literal["none", "number", "dynamic"] = "none"
    """online reward scaling: none; number (× reward_scale_factor, hopper 0.1); dynamic (÷ running std of the
    discounted return, warmed up on the dataset)"""
    reward_scale_factor: float = 0.1
    """factor of --reward-scale number"""
    value_refit_steps: int = 2_000
    """steps re-fitting V to scaled MC returns when rewards are scaled (paper: 1e6)"""
    value_refit_hidden_dim: Optional[int] = None
    """width of the V re-fitted when rewards are scaled (None: the offline V's, --v-hidden-dim; the official
    fine-tuning scripts use 256)"""


# ==============================================================================================
# ALGO LOGIC: networks. Every ensemble keeps its members' weights stacked as (n, in, out), one baddbmm per layer.
# ==============================================================================================
class VectorizedLinear(nn.Module):
    """n independent linear layers. x: (n, B, in), or (B, in) shared by all members -> (n, B, out)."""

    def __init__(self, in_features: int, out_features: int, n: int, *, orthogonal_gain: Optional[float] = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(n, 1, out_features))
        for i in range(n):  # init only, not a hot path
            if orthogonal_gain is None:  # nn.Linear's default init
                w = torch.empty(out_features, in_features)
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
                self.weight.data[i] = w.T
                bound = 1 / math.sqrt(in_features)
                nn.init.uniform_(self.bias.data[i], -bound, bound)
            else:
                nn.init.orthogonal_(self.weight.data[i].T, gain=orthogonal_gain)

    def forward(self, x: torch.Tensor, members: Optional[torch.Tensor] = None) -> torch.Tensor:
        w, b = (self.weight, self.bias) if members is None else (self.weight[members], self.bias[members])
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(w.shape[0], -1, -1)
        return torch.baddbmm(b, x, w)


class EnsembleMLP(nn.Module):
    def __init__(self, n, in_dim, hidden, depth, out_dim, act: Callable = F.relu, orthogonal_gain=None):
        super().__init__()
        dims = [in_dim] + [hidden] * depth + [out_dim]
        pairs = zip(dims[:-1], dims[1:])
        self.layers = nn.ModuleList(VectorizedLinear(i, o, n, orthogonal_gain=orthogonal_gain) for i, o in pairs)
        self.act, self.n = act, n

    def forward(self, x, members=None):
        for i, layer in enumerate(self.layers):
            x = layer(x, members)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


def gaussian_log_prob(a: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Diagonal Normal log-density summed over action dimensions."""
    return (-0.5 * ((a - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


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
        """π_k ← π for the members where mask is True (vectorised, no loop over members; torch.where, not a
        boolean-mask assignment, so the device never synchronises with the host)."""
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
    """Q̂1, Q̂2 as a 2-member ensemble on [s, a] (IQL); `heads=1` for the single SARSA Q of the non-IQL path.
    Callers take min over the heads, which is the identity for one head."""

    def __init__(self, obs_dim, act_dim, hidden=1024, depth=2, heads=2):
        super().__init__()
        self.net = EnsembleMLP(heads, obs_dim + act_dim, hidden, depth, 1)

    def forward(self, obs, act):
        return self.net(torch.cat([obs, act], -1)).squeeze(-1)  # (heads, B)


def mlp(in_dim, hidden, depth, out_dim=1) -> nn.Sequential:
    dims = [in_dim] + [hidden] * depth
    layers = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(dims[-1], out_dim))


class ValueNet(nn.Module):
    def __init__(self, obs_dim, hidden=512, depth=3):
        super().__init__()
        self.net = mlp(obs_dim, hidden, depth)

    def forward(self, obs):
        return self.net(obs).squeeze(-1)


class StateNorm:
    """(s − mean) / std with the dataset's statistics, frozen in both phases."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, device):
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device)

    def __call__(self, obs):
        return (obs - self.mean) / self.std


# ==============================================================================================
# ALGO LOGIC: buffers. The dataset as device tensors (the offline stages sample it); one PPO rollout.
# ==============================================================================================
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


# ==============================================================================================
# ALGO LOGIC: losses and updates
# ==============================================================================================
@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float):
    """Polyak averaging θ' ← (1 − τ)·θ' + τ·θ over all parameters, in one fused call."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def value_losses(V, Q, Q_target, batch: dict, args: Args) -> tuple[torch.Tensor, torch.Tensor]:
    """IQL: expectile-τ regression of V̂(s) onto min Q̂_target(s, a), and Q̂(s, a) onto r + γ(1 − term)V̂(s′).
    --no-iql: V regressed onto the MC return, the single SARSA Q onto r + γ(1 − term)Q̂_target(s′, a′), not
    bootstrapped at an episode's last transition (no a′ there). Returns (v_loss, q_loss), Q̂ summed over heads."""
    obs, act, rew, next_obs, term = (batch[k] for k in ("obs", "act", "rew", "next_obs", "term"))
    if args.iql:
        with torch.no_grad():
            q_target = Q_target(obs, act).min(0).values
        u = q_target - V(obs)
        v_loss = (torch.where(u > 0, args.omega, 1 - args.omega) * u**2).mean()
        with torch.no_grad():
            target = rew + args.gamma * (1 - term) * V(next_obs)
    else:
        v_loss = ((V(obs) - batch["mc"]) ** 2).mean()
        with torch.no_grad():
            no_bootstrap = torch.maximum(term, batch["ends"])
            target = rew + args.gamma * (1 - no_bootstrap) * Q_target(next_obs, batch["next_act"]).min(0).values
    q_loss = ((Q(obs, act) - target) ** 2).mean(1).sum()
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


def offline_ppo_loss(pi, pi_ref, Q: DoubleQ, V: ValueNet, obs, noise, clip, iql: bool, omega: float):
    """PPO-clip on dataset states with actions a = μ_k + σ_k·noise from π_k (the reference) and A = min Q̂ − V̂,
    z-scored per member (`noise` ~ N(0, 1) of shape (n, B, act_dim), drawn by the caller). Returns (loss summed
    over members, ratio ρ)."""
    n, batch_size = pi.n, obs.shape[0]
    with torch.no_grad():
        mu_k, log_std_k = pi_ref(obs)
        act = mu_k + log_std_k.exp() * noise  # (n, B, act_dim)
        logp_k = gaussian_log_prob(act, mu_k, log_std_k)
        obs_rep = obs.unsqueeze(0).expand(n, -1, -1).reshape(n * batch_size, -1)
        # Q̂ at the action the env would execute (clamped): Q̂ never saw actions outside [−1, 1]
        act_env = act.clamp(-1, 1).reshape(n * batch_size, -1)
        adv = (Q(obs_rep, act_env).min(0).values - V(obs_rep)).view(n, batch_size)
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
    """ε at improvement step `step` (1-based): linear decay for `clip_decay_steps` steps along the line that
    reaches 0 at the fixed `clip_decay_horizon` (official: 1e4 steps), then frozen. It does not depend on
    --offline-steps: with the defaults ε freezes at 0.245 whatever the budget."""
    return args.clip_ratio * (1 - min(step - 1, args.clip_decay_steps) / args.clip_decay_horizon)


def compile_fn(fn, device: torch.device):
    """torch.compile for --compile: CUDA graphs on a GPU (LeanRL's mode), the default mode on a CPU."""
    return torch.compile(fn, mode="reduce-overhead" if device.type == "cuda" else None)


class UniO4:
    """The offline stages: V̂, Q̂ and its Polyak target, the policy ensemble π and the reference π_k, and their
    optimisers (Adam over the stacked weights: the members' losses are summed, so one Adam equals one per member).
    Update methods take a batch dict (keys `obs, act, rew, next_obs, term`; --no-iql also `ends, next_act, mc`) and
    return dicts of detached tensors."""

    def __init__(self, args: Args, obs_dim: int, act_dim: int, device):
        self.args = args
        self.V = ValueNet(obs_dim, args.v_hidden_dim, args.v_depth).to(device)
        heads = 2 if args.iql else 1
        self.Q = DoubleQ(obs_dim, act_dim, args.q_hidden_dim, args.q_depth, heads=heads).to(device)
        self.Q_target = copy.deepcopy(self.Q).requires_grad_(False)
        # fused Adam where it measured faster (values ×1.15-1.4, BC ×1.8 on a CPU at hopper sizes; the same numbers
        # within 1e-5); the improvement step measured no gain and keeps the default
        self.v_opt = torch.optim.Adam(self.V.parameters(), lr=args.value_lr, fused=True)
        self.q_opt = torch.optim.Adam(self.Q.parameters(), lr=args.value_lr, fused=True)
        n, hidden, depth = args.num_policies, args.bc_hidden_dim, args.bc_depth
        self.pi = GaussianPolicyEnsemble(n, obs_dim, act_dim, hidden, depth, args.pi_activation).to(device)
        self.pi_ref = copy.deepcopy(self.pi).requires_grad_(False)  # π_k; improve_offline starts it from BC
        self.bc_opt = torch.optim.Adam(self.pi.parameters(), lr=args.bc_lr, fused=True)
        self.pi_opt = torch.optim.Adam(self.pi.parameters(), lr=args.pi_lr)  # improvement: a fresh Adam
        self.improve_loss = compile_fn(offline_ppo_loss, torch.device(device)) if args.compile else offline_ppo_loss

    def value_update(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """One V and one Q update; the Polyak target update every `target_update_freq` steps (`step` 1-based)."""
        v_loss, q_loss = value_losses(self.V, self.Q, self.Q_target, batch, self.args)
        self.v_opt.zero_grad()
        v_loss.backward()
        self.v_opt.step()
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        if step % self.args.target_update_freq == 0:
            soft_update(self.Q_target, self.Q, self.args.tau)
        return dict(v_loss=v_loss.detach(), q_loss=q_loss.detach())

    def bc_update(self, batch: dict) -> dict[str, torch.Tensor]:
        """One ensemble-BC step: all members on the same minibatch. `bc_loss` is summed over members, `nll` (n,)."""
        loss, nll = bc_loss(self.pi, batch["obs"], batch["act"], self.args.bc_alpha, self.args.bc_reg)
        self.bc_opt.zero_grad()
        loss.backward()
        self.bc_opt.step()
        return dict(bc_loss=loss.detach(), nll=nll)

    def improve_update(self, batch: dict, clip: float) -> dict[str, torch.Tensor]:
        """One offline PPO step of every member against π_k, per-member gradient-norm clipping. `policy_loss` is
        summed over members, `ratio_dev` = mean |ρ − 1|. The actions' noise comes from the global generator."""
        obs = batch["obs"]
        noise = torch.randn(self.pi.n, obs.shape[0], self.pi.act_dim, device=obs.device)
        if self.args.compile:  # a tensor, so that the decaying ε does not recompile the step
            clip = torch.full((), clip, device=obs.device)
        adv_args = (self.args.iql, self.args.omega)
        loss, ratio = self.improve_loss(self.pi, self.pi_ref, self.Q, self.V, obs, noise, clip, *adv_args)
        self.pi_opt.zero_grad()
        loss.backward()
        clip_grad_norm_per_member(self.pi.parameters(), self.args.max_grad_norm)
        self.pi_opt.step()
        return dict(policy_loss=loss.detach(), ratio_dev=(ratio.detach() - 1).abs().mean())

    def checkpoint(self, meta: dict, selected: int, dyn, norm: StateNorm, offline_results: dict, diagnostics: dict):
        """`offline.pt`: every member's accepted policy π_k, V̂, Q̂, the dynamics model, the selected member, the
        state statistics, the offline results of summary.json, and `meta` (checkpoint_meta: what a load checks)."""
        models = dict(pi=self.pi_ref.state_dict(), V=self.V.state_dict(), Q=self.Q.state_dict(), dyn=dyn.state_dict())
        statistics = dict(state_mean=norm.mean, state_std=norm.std)
        results = dict(offline_results=dict(offline_results), diagnostics=dict(diagnostics))
        return dict(meta=meta, **models, selected_member=selected, **statistics, **results)

    def load_checkpoint(self, ckpt: dict):
        """The saved final policies (as π and π_k), V̂ and Q̂."""
        for module, key in ((self.pi_ref, "pi"), (self.pi, "pi"), (self.V, "V"), (self.Q, "Q")):
            module.load_state_dict(ckpt[key])
        self.Q_target.load_state_dict(ckpt["Q"])


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
    """The online stage: the actor (one member, from the selected offline policy) and the critic (V̂ or its
    re-fit), with their Adam optimisers (eps 1e-5, learning rates decayed by `anneal`)."""

    def __init__(self, actor: GaussianPolicyEnsemble, critic: ValueNet, args: Args):
        self.actor, self.critic, self.args = actor, critic, args
        self.a_opt = torch.optim.Adam(actor.parameters(), lr=args.lr_actor, eps=1e-5)
        self.c_opt = torch.optim.Adam(critic.parameters(), lr=args.lr_critic, eps=1e-5)
        device = next(actor.parameters()).device
        self.losses = compile_fn(ppo_losses, device) if args.compile else ppo_losses

    def anneal(self, frac: float):
        self.a_opt.param_groups[0]["lr"] = self.args.lr_actor * frac
        self.c_opt.param_groups[0]["lr"] = self.args.lr_critic * frac

    def ppo_update(self, mb: dict) -> dict[str, torch.Tensor]:
        """One minibatch update of the actor and the critic (disjoint parameters: one backward of the sum), each
        gradient-norm clipped. Returns detached policy_loss, value_loss, entropy, clipfrac."""
        args = self.args
        actor_loss, v_loss, pg_loss, entropy, clipfrac = self.losses(
            self.actor, self.critic, mb, args.online_clip, args.ent_coef
        )
        self.a_opt.zero_grad()
        self.c_opt.zero_grad()
        (actor_loss + v_loss).backward()
        nn.utils.clip_grad_norm_(self.actor.parameters(), args.max_grad_norm)
        nn.utils.clip_grad_norm_(self.critic.parameters(), args.max_grad_norm)
        self.a_opt.step()
        self.c_opt.step()
        return dict(
            policy_loss=pg_loss.detach(), value_loss=v_loss.detach(), entropy=entropy.detach(), clipfrac=clipfrac
        )


# ==============================================================================================
# ALGO LOGIC: the offline stages (values, ensemble BC), then the dynamics model and AM-Q that gate the improvement
# ==============================================================================================
VALUE_KEYS = ("obs", "act", "rew", "next_obs", "term")
SARSA_KEYS = VALUE_KEYS + ("ends", "next_act", "mc")


def fit_values(agent: UniO4, data_t: dict, args: Args, gen: torch.Generator) -> list[dict]:
    """`value_steps` updates of V̂ and Q̂ on minibatches drawn on the device from `gen`. Returns the statistics
    every 1000 steps and at the last (losses, mean V̂ of the batch, steps per second), as floats."""
    keys = VALUE_KEYS if args.iql else SARSA_KEYS
    history, t0 = [], time.time()
    for step in range(1, args.value_steps + 1):
        batch = sample(data_t, keys, args.batch_size, gen)
        stats = agent.value_update(batch, step)
        if step % 1000 == 0 or step == args.value_steps:  # a logging step: statistics come to the host
            with torch.no_grad():
                v_values = agent.V(batch["obs"]).mean()
            row = {k: v.item() for k, v in stats.items()}
            history.append(dict(step=step, **row, v_values=v_values.item(), SPS=step / (time.time() - t0)))
            if step % 5000 == 0:
                print(f"[offline/values] step {step}: v_loss {row['v_loss']:.4f} q_loss {row['q_loss']:.4f}")
    return history


def train_bc(agent: UniO4, data_t: dict, args: Args, gen: torch.Generator) -> list[dict]:
    """`bc_steps` ensemble-BC updates, every member on the same minibatch. Returns the statistics every 1000
    steps and at the last (loss per member, each member's minibatch NLL, steps per second), as floats."""
    history, t0 = [], time.time()
    for step in range(1, args.bc_steps + 1):
        stats = agent.bc_update(sample(data_t, ("obs", "act"), args.batch_size, gen))
        if step % 1000 == 0 or step == args.bc_steps:
            bc_loss_per_member = stats["bc_loss"].item() / agent.pi.n
            sps = step / (time.time() - t0)
            history.append(dict(step=step, bc_loss=bc_loss_per_member, nll=stats["nll"].tolist(), SPS=sps))
    return history


@torch.no_grad()
def bc_nll(pi: GaussianPolicyEnsemble, data_t: dict, max_samples: int = 10_000, chunk: int = 2_048) -> torch.Tensor:
    """Per-member mean −log π_i(a|s) over (the first `max_samples` of) the dataset's pairs, a tensor (n,)."""
    n = min(max_samples, data_t["obs"].shape[0])
    total = torch.zeros(pi.n, device=data_t["obs"].device)
    for b in range(0, n, chunk):
        end = min(n, b + chunk)
        total -= pi.log_prob(data_t["obs"][b:end], data_t["act"][b:end]).sum(1)
    return total / n


class DynamicsEnsemble(nn.Module):
    """Probabilistic dynamics ensemble for OPE (official transition_model/, from OfflineRL-Kit): a Gaussian over
    [Δs, r] with a soft-bounded log-variance; rollouts use the elites."""

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
    """Bootstrap per member, holdout min(20%, 1000), stop after `dyn_patience` epochs without a >1% holdout gain
    of any member, keep each member's best weights, elites = lowest holdout MSE. `gen`: a torch Generator on the
    data's device (all index draws stay on the device). Returns (summary: epochs, elite and per-member holdout
    MSE; the mean holdout MSE of every epoch)."""
    device = obs.device
    x, y = torch.cat([obs, act], -1), torch.cat([next_obs - obs, rew[:, None]], -1)
    n = x.shape[0]
    perm = torch.randperm(n, generator=gen, device=device)
    n_hold = min(int(0.2 * n), 1000)
    hold, train = perm[:n_hold], perm[n_hold:]
    model.in_mu.copy_(x[train].mean(0))
    model.in_std.copy_(torch.where(x[train].std(0) < 1e-12, torch.ones_like(model.in_std), x[train].std(0)))
    opt = torch.optim.Adam(model.parameters(), lr=args.dyn_lr)
    boot = train[torch.randint(len(train), (model.members, len(train)), generator=gen, device=device)]
    best = torch.full((model.members,), float("inf"), device=device)
    best_state = copy.deepcopy(model.net.state_dict())
    epoch, since_update, holdout_curve = 0, 0, []
    while True:
        idx = boot[:, torch.randperm(len(train), generator=gen, device=device)]
        for b in range(0, len(train), args.dyn_batch_size):
            bi = idx[:, b : b + args.dyn_batch_size]
            dynamics_update(model, opt, x[bi], y[bi])
        epoch += 1
        with torch.no_grad():
            mean, _ = model(x[hold].unsqueeze(0).expand(model.members, -1, -1))
            hold_mse = ((mean - y[hold]) ** 2).mean((1, 2))
        improved = hold_mse < 0.99 * best  # a >1% holdout gain
        if improved.any():
            state = model.net.state_dict()
            for k in best_state:  # per-member snapshot of the improved members
                best_state[k][improved] = state[k][improved].clone()
            best = torch.where(improved, hold_mse, best)
            since_update = 0
        else:
            since_update += 1
        holdout_curve.append(float(hold_mse.mean()))
        if since_update >= args.dyn_patience or (args.dyn_max_epochs is not None and epoch >= args.dyn_max_epochs):
            break
    model.net.load_state_dict(best_state)
    model.elites.copy_(torch.argsort(best)[: model.n_elites])
    elite_mse = float(best[model.elites].mean())
    print(f"[offline/dynamics] {epoch} epochs, elite holdout MSE {elite_mse:.5f}", flush=True)
    return dict(epochs=epoch, elite_holdout_mse=elite_mse, holdout_mse=best.tolist()), holdout_curve


# Termination rules of model rollouts, on raw next states (official termination_fns.py).
def _term_hopper(s):
    h, ang = s[:, 0], s[:, 1]
    healthy = torch.isfinite(s).all(-1) & (s[:, 1:].abs() < 100).all(-1) & (h > 0.7) & (ang.abs() < 0.2)
    return ~healthy


def _term_walker2d(s):
    h, ang = s[:, 0], s[:, 1]
    return ~((s.abs() < 100).all(-1) & (h > 0.8) & (h < 2.0) & (ang.abs() < 1.0))


def _term_halfcheetah(s):
    return ~(s.abs() < 100).all(-1)


def _term_never(s):
    return torch.zeros(s.shape[0], dtype=torch.bool, device=s.device)


TERMINATION_RULES = {"hopper": _term_hopper, "walker2d": _term_walker2d, "halfcheetah": _term_halfcheetah}
NEVER_TERMINATES = ("pendulum",)


class LearnedTermination(nn.Module):
    """P(terminal | s') classifier for envs without a hand-written rule."""

    def __init__(self, obs_dim, hidden=200):
        super().__init__()
        self.net = mlp(obs_dim, hidden, 2)
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


@torch.no_grad()
def am_q(pi, dyn, term_fn, Q, norm: StateNorm, s0_raw, horizon: int, seed: int) -> torch.Tensor:
    """AM-Q per member: mean min(Q̂1, Q̂2) over the (non-terminated) pairs visited by the deterministic policy
    in the learned model, from raw start states s0_raw. Same seed -> same model noise (common random numbers)."""
    n, batch_size = pi.n, s0_raw.shape[0]
    gen = torch.Generator(device=s0_raw.device).manual_seed(seed)
    s = s0_raw.unsqueeze(0).expand(n, -1, -1).reshape(n * batch_size, -1)
    alive = torch.ones(n * batch_size, device=s.device)
    total, count = torch.zeros_like(alive), torch.zeros_like(alive)
    for _ in range(horizon):
        obs = norm(s)
        act = pi(obs.view(n, batch_size, -1))[0].clamp(-1, 1).reshape(n * batch_size, -1)
        total += Q(obs, act).min(0).values * alive
        count += alive
        s, _ = dyn.step(s, act, gen)
        bad = ~torch.isfinite(s).all(-1)
        s = torch.where(bad[:, None], torch.zeros_like(s), s)
        alive = alive * (~(term_fn(s) | bad)).float()
        # no early exit once every rollout has terminated: testing that would synchronise the device every model
        # step; terminated rollouts add nothing to `total` or `count`, so the result is the same
    return total.view(n, batch_size).sum(1) / count.view(n, batch_size).sum(1)


def accept_rule(scores: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """π_k ← π only on a strictly better AM-Q than the best so far."""
    return scores > best


def improve_offline(
    agent: UniO4, data_t: dict, score: Callable, best: torch.Tensor, args: Args, gen, log, eval_selected: Callable
) -> dict:
    """The multi-step improvement: `offline_steps` PPO-clip steps of every member against its reference π_k, and
    every `ope_freq` steps (and at the last) an OPE round that replaces π_k by π where AM-Q (`score`) strictly
    beats the best so far (`best`, updated in place of the returned tensor). `eval_selected(step, best)` runs the
    intermediate real evaluations every `eval_freq` steps. Returns best, accepts per member, accepted steps."""
    accepts = np.zeros(agent.pi.n, dtype=int)
    accept_steps: list[list[int]] = [[] for _ in range(agent.pi.n)]  # the improvement steps of each accepted round
    t0 = time.time()
    for step in range(1, args.offline_steps + 1):
        agent.pi_opt.param_groups[0]["lr"] = args.pi_lr * (1 - (step - 1) / args.offline_steps)
        clip = clip_schedule(step, args)
        stats = agent.improve_update(sample(data_t, ("obs",), args.batch_size, gen), clip)
        if step % 100 == 0:
            log.scalar("offline", "losses/policy_loss", stats["policy_loss"].item() / agent.pi.n, step)
            log.scalar("offline", "losses/ratio_dev", stats["ratio_dev"].item(), step)
            log.scalar("offline", "charts/clip_ratio", clip, step)
            log.scalar("offline", "charts/SPS", step / (time.time() - t0), step)
        if step % args.ope_freq == 0 or step == args.offline_steps:
            scores = score(agent.pi)
            accepted = accept_rule(scores, best)
            agent.pi_ref.copy_members_from(agent.pi, accepted)
            best = torch.where(accepted, scores, best)
            # an OPE round is a logging step: its statistics come to the host once per round
            accepted_l, scores_l, best_l = accepted.tolist(), scores.tolist(), best.tolist()
            accepts += np.array(accepted_l, dtype=int)
            for m in range(agent.pi.n):
                if accepted_l[m]:
                    accept_steps[m].append(step)
                log.scalar("offline", f"ope/amq_member{m}", scores_l[m], step)
                log.scalar("offline", f"ope/best_amq_member{m}", best_l[m], step)
                log.scalar("offline", f"ope/accept_member{m}", float(accepted_l[m]), step)
            am_q_rounded = [round(x, 2) for x in scores_l]
            print(f"[offline/ope] step {step}: AM-Q {am_q_rounded} accept {[int(x) for x in accepted_l]}", flush=True)
        if step % args.eval_freq == 0 and step != args.offline_steps:
            eval_selected(step, best)
    return dict(best=best, accepts=accepts, accept_steps=accept_steps)


# ==============================================================================================
# ALGO LOGIC: the online stage (PPO): value re-fit, rollout, GAE, epochs of minibatch updates
# ==============================================================================================
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
        """The statistics after calling self on every dataset reward in order (episodes delimited by
        `episode_ends`), vectorised per episode: the forward discounted returns, merged into the running mean
        and M2 in one step (Chan et al.'s parallel update)."""
        eps = _episodes(episode_ends)
        if not eps:
            return
        rets = np.concatenate([discounted_cumsum(rewards[ep][::-1], self.gamma)[::-1] for ep in eps])
        n, mean = len(rets), float(rets.mean())
        m2 = float(((rets - mean) ** 2).sum())
        d, tot = mean - self.mean, self.n + n
        self.m2 += m2 + d * d * self.n * n / tot
        self.mean += d * n / tot
        self.n, self.ret = tot, float(rets[-1])


def make_reward_scale(args: Args, data: dict) -> Optional[Callable[[float, bool], float]]:
    """r ↦ scaled r for --reward-scale (None: unscaled); `dynamic` starts from the whole dataset's statistics."""
    if args.reward_scale == "number":
        return lambda r, episode_start: r * args.reward_scale_factor
    if args.reward_scale == "dynamic":
        scale_fn = RunningReturnStd(args.gamma)
        scale_fn.warm_up(data["rewards"], data["episode_ends"])
        return scale_fn
    return None


def refit_targets(rewards: np.ndarray, episode_ends: np.ndarray, args: Args, scale_fn) -> np.ndarray:
    """MC returns of the scaled dataset rewards, the targets of the online V re-fit: rewards × reward_scale_factor
    (`number`), or ÷ the std of a warmed-up RunningReturnStd `scale_fn` (`dynamic`): the scale the online rewards
    start with, not that of fresh statistics, which are unsettled for the first rewards."""
    if args.reward_scale == "number":
        r_sc = rewards * args.reward_scale_factor
    else:
        r_sc = rewards / (scale_fn.std + 1e-8)
    return mc_returns(r_sc.astype(np.float32), episode_ends, args.gamma)


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
    obs_dim, act_dim = env_state["obs"].size, actor.act_dim
    rollout = Rollout(n_rollout, obs_dim, act_dim, device)
    for t in range(n_rollout):
        obs = norm(torch.as_tensor(env_state["obs"], dtype=torch.float32, device=device).reshape(1, -1))
        with torch.no_grad():
            mu, log_std = actor(obs)
            act = (mu + log_std.exp() * torch.randn_like(mu))[0, 0]
            logp = gaussian_log_prob(act, mu[0, 0], log_std[0, 0])
        env_act = a_center + a_half * act.clamp(-1, 1).cpu().numpy()
        next_obs, rew, term, trunc, _ = env.step(env_act)
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
            env_state["obs"], _ = env.reset()
            env_state.update(ep_ret=0.0, ep_len=0, episode_start=True)
        else:
            env_state["obs"] = next_obs
    return rollout


def ppo_epochs(ppo: OnlinePPO, rollout: Rollout, norm: StateNorm, args: Args, gen) -> tuple[dict, int]:
    """GAE on the rollout, then `update_epochs` epochs of minibatch updates. Returns the means of each statistic
    over every minibatch (detached tensors) and the number of minibatch updates."""
    n_rollout = rollout.obs.shape[0]
    device = rollout.obs.device
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
    (t <= early_eval_until and t % early_eval_freq == 0). The PPO loop asks after each rollout's update, hi being
    the env steps so far and lo those at the previous rollout's end, so each due step is evaluated at the first
    rollout end at or after it; step 0 (before any online interaction) and the last step are always evaluated."""
    if (lo // args.eval_freq + 1) * args.eval_freq <= hi:
        return True
    if args.early_eval_freq > 0:
        first_early = (lo // args.early_eval_freq + 1) * args.early_eval_freq
        return first_early <= min(hi, args.early_eval_until)
    return False


def policy_actor(pi: GaussianPolicyEnsemble, member: int, norm: StateNorm, a_center, a_half, device, noise=None):
    """Member `member`'s action mapped to the env's Box: its clamped mean (the paper's evaluation), or, given a numpy
    Generator `noise`, a clamped sample of its Gaussian (--eval-stochastic)."""

    def act(obs):
        with torch.no_grad():
            obs_t = norm(torch.as_tensor(obs, dtype=torch.float32, device=device).reshape(1, -1))
            mu, log_std = pi(obs_t)
            a = mu[member, 0]
            if noise is not None:
                eps = torch.as_tensor(noise.standard_normal(a.shape[-1]), dtype=a.dtype, device=device)
                a = a + log_std[member, 0].exp() * eps
            a = a.clamp(-1, 1).cpu().numpy()
        return a_center + a_half * a

    return act


class PolicyEvaluator:
    """Deterministic real-env evaluation of one policy member: --eval-episodes episodes from the run's evaluation
    seeds, timed as the `eval` stage. `env_steps` counts the env steps every evaluation spent."""

    def __init__(self, env, dataset, norm: StateNorm, act_map, args: Args, log, device):
        self.env, self.dataset, self.norm, self.act_map, self.args, self.log = env, dataset, norm, act_map, args, log
        self.device, self.env_steps = device, 0

    def __call__(self, pi: GaussianPolicyEnsemble, member: int, seed_offset: int = 10_000, stochastic: bool = False):
        """-> (returns of the episodes, normalized score of their mean or None)."""
        noise = np.random.default_rng(self.args.seed + seed_offset) if stochastic else None
        act = policy_actor(pi, member, self.norm, *self.act_map, self.device, noise)

        def counted(obs):
            self.env_steps += 1
            return act(obs)

        with self.log.timer("eval"):
            returns = evaluate(self.env, counted, self.args.eval_episodes, self.args.seed + seed_offset)
        return returns, normalized_score(self.dataset, float(returns.mean()))

    def record(self, phase: str, step: int, pi: GaussianPolicyEnsemble, member: int, done=None):
        """One point of the run's `phase` curve (`done`: this member's (returns, score) if already evaluated); with
        --eval-stochastic the sampled policy's score rides along: on multimodal data the mean action can stand
        still while the samples PPO improves move (halfcheetah medium-replay, README)."""
        returns, score = done if done is not None else self(pi, member)
        extra = {}
        if self.args.eval_stochastic:
            s_returns, s_score = self(pi, member, stochastic=True)
            extra = dict(stochastic_return=float(s_returns.mean()), stochastic_score=s_score)
            for k, v in extra.items():
                if v is not None:
                    self.log.scalar(phase, f"eval/{k}", v, step)
        self.log.eval(phase, step, returns, score, **extra)


# ==============================================================================================
# ALGO LOGIC: main — the offline phase (values → BC → dynamics → gated improvement → selection), then online PPO
# ==============================================================================================
def main(args: Args) -> dict:
    validate(args)
    # data, environment and checkpoint checks happen before the run directory exists
    try:
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
        meta = checkpoint_meta(args, env_id, obs_dim, act_dim)
        state_stats = state_statistics(data["observations"], args.state_norm)
        ckpt = load_offline_checkpoint(args.load_offline, meta, state_stats) if args.load_offline else None
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
    evaluate_policy = PolicyEvaluator(eval_env, dataset, norm, act_map, args, log, device)
    # the initial actor of --phases online, drawn first in every run, so every run draws its weights in one order
    actor = GaussianPolicyEnsemble(1, obs_dim, act_dim, args.bc_hidden_dim, args.bc_depth, args.pi_activation)
    actor, V = actor.to(device), None
    extra: dict = dict(termination_rule=None, selection_env_steps=0, offline_gradient_steps=0)
    diagnostics: dict = {}  # summary.json["diagnostics"]: plain floats and lists

    # ================================ offline ================================
    if ckpt is not None:
        agent = UniO4(args, obs_dim, act_dim, device)
        agent.load_checkpoint(ckpt)
        sel = int(ckpt["selected_member"])
        print(f"[offline] loaded {args.load_offline} (selected member {sel}): offline training skipped", flush=True)
        evaluate_policy.record("offline", args.offline_steps, agent.pi_ref, sel)
        extra.update(ckpt["offline_results"], offline_loaded_from=args.load_offline)
        diagnostics.update(ckpt["diagnostics"])
        actor, V = agent.pi_ref.extract(sel).requires_grad_(True), agent.V
    elif args.phases != "online":
        agent = UniO4(args, obs_dim, act_dim, device)
        setup = (data, data_t, norm, termination, evaluate_policy, log, gen, rng)
        sel, dyn = offline_phase(agent, args, *setup, extra, diagnostics)
        actor, V = agent.pi_ref.extract(sel).requires_grad_(True), agent.V
        if args.save_model:
            ckpt = agent.checkpoint(meta, sel, dyn, norm, extra, diagnostics)
            torch.save(ckpt, os.path.join(run_dir, "offline.pt"))

    # ================================ online ================================
    online_steps = args.online_steps if args.phases != "offline" else 0
    online_grad_steps = 0
    if online_steps > 0:
        with log.timer("online_setup"):
            scale_fn = make_reward_scale(args, data)
            critic = online_critic(V, scale_fn, data, data_t, args, gen)
        ppo = OnlinePPO(actor, critic, args)
        evaluate_policy.record("online", 0, actor, 0)  # the curve starts at the policy fine-tuning starts from
        env = dataset.recover_environment()
        if not isinstance(env.observation_space, gym.spaces.Box):
            env = gym.wrappers.FlattenObservation(env)
        env_state = dict(obs=env.reset(seed=args.seed)[0], ep_ret=0.0, ep_len=0, episode_start=True, step=0)
        start_time = time.time()
        while env_state["step"] < online_steps:
            with log.timer("online"):
                rollout_start = env_state["step"]
                n_rollout = min(args.num_steps, online_steps - rollout_start)
                ppo.anneal(1 - rollout_start / online_steps)
                rollout = collect_rollout(env, actor, norm, env_state, n_rollout, act_map, scale_fn, log)
                stats, n_updates = ppo_epochs(ppo, rollout, norm, args, gen)
                online_grad_steps += n_updates
                global_step = env_state["step"]
                # means over every minibatch of the update (all epochs), brought to the host once per rollout
                for tag, value in zip(stats, torch.stack(list(stats.values())).tolist()):
                    log.scalar("online", f"losses/{tag}", value, global_step)
                log.scalar("online", "charts/SPS", global_step / (time.time() - start_time), global_step)
            if online_eval_due(args, rollout_start, global_step) or global_step == online_steps:
                evaluate_policy.record("online", global_step, actor, 0)  # after the update, at the rollout's end
        if args.save_model:  # the fine-tuned policy, with the frozen state statistics it acts on
            online_ckpt = dict(pi=actor.state_dict(), V=critic.state_dict(), state_mean=norm.mean, state_std=norm.std)
            torch.save(online_ckpt, os.path.join(run_dir, "online.pt"))
    summary = log.summary(
        online_env_steps=online_steps, online_gradient_steps=online_grad_steps, diagnostics=diagnostics, **extra
    )
    stage_times = {k: round(v, 1) for k, v in summary["stage_times"].items()}
    print(f"summary: offline {summary['offline']} | online {summary['online']} | stage times {stage_times}", flush=True)
    return summary


def offline_phase(
    agent: UniO4, args: Args, data, data_t, norm, termination, evaluate_policy, log, gen, rng, extra, diagnostics
):
    """Values, ensemble BC, the dynamics model, the AM-Q-gated improvement, the selection. Fills `extra` and
    `diagnostics` (summary.json) and returns (selected member, dynamics model); the final policies are
    agent.pi_ref's members."""
    pi, device = agent.pi, data_t["obs"].device
    with log.timer("values"):
        for row in fit_values(agent, data_t, args, gen):
            for tag in ("losses/v_loss", "losses/q_loss", "values/v_values", "values/SPS"):
                log.scalar("offline", tag, row[tag.split("/")[1]], row["step"])
    print(f"[offline/values] {args.value_steps} steps in {log.stage_times['values']:.0f}s", flush=True)

    with log.timer("bc"):
        for row in train_bc(agent, data_t, args, gen):
            log.scalar("offline", "losses/bc_loss", row["bc_loss"], row["step"])
            for m, v in enumerate(row["nll"]):  # minibatch NLL of each member: a collapsing member shows here
                log.scalar("offline", f"bc/nll_member{m}", v, row["step"])
            log.scalar("offline", "bc/SPS", row["SPS"], row["step"])
        bc_member_nll = bc_nll(pi, data_t).tolist()
    member_nll = [round(x, 3) for x in bc_member_nll]
    print(f"[offline/bc] {args.bc_steps} steps in {log.stage_times['bc']:.0f}s; member NLL {member_nll}", flush=True)

    def evaluate_members(step: int) -> tuple[list, list, list]:
        """Every member of π_k: returns, normalized scores, scores (normalized, else the mean return)."""
        rets, normalized, scores = [], [], []
        for i in range(pi.n):
            ret, score = evaluate_policy(agent.pi_ref, i)
            rets.append(ret)
            normalized.append(score)
            scores.append(score if score is not None else float(ret.mean()))
            log.scalar("offline", f"eval/member{i}_return", float(ret.mean()), step)
        return rets, normalized, scores

    with log.timer("dynamics"):
        obs_dim, act_dim = data_t["obs"].shape[1], data_t["act"].shape[1]
        dyn_sizes = (args.dyn_members, args.dyn_elites, args.dyn_hidden_dim, args.dyn_depth)
        dyn = DynamicsEnsemble(obs_dim, act_dim, *dyn_sizes).to(device)
        raw_obs = torch.as_tensor(data["observations"], dtype=torch.float32, device=device)
        raw_next_obs = torch.as_tensor(data["next_observations"], dtype=torch.float32, device=device)
        dyn_args = (raw_obs, data_t["act"], data_t["rew"], raw_next_obs, args, gen)
        extra["dynamics"], holdout_curve = train_dynamics(dyn, *dyn_args)
        for epoch, mse in enumerate(holdout_curve, 1):
            log.scalar("offline", "dynamics/holdout_mse", mse, epoch)
        log.scalar("offline", "dynamics/elite_holdout_mse", extra["dynamics"]["elite_holdout_mse"], len(holdout_curve))
        term_choice, term_reason = termination
        if term_choice == "learned":
            term_fn = LearnedTermination(obs_dim).to(device)
            loss = term_fn.fit(raw_next_obs, data_t["term"], args.term_steps, args.batch_size, gen)
            term_reason += f" (final BCE {loss:.4f})"
        else:
            term_fn = TERMINATION_RULES.get(term_choice, _term_never)
        extra["termination_rule"] = f"{term_choice}: {term_reason}"
        print(f"[offline/dynamics] termination: {extra['termination_rule']}", flush=True)

    # ---- multi-step improvement with the AM-Q gate ----
    with log.timer("improvement"):
        s0 = raw_obs[torch.as_tensor(rng.integers(0, raw_obs.shape[0], args.ope_num_states), device=device)]
        ope_seed = int(rng.integers(1 << 31))

        def score(policy):
            return am_q(policy, dyn, term_fn, agent.Q, norm, s0, args.ope_horizon, ope_seed)

        agent.pi_ref.load_state_dict(pi.state_dict())  # π_k ← the BC policy
        best = score(agent.pi_ref)
        bc_amq = best.clone()
        for i in range(pi.n):
            log.scalar("offline", f"ope/amq_member{i}", float(best[i]), 0)
        sel = int(best.argmax())
        bc_rets, bc_normalized, bc_scores = evaluate_members(0)
        evaluate_policy.record("offline", 0, agent.pi_ref, sel, done=(bc_rets[sel], bc_normalized[sel]))
        for i in range(pi.n):  # each BC member's real score and dataset NLL, side by side
            log.scalar("offline", f"bc/score_member{i}", bc_scores[i], args.bc_steps)
            log.scalar("offline", f"bc/final_nll_member{i}", bc_member_nll[i], args.bc_steps)
        extra.update(bc_score=bc_scores[sel], bc_member_scores=bc_scores, bc_member=sel)

        def evaluate_selected(step: int, best: torch.Tensor):
            evaluate_policy.record("offline", step, agent.pi_ref, int(best.argmax()))

        result = improve_offline(agent, data_t, score, best, args, gen, log, evaluate_selected)
        best, accepts = result["best"], result["accepts"]

    # ---- selection and the final offline evaluation ----
    with log.timer("offline_eval"):
        sel = int(best.argmax())
        if args.select_with_env:  # official: the top k by AM-Q, then the best real return
            top = torch.argsort(best, descending=True)[: args.select_top_k].tolist()
            steps_before = evaluate_policy.env_steps
            env_scores = [evaluate_policy(agent.pi_ref, m, seed_offset=20_000)[0].mean() for m in top]
            sel = top[int(np.argmax(env_scores))]
            extra["selection_env_steps"] = evaluate_policy.env_steps - steps_before  # a hidden online budget
            spent = extra["selection_env_steps"]
            print(f"[offline] --select-with-env spent {spent} real env steps choosing member {sel}")
        if args.offline_steps > 0 or sel != extra["bc_member"]:
            final_rets, final_normalized, final_scores = evaluate_members(args.offline_steps)
            evaluate_policy.record(
                "offline", args.offline_steps, agent.pi_ref, sel, (final_rets[sel], final_normalized[sel])
            )
        else:  # nothing changed since the evaluation after BC
            final_scores = bc_scores
    final_amq = best.tolist()  # AM-Q of each member's accepted reference policy, i.e. of the final policies
    for m in range(pi.n):
        log.scalar("offline", f"ope/final_amq_member{m}", final_amq[m], args.offline_steps)
        log.scalar("offline", f"ope/final_score_member{m}", final_scores[m], args.offline_steps)
    extra.update(
        improved_score=final_scores[sel],
        improved_member_scores=final_scores,
        selected_member=sel,
        bc_amq=bc_amq.tolist(),
        final_amq=final_amq,
        accepts=accepts.tolist(),
        offline_gradient_steps=args.offline_steps,
        value_gradient_steps=args.value_steps,
        bc_gradient_steps=args.bc_steps,
    )
    diagnostics.update(
        bc_member_scores=[float(x) for x in bc_scores],
        bc_member_nll=bc_member_nll,
        accepted_rounds=int(accepts.sum()),
        accepted_rounds_per_member=accepts.tolist(),
        accepted_round_steps=result["accept_steps"],
        ope_rounds=args.offline_steps // args.ope_freq + int(args.offline_steps % args.ope_freq > 0),
        final_amq_member=final_amq,
        final_score_member=[float(x) for x in final_scores],
        selected_member=sel,
        selected_final_amq=final_amq[sel],
        selected_final_score=float(final_scores[sel]),
    )
    summary = f"BC score {bc_scores} -> improved {final_scores}; selected member {sel}, accepts {accepts.tolist()}"
    print(f"[offline] {summary}", flush=True)
    return sel, dyn


def online_critic(V: Optional[ValueNet], scale_fn, data: dict, data_t: dict, args: Args, gen) -> ValueNet:
    """The critic fine-tuning starts from: the offline V̂ when rewards are unscaled; with scaled rewards a fresh V
    (--value-refit-hidden-dim wide) re-fit to MC returns of the scaled dataset rewards; a fresh V online-only."""
    obs_dim, device = data_t["obs"].shape[1], data_t["obs"].device
    if V is None:
        return ValueNet(obs_dim, args.v_hidden_dim, args.v_depth).to(device)
    if scale_fn is None:
        return V
    critic = ValueNet(obs_dim, args.value_refit_hidden_dim or args.v_hidden_dim, args.v_depth).to(device)
    returns = refit_targets(data["rewards"], data["episode_ends"], args, scale_fn)
    refit_value(critic, data_t["obs"], torch.as_tensor(returns, dtype=torch.float32, device=device), args, gen)
    return critic


# ==============================================================================================
# Per-file setup (not algorithm logic): flag checks, dataset transforms, offline checkpoints, paper configurations
# ==============================================================================================
NON_NEGATIVE = tuple(
    "offline_steps online_steps value_steps bc_steps term_steps value_refit_steps early_eval_freq early_eval_until "
    "clip_decay_steps".split()
)
POSITIVE = tuple(
    "eval_freq eval_episodes batch_size num_policies ope_freq ope_horizon ope_num_states clip_decay_horizon num_steps "
    "minibatch_size update_epochs dyn_members dyn_elites dyn_batch_size".split()
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def validate(args: Args):
    checks = [(getattr(args, k) < 0, f"{_flag(k)} must be >= 0, got {getattr(args, k)}") for k in NON_NEGATIVE]
    checks += [(getattr(args, k) <= 0, f"{_flag(k)} must be > 0, got {getattr(args, k)}") for k in POSITIVE]
    refit_width = args.value_refit_hidden_dim
    checks += [
        (
            args.dyn_elites > args.dyn_members,
            f"--dyn-elites ({args.dyn_elites}) cannot exceed --dyn-members ({args.dyn_members})",
        ),
        (not 0 < args.omega < 1, f"--omega must be in (0, 1), got {args.omega}"),
        (
            not 0 < args.gamma <= 1 or not 0 <= args.gae_lambda <= 1,
            "--gamma must be in (0, 1] and --gae-lambda in [0, 1]",
        ),
        (args.clip_ratio <= 0 or args.online_clip <= 0, "--clip-ratio and --online-clip must be > 0"),
        (args.phases == "online" and args.online_steps == 0, "--phases online needs --online-steps > 0"),
        (refit_width is not None and refit_width <= 0, f"--value-refit-hidden-dim must be > 0, got {refit_width}"),
        (args.select_top_k <= 0, f"--select-top-k must be > 0, got {args.select_top_k}"),
        (args.early_eval_freq > 0 and args.early_eval_until == 0, "--early-eval-freq > 0 needs --early-eval-until > 0"),
        (
            args.clip_decay_steps > args.clip_decay_horizon,
            f"--clip-decay-steps ({args.clip_decay_steps}) cannot exceed --clip-decay-horizon "
            f"({args.clip_decay_horizon}): ε would turn negative",
        ),
        (
            args.load_offline is not None and args.phases != "offline-online",
            f"--load-offline fine-tunes a saved offline phase: it needs --phases offline-online, got {args.phases}",
        ),
    ]
    check_flags(checks)


def state_statistics(obs: np.ndarray, state_norm: bool) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's state mean and std (a zero std replaced by 1); (0, 1) without --state-norm."""
    mean, std = obs.mean(0), obs.std(0)
    std = np.where(std < 1e-12, 1.0, std)
    if not state_norm:
        return np.zeros_like(mean), np.ones_like(std)
    return mean, std


def discounted_cumsum(x: np.ndarray, gamma: float, block: int = 256) -> np.ndarray:
    """y[t] = Σ_{k≥t} γ^(k−t)·x[k] over one episode, in float64, vectorised in blocks (a Python loop over
    len(x)/block blocks, not over steps); the block is short enough for γ^block not to underflow."""
    x = np.asarray(x, dtype=np.float64)
    if gamma < 1:
        block = int(max(1, min(block, -200 / math.log10(gamma))))
    pw = gamma ** np.arange(block, dtype=np.float64)
    y, carry = np.empty_like(x), 0.0
    for end in range(len(x), 0, -block):
        start = max(0, end - block)
        p = pw[: end - start]
        # within the block Σ_{k≥t} γ^(k−t) x_k, plus γ^(block end − t) × the return where the next block starts
        y[start:end] = np.cumsum((x[start:end] * p)[::-1])[::-1] / p + carry * gamma * p[::-1]
        carry = y[start]
    return y


def _episodes(episode_ends: np.ndarray) -> list[slice]:
    """Slices of the episodes: each ends at a True of `episode_ends` (or at the array's end)."""
    bounds = np.concatenate([[0], np.flatnonzero(episode_ends) + 1])
    if bounds[-1] != len(episode_ends):
        bounds = np.append(bounds, len(episode_ends))
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def mc_returns(rewards: np.ndarray, episode_ends: np.ndarray, gamma: float) -> np.ndarray:
    """Discounted return to each episode's end (resets at every episode end), vectorised per episode."""
    out = np.empty(len(rewards), dtype=np.float64)
    for ep in _episodes(episode_ends):
        out[ep] = discounted_cumsum(rewards[ep], gamma)
    return out.astype(np.asarray(rewards).dtype)


def select_termination(env_id: str, terminals: np.ndarray, choice: str = "auto") -> tuple[str, str]:
    """-> (rule name, reason). Raises DatasetError for `learned` without any terminal in the data; warns when an
    unknown env's data has no terminations (then the model never terminates)."""
    name = env_id.split("/")[-1].lower()
    if choice == "auto":
        for key in TERMINATION_RULES:
            if name.startswith(key):
                return key, f"rule for {env_id}"
        if name.startswith(NEVER_TERMINATES):
            return "never", f"{env_id} never terminates"
        if terminals.any():
            return "learned", f"no rule for {env_id}: classifier learned from {int(terminals.sum())} terminals"
        warn(
            f"no termination rule for env '{env_id}' and no terminal transition in the dataset: model rollouts "
            "of AM-Q will assume the env never terminates. If it can terminate, AM-Q is biased; pass "
            "--termination never to accept this and silence the warning."
        )
        return "never", f"no rule for {env_id} and no terminals in the data: assumed never terminates"
    if choice == "learned" and not terminals.any():
        raise DatasetError("--termination learned needs terminal transitions, and the dataset has none")
    return choice, f"--termination {choice}"


CHECKPOINT_FORMAT = "uni_o4-offline-v1"
# The flags the saved offline models were built or trained with: a run loading them must have the same values, so
# its summary.json describes the models it fine-tunes. Not checked: the seed (several seeds may fine-tune one
# offline phase), the evaluation and logging flags, and the online flags.
OFFLINE_FLAGS = tuple(
    "state_norm gamma batch_size max_grad_norm iql value_steps value_lr v_hidden_dim v_depth q_hidden_dim q_depth "
    "omega tau target_update_freq num_policies bc_steps bc_lr bc_hidden_dim bc_depth pi_activation bc_alpha bc_reg "
    "dyn_members dyn_elites dyn_hidden_dim dyn_depth dyn_lr dyn_batch_size dyn_patience dyn_max_epochs termination "
    "term_steps offline_steps pi_lr clip_ratio clip_decay_steps clip_decay_horizon ope_freq ope_horizon "
    "ope_num_states select_with_env select_top_k".split()
)


def checkpoint_meta(args: Args, env_id: str, obs_dim: int, act_dim: int) -> dict:
    flags = {k: getattr(args, k) for k in OFFLINE_FLAGS}
    shapes = dict(obs_dim=obs_dim, act_dim=act_dim)
    return dict(format=CHECKPOINT_FORMAT, env_id=env_id, dataset_id=args.dataset_id, **shapes, flags=flags)


def load_offline_checkpoint(path: str, expected: dict, state_stats: tuple[np.ndarray, np.ndarray]) -> dict:
    """Read a saved offline phase and check it against this run (`expected`: checkpoint_meta of this run,
    `state_stats`: its state mean and std); a DatasetError naming what differs otherwise."""
    if not os.path.isfile(path):
        raise DatasetError(f"--load-offline: no such file '{path}'")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        meta = ckpt["meta"]
    except Exception as e:
        raise DatasetError(
            f"--load-offline: '{path}' is not a Uni-O4 offline checkpoint ({type(e).__name__}: {e}); "
            "save one with --save-model"
        ) from e
    if meta.get("format") != expected["format"]:
        raise DatasetError(f"--load-offline: '{path}' has format {meta.get('format')!r}, expected {expected['format']}")
    for key in ("dataset_id", "env_id", "obs_dim", "act_dim"):
        if meta.get(key) != expected[key]:
            raise DatasetError(
                f"--load-offline: '{path}' was trained with {key} {meta.get(key)!r} but this run has "
                f"{expected[key]!r}; pass the dataset it was trained on"
            )
    for key, value in expected["flags"].items():
        saved = meta["flags"].get(key)
        if saved != value:
            raise DatasetError(
                f"--load-offline: '{path}' was trained with {_flag(key)} {saved!r} but this run has {_flag(key)} "
                f"{value!r}; pass the saved run's value (the models were built or trained with it)"
            )
    saved_stats = (ckpt["state_mean"].numpy(), ckpt["state_std"].numpy())
    if not all(np.allclose(saved, now, rtol=1e-5, atol=1e-6) for saved, now in zip(saved_stats, state_stats)):
        raise DatasetError(
            f"--load-offline: the state statistics of '{expected['dataset_id']}' differ from those '{path}' was "
            "trained with: the dataset was rebuilt since; train the offline phase again"
        )
    return ckpt


# Paper configurations: `python algorithms/uni_o4.py paper-hopper-medium-replay [--flag value ...]`.
# Uni-O4 on the paper's D4RL locomotion datasets (Table 1 and the fine-tuning curves: hopper, halfcheetah,
# walker2d × medium, medium-replay, medium-expert, -v2 in D4RL; no random datasets are reported; here our local
# D4RL-style rebuilds, see benchmark/make_datasets.py). Paths are in github.com/Lei-Kun/Uni-O4: the offline stage
# is main.py run by scripts/mujoco_loco/<task>.sh, the online stage ppo_finetune/main.py run by
# ppo_finetune/scripts/mujoco_loco/<task>.sh (tasks hm, hmr, hme, halfm, halfmr, halfme, wm, wmr, wme). Where a
# script sweeps a value, the config takes the first one listed (our choice: the script does not say which one the
# paper reports); where the repository holds two versions of a script, the one that runs (see each comment).
# ----------------------------------------------------------------------------------------------
_UNI_O4_LOCOMOTION = dict(
    # ---- budgets ----
    offline_steps=10_000,  # main.py: bppo_steps = 1e4 improvement steps per member
    online_steps=1_000_000,  # ppo_finetune/main.py: max_train_steps = 1e6 (the paper's 1M fine-tuning steps)
    # ppo_finetune/main.py: evaluate_freq = 5e3 env steps, of 3 episodes; offline, main.py evaluates every member
    # every 500 improvement steps (eval_freq, only logging) on 10 episodes (eval_episode). This file has one
    # frequency and one count for both phases: our choice is the online frequency and the offline count, the
    # paper's 10 evaluation episodes of Table 1 (online evaluations then cost about twice the training steps)
    eval_freq=5_000,
    eval_episodes=10,
    batch_size=512,  # main.py: v_batch_size = q_batch_size = bc_batch_size = bppo_batch_size = 512
    # ---- values (main.py, critic.py) ----
    gamma=0.99,  # transition_model/configs/gym/default.py: gamma = 0.99
    value_steps=2_000_000,  # main.py: v_steps = q_bc_steps = 2e6
    value_lr=1e-4,  # main.py: v_lr = q_lr = 1e-4
    v_hidden_dim=512,  # main.py: v_hidden_dim = 512
    v_depth=3,  # main.py: v_depth = 3
    q_hidden_dim=1024,  # main.py: q_hidden_dim = 1024
    q_depth=2,  # main.py: q_depth = 2
    omega=0.7,  # main.py: omega = 0.7 (IQL expectile, and the non-IQL advantage weight)
    tau=0.005,  # transition_model/configs/gym/default.py: tau = 0.005
    target_update_freq=2,  # main.py: target_update_freq = 2
    # ---- ensemble BC (main.py, BC_ensemble.py) ----
    num_policies=4,  # main.py: num_policies = 4
    bc_steps=400_000,  # main.py: bc_steps = 4e5
    bc_lr=1e-4,  # main.py: bc_lr = 1e-4
    bc_hidden_dim=256,  # main.py: bc_hidden_dim = 256, the first width of every script that sweeps {256, 512}
    bc_depth=3,  # main.py: bc_depth = 3
    pi_activation="relu",  # main.py: pi_activation_f = relu (tanh on halfcheetah medium, medium-replay: below)
    bc_alpha=0.1,  # main.py: alpha_bc = 0.1
    # official code, not the paper: BC_ensemble.py's default (kl_bc = data, kl_type = heuristic) detaches the max
    # over the other members, a no-op under Adam; the paper's Eq. 6 term is the file's default --bc-reg paper
    bc_reg="official",
    # ---- dynamics model for OPE (dynamics_eval.py's train_dynamics, arguments from
    # transition_model/configs/gym/default.py, the MOBILE code base's defaults) ----
    dyn_members=7,  # default.py: n_ensemble = 7
    dyn_elites=5,  # default.py: n_elites = 5
    dyn_hidden_dim=200,  # default.py: dynamics_hidden_dims = (200, 200, 200, 200)
    dyn_depth=4,
    dyn_lr=1e-3,  # default.py: dynamics_lr = 1e-3
    dyn_batch_size=256,  # transition_model's EnsembleDynamics.train: batch_size = 256
    dyn_patience=5,  # default.py: max_epochs_since_update = 5
    dyn_max_epochs=None,  # default.py: dynamics_max_epochs = None, early stopping only (walker2d-medium: below)
    termination="auto",  # termination_fns.py: the hopper, walker2d and halfcheetah rules, picked by env
    # ---- offline improvement and OPE (main.py, abppo.py, dynamics_eval.py) ----
    pi_lr=1e-4,  # main.py: bppo_lr = 1e-4, decayed linearly to 0 over bppo_steps (is_linear_decay = True)
    clip_ratio=0.25,  # main.py: clip_ratio = 0.25
    clip_decay_steps=200,  # main.py: is_clip_decay is switched off after step 200
    clip_decay_horizon=10_000,  # main.py: clip_ratio_now = clip_ratio·(1 − step/bppo_steps)
    ope_freq=100,  # main.py: eval_step = 100
    ope_horizon=1_000,  # main.py: rollout_step = 1000 (hme.sh sweeps {1000, 500})
    ope_num_states=512,  # main.py: rollout_batch_size = 512
    # official code, not the paper: ppo_finetune/ppo.py's load_pi_value takes the top 3 by last AM-Q, then the best
    # real return of main.py's last evaluation (the paper: chosen by OPE); these env steps are reported as
    # selection_env_steps in summary.json
    select_with_env=True,
    select_top_k=3,
    # ---- online PPO (ppo_finetune/main.py, ppo_finetune/ppo.py) ----
    num_steps=2048,  # ppo_finetune/main.py: batch_size = 2048
    minibatch_size=128,  # ppo_finetune/main.py: mini_batch_size = 128
    lr_critic=2e-4,  # ppo_finetune/main.py: lr_c = 2e-4, every script: --lr_c 2e-4
    gae_lambda=0.95,  # ppo_finetune/main.py: lamda = 0.95
    online_clip=0.05,  # ppo_finetune/main.py: epsilon = 0.05 (policy and value clip)
    ent_coef=0.01,  # ppo_finetune/main.py: entropy_coef = 0.01
    max_grad_norm=0.5,  # ppo_finetune/ppo.py and abppo.py: gradient-norm clip 0.5 (online and offline)
    reward_scale_factor=0.1,  # ppo_finetune/main.py: scale_strategy number -> r_scale = 0.1
    value_refit_steps=1_000_000,  # ppo_finetune/main.py: the V re-fit runs 1e6 steps (lr 1e-4, batch 512)
)
# What the scripts set per dataset, over the values above. lr_actor / update_epochs are the fine-tuning scripts'
# --lr_a / --K_epochs; reward_scale their --scale_strategy (none: no flag); value_refit_hidden_dim their
# --v_hidden_width 256 for the V re-fitted on scaled rewards (without scaling the offline V is loaded).
_UNI_O4_PER_DATASET = {
    "hopper-medium": dict(
        # scripts/mujoco_loco/hm.sh: --is_state_norm True --is_iql True
        state_norm=True,
        iql=True,
        # ppo_finetune/scripts/mujoco_loco/hm.sh: --scale_strategy number --v_hidden_width 256; --lr_a 2e-5
        # --K_epochs 10 in its version at commit 6e28311 (HEAD sweeps lr_a ∈ {1e-5, 2e-5}, K ∈ {5, 10})
        reward_scale="number",
        value_refit_hidden_dim=256,
        lr_actor=2e-5,
        update_epochs=10,
    ),
    "hopper-medium-replay": dict(
        # scripts/mujoco_loco/hmr.sh: --is_state_norm True --is_iql True
        state_norm=True,
        iql=True,
        # ppo_finetune/scripts/mujoco_loco/hmr.sh: --scale_strategy number --v_hidden_width 256; lr_a 2e-5 and
        # K 10 are in both versions' sweeps (6e28311: lr_a ∈ {2e-5, 1.5e-5}, K 10; HEAD: {1e-5, 2e-5} × {5, 10})
        reward_scale="number",
        value_refit_hidden_dim=256,
        lr_actor=2e-5,
        update_epochs=10,
    ),
    "hopper-medium-expert": dict(
        # scripts/mujoco_loco/hme.sh: --is_state_norm True and no --is_iql, so the non-IQL path (MC V, SARSA Q,
        # ω-weighted advantages); the script passes --env hopper-medium-replay-v2, which we read as a slip (its
        # name and its fine-tuning script are hopper-medium-expert); it sweeps width {256, 512}, rollout {1000, 500}
        state_norm=True,
        iql=False,
        # ppo_finetune/scripts/mujoco_loco/hme.sh: --scale_strategy number --v_hidden_width 256 --K_epochs 5,
        # lr_a ∈ {6e-6, 1e-6}: the first
        reward_scale="number",
        value_refit_hidden_dim=256,
        lr_actor=6e-6,
        update_epochs=5,
    ),
    "halfcheetah-medium": dict(
        # scripts/mujoco_loco/halfm.sh: --is_state_norm True --is_iql True --pi_activation_f tanh
        state_norm=True,
        iql=True,
        pi_activation="tanh",
        # ppo_finetune/scripts/mujoco_loco/halfm.sh: --lr_a 3e-5 --K_epochs 30 --scale_strategy dynamic
        # --v_hidden_width 256
        reward_scale="dynamic",
        value_refit_hidden_dim=256,
        lr_actor=3e-5,
        update_epochs=30,
    ),
    "halfcheetah-medium-replay": dict(
        # scripts/mujoco_loco/halfmr.sh: --is_iql True --pi_activation_f tanh, no --is_state_norm (off)
        state_norm=False,
        iql=True,
        pi_activation="tanh",
        # ppo_finetune/scripts/mujoco_loco/halfmr.sh: --lr_a 3e-5 --K_epochs 20 --v_hidden_width 256,
        # scale_strategy ∈ {number, dynamic}: the first
        reward_scale="number",
        value_refit_hidden_dim=256,
        lr_actor=3e-5,
        update_epochs=20,
    ),
    "halfcheetah-medium-expert": dict(
        # scripts/mujoco_loco/halfme.sh: --is_state_norm True and no --is_iql (the non-IQL path)
        state_norm=True,
        iql=False,
        # ppo_finetune/scripts/mujoco_loco/halfme.sh: --lr_a 2e-5 --K_epochs 10 --scale_strategy dynamic
        # --v_hidden_width 256
        reward_scale="dynamic",
        value_refit_hidden_dim=256,
        lr_actor=2e-5,
        update_epochs=10,
    ),
    "walker2d-medium": dict(
        # scripts/mujoco_loco/wm.sh: --is_state_norm True --is_iql True
        state_norm=True,
        iql=True,
        dyn_max_epochs=30,  # transition_model/configs/gym/walker2d_medium.py: dynamics_max_epochs = 30
        # ppo_finetune/scripts/mujoco_loco/wm.sh, no --scale_strategy (the offline V is loaded): --lr_a 3e-5
        # --K_epochs 30 in its version at commit 6e28311 (HEAD sweeps lr_a ∈ {1e-5, 3e-5}, K ∈ {20, 30}, and is
        # invalid bash: its inner `for` has no `do`)
        reward_scale="none",
        lr_actor=3e-5,
        update_epochs=30,
    ),
    "walker2d-medium-replay": dict(
        # scripts/mujoco_loco/wmr.sh: --is_state_norm True --is_iql True --v_steps 500000 (q_bc_steps, also 5e5,
        # is unused on the IQL path)
        state_norm=True,
        iql=True,
        value_steps=500_000,
        # ppo_finetune/scripts/mujoco_loco/wmr.sh, no --scale_strategy: --lr_a 3e-5 --K_epochs 30 at commit
        # 6e28311 (HEAD: the sweep of wm.sh, invalid bash)
        reward_scale="none",
        lr_actor=3e-5,
        update_epochs=30,
    ),
    "walker2d-medium-expert": dict(
        # scripts/mujoco_loco/wme.sh: --is_state_norm True --is_iql True
        state_norm=True,
        iql=True,
        # ppo_finetune/scripts/mujoco_loco/wme.sh, no --scale_strategy: --lr_a 2e-5 --K_epochs 30 at commit
        # 6e28311, the version that runs (HEAD: the sweep lr_a ∈ {1e-5, 3e-5}, K ∈ {20, 30} of wm.sh, invalid bash)
        reward_scale="none",
        lr_actor=2e-5,
        update_epochs=30,
    ),
}
PAPER_CONFIGS: dict[str, dict] = {
    f"paper-{task}": {"dataset_id": "o2o/{}/{}-v0".format(*task.split("-", 1)), **_UNI_O4_LOCOMOTION, **cfg}
    for task, cfg in _UNI_O4_PER_DATASET.items()
}


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
