"""Every algorithm file follows the README's conventions for bad input: an unknown, corrupted,
mismatched or non-finite dataset is refused with a clear message, a non-zero exit, and no run
directory left behind. Each file carries its own copy of the loading code, so each is checked."""

import ast
import importlib
import inspect
import re
import shutil
from pathlib import Path

import minari
import numpy as np
import pytest
import torch
from gymnasium.spaces import Box
from minari.data_collector.episode_buffer import EpisodeBuffer

from conftest import ROOT, run_algo, run_cli

ALGORITHMS = sorted(p.stem for p in (ROOT / "algorithms").glob("*.py") if not p.stem.startswith("_"))


def test_the_three_algorithms_exist():
    assert ALGORITHMS == ["famo2o", "off2on", "uni_o4"]


def _episode(obs_dim: int, n: int = 20, reward=-1.0) -> EpisodeBuffer:
    rng = np.random.default_rng(0)
    return EpisodeBuffer(
        id=0,
        seed=0,
        observations=rng.normal(size=(n + 1, obs_dim)).astype(np.float32),
        actions=rng.uniform(-2, 2, (n, 1)).astype(np.float32),
        rewards=[reward] * n,
        terminations=[False] * n,
        truncations=[False] * (n - 1) + [True],
        infos={},
    )


def _make(did: str, obs_dim: int, reward=-1.0):
    minari.create_dataset_from_buffers(
        did,
        [_episode(obs_dim, reward=reward)],
        env="Pendulum-v1",
        observation_space=Box(-np.inf, np.inf, (obs_dim,), np.float32),
        action_space=Box(-2, 2, (1,), np.float32),
        algorithm_name="test",
        author="t",
        author_email="t@t",
        code_permalink="t",
        description="t",
    )


@pytest.fixture(scope="module")
def bad_root(minari_root, tmp_path_factory):
    """A Minari root with a corrupted copy of a pendulum dataset, one whose spaces do not match its
    environment, and one holding NaN rewards."""
    root = tmp_path_factory.mktemp("bad_minari")
    src = Path(minari_root, "o2o", "pendulum", "medium-v0")
    dst = root / "o2o" / "pendulum" / "corrupt-v0"
    shutil.copytree(src, dst)
    meta = (dst / "data" / "metadata.json").read_text().replace("o2o/pendulum/medium-v0", "o2o/pendulum/corrupt-v0")
    (dst / "data" / "metadata.json").write_text(meta)
    (dst / "data" / "main_data.hdf5").write_bytes(b"not an hdf5 file")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        _make("test/pendulum/mismatch-v0", obs_dim=4)
        _make("test/pendulum/nan-v0", obs_dim=3, reward=float("nan"))
    return root


# one episode (30 of 50) of a copy of pendulum medium broken in one way: (name, field, how) -> the message must name
# the dataset, the episode and the field
BROKEN = {
    "cut-actions": ("actions", lambda g: _replace(g, "actions", g["actions"][:5])),
    "cut-observations": ("observations", lambda g: _replace(g, "observations", g["observations"][:50])),
    "cut-rewards": ("rewards", lambda g: _replace(g, "rewards", g["rewards"][:-1])),
    "cut-terminations": ("terminations", lambda g: _replace(g, "terminations", g["terminations"][:-3])),
    "cut-truncations": ("truncations", lambda g: _replace(g, "truncations", g["truncations"][:100])),
    "wide-actions": ("actions", lambda g: _replace(g, "actions", np.repeat(g["actions"][:], 2, axis=1))),
    "narrow-observations": ("observations", lambda g: _replace(g, "observations", g["observations"][:, :2])),
    "unended": ("truncations", lambda g: _replace(g, "truncations", np.zeros(len(g["truncations"]), bool))),
    "early-termination": ("terminations", lambda g: _set(g, "terminations", 50, True)),
}


def _replace(group, key, value):
    value = np.asarray(value)
    del group[key]
    group.create_dataset(key, data=value)


def _set(group, key, index, value):
    data = group[key][:]
    data[index] = value
    _replace(group, key, data)


@pytest.fixture(scope="module")
def broken_root(minari_root, tmp_path_factory):
    """A Minari root with one copy of pendulum medium per BROKEN entry, episode 30 broken as it says."""
    import h5py

    root = tmp_path_factory.mktemp("broken_minari")
    src = Path(minari_root, "o2o", "pendulum", "medium-v0")
    for name, (_, breaks) in BROKEN.items():
        dst = root / "o2o" / "pendulum" / f"{name}-v0"
        shutil.copytree(src, dst)
        meta = (dst / "data" / "metadata.json").read_text()
        (dst / "data" / "metadata.json").write_text(meta.replace("o2o/pendulum/medium-v0", f"o2o/pendulum/{name}-v0"))
        with h5py.File(dst / "data" / "main_data.hdf5", "r+") as f:
            breaks(f["episode_30"])
    return root


@pytest.mark.parametrize("name", BROKEN)
def test_broken_episode_is_named_with_its_field(algo, name, broken_root, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(broken_root))
    field = BROKEN[name][0]
    with pytest.raises(algo.DatasetError) as e:
        algo.dataset_to_transitions(algo.load_minari_dataset(f"o2o/pendulum/{name}-v0"))
    msg = str(e.value)
    assert f"o2o/pendulum/{name}-v0" in msg and "episode 30" in msg and f"'{field}'" in msg, msg


@pytest.mark.parametrize("script", ALGORITHMS)
@pytest.mark.parametrize("name", ["cut-actions", "cut-observations"])
def test_cli_broken_episode_exits_2_and_writes_nothing(script, name, broken_root, tmp_path):
    run_dir = tmp_path / "run"
    dataset = f"o2o/pendulum/{name}-v0"
    proc = run_cli(f"algorithms/{script}.py", "--dataset-id", dataset, "--run-dir", str(run_dir),
                   minari_root=broken_root, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert dataset in proc.stderr and "episode 30" in proc.stderr and "Traceback" not in proc.stderr
    assert not run_dir.exists()


@pytest.fixture(params=ALGORITHMS)
def algo(request):
    return importlib.import_module(request.param)


def test_unknown_dataset_names_it_and_says_what_to_do(algo, minari_root):
    with pytest.raises(algo.DatasetError) as e:
        algo.load_minari_dataset("o2o/pendulum/nonexistent-v0")
    msg = str(e.value)
    assert "o2o/pendulum/nonexistent-v0" in msg and "o2o/pendulum/medium-v0" in msg
    assert "make_datasets.py" in msg and "--download" in msg


def test_download_without_a_network_says_so(algo, minari_root, monkeypatch):
    """The network is cut in-process, so the test means the same on a machine that has one."""

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable (patched by the test)")

    monkeypatch.setattr(algo.socket, "create_connection", no_network)
    monkeypatch.setattr(algo.minari, "download_dataset", lambda *a, **k: pytest.fail("must not try to download"))
    with pytest.raises(algo.DatasetError) as e:
        algo.load_minari_dataset("mujoco/hopper/medium-v0", download=True)
    msg = str(e.value)
    assert "mujoco/hopper/medium-v0" in msg and "unreachable" in msg and "o2o/pendulum/medium-v0" in msg


def test_failing_download_says_what_failed(algo, minari_root, monkeypatch):
    class Reachable:
        def close(self):
            pass

    def failing_download(dataset_id, *args, **kwargs):
        raise ValueError(f"no such remote dataset {dataset_id} (patched by the test)")

    monkeypatch.setattr(algo.socket, "create_connection", lambda *a, **k: Reachable())
    monkeypatch.setattr(algo.minari, "download_dataset", failing_download)
    with pytest.raises(algo.DatasetError) as e:
        algo.load_minari_dataset("mujoco/hopper/nonexistent-v0", download=True)
    msg = str(e.value)
    assert "could not download 'mujoco/hopper/nonexistent-v0'" in msg and "no such remote dataset" in msg
    assert "minari list remote" in msg


def test_corrupted_dataset(algo, bad_root, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(bad_root))
    with pytest.raises(algo.DatasetError, match="corrupted"):
        algo.dataset_to_transitions(algo.load_minari_dataset("o2o/pendulum/corrupt-v0"))


def test_mismatched_env(algo, bad_root, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(bad_root))
    with pytest.raises(algo.DatasetError, match="does not match"):
        algo.make_eval_env(algo.load_minari_dataset("test/pendulum/mismatch-v0"))


def test_nan_dataset(algo, bad_root, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(bad_root))
    with pytest.raises(algo.DatasetError, match="NaN"):
        algo.dataset_to_transitions(algo.load_minari_dataset("test/pendulum/nan-v0"))


@pytest.mark.parametrize("script", ALGORITHMS)
@pytest.mark.parametrize(
    "dataset, flags, expected",
    [
        ("o2o/pendulum/nonexistent-v0", [], "is not on the local disk"),
        ("test/pendulum/mismatch-v0", [], "does not match"),
        ("test/pendulum/nan-v0", [], "NaN"),
        ("o2o/pendulum/corrupt-v0", [], "corrupted"),
    ],
)
def test_cli_bad_dataset_exits_2_and_writes_nothing(script, dataset, flags, expected, bad_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        f"algorithms/{script}.py",
        "--dataset-id",
        dataset,
        *flags,
        "--run-dir",
        str(run_dir),
        minari_root=bad_root,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expected in proc.stderr and dataset in proc.stderr
    assert not run_dir.exists()


def test_dict_and_tuple_observations_flatten_as_gymnasium_does(algo):
    from gymnasium import spaces

    space = spaces.Dict(
        {
            "pos": Box(-1, 1, (2,)),
            "grid": Box(-1, 1, (2, 2)),
            "pair": spaces.Tuple((Box(-1, 1, (1,)), Box(-1, 1, (3,)))),
        }
    )
    space.seed(0)
    steps = [space.sample() for _ in range(4)]
    # an episode as Minari stores it: every leaf stacked over time
    stacked = {
        "pos": np.stack([s["pos"] for s in steps]),
        "grid": np.stack([s["grid"] for s in steps]),
        "pair": tuple(np.stack([s["pair"][i] for s in steps]) for i in range(2)),
    }
    expected = np.stack([spaces.flatten(space, s) for s in steps])  # what FlattenObservation gives the agent online
    np.testing.assert_array_equal(algo._flatten_obs(space, stacked), expected)
    with pytest.raises(algo.DatasetError, match="not supported"):
        algo._flatten_obs(spaces.Discrete(3), np.zeros(4))


def test_transitions_follow_the_rule(algo, tmp_path, monkeypatch):
    """Two episodes, one ended by a termination, one by a truncation: s' is the next observation, and only the
    termination cuts the bootstrap."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    obs = [np.arange(4 * 3, dtype=np.float32).reshape(4, 3), 100 + np.arange(5 * 3, dtype=np.float32).reshape(5, 3)]
    episodes = [
        EpisodeBuffer(id=0, seed=0, observations=obs[0], actions=np.full((3, 1), 0.5, np.float32),
                      rewards=[1.0, 2.0, 3.0], terminations=[False, False, True], truncations=[False] * 3, infos={}),
        EpisodeBuffer(id=1, seed=1, observations=obs[1], actions=np.full((4, 1), -0.5, np.float32),
                      rewards=[4.0, 5.0, 6.0, 7.0], terminations=[False] * 4, truncations=[False] * 3 + [True],
                      infos={}),
    ]  # fmt: skip
    minari.create_dataset_from_buffers(
        "test/pendulum/rule-v0", episodes, env="Pendulum-v1", observation_space=Box(-np.inf, np.inf, (3,), np.float32),
        action_space=Box(-2, 2, (1,), np.float32), algorithm_name="t", author="t", author_email="t@t",
        code_permalink="t", description="t",
    )  # fmt: skip
    data = algo.dataset_to_transitions(minari.load_dataset("test/pendulum/rule-v0"))
    np.testing.assert_array_equal(data["observations"], np.concatenate([obs[0][:-1], obs[1][:-1]]))
    np.testing.assert_array_equal(data["next_observations"], np.concatenate([obs[0][1:], obs[1][1:]]))
    np.testing.assert_array_equal(data["rewards"], [1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(data["actions"][:, 0], [0.5] * 3 + [-0.5] * 4)
    np.testing.assert_array_equal(data["terminals"], [0, 0, 1, 0, 0, 0, 0])  # the truncation does not cut
    np.testing.assert_array_equal(data["episode_ends"], [0, 0, 1, 0, 0, 0, 1])


@pytest.mark.parametrize("script", ALGORITHMS)
def test_same_seed_gives_identical_evaluations(script, minari_root, tmp_path):
    """Two runs with one seed, offline then online at the smoke preset's budget, evaluate identically."""
    import shlex

    import run

    flags = ["--dataset-id", "o2o/pendulum/medium-replay-v0", "--seed", "3", *shlex.split(run.SMOKE_BUDGET[script])]
    a, b = (run_algo(f"algorithms/{script}.py", *flags, minari_root=minari_root, run_dir=tmp_path / k) for k in "ab")
    scores = [[(e["phase"], e["step"], e["mean_return"]) for e in s["evaluations"]] for s in (a, b)]
    assert scores[0] == scores[1] and {p for p, _, _ in scores[0]} == {"offline", "online"}


# ---- paper configs: the CLI harness (identical in the three files); each file's tests check its configs' contents
def test_paper_config_cli_flags_override_and_no_config_keeps_the_defaults(algo):
    args = algo.paper_config_cli(["paper-hopper-medium", "--seed", "3"])
    cfg = algo.PAPER_CONFIGS["paper-hopper-medium"]
    assert args.seed == 3 and args.dataset_id == "o2o/hopper/medium-v0" and args.offline_steps == cfg["offline_steps"]
    assert algo.paper_config_cli([]) == algo.Args()
    assert algo.paper_config_cli(["--seed", "2"]) == algo.Args(seed=2)  # no config: exactly today's command line


def test_paper_config_cli_rejects_unknown_names(algo, capsys):
    with pytest.raises(SystemExit) as exc:
        algo.paper_config_cli(["paper-hopper-expertish"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "unknown config 'paper-hopper-expertish'" in err and "paper-hopper-medium" in err


def test_paper_config_download_maps_to_minaris_remote_id(algo, capsys):
    for env in ("hopper", "halfcheetah", "walker2d"):
        args = algo.paper_config_cli([f"paper-{env}-medium", "--download"])
        assert args.dataset_id == f"mujoco/{env}/medium-v0" and args.download
    assert algo.paper_config_cli(["paper-hopper-medium"]).dataset_id == "o2o/hopper/medium-v0"  # local without it
    # an explicit --dataset-id is the user's, kept as given
    args = algo.paper_config_cli(["paper-hopper-medium", "--download", "--dataset-id", "o2o/pendulum/medium-v0"])
    assert args.dataset_id == "o2o/pendulum/medium-v0"
    for quality in ("medium-replay", "medium-expert"):
        with pytest.raises(SystemExit) as exc:
            algo.paper_config_cli([f"paper-hopper-{quality}", "--download"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "no remote copy" in err and "make_datasets.py" in err


@pytest.mark.parametrize("script", ALGORITHMS)
def test_help_lists_the_paper_configs(script, minari_root):
    module = importlib.import_module(script)
    proc = run_cli(f"algorithms/{script}.py", "--help", minari_root=minari_root)
    assert proc.returncode == 0
    assert all(f"{k}: {v['dataset_id']}" in proc.stdout for k, v in module.PAPER_CONFIGS.items())


# ---- one skeleton for the three files (README "Conventions")
def _source(algo: str) -> list[str]:
    return (ROOT / "algorithms" / f"{algo}.py").read_text().splitlines()


def _harness(lines: list[str]) -> list[str]:
    start = next(i for i, line in enumerate(lines) if line.startswith("# HARNESS"))
    end = lines.index('if __name__ == "__main__":')
    return lines[start - 1 : end]  # from the banner's top rule


def test_the_harness_block_is_identical_in_the_three_files():
    blocks = {a: _harness(_source(a)) for a in ALGORITHMS}
    assert len(blocks["famo2o"]) > 200  # the whole block, not a stray banner
    for algo in ("off2on", "uni_o4"):
        assert blocks[algo] == blocks["famo2o"], f"{algo}.py's harness differs from famo2o.py's"


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_the_file_reads_algorithm_first(algo):
    """Header, Args, the networks, the update, main, then the harness: the algorithm before the plumbing."""
    lines = _source(algo)

    def first(prefix: str) -> int:
        return next(i for i, line in enumerate(lines) if line.startswith(prefix))

    args, main, harness = first("class Args"), first("def main("), first("# HARNESS")
    network = next(i for i, line in enumerate(lines) if line.startswith("class ") and "(nn.Module)" in line)
    assert args < network < main < harness
    helpers = ("def load_minari_dataset", "class RunLogger", "def evaluate(", "def fail(", "def paper_config_cli")
    assert all(first(h) > harness for h in helpers)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_no_reference_outside_the_repository(algo):
    text = (ROOT / "algorithms" / f"{algo}.py").read_text()
    for pattern in ("../shared", "shared/research", "spec §", "Spec:"):
        assert pattern not in text, f"{algo}.py points at {pattern!r}, which a user who copies the file does not have"


def test_the_shared_helpers_have_one_form():
    """One Polyak helper (same text) and one VectorizedLinear signature (in_features, out_features, n) everywhere."""
    mods = {a: importlib.import_module(a) for a in ALGORITHMS}
    sources = {a: inspect.getsource(m.soft_update) for a, m in mods.items()}
    assert len(set(sources.values())) == 1, sources
    for algo, m in mods.items():
        params = list(inspect.signature(m.VectorizedLinear.__init__).parameters)[1:4]
        assert params == ["in_features", "out_features", "n"], (algo, params)
        layer = m.VectorizedLinear(3, 5, 2)
        assert layer(torch.zeros(2, 7, 3)).shape == (2, 7, 5)


# ---- reference size (README "Conventions"): what each file's lines are for, measured by an `ast` pass
ROLE_PATTERNS = (  # top-level name -> role, first match wins; everything else is the algorithm
    ("configuration", re.compile(r"^Args$|CONFIG|PAPER")),
    ("checks", re.compile(r"validate|check|_meta$|^OFFLINE_")),
    ("logging", re.compile(r"^log|diagnos|stats|Stats|summary")),
    ("evaluation", re.compile(r"eval|Eval")),
)
LOG_CALL = re.compile(r"(log|logger|writer|self\.log|self\.writer)\.\w+$|print$|log_\w+$")
# Issue 26's targets: ≤ 1500 / 1000 / 1000 lines, algorithm ≥ 60 %, harness ≤ 150. Not all are reached yet (the
# harness is 259 lines); until they are, each file is held at what it has now, so it cannot grow back.
LIMITS = dict(uni_o4=1575, off2on=1045, famo2o=1000)
MIN_ALGORITHM_SHARE = dict(uni_o4=0.60, off2on=0.55, famo2o=0.49)
MAX_HARNESS = 261


def file_roles(path: Path) -> dict:
    """Lines by role. header: module docstring and imports; harness: the HARNESS banner to the end; each top-level
    statement in between owns its lines (decorators, and the blank or comment lines above it, included) and gets the
    role its name matches in ROLE_PATTERNS, else 'algorithm'. prose: docstring and comment-only lines, anywhere."""
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    harness = next(i for i, line in enumerate(lines) if line.startswith("# HARNESS")) - 1  # the banner's top rule
    role = ["header"] * len(lines)
    body = [n for n in tree.body if not isinstance(n, (ast.Import, ast.ImportFrom, ast.Expr))]
    prose = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node) is not None:
            doc = node.body[0]
            prose.update(range(doc.lineno - 1, doc.end_lineno))
    prose.update(i for i, line in enumerate(lines) if line.lstrip().startswith("#"))
    starts = [min([n.lineno] + [d.lineno for d in getattr(n, "decorator_list", [])]) - 1 for n in body]
    first = starts[0] if starts else harness
    while first > 0 and (not lines[first - 1].strip() or lines[first - 1].startswith("#")):
        first -= 1
    bounds = [first] + starts[1:] + [len(lines)]
    for node, lo, hi in zip(body, bounds[:-1], bounds[1:]):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            name = node.name
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            name = target.id if isinstance(target, ast.Name) else ""
        else:
            name = ""
        kind = next((r for r, pat in ROLE_PATTERNS if name and pat.search(name)), "algorithm")
        for i in range(lo, min(hi, harness)):
            role[i] = kind
        if kind == "algorithm":  # logging calls written inside the algorithm's functions are logging too
            for sub in ast.walk(node):
                if isinstance(sub, ast.Expr) and isinstance(sub.value, ast.Call):
                    if LOG_CALL.match(ast.unparse(sub.value.func)):
                        for i in range(sub.lineno - 1, sub.end_lineno):
                            role[i] = "logging"
    for i in range(harness, len(lines)):
        role[i] = "harness"
    counts = {r: role.count(r) for r in ("header", "configuration", "algorithm", "checks", "logging", "evaluation")}
    counts["harness"] = len(lines) - harness
    counts["lines"] = len(lines)
    counts["algorithm_share"] = counts["algorithm"] / len(lines)
    counts["prose_share"] = len(prose) / len(lines)
    counts["first_network"] = next(
        n.lineno for n in body if isinstance(n, ast.ClassDef) and any(ast.unparse(b) == "nn.Module" for b in n.bases)
    )
    defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    counts["longest_function"] = max((n.end_lineno - n.lineno + 1, n.name) for n in defs)
    return counts


def roles_table() -> str:
    rows = {a: file_roles(ROOT / "algorithms" / f"{a}.py") for a in ALGORITHMS}
    keys = ["lines", "header", "configuration", "algorithm", "checks", "logging", "evaluation", "harness"]
    out = ["| role | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
    out += [f"| {k} | " + " | ".join(str(r[k]) for r in rows.values()) + " |" for k in keys]
    out.append("| algorithm share | " + " | ".join(f"{r['algorithm_share']:.0%}" for r in rows.values()) + " |")
    out.append("| prose share | " + " | ".join(f"{r['prose_share']:.0%}" for r in rows.values()) + " |")
    out.append("| first network (line) | " + " | ".join(str(r["first_network"]) for r in rows.values()) + " |")
    out.append(
        "| longest function | "
        + " | ".join(f"{r['longest_function'][1]} ({r['longest_function'][0]})" for r in rows.values())
        + " |"
    )
    return "\n".join(out)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_the_file_is_reference_sized(algo):
    """Reference size: a line budget per file, the algorithm's share of the lines, prose ≤ 15 %, the harness's length,
    the first network within 200 lines of the top, no function over 100 lines. `python -m pytest -s -k
    reference_sized` prints the table (README "Conventions")."""
    r = file_roles(ROOT / "algorithms" / f"{algo}.py")
    print(f"\n{roles_table()}")
    assert r["lines"] <= LIMITS[algo], r
    assert r["algorithm_share"] >= MIN_ALGORITHM_SHARE[algo], r
    assert r["prose_share"] <= 0.15, r
    assert r["harness"] <= MAX_HARNESS, r
    assert r["first_network"] <= 200, r
    assert r["longest_function"][0] <= 100, r
