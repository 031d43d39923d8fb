"""Diffusion pipelines: tiny SDXL-shaped pipelines merged by a recipe (the UNet by groups, the
other components taken whole), checked against an independent formula and loaded by diffusers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusion pipelines need the diffusion extra: pip install -e .[diffusion]")

from safetensors.torch import load_file

from evohub.local.tiny_sdxl import make_sdxl

ATTN = r"to_q|to_k|to_v|to_out\.0"  # EvoSDXL-JP's attn group; the rest is conv
#: (conv, attn) weights per source: base SDXL, DPO (fp32 UNet only), Juggernaut, JSDXL (fp16 variants)
WEIGHTS = [(0.16, 0.19), (0.10, 0.20), (0.65, 0.39), (0.09, 0.22)]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sdxl")
    base = make_sdxl(root / "sdxl", seed=0)
    make_sdxl(root / "dpo", seed=1, base=base, unet_dtype=torch.float32)  # SDXL-DPO: a float32 UNet only
    make_sdxl(root / "juggernaut", seed=2, base=base, variant="fp16")
    make_sdxl(root / "jsdxl", seed=3, base=base, text_encoder_seed=7, variant="fp16")
    return root


def recipe(world: Path, components: str = "{text_encoder: 3, tokenizer: 3}", dtype: str = "float32") -> Path:
    models = "\n".join(
        f"    - source: {{path: {name}}}\n      weight: {conv}\n      overrides: [{{pattern: '{ATTN}', weight: {attn}}}]"
        for name, (conv, attn) in zip(("sdxl", "dpo", "juggernaut", "jsdxl"), WEIGHTS, strict=True)
    )
    p = world / "recipe.yaml"
    p.write_text(
        f"evohub_recipe: 1\ndtype: {dtype}\ntokenizer_source: 0\ncomponents: {components}\nparameter_space:\n"
        f"  method: linear\n  normalize: true\n  models:\n{models}\n"
    )
    return p


def _unet(d: Path) -> dict[str, torch.Tensor]:
    files = sorted((d / "unet").glob("*.safetensors"))
    plain = [f for f in files if ".fp16." not in f.name] or files
    out: dict[str, torch.Tensor] = {}
    for f in plain:
        out |= load_file(f)
    return out


def test_merge_rebuilds_the_pipeline_against_an_independent_formula(world: Path, tmp_path: Path, run_cli):
    code, _, err = run_cli("merge", recipe(world), "--out", tmp_path / "out", "-q")
    assert code == 0, err
    out = tmp_path / "out"
    merged = _unet(out)
    sources = [_unet(world / n) for n in ("sdxl", "dpo", "juggernaut", "jsdxl")]
    assert sources[1][next(iter(sources[1]))].dtype == torch.float32  # DPO's UNet: float32 only
    assert sources[2][next(iter(sources[2]))].dtype == torch.float16  # the others: the fp16 variant
    assert set(merged) == set(sources[0]) and len(merged) > 100
    attn = 0
    for name, t in merged.items():
        g = 1 if re.search(ATTN, name) else 0
        attn += g
        w = [ws[g] for ws in WEIGHTS]
        expect = sum(wk * s[name].double() for wk, s in zip(w, sources, strict=True)) / sum(w)
        assert t.dtype == torch.float32 and torch.allclose(t.double(), expect, rtol=0, atol=1e-6), name
    assert 0 < attn < len(merged)
    # the text encoder and tokenizer of slot 1 are JSDXL's; the rest (slot 2, VAE, scheduler) the base's
    for comp, src in (("text_encoder", "jsdxl"), ("tokenizer", "jsdxl"), ("text_encoder_2", "sdxl"),
                      ("tokenizer_2", "sdxl"), ("vae", "sdxl"), ("scheduler", "sdxl")):  # fmt: skip
        want = {f.name.replace(".fp16", ""): f.read_bytes() for f in (world / src / comp).iterdir()}
        assert {f.name: f.read_bytes() for f in (out / comp).iterdir()} == want, (comp, src)
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and index["unet"] == [
        "diffusers",
        "UNet2DConditionModel",
    ]
    # the recipe travels with the model, and building it again gives the same bytes
    assert (out / "recipe.yaml").is_file()
    code, _, err = run_cli("merge", out / "recipe.yaml", "--out", tmp_path / "again", "-q")
    assert code == 0, err
    for f in (out / "unet").iterdir():
        assert f.read_bytes() == (tmp_path / "again" / "unet" / f.name).read_bytes(), f.name


def test_the_merged_pipeline_loads_and_generates(world: Path, tmp_path: Path, run_cli):
    from diffusers import StableDiffusionXLPipeline

    code, _, err = run_cli("merge", recipe(world), "--out", tmp_path / "out", "-q")
    assert code == 0, err
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "out")
    jsdxl = StableDiffusionXLPipeline.from_pretrained(world / "jsdxl", variant="fp16")
    for slot, want in (("tokenizer", jsdxl.tokenizer), ("tokenizer_2", pipe.tokenizer_2)):
        assert getattr(pipe, slot)("富士").input_ids == want("富士").input_ids  # JSDXL's in slot 1 only
    assert pipe.tokenizer("富士").input_ids != pipe.tokenizer_2("富士").input_ids
    g = torch.Generator().manual_seed(0)
    image = pipe("赤い富士山", num_inference_steps=2, guidance_scale=0.0, height=32, width=32, generator=g).images[0]
    assert image.size == (32, 32)


@pytest.mark.parametrize(
    "components,words",
    [
        ("{unet: 1}", "cannot be taken whole"),
        ("{text_encoder: 9}", "out of range"),
    ],
)
def test_recipe_refuses_bad_components(world: Path, tmp_path: Path, run_cli, components: str, words: str):
    code, _, err = run_cli("merge", recipe(world, components), "--out", tmp_path / "out")
    assert code == 2 and words in err and "components" in err, err


def test_an_unknown_component_is_a_one_line_error(world: Path, tmp_path: Path, run_cli):
    code, _, err = run_cli("merge", recipe(world, "{refiner: 1}"), "--out", tmp_path / "out")
    assert code == 2 and "'refiner' is not a component of the pipeline" in err and "Traceback" not in err, err


def test_a_job_names_whole_components_by_source_and_its_recipes_carry_them(tiny_world: Path):
    from evohub.errors import SpecError
    from evohub.evolve.genome import PSGenome
    from evohub.spec import load_job

    (tiny_world / "data.jsonl").write_text('{"text": "a b"}\n')
    text = (
        "evohub_job: 1\nname: comps\nsources:\n  - {{name: sdxl, path: ft1}}\n  - {{name: jsdxl, path: ft2}}\n"
        "tokenizer_source: sdxl\ncomponents: {components}\nparameter_space:\n  method: linear\n"
        "  optimizer: {{max_evals: 4}}\nfitness: {{task: lm-loss, data: {{path: data.jsonl}}, backend: hf}}\n"
    )
    p = tiny_world / "job.yaml"
    p.write_text(text.format(components="{text_encoder: jsdxl, tokenizer: jsdxl}"))
    genome = PSGenome.for_job(load_job(p))
    assert genome.decode(genome.x0()).components == {"text_encoder": 1, "tokenizer": 1}
    for bad, words in (("{text_encoder: jsdx}", "did you mean 'jsdxl'"), ("{unet: jsdxl}", "cannot be taken whole"),
                       ("{vae: base}", "'base' needs a 'base_model'")):  # fmt: skip
        p.write_text(text.format(components=bad))
        with pytest.raises(SpecError) as e:
            load_job(p)
        assert len(e.value.problems) == 1 and words in e.value.problems[0] and "components." in e.value.problems[0]


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    """A tiny SigLIP registered as an image judge: the real scorer's code on a model made here."""
    from evohub.local.tiny_sdxl import make_siglip
    from evohub.score.judges import JUDGES, Judge
    from evohub.score.judges.siglip import SiglipScorer

    path = make_siglip(tmp_path_factory.mktemp("judge") / "siglip", seed=0)
    JUDGES.register(Judge(name="tiny-siglip", doc="a tiny SigLIP made by the tests",
                          load=lambda device: SiglipScorer(str(path), device), item_range=(0.0, 1.0)))  # fmt: skip
    yield "tiny-siglip"
    JUDGES.unregister("tiny-siglip")


def sdxl_job(world: Path, evals: int = 8) -> Path:
    (world / "prompts.jsonl").write_text(
        "\n".join(json.dumps({"prompt": p, "seed": i}) for i, p in enumerate(["あかいふじさん", "あおいうみ", "ねこ"]))
        + "\n"
    )
    p = world / "sdxl-job.yaml"
    p.write_text(f"""\
evohub_job: 1
name: tiny-sdxl
seed: 0
sources:
  - {{name: sdxl, path: sdxl}}
  - {{name: dpo, path: dpo}}
  - {{name: juggernaut, path: juggernaut}}
  - {{name: jsdxl, path: jsdxl}}
dtype: float32
tokenizer_source: sdxl
components: {{text_encoder: jsdxl, tokenizer: jsdxl}}
parameter_space:
  method: linear
  normalize: true
  patterns: ['{ATTN}']
  weight: {{bounds: [0, 1]}}
  optimizer: {{popsize: 4, max_evals: {evals}}}
fitness:
  task: text-to-image
  data: {{path: prompts.jsonl}}
  backend: diffusion
  judge: tiny-siglip
  steps: 2
  image_size: 32
  batch_size: 3
""")
    return p


def test_a_worker_scores_candidates_merged_into_a_resident_pipeline(world: Path, judge: str, tmp_path: Path):
    from diffusers import StableDiffusionXLPipeline

    from evohub.evolve.genome import PSGenome
    from evohub.evolve.worker import WorkerSpec
    from evohub.merging.build import merge_to_disk
    from evohub.score.judges import JUDGES
    from evohub.spec import load_job

    spec = load_job(sdxl_job(world))
    genome = PSGenome.for_job(spec)
    dirs = tuple(str(world / n) for n in ("sdxl", "dpo", "juggernaut", "jsdxl"))
    worker = WorkerSpec("ps", genome, spec.fitness, 0, "float32", dirs).build()
    x = [0.9, 0.1, 0.3, 0.6, 0.2, 0.8, 0.5, 0.4]  # (conv, attn) per source
    recipe = genome.decode(x)
    out = worker.evaluate(x, recipe)
    assert out.error is None and len(out.scores) == 3 and out.metrics["n"] == 3.0
    assert out.fitness == pytest.approx(sum(out.scores) / 3) and all(0 < s < 1 for s in out.scores)
    # the same candidate merged to disk and run by diffusers itself gives the same scores
    merged = merge_to_disk(recipe, [Path(d) for d in dirs], tmp_path / "m")
    pipe = StableDiffusionXLPipeline.from_pretrained(merged, dtype=torch.float32)
    prompts = ["あかいふじさん", "あおいうみ", "ねこ"]  # one batch, each image from its row's seed, as the worker does
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    images = pipe(prompts, num_inference_steps=2, guidance_scale=0.0, height=32, width=32, generator=gens).images
    resident = dict(worker.backend.pipe.unet.named_parameters())
    assert all(torch.equal(resident[n], t) for n, t in _unet(merged).items())  # the same weights, bit for bit
    scores = JUDGES.get(judge).scorer("cpu").score(images, prompts)
    assert scores == pytest.approx(out.scores, abs=1e-6)
    # another candidate changes the images (and so the scores); the first one's come back exactly
    other = worker.evaluate([0.1] * 8, genome.decode([0.1] * 8))
    assert other.scores != out.scores
    again = worker.evaluate(x, recipe)
    assert again.scores == out.scores


def test_a_parameter_space_stage_evolves_a_pipeline_and_resumes(world: Path, judge: str, tmp_path: Path):
    from evohub.evolve.genome import PSGenome
    from evohub.evolve.pool import InProcessPool
    from evohub.evolve.search import Log, Scoring, run_stage
    from evohub.evolve.worker import WorkerSpec
    from evohub.spec import load_job

    spec = load_job(sdxl_job(world, evals=8))
    genome, opt = PSGenome.for_job(spec), spec.parameter_space.optimizer
    dirs = tuple(str(world / n) for n in ("sdxl", "dpo", "juggernaut", "jsdxl"))
    pool = InProcessPool(WorkerSpec("ps", genome, spec.fitness, 0, "float32", dirs))

    def stage(log: Path, cap: int | None = None):
        scoring = Scoring(item_range=(0.0, 1.0), matrix=log.with_suffix(".scores.jsonl"))
        return run_stage(
            "ps", genome, opt, pool, Log(log), tmp_path / "ck.json", seed=0, max_evals=cap, scoring=scoring
        )

    full = stage(tmp_path / "a.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert full.evaluations == 8 and all(r["error"] is None and 0 < r["fitness"] < 1 for r in rows)
    assert len({r["fitness"] for r in rows}) > 4  # the weights change the images
    assert full.best_fitness == max(r["fitness"] for r in rows)
    assert full.best.recipe.components == {"text_encoder": 3, "tokenizer": 3}
    # in two capped calls (5 candidates, then the rest), the same rows
    assert not stage(tmp_path / "b.jsonl", cap=5).complete
    assert stage(tmp_path / "b.jsonl").complete
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k != "seconds" and not k.endswith("_s")}  # noqa: E731
                       for x in p.read_text().splitlines()]  # fmt: skip
    assert strip(tmp_path / "b.jsonl") == strip(tmp_path / "a.jsonl")
    pool.close()
