"""Update throughput of the three algorithm files at hopper shapes, beside a bare-PyTorch loop of the same networks
written here, and (with --peers) beside an established library's implementation (d3rlpy's IQL, AWAC and CQL).

    python benchmark/throughput.py                              # every row, 1 and 2 threads (~10 min on 2 cores)
    python benchmark/throughput.py --rows famo2o-fixed off2on-cql --threads 1
    pip install -r requirements-peers.txt && python benchmark/throughput.py --peers
    python benchmark/throughput.py --flops                      # work per update instead of time (seconds)
    python benchmark/throughput.py --profile --rows famo2o-fixed  # where one update's time goes (seconds)

Offline rows time one gradient update on a batch of 256 transitions of the local hopper dataset (11-d observations,
3-d actions), networks at each file's paper widths. A rate is updates per second: the median over `--repeats` timed
blocks of `--block` updates, after `--warmup` untimed updates. The implementations of one row and thread count are
timed block by block in turn (ours, the reference, the peer, ours, ...), so background load hits them alike: read
the ratios, not the absolute rates, which depend on the machine and its load. Off2On's rate is per ensemble member
(updates/s × N), as one member is one CQL agent.

Online rows run each file's `main` on the dataset for `--online-steps` environment steps (no offline phase, one
evaluation episode) and report env steps per second of the online loop (its updates included, evaluations
excluded: summary.json's `stage_times["online"]`).

`--flops` counts instead of timing: the floating-point operations of one update of each implementation (matrix
products, as torch.utils.flop_counter counts them; elementwise work is not counted), with ours split by network.
The counts do not depend on the machine or its load, and say how much of a rate ratio is more or less work rather
than faster or slower code.

`--profile` says where the time of ours goes: the share of self CPU time (torch.profiler) per operator over
`--block` × `--repeats` updates after `--warmup`, at the first of `--threads`, grouped into matrix products, the
optimizer, and the largest other operators. Shares, unlike rates, change little with background load.
"""

import copy
import importlib.util
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]


def load_algorithm(name: str):
    """Import algorithms/<name>.py as a module (the files are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "algorithms" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------
# Bare-PyTorch references: the same network shapes, written the plain way (nn.Sequential, one Adam per network,
# a Python loop for Polyak), nothing vectorised or fused. They set the floor each file's update is measured against.
# ----------------------------------------------------------------------------------------------
def mlp(in_dim: int, out_dim: int, hidden: int = 256, layers: int = 2) -> nn.Sequential:
    dims = [in_dim] + [hidden] * layers
    mods: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*mods, nn.Linear(dims[-1], out_dim))


def polyak(target: nn.Module, source: nn.Module, tau: float = 0.005):
    with torch.no_grad():
        for pt, p in zip(target.parameters(), source.parameters()):
            pt.mul_(1 - tau).add_(p, alpha=tau)


def gaussian_log_prob(mu, log_std, act):
    return (-0.5 * ((act - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def tanh_gaussian_sample(actor: nn.Module, obs: torch.Tensor):
    mu, log_std = actor(obs).chunk(2, -1)
    log_std = log_std.clamp(-5, 2)
    u = mu + log_std.exp() * torch.randn_like(mu)
    log_prob = gaussian_log_prob(mu, log_std, u) - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
    return torch.tanh(u), log_prob


class BareIQL:
    """IQL (Kostrikov et al., 2022): twin Q + targets, V, Gaussian actor; expectile V, TD Q, advantage-weighted BC."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256):
        self.q1, self.q2, self.v = mlp(obs_dim + act_dim, 1, hidden), mlp(obs_dim + act_dim, 1, hidden), mlp(obs_dim, 1)
        self.q1_t, self.q2_t = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.actor = mlp(obs_dim, 2 * act_dim, hidden)
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], 3e-4)
        self.v_opt = torch.optim.Adam(self.v.parameters(), 3e-4)
        self.pi_opt = torch.optim.Adam(self.actor.parameters(), 3e-4)

    def update_values(self, b: dict) -> torch.Tensor:
        """Expectile V, then TD Q on V(s'), then Polyak; returns the advantage Q_target(s, a) − V(s)."""
        sa = torch.cat([b["obs"], b["act"]], -1)
        with torch.no_grad():
            q_t = torch.min(self.q1_t(sa), self.q2_t(sa)).squeeze(-1)
        adv = q_t - self.v(b["obs"]).squeeze(-1)
        v_loss = (torch.abs(0.7 - (adv < 0).float()) * adv**2).mean()
        self.v_opt.zero_grad()
        v_loss.backward()
        self.v_opt.step()
        with torch.no_grad():
            target = b["rew"] + 0.99 * (1 - b["term"]) * self.v(b["next_obs"]).squeeze(-1)
        q_loss = F.mse_loss(self.q1(sa).squeeze(-1), target) + F.mse_loss(self.q2(sa).squeeze(-1), target)
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        polyak(self.q1_t, self.q1)
        polyak(self.q2_t, self.q2)
        return adv.detach()

    def update(self, b: dict):
        weight = torch.exp(3.0 * self.update_values(b)).clamp(max=100.0)
        mu, log_std = self.actor(b["obs"]).chunk(2, -1)
        pi_loss = -(weight * gaussian_log_prob(mu, log_std.clamp(-5, 2), b["act"])).mean()
        self.pi_opt.zero_grad()
        pi_loss.backward()
        self.pi_opt.step()


class BareIQLValues(BareIQL):
    """Uni-O4's value stage: IQL's V and Q updates alone, at its widths (twin Q 2×1024 + target, V 3×512)."""

    def __init__(self, obs_dim: int, act_dim: int, q_hidden: int = 1024, v_hidden: int = 512):
        self.q1, self.q2 = mlp(obs_dim + act_dim, 1, q_hidden), mlp(obs_dim + act_dim, 1, q_hidden)
        self.q1_t, self.q2_t = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.v = mlp(obs_dim, 1, v_hidden, layers=3)
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], 1e-4)
        self.v_opt = torch.optim.Adam(self.v.parameters(), 1e-4)

    def update(self, b: dict):
        self.update_values(b)


class BareBC:
    """n Gaussian policies (3×256), each its own network and Adam, maximum likelihood on the same batch."""

    def __init__(self, obs_dim: int, act_dim: int, n: int = 4, hidden: int = 256):
        self.policies = [mlp(obs_dim, 2 * act_dim, hidden, layers=3) for _ in range(n)]
        self.opts = [torch.optim.Adam(p.parameters(), 1e-4) for p in self.policies]

    def update(self, b: dict):
        for policy, opt in zip(self.policies, self.opts):
            mu, log_std = policy(b["obs"]).chunk(2, -1)
            loss = -gaussian_log_prob(mu, log_std.clamp(-5, 2), b["act"]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()


class BareAWAC:
    """AWAC (Nair et al., 2020): twin Q + targets, tanh-Gaussian actor; SAC-style TD, exp(A/λ)-weighted BC."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256):
        self.q1, self.q2 = mlp(obs_dim + act_dim, 1, hidden), mlp(obs_dim + act_dim, 1, hidden)
        self.q1_t, self.q2_t = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.actor = mlp(obs_dim, 2 * act_dim, hidden)
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], 3e-4)
        self.pi_opt = torch.optim.Adam(self.actor.parameters(), 3e-4)

    def q(self, obs, act, target: bool = False):
        sa = torch.cat([obs, act], -1)
        q1, q2 = (self.q1_t, self.q2_t) if target else (self.q1, self.q2)
        return torch.min(q1(sa), q2(sa)).squeeze(-1)

    def update(self, b: dict):
        with torch.no_grad():
            next_act, _ = tanh_gaussian_sample(self.actor, b["next_obs"])
            target = b["rew"] + 0.99 * (1 - b["term"]) * self.q(b["next_obs"], next_act, target=True)
        sa = torch.cat([b["obs"], b["act"]], -1)
        q_loss = F.mse_loss(self.q1(sa).squeeze(-1), target) + F.mse_loss(self.q2(sa).squeeze(-1), target)
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        with torch.no_grad():
            pi_act, _ = tanh_gaussian_sample(self.actor, b["obs"])
            adv = self.q(b["obs"], b["act"]) - self.q(b["obs"], pi_act)
            weight = torch.exp(adv / 1.0).clamp(max=100.0)
        mu, log_std = self.actor(b["obs"]).chunk(2, -1)
        pi_loss = -(weight * gaussian_log_prob(mu, log_std.clamp(-5, 2), torch.atanh(b["act"].clamp(-0.999, 0.999))))
        self.pi_opt.zero_grad()
        pi_loss.mean().backward()
        self.pi_opt.step()
        polyak(self.q1_t, self.q1)
        polyak(self.q2_t, self.q2)


class BareCQL:
    """One CQL(H) agent (Kumar et al., 2020) on SAC: twin Q + targets, tanh-Gaussian actor, learned α; the
    conservative term is a log-sum-exp over `n_actions` uniform, current-policy and next-policy actions per state."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, n_actions: int = 10):
        self.n, self.act_dim = n_actions, act_dim
        self.q1, self.q2 = mlp(obs_dim + act_dim, 1, hidden), mlp(obs_dim + act_dim, 1, hidden)
        self.q1_t, self.q2_t = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.actor = mlp(obs_dim, 2 * act_dim, hidden)
        self.log_alpha = torch.zeros(1, requires_grad=True)
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], 3e-4)
        self.pi_opt = torch.optim.Adam(self.actor.parameters(), 1e-4)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], 1e-4)

    def update(self, b: dict):
        obs, act = b["obs"], b["act"]
        batch = obs.shape[0]
        pi_act, log_pi = tanh_gaussian_sample(self.actor, obs)
        alpha_loss = -(self.log_alpha * (log_pi.detach() - self.act_dim)).mean()
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()
        alpha = self.log_alpha.exp().detach()
        q_pi = torch.min(self.q1(torch.cat([obs, pi_act], -1)), self.q2(torch.cat([obs, pi_act], -1))).squeeze(-1)
        actor_loss = (alpha * log_pi - q_pi).mean()
        self.pi_opt.zero_grad()
        actor_loss.backward()
        self.pi_opt.step()

        with torch.no_grad():
            next_act, _ = tanh_gaussian_sample(self.actor, b["next_obs"])
            sa_next = torch.cat([b["next_obs"], next_act], -1)
            q_next = torch.min(self.q1_t(sa_next), self.q2_t(sa_next)).squeeze(-1)
            target = b["rew"] + 0.99 * (1 - b["term"]) * q_next
            obs_rep = obs.repeat_interleave(self.n, 0)
            next_rep = b["next_obs"].repeat_interleave(self.n, 0)
            rand_act = torch.empty(batch * self.n, self.act_dim).uniform_(-1, 1)
            cur_act, cur_logp = tanh_gaussian_sample(self.actor, obs_rep)
            nxt_act, nxt_logp = tanh_gaussian_sample(self.actor, next_rep)
        sa = torch.cat([obs, act], -1)
        q_loss = 0.0
        for q in (self.q1, self.q2):
            q_data = q(sa).squeeze(-1)
            q_rand = q(torch.cat([obs_rep, rand_act], -1)).view(batch, self.n) - self.act_dim * math.log(0.5)
            q_cur = q(torch.cat([obs_rep, cur_act], -1)).view(batch, self.n) - cur_logp.view(batch, self.n)
            q_nxt = q(torch.cat([obs_rep, nxt_act], -1)).view(batch, self.n) - nxt_logp.view(batch, self.n)
            gap = torch.logsumexp(torch.cat([q_rand, q_cur, q_nxt], 1), 1) - q_data
            q_loss = q_loss + F.mse_loss(q_data, target) + 5.0 * gap.mean()
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        polyak(self.q1_t, self.q1)
        polyak(self.q2_t, self.q2)


# ----------------------------------------------------------------------------------------------
# Peers: d3rlpy (pip install -r requirements-peers.txt), its default PyTorch implementations
# ----------------------------------------------------------------------------------------------
def d3rlpy_update(kind: str, data: dict, batch_size: int) -> Optional[Callable[[], None]]:
    """One d3rlpy gradient update (`impl.update` on a pre-built torch mini-batch, so sampling and numpy → torch
    conversion are outside the timing, as for ours), or None when d3rlpy is not installed."""
    try:
        import d3rlpy
        from d3rlpy.torch_utility import TorchMiniBatch
    except ImportError:
        return None
    n = min(len(data["rewards"]), 20_000)  # building d3rlpy's episode list is slow; the batch shape is what counts
    data = {k: v[:n].copy() for k, v in data.items()}
    data["episode_ends"][-1] = True
    dataset = d3rlpy.dataset.MDPDataset(
        observations=data["observations"],
        actions=np.clip(data["actions"], -1, 1),
        rewards=data["rewards"].reshape(n, 1),
        terminals=data["terminals"],
        timeouts=(data["episode_ends"] & (data["terminals"] == 0)).astype(np.float32),
    )
    config = {
        "iql": d3rlpy.algos.IQLConfig(batch_size=batch_size),
        "awac": d3rlpy.algos.AWACConfig(batch_size=batch_size),
        "cql": d3rlpy.algos.CQLConfig(batch_size=batch_size, n_action_samples=10),
    }[kind]
    algo = config.create(device="cpu:0")
    algo.build_with_dataset(dataset)
    batch = TorchMiniBatch.from_batch(
        batch=dataset.sample_transition_batch(batch_size),
        gamma=algo.config.gamma,
        compute_returns_to_go=algo.need_returns_to_go,
        device="cpu:0",
    )
    step = [0]

    def update():
        algo.impl.update(batch, step[0])
        step[0] += 1

    return update


# ----------------------------------------------------------------------------------------------
# The rows: each returns {"ours": update, "reference": update, "peer": update or None} and ours' per-call multiplier
# ----------------------------------------------------------------------------------------------
def sample_batch(data: dict, batch_size: int, gen: torch.Generator, ensemble: Optional[int] = None) -> dict:
    """A batch in the files' vocabulary (obs, act, rew, next_obs, term); (N, B, ...) when `ensemble` is given."""
    shape = (batch_size,) if ensemble is None else (ensemble, batch_size)
    idx = torch.randint(len(data["rewards"]), shape, generator=gen)
    src = dict(
        obs=data["observations"],
        act=np.clip(data["actions"], -1, 1),
        rew=data["rewards"],
        next_obs=data["next_observations"],
        term=data["terminals"],
    )
    return {k: torch.as_tensor(v, dtype=torch.float32)[idx] for k, v in src.items()}


def _compile_flag(on: bool) -> dict:
    return {"compile": True} if on else {}  # the files' `--compile` (torch.compile of the update)


def famo2o_row(data: dict, balance: str, base: str, batch_size: int, compile_: bool):
    famo2o = load_algorithm("famo2o")
    args = replace(famo2o.Args(), balance=balance, base=base, batch_size=batch_size, **_compile_flag(compile_))
    obs_dim, act_dim = data["observations"].shape[1], data["actions"].shape[1]
    agent = famo2o.FamO2O(obs_dim, act_dim, args, torch.device("cpu"))
    batch = sample_batch(data, batch_size, torch.Generator().manual_seed(0))
    ref = (BareIQL if base == "iql" else BareAWAC)(obs_dim, act_dim, args.hidden_dim)
    return dict(
        ours=lambda: agent.update(batch, online=False),
        reference=lambda: ref.update(batch),
        peer=d3rlpy_update(base, data, batch_size) if PEERS else None,
    ), 1


def off2on_row(data: dict, batch_size: int, compile_: bool):
    off2on = load_algorithm("off2on")
    args = replace(off2on.Args(), batch_size=batch_size, cql_n_actions=10, **_compile_flag(compile_))
    obs_dim, act_dim = data["observations"].shape[1], data["actions"].shape[1]
    agent = off2on.Off2On(obs_dim, act_dim, args, torch.device("cpu"))
    batch = sample_batch(data, batch_size, torch.Generator().manual_seed(0), ensemble=args.ensemble_size)
    ref = BareCQL(obs_dim, act_dim, args.hidden_dim, n_actions=10)
    member_batch = {k: v[0] for k, v in batch.items()}  # one agent's batch
    return dict(
        ours=lambda: agent.offline_update(batch, bc=False),
        reference=lambda: ref.update(member_batch),
        peer=d3rlpy_update("cql", data, batch_size) if PEERS else None,
    ), args.ensemble_size


def uni_o4_row(data: dict, stage: str, batch_size: int, compile_: bool):
    uni_o4 = load_algorithm("uni_o4")
    args = replace(uni_o4.Args(), batch_size=batch_size, **_compile_flag(compile_))
    obs_dim, act_dim = data["observations"].shape[1], data["actions"].shape[1]
    agent = uni_o4.UniO4(args, obs_dim, act_dim, torch.device("cpu"))
    batch = sample_batch(data, batch_size, torch.Generator().manual_seed(0))
    if stage == "values":
        step = [0]

        def ours():
            step[0] += 1
            agent.value_update(batch, step[0])

        ref = BareIQLValues(obs_dim, act_dim, args.q_hidden_dim, args.v_hidden_dim)
    else:
        ours = lambda: agent.bc_update(batch)  # noqa: E731
        ref = BareBC(obs_dim, act_dim, args.num_policies, args.bc_hidden_dim)
    return dict(ours=ours, reference=lambda: ref.update(batch), peer=None), 1


ROWS: dict[str, tuple[str, Callable]] = {
    "famo2o-fixed": (
        "IQL-shaped (FamO2O `--balance fixed`)",
        lambda d, a: famo2o_row(d, "fixed", "iql", a.batch_size, a.compile),
    ),
    "famo2o-adaptive-iql": (
        "FamO2O adaptive (IQL base)",
        lambda d, a: famo2o_row(d, "adaptive", "iql", a.batch_size, a.compile),
    ),
    "famo2o-adaptive-awac": (
        "FamO2O adaptive (AWAC base)",
        lambda d, a: famo2o_row(d, "adaptive", "awac", a.batch_size, a.compile),
    ),
    "off2on-cql": (
        "CQL per ensemble member (Off2On offline, N=5, 10 actions per set)",
        lambda d, a: off2on_row(d, a.batch_size, a.compile),
    ),
    "uni_o4-values": (
        "Uni-O4 value stage (IQL V 3×512 + twin Q 2×1024)",
        lambda d, a: uni_o4_row(d, "values", a.batch_size, a.compile),
    ),
    "uni_o4-bc": (
        "Uni-O4 ensemble BC (4 members 3×256, Eq. 6 term; the reference has none)",
        lambda d, a: uni_o4_row(d, "bc", a.batch_size, a.compile),
    ),
}
PEER_NAMES = {"famo2o-fixed": "IQL", "famo2o-adaptive-iql": "IQL", "famo2o-adaptive-awac": "AWAC", "off2on-cql": "CQL"}
# Uni-O4's stages have no counterpart in the peer library
PEERS = False


def time_interleaved(fns: dict[str, Callable[[], None]], warmup: int, block: int, repeats: int) -> dict[str, float]:
    """Median updates/s of each function, timed block by block in turn."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            for _ in range(block):
                fn()
            rates[k].append(block / (time.perf_counter() - t))
    return {k: statistics.median(v) for k, v in rates.items()}


def count_flops(fn: Callable[[], None]) -> tuple[float, dict[str, float]]:
    """GFLOP of one call of `fn` (matrix products) and their split by top-level module. One uncounted call first, so
    lazily built state (e.g. Adam's moments) is not part of the count."""
    fn()
    with FlopCounterMode(display=False) as counter:
        fn()
    by_module = {
        m: sum(c.values()) / 1e9 for m, c in counter.get_flop_counts().items() if m != "Global" and "." not in m
    }
    return counter.get_total_flops() / 1e9, {m: f for m, f in by_module.items() if f > 0}


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def profile_shares(fn: Callable[[], None], updates: int, warmup: int) -> dict[str, float]:
    """Share of self CPU time of each operator over `updates` calls of `fn` after `warmup` unprofiled ones, largest
    first. The optimizer's Python-side step appears under its record_function label ("Optimizer.step#Adam.step")."""
    for _ in range(warmup):
        fn()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(updates):
            fn()
    self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages() if e.self_cpu_time_total > 0}
    total = sum(self_us.values())
    return {k: v / total for k, v in sorted(self_us.items(), key=lambda kv: -kv[1])}


def _is_optimizer_op(name: str) -> bool:
    return name.startswith(("Optimizer.", "aten::_foreach_")) or "adam" in name.lower()


def _row_table(caption: str, columns: list[str], args: "Args", measure: Callable) -> tuple[list[str], dict]:
    """A markdown table with one line per offline row: `measure(build)` -> (the cells after the title, raw entry)."""
    lines = [caption, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    raw: dict = {}
    for row in args.rows:
        title, build = ROWS[row]
        cells, raw[row] = measure(build)
        lines.append("| " + " | ".join([title, *cells]) + " |")
        print(lines[-1], flush=True)
    return lines, raw


def profile_table(data: dict, args: "Args") -> tuple[list[str], dict]:
    updates, threads = args.block * args.repeats, args.threads[0]
    torch.set_num_threads(threads)

    def measure(build):
        shares = profile_shares(build(data, args)[0]["ours"], updates, args.warmup)
        matmul = sum(v for k, v in shares.items() if k in MATMUL_OPS)
        optim = sum(v for k, v in shares.items() if _is_optimizer_op(k))
        others = [(k, v) for k, v in shares.items() if k not in MATMUL_OPS and not _is_optimizer_op(k)]
        top = ", ".join(f"{k} {100 * v:.0f} %" for k, v in others[:5])
        cells = [f"{100 * matmul:.0f} %", f"{100 * optim:.0f} %", top]
        return cells, dict(matmul=matmul, optimizer=optim, shares=shares)

    caption = (
        f"Share of self CPU time in one update of ours (torch.profiler; {updates} updates after {args.warmup} "
        f"warm-up, {threads} thread(s)), dataset {args.dataset_id}, batch {args.batch_size}."
    )
    return _row_table(caption, ["update", "matrix products", "optimizer", "largest other operators"], args, measure)


def flops_table(data: dict, args: "Args") -> tuple[list[str], dict]:
    def measure(build):
        fns, per = build(data, args)
        counts = {k: count_flops(fn) for k, fn in fns.items() if fn is not None}
        ours, split = counts["ours"][0] / per, counts["ours"][1]
        ref, peer = counts["reference"][0], counts.get("peer", (None,))[0]
        parts = ", ".join(f"{m} {f / per:.3f}" for m, f in sorted(split.items(), key=lambda kv: -kv[1]))
        cells = [f"{ours:.3f}", f"{ref:.3f}", f"{ours / ref:.2f}×", f"{peer:.3f}" if peer else "—", parts]
        return cells, dict(ours=ours, reference=ref, peer=peer, ours_by_network={m: f / per for m, f in split.items()})

    caption = (
        f"GFLOP per update (matrix products; torch.utils.flop_counter), dataset {args.dataset_id}, batch "
        f"{args.batch_size}; Off2On per ensemble member."
    )
    columns = ["update", "ours GFLOP", "bare PyTorch GFLOP", "ours / bare", "peer GFLOP", "ours by network"]
    return _row_table(caption, columns, args, measure)


# ----------------------------------------------------------------------------------------------
# Online loops: each file's main, online phase only
# ----------------------------------------------------------------------------------------------
ONLINE_FLAGS = {
    "famo2o": dict(offline_steps=0),
    "off2on": dict(offline_steps=0),
    # Uni-O4 has no online-only mode: its offline stages run at token budgets before the timed online phase
    "uni_o4": dict(offline_steps=0, value_steps=10, bc_steps=10, dyn_max_epochs=1),
}


def online_rate(name: str, dataset_id: str, steps: int, threads: int) -> float:
    module = load_algorithm(name)
    with tempfile.TemporaryDirectory() as run_dir:
        args = replace(
            module.Args(),
            dataset_id=dataset_id,
            online_steps=steps,
            eval_freq=10 * steps,
            eval_episodes=1,
            early_eval_freq=0,
            run_dir=run_dir,
            cuda=False,
            **ONLINE_FLAGS[name],
        )
        torch.set_num_threads(threads)
        summary = module.main(args)
    return steps / summary["stage_times"]["online"]


@dataclass
class Args:
    dataset_id: str = "o2o/hopper/medium-replay-v0"
    """local dataset whose transitions fill the batches and whose environment the online loops step"""
    rows: list[str] = field(default_factory=lambda: list(ROWS))
    """offline rows to time (see ROWS)"""
    online: list[str] = field(default_factory=lambda: ["famo2o", "off2on", "uni_o4"])
    """files whose online loop to time (empty: none)"""
    threads: list[int] = field(default_factory=lambda: [1, 2])
    """torch thread counts to measure"""
    batch_size: int = 256
    """transitions per update"""
    warmup: int = 3
    """untimed updates per implementation before timing"""
    block: int = 5
    """updates per timed block"""
    repeats: int = 5
    """timed blocks per implementation (the rate is their median)"""
    online_steps: int = 2048
    """env steps of each online timing run"""
    peers: bool = False
    """also time d3rlpy's IQL / AWAC / CQL (requirements-peers.txt)"""
    compile: bool = False
    """time the files' `--compile` updates"""
    flops: bool = False
    """count each update's floating-point operations instead of timing (no online rows)"""
    profile: bool = False
    """profile where each update's time goes instead of timing (no online rows; the first of --threads)"""
    out: Optional[str] = None
    """also write the table and raw rates here (markdown + .json next to it)"""


def main(args: Args) -> str:
    global PEERS
    PEERS = args.peers
    if args.flops and args.profile:
        sys.exit("error: --flops and --profile are two different tables; run them one at a time")
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        sys.exit(f"error: unknown rows {unknown}; choose from {', '.join(ROWS)}")
    unknown = [name for name in args.online if name not in ONLINE_FLAGS]
    if unknown:
        sys.exit(f"error: unknown --online files {unknown}; choose from {', '.join(ONLINE_FLAGS)}")
    if args.peers and d3rlpy_update("iql", _tiny_data(), 8) is None:
        sys.exit("error: --peers needs d3rlpy: pip install -r requirements-peers.txt")
    harness = load_algorithm("famo2o")  # the data harness is the same in the three files
    try:
        data = harness.dataset_to_transitions(harness.load_minari_dataset(args.dataset_id))
    except harness.DatasetError as e:
        sys.exit(f"error: {e}")
    # off2on.py raises glibc's malloc thresholds when it builds its agent (process-wide): set them before any row, so
    # every implementation, peers included, runs with the same allocator
    load_algorithm("off2on").keep_freed_memory()
    if args.flops or args.profile:
        lines, raw = (flops_table if args.flops else profile_table)(data, args)
        return _write(lines, raw, args.out)
    cpu = _cpu_name()
    lines = [
        f"Machine: {cpu}, {os.cpu_count()} cores; torch {torch.__version__}. Dataset {args.dataset_id}, batch "
        f"{args.batch_size}; updates/s, median of {args.repeats} blocks of {args.block} after {args.warmup} warm-up "
        "updates, the implementations of a row timed in turn; glibc malloc thresholds raised for all (as off2on.py "
        "does by itself, see its `keep_freed_memory`).",
        "",
        "| update | threads | ours /s | bare PyTorch /s | ours / bare | peer | peer /s | ours / peer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    raw: dict = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for row in args.rows:
            title, build = ROWS[row]
            fns, per = build(data, args)
            fns = {k: v for k, v in fns.items() if v is not None}
            rates = time_interleaved(fns, args.warmup, args.block, args.repeats)
            ours = rates["ours"] * per
            peer = rates.get("peer")
            raw[f"{row}/{threads}"] = dict(rates, per=per)
            lines.append(
                f"| {title} | {threads} | {ours:.1f} | {rates['reference']:.1f} | {ours / rates['reference']:.2f}× | "
                + (f"d3rlpy {PEER_NAMES[row]} | {peer:.1f} | {ours / peer:.2f}× |" if peer else "— | — | — |")
            )
            print(lines[-1], flush=True)
    if args.online:
        lines += ["", "| online loop (env step + updates) | threads | env steps/s |", "|---|---|---|"]
        for threads in args.threads:
            for name in args.online:
                rate = online_rate(name, args.dataset_id, args.online_steps, threads)
                raw[f"online/{name}/{threads}"] = rate
                lines.append(f"| {name}.py | {threads} | {rate:.1f} |")
                print(lines[-1], flush=True)
    return _write(lines, raw, args.out)


def _write(lines: list[str], raw: dict, out: Optional[str]) -> str:
    """Print the table; with `out`, also write it (markdown) and the raw numbers (.json next to it)."""
    table = "\n".join(lines)
    print("\n" + table)
    if out:
        Path(out).write_text(table + "\n")
        Path(out).with_suffix(".json").write_text(json.dumps(raw, indent=2))
    return table


def _tiny_data() -> dict:
    rng = np.random.default_rng(0)
    ends = np.zeros(64, dtype=bool)
    ends[31::32] = True
    return dict(
        observations=rng.standard_normal((64, 3), dtype=np.float32),
        actions=rng.uniform(-1, 1, (64, 2)).astype(np.float32),
        rewards=rng.standard_normal(64, dtype=np.float32),
        next_observations=rng.standard_normal((64, 3), dtype=np.float32),
        terminals=np.zeros(64, dtype=np.float32),
        episode_ends=ends,
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main(tyro.cli(Args))
