"""The demo's local world: a tiny base model and two fine-tunes with different skills, trained here.

The target task is Japanese arithmetic, ``問 12+34 答 `` → ``46です``, judged like MGSM-JA: the
answer must be right *and* the reply Japanese. No model is trained on it:

- the **base** learns three things weakly: English echo ``Q 123 A `` → ``123`` (30%), Japanese
  echo ``問 123 答 `` → ``123です`` (30%) and English addition ``Q 12+34 A `` → ``46`` (40%);
- the **math** source continues on English addition only;
- the **Japanese** source continues on Japanese echo only.

Each fine-tune refines one skill the base already holds (fine-tunes that learn a skill from
scratch conflict when merged); the evolved merge has to combine the math source's arithmetic
with the Japanese source's answer format. Models are character-level Mistrals (hidden 192,
4 layers, 6 heads of 32, intermediate 512), trained with AdamW on CPU from a seed, and cached.

    >>> dirs = build_world(Path(".cache/evohub-demo/world"))    # doctest: +SKIP

The trained world ships with evohub (``jobs/demo-world``, package data ``evohub/local/demo-world``);
``evohub demo --train-world`` rebuilds it from its seed.
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path

import torch
from transformers import MistralConfig, MistralForCausalLM

from evohub.files import atomic_write
from evohub.local import tiny

log = logging.getLogger("evohub")

CHARS = list("0123456789+=QA問答です ")
PAD, EOS = "<pad>", "</s>"
VOCAB = [PAD, EOS, *CHARS]
#: Training recipe (steps, learning rate, task mix) of each model; the world's fingerprint.
RECIPE = {
    "base": {"steps": 500, "lr": 2e-3, "mix": {"echo_en": 0.3, "echo_ja": 0.3, "add_en": 0.4}},
    "math": {"steps": 300, "lr": 5e-4, "mix": {"add_en": 1.0}},
    "japanese": {"steps": 200, "lr": 5e-4, "mix": {"echo_ja": 1.0}},
}
BATCH = 128


def example(kind: str, rng: random.Random) -> tuple[str, str]:
    """(prompt, completion) of one training or test example."""
    if kind == "echo_en":
        n = str(rng.randrange(1000))
        return f"Q {n} A ", n
    if kind == "echo_ja":
        n = str(rng.randrange(1000))
        return f"問 {n} 答 ", f"{n}です"
    a, b = rng.randrange(10, 100), rng.randrange(10, 100)
    if kind == "add_en":
        return f"Q {a}+{b} A ", str(a + b)
    if kind == "add_ja":
        return f"問 {a}+{b} 答 ", f"{a + b}です"
    raise ValueError(kind)


def target_rows(n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    """Japanese addition problems (question ``12+34``, answer_number 46), none in ``exclude``."""
    rng = random.Random(f"evohub-world-target-{seed}")
    rows, seen = [], set(exclude)
    while len(rows) < n:
        a, b = rng.randrange(10, 100), rng.randrange(10, 100)
        q = f"{a}+{b}"
        if q in seen:
            continue
        seen.add(q)
        rows.append({"question": q, "answer_number": a + b})
    return rows


def write_splits(root: Path, seed: int, fitness: int = 64, validation: int = 64, test: int = 300) -> dict[str, Path]:
    """Disjoint fitness / validation / test sets of the target task, as JSONL."""
    rows = target_rows(fitness + validation + test, seed)
    parts = {
        "fitness": rows[:fitness],
        "validation": rows[fitness : fitness + validation],
        "test": rows[fitness + validation :],
    }
    out = {}
    for name, part in parts.items():
        p = atomic_write(root / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in part))
        out[name] = p
    return out


def save_tokenizer(path: Path) -> None:
    """A character-level tokenizer over the world's vocabulary (decodes by concatenation)."""
    tiny.save_tokenizer(path, VOCAB, unk=PAD, eos=EOS, pad=PAD, chars=True)


def _config():
    return MistralConfig(
        vocab_size=len(VOCAB), hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=6,
        num_key_value_heads=6, head_dim=32, max_position_embeddings=64, tie_word_embeddings=False,
        pad_token_id=0, eos_token_id=1, bos_token_id=None, rms_norm_eps=1e-6,
    )  # fmt: skip


def _batch(mix: dict[str, float], rng: random.Random):
    ids = {t: i for i, t in enumerate(VOCAB)}
    kinds = rng.choices(list(mix), weights=list(mix.values()), k=BATCH)
    seqs, masks = [], []
    for kind in kinds:
        prompt, completion = example(kind, rng)
        p = [ids[c] for c in prompt]
        c = [ids[ch] for ch in completion] + [ids[EOS]]
        seqs.append(p + c)
        masks.append([0] * len(p) + [1] * len(c))  # loss on the completion only
    width = max(len(s) for s in seqs)
    x = torch.zeros(BATCH, width, dtype=torch.long)
    m = torch.zeros(BATCH, width, dtype=torch.long)
    for i, (s, k) in enumerate(zip(seqs, masks, strict=True)):
        x[i, : len(s)] = torch.tensor(s)
        m[i, : len(k)] = torch.tensor(k)
    return x, m


def warmup_cosine(opt, steps: int, warmup: int):
    """Linear warm-up over ``warmup`` steps, then cosine decay to a tenth of the learning rate."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda i: (
            (i + 1) / warmup
            if i < warmup
            else 0.1 + 0.45 * (1 + math.cos(math.pi * (i - warmup) / max(1, steps - warmup)))
        ),
    )


def answer_loss(logits, x, mask):
    """Mean next-token cross-entropy over the positions ``mask`` marks (the answer tokens)."""
    logits, target, weight = logits[:, :-1], x[:, 1:], mask[:, 1:].float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
    return (loss * weight.reshape(-1)).sum() / weight.sum()


def _train(model, steps: int, lr: float, mix: dict[str, float], seed: int) -> None:
    rng = random.Random(f"evohub-world-train-{seed}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps, warmup=max(1, steps // 20))
    model.train()
    for _ in range(steps):
        x, m = _batch(mix, rng)
        loss = answer_loss(model(input_ids=x, attention_mask=(x != 0) | (m == 1)).logits, x, m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()


def build_world(root: Path, seed: int = 0) -> dict[str, Path]:
    """Train (or reuse, when ``root`` holds this seed's world) the base and the two fine-tunes."""
    root = Path(root)
    stamp = root / "world.json"
    fingerprint = {"seed": seed, "recipe": RECIPE, "vocab": VOCAB, "batch": BATCH}
    dirs = {name: root / name for name in RECIPE}
    if (
        stamp.exists()
        and json.loads(stamp.read_text()) == fingerprint
        and all((d / "config.json").exists() for d in dirs.values())
    ):
        return dirs
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    base = MistralForCausalLM(_config())
    for name in ("base", "math", "japanese"):
        r = RECIPE[name]
        model = base if name == "base" else MistralForCausalLM(_config())
        if name != "base":
            model.load_state_dict(base.state_dict())
        log.info("training %s: %s steps, lr %s, mix %s", name, r["steps"], r["lr"], r["mix"])
        _train(model, r["steps"], r["lr"], r["mix"], seed * 10 + list(RECIPE).index(name))
        model.save_pretrained(dirs[name])
        save_tokenizer(dirs[name])
        if name == "base":
            base = model
    atomic_write(stamp, json.dumps(fingerprint))
    return dirs
