"""The embedded default, end to end: `evohub demo` on the committed local world (about a minute)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_demo_evolves_a_skill_no_source_has(tmp_path, run_cli):
    code, out, err = run_cli("demo", "--dir", tmp_path, "-q")
    assert code == 0, err
    run = tmp_path / "run"
    for f in ("recipe.yaml", "fitness.png", "results.json", "candidates.jsonl", "model/model.safetensors.index.json",
              "stages/ps/recipe.yaml", "stages/dfs/recipe.yaml", "published.json"):  # fmt: skip
        assert (run / f).exists(), f
    scores = {
        name: r["suites"]["ja-math"]["metrics"]["acc_ja"]
        for name, r in json.loads((run / "results.json").read_text())["models"].items()
    }
    assert set(scores) == {"evolved", "PS winner", "base", "math", "japanese", "untuned merge"}
    best_source = max(scores[k] for k in ("base", "math", "japanese"))
    assert scores["evolved"] > best_source and scores["evolved"] >= scores["untuned merge"] + 0.10, scores
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["parameter_space"]["method"] == "task_arithmetic" and "data_flow_space" in recipe
    published = json.loads((run / "published.json").read_text())
    card = (tmp_path / "hub" / published["repo"] / "README.md").read_text()
    assert "base_model_relation: merge" in card and "evohub merge recipe.yaml" in card
    assert "points over the best source" in out
    assert "densit" not in card.lower()  # task_arithmetic evolves weights only
    assert "pip install evohub\n" not in card  # no index serves it: a pinned source install or the version
    assert all(("right" in ln) != ("wrong" in ln) for ln in out.splitlines() if ln.startswith("問 ") and "→" in ln)
    # the card's usage snippet, run as written (from the published files instead of the Hub), answers right
    snippet = card.split("## Usage", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    prompt = re.search(r'prompt = "(.*)"', snippet).group(1)
    a, b = map(int, re.search(r"(\d+)\+(\d+)", prompt).groups())
    local = str(tmp_path / "hub" / published["repo"])
    code = snippet.replace(f'"{published["repo"]}"', repr(local))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == f"{a + b}です", done.stdout


def test_demo_world_is_what_the_spec_names():
    from evohub.local.world import target_rows
    from evohub.spec import load_job

    spec = load_job(REPO / "jobs" / "demo.yaml")
    world = REPO / "jobs" / "demo-world"
    splits = {
        n: [json.loads(x) for x in (world / f"{n}.jsonl").read_text().splitlines()]
        for n in ("fitness", "validation", "test")
    }
    assert [len(v) for v in splits.values()] == [64, 64, 300]
    questions = [{r["question"] for r in rows} for rows in splits.values()]
    assert not (questions[0] & questions[1] or questions[0] & questions[2] or questions[1] & questions[2])  # disjoint
    assert splits["fitness"] + splits["validation"] + splits["test"] == target_rows(
        428, 0
    )  # reproducible from the seed
    assert spec.fitness.prompt == "問 {input} 答 " and spec.parameter_space.patterns == ("embed_tokens", "lm_head")
    size = sum(p.stat().st_size for p in world.rglob("*") if p.is_file())
    assert size < 20e6


def test_world_tokenizer_and_training_step(tmp_path):
    import torch
    from transformers import AutoTokenizer, MistralForCausalLM

    from evohub.local import world

    world.save_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "問 12+34 答 46です"
    assert len(tok(text).input_ids) == len(text) and tok.decode(tok(text).input_ids) == text  # one token per character
    torch.manual_seed(0)
    model = MistralForCausalLM(world._config())
    x, m = world._batch({"add_en": 1.0}, __import__("random").Random(0))
    losses = []

    def loss() -> float:
        with torch.no_grad():
            logits = model(input_ids=x, attention_mask=(x != 0)).logits[:, :-1]
            ce = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none"
            )
            return float((ce * m[:, 1:].reshape(-1)).sum() / m[:, 1:].sum())

    losses.append(loss())
    world._train(model, 30, 2e-3, {"add_en": 1.0}, seed=0)
    losses.append(loss())
    assert losses[1] < losses[0] - 0.5
