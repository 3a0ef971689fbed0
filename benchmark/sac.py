"""SAC (Haarnoja et al., 2018) for the behaviour policies of the local MuJoCo datasets.

CleanRL's sac_continuous_action.py, rewritten for one plain gymnasium env (no vector env, so no autoreset
subtleties), with periodic actor checkpoints and exact resumption:

- every `checkpoint_freq` env steps the actor is evaluated (`eval_episodes` episodes, deterministic and stochastic)
  and saved with both returns, as D4RL picked its medium and expert policies from one training run;
  `benchmark/make_datasets.py` rolls the shipped checkpoints out;
- with each checkpoint the whole run state is saved (`state.pt`: networks, optimizers, α, replay buffer, every
  random generator, the simulator state of the episode in progress), so `--resume` continues a killed run and
  writes the same checkpoints as a run that was never interrupted (on the same machine). A 1M-step run can
  span several working sessions.

Speed (one CPU thread): the twin critics are one stacked ensemble (one batched matmul per layer), Adam is the fused
CPU kernel, α's loss reuses the actor step's log-probabilities (CleanRL samples them again) and the target update is
one `_foreach_lerp_`, and the actor's step skips the critic's parameter gradients.

    python benchmark/sac.py --env-id Hopper-v5 --total-timesteps 300000 --checkpoint-dir /tmp/sac/hopper
    python benchmark/sac.py --env-id Hopper-v5 --total-timesteps 1000000 --checkpoint-dir /tmp/sac/hopper --resume
"""

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional

import gymnasium as gym
import mujoco
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    exp_name: str = "sac"
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    cuda: bool = True
    """if toggled, cuda will be used when available"""
    env_id: str = "Hopper-v5"
    """the gymnasium environment id"""
    total_timesteps: int = 1_000_000
    """total environment steps (may be raised when resuming, to extend a run)"""
    buffer_size: int = 1_000_000
    """replay memory size"""
    gamma: float = 0.99
    """discount factor γ"""
    tau: float = 0.005
    """target smoothing coefficient"""
    batch_size: int = 256
    """minibatch size"""
    learning_starts: int = 5_000
    """env steps of uniform random actions before learning starts"""
    policy_lr: float = 3e-4
    """actor learning rate"""
    q_lr: float = 1e-3
    """critic learning rate"""
    policy_frequency: int = 2
    """delayed actor updates: this many actor updates every this many steps (TD3-style, as CleanRL)"""
    alpha: float = 0.2
    """entropy coefficient when not autotuned (autotuned, it starts at 1 as in CleanRL)"""
    autotune: bool = True
    """automatic tuning of the entropy coefficient, target −|A|"""
    checkpoint_freq: int = 5_000
    """evaluate and save the actor, and save the run state for --resume, every this many env steps"""
    checkpoint_dir: Optional[str] = None
    """where actor checkpoints, checkpoints.json and state.pt go (default: the run directory)"""
    eval_episodes: int = 5
    """episodes per checkpoint evaluation (deterministic, then the same seeds stochastic)"""
    run_dir: Optional[str] = None
    """TensorBoard directory (default runs/{env_id}__sac__{seed}__{time}; a resumed run keeps its own)"""
    resume: bool = False
    """continue the run whose state.pt is in --checkpoint-dir, from its last saved step"""


# flags that must agree between a run and its resumption (the rest, e.g. total_timesteps, may change)
RESUME_MATCH = ("seed", "env_id", "buffer_size", "gamma", "tau", "batch_size", "learning_starts", "policy_lr", "q_lr")
RESUME_MATCH += ("policy_frequency", "alpha", "autotune", "checkpoint_freq", "eval_episodes")


class TwinQ(nn.Module):
    """Q_1, Q_2 (s, a) stacked: weights (2, in, out), one batched matmul per layer; returns (2, B). Initialised
    member by member as nn.Linear."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256):
        super().__init__()
        dims = [obs_dim + act_dim, hidden, hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers = [nn.Linear(d_in, d_out) for _ in range(2)]
            self.weights.append(nn.Parameter(torch.stack([lin.weight.data.T for lin in layers])))
            self.biases.append(nn.Parameter(torch.stack([lin.bias.data[None] for lin in layers])))

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], -1).expand(2, -1, -1)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < len(self.weights) - 1:
                x = F.relu(x)
        return x.squeeze(-1)


LOG_STD_MAX, LOG_STD_MIN = 2, -5


class Actor(nn.Module):
    """tanh-Gaussian policy; `action_scale`/`action_bias` map (-1, 1) to the env's bounds."""

    def __init__(self, obs_dim: int, act_dim: int, low: np.ndarray, high: np.ndarray):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(obs_dim, 256), nn.Linear(256, 256)
        self.fc_mean, self.fc_logstd = nn.Linear(256, act_dim), nn.Linear(256, act_dim)
        self.register_buffer("action_scale", torch.tensor((high - low) / 2.0, dtype=torch.float32))
        self.register_buffer("action_bias", torch.tensor((high + low) / 2.0, dtype=torch.float32))

    def forward(self, x):
        x = F.relu(self.fc2(F.relu(self.fc1(x))))
        log_std = torch.tanh(self.fc_logstd(x))
        return self.fc_mean(x), LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)

    def get_action(self, x, generator: Optional[torch.Generator] = None):
        """(sampled action, its log-probability, deterministic action tanh(μ)), actions in the env's bounds."""
        mean, log_std = self(x)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device)
        x_t = mean + log_std.exp() * eps
        # log N(x_t; μ, σ), then the squashing's log-det in the stable form 2(log 2 − u − softplus(−2u))
        log_prob = -0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        log_prob = log_prob - 2.0 * (math.log(2.0) - x_t - F.softplus(-2.0 * x_t)) - torch.log(self.action_scale)
        return (
            torch.tanh(x_t) * self.action_scale + self.action_bias,
            log_prob.sum(1, keepdim=True),
            torch.tanh(mean) * self.action_scale + self.action_bias,
        )


def load_actor(path: str) -> Actor:
    """An actor from a checkpoint written by this script (CPU, eval mode)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    actor = Actor(ckpt["obs_dim"], ckpt["act_dim"], np.array(ckpt["low"]), np.array(ckpt["high"]))
    actor.load_state_dict(ckpt["state_dict"])
    return actor.eval()


def evaluate(actor: Actor, env_id: str, episodes: int, seed: int, device, stochastic: bool = False) -> float:
    """Mean return of `episodes` episodes (env seeds seed, seed+1, …); stochastic actions draw from their own
    generator, so an evaluation never moves the training run's random stream."""
    env = gym.make(env_id)
    gen = torch.Generator(device=device).manual_seed(seed)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, ret = False, 0.0
        while not done:
            with torch.no_grad():
                sampled, _, mean = actor.get_action(torch.as_tensor(obs, dtype=torch.float32, device=device)[None], gen)
            obs, r, terminated, truncated, _ = env.step((sampled if stochastic else mean)[0].cpu().numpy())
            ret += float(r)
            done = terminated or truncated
        returns.append(ret)
    return float(np.mean(returns))


# ---- the run state for --resume: everything the next step depends on
def env_state(env: gym.Env) -> dict:
    """The episode in progress: MuJoCo's full integration state (qpos, qvel, warm start, …), the time limit's step
    count and the env's and action space's generators."""
    base = env.unwrapped
    sim = np.empty(mujoco.mj_stateSize(base.model, mujoco.mjtState.mjSTATE_INTEGRATION), np.float64)
    mujoco.mj_getState(base.model, base.data, sim, mujoco.mjtState.mjSTATE_INTEGRATION)
    limit = next(w for w in _wrappers(env) if isinstance(w, gym.wrappers.TimeLimit))
    return dict(
        sim=sim,
        elapsed=limit._elapsed_steps,
        np_random=base.np_random.bit_generator.state,
        action_space=env.action_space.np_random.bit_generator.state,
    )


def set_env_state(env: gym.Env, state: dict):
    base = env.unwrapped
    mujoco.mj_setState(base.model, base.data, state["sim"], mujoco.mjtState.mjSTATE_INTEGRATION)
    mujoco.mj_forward(base.model, base.data)
    next(w for w in _wrappers(env) if isinstance(w, gym.wrappers.TimeLimit))._elapsed_steps = state["elapsed"]
    base.np_random.bit_generator.state = state["np_random"]
    env.action_space.np_random.bit_generator.state = state["action_space"]


def _wrappers(env: gym.Env):
    while isinstance(env, gym.Wrapper):
        yield env
        env = env.env


def save_state(path: str, state: dict):
    """Atomically: a run killed while saving keeps its previous state.pt."""
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def fail(msg: str):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(args: Args):
    ckpt_dir = args.checkpoint_dir
    state_path = os.path.join(ckpt_dir, "state.pt") if ckpt_dir else None
    saved = None
    if args.resume:
        if not ckpt_dir:
            fail("--resume needs --checkpoint-dir, the directory holding the run's state.pt")
        if not os.path.isfile(state_path):
            fail(
                f"--resume: no run state at '{state_path}' (a run saves it at every checkpoint); start without --resume"
            )
        try:
            saved = torch.load(state_path, map_location="cpu", weights_only=False)
        except Exception as e:
            fail(f"--resume: '{state_path}' could not be read ({type(e).__name__}: {e}); delete it to start over")
        for key in RESUME_MATCH:
            if saved["args"][key] != getattr(args, key):
                fail(f"--resume: the run was started with {key}={saved['args'][key]!r}, not {getattr(args, key)!r}")
        if saved["step"] >= args.total_timesteps:
            fail(f"--resume: the run is already at step {saved['step']}; raise --total-timesteps to extend it")
    elif state_path and os.path.exists(state_path):
        fail(f"'{ckpt_dir}' holds a run already (state.pt): pass --resume to continue it, or choose another directory")
    run_dir = saved["run_dir"] if saved else args.run_dir
    run_dir = run_dir or os.path.join("runs", f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}")
    ckpt_dir = ckpt_dir or run_dir
    state_path = os.path.join(ckpt_dir, "state.pt")
    os.makedirs(ckpt_dir, exist_ok=True)
    writer = SummaryWriter(run_dir)
    writer.add_text(
        "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items())
    )
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    env = gym.make(args.env_id)
    env.action_space.seed(args.seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    actor = Actor(obs_dim, act_dim, low, high).to(device)
    qf = TwinQ(obs_dim, act_dim).to(device)
    qf_target = TwinQ(obs_dim, act_dim).to(device)
    qf_target.load_state_dict(qf.state_dict())
    fused = dict(fused=True) if device.type == "cpu" else {}
    q_optimizer = torch.optim.Adam(qf.parameters(), lr=args.q_lr, **fused)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.policy_lr, **fused)
    target_entropy = -float(act_dim)
    log_alpha = torch.zeros(1, requires_grad=True, device=device)  # autotuned α starts at 1, as CleanRL's
    a_optimizer = torch.optim.Adam([log_alpha], lr=args.q_lr)
    alpha = 1.0 if args.autotune else args.alpha

    n = args.buffer_size
    buf = dict(
        obs=np.zeros((n, obs_dim), np.float32),
        next_obs=np.zeros((n, obs_dim), np.float32),
        act=np.zeros((n, act_dim), np.float32),
        rew=np.zeros(n, np.float32),
        term=np.zeros(n, np.float32),
    )
    checkpoints, start_step = [], 0
    obs, _ = env.reset(seed=args.seed)
    ep_ret, ep_len = 0.0, 0
    if saved:
        for module, key in ((actor, "actor"), (qf, "qf"), (qf_target, "qf_target")):
            module.load_state_dict(saved[key])
        for opt, key in ((q_optimizer, "q_opt"), (actor_optimizer, "actor_opt"), (a_optimizer, "a_opt")):
            opt.load_state_dict(saved[key])
        with torch.no_grad():
            log_alpha.copy_(saved["log_alpha"])
        alpha = log_alpha.exp().item() if args.autotune else args.alpha
        filled = min(saved["step"], n)
        for k in buf:
            buf[k][:filled] = saved["buffer"][k]
        set_env_state(env, saved["env"])
        obs, ep_ret, ep_len = saved["obs"], saved["ep_ret"], saved["ep_len"]
        random.setstate(saved["rng"]["python"])
        np.random.set_state(saved["rng"]["numpy"])
        torch.set_rng_state(saved["rng"]["torch"])
        checkpoints, start_step = saved["checkpoints"], saved["step"]
        print(f"{args.env_id}: resuming from step {start_step}", flush=True)
    tau, gamma = args.tau, args.gamma
    q_params, q_target_params = list(qf.parameters()), list(qf_target.parameters())
    start, qf_loss, actor_loss = time.time(), torch.zeros(()), torch.zeros(())
    for step in range(start_step, args.total_timesteps):
        if step < args.learning_starts:
            action = env.action_space.sample()
        else:
            with torch.no_grad():
                action, _, _ = actor.get_action(torch.as_tensor(obs, dtype=torch.float32, device=device)[None])
            action = action[0].cpu().numpy()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        i = step % n
        buf["obs"][i], buf["next_obs"][i], buf["act"][i] = obs, next_obs, action
        buf["rew"][i], buf["term"][i] = reward, float(terminated)  # time limits are not terminal
        ep_ret, ep_len, obs = ep_ret + float(reward), ep_len + 1, next_obs
        if terminated or truncated:
            writer.add_scalar("charts/episodic_return", ep_ret, step)
            writer.add_scalar("charts/episodic_length", ep_len, step)
            obs, _ = env.reset()
            ep_ret, ep_len = 0.0, 0

        if step >= args.learning_starts:
            idx = np.random.randint(0, min(step + 1, n), args.batch_size)
            b = {k: torch.as_tensor(v[idx], device=device) for k, v in buf.items()}
            with torch.no_grad():
                next_a, next_logp, _ = actor.get_action(b["next_obs"])
                min_q_next = qf_target(b["next_obs"], next_a).min(0).values - alpha * next_logp.view(-1)
                target = b["rew"] + (1 - b["term"]) * gamma * min_q_next
            qf_loss = (qf(b["obs"], b["act"]) - target).pow(2).mean(1).sum()  # MSE of Q_1 + MSE of Q_2
            q_optimizer.zero_grad()
            qf_loss.backward()
            q_optimizer.step()

            if step % args.policy_frequency == 0:
                qf.requires_grad_(False)  # the actor's loss needs dQ/da, not the critic's parameter gradients
                for _ in range(args.policy_frequency):
                    pi, log_pi, _ = actor.get_action(b["obs"])
                    actor_loss = (alpha * log_pi.view(-1) - qf(b["obs"], pi).min(0).values).mean()
                    actor_optimizer.zero_grad()
                    actor_loss.backward()
                    actor_optimizer.step()
                    if args.autotune:
                        alpha_loss = (-log_alpha.exp() * (log_pi.detach() + target_entropy)).mean()
                        a_optimizer.zero_grad()
                        alpha_loss.backward()
                        a_optimizer.step()
                        alpha = log_alpha.exp().item()
                qf.requires_grad_(True)
            with torch.no_grad():
                torch._foreach_lerp_(q_target_params, q_params, tau)
            if step % 1000 == 0:
                writer.add_scalar("losses/qf_loss", qf_loss.item() / 2.0, step)
                writer.add_scalar("losses/actor_loss", actor_loss.item(), step)
                writer.add_scalar("losses/alpha", alpha, step)
                writer.add_scalar("charts/SPS", int((step - start_step) / (time.time() - start)), step)

        if (step + 1) % args.checkpoint_freq == 0:
            ret = evaluate(actor, args.env_id, args.eval_episodes, seed=10_000, device=device)
            ret_stoch = evaluate(actor, args.env_id, args.eval_episodes, seed=10_000, device=device, stochastic=True)
            path = os.path.join(ckpt_dir, f"actor_{step + 1:07d}.pt")
            torch.save(
                dict(
                    state_dict={k: v.cpu() for k, v in actor.state_dict().items()},
                    env_id=args.env_id,
                    obs_dim=obs_dim,
                    act_dim=act_dim,
                    low=low.tolist(),
                    high=high.tolist(),
                    step=step + 1,
                    eval_return=ret,
                    eval_return_stochastic=ret_stoch,
                ),
                path,
            )
            checkpoints.append(
                dict(step=step + 1, file=os.path.basename(path), eval_return=ret, eval_return_stochastic=ret_stoch)
            )
            index = dict(env_id=args.env_id, seed=args.seed, args=asdict(args), checkpoints=checkpoints)
            with open(os.path.join(ckpt_dir, "checkpoints.json.tmp"), "w") as f:
                json.dump(index, f, indent=1)
            os.replace(os.path.join(ckpt_dir, "checkpoints.json.tmp"), os.path.join(ckpt_dir, "checkpoints.json"))
            filled = min(step + 1, n)
            save_state(
                state_path,
                dict(
                    step=step + 1,
                    args=asdict(args),
                    run_dir=run_dir,
                    actor=actor.state_dict(),
                    qf=qf.state_dict(),
                    qf_target=qf_target.state_dict(),
                    q_opt=q_optimizer.state_dict(),
                    actor_opt=actor_optimizer.state_dict(),
                    a_opt=a_optimizer.state_dict(),
                    log_alpha=log_alpha.detach().clone(),
                    buffer={k: v[:filled].copy() for k, v in buf.items()},
                    env=env_state(env),
                    obs=obs,
                    ep_ret=ep_ret,
                    ep_len=ep_len,
                    rng=dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state()),
                    checkpoints=checkpoints,
                ),
            )
            writer.add_scalar("eval/episodic_return", ret, step + 1)
            writer.add_scalar("eval/episodic_return_stochastic", ret_stoch, step + 1)
            print(
                f"{args.env_id} step {step + 1}: eval return {ret:.1f} (stochastic {ret_stoch:.1f}; "
                f"{(step + 1 - start_step) / (time.time() - start):.0f} steps/s)",
                flush=True,
            )
    writer.close()
    return dict(env_id=args.env_id, seed=args.seed, args=asdict(args), checkpoints=checkpoints)


if __name__ == "__main__":
    main(tyro.cli(Args))
