from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from evohub.errors import SpecError
from evohub.evolve.genome import Budget
from evohub.spec import JobSpec, Recipe, load, load_job, load_recipe, unpinned, warnings_for

REPO = Path(__file__).resolve().parents[1]
SHA = "0123456789abcdef0123456789abcdef01234567"

JOB = """\
evohub_job: 1
name: tiny
seed: 3
base_model: {path: base}
sources:
  - {name: one, path: ft1}
  - {name: two, path: ft2}
dtype: float32
tokenizer_source: base
parameter_space:
  method: dare_ties
  layer_groups: 2
  weight: {bounds: [0, 1]}
  density: {bounds: [0.1, 1]}
  optimizer: {max_evals: 20, popsize: 4}
fitness:
  task: ja-math
  data: {path: data.jsonl, split: "train[:8]"}
"""

RECIPE = f"""\
evohub_recipe: 1
base_model: {{repo: mistralai/Mistral-7B-v0.1, revision: {SHA}}}
dtype: bfloat16
seed: 0
tokenizer_source: base
parameter_space:
  method: dare_ties
  normalize: false
  layer_groups: 2
  models:
    - source: {{repo: augmxnt/shisa-gamma-7b-v1, revision: {SHA}}}
      weight: [0.62, 0.5]
      density: 0.91
    - source: {{repo: GAIR/Abel-7B-002, revision: {SHA}}}
      weight: 0.3
      density: [0.5, 0.7]
      overrides:
        - {{pattern: self_attn, weight: 0.1}}
data_flow_space:
  a: ps
  b: {{repo: augmxnt/shisa-gamma-7b-v1, revision: {SHA}}}
  path: [[a, 0], [a, 1], [b, 7], [a, 2]]
  scales: [1.0, 1.0, 0.83, 1.12]
"""


@pytest.fixture
def world(tiny_world: Path) -> Path:
    (tiny_world / "data.jsonl").write_text('{"question": "1+1", "answer_number": 2}\n')
    return tiny_world


def write(dir: Path, text: str, name: str = "doc.yaml") -> Path:
    p = dir / name
    p.write_text(text)
    return p


def problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as e:
        load(path)
    return e.value.problems


def test_shipped_jobs_validate():
    from jobs import runnable_jobs

    jobs = runnable_jobs()
    assert {j.stem for j in jobs} >= {"evollm-jp", "evollm-jp-a", "evollm-jp-10b", "evovlm-jp"}
    for j in jobs:
        assert isinstance(load(j), JobSpec)


def test_paper_settings_in_evollm_jp():
    spec = load_job(REPO / "jobs/evollm-jp.yaml")
    ps = spec.parameter_space
    assert ps is not None and ps.method == "dare_ties" and not ps.normalize and ps.layer_groups == 1
    assert ps.weight.bounds == (0, 1) and ps.density is not None and ps.density.bounds == (0, 1)
    assert ps.optimizer.x0 == 0.5 and ps.optimizer.sigma0 == pytest.approx(1 / 6)
    budget = Budget.of(ps.optimizer, dims=6)
    assert budget.popsize == 9 and budget.evaluations == 1000
    assert [s.repo for s in spec.sources] == [
        "augmxnt/shisa-gamma-7b-v1",
        "WizardLMTeam/WizardMath-7B-V1.1",
        "GAIR/Abel-7B-002",
    ]
    assert spec.fitness.data.repo == "SakanaAI/gsm8k-ja-test_250-1319"
    ten = load_job(REPO / "jobs/evollm-jp-10b.yaml").data_flow_space
    assert ten is not None and ten.a == "ps" and ten.b == "shisa-gamma" and ten.repeats == 3
    assert ten.optimizer.popsize == 128 and ten.optimizer.generations == 100


def test_job_roundtrip(world: Path):
    spec = load_job(write(world, JOB))
    again = JobSpec.from_yaml(spec.to_yaml(), base_dir=world)
    assert again == spec
    assert spec.source("two").path == str(world / "ft2")  # stored absolute
    with pytest.raises(ValidationError, match="frozen"):
        spec.seed = 4


def test_recipe_roundtrip_and_schema(tmp_path: Path):
    r = load_recipe(write(tmp_path, RECIPE))
    assert r.parameter_space is not None and r.parameter_space.models[0].weight == (0.62, 0.5)
    assert r.parameter_space.models[1].overrides[0].weight == 0.1
    assert r.data_flow_space is not None and r.data_flow_space.path[2] == ("b", 7)
    text = r.to_yaml()
    assert Recipe.from_yaml(text) == r
    assert yaml.safe_load(text)["data_flow_space"]["path"][2] == ["b", 7]
    assert len(r.sources()) == 3  # base, shisa (twice, deduplicated), abel
    assert list(unpinned(r)) == []


def test_unpinned_warning_names_line(tmp_path: Path):
    text = RECIPE.replace(f"{{repo: GAIR/Abel-7B-002, revision: {SHA}}}", "{repo: GAIR/Abel-7B-002}")
    p = write(tmp_path, text)
    w = warnings_for(load(p), p)
    assert len(w) == 1 and w[0].startswith(f"{p}:14: parameter_space.models[1].source: warning: unpinned")


# (mutation of the valid job, expected line, expected field path, words in the message)
JOB_CASES = [
    (("seed: 3", "seed: 3\nfoo: 1"), 4, "foo", "unknown key"),
    (
        ("  weight: {bounds", "  wieght: {bounds"),
        13,
        "parameter_space.wieght",
        "did you mean 'weight'",
    ),
    (("base_model: {path: base}\n", ""), 10, "parameter_space.method", "base_model"),
    (
        ("weight: {bounds: [0, 1]}", "weight: {bounds: [1, 0]}"),
        13,
        "parameter_space.weight.bounds",
        "above upper",
    ),
    (
        ("density: {bounds: [0.1, 1]}", "density: {bounds: [0.1, 2]}"),
        14,
        "parameter_space.density.bounds",
        "[0, 1]",
    ),
    (
        ("weight: {bounds: [0, 1]}", "weight: {bounds: [0, 20]}"),
        13,
        "parameter_space.weight.bounds",
        "inside",
    ),
    (("  - {name: two, path: ft2}\n", ""), 5, "sources", "at least 2"),
    (
        ("{name: two, path: ft2}", "{name: two, path: missing}"),
        7,
        "sources[1].path",
        "does not exist",
    ),
    (
        ("{name: two, path: ft2}", "{name: two, repo: bad//id}"),
        7,
        "sources[1].repo",
        "not a Hub repo id",
    ),
    (("{name: two, path: ft2}", "{name: one, path: ft2}"), 7, "sources[1].name", "distinct"),
    (("{max_evals: 20, popsize: 4}", "{popsize: 4}"), 15, "parameter_space.optimizer", "budget"),
    (
        ("{max_evals: 20, popsize: 4}", "{max_evals: 0}"),
        15,
        "parameter_space.optimizer.max_evals",
        "greater than 0",
    ),
    (("method: dare_ties", "method: dare"), 11, "parameter_space.method", "did you mean 'dare_ties'"),
    (("method: dare_ties", "method: slerp"), 14, "parameter_space.density", "takes no density"),
    (
        ("tokenizer_source: base", "tokenizer_source: tow"),
        9,
        "tokenizer_source",
        "did you mean 'two'",
    ),
    (
        ("layer_groups: 2", "layer_groups: 3"),
        12,
        "parameter_space.layer_groups",
        "2 decoder layers",
    ),
    (('split: "train[:8]"', 'split: "train[:8"'), 18, "fitness.data.split", "not a split"),
    (("task: ja-math", "task: math"), 17, "fitness.task", "unknown fitness task 'math'"),
    (
        ("task: ja-math", "task: ja-math\n  backend: hf\n  draft_tokens: 4"),
        19,
        "fitness.draft_tokens",
        "drafts are vLLM's speculative decoding: set 'backend: vllm'",
    ),
    (("task: ja-math", "task: ja-math\n  draft_tokens: 9"), 18, "fitness.draft_tokens", "less than or equal to 8"),
    (("seed: 3", "seed: three"), 3, "seed", "integer"),
    (("dtype: float32", "dtype: [float32"), 9, "dtype", "YAML syntax"),
    (("seed: 3", "seed: 3\nseed: 4"), 4, "seed", "duplicate key"),
]


@pytest.mark.parametrize("change,line,field,words", JOB_CASES, ids=[c[2] + ":" + c[3] for c in JOB_CASES])
def test_job_errors_name_line_and_field(world: Path, run_cli, change, line, field, words):
    old, new = change
    assert old in JOB
    p = write(world, JOB.replace(old, new, 1))
    code, _out, err = run_cli("validate", p)
    assert code == 2 and "Traceback" not in err
    first = err.splitlines()[0]
    assert first.startswith(f"{p}:{line}: {field}"), first
    assert words in first


RECIPE_CASES = [
    (
        ("      weight: [0.62, 0.5]", "      weight: [0.62, 0.5, 0.1]"),
        12,
        "parameter_space.models[0].weight",
        "3 values but layer_groups is 2",
    ),
    (("      density: 0.91\n", ""), 11, "parameter_space.models[0].density", "needs a density"),
    (
        ("      density: 0.91", "      density: 1.5"),
        13,
        "parameter_space.models[0].density",
        "outside [0, 1]",
    ),
    (
        ("pattern: self_attn", 'pattern: "self_attn("'),
        18,
        "parameter_space.models[1].overrides[0].pattern",
        "regular expression",
    ),
    (
        ("scales: [1.0, 1.0, 0.83, 1.12]", "scales: [1.0, 1.0, 0.83]"),
        23,
        "data_flow_space.scales",
        "one scale per hop",
    ),
    (
        ("scales: [1.0, 1.0, 0.83, 1.12]", "scales: [1.0, 1.0, 0, 1.12]"),
        23,
        "data_flow_space.scales[2]",
        "greater than 0",
    ),
    (("[b, 7]", "[c, 7]"), 22, "data_flow_space.path[2][0]", "'a' or 'b'"),
    (("[b, 7]", "[b, -1]"), 22, "data_flow_space.path[2][1]", "greater than or equal to 0"),
    (
        ("  b: {repo: augmxnt", "  b: {repo: augmxnt/x, path: .}\n  a2: {repo: augmxnt"),
        21,
        "data_flow_space.b",
        "exactly one",
    ),
    (("tokenizer_source: base", "tokenizer_source: 7"), 5, "tokenizer_source", "out of range"),
    (("method: dare_ties", "method: slerp"), 13, "parameter_space.models[0].density", "no density"),
    (
        ("weight: [0.62, 0.5]", "weight: 0.62x"),
        12,
        "parameter_space.models[0].weight",
        "expected a number",
    ),
]


@pytest.mark.parametrize("change,line,field,words", RECIPE_CASES, ids=[c[2] + ":" + c[3] for c in RECIPE_CASES])
def test_recipe_errors_name_line_and_field(tmp_path: Path, change, line, field, words):
    old, new = change
    assert old in RECIPE
    ps = problems(write(tmp_path, RECIPE.replace(old, new, 1)))
    hit = [x for x in ps if f": {field}:" in x]
    assert hit, ps
    assert hit[0].startswith(f"{tmp_path / 'doc.yaml'}:{line}: {field}: ") and words in hit[0], hit[0]


def test_recipe_needs_base_for_delta_methods(tmp_path: Path):
    text = RECIPE.replace(f"base_model: {{repo: mistralai/Mistral-7B-v0.1, revision: {SHA}}}\n", "").replace(
        "tokenizer_source: base", "tokenizer_source: 0"
    )
    (msg,) = problems(write(tmp_path, text))
    assert re.match(r".*doc\.yaml:6: parameter_space\.method: 'dare_ties' merges task vectors", msg)


def test_dfs_layer_index_checked_against_local_config(world: Path):
    text = """\
evohub_recipe: 1
base_model: {path: base}
dtype: float32
data_flow_space:
  a: {path: ft1}
  b: {path: ft2}
  path: [[a, 0], [b, 1], [b, 2], [a, 1]]
  scales: [1, 1, 1, 1]
"""
    (msg,) = problems(write(world, text))
    assert msg.endswith("doc.yaml:7: data_flow_space.path[2][1]: layer 2 of model 'b' does not exist (it has 2 layers)")
    fixed = load(write(world, text.replace("[b, 2]", "[b, 0]")))
    assert isinstance(fixed, Recipe) and fixed.data_flow_space is not None


def test_not_an_evohub_document(tmp_path: Path):
    (msg,) = problems(write(tmp_path, "a: 1\n"))
    assert "not an evohub document" in msg
    (msg,) = problems(write(tmp_path, "- 1\n- 2\n"))
    assert "expected a mapping" in msg
    (msg,) = problems(write(tmp_path, ""))
    assert "expected a mapping" in msg


def test_job_method_options_reach_every_candidate_recipe(world: Path, run_cli):
    """parameter_space.options (DELLA's epsilon) is checked against the method's options and
    copied into each decoded candidate; an unknown option is a one-line error naming its field."""
    from evohub.evolve.genome import PSGenome
    from evohub.spec import JobSpec

    text = JOB.replace("method: dare_ties", "method: della\n  options: {epsilon: 0.3}", 1)
    job = load(write(world, text))
    assert isinstance(job, JobSpec) and job.parameter_space is not None
    genome = PSGenome.for_job(job)
    recipe = genome.decode(genome.x0())
    assert recipe.parameter_space.options == {"epsilon": 0.3}
    assert recipe.parameter_space.kind.option("epsilon") == 0.3
    bad = write(world, JOB.replace("method: dare_ties", "method: della\n  options: {epsilonx: 0.3}", 1), "bad.yaml")
    code, _out, err = run_cli("validate", bad)
    assert code == 2 and "parameter_space.options.epsilonx" in err and "has no option 'epsilonx'" in err
    assert "  options:" not in load(write(world, JOB, "plain.yaml")).to_yaml()  # existing specs read as before


def test_drafts_are_refused_for_a_task_that_decodes_in_beams(tmp_path):
    """vLLM's beam search runs without the n-gram drafts: a ja-vqa job asking for them is refused."""
    text = re.sub(r"\n  backend: \w+", "", (REPO / "jobs" / "evovlm-jp.yaml").read_text())
    job = tmp_path / "vqa.yaml"
    job.write_text(text.replace("fitness:\n", "fitness:\n  backend: vllm\n  draft_tokens: 4\n"))
    with pytest.raises(SpecError, match=r"fitness.draft_tokens: ja-vqa decodes with 5 beams, and vLLM's beam search"):
        load_job(job)
    job.write_text(text.replace("fitness:\n", "fitness:\n  backend: vllm\n"))
    assert load_job(job).fitness.draft_tokens is None
