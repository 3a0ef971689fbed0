"""SAC (Haarnoja et al., 2018) for the behaviour policies of the local MuJoCo datasets.

CleanRL's sac_continuous_action.py, rewritten for one plain gymnasium env (no vector env, so no autoreset
subtleties) and with periodic actor checkpoints: every `checkpoint_freq` env steps the actor is evaluated
(deterministic, `eval_episodes` episodes) and saved with its return, as D4RL picked its medium and expert
policies from one training run. `benchmark/make_datasets.py` rolls the shipped checkpoints out.

    python benchmark/sac.py --env-id Hopper-v5 --total-timesteps 300000 --checkpoint-dir /tmp/sac/hopper
"""

import json
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Optional

import gymnasium as gym
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
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available"""
    env_id: str = "Hopper-v5"
    """the gymnasium environment id"""
    total_timesteps: int = 1_000_000
    """total environment steps"""
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
    """entropy coefficient (initial value when autotuned)"""
    autotune: bool = True
    """automatic tuning of the entropy coefficient, target −|A|"""
    checkpoint_freq: int = 10_000
    """evaluate and save the actor every this many env steps"""
    checkpoint_dir: Optional[str] = None
    """where actor checkpoints and checkpoints.json go (default: the run directory)"""
    eval_episodes: int = 5
    """deterministic episodes per checkpoint evaluation"""
    run_dir: Optional[str] = None
    """TensorBoard directory (default runs/{env_id}__sac__{seed}__{time})"""


class SoftQNetwork(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim + act_dim, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1)
        )

    def forward(self, x, a):
        return self.net(torch.cat([x, a], 1))


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

    def get_action(self, x):
        mean, log_std = self(x)
        normal = torch.distributions.Normal(mean, log_std.exp())
        x_t = normal.rsample()
        y_t = torch.tanh(x_t)
        # log-prob of the squashed sample, in the numerically stable form 2(log 2 − u − softplus(−2u))
        log_prob = normal.log_prob(x_t) - 2.0 * (np.log(2.0) - x_t - F.softplus(-2.0 * x_t))
        log_prob = log_prob - torch.log(self.action_scale)
        return (
            y_t * self.action_scale + self.action_bias,
            log_prob.sum(1, keepdim=True),
            torch.tanh(mean) * self.action_scale + self.action_bias,
        )


def load_actor(path: str) -> Actor:
    """An actor from a checkpoint written by this script (CPU, eval mode)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    actor = Actor(ckpt["obs_dim"], ckpt["act_dim"], np.array(ckpt["low"]), np.array(ckpt["high"]))
    actor.load_state_dict(ckpt["state_dict"])
    return actor.eval()


def evaluate(actor: Actor, env_id: str, episodes: int, seed: int, device) -> float:
    env = gym.make(env_id)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, ret = False, 0.0
        while not done:
            with torch.no_grad():
                _, _, action = actor.get_action(torch.as_tensor(obs, dtype=torch.float32, device=device)[None])
            obs, r, terminated, truncated, _ = env.step(action[0].cpu().numpy())
            ret += float(r)
            done = terminated or truncated
        returns.append(ret)
    return float(np.mean(returns))


def main(args: Args):
    run_dir = args.run_dir or os.path.join("runs", f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}")
    ckpt_dir = args.checkpoint_dir or run_dir
    os.makedirs(ckpt_dir, exist_ok=True)
    writer = SummaryWriter(run_dir)
    writer.add_text(
        "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items())
    )
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    env = gym.make(args.env_id)
    env.action_space.seed(args.seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    actor = Actor(obs_dim, act_dim, low, high).to(device)
    qf1, qf2 = SoftQNetwork(obs_dim, act_dim).to(device), SoftQNetwork(obs_dim, act_dim).to(device)
    qf1_target, qf2_target = SoftQNetwork(obs_dim, act_dim).to(device), SoftQNetwork(obs_dim, act_dim).to(device)
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.q_lr)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.policy_lr)
    if args.autotune:
        target_entropy = -float(act_dim)
        log_alpha = torch.zeros(1, requires_grad=True, device=device)
        alpha = log_alpha.exp().item()
        a_optimizer = torch.optim.Adam([log_alpha], lr=args.q_lr)
    else:
        alpha = args.alpha

    n = min(args.buffer_size, args.total_timesteps)
    buf = dict(
        obs=np.zeros((n, obs_dim), np.float32),
        next_obs=np.zeros((n, obs_dim), np.float32),
        act=np.zeros((n, act_dim), np.float32),
        rew=np.zeros(n, np.float32),
        term=np.zeros(n, np.float32),
    )
    index, checkpoints = [], []
    obs, _ = env.reset(seed=args.seed)
    ep_ret, ep_len, start = 0.0, 0, time.time()
    for step in range(args.total_timesteps):
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
                min_q_next = (
                    torch.min(qf1_target(b["next_obs"], next_a), qf2_target(b["next_obs"], next_a)) - alpha * next_logp
                )
                target = b["rew"] + (1 - b["term"]) * args.gamma * min_q_next.view(-1)
            qf1_a, qf2_a = qf1(b["obs"], b["act"]).view(-1), qf2(b["obs"], b["act"]).view(-1)
            qf_loss = F.mse_loss(qf1_a, target) + F.mse_loss(qf2_a, target)
            q_optimizer.zero_grad()
            qf_loss.backward()
            q_optimizer.step()

            if step % args.policy_frequency == 0:
                for _ in range(args.policy_frequency):
                    pi, log_pi, _ = actor.get_action(b["obs"])
                    min_q_pi = torch.min(qf1(b["obs"], pi), qf2(b["obs"], pi))
                    actor_loss = (alpha * log_pi - min_q_pi).mean()
                    actor_optimizer.zero_grad()
                    actor_loss.backward()
                    actor_optimizer.step()
                    if args.autotune:
                        with torch.no_grad():
                            _, log_pi, _ = actor.get_action(b["obs"])
                        alpha_loss = (-log_alpha.exp() * (log_pi + target_entropy)).mean()
                        a_optimizer.zero_grad()
                        alpha_loss.backward()
                        a_optimizer.step()
                        alpha = log_alpha.exp().item()
            with torch.no_grad():
                for net, targ in ((qf1, qf1_target), (qf2, qf2_target)):
                    for p, tp in zip(net.parameters(), targ.parameters()):
                        tp.mul_(1 - args.tau).add_(args.tau * p)
            if step % 1000 == 0:
                writer.add_scalar("losses/qf_loss", qf_loss.item() / 2.0, step)
                writer.add_scalar("losses/actor_loss", actor_loss.item(), step)
                writer.add_scalar("losses/alpha", alpha, step)
                writer.add_scalar("charts/SPS", int(step / (time.time() - start)), step)

        if (step + 1) % args.checkpoint_freq == 0:
            ret = evaluate(actor, args.env_id, args.eval_episodes, seed=10_000, device=device)
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
                ),
                path,
            )
            checkpoints.append(dict(step=step + 1, file=os.path.basename(path), eval_return=ret))
            index = dict(env_id=args.env_id, seed=args.seed, args=asdict(args), checkpoints=checkpoints)
            with open(os.path.join(ckpt_dir, "checkpoints.json.tmp"), "w") as f:
                json.dump(index, f, indent=1)
            os.replace(os.path.join(ckpt_dir, "checkpoints.json.tmp"), os.path.join(ckpt_dir, "checkpoints.json"))
            writer.add_scalar("eval/episodic_return", ret, step + 1)
            print(
                f"{args.env_id} step {step + 1}: eval return {ret:.1f} "
                f"({(step + 1) / (time.time() - start):.0f} steps/s)",
                flush=True,
            )
    writer.close()
    return index


if __name__ == "__main__":
    main(tyro.cli(Args))
