from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_spec import JOB, RECIPE

REPO = Path(__file__).resolve().parents[1]
#: Every line the CLI prints for a bad document: ``file:line: field.path: message``.
PROBLEM = re.compile(r"^.+:\d+: .+: .+$")


def test_help_lists_commands_and_each_command_has_help(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0 and "validate" in out and "plan" in out
    for cmd in ("validate", "plan", "merge", "export-mergekit", "run", "demo"):
        code, out, _ = run_cli(cmd, "--help")
        assert code == 0 and f"usage: evohub {cmd}" in out


def test_cli_import_is_light():
    """`evohub --help` must not import torch, transformers, pydantic or huggingface_hub."""
    code = (
        "import sys; from evohub.cli import build_parser; build_parser().format_help();"
        "heavy = [m for m in ('torch', 'transformers', 'pydantic', 'huggingface_hub', 'yaml', 'rich') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_usage_error_is_one_line_exit_2(run_cli):
    code, _, err = run_cli("validate")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, _, err = run_cli("frobnicate")
    assert code == 2 and "invalid choice" in err


def test_validate_shipped_jobs_exit_0(run_cli):
    from jobs import runnable_jobs

    jobs = [str(p) for p in runnable_jobs()]
    code, out, err = run_cli("validate", *jobs)
    assert code == 0, err
    assert out.count("ok: ") == len(jobs)
    assert "unpinned revision" in err  # the paper's jobs name branches; resolved at pull time
    code, _, err = run_cli("validate", "--strict", str(REPO / "jobs" / "evollm-jp.yaml"))
    assert code == 2 and "error (--strict): unpinned" in err


def test_validate_reports_every_file(tmp_path, run_cli):
    good = tmp_path / "good.yaml"
    good.write_text(RECIPE)
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.replace("dtype: bfloat16", "dtype: bf16"))
    code, out, err = run_cli("validate", good, bad)
    assert code == 2
    assert f"ok: {good} (recipe)" in out
    assert err.strip() == f"{bad}:3: dtype: must be 'bfloat16', 'float16' or 'float32', got 'bf16'"


def test_debug_shows_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("evohub_job: 1\nname: x\n")

    def run(*a: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "evohub", *a], capture_output=True, text=True)

    quiet = run("plan", str(bad))
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr and PROBLEM.match(quiet.stderr.splitlines()[0])
    loud = run("--debug", "plan", str(bad))
    assert loud.returncode != 0 and "Traceback" in loud.stderr


def test_plan_on_local_models(tiny_world: Path, run_cli):
    from safetensors import safe_open

    (tiny_world / "data.jsonl").write_text("{}\n")
    job = tiny_world / "job.yaml"
    job.write_text(JOB)
    code, out, err = run_cli("plan", "--json", job)
    assert code == 0, err
    plan = json.loads(out)
    with safe_open(tiny_world / "base" / "model.safetensors", "pt") as f:
        params = sum(f.get_tensor(k).numel() for k in f.keys())  # noqa: SIM118
    base = plan["sources"][0]
    assert base["name"] == "base" and base["params"] == params and base["layers"] == 2
    assert base["bytes"] == params * 4  # the tiny models are stored in float32
    (stage,) = plan["stages"]
    # 2 sources x 2 layer groups x {weight, density}; popsize 4 from the spec; 20 evaluations
    assert (stage["dims"], stage["popsize"], stage["evaluations"], stage["generations"]) == (
        8,
        4,
        20,
        5,
    )
    assert plan["accelerator_bytes"] == 4 * params * 4  # base + 2 task vectors + resident model
    assert plan["disk_bytes"] >= 3 * params * 4 + params * 4
    code, out, _ = run_cli("plan", job)
    assert code == 0 and "parameter_space" in out and "accelerator memory" in out


def test_plan_dfs_dimensions(tiny_world: Path, run_cli):
    (tiny_world / "data.jsonl").write_text("{}\n")
    job = tiny_world / "dfs.yaml"
    job.write_text(
        JOB.replace(
            "fitness:",
            "data_flow_space:\n  a: ps\n  b: two\n  repeats: 3\n  optimizer: {popsize: 16, generations: 2}\nfitness:",
        )
    )
    code, out, err = run_cli("plan", "--json", job)
    assert code == 0, err
    dfs = json.loads(out)["stages"][1]
    # M = 2 + 2 layers, T = M x 3 slots, plus the M x M scale matrix
    assert dfs["dims"] == 12 + 16 and dfs["evaluations"] == 32 and dfs["generations"] == 2


def test_plan_unreachable_hub_is_one_line(tmp_path: Path, run_cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code, _, err = run_cli("plan", REPO / "jobs" / "evollm-jp.yaml")
    assert code == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("evohub: error: mistralai/Mistral-7B-v0.1@main: config.json: not in the local HF cache")


# ----------------------------------------------------------------------------------------------
# Fuzzing: random and mutated YAML never produces a traceback, only exit 2 with one-line problems.

SEEDS = [JOB, RECIPE, *(p.read_text() for p in sorted((REPO / "jobs").glob("*.yaml")))]
ALPHABET = [
    *list(" \n\t-:[]{},#&*!|>'\"%@`0123456789abcxyz."),
    "null",
    "~",
    "1e999",
    "-1",
    "[]",
    "{}",
    "ps",
]


def _mutate_text(text: str, rnd: random.Random, n: int) -> str:
    for _ in range(n):
        op = rnd.randrange(4)
        i = rnd.randrange(len(text) + 1)
        if op == 0:
            text = text[:i] + rnd.choice(ALPHABET) + text[i:]
        elif op == 1:
            text = text[:i] + text[i + rnd.randrange(1, 8) :]
        elif op == 2:
            lines = text.splitlines(keepends=True)
            if lines:
                j = rnd.randrange(len(lines))
                lines.insert(rnd.randrange(len(lines) + 1), lines[j])
                text = "".join(lines)
        else:
            text = text.replace(rnd.choice(["0", "1", ":", "[", "a", "e"]), rnd.choice(ALPHABET), 1)
    return text


def _paths(obj, here=()):
    yield here
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*here, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*here, i))


VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _mutate_tree(data, rnd: random.Random, value) -> object:
    paths = [p for p in _paths(data) if p]
    if not paths:
        return value
    path = rnd.choice(paths)
    parent = data
    for k in path[:-1]:
        parent = parent[k]
    op = rnd.randrange(3)
    if op == 0:
        parent[path[-1]] = value
    elif op == 1:
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[rnd.choice(["extra", "weight", "density", "path", "a", "revision", "bounds"])] = value
    else:
        parent.append(value)
    return data


def _check(run_cli, text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "fuzz.yaml"
        p.write_text(text)
        code, _, err = run_cli("validate", "-q", p)
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        lines = err.strip().splitlines()
        assert lines and all(PROBLEM.match(x) for x in lines), err


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    rnd=st.randoms(use_true_random=False),
    n=st.integers(1, 6),
)
def test_fuzz_text_mutations(run_cli, seed, rnd, n):
    _check(run_cli, _mutate_text(SEEDS[seed], rnd, n))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from(range(len(SEEDS))), rnd=st.randoms(use_true_random=False), value=VALUES)
def test_fuzz_tree_mutations(run_cli, seed, rnd, value):
    data = yaml.safe_load(SEEDS[seed])
    _check(run_cli, yaml.safe_dump(_mutate_tree(data, rnd, value), allow_unicode=True))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.sampled_from(ALPHABET), max_size=60).map("".join))
def test_fuzz_random_text(run_cli, text):
    _check(run_cli, text)


def _build_wheel(tmp_path: Path) -> Path:
    import shutil

    # from a copy: a checkout's stale build/ would leak old files into the wheel
    skip = shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "runs", ".cache", "bench", "tests", ".whl")
    src = shutil.copytree(REPO, tmp_path / "src", symlinks=True, ignore=skip)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(tmp_path),
        str(src),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("evohub-*.whl")
    return wheel


def test_the_wheel_carries_the_card_templates_task_yamls_and_the_demo(tmp_path):
    """A pip-installed evohub (not a checkout) still renders cards, finds its lm-eval task and
    has the demo job with its trained world."""
    import zipfile

    names = set(zipfile.ZipFile(_build_wheel(tmp_path)).namelist())
    assert {f"evohub/hub/cards/{k}.md.j2" for k in ("base", "llm", "vlm")} <= names
    assert "evohub/score/lmeval_tasks/jp_stable/jp_stable_jcola.yaml" in names
    world = {f"evohub/local/demo-world/{m}/{f}" for m in ("base", "math", "japanese")
             for f in ("model.safetensors", "config.json", "tokenizer.json")}  # fmt: skip
    assert {"evohub/local/demo.yaml", "evohub/local/demo-world/test.jsonl"} | world <= names


@pytest.mark.slow
def test_the_installed_wheel_runs_the_demo_from_another_directory(tmp_path):
    """`pip install` of the built wheel in a fresh venv, run from an empty directory: `evohub demo`.

    The venv's third-party packages come from this one's (a .pth line), so the test is offline and
    quick; evohub itself is the wheel's (checked: it is not imported from the checkout)."""
    import site
    import venv

    wheel = _build_wheel(tmp_path)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", purelib, str(wheel)],
                   check=True, capture_output=True)  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([py, "-c", "import evohub; print(evohub.__file__)"], cwd=elsewhere, capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    assert where.startswith(purelib), where
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run([py, "-m", "evohub", "demo", "--dir", "d", "-q", "--max-evals", "8"], cwd=elsewhere,
                          capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "demo complete" in done.stdout and (elsewhere / "d" / "run" / "published.json").exists()


def test_plan_gpu_states_what_one_gpu_holds_and_refuses_what_cannot_fit(tmp_path, run_cli):
    """A 3 x 7B PS-then-DFS job from config.json files alone (the shapes of Mistral-7B)."""
    cfg = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
           "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
           "vocab_size": 32000, "max_position_embeddings": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}  # fmt: skip
    for d in ("base", "a", "b", "c"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "fit.jsonl").write_text("{}\n")
    job = tmp_path / "job.yaml"
    job.write_text(
        "evohub_job: 1\nname: seven\nbase_model: {path: base}\nsources:\n  - {name: a, path: a}\n  - {name: b, path: b}\n"
        "  - {name: c, path: c}\nparameter_space:\n  method: dare_ties\n  density: {bounds: [0, 1]}\n"
        "  optimizer: {max_evals: 1000}\ndata_flow_space:\n  a: ps\n  b: a\n  optimizer: {popsize: 128, generations: 100}\n"
        "fitness:\n  task: ja-math\n  data: {path: fit.jsonl}\n"
    )
    code, out, err = run_cli("plan", "--json", "--gpu", "h100", job)
    assert code == 0, err
    plan = json.loads(out)
    ps, dfs = plan["gpu"]["stages"]
    params = plan["sources"][0]["params"]
    assert 7.2e9 < params < 7.3e9
    assert ps["resident"] == 4 * params * 2 and ps["engine"] == params * 2 and ps["resident_on"] == "gpu"
    assert (
        ps["kv_cache"] == 16 * (512 + 1024) * 32 * 2 * 8 * 128 * 2
    )  # batch x tokens x layers x K,V x heads x dim x bf16
    assert 0 < ps["utilization"] <= 0.92 and plan["gpu"]["fits"]
    code, out, err = run_cli("plan", "--json", "--gpu", "a100-40", job)
    plan = json.loads(out)
    ps, dfs = plan["gpu"]["stages"]
    assert ps["resident_on"] == "host (pinned)" and ps["fits"]  # the sources stream from host memory
    assert code == 2 and not dfs["fits"] and len(err.strip().splitlines()) == 1
    assert "seven: data_flow_space does not fit on one a100-40 (40.0 GiB)" in err
    code, _, err = run_cli("plan", "--gpu", "tpu", job)
    assert code == 2 and "unknown GPU" in err
