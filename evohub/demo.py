"""The embedded default: a tiny local world and every stage of a job that exists so far.

``evohub demo`` builds, in ``--dir`` (default ``.cache/evohub-demo``), a random tiny Mistral base
and two fine-tunes of it (safetensors, with a tokenizer) and a text set, writes a job spec for
them, and runs what evohub can do today on that world: validate → plan → run (evolve a
dare_ties merge, then a layer path through it, scored by language-model loss; merge the
winner) → export the recipe to mergekit → load the evolved model and generate. Deterministic
from ``--seed``, offline, seconds on a CPU. (The demo of the full job, where the evolved merge
gains a skill no source has, replaces this world when it lands.)
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
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>").save_pretrained(path)


def build_world(root: Path, seed: int = 0, fine_tunes: int = 2) -> dict[str, Path]:
    """A base (4 layers, hidden 128, head_dim 32) and fine-tunes = base + seeded noise
    (``ft-a``, ``ft-b``, ...)."""
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
    for i, name in enumerate(["base"] + [f"ft-{chr(ord('a') + k)}" for k in range(fine_tunes)]):
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
description: A tiny local world; the skill world of the full demo replaces it.
seed: {seed}
base_model: {{path: base}}
sources:
  - {{name: a, path: ft-a}}
  - {{name: b, path: ft-b}}
dtype: float32
tokenizer_source: base
parameter_space:
  method: dare_ties
  layer_groups: 2
  weight: {{bounds: [0, 1]}}
  density: {{bounds: [0.1, 1]}}
  optimizer: {{max_evals: 32, popsize: 8}}
data_flow_space:
  a: ps
  b: b
  repeats: 2
  optimizer: {{max_evals: 16, popsize: 8}}
fitness:
  task: lm-loss
  data: {{path: data.jsonl, split: "train[:48]"}}
  validation: {{path: data.jsonl, split: "train[48:]"}}
  backend: hf
"""


def _texts(seed: int, n: int = 64) -> str:
    import random

    rng = random.Random(seed)
    rows = [json.dumps({"text": " ".join(f"w{rng.randrange(VOCAB - 2)}" for _ in range(16))}) for _ in range(n)]
    return "\n".join(rows) + "\n"


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
    (root / "data.jsonl").write_text(_texts(seed))
    (root / "job.yaml").write_text(JOB.format(seed=seed))
    console.print(f"base + 2 fine-tunes written in {time.perf_counter() - t:.1f} s")
    run_dir = root / "run"
    for what, args in (
        ("validate the job spec", ["validate", str(root / "job.yaml")]),
        ("plan the job", ["plan", str(root / "job.yaml")]),
        ("run it: evolve PS (dare_ties), then DFS (layer paths), merge the winner", ["run", str(root / "job.yaml"), "--run-dir", str(run_dir), "--device", "cpu"] + (["--resume"] if (run_dir / "job.yaml").exists() else [])),
        ("the evolved parameter-space recipe as a mergekit config", ["export-mergekit", str(run_dir / "stages" / "ps" / "recipe.yaml")]),
    ):  # fmt: skip
        say(what)
        code = cli(args)
        if code:
            return code
    say("load the evolved model with transformers and generate")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    tok = AutoTokenizer.from_pretrained(run_dir / "model")
    ids = tok("w1 w2 w3", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=6, do_sample=False)
    console.print(f"prompt 'w1 w2 w3' → {tok.decode(out[0, ids.shape[1] :])!r}")
    console.print("\n[green]demo complete[/green]: every stage that exists ran on the local world.")
    return 0


def check_wiring(spec_path: Path, root: Path, progress: bool = False) -> dict:
    """Run a job spec's structure end to end on the tiny world, with a tiny budget.

    The spec's sources become tiny fine-tunes of a tiny base (the same count and names); its
    search spaces, methods, layer groups and stages are kept (layer groups and repeats capped
    to the tiny models), each stage runs one small generation, fitness is language-model loss
    on generated text, evaluation and publishing are left out. What this checks is the wiring:
    that the spec's genomes decode, its merges and folds build, and its stages chain.
    """
    from evohub.job import run_job
    from evohub.spec import load_job
    from evohub.yamlio import dump_yaml

    spec = load_job(spec_path)
    root.mkdir(parents=True, exist_ok=True)
    dirs = build_world(root, spec.seed, fine_tunes=len(spec.sources))
    (root / "data.jsonl").write_text(_texts(spec.seed, 16))
    data = spec.model_dump(mode="json", exclude_none=True)
    names = sorted(d for d in dirs if d != "base")
    data["base_model"] = {"path": str(dirs["base"])}
    data["sources"] = [{"name": s.key, "path": str(dirs[n])} for s, n in zip(spec.sources, names, strict=True)]
    data["dtype"] = "float32"
    for key in ("parameter_space", "data_flow_space"):
        part = data.get(key)
        if part:
            pop = min(part["optimizer"].get("popsize") or 4, 4)
            part["optimizer"] = {"x0": part["optimizer"].get("x0", 0.5), "sigma0": part["optimizer"].get("sigma0", 1 / 6),
                                 "popsize": pop, "max_evals": pop}  # fmt: skip
    if data.get("parameter_space"):
        data["parameter_space"]["layer_groups"] = min(data["parameter_space"].get("layer_groups", 1), 4)
    if data.get("data_flow_space"):
        data["data_flow_space"]["repeats"] = min(data["data_flow_space"].get("repeats", 3), 2)
    data["fitness"] = {"task": "lm-loss", "data": {"path": str(root / "data.jsonl")}, "backend": "hf"}
    data.pop("evaluation", None)
    data.pop("publish", None)
    wired = root / "wiring.yaml"
    wired.write_text(dump_yaml(data))
    summary = run_job(wired, root / "run", device="cpu", progress=progress, publish=False)
    return {
        "spec": str(spec_path),
        "stages": [{"stage": st.stage, "evaluations": st.evaluations, "failed": st.failed} for st in summary.stages],
        "recipe": str(summary.run_dir / "recipe.yaml"),
        "model": str(summary.model_dir),
    }
