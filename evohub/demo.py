"""The embedded default: a tiny local world and every stage of a job that exists so far.

``evohub demo`` builds, in ``--dir`` (default ``.cache/evohub-demo``), a random tiny Mistral base
and two fine-tunes of it (safetensors, with a tokenizer), writes a job spec and a recipe for
them, and runs what evohub can do today on that world: validate → plan → merge (dare_ties) →
export the recipe to mergekit → load the merged model with transformers and generate.
Everything is deterministic from ``--seed``, offline, and takes seconds on a CPU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

VOCAB = 256


def _tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(VOCAB - 2)} | {"<unk>": VOCAB - 2, "</s>": VOCAB - 1}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="</s>"
    ).save_pretrained(path)


def build_world(root: Path, seed: int = 0) -> dict[str, Path]:
    """A base (4 layers, hidden 128, head_dim 32) and two fine-tunes = base + seeded noise."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=128,
        tie_word_embeddings=False, eos_token_id=VOCAB - 1, bos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    torch.manual_seed(seed)
    base = MistralForCausalLM(cfg)
    dirs = {}
    for i, name in enumerate(("base", "ft-a", "ft-b")):
        model = base if i == 0 else MistralForCausalLM(cfg)
        if i:
            g = torch.Generator().manual_seed(seed * 100 + i)
            with torch.no_grad():
                for p, q in zip(model.parameters(), base.parameters(), strict=True):
                    p.copy_(q + 0.02 * torch.randn(q.shape, generator=g))
        d = root / name
        model.to(torch.bfloat16).save_pretrained(d)
        _tokenizer(d)
        dirs[name] = d
    return dirs


JOB = """\
evohub_job: 1
name: demo
description: A tiny local world; evolution, evaluation and publishing join as they land.
seed: {seed}
base_model: {{path: base}}
sources:
  - {{name: a, path: ft-a}}
  - {{name: b, path: ft-b}}
dtype: bfloat16
tokenizer_source: base
parameter_space:
  method: dare_ties
  layer_groups: 2
  weight: {{bounds: [0, 1]}}
  density: {{bounds: [0.1, 1]}}
  optimizer: {{max_evals: 40, popsize: 8}}
fitness:
  task: ja-math
  data: {{path: data.jsonl}}
  backend: hf
"""

RECIPE = """\
evohub_recipe: 1
base_model: {{path: base}}
dtype: bfloat16
seed: {seed}
tokenizer_source: base
parameter_space:
  method: dare_ties
  layer_groups: 2
  models:
    - {{source: {{path: ft-a}}, weight: [0.8, 0.3], density: 0.7}}
    - {{source: {{path: ft-b}}, weight: [0.2, 0.9], density: [0.5, 0.9]}}
"""


def run(root: Path, seed: int = 0) -> int:
    from rich.console import Console

    from evohub.cli import main as cli

    console = Console()
    root.mkdir(parents=True, exist_ok=True)
    step = 0

    def say(what: str) -> None:
        nonlocal step
        step += 1
        console.print(f"\n[bold]{step}. {what}[/bold]")

    say(f"build the local world in {root} (seed {seed})")
    t = time.perf_counter()
    build_world(root, seed)
    (root / "data.jsonl").write_text(json.dumps({"question": "w1 w2", "answer_number": 3}) + "\n")
    (root / "job.yaml").write_text(JOB.format(seed=seed))
    (root / "recipe.yaml").write_text(RECIPE.format(seed=seed))
    console.print(f"base + 2 fine-tunes written in {time.perf_counter() - t:.1f} s")
    for what, args in (
        ("validate the job spec and the recipe", ["validate", str(root / "job.yaml"), str(root / "recipe.yaml")]),
        ("plan the job", ["plan", str(root / "job.yaml")]),
        ("merge the recipe (dare_ties, 2 layer groups)", ["merge", str(root / "recipe.yaml"), "--out", str(root / "merged"), "--force"]),
        ("the recipe as a mergekit config", ["export-mergekit", str(root / "recipe.yaml")]),
    ):  # fmt: skip
        say(what)
        code = cli(args)
        if code:
            return code
    say("load the merged model with transformers and generate")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(root / "merged")
    tok = AutoTokenizer.from_pretrained(root / "merged")
    ids = tok("w1 w2 w3", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=6, do_sample=False)
    console.print(f"prompt 'w1 w2 w3' → {tok.decode(out[0, ids.shape[1] :])!r}")
    console.print("\n[green]demo complete[/green]: every stage that exists ran on the local world.")
    return 0
