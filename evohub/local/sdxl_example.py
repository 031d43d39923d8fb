"""``evohub example sdxl-tiny``: EvoSDXL-JP's job shape on tiny SDXL pipelines, end to end on a CPU
in under a minute (docs/design.md#diffusion-pipelines).

The world mirrors the real sources' layouts: ``sdxl`` (a pipeline in float32), ``dpo`` (a UNet
alone, float32), ``juggernaut`` (fp16 variant files only), ``jsdxl`` (fp16, a first text encoder of
its own, a ``CLIPTextModelWithProjection``, and its own tokenizer), a kohya-format LoRA in
``lightning/`` and a tiny SigLIP judge; the UNets are one base's with seeded noise. The job is
``jobs/evosdxl-jp.yaml``'s: the attn / conv groups from the published stage-1 weights, JSDXL's
text encoder in slot 1, the LoRA at an evolved scale, trailing Euler spacing, held-out prompts.
It is run, its winner evaluated against each whole-pipeline source and the untuned merge,
``samples.png`` rendered, the pipeline published to a local Hub and checked with ``evohub verify``.
The weights are random: the images are noise, and the scores say nothing about quality.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

#: the job's prompts (a few of jobs/evosdxl-jp's) and held-out prompts, each with a fixed seed
PROMPTS = ["富士山と桜、春の朝", "縁側で眠る三毛猫", "提灯が並ぶ夏祭りの夜店", "雪に覆われた白川郷の合掌造り"]
HELDOUT = ["夕暮れの五重塔と桜", "金魚すくいをする子ども", "霧に包まれた山寺", "雪だるまと子どもたち"]


def build_world(root: Path, seed: int = 0) -> Path:
    """The tiny sources, LoRA, judge and prompt files in ``root`` (made once; kept)."""
    from evohub.local.tiny_sdxl import make_lora, make_sdxl, make_siglip

    if (root / "world.json").is_file():
        return root
    base = make_sdxl(root / "sdxl", seed=seed)
    make_sdxl(root / "dpo", seed=seed + 1, base=base, unet_only=True)
    make_sdxl(root / "juggernaut", seed=seed + 2, base=base, variant="fp16")
    make_sdxl(root / "jsdxl", seed=seed + 3, base=base, variant="fp16", text_encoder_seed=seed + 7,
              text_encoder_class="CLIPTextModelWithProjection")  # fmt: skip
    make_lora(base / "unet", root / "lightning" / "tiny_lightning_4step_lora.safetensors", seed=seed + 5, scale=0.05)
    make_siglip(root / "judge", seed=seed)
    for name, prompts, first in (("prompts", PROMPTS, 0), ("heldout", HELDOUT, 1000)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": p, "seed": first + i}, ensure_ascii=False) + "\n"
                                                    for i, p in enumerate(prompts)))  # fmt: skip
    (root / "world.json").write_text(json.dumps({"seed": seed}))
    return root


def write_job(root: Path, world: Path, seed: int, max_evals: int | None) -> Path:
    """The job: jobs/evosdxl-jp.yaml's structure over the tiny world."""
    evals = max_evals or 12
    x0 = "[0.159, 0.188, 0.103, 0.200, 0.650, 0.392, 0.087, 0.220, 1.0]"  # the published stage-1 weights, the LoRA on
    path = root / "evosdxl-tiny.yaml"
    w = world.resolve()
    path.write_text(f"""\
evohub_job: 1
name: evosdxl-tiny
description: EvoSDXL-JP's job on tiny random SDXL pipelines (a CPU example; the images are noise).
seed: {seed}
sources:
  - {{name: sdxl, path: {w / "sdxl"}}}
  - {{name: dpo, path: {w / "dpo"}}}
  - {{name: juggernaut, path: {w / "juggernaut"}}}
  - {{name: jsdxl, path: {w / "jsdxl"}}}
dtype: float32
tokenizer_source: sdxl
components: {{text_encoder: jsdxl, tokenizer: jsdxl}}
loras:
  - {{name: lightning, path: {w / "lightning"}, file: tiny_lightning_4step_lora.safetensors, scale: {{bounds: [0, 1]}}}}
scheduler: {{timestep_spacing: trailing}}
parameter_space:
  method: linear
  normalize: true
  patterns: ['to_q|to_k|to_v|to_out\\.0']
  weight: {{bounds: [0, 1]}}
  optimizer: {{x0: {x0}, sigma0: 0.1, popsize: 4, max_evals: {evals}}}
fitness:
  task: text-to-image
  data: {{path: {w / "prompts.jsonl"}}}
  backend: diffusion
  judge: siglip2
  judge_model: {{path: {w / "judge"}}}
  steps: 4
  guidance_scale: 0
  image_size: 32
  batch_size: 4
evaluation:
  suites: [text-to-image]
  backend: diffusion
  data: {{text-to-image: {w / "heldout.jsonl"}}}
publish: {{repo: evohub/EvoSDXL-tiny, card: sdxl}}
""")
    return path


def run_example(root: Path, seed: int = 0, max_evals: int | None = None, progress: bool = True) -> int:
    """Build the world, run the job, publish and verify it; print the held-out judge scores."""
    from rich.console import Console
    from rich.table import Table

    from evohub.local.demo import Steps, published_run, report_published

    console = Console()
    say = Steps(console)
    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    say("tiny SDXL pipelines in the real sources' layouts, a kohya LoRA and a tiny SigLIP judge (once)")
    world = build_world(root / "world", seed)
    summary = published_run(write_job(root, world, seed, max_evals), root, say, progress)
    table = Table("model", "judge (held-out, mean P(prompt describes image))", title="held-out prompts")
    for name, res in (summary.results or {}).get("models", {}).items():
        table.add_row(name, f"{res['suites']['text-to-image']['metrics']['judge']:.4f}")
    console.print(table)
    console.print(f"samples: {summary.run_dir / 'samples.png'}")
    report_published(summary, root, console)
    console.print(f"\n[green]sdxl-tiny example complete[/green] (seed {seed}, {time.perf_counter() - started:.0f} s; "
                  "random weights: the scores say nothing about quality)")  # fmt: skip
    return 0
