"""The embedded default: a tiny local world and every stage of a job that exists so far.

``evohub demo`` runs ``jobs/demo.yaml`` on the local world of ``jobs/demo-world`` (see
:mod:`evohub.world`; ``--train-world`` retrains it from its seed): validate → plan → pull
(local) → evolve the parameter space, then a data-flow path → merge the winner → evaluate it,
its sources and the untuned merge on 300 held-out problems → card → publish to a local Hub
(:mod:`evohub.localhub`, through the real huggingface_hub client) → a table. Offline, CPU,
about a minute. :func:`check_wiring` (``evohub wiring``) reuses the random tiny world here.
"""

from __future__ import annotations

import json
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


def _texts(seed: int, n: int = 64) -> str:
    import random

    rng = random.Random(seed)
    rows = [json.dumps({"text": " ".join(f"w{rng.randrange(VOCAB - 2)}" for _ in range(16))}) for _ in range(n)]
    return "\n".join(rows) + "\n"


def run(
    root: Path, seed: int = 0, train_world: bool = False, max_evals: int | None = None, progress: bool = True
) -> int:
    """The demo: jobs/demo.yaml on the local world, published to a local Hub, with a comparison."""
    import shutil

    from rich.console import Console
    from rich.table import Table

    from evohub import localhub
    from evohub.cli import main as cli
    from evohub.job import run_job
    from evohub.spec import load_job

    console = Console()
    spec_path = Path(__file__).resolve().parents[1] / "jobs" / "demo.yaml"
    if not spec_path.exists():
        from evohub.errors import EvohubError

        raise EvohubError(f"{spec_path}: missing; the demo runs from a checkout of the evohub repository")
    root.mkdir(parents=True, exist_ok=True)
    step = 0

    def say(what: str) -> None:
        nonlocal step
        step += 1
        console.print(f"\n[bold]{step}. {what}[/bold]")

    if train_world:
        from evohub.world import build_world, write_splits

        say(f"train the local world in {root / 'world'} (seed {seed}; about 3.5 min on 2 cores, then cached)")
        world = root / "world"
        build_world(world, seed, progress=progress)
        write_splits(world, seed)
        text = spec_path.read_text().replace("demo-world/", f"{world}/").replace("seed: 0", f"seed: {seed}")
        spec_path = root / "demo.yaml"
        spec_path.write_text(text)
    for what, args in (
        ("validate the job spec", ["validate", str(spec_path)]),
        ("plan the job", ["plan", str(spec_path)]),
    ):
        say(what)
        if cli(args):
            return 2
    spec = load_job(spec_path)
    run_dir = root / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # the demo runs whole each time (about a minute)
    say(
        "run it: pull (local) → evolve PS, then DFS → merge the best → evaluate on 300 held-out problems → card → publish to a local Hub"
    )
    with localhub.serve(root / "hf") as hub:
        summary = run_job(spec_path, run_dir, device="cpu", progress=progress, max_evals=max_evals)
        repo = spec.publish.repo if spec.publish else None
        exported = hub.export(repo, root / "hub" / repo) if repo else []
    say("the evolved merge against its sources and the untuned merge (held-out test split)")
    table = Table(
        "model",
        "acc_ja (right, in Japanese)",
        "acc (right)",
        "answers in Japanese",
        title="Japanese arithmetic: 問 12+34 答 → 46です",
    )
    scores = {}
    for name, res in (summary.results or {}).get("models", {}).items():
        m = res["suites"]["ja-math"]["metrics"]
        scores[name] = m["acc_ja"]
        table.add_row(name, f"{100 * m['acc_ja']:.1f}", f"{100 * m['acc']:.1f}", f"{100 * m['ja_rate']:.1f}")
    console.print(table)
    others = {k: v for k, v in scores.items() if k not in ("evolved", "untuned merge")}
    if scores:
        best = max(others, key=others.get)
        console.print(
            f"evolved: {100 * scores['evolved']:.1f}%, {100 * (scores['evolved'] - others[best]):+.1f} points over the best source "
            f"({best}) and {100 * (scores['evolved'] - scores.get('untuned merge', 0)):+.1f} over the untuned merge"
        )
    say("examples from the evolved model")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(summary.model_dir)
    tok = AutoTokenizer.from_pretrained(summary.model_dir)
    for q in ("12+34", "57+38", "81+19"):
        ids = tok(f"問 {q} 答 ", return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        console.print(f"問 {q} 答 → {tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)}")
    if summary.published:
        p = summary.published
        console.print(f"\npublished to the local Hub: {p['repo']} commit {str(p['commit'])[:12]}, tag {p['tag']} ({len(exported)} files, "
                      f"copied to {root / 'hub' / p['repo']})")  # fmt: skip
    console.print(f"recipe: {summary.run_dir / 'recipe.yaml'}   fitness curve: {summary.run_dir / 'fitness.png'}")
    console.print("\n[green]demo complete[/green]")
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
