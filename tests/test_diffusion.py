"""Diffusion pipelines: tiny SDXL-shaped pipelines merged by a recipe (the UNet by groups, the
other components taken whole), checked against an independent formula and loaded by diffusers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import hubserver
import pytest
import torch

pytest.importorskip("diffusers", reason="diffusion pipelines need the diffusion extra: pip install -e .[diffusion]")

from safetensors.torch import load_file

from evohub.local.tiny_sdxl import make_sdxl

hub = hubserver.hub  # the fixture

ATTN = r"to_q|to_k|to_v|to_out\.0"  # EvoSDXL-JP's attn group; the rest is conv
#: (conv, attn) weights per source: base SDXL, DPO (fp32 UNet only), Juggernaut, JSDXL (fp16 variants)
WEIGHTS = [(0.16, 0.19), (0.10, 0.20), (0.65, 0.39), (0.09, 0.22)]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sdxl")
    base = make_sdxl(root / "sdxl", seed=0)
    make_sdxl(
        root / "dpo", seed=1, base=base, unet_dtype=torch.float32, unet_only=True
    )  # SDXL-DPO: a float32 UNet alone
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
    plain = [f for f in files if ".fp16." in f.name] or files  # the fp16 variant when there (evohub.hub.pipelines)
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
def judge(world: Path) -> Path:
    """A tiny SigLIP for the real ``siglip2`` judge's code (``fitness.judge_model: {path: judge}``)."""
    from evohub.local.tiny_sdxl import make_siglip

    return make_siglip(world / "judge", seed=0)


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
  judge: siglip2
  judge_model: {{path: judge}}
  steps: 2
  image_size: 32
  batch_size: 3
""")
    return p


def test_a_worker_scores_candidates_merged_into_a_resident_pipeline(world: Path, judge: Path, tmp_path: Path):
    from diffusers import StableDiffusionXLPipeline

    from evohub.evolve.genome import PSGenome
    from evohub.evolve.worker import WorkerSpec
    from evohub.merging.build import merge_to_disk
    from evohub.score.judges import JUDGES
    from evohub.spec import load_job

    spec = load_job(sdxl_job(world))
    genome = PSGenome.for_job(spec)
    dirs = tuple(str(world / n) for n in ("sdxl", "dpo", "juggernaut", "jsdxl"))
    worker = WorkerSpec("ps", genome, spec.fitness, 0, "float32", dirs, judge_dir=str(judge)).build()
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
    scores = JUDGES.get("siglip2").scorer("cpu", str(judge)).score(images, prompts)
    assert scores == pytest.approx(out.scores, abs=1e-6)
    # another candidate changes the images (and so the scores); the first one's come back exactly
    other = worker.evaluate([0.1] * 8, genome.decode([0.1] * 8))
    assert other.scores != out.scores
    again = worker.evaluate(x, recipe)
    assert again.scores == out.scores


def test_a_parameter_space_stage_evolves_a_pipeline_and_resumes(world: Path, judge: Path, tmp_path: Path):
    from evohub.evolve.genome import PSGenome
    from evohub.evolve.pool import InProcessPool
    from evohub.evolve.search import Log, Scoring, run_stage
    from evohub.evolve.worker import WorkerSpec
    from evohub.spec import load_job

    spec = load_job(sdxl_job(world, evals=8))
    genome, opt = PSGenome.for_job(spec), spec.parameter_space.optimizer
    dirs = tuple(str(world / n) for n in ("sdxl", "dpo", "juggernaut", "jsdxl"))
    pool = InProcessPool(WorkerSpec("ps", genome, spec.fitness, 0, "float32", dirs, judge_dir=str(judge)))

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


@pytest.fixture(scope="module")
def lora(world: Path) -> Path:
    """A kohya-format LoRA (SDXL-Lightning's layout) for the tiny UNet, in a folder of its own."""
    from evohub.local.tiny_sdxl import make_lora

    return make_lora(world / "sdxl" / "unet", world / "lightning" / "tiny_lightning_4step_lora.safetensors", seed=5)


def test_a_lora_is_fused_at_its_scale_as_diffusers_fuses_it(world: Path, lora: Path, tmp_path: Path, run_cli):
    from diffusers import StableDiffusionXLPipeline

    text = recipe(world).read_text()
    plain = tmp_path / "plain"
    assert run_cli("merge", recipe(world), "--out", plain, "-q")[0] == 0
    fused_recipe = world / "recipe-lora.yaml"
    fused_recipe.write_text(text + "loras:\n  - source: {path: lightning, file: tiny_lightning_4step_lora.safetensors}\n"
                            "    scale: 0.7\n")  # fmt: skip
    code, _, err = run_cli("merge", fused_recipe, "--out", tmp_path / "fused", "-q")
    assert code == 0, err
    ours = _unet(tmp_path / "fused")
    # the independent reference: diffusers loads the kohya file into the plain merge and fuses it
    pipe = StableDiffusionXLPipeline.from_pretrained(plain, dtype=torch.float32)
    pipe.load_lora_weights(str(lora))
    pipe.fuse_lora(lora_scale=0.7)
    pipe.unload_lora_weights()
    theirs = pipe.unet.state_dict()
    before = _unet(plain)
    changed = [n for n in ours if not torch.equal(ours[n], before[n])]
    factors = [k for k in load_file(lora) if k.endswith(".lora_down.weight")]
    assert len(changed) == len(factors) == 36  # q, k, v, out of 8 attentions, and 4 feed-forward outputs
    for n, t in ours.items():
        assert torch.allclose(t, theirs[n], atol=1e-6, rtol=1e-5), n


def lora_job(world: Path, more: str = "") -> Path:
    """The tiny job with the kohya LoRA fused at a searched scale (one gene after the merge's)."""
    p = world / "lora-job.yaml"
    p.write_text(sdxl_job(world, evals=8).read_text() + "loras:\n  - {name: lightning, path: lightning, "
                 "file: tiny_lightning_4step_lora.safetensors, scale: {bounds: [0, 1]}}\n" + more)  # fmt: skip
    return p


def test_a_candidate_with_a_lora_is_the_same_in_memory_as_on_disk(world: Path, judge: Path, lora: Path,
                                                                   tmp_path: Path):  # fmt: skip
    from evohub.evolve.genome import PSGenome
    from evohub.evolve.worker import WorkerSpec
    from evohub.merging.build import merge_to_disk
    from evohub.spec import load_job

    spec = load_job(lora_job(world))
    genome = PSGenome.for_job(spec)
    assert genome.dims == 9
    dirs = tuple(str(world / n) for n in ("sdxl", "dpo", "juggernaut", "jsdxl", "lightning"))
    worker = WorkerSpec("ps", genome, spec.fitness, 0, "float32", dirs, judge_dir=str(judge)).build()
    x = [0.9, 0.1, 0.3, 0.6, 0.2, 0.8, 0.5, 0.4, 0.75]
    recipe = genome.decode(x)
    assert recipe.loras[0].scale == pytest.approx(0.75)
    first = worker.evaluate(x, recipe)
    assert first.error is None
    merged = merge_to_disk(recipe, [Path(d) for d in dirs], tmp_path / "m")
    resident = dict(worker.backend.pipe.unet.named_parameters())
    assert all(torch.equal(resident[n], t) for n, t in _unet(merged).items())  # bit for bit
    other = worker.evaluate([*x[:-1], 0.0], genome.decode([*x[:-1], 0.0]))  # the LoRA off: other images
    assert other.scores != first.scores
    assert worker.evaluate(x, recipe).scores == first.scores  # fused afresh, never piled up
    assert all(torch.equal(resident[n], t) for n, t in _unet(merged).items())


def test_a_tiny_sdxl_job_evolves_evaluates_renders_the_grid_and_publishes(world: Path, judge: Path, lora: Path,
                                                                          hub, tmp_path: Path, run_cli):  # fmt: skip
    """`evohub run` of a diffusion job with a searched LoRA scale, end to end on the CPU."""
    from diffusers import StableDiffusionXLPipeline
    from huggingface_hub import ModelCard, snapshot_download

    (world / "heldout.jsonl").write_text("".join(json.dumps({"prompt": p, "seed": 100 + i}, ensure_ascii=False) + "\n"
                                                 for i, p in enumerate(["しろいねこ", "あおいそら", "みどりのやま"])))  # fmt: skip
    p = lora_job(world, "scheduler: {timestep_spacing: trailing}\n"
                        "evaluation: {suites: [text-to-image], backend: diffusion, data: {text-to-image: heldout.jsonl}}\n"
                        "publish: {repo: me/EvoSDXL-tiny, card: sdxl, include_data: true}\n")  # fmt: skip
    code, out, err = run_cli("plan", p, "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["stages"][0]["dims"] == 9 and plan["stages"][0]["dims_detail"].endswith("+ 1 LoRA scale(s)")
    assert any(n.startswith("merging streams one tensor at a time: host memory stays under") for n in plan["notes"])
    assert [s["model_type"] for s in plan["sources"]][1:] == ["UNet2DConditionModel (UNet alone)",
                                                             "StableDiffusionXLPipeline", "StableDiffusionXLPipeline", "LoRA"]  # fmt: skip
    code, out, err = run_cli("run", p, "--run-dir", tmp_path / "run", "-q")
    assert code == 0, err
    run = tmp_path / "run"
    recipe_text = (run / "recipe.yaml").read_text()
    assert "loras:" in recipe_text and "tiny_lightning_4step_lora.safetensors" in recipe_text
    results = json.loads((run / "results.json").read_text())
    # every whole pipeline is evaluated, the UNet alone (dpo) is not; the grid has a column each
    assert set(results["models"]) == {"evolved", "sdxl", "juggernaut", "jsdxl", "untuned merge"}
    assert all(len(list((run / "eval" / n / "images" / "text-to-image").glob("*.png"))) == 3 for n in results["models"])
    assert (run / "samples.png").is_file()
    files = hub.files("me/EvoSDXL-tiny")
    assert {"model_index.json", "unet/config.json", "text_encoder/config.json", "samples.png", "recipe.yaml"} <= set(
        files
    )
    assert files["text_encoder/model.safetensors"] == (world / "jsdxl/text_encoder/model.fp16.safetensors").read_bytes()
    assert json.loads(files["scheduler/scheduler_config.json"])["timestep_spacing"] == "trailing"
    assert json.loads((world / "sdxl/scheduler/scheduler_config.json").read_text())["timestep_spacing"] == "leading"
    card = ModelCard(files["README.md"].decode())
    assert (card.data.library_name, card.data.pipeline_tag) == ("diffusers", "text-to-image")
    readme = files["README.md"].decode()
    assert "![samples](samples.png)" in readme and 'DiffusionPipeline.from_pretrained("me/EvoSDXL-tiny"' in readme
    # the prompts are in the commit (include_data), and the card links them by their place there
    assert files["data/prompts.jsonl"] == (world / "prompts.jsonl").read_bytes()
    assert files["data/heldout.jsonl"] == (world / "heldout.jsonl").read_bytes()
    assert "`text-to-image` on [`data/prompts.jsonl`](data/prompts.jsonl)[train]" in readme
    assert "whose UNet merges\n4 SDXL models" in readme  # the LoRA is no merged model: it is fused at its scale
    assert "lightning's LoRA (`tiny_lightning_4step_lora.safetensors`) is fused into the merged UNet at scale" in readme
    assert "| `text_encoder` | jsdxl |" in readme and "\\|to_k" in readme  # a group's pattern escaped in its table
    # evohub verify rebuilds it from the recipe (the LoRA file too) and compares every component's files
    code, out, err = run_cli("verify", "me/EvoSDXL-tiny", "--sources-dir", run, "--device", "cpu", "-q")
    assert code == 0 and "verified: the rebuild is identical" in out, out + err
    for name in ("unet/diffusion_pytorch_model-00001-of-00001.safetensors", "text_encoder/model.safetensors",
                 "model_index.json", "scheduler/scheduler_config.json"):  # fmt: skip
        assert f"equal     {name}" in out, out
    # the published pipeline loads with diffusers alone and generates
    local = snapshot_download("me/EvoSDXL-tiny")
    pipe = StableDiffusionXLPipeline.from_pretrained(local, dtype=torch.float32)
    image = pipe("ねこ", num_inference_steps=2, guidance_scale=0.0, height=32, width=32).images[0]
    assert image.size == (32, 32)


def test_the_evosdxl_jp_job_plans_memory_and_time_for_the_real_sources():
    """jobs/evosdxl-jp.yaml on the real layouts (SDXL's UNet config; the sizes the Hub lists)."""
    from evohub.pipeline.cost import estimate_cost
    from evohub.pipeline.gpu import gpu_plan
    from evohub.pipeline.plan import make_plan
    from evohub.spec import load_job

    unet = json.loads((Path(__file__).parent / "data" / "sdxl_unet_config.json").read_text())
    index = {"_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}
    fp16 = {"unet": [("unet/diffusion_pytorch_model.fp16.safetensors", 5_135_149_760)],
            "text_encoder": [("text_encoder/model.fp16.safetensors", 246_144_152)],
            "text_encoder_2": [("text_encoder_2/model.fp16.safetensors", 1_389_382_176)],
            "vae": [("vae/diffusion_pytorch_model.fp16.safetensors", 167_335_342)]}  # fmt: skip
    layouts = {"sdxl": (index, unet, fp16), "juggernaut": (index, unet, fp16), "jsdxl": (index, unet, fp16),
               "dpo": (None, unet, {"unet": [("unet/diffusion_pytorch_model.safetensors", 10_270_077_736)]}),
               "lightning": 393_854_592, "vae_scale": 8}  # fmt: skip
    job = load_job(Path(__file__).parents[1] / "jobs" / "evosdxl-jp.yaml")
    plan = make_plan(job, layouts=layouts)
    assert [s.params for s in plan.sources[:4]] == [2_567_463_684] * 4  # SDXL's UNet, counted on the meta device
    assert [s.stored_dtype for s in plan.sources[:4]] == ["float16", "float32", "float16", "float16"]
    assert plan.stages[0].dims == 9 and plan.stages[0].evaluations == 200
    # a worker: 4 resident UNets + the pipeline's own in float16, + the text encoders and VAE
    assert plan.accelerator_bytes == 5 * 2_567_463_684 * 2 + 246_144_152 + 1_389_382_176 + 167_335_342
    # merging streams: 5 copies of the largest tensor (29.5M elements, float32 for DPO's), the merged one, a shard
    assert plan.image.largest_tensor == 29_491_200 and plan.host_bytes < 3e9
    assert 6.5e12 < plan.image.unet_flops < 7e12 and plan.image.latent_size == 128  # one 1024x1024 step
    gpu = gpu_plan(job, plan, "h100")
    assert gpu.fits and gpu.stages[0].resident == 4 * 2_567_463_684 * 2
    cost = estimate_cost(job, plan, "h100")
    (stage,) = cost.stages
    assert stage.items == 200 * 48
    # 48 images x 4 steps x 6.8 TFLOPs at a quarter of the H100's peak (5.2 s a candidate), + each
    # candidate's merge of 5.1 GB at the measured merge rate (1.5 s)
    assert 0.25 < stage.generation_hours < 0.35 and 0.05 < stage.merge_hours < 0.1


def test_a_pull_fetches_one_variant_of_each_named_component_and_nothing_else():
    """The SDXL base listing (recorded snapshot): fp16 weights, configs and tokenizer files of the
    components model_index.json names; never the 6.9 GB single file, the float32 copies, the
    OpenVINO exports or the extra VAE folder."""
    import fnmatch

    from evohub.hub.pipelines import chosen_weights, pipeline_patterns
    from evohub.local.snapshot import load_snapshot

    snap = load_snapshot("stabilityai/stable-diffusion-xl-base-1.0", "model")
    names = list(snap.files)
    fetched = {n for n in names if any(fnmatch.fnmatch(n, p) for p in pipeline_patterns(names, snap.config))}
    weights = {n for n in fetched if n.endswith(".safetensors")}
    assert weights == {"unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
                       "text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors"}  # fmt: skip
    assert "model_index.json" in fetched and "tokenizer/merges.txt" in fetched
    assert not {n for n in fetched if n.startswith(("vae_1_0/", "vae_decoder/", "vae_encoder/"))}
    dpo = load_snapshot("mhdang/dpo-sdxl-text2image-v1", "model")  # a UNet alone, float32 only
    assert chosen_weights(list(dpo.files), None) == {"unet": ["unet/diffusion_pytorch_model.safetensors"]}


def test_the_sdxl_tiny_example_runs_publishes_and_verifies(tmp_path: Path, run_cli):
    code, out, err = run_cli("example", "sdxl-tiny", "--dir", tmp_path, "--max-evals", "4", "-q")
    assert code == 0, err
    assert "verified: the rebuild is identical" in out and "sdxl-tiny example complete" in out
    assert (tmp_path / "run" / "samples.png").is_file() and (tmp_path / "hub" / "evohub" / "EvoSDXL-tiny").is_dir()
    code, _, err = run_cli("example", "sdxl-tiny", "--dir", tmp_path, "--layers", "2")
    assert code == 2 and "--layers and --steps apply to the real-weights example" in err


def test_a_pipeline_of_its_own_code_is_never_loaded_but_gives_its_components(world: Path, tmp_path: Path, run_cli):
    """JSDXL's layout: model_index.json names its own pipeline class and a component of its own
    module. As the primary it is refused in one line (merge and backend); taken by component, fine;
    its .py is never imported."""
    import shutil

    from evohub.errors import ScoreError
    from evohub.score.backends.diffusion import DiffusionBackend

    custom = tmp_path / "jsdxl-own"
    shutil.copytree(world / "jsdxl", custom)
    index = json.loads((custom / "model_index.json").read_text())
    index |= {"_class_name": ["pipeline_own", "OwnPipeline"], "null_encoder": ["modeling_own", "NullModel"]}
    (custom / "model_index.json").write_text(json.dumps(index))
    (custom / "pipeline_own.py").write_text("raise SystemExit('remote code ran')\n")
    (custom / "modeling_own.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ScoreError, match=r"names code of its own .*pipeline pipeline_own\.OwnPipeline; null_encoder"):
        DiffusionBackend.load(custom, {}, "cpu", torch.float32)
    text = recipe(world).read_text().replace("path: jsdxl}", f"path: {custom}}}")
    first = text.replace("    - source: {path: sdxl}", f"    - source: {{path: {custom}}}", 1)  # it as the primary
    (world / "first-own.yaml").write_text(first.replace(f"    - source: {{path: {custom}}}\n      weight: 0.09",
                                                       "    - source: {path: sdxl}\n      weight: 0.09"))  # fmt: skip
    code, _, err = run_cli("merge", world / "first-own.yaml", "--out", tmp_path / "o1", "-q")
    assert code == 2 and "names code of its own" in err and "Traceback" not in err, err
    (world / "last-own.yaml").write_text(text)  # taken by its components only: merges
    code, _, err = run_cli("merge", world / "last-own.yaml", "--out", tmp_path / "o2", "-q")
    assert code == 0, err
    assert json.loads((tmp_path / "o2" / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
