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
Known behaviour: AM-Q scores with the same Q̂ that drives the improvement, so the gate cannot catch Q̂'s errors.
On the pendulum datasets, 2000 value steps at width 64 gave a Q̂ whose improvement lowered the real score by ~15
points while AM-Q accepted it; 5000 steps at width 128 (γ 0.95) raised it by +13 to +27. Budget the value stage.
Symbols: τ = IQL expectile ω (`omega`), α = disagreement weight (Eq. 6), ε = PPO clip, π_k = reference policy.
"""

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
    member's accepted policy π_k, V̂, Q̂, the dynamics model, the selected member, the state statistics) and
    `online.pt` after fine-tuning (the actor, the critic, the state statistics)"""
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


# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Data: Minari dataset -> transitions. Errors raise DatasetError; __main__ turns them into exit 2.
# ----------------------------------------------------------------------------------------------
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


def make_eval_env(dataset: minari.MinariDataset) -> gym.Env:
    """The dataset's evaluation environment, checked against the dataset's spaces."""
    try:
        env = dataset.recover_environment(eval_env=True)
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


# ----------------------------------------------------------------------------------------------
# Evaluation, scores, logging, summary
# ----------------------------------------------------------------------------------------------
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
    """TensorBoard writer + evaluation record. Tags are `{phase}/{CleanRL tag}`: `offline/*` curves are
    indexed by their stage's own step counter, `online/*` curves by environment steps."""

    def __init__(self, args, run_dir: str):
        self.run_dir, self.args, self.start = run_dir, args, time.time()
        self.writer = SummaryWriter(run_dir)
        self.writer.add_text(
            "hyperparameters",
            "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()),
        )
        self.evals: list[dict] = []

    def scalar(self, phase: str, tag: str, value: float, step: int):
        self.writer.add_scalar(f"{phase}/{tag}", value, step)

    def eval(self, phase: str, step: int, returns: np.ndarray, score: Optional[float]):
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
            )
        )
        print(
            f"[{phase}] step {step}: return {returns.mean():.1f} ± {returns.std():.1f}"
            + (f" | normalized score {score:.1f}" if score is not None else ""),
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
            **extra,
        )
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
    print(f"warning: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Networks. Every ensemble keeps its members' weights stacked as [N, in, out] (one baddbmm per layer).
# ----------------------------------------------------------------------------------------------
class VectorizedLinear(nn.Module):
    """N independent linear layers. x: [N, B, in] (or [B, in], shared by all members) -> [N, B, out]."""

    def __init__(self, n: int, in_dim: int, out_dim: int, orthogonal_gain: Optional[float] = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(n, 1, out_dim))
        for i in range(n):  # init only, not a hot path
            if orthogonal_gain is None:  # nn.Linear's default init
                w = torch.empty(out_dim, in_dim)
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
                self.weight.data[i] = w.T
                bound = 1 / math.sqrt(in_dim)
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
        self.layers = nn.ModuleList(VectorizedLinear(n, a, b, orthogonal_gain) for a, b in zip(dims[:-1], dims[1:]))
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

    def forward(self, s):
        mu, t = torch.tanh(self.net(s)).chunk(2, -1)
        return mu, -5.0 + 2.5 * (t + 1.0)

    def log_prob(self, s, a):
        mu, log_std = self(s)
        return gaussian_log_prob(a, mu, log_std)

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

    def forward(self, s, a):
        return self.net(torch.cat([s, a], -1)).squeeze(-1)  # [heads, B]


def mlp(in_dim, hidden, depth, out_dim=1) -> nn.Sequential:
    dims = [in_dim] + [hidden] * depth
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(dims[-1], out_dim))


class ValueNet(nn.Module):
    def __init__(self, obs_dim, hidden=512, depth=3):
        super().__init__()
        self.net = mlp(obs_dim, hidden, depth)

    def forward(self, s):
        return self.net(s).squeeze(-1)


# ----------------------------------------------------------------------------------------------
# Dynamics ensemble for OPE (official transition_model/, from OfflineRL-Kit): Gaussian over [Δs, r],
# soft-bounded log-variance, elites
# ----------------------------------------------------------------------------------------------
class DynamicsEnsemble(nn.Module):
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
    def step(self, s: torch.Tensor, a: torch.Tensor, gen: Optional[torch.Generator] = None):
        """One model step on raw states: every elite predicts, one random elite per sample is used."""
        mean, logvar = self(torch.cat([s, a], -1), self.elites)
        noise = torch.randn(mean.shape, generator=gen, device=s.device)
        sample = mean + noise * (0.5 * logvar).exp()
        pick = torch.randint(self.n_elites, (s.shape[0],), generator=gen, device=s.device)
        out = sample[pick, torch.arange(s.shape[0], device=s.device)]
        return s + out[:, :-1], out[:, -1]


def dynamics_step(model: DynamicsEnsemble, opt, x, y) -> torch.Tensor:
    """One step on per-member minibatches x [M, B, in], y [M, B, out]: Gaussian NLL + weight decay + the
    log-variance bound penalty. Returns the loss, detached."""
    mean, logvar = model(x)
    inv_var = (-logvar).exp()
    nll = (((mean - y) ** 2) * inv_var).mean((1, 2)).sum() + logvar.mean((1, 2)).sum()
    loss = nll + model.weight_decay() + 0.01 * (model.max_logvar.sum() - model.min_logvar.sum())
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()


def train_dynamics(
    model: DynamicsEnsemble, s, a, r, s2, args: Args, log: Optional["RunLogger"], gen: torch.Generator
) -> dict:
    """Bootstrap per member, holdout min(20%, 1000), stop after `dyn_patience` epochs without a >1% holdout gain
    of any member, keep each member's best weights, elites = lowest holdout MSE. `gen`: a torch Generator on the
    data's device (all index draws stay on the device)."""
    device = s.device
    x, y = torch.cat([s, a], -1), torch.cat([s2 - s, r[:, None]], -1)
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
    epoch, since_update = 0, 0
    while True:
        idx = boot[:, torch.randperm(len(train), generator=gen, device=device)]
        for b in range(0, len(train), args.dyn_batch_size):
            bi = idx[:, b : b + args.dyn_batch_size]
            dynamics_step(model, opt, x[bi], y[bi])
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
        if log is not None:
            log.scalar("offline", "dynamics/holdout_mse", float(hold_mse.mean()), epoch)
        if since_update >= args.dyn_patience or (args.dyn_max_epochs is not None and epoch >= args.dyn_max_epochs):
            break
    model.net.load_state_dict(best_state)
    model.elites.copy_(torch.argsort(best)[: model.n_elites])
    elite_mse = float(best[model.elites].mean())
    if log is not None:
        log.scalar("offline", "dynamics/elite_holdout_mse", elite_mse, epoch)
    print(f"[offline/dynamics] {epoch} epochs, elite holdout MSE {elite_mse:.5f}", flush=True)
    return dict(epochs=epoch, elite_holdout_mse=elite_mse, holdout_mse=best.tolist())


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

    def fit(self, s2, term, steps, batch_size, gen: torch.Generator):
        self.mu.copy_(s2.mean(0))
        self.std.copy_(s2.std(0).clamp_min(1e-6))
        pos_weight = ((1 - term).sum() / term.sum().clamp_min(1)).clamp(1, 100)
        opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        for _ in range(steps):
            i = torch.randint(len(s2), (batch_size,), generator=gen, device=s2.device)
            loss = F.binary_cross_entropy_with_logits(self.forward(s2[i]), term[i], pos_weight=pos_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss)


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


# ----------------------------------------------------------------------------------------------
# Update steps
# ----------------------------------------------------------------------------------------------
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


def value_step(V, Q, Q_tgt, v_opt, q_opt, batch: dict, args: Args, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One V and one Q update (IQL, or MC-V + SARSA-Q with --no-iql) and the Polyak target update every
    `target_update_freq` steps. Returns (v_loss, q_loss), detached."""
    s, a, r, s2, d = batch["s"], batch["a"], batch["r"], batch["s2"], batch["term"]
    if args.iql:
        with torch.no_grad():
            tq = Q_tgt(s, a).min(0).values
        u = tq - V(s)
        v_loss = (torch.where(u > 0, args.omega, 1 - args.omega) * u**2).mean()
        with torch.no_grad():
            target = r + args.gamma * (1 - d) * V(s2)
    else:
        v_loss = ((V(s) - batch["mc"]) ** 2).mean()
        with torch.no_grad():
            no_boot = torch.maximum(d, batch["ends"])  # no a' after an episode's last transition
            target = r + args.gamma * (1 - no_boot) * Q_tgt(s2, batch["a2"]).min(0).values
    v_opt.zero_grad()
    v_loss.backward()
    v_opt.step()
    q_loss = ((Q(s, a) - target) ** 2).mean(1).sum()
    q_opt.zero_grad()
    q_loss.backward()
    q_opt.step()
    if step % args.target_update_freq == 0:
        with torch.no_grad():
            for p, pt in zip(Q.parameters(), Q_tgt.parameters()):
                pt.lerp_(p, args.tau)
    return v_loss.detach(), q_loss.detach()


def fit_values(D: dict, args: Args, device, log: Optional[RunLogger], gen: torch.Generator) -> tuple[ValueNet, DoubleQ]:
    """IQL (expectile V towards target min-Q at dataset actions; Q towards r + γ(1−d)V(s')) or, with --no-iql,
    MC-regression V and a single SARSA Q (the official `QSarsaLearner` is one network). Polyak target update every
    `target_update_freq` steps. Minibatch indices are drawn on the device from `gen`."""
    obs_dim, act_dim = D["s"].shape[1], D["a"].shape[1]
    V = ValueNet(obs_dim, args.v_hidden_dim, args.v_depth).to(device)
    Q = DoubleQ(obs_dim, act_dim, args.q_hidden_dim, args.q_depth, heads=2 if args.iql else 1).to(device)
    Q_tgt = copy.deepcopy(Q).requires_grad_(False)
    v_opt = torch.optim.Adam(V.parameters(), lr=args.value_lr)
    q_opt = torch.optim.Adam(Q.parameters(), lr=args.value_lr)
    n = D["s"].shape[0]
    keys = ("s", "a", "r", "s2", "term") + (() if args.iql else ("ends", "a2", "mc"))
    t0 = time.time()
    for step in range(1, args.value_steps + 1):
        i = torch.randint(n, (args.batch_size,), generator=gen, device=device)
        batch = {k: D[k][i] for k in keys}
        v_loss, q_loss = value_step(V, Q, Q_tgt, v_opt, q_opt, batch, args, step)
        if log is not None and (step % 1000 == 0 or step == args.value_steps):
            log.scalar("offline", "losses/v_loss", v_loss.item(), step)
            log.scalar("offline", "losses/q_loss", q_loss.item(), step)
            with torch.no_grad():
                log.scalar("offline", "values/v_values", V(batch["s"]).mean().item(), step)
            log.scalar("offline", "values/SPS", step / (time.time() - t0), step)
            if step % 5000 == 0:
                print(f"[offline/values] step {step}: v_loss {v_loss.item():.4f} q_loss {q_loss.item():.4f}")
    return V, Q


def bc_loss(pi: GaussianPolicyEnsemble, s, a, alpha: float, reg: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over members of −J(π_i), J of Eq. 6: log π_i(a|s) + α·(log π_i(a|s) − log max_j π_j(a|s)) at dataset
    pairs, j over the whole ensemble (see the header). Returns (loss, per-member NLL [N], detached)."""
    mu, log_std = pi(s)  # [N, B, A]
    logp = gaussian_log_prob(a, mu, log_std)  # [N, B]
    loss = -logp.mean(1)
    if pi.n > 1 and reg != "none" and alpha != 0:
        eye = torch.eye(pi.n, dtype=torch.bool, device=s.device)[:, :, None]
        others = logp.detach().unsqueeze(0).expand(pi.n, -1, -1).masked_fill(eye, -float("inf"))  # [i, j, B]
        best_other = others.max(1).values  # max_{j≠i} log π_j(a|s), the other members held fixed
        if reg == "official":  # max over j ≠ i, detached: the gradient is −(1+α)∇log π_i, a no-op under Adam
            loss = loss - alpha * (logp - best_other).mean(1)
        else:  # the paper's max includes π_i: log π_i − max(log π_i, best_other) = −relu(best_other − log π_i) ≤ 0
            loss = loss + alpha * F.relu(best_other - logp).mean(1)
    return loss.sum(), -logp.detach().mean(1)


def bc_step(pi: GaussianPolicyEnsemble, opt, s, a, alpha: float, reg: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One ensemble-BC update. Returns (loss summed over members, per-member NLL [N]), detached."""
    loss, nll = bc_loss(pi, s, a, alpha, reg)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach(), nll


@torch.no_grad()
def bc_nll(pi: GaussianPolicyEnsemble, D: dict, max_samples: int = 10_000, chunk: int = 2_048) -> torch.Tensor:
    """Per-member mean −log π_i(a|s) over (the first `max_samples` of) the dataset's pairs, a tensor [N]."""
    n = min(max_samples, D["s"].shape[0])
    total = torch.zeros(pi.n, device=D["s"].device)
    for b in range(0, n, chunk):
        total -= pi.log_prob(D["s"][b : min(n, b + chunk)], D["a"][b : min(n, b + chunk)]).sum(1)
    return total / n


def train_bc(pi: GaussianPolicyEnsemble, D: dict, args: Args, log: Optional[RunLogger], gen: torch.Generator) -> None:
    """All members see the same minibatch; one Adam over the stacked weights equals one Adam per member
    because the members' losses are summed, not averaged. Minibatch indices are drawn on the device from `gen`."""
    opt = torch.optim.Adam(pi.parameters(), lr=args.bc_lr)
    n = D["s"].shape[0]
    t0 = time.time()
    for step in range(1, args.bc_steps + 1):
        i = torch.randint(n, (args.batch_size,), generator=gen, device=D["s"].device)
        loss, nll = bc_step(pi, opt, D["s"][i], D["a"][i], args.bc_alpha, args.bc_reg)
        if log is not None and (step % 1000 == 0 or step == args.bc_steps):
            log.scalar("offline", "losses/bc_loss", loss.item() / pi.n, step)
            for m, v in enumerate(nll.tolist()):  # minibatch NLL of each member: a collapsing member shows here
                log.scalar("offline", f"bc/nll_member{m}", v, step)
            log.scalar("offline", "bc/SPS", step / (time.time() - t0), step)


def clip_grad_norm_per_member(params, max_norm: float):
    """Gradient-norm clipping applied to each member separately (leading dim = member)."""
    params = [p for p in params if p.grad is not None]
    sq = sum(p.grad.pow(2).flatten(1).sum(1) for p in params)
    scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(scale.view(-1, *([1] * (p.dim() - 1))))


def offline_ppo_loss(pi, pi_ref, Q: DoubleQ, V: ValueNet, s, clip: float, iql: bool, omega: float):
    """PPO-clip on dataset states with actions from π_k (reference) and A = min Q̂ − V̂ z-scored per member."""
    N, B = pi.n, s.shape[0]
    with torch.no_grad():
        mu_k, ls_k = pi_ref(s)
        a = mu_k + ls_k.exp() * torch.randn_like(mu_k)  # [N, B, A]
        logp_k = gaussian_log_prob(a, mu_k, ls_k)
        s_rep = s.unsqueeze(0).expand(N, -1, -1).reshape(N * B, -1)
        # Q̂ at the action the env would execute (clamped): Q̂ never saw actions outside [−1, 1]
        adv = (Q(s_rep, a.clamp(-1, 1).reshape(N * B, -1)).min(0).values - V(s_rep)).view(N, B)
        adv = (adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-10)
        if not iql:
            adv = torch.where(adv > 0, omega * adv, (1 - omega) * adv)
    ratio = (pi.log_prob(s, a) - logp_k).exp()
    loss = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean(1)
    return loss.sum(), ratio


def clip_schedule(step: int, args: Args) -> float:
    """ε at improvement step `step` (1-based): linear decay for `clip_decay_steps` steps along the line that
    reaches 0 at the fixed `clip_decay_horizon` (official: 1e4 steps), then frozen. It does not depend on
    --offline-steps: with the defaults ε freezes at 0.245 whatever the budget."""
    return args.clip_ratio * (1 - min(step - 1, args.clip_decay_steps) / args.clip_decay_horizon)


def offline_ppo_step(pi, pi_ref, Q, V, opt, s, clip: float, args: Args) -> tuple[torch.Tensor, torch.Tensor]:
    """One offline PPO update of every member, per-member gradient-norm clipping. Returns (loss summed over
    members, mean |ρ − 1|), detached."""
    loss, ratio = offline_ppo_loss(pi, pi_ref, Q, V, s, clip, args.iql, args.omega)
    opt.zero_grad()
    loss.backward()
    clip_grad_norm_per_member(pi.parameters(), args.max_grad_norm)
    opt.step()
    return loss.detach(), (ratio.detach() - 1).abs().mean()


class StateNorm:
    def __init__(self, mean: np.ndarray, std: np.ndarray, device):
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device)

    def __call__(self, s):
        return (s - self.mean) / self.std


@torch.no_grad()
def am_q(pi, dyn, term_fn, Q, norm: StateNorm, s0_raw, horizon: int, seed: int) -> torch.Tensor:
    """AM-Q per member: mean min(Q̂1, Q̂2) over the (non-terminated) pairs visited by the deterministic policy
    in the learned model, from raw start states s0_raw. Same seed -> same model noise (common random numbers)."""
    N, B = pi.n, s0_raw.shape[0]
    gen = torch.Generator(device=s0_raw.device).manual_seed(seed)
    s = s0_raw.unsqueeze(0).expand(N, -1, -1).reshape(N * B, -1)
    alive = torch.ones(N * B, device=s.device)
    total, count = torch.zeros_like(alive), torch.zeros_like(alive)
    for _ in range(horizon):
        sn = norm(s)
        a = pi(sn.view(N, B, -1))[0].clamp(-1, 1).reshape(N * B, -1)
        total += Q(sn, a).min(0).values * alive
        count += alive
        s, _ = dyn.step(s, a, gen)
        bad = ~torch.isfinite(s).all(-1)
        s = torch.where(bad[:, None], torch.zeros_like(s), s)
        alive = alive * (~(term_fn(s) | bad)).float()
        # no early exit once every rollout has terminated: testing that would synchronise the device every model
        # step; terminated rollouts add nothing to `total` or `count`, so the result is the same
    return total.view(N, B).sum(1) / count.view(N, B).sum(1)


def accept_rule(scores: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """π_k ← π only on a strictly better AM-Q than the best so far."""
    return scores > best


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


def refit_targets(rewards: np.ndarray, episode_ends: np.ndarray, args: Args, scale_fn) -> np.ndarray:
    """MC returns of the scaled dataset rewards, the targets of the online V re-fit: rewards × reward_scale_factor
    (`number`), or ÷ the std of a warmed-up RunningReturnStd `scale_fn` (`dynamic`): the scale the online rewards
    start with, not that of fresh statistics, which are unsettled for the first rewards."""
    if args.reward_scale == "number":
        r_sc = rewards * args.reward_scale_factor
    else:
        r_sc = rewards / (scale_fn.std + 1e-8)
    return mc_returns(r_sc.astype(np.float32), episode_ends, args.gamma)


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


def online_ppo_step(actor, critic, a_opt, c_opt, mb: dict, args: Args) -> torch.Tensor:
    """One online PPO minibatch update of the actor (clip, entropy bonus) and the critic (value clipping).
    Returns the detached tensor [policy loss, value loss, entropy, clip fraction]."""
    mu, ls = actor(mb["s"])
    logp = gaussian_log_prob(mb["a"], mu[0], ls[0])
    ratio = (logp - mb["logp"]).exp()
    entropy = (ls[0] + 0.5 * math.log(2 * math.pi * math.e)).sum(-1).mean()
    adv = mb["adv"]
    pg = -torch.min(ratio * adv, ratio.clamp(1 - args.online_clip, 1 + args.online_clip) * adv).mean()
    a_loss = pg - args.ent_coef * entropy
    a_opt.zero_grad()
    a_loss.backward()
    nn.utils.clip_grad_norm_(actor.parameters(), args.max_grad_norm)
    a_opt.step()
    v = critic(mb["s"])
    v_clip = mb["v_old"] + (v - mb["v_old"]).clamp(-args.online_clip, args.online_clip)
    v_loss = torch.max((v - mb["ret"]) ** 2, (v_clip - mb["ret"]) ** 2).mean()
    c_opt.zero_grad()
    v_loss.backward()
    nn.utils.clip_grad_norm_(critic.parameters(), args.max_grad_norm)
    c_opt.step()
    clipfrac = ((ratio.detach() - 1).abs() > args.online_clip).float().mean()
    return torch.stack([pg.detach(), v_loss.detach(), entropy.detach(), clipfrac])


# ----------------------------------------------------------------------------------------------
# Evaluation helpers
# ----------------------------------------------------------------------------------------------
def policy_actor(pi: GaussianPolicyEnsemble, member: int, norm: StateNorm, a_center, a_half, device):
    def act(obs):
        with torch.no_grad():
            s = norm(torch.as_tensor(obs, dtype=torch.float32, device=device).reshape(1, -1))
            mu = pi(s)[0][member, 0].clamp(-1, 1).cpu().numpy()
        return a_center + a_half * mu

    return act


def eval_member(env, pi, member, norm, a_center, a_half, device, episodes, seed, dataset):
    returns = evaluate(env, policy_actor(pi, member, norm, a_center, a_half, device), episodes, seed)
    return returns, normalized_score(dataset, float(returns.mean()))


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def validate(args: Args):
    for k in ("offline_steps", "online_steps", "value_steps", "bc_steps", "term_steps", "value_refit_steps",
              "early_eval_freq", "early_eval_until", "clip_decay_steps"):  # fmt: skip
        if getattr(args, k) < 0:
            fail(f"--{k.replace('_', '-')} must be >= 0, got {getattr(args, k)}")
    for k in ("eval_freq", "eval_episodes", "batch_size", "num_policies", "ope_freq", "ope_horizon", "ope_num_states",
              "clip_decay_horizon"):  # fmt: skip
        if getattr(args, k) <= 0:
            fail(f"--{k.replace('_', '-')} must be > 0, got {getattr(args, k)}")
    for k in ("num_steps", "minibatch_size", "update_epochs", "dyn_members", "dyn_elites", "dyn_batch_size"):
        if getattr(args, k) <= 0:
            fail(f"--{k.replace('_', '-')} must be > 0, got {getattr(args, k)}")
    if args.dyn_elites > args.dyn_members:
        fail(f"--dyn-elites ({args.dyn_elites}) cannot exceed --dyn-members ({args.dyn_members})")
    if not 0 < args.omega < 1:
        fail(f"--omega must be in (0, 1), got {args.omega}")
    if not 0 < args.gamma <= 1 or not 0 <= args.gae_lambda <= 1:
        fail("--gamma must be in (0, 1] and --gae-lambda in [0, 1]")
    if args.clip_ratio <= 0 or args.online_clip <= 0:
        fail("--clip-ratio and --online-clip must be > 0")
    if args.phases == "online" and args.online_steps == 0:
        fail("--phases online needs --online-steps > 0")
    if args.value_refit_hidden_dim is not None and args.value_refit_hidden_dim <= 0:
        fail(f"--value-refit-hidden-dim must be > 0, got {args.value_refit_hidden_dim}")
    if args.select_top_k <= 0:
        fail(f"--select-top-k must be > 0, got {args.select_top_k}")
    if args.early_eval_freq > 0 and args.early_eval_until == 0:
        fail("--early-eval-freq > 0 needs --early-eval-until > 0")
    if args.clip_decay_steps > args.clip_decay_horizon:
        fail(f"--clip-decay-steps ({args.clip_decay_steps}) cannot exceed --clip-decay-horizon "
             f"({args.clip_decay_horizon}): ε would turn negative")  # fmt: skip


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


def main(args: Args):
    validate(args)
    try:
        dataset = load_minari_dataset(args.dataset_id, args.download)
        data = dataset_to_transitions(dataset)
        eval_env = make_eval_env(dataset)
        space = eval_env.action_space
        if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            raise DatasetError(f"action space {space} is unbounded; Uni-O4's tanh-mean policy needs bounds")
        env_id = dataset.env_spec.id if dataset.env_spec is not None else ""
        term_choice = args.termination
        if args.phases != "online":
            term_choice, term_reason = select_termination(env_id, data["terminals"], args.termination)
    except DatasetError as e:
        fail(str(e))
    run_name = f"{args.dataset_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = args.run_dir or os.path.join("runs", run_name)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=vars(args), name=run_name, save_code=True)  # fmt: skip
    seed_everything(args.seed, args.torch_deterministic)
    rng = np.random.default_rng(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    log = RunLogger(args, run_dir)

    a_center = ((space.high + space.low) / 2).astype(np.float32)
    a_half = ((space.high - space.low) / 2).astype(np.float32)
    obs_dim, act_dim = data["observations"].shape[1], data["actions"].shape[1]
    s_mean, s_std = data["observations"].mean(0), data["observations"].std(0)
    s_std = np.where(s_std < 1e-12, 1.0, s_std)
    if not args.state_norm:
        s_mean, s_std = np.zeros_like(s_mean), np.ones_like(s_std)
    norm = StateNorm(s_mean, s_std, device)

    def T(x):
        return torch.as_tensor(x, dtype=torch.float32, device=device)

    a_norm = np.clip((data["actions"] - a_center) / a_half, -1, 1)
    a_next = np.concatenate([a_norm[1:], a_norm[-1:]])  # a' (SARSA); unused at episode ends
    D = dict(
        s=norm(T(data["observations"])),
        a=T(a_norm),
        r=T(data["rewards"]),
        s2=norm(T(data["next_observations"])),
        term=T(data["terminals"]),
        ends=T(data["episode_ends"]),
        a2=T(a_next),
        mc=T(mc_returns(data["rewards"], data["episode_ends"], args.gamma)),
    )
    stage_times: dict[str, float] = {}
    extra: dict = dict(termination_rule=None, selection_env_steps=0, offline_gradient_steps=0)
    diagnostics: dict = {}  # summary.json["diagnostics"]: plain floats and lists
    gen = torch.Generator(device=device).manual_seed(args.seed)  # minibatch indices are drawn on the device
    V = None
    pi_online = GaussianPolicyEnsemble(1, obs_dim, act_dim, args.bc_hidden_dim, args.bc_depth, args.pi_activation)
    pi_online = pi_online.to(device)

    # ================================ offline ================================
    if args.phases != "online":
        t = time.time()
        V, Q = fit_values(D, args, device, log, gen)
        stage_times["values"] = time.time() - t
        print(f"[offline/values] {args.value_steps} steps in {stage_times['values']:.0f}s", flush=True)

        t = time.time()
        pi = GaussianPolicyEnsemble(
            args.num_policies, obs_dim, act_dim, args.bc_hidden_dim, args.bc_depth, args.pi_activation
        ).to(device)
        train_bc(pi, D, args, log, gen)
        bc_member_nll = bc_nll(pi, D).tolist()
        stage_times["bc"] = time.time() - t
        print(f"[offline/bc] {args.bc_steps} steps in {stage_times['bc']:.0f}s; member NLL "
              f"{[round(x, 3) for x in bc_member_nll]}", flush=True)  # fmt: skip

        def eval_all(tag_step: int, policy) -> tuple[list, list]:
            rets, scores = [], []
            for i in range(policy.n):
                ret, sc = eval_member(eval_env, policy, i, norm, a_center, a_half, device,
                                      args.eval_episodes, args.seed + 10_000, dataset)  # fmt: skip
                rets.append(ret)
                scores.append(sc if sc is not None else float(ret.mean()))
                log.scalar("offline", f"eval/member{i}_return", float(ret.mean()), tag_step)
            return rets, scores

        t = time.time()
        dyn = DynamicsEnsemble(obs_dim, act_dim, args.dyn_members, args.dyn_elites, args.dyn_hidden_dim,
                               args.dyn_depth).to(device)  # fmt: skip
        raw_s, raw_s2 = T(data["observations"]), T(data["next_observations"])
        extra["dynamics"] = train_dynamics(dyn, raw_s, D["a"], D["r"], raw_s2, args, log, gen)
        if term_choice == "learned":
            term_fn = LearnedTermination(obs_dim).to(device)
            loss = term_fn.fit(raw_s2, D["term"], args.term_steps, args.batch_size, gen)
            term_reason += f" (final BCE {loss:.4f})"
        else:
            term_fn = TERMINATION_RULES.get(term_choice, _term_never)
        extra["termination_rule"] = f"{term_choice}: {term_reason}"
        print(f"[offline/dynamics] termination: {extra['termination_rule']}", flush=True)
        stage_times["dynamics"] = time.time() - t

        # ---- multi-step improvement with the AM-Q gate ----
        t = time.time()
        s0 = raw_s[torch.as_tensor(rng.integers(0, raw_s.shape[0], args.ope_num_states), device=device)]
        ope_seed = int(rng.integers(1 << 31))

        def score(policy):
            return am_q(policy, dyn, term_fn, Q, norm, s0, args.ope_horizon, ope_seed)

        pi_ref = copy.deepcopy(pi).requires_grad_(False)  # π_k
        best = score(pi_ref)
        bc_amq = best.clone()
        for i in range(pi.n):
            log.scalar("offline", f"ope/amq_member{i}", float(best[i]), 0)
        sel = int(best.argmax())
        bc_rets, bc_scores = eval_all(0, pi_ref)
        log.eval("offline", 0, bc_rets[sel], normalized_score(dataset, float(bc_rets[sel].mean())))
        for i in range(pi.n):  # each BC member's real score and dataset NLL, side by side
            log.scalar("offline", f"bc/score_member{i}", bc_scores[i], args.bc_steps)
            log.scalar("offline", f"bc/final_nll_member{i}", bc_member_nll[i], args.bc_steps)
        extra.update(bc_score=bc_scores[sel], bc_member_scores=bc_scores, bc_member=sel)
        opt = torch.optim.Adam(pi.parameters(), lr=args.pi_lr)
        accepts = np.zeros(pi.n, dtype=int)
        accept_steps: list[list[int]] = [[] for _ in range(pi.n)]  # the improvement steps of each accepted round
        for step in range(1, args.offline_steps + 1):
            frac = 1 - (step - 1) / args.offline_steps
            opt.param_groups[0]["lr"] = args.pi_lr * frac
            clip = clip_schedule(step, args)
            i = torch.randint(D["s"].shape[0], (args.batch_size,), generator=gen, device=device)
            loss, ratio_dev = offline_ppo_step(pi, pi_ref, Q, V, opt, D["s"][i], clip, args)
            if step % 100 == 0:
                log.scalar("offline", "losses/policy_loss", loss.item() / pi.n, step)
                log.scalar("offline", "losses/ratio_dev", ratio_dev.item(), step)
                log.scalar("offline", "charts/clip_ratio", clip, step)
                log.scalar("offline", "charts/SPS", step / (time.time() - t), step)
            if step % args.ope_freq == 0 or step == args.offline_steps:
                scores = score(pi)
                acc = accept_rule(scores, best)
                pi_ref.copy_members_from(pi, acc)
                best = torch.where(acc, scores, best)
                # an OPE round is a logging step: its statistics come to the host once per round
                acc_list, scores_l, best_l = acc.tolist(), scores.tolist(), best.tolist()
                accepts += np.array(acc_list, dtype=int)
                for m in range(pi.n):
                    if acc_list[m]:
                        accept_steps[m].append(step)
                    log.scalar("offline", f"ope/amq_member{m}", scores_l[m], step)
                    log.scalar("offline", f"ope/best_amq_member{m}", best_l[m], step)
                    log.scalar("offline", f"ope/accept_member{m}", float(acc_list[m]), step)
                print(f"[offline/ope] step {step}: AM-Q {[round(x, 2) for x in scores_l]} "
                      f"accept {[int(x) for x in acc_list]}", flush=True)  # fmt: skip
            if step % args.eval_freq == 0 and step != args.offline_steps:
                sel = int(best.argmax())
                ret, sc = eval_member(eval_env, pi_ref, sel, norm, a_center, a_half, device,
                                      args.eval_episodes, args.seed + 10_000, dataset)  # fmt: skip
                log.eval("offline", step, ret, sc)
        stage_times["improvement"] = time.time() - t

        # ---- selection and the final offline evaluation ----
        t = time.time()
        sel = int(best.argmax())
        if args.select_with_env:
            top = torch.argsort(best, descending=True)[: args.select_top_k].tolist()
            env_scores, n_env_steps = [], [0]
            for m in top:
                actor_m = policy_actor(pi_ref, m, norm, a_center, a_half, device)

                def counted(obs, actor_m=actor_m):
                    n_env_steps[0] += 1
                    return actor_m(obs)

                env_scores.append(evaluate(eval_env, counted, args.eval_episodes, args.seed + 20_000).mean())
            sel = top[int(np.argmax(env_scores))]
            extra["selection_env_steps"] = n_env_steps[0]  # the hidden online budget of this selection rule
            print(f"[offline] --select-with-env spent {n_env_steps[0]} real env steps choosing member {sel}")
        if args.offline_steps > 0 or sel != extra["bc_member"]:
            final_rets, final_scores = eval_all(args.offline_steps, pi_ref)
            log.eval("offline", args.offline_steps, final_rets[sel], normalized_score(dataset, final_rets[sel].mean()))
        else:  # nothing changed since the evaluation after BC
            final_rets, final_scores = bc_rets, bc_scores
        stage_times["offline_eval"] = time.time() - t
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
            accepted_round_steps=accept_steps,
            ope_rounds=args.offline_steps // args.ope_freq + int(args.offline_steps % args.ope_freq > 0),
            final_amq_member=final_amq,
            final_score_member=[float(x) for x in final_scores],
            selected_member=sel,
            selected_final_amq=final_amq[sel],
            selected_final_score=float(final_scores[sel]),
        )
        print(f"[offline] BC score {bc_scores} -> improved {final_scores}; selected member {sel}, "
              f"accepts {accepts.tolist()}", flush=True)  # fmt: skip
        pi_online = pi_ref.extract(sel).requires_grad_(True)
        if args.save_model:
            torch.save(dict(pi=pi_ref.state_dict(), V=V.state_dict(), Q=Q.state_dict(), dyn=dyn.state_dict(),
                            selected_member=sel, state_mean=norm.mean, state_std=norm.std),
                       os.path.join(run_dir, "offline.pt"))  # fmt: skip

    # ================================ online ================================
    online_steps = args.online_steps if args.phases != "offline" else 0
    online_grad_steps = 0
    if online_steps > 0:
        t = time.time()
        scale_fn = None
        if args.reward_scale == "number":
            scale_fn = lambda r, start: r * args.reward_scale_factor  # noqa: E731
        elif args.reward_scale == "dynamic":
            scale_fn = RunningReturnStd(args.gamma)
            scale_fn.warm_up(data["rewards"], data["episode_ends"])  # the running statistics start from the data
        if V is None:
            critic = ValueNet(obs_dim, args.v_hidden_dim, args.v_depth).to(device)
        elif scale_fn is None:
            critic = V
        else:  # re-fit V to MC returns of the scaled offline rewards
            critic = ValueNet(obs_dim, args.value_refit_hidden_dim or args.v_hidden_dim, args.v_depth).to(device)
            mc = T(refit_targets(data["rewards"], data["episode_ends"], args, scale_fn))
            vopt = torch.optim.Adam(critic.parameters(), lr=args.value_lr)
            for _ in range(args.value_refit_steps):
                i = torch.randint(mc.shape[0], (args.batch_size,), generator=gen, device=device)
                loss = ((critic(D["s"][i]) - mc[i]) ** 2).mean()
                vopt.zero_grad()
                loss.backward()
                vopt.step()
        stage_times["online_setup"] = time.time() - t
        t = time.time()
        actor = pi_online
        a_opt = torch.optim.Adam(actor.parameters(), lr=args.lr_actor, eps=1e-5)
        c_opt = torch.optim.Adam(critic.parameters(), lr=args.lr_critic, eps=1e-5)

        def online_eval(step: int):
            ret = evaluate(eval_env, policy_actor(actor, 0, norm, a_center, a_half, device),
                           args.eval_episodes, args.seed + 10_000)  # fmt: skip
            log.eval("online", step, ret, normalized_score(dataset, float(ret.mean())))

        online_eval(0)  # the online curve starts at the policy fine-tuning starts from
        env = dataset.recover_environment()
        if not isinstance(env.observation_space, gym.spaces.Box):
            env = gym.wrappers.FlattenObservation(env)
        obs, _ = env.reset(seed=args.seed)
        ep_ret, ep_len, episode_start, global_step = 0.0, 0, True, 0
        while global_step < online_steps:
            L = min(args.num_steps, online_steps - global_step)
            frac = 1 - global_step / online_steps
            a_opt.param_groups[0]["lr"], c_opt.param_groups[0]["lr"] = args.lr_actor * frac, args.lr_critic * frac
            buf = {k: [] for k in ("s", "a", "logp", "r", "s2", "term", "done")}
            for _ in range(L):
                s = norm(T(obs).reshape(1, -1))
                with torch.no_grad():
                    mu, ls = actor(s)
                    a = (mu + ls.exp() * torch.randn_like(mu))[0, 0]
                    logp = gaussian_log_prob(a, mu[0, 0], ls[0, 0])
                env_a = a_center + a_half * a.clamp(-1, 1).cpu().numpy()  # the one device->host copy per env step
                obs2, r, term, trunc, _ = env.step(env_a)
                global_step += 1
                ep_ret, ep_len = ep_ret + float(r), ep_len + 1
                r_used = float(r) if scale_fn is None else scale_fn(float(r), episode_start)
                episode_start = False
                for k, v in zip(buf, (s[0], a, logp, r_used, obs2, float(term), float(term or trunc))):
                    buf[k].append(v)
                if term or trunc:
                    log.scalar("online", "charts/episodic_return", ep_ret, global_step)
                    log.scalar("online", "charts/episodic_length", ep_len, global_step)
                    obs, _ = env.reset()
                    ep_ret, ep_len, episode_start = 0.0, 0, True
                else:
                    obs = obs2
            S, A_, LOGP = torch.stack(buf["s"]), torch.stack(buf["a"]), torch.stack(buf["logp"])
            S2 = norm(T(np.array(buf["s2"])))
            with torch.no_grad():
                values, next_values = critic(S).cpu().numpy(), critic(S2).cpu().numpy()
            adv = gae(np.array(buf["r"], np.float32), values, next_values, np.array(buf["term"]),
                      np.array(buf["done"]), args.gamma, args.gae_lambda)  # fmt: skip
            ret_t, adv_t, v_old = T(adv + values), T(adv), T(values)
            adv_t = (adv_t - adv_t.mean()) / (adv_t.std() + 1e-5) if L > 1 else adv_t
            rollout = dict(s=S, a=A_, logp=LOGP, adv=adv_t, ret=ret_t, v_old=v_old)
            stats, n_mb = torch.zeros(4, device=device), 0
            for _ in range(args.update_epochs):
                perm = torch.randperm(L, generator=gen, device=device)
                for b in range(0, L, args.minibatch_size):
                    mb = perm[b : b + args.minibatch_size]
                    stats += online_ppo_step(actor, critic, a_opt, c_opt, {k: v[mb] for k, v in rollout.items()}, args)
                    n_mb += 1
            online_grad_steps += n_mb
            # means over every minibatch of the update (all epochs), reduced to floats once per rollout
            for tag, v in zip(("policy_loss", "value_loss", "entropy", "clipfrac"), (stats / n_mb).tolist()):
                log.scalar("online", f"losses/{tag}", v, global_step)
            log.scalar("online", "charts/SPS", global_step / (time.time() - t), global_step)
            if online_eval_due(args, global_step - L, global_step) or global_step == online_steps:
                online_eval(global_step)  # after the update, at the end of the rollout
        stage_times["online"] = time.time() - t
        if args.save_model:  # the fine-tuned policy, with the frozen state statistics it acts on
            torch.save(dict(pi=actor.state_dict(), V=critic.state_dict(), state_mean=norm.mean, state_std=norm.std),
                       os.path.join(run_dir, "online.pt"))  # fmt: skip
    summary = log.summary(
        online_env_steps=online_steps,
        online_gradient_steps=online_grad_steps,
        stage_times=stage_times,
        diagnostics=diagnostics,
        **extra,
    )
    print(f"summary: offline {summary['offline']} | online {summary['online']} | stage times "
          f"{ {k: round(v, 1) for k, v in stage_times.items()} }", flush=True)  # fmt: skip
    return summary


if __name__ == "__main__":
    main(paper_config_cli())
