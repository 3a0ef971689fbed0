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

import functools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

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
    default_transitions: int = 10_000
    """default size of each quality (medium-expert holds twice as many: the union of medium and expert)"""
    replay: Optional["ReplayBuffer"] = None
    """medium-replay as D4RL made it (a training run's replay buffer, segment by segment); None: medium-replay is
    `behaviour('medium-replay', progress, rng)`"""


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


# ---------------------------------------------------------------------------------------------
# MuJoCo locomotion (gymnasium v5): SAC checkpoints shipped in benchmark/policies/<env>/
# ---------------------------------------------------------------------------------------------
POLICY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "policies")


class PolicyError(FileNotFoundError):
    """A shipped policy or a SAC run is missing or unreadable: exit 2, nothing written."""


def load_policies(env_name: str) -> dict:
    """policies.json of a shipped env: the medium and expert checkpoints and the medium-replay sequence."""
    path = os.path.join(POLICY_DIR, env_name, "policies.json")
    if not os.path.exists(path):
        raise PolicyError(
            f"no behaviour policies shipped for '{env_name}' ({path} is missing): train them with "
            f"`python benchmark/sac.py --env-id {MUJOCO[env_name][0]} --checkpoint-dir DIR`, then "
            f"`python benchmark/make_datasets.py --envs {env_name} --ship-from DIR`"
        )
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != 2:
        raise PolicyError(f"'{path}' is from an older builder (no format 2): ship the policies again with --ship-from")
    return meta


def check_policies(env_name: str):
    """Every checkpoint policies.json names loads, so a build fails before it writes anything."""
    meta = load_policies(env_name)
    for c in [meta["medium"], meta["expert"], *meta["replay_sequence"]]:
        load_actor_checked(os.path.join(POLICY_DIR, env_name, c["file"]))


@functools.cache
def load_actor_checked(path: str):
    """A shipped actor (loaded once), or PolicyError naming the file when it is missing or unreadable."""
    from sac import load_actor  # torch is only needed for the MuJoCo recipes

    if not os.path.isfile(path):
        raise PolicyError(f"behaviour policy '{path}' is missing: ship the policies again")
    try:
        return load_actor(path)
    except Exception as e:
        raise PolicyError(f"behaviour policy '{path}' could not be read ({type(e).__name__}: {e}): ship again") from e


def sac_policy(pi, rng: np.random.Generator) -> Policy:
    """Stochastic actions of a SAC actor, as D4RL sampled its behaviour policies (own torch generator)."""
    import torch

    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))

    def act(obs):
        with torch.no_grad():
            mean, log_std = pi(torch.as_tensor(obs, dtype=torch.float32)[None])
            u = mean + log_std.exp() * torch.randn(mean.shape, generator=gen)
            return (torch.tanh(u) * pi.action_scale + pi.action_bias)[0].numpy()

    return act


def uniform_policy(meta: dict, rng: np.random.Generator) -> Policy:
    low, high = np.array(meta["low"], np.float32), np.array(meta["high"], np.float32)
    return lambda obs: rng.uniform(low, high).astype(np.float32)


def mujoco_behaviour(env_name: str) -> Callable[[str, float, np.random.Generator], Policy]:
    """random, medium and expert: uniform actions, or the shipped medium / expert SAC actor."""

    def behaviour(quality: str, progress: float, rng: np.random.Generator) -> Policy:
        meta = load_policies(env_name)
        if quality == "random":
            return uniform_policy(meta, rng)
        return sac_policy(load_actor_checked(os.path.join(POLICY_DIR, env_name, meta[quality]["file"])), rng)

    return behaviour


def replay_plan(meta: dict, total: int) -> list[tuple[Optional[str], int]]:
    """D4RL's medium-replay is the replay buffer of the SAC run up to its medium policy. Here each shipped checkpoint
    of `replay_sequence` stands for the env steps from its own step to the next one's (the first: from learning
    starts; the last: to the medium step), uniform random actions (None) for the learning-starts steps, and each gets
    its share of `total` transitions, in training order."""
    seq, learning_starts, medium = meta["replay_sequence"], meta["learning_starts"], meta["medium"]["step"]
    bounds = np.array([0, learning_starts] + [c["step"] for c in seq[1:]] + [medium], dtype=float)
    keys = [None] + [c["file"] for c in seq]
    counts = np.diff(np.round(total * bounds / medium).astype(int))  # rounded cumulatively: spread evenly, sum exact
    return [(k, int(c)) for k, c in zip(keys, counts) if c > 0]


@dataclass(frozen=True)
class ReplayBuffer:
    """medium-replay of a shipped env: `plan(total)` segments and `policy(segment, rng)` their behaviour."""

    env_name: str

    def plan(self, total: int) -> list[tuple[Optional[str], int]]:
        return replay_plan(load_policies(self.env_name), total)

    def policy(self, segment: Optional[str], rng: np.random.Generator) -> Policy:
        meta = load_policies(self.env_name)
        if segment is None:
            return uniform_policy(meta, rng)
        return sac_policy(load_actor_checked(os.path.join(POLICY_DIR, self.env_name, segment)), rng)


# env name -> (gymnasium id, D4RL random score, D4RL expert score): normalized scores read on the papers' scale
MUJOCO = {
    "hopper": ("Hopper-v5", -20.272305, 3234.3),
    "halfcheetah": ("HalfCheetah-v5", -280.178953, 12135.0),
    "walker2d": ("Walker2d-v5", 1.629008, 4592.3),
}
for _name, (_env_id, _lo, _hi) in MUJOCO.items():
    RECIPES[_name] = Recipe(
        env_id=_env_id,
        ref_min_score=_lo,
        ref_max_score=_hi,
        behaviour=mujoco_behaviour(_name),
        default_transitions=100_000,
        replay=ReplayBuffer(_name),
        description=(
            f"{_env_id}, D4RL recipe rebuilt locally: behaviour policies are checkpoints of one SAC run "
            "(benchmark/sac.py): expert = best deterministic evaluation, medium = the checkpoint whose stochastic "
            "return is nearest D4RL's medium data score, medium-replay = that run's replay buffer up to the medium "
            "checkpoint (uniform random actions for its learning-starts steps, then each checkpoint's rollouts for "
            "its share of the env steps, in training order), medium-expert = union of a medium and an expert set; "
            "stochastic actions. Reference scores are "
            "D4RL's random/expert returns, so normalized scores read on the D4RL scale (the envs are v5, "
            "not D4RL's v2, so the numbers are comparable in scale, not identical)."
        ),
    )


# D4RL v2's medium datasets, normalized score of the data (mean over episodes): what `medium` is picked to match
D4RL_MEDIUM_DATA = {"hopper": 44.3, "halfcheetah": 40.7, "walker2d": 62.1}


def ship_policies(env_name: str, train_dir: str, max_replay: int = 16) -> dict:
    """From a benchmark/sac.py run: expert = the best deterministic evaluation; medium = the checkpoint whose
    stochastic return (what a dataset scores) is nearest D4RL's medium data score, among those up to the first that
    reaches it (so a longer run keeps its medium: D4RL's medium policy was stopped early too; the 3 nearest by the
    run's own evaluation are re-measured on 10 episodes); the medium-replay sequence = every checkpoint before medium,
    thinned to at most `max_replay` evenly spaced ones. Copied into POLICY_DIR/<env>/ with policies.json, atomically."""
    import sac

    index = os.path.join(train_dir, "checkpoints.json")
    if not os.path.isfile(index):
        raise PolicyError(f"--ship-from: '{index}' is missing: point it at a benchmark/sac.py --checkpoint-dir")
    try:
        with open(index) as f:
            run = json.load(f)
        ckpts, args = run["checkpoints"], run["args"]
        assert all("eval_return_stochastic" in c for c in ckpts), "made by an older sac.py (no stochastic returns)"
    except Exception as e:
        raise PolicyError(f"--ship-from: '{index}' is not a benchmark/sac.py index ({type(e).__name__}: {e})") from e
    env_id, lo, hi = MUJOCO[env_name]
    actors = {}
    for c in ckpts:  # every checkpoint must load before anything is written
        actors[c["file"]] = load_actor_checked(os.path.join(train_dir, c["file"]))
    best = max(range(len(ckpts)), key=lambda i: ckpts[i]["eval_return"])
    target = lo + D4RL_MEDIUM_DATA[env_name] / 100 * (hi - lo)
    trained = [i for i in range(len(ckpts)) if ckpts[i]["step"] > args["learning_starts"]]
    reached = [i for i in trained if ckpts[i]["eval_return_stochastic"] >= target]
    trained = [i for i in trained if not reached or i <= reached[0]]
    if not trained:
        raise PolicyError(f"--ship-from: '{index}' has no checkpoint after learning starts; train longer")
    candidates = sorted(trained, key=lambda i: abs(ckpts[i]["eval_return_stochastic"] - target))[:3]
    remeasured = {
        i: sac.evaluate(actors[ckpts[i]["file"]], env_id, 10, seed=20_000, device="cpu", stochastic=True)
        for i in candidates
    }
    medium = min(candidates, key=lambda i: (abs(remeasured[i] - target), i))
    replay = [i for i in range(medium) if ckpts[i]["step"] >= args["learning_starts"]]
    replay = [
        replay[j] for j in np.unique(np.linspace(0, len(replay) - 1, min(max_replay, len(replay))).round().astype(int))
    ]
    out = os.path.join(POLICY_DIR, env_name)
    os.makedirs(POLICY_DIR, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{env_name}-", dir=POLICY_DIR)
    try:
        for i in {*replay, medium, best}:
            shutil.copy(os.path.join(train_dir, ckpts[i]["file"]), tmp)
        first = actors[ckpts[best]["file"]]
        meta = dict(
            format=2,
            env_id=run["env_id"],
            sac_seed=run["seed"],
            steps_trained=ckpts[-1]["step"],
            learning_starts=args["learning_starts"],
            low=(first.action_bias - first.action_scale).tolist(),
            high=(first.action_bias + first.action_scale).tolist(),
            expert=ckpts[best],
            medium=dict(ckpts[medium], stochastic_return_10=remeasured[medium]),
            replay_sequence=[ckpts[i] for i in replay],
            # returns are exact only where the float kernels are the same (see tests/test_shipped_policies.py)
            reproduced=[dict(kernels(), medium=ckpts[medium]["eval_return"], expert=ckpts[best]["eval_return"])],
            # no schedule depends on the run's length, so a run stopped early is the prefix of a longer one
            command=f"python benchmark/sac.py --env-id {run['env_id']} --seed {run['seed']} "
            f"--total-timesteps {ckpts[-1]['step']} --checkpoint-freq {args['checkpoint_freq']} --checkpoint-dir DIR",
        )
        with open(os.path.join(tmp, "policies.json"), "w") as f:
            json.dump(meta, f, indent=1)
        os.chmod(tmp, 0o755)  # mkdtemp's folder is private
        if os.path.exists(out):
            os.replace(out, tmp + ".old")
        os.replace(tmp, out)
        shutil.rmtree(tmp + ".old", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_actor_checked.cache_clear()
    return meta


def kernels() -> dict:
    """What decides the float kernels, so the returns' exactness: torch's CPU capability and the vector-ISA flags
    (the CPU's name string is not enough: one VM string covers several CPUs), MuJoCo's and torch's versions."""
    import mujoco
    import torch

    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(ln for ln in f if ln.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        pass
    isa = sorted(flags & {"sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "amx_tile"})
    return dict(
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        isa="+".join(isa),
        mujoco=mujoco.__version__,
        torch=torch.__version__,
        cpu=cpu_model(),
    )


def cpu_model() -> str:
    """The CPU's model name (Linux), else platform's word for it: returns are exact only on the same kind."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def episode_scores(ds) -> tuple[np.ndarray, np.ndarray]:
    """Return and normalized score ×100 of every episode of a Minari dataset, in collection order."""
    returns = np.array([ep.rewards.sum() for ep in ds.iterate_episodes()])
    return returns, 100 * minari.get_normalized_score(ds, returns)


def describe(did: str) -> str:
    """Size and normalized return (×100, mean ± std over episodes) of a local dataset, for the build log."""
    ds = minari.load_dataset(did)
    returns, score = episode_scores(ds)
    return (
        f"{ds.total_episodes} episodes, {ds.total_steps} transitions, return {returns.mean():.1f}, "
        f"normalized {score.mean():.1f} ± {score.std():.1f}"
    )


def dataset_id(env: str, quality: str) -> str:
    return f"o2o/{env}/{quality}-v0"


# ---------------------------------------------------------------------------------------------
# Rollouts and dataset creation
# ---------------------------------------------------------------------------------------------
def rollout(env: gym.Env, policy: Policy, seed: int, episode_id: int, max_steps: Optional[int] = None) -> EpisodeBuffer:
    """One episode, recorded with N+1 observations and gymnasium's terminated/truncated flags; cut after `max_steps`
    steps (marked truncated, as a replay buffer's last episode of a policy is)."""
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
        truncs.append(bool(truncated) or (not terminated and len(rewards) == max_steps))
        done = terms[-1] or truncs[-1]
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


def collect(
    recipe: Recipe, quality: str, seed: int, episodes: Optional[int] = None, transitions: Optional[int] = None
) -> list[EpisodeBuffer]:
    """The episodes of one quality (see `collect_segments`)."""
    return [buf for _, buf in collect_segments(recipe, quality, seed, episodes, transitions)]


def collect_segments(
    recipe: Recipe, quality: str, seed: int, episodes: Optional[int] = None, transitions: Optional[int] = None
) -> list[tuple[Optional[str], EpisodeBuffer]]:
    """(behaviour segment, episode) pairs of one quality: exactly `episodes` episodes, or whole episodes until
    `transitions` steps (default: the recipe's size). medium-expert is a medium set plus an expert set of that size.
    With a replay plan, medium-replay follows it segment by segment: exact transition counts (a segment's last
    episode is cut, truncated), or the episodes shared out in proportion."""
    target = transitions or recipe.default_transitions
    env = gym.make(recipe.env_id)
    env.action_space.seed(seed)
    out: list[tuple[Optional[str], EpisodeBuffer]] = []
    if quality == "medium-replay" and recipe.replay is not None:
        rng = np.random.default_rng([seed, QUALITIES.index(quality), 0])
        for segment, n in recipe.replay.plan(episodes or target):
            i = steps = 0
            while (i < n) if episodes else (steps < n):
                policy = recipe.replay.policy(segment, rng)
                buf = rollout(env, policy, seed * 1_000_003 + len(out), len(out), None if episodes else n - steps)
                out.append((segment, buf))
                i, steps = i + 1, steps + len(buf.rewards)
        env.close()
        return out
    parts = ("medium", "expert") if quality == "medium-expert" else (quality,)
    for k, part in enumerate(parts):
        rng = np.random.default_rng([seed, QUALITIES.index(part), k])
        i = steps = 0
        while (i < episodes) if episodes else (steps < target):
            progress = i / max(episodes - 1, 1) if episodes else steps / target
            policy = recipe.behaviour(part, progress, rng)
            out.append((part, rollout(env, policy, seed=seed * 1_000_003 + 10_000 * k + i, episode_id=len(out))))
            i, steps = i + 1, steps + len(out[-1][1].rewards)
    env.close()
    return out


def build(
    env_name: str,
    quality: str,
    seed: int,
    overwrite: bool,
    episodes: Optional[int] = None,
    transitions: Optional[int] = None,
) -> str:
    """Build one dataset; returns 'built', 'skipped' or raises. Atomic: a temporary Minari root is
    filled first, then its folder is moved into place."""
    recipe, did = RECIPES[env_name], dataset_id(env_name, quality)
    root = str(minari.storage.get_dataset_path())  # honours MINARI_DATASETS_PATH
    final_dir = os.path.join(root, *did.split("/"))
    if os.path.exists(final_dir) and not overwrite:
        return "skipped"
    buffers = collect(recipe, quality, seed, episodes, transitions)
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
    envs: list[str] = field(default_factory=lambda: ["pendulum"])
    """environments to build (keys of RECIPES: pendulum, hopper, halfcheetah, walker2d)"""
    qualities: list[str] = field(default_factory=lambda: list(QUALITIES))
    """dataset qualities to build"""
    transitions: Optional[int] = None
    """transitions per quality, in whole episodes (default: 10k for pendulum, 100k for MuJoCo; D4RL used 1M;
    medium-expert holds twice as many)"""
    episodes: Optional[int] = None
    """exactly this many episodes per quality instead of --transitions"""
    seed: int = 0
    """seed of the rollouts"""
    overwrite: bool = False
    """rebuild datasets that already exist (default: skip them)"""
    ship_from: Optional[str] = None
    """instead of building: pick medium/expert checkpoints from this benchmark/sac.py checkpoint directory and
    ship them into benchmark/policies/<env>/ (needs exactly one MuJoCo env in --envs)"""


def main(args: Args) -> int:
    bad = [e for e in args.envs if e not in RECIPES] + [q for q in args.qualities if q not in QUALITIES]
    if bad:
        print(
            f"error: unknown env or quality {bad}; envs: {list(RECIPES)}, qualities: {list(QUALITIES)}", file=sys.stderr
        )
        return 2
    if (args.episodes is not None and args.episodes < 1) or (args.transitions is not None and args.transitions < 1):
        print("error: --episodes and --transitions must be at least 1", file=sys.stderr)
        return 2
    if args.ship_from:
        if len(args.envs) != 1 or args.envs[0] not in MUJOCO:
            print(f"error: --ship-from needs exactly one of {list(MUJOCO)} in --envs", file=sys.stderr)
            return 2
        try:
            meta = ship_policies(args.envs[0], args.ship_from)
        except PolicyError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(json.dumps({k: meta[k] for k in ("env_id", "steps_trained", "medium", "expert")}, indent=1))
        return 0
    for env_name in args.envs:
        if env_name in MUJOCO:
            try:
                check_policies(env_name)
            except PolicyError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        for quality in args.qualities:
            t0 = time.time()
            status = build(env_name, quality, args.seed, args.overwrite, args.episodes, args.transitions)
            did = dataset_id(env_name, quality)
            print(f"{did}: {status} ({time.time() - t0:.1f}s) {describe(did)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
