"""Build D4RL-style Minari datasets on the local disk, with no network.

    python benchmark/make_datasets.py                      # every env and quality, default sizes
    python benchmark/make_datasets.py --envs pendulum --qualities medium expert --episodes 20

Each dataset is `o2o/<env>/<quality>-v0` under $MINARI_DATASETS_PATH (default ~/.minari/datasets):
- random         uniform random actions
- medium         a clearly sub-expert behaviour policy (for Pendulum: the expert controller, but a
                 uniform random action with probability 0.6; normalized score ≈ 50)
- medium-replay  episodes whose behaviour improves from random to medium, standing in for the replay
                 buffer of a learning run that stopped at medium
- expert         the expert behaviour policy (with a little action noise, like a stochastic SAC actor)
- medium-expert  the union of a medium and an expert dataset of the same size (2× episodes)

Reference scores (`ref_min_score` = random policy, `ref_max_score` = expert policy) are stored, so
`minari.get_normalized_score` works, and an evaluation env is stored for
`recover_environment(eval_env=True)`. An existing dataset is skipped unless `--overwrite`; a dataset
is built in a temporary folder and moved into place only when complete, so an interrupted build
never leaves a half-written dataset behind.

New environments slot in as another `Recipe` in `RECIPES`.
"""

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import gymnasium as gym
import minari
import numpy as np
import tyro
from minari.data_collector.episode_buffer import EpisodeBuffer

QUALITIES = ("random", "medium", "medium-replay", "expert", "medium-expert")
Policy = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Recipe:
    """How to build the datasets of one environment."""

    env_id: str
    """gymnasium id of the collection and evaluation env"""
    ref_min_score: float
    """mean return of the uniform random policy"""
    ref_max_score: float
    """mean return of the expert policy"""
    behaviour: Callable[[str, float, np.random.Generator], Policy]
    """(quality, progress in [0, 1] through the dataset, rng) -> policy; progress drives medium-replay"""
    description: str
    """what the behaviour policies are, stored in each dataset"""


# ---------------------------------------------------------------------------------------------
# Pendulum-v1: a scripted controller, no training needed
# ---------------------------------------------------------------------------------------------
def pendulum_expert(obs: np.ndarray) -> np.ndarray:
    """Energy-based swing-up plus a PD stabilizer near the top.

    Pendulum-v1's dynamics are θ'' = 15 sin θ + 3u (θ = 0 upright), so E = θ'²/2 + 15 cos θ changes
    as dE/dt = 3uθ'. Far from the top, pump energy towards E_top = 15; near it (cos θ > 0.95, where
    the torque limit of 2 can still hold the pendulum) a PD law stabilizes it."""
    c, s, thdot = (float(x) for x in obs)
    theta = np.arctan2(s, c)
    if c > 0.95:
        u = -(10.0 * theta + 2.0 * thdot)
    else:
        u = 2.0 * (15.0 - (0.5 * thdot**2 + 15.0 * c)) * thdot
        if abs(thdot) < 1e-3:  # at rest at the bottom: kick it
            u = 2.0
    return np.clip(np.array([u], dtype=np.float32), -2.0, 2.0)


PENDULUM_MEDIUM_EPSILON = 0.6  # probability of a random action in `medium`: normalized score ≈ 50


def pendulum_behaviour(quality: str, progress: float, rng: np.random.Generator) -> Policy:
    random_action = lambda: rng.uniform(-2.0, 2.0, size=1).astype(np.float32)  # noqa: E731
    if quality == "random":
        return lambda obs: random_action()
    if quality == "expert":
        return lambda obs: np.clip(pendulum_expert(obs) + rng.normal(0, 0.1, 1), -2, 2).astype(np.float32)
    if quality == "medium":
        eps = PENDULUM_MEDIUM_EPSILON
    elif quality == "medium-replay":  # the behaviour improves from random to medium over the dataset
        eps = 1.0 - (1.0 - PENDULUM_MEDIUM_EPSILON) * progress
    else:
        raise ValueError(f"unknown quality {quality!r}")
    return lambda obs: random_action() if rng.random() < eps else pendulum_expert(obs)


RECIPES: dict[str, Recipe] = {
    "pendulum": Recipe(
        env_id="Pendulum-v1",
        # measured: 100 episodes each, seeds 10000..10099 (tests/test_datasets.py re-measures them)
        ref_min_score=-1166.44,
        ref_max_score=-143.35,
        behaviour=pendulum_behaviour,
        description=(
            "Pendulum-v1 (200-step episodes). Behaviour: a scripted energy-based swing-up + PD stabilizer "
            "(expert, N(0, 0.1) action noise); medium takes a uniform random action with probability 0.6; "
            "medium-replay anneals that probability from 1 to 0.6 over the episodes; medium-expert is the "
            "union of a medium and an expert set. Reference scores: random policy and noise-free controller."
        ),
    ),
}


def dataset_id(env: str, quality: str) -> str:
    return f"o2o/{env}/{quality}-v0"


# ---------------------------------------------------------------------------------------------
# Rollouts and dataset creation
# ---------------------------------------------------------------------------------------------
def rollout(env: gym.Env, policy: Policy, seed: int, episode_id: int) -> EpisodeBuffer:
    """One episode, recorded with N+1 observations and gymnasium's terminated/truncated flags."""
    obs, _ = env.reset(seed=seed)
    observations, actions, rewards, terms, truncs = [obs], [], [], [], []
    done = False
    while not done:
        action = policy(obs)
        obs, r, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(float(r))
        terms.append(bool(terminated))
        truncs.append(bool(truncated))
        done = terminated or truncated
    return EpisodeBuffer(
        id=episode_id,
        seed=seed,
        observations=np.array(observations),
        actions=np.array(actions),
        rewards=rewards,
        terminations=terms,
        truncations=truncs,
        infos={},
    )


def collect(recipe: Recipe, quality: str, episodes: int, seed: int) -> list[EpisodeBuffer]:
    """`episodes` episodes of one quality (medium-expert: `episodes` medium + `episodes` expert)."""
    parts = ("medium", "expert") if quality == "medium-expert" else (quality,)
    env = gym.make(recipe.env_id)
    env.action_space.seed(seed)
    buffers = []
    for k, part in enumerate(parts):
        rng = np.random.default_rng([seed, QUALITIES.index(part), k])
        for i in range(episodes):
            policy = recipe.behaviour(part, i / max(episodes - 1, 1), rng)
            buffers.append(rollout(env, policy, seed=seed * 1_000_003 + 10_000 * k + i, episode_id=len(buffers)))
    env.close()
    return buffers


def build(env_name: str, quality: str, episodes: int, seed: int, overwrite: bool) -> str:
    """Build one dataset; returns 'built', 'skipped' or raises. Atomic: a temporary Minari root is
    filled first, then its folder is moved into place."""
    recipe, did = RECIPES[env_name], dataset_id(env_name, quality)
    root = str(minari.storage.get_dataset_path())  # honours MINARI_DATASETS_PATH
    final_dir = os.path.join(root, *did.split("/"))
    if os.path.exists(final_dir) and not overwrite:
        return "skipped"
    buffers = collect(recipe, quality, episodes, seed)
    tmp_root = tempfile.mkdtemp(prefix=".o2o-build-", dir=root)
    old_env = os.environ.get("MINARI_DATASETS_PATH")
    try:
        os.environ["MINARI_DATASETS_PATH"] = tmp_root
        minari.create_dataset_from_buffers(
            dataset_id=did,
            buffer=buffers,
            env=recipe.env_id,
            eval_env=recipe.env_id,
            algorithm_name=f"o2o-{quality}-behaviour",
            author="o2o project",
            author_email="o2o@localhost",
            code_permalink="benchmark/make_datasets.py",
            ref_min_score=recipe.ref_min_score,
            ref_max_score=recipe.ref_max_score,
            description=recipe.description,
        )
        os.makedirs(os.path.dirname(final_dir), exist_ok=True)
        if os.path.exists(final_dir):
            trash = final_dir + ".old"
            os.replace(final_dir, trash)
            os.replace(os.path.join(tmp_root, *did.split("/")), final_dir)
            shutil.rmtree(trash)
        else:
            os.replace(os.path.join(tmp_root, *did.split("/")), final_dir)
    finally:
        if old_env is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old_env
        shutil.rmtree(tmp_root, ignore_errors=True)
    return "built"


@dataclass
class Args:
    envs: list[str] = field(default_factory=lambda: list(RECIPES))
    """environments to build (keys of RECIPES)"""
    qualities: list[str] = field(default_factory=lambda: list(QUALITIES))
    """dataset qualities to build"""
    episodes: int = 50
    """episodes per quality (medium-expert holds twice as many: the union of medium and expert)"""
    seed: int = 0
    """seed of the rollouts"""
    overwrite: bool = False
    """rebuild datasets that already exist (default: skip them)"""


def main(args: Args) -> int:
    bad = [e for e in args.envs if e not in RECIPES] + [q for q in args.qualities if q not in QUALITIES]
    if bad:
        print(
            f"error: unknown env or quality {bad}; envs: {list(RECIPES)}, qualities: {list(QUALITIES)}", file=sys.stderr
        )
        return 2
    if args.episodes < 1:
        print("error: --episodes must be at least 1", file=sys.stderr)
        return 2
    for env_name in args.envs:
        for quality in args.qualities:
            t0 = time.time()
            status = build(env_name, quality, args.episodes, args.seed, args.overwrite)
            print(f"{dataset_id(env_name, quality)}: {status} ({time.time() - t0:.1f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
