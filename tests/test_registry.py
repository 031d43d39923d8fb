"""Registries: a merge method and a suite, each added in one file, reach validation, --help,
planning and the merge itself; unknown names are one line with a suggestion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from evohub.merging.methods import METHODS
from evohub.score.suites import SUITES

TOY_JOB = """\
evohub_job: 1
name: toy
sources:
  - {name: one, path: ft1}
  - {name: two, path: ft2}
tokenizer_source: one
dtype: float32
parameter_space:
  method: toy_mean
  layer_groups: 2
  optimizer: {popsize: 4, max_evals: 8}
fitness:
  task: lm-loss
  backend: hf
  data: {path: data.jsonl}
evaluation:
  suites: [toy-math]
  backend: hf
  data: {toy-math: data.jsonl}
"""


@pytest.fixture
def toys():
    """The toy method and suite, registered for one test."""
    import toy_method
    import toy_suite

    METHODS.register(toy_method.TOY)
    SUITES.register(toy_suite.TOY)
    yield toy_method, toy_suite
    METHODS.unregister("toy_mean")
    SUITES.unregister("toy-math")


def test_a_toy_method_and_suite_reach_validation_help_and_planning(toys, tiny_world: Path, run_cli):
    (tiny_world / "data.jsonl").write_text('{"text": "t1 t2"}\n')
    job = tiny_world / "toy.yaml"
    job.write_text(TOY_JOB)
    code, out, err = run_cli("validate", job)
    assert code == 0 and "ok:" in out, err
    code, out, _ = run_cli("validate", "--help")
    assert "toy_mean" in out and "toy-math" in out
    code, out, _ = run_cli("evaluate", "--help")
    assert "toy-math" in " ".join(out.split()).replace("- ", "-")  # argparse may wrap the list at a hyphen
    code, out, _ = run_cli("list", "methods")
    assert "toy_mean" in out and "the unweighted mean" in out
    code, out, err = run_cli("plan", "--json", job)
    assert code == 0, err
    plan = json.loads(out)
    (stage,) = plan["stages"]
    assert stage["dims"] == 2 * 2 * 1  # 2 sources x 2 layer groups x {weight}: the entry has no density
    assert plan["evaluation"] == ["toy-math"]
    # unknown names are one line that names the field, with a suggestion
    job.write_text(TOY_JOB.replace("toy_mean", "toy_meen"))
    code, _, err = run_cli("validate", job)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "parameter_space.method: unknown merge method 'toy_meen'; did you mean 'toy_mean'?" in err


def test_a_toy_method_merges_with_its_own_kernel(toys, tiny_world: Path, tmp_path, run_cli):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "evohub_recipe: 1\ndtype: float32\ntokenizer_source: 0\nparameter_space:\n  method: toy_mean\n  models:\n"
        f"    - {{source: {{path: {tiny_world / 'ft1'}}}, weight: 0.9}}\n"
        f"    - {{source: {{path: {tiny_world / 'ft2'}}}, weight: 0.1}}\n"
    )
    code, _, err = run_cli("merge", recipe, "--out", tmp_path / "out", "-q")
    assert code == 0, err
    a, b = (load_file(tiny_world / n / "model.safetensors") for n in ("ft1", "ft2"))
    (shard,) = (tmp_path / "out").glob("model-*.safetensors")
    out = load_file(shard)
    assert set(out) == set(a)
    for name, t in out.items():
        assert torch.allclose(t, (a[name] + b[name]) / 2, atol=1e-6), name  # the weights were ignored


def test_the_readme_tables_are_the_registries(run_cli):
    """README.md's "What a job may name" section is `evohub list --markdown`, regenerated."""
    code, out, _ = run_cli("list", "--markdown")
    assert code == 0
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start, end = "<!-- evohub list --markdown -->\n", "<!-- end of evohub list -->"
    assert start in readme and end in readme
    assert readme.split(start, 1)[1].split(end, 1)[0].strip() == out.strip()
