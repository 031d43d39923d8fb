"""Hostile input: a spec from a pull request costs at most about a second and a few MB, and every
user error — in arguments, specs, recipes, data files, model and run directories, lock files —
is one line, exit 2, no traceback, naming the file (and its line where there is one)."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evohub.errors import SpecError
from evohub.spec.yamlio import MAX_BYTES, parse_yaml

REPO = Path(__file__).resolve().parents[1]
SEEDS = [p.read_text() for p in sorted((REPO / "jobs").glob("*.yaml"))]
BOMB = "evohub_job: 1\na: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


def _one_line(code: int, err: str, where: str | None = None) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    if where is not None:
        assert where in lines[0], lines[0]
    return lines[0]


def test_an_alias_bomb_is_refused_in_milliseconds_and_megabytes(tmp_path):
    """1.5 KB that would expand to 387M values: refused from its node graph, never built."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    start = time.perf_counter()
    with pytest.raises(SpecError, match="expands to more than 100000 values"):
        parse_yaml(BOMB, "bomb.yaml")
    assert time.perf_counter() - start < 0.5
    # the command, in a process whose address space is capped at 1 GiB
    cap = "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
    code = cap + "from evohub.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "validate", str(path)], capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    _one_line(done.returncode, done.stderr, f"{path}:")


@pytest.mark.parametrize("byte", ["\x00", "\x07", "\x1b"])
@pytest.mark.parametrize("verb", ["validate", "plan", "merge", "run"])
def test_control_characters_are_one_line_for_every_verb(run_cli, tmp_path, byte, verb):
    path = tmp_path / "x.yaml"
    path.write_text(SEEDS[0].replace("name:", f"name:{byte}", 1))
    args = {"merge": ["--out", tmp_path / "out"], "run": ["--run-dir", tmp_path / "run"]}.get(verb, [])
    line = _one_line(*run_cli(verb, path, *args)[::2])
    assert line.startswith(f"{path}:") and "control character" in line


def test_oversize_and_deep_documents_are_refused(tmp_path):
    with pytest.raises(SpecError, match="larger than 512 KiB"):
        parse_yaml("a: " + "x" * MAX_BYTES, "big.yaml")
    with pytest.raises(SpecError, match="nested deeper than 64 levels"):
        parse_yaml("a: " + "[" * 100 + "]" * 100, "deep.yaml")
    parse_yaml("a: " + "[" * 30 + "]" * 30, "fine.yaml")


def test_arguments_are_checked_before_heavy_imports():
    """--device and --shard-size are refused by the parser: no torch import, well under a second."""
    for args in (["merge", "r.yaml", "--out", "o", "--device", "tpu"], ["run", "j.yaml", "--device", "cuda:x"],
                 ["merge", "r.yaml", "--out", "o", "--shard-size", "12potatoes"]):  # fmt: skip
        start = time.perf_counter()
        code = "import sys; from evohub.cli import main; rc = main(sys.argv[1:]); assert 'torch' not in sys.modules"
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=30)
        assert time.perf_counter() - start < 3
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_run_and_merge_refuse_a_file_where_a_directory_belongs(run_cli, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    _one_line(*run_cli("run", REPO / "jobs/demo.yaml", "--run-dir", f, "--device", "cpu")[::2], "names a file")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("evohub_recipe: 1\nbase_model: {path: " + str(REPO / "jobs/demo-world/base") + "}\n"
                      "parameter_space:\n  method: linear\n  models:\n"
                      f"    - {{source: {{path: {REPO / 'jobs/demo-world/math'}}}, weight: 0.5}}\n"
                      f"    - {{source: {{path: {REPO / 'jobs/demo-world/japanese'}}}, weight: 0.5}}\n")  # fmt: skip
    _one_line(*run_cli("merge", recipe, "--out", f, "--force", "--device", "cpu")[::2], "is a file")
    assert f.read_text() == "x" and not list(tmp_path.glob(".afile.*"))


def test_a_garbage_lock_file_is_one_line(tmp_path):
    from evohub.errors import EvohubError
    from evohub.pipeline.rundir import RunDir

    run = RunDir(tmp_path)
    for text in ("models: 3\n", "- a\n- b\n", "models: [{name: 1}]\n", "models: [\n", "\x00"):
        run.lock_path.write_text(text)
        with pytest.raises(EvohubError) as e:
            run.lock()
        assert len(str(e.value).splitlines()) == 1 and str(run.lock_path) in str(e.value)


def test_an_interrupted_directory_swap_keeps_the_old_directory(tmp_path, monkeypatch):
    import os

    from evohub import files

    out, partial = tmp_path / "out", tmp_path / "partial"
    out.mkdir()
    (out / "old").write_text("old")
    partial.mkdir()
    (partial / "new").write_text("new")
    real, calls = os.replace, []

    def failing(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(a, b)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(KeyboardInterrupt):
        files.replace_dir(partial, out)
    assert (out / "old").read_text() == "old" and not list(tmp_path.glob(".out.old-*"))


def test_model_and_data_problems_name_the_file(run_cli, tmp_path):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(REPO / "jobs/demo-world/base", model)
    st_file = model / "model.safetensors"
    st_file.write_bytes(st_file.read_bytes()[: st_file.stat().st_size // 2])
    data = REPO / "jobs/demo-world/test.jsonl"
    line = _one_line(
        *run_cli("evaluate", model, "--suite", "ja-math", "--data", f"ja-math={data}", "--device", "cpu")[::2]
    )
    assert "model.safetensors" in line and "truncated" in line
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1", "answer_number": 2}\n{broken\n')
    good = REPO / "jobs/demo-world/base"
    line = _one_line(
        *run_cli("evaluate", good, "--suite", "ja-math", "--data", f"ja-math={bad}", "--device", "cpu")[::2]
    )
    assert line.startswith(f"{bad}:2: not a JSON row")
    bad.write_text('{"question": "1+1", "answer": 2}\n')
    line = _one_line(
        *run_cli("evaluate", good, "--suite", "ja-math", "--data", f"ja-math={bad}", "--device", "cpu")[::2]
    )
    assert str(bad) in line and "answer_number" in line


def test_spec_messages_say_what_is_wrong(run_cli, tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text((REPO / "jobs/demo.yaml").read_text().replace("name: japanese,", "name: math,"))
    code, _, err = run_cli("validate", dup)
    assert "is used by sources[0] too" in _one_line(code, err)
    rec = tmp_path / "r.yaml"
    rec.write_text("evohub_recipe: 1\nparameter_space:\n  method: linear\n  models:\n"
                   "    - {source: {path: .}, weight: 5e-1}\n    - {source: {path: .}, weight: 0.5}\n")  # fmt: skip
    code, _, err = run_cli("validate", rec)
    assert "got the text '5e-1'" in err and "write 5.0e-1" in err


def test_progress_is_plain_lines_where_stderr_is_not_a_terminal(caplog, monkeypatch):
    import logging

    from evohub import progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    with caplog.at_level(logging.INFO, logger="evohub"), progress.bar(100, "evolve ps", "cand", initial=20) as b:
        for _ in range(80):
            b.update()
    lines = [r.getMessage() for r in caplog.records]
    assert 1 <= len(lines) <= 9 and lines[-1].startswith("evolve ps: 100/100 cand (100%)")
    assert not any("\r" in ln or "\x1b" in ln for ln in lines)


def _hostile_mutation(text: str, rnd: random.Random) -> str:
    op = rnd.randrange(5)
    i = rnd.randrange(len(text) + 1)
    if op == 0:  # a control byte
        return text[:i] + chr(rnd.choice([0, 7, 8, 0x0B, 0x1B, 0x7F])) + text[i:]
    if op == 1:  # truncation
        return text[:i]
    if op == 2:  # anchors and aliases that multiply
        k = rnd.randrange(2, 12)
        return (
            "x: &x ["
            + ", ".join(["y"] * k)
            + "]\n"
            + "".join(
                f"x{j}: &x{j} [{', '.join(['*x' if j == 0 else f'*x{j - 1}'] * k)}]\n"
                for j in range(rnd.randrange(1, 9))
            )
            + text
        )
    if op == 3:  # deep nesting
        d = rnd.randrange(1, 200)
        return text[:i] + "[" * d + "]" * d + text[i:]
    return text.replace(":", rnd.choice([": !!python/object:os.system", ": &a", ": *a", ":\x00"]), 1)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from(range(len(SEEDS))), rnd=st.randoms(use_true_random=False), n=st.integers(1, 3))
def test_fuzz_hostile_specs_give_one_line_within_a_second(run_cli, tmp_path, seed, rnd, n):
    text = SEEDS[seed]
    for _ in range(n):
        text = _hostile_mutation(text, rnd)
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    start = time.perf_counter()
    code, _, err = run_cli("validate", "-q", path)
    assert time.perf_counter() - start < 1.5, "a spec took more than a second"
    assert code in (0, 2) and "Traceback" not in err, err
    if code == 2:
        assert all(ln.startswith(f"{path}:") for ln in err.strip().splitlines()), err


def test_threads_fit_the_cpus_that_are_free(tmp_path, monkeypatch):
    from evohub import threads

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads._quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads._quota(tmp_path) is None
    monkeypatch.setenv("EVOHUB_THREADS", "3")
    assert threads.fit_threads() == 3 and threads.fit_threads(override=5) == 5
    monkeypatch.delenv("EVOHUB_THREADS")
    cpus = threads.available_cpus()
    if cpus < 2:
        pytest.skip("needs two CPUs")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert threads.busy_elsewhere(cpus, window=0.3) >= 1
        assert threads.fit_threads() <= cpus - 1
    finally:
        hog.kill()


def test_missing_files_and_directories_are_one_line(run_cli, tmp_path):
    _one_line(*run_cli("evaluate", "--task", "ja-math", "--predictions", tmp_path / "none.jsonl")[::2], "none.jsonl")
    _one_line(*run_cli("jobs", tmp_path / "nowhere")[::2], "no such directory")
