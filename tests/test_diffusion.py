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
