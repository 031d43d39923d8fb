"""Build a merged model directory from a recipe: weights, config, tokenizer, recipe.yaml.

Parameter-space recipes stream merged tensors; data-flow recipes stream the folded path
(:mod:`evohub.merging.dfs`), reading model A from the parameter-space merge when ``a: ps``.

    >>> merge_to_disk(recipe, dirs, "out/")      # doctest: +SKIP

``dirs`` are local directories of the recipe's inputs, in :meth:`Recipe.inputs` order (the caller
resolves Hub references; this module never talks to the Hub). The output is written into a
temporary sibling directory and renamed into place when complete, so ``out`` never holds a
half-written model.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from evohub.errors import MergeError
from evohub.files import atomic_write, staged_dir, write_json
from evohub.merging import fused
from evohub.merging.arch import decoder_layer_index, read_config
from evohub.merging.dfs import check_pair, check_path, folded_tensors, layer_counts, path_config
from evohub.merging.diffusion import is_pipeline, merge_pipeline
from evohub.merging.io import DTYPES, CheckpointReader, ShardedWriter
from evohub.merging.ps import MergedTensors, Model, TensorSource, plan_tensors, source_entries, workspace_for
from evohub.progress import bar as progress_bar
from evohub.spec import Recipe

#: Files that travel with the tokenizer / processor / generation settings.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
PROCESSOR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
)


def open_inputs(recipe: Recipe, dirs: Sequence[Path]) -> list[Model]:
    """One :class:`Model` per :meth:`Recipe.inputs` entry, reading the matching directory."""
    refs = recipe.inputs()
    if len(dirs) != len(refs):
        raise ValueError(f"expected {len(refs)} directories, got {len(dirs)}")
    return [
        Model(label=ref.display(), tensors=CheckpointReader(d), config=read_config(d, ref.display()))
        for ref, d in zip(refs, dirs, strict=True)
    ]


def _with_dtype(config: dict, dtype: str) -> dict:
    out = dict(config)
    for cfg in (out, out.get("text_config")):
        if isinstance(cfg, dict):
            if "torch_dtype" in cfg:
                cfg["torch_dtype"] = dtype
            if "dtype" in cfg or cfg is out:
                cfg["dtype"] = dtype
    return out


@dataclass
class Output:
    """What a recipe builds: its tensors (a stream), config, and where its other files come from."""

    tensors: Iterator[tuple[str, torch.Tensor]]
    count: int
    config: dict
    arch_dir: Path  # processor files, and generation_config.json if the tokenizer source has none
    tokenizer_dir: Path


@dataclass
class _Part:
    tensors: TensorSource
    config: dict
    directory: Path
    label: str


def build_output(recipe: Recipe, dirs: Sequence[Path], inputs: Sequence[Model], device: str = "cpu") -> Output:
    """TensorPlan ``recipe`` over opened inputs: parameter space, data flow, or one after the other."""
    dirs = [Path(d) for d in dirs]
    dtype = DTYPES[recipe.dtype]
    has_base = recipe.base_model is not None
    ps, dfs = recipe.parameter_space, recipe.data_flow_space
    merged: _Part | None = None
    count = 0
    if ps is not None:
        n = (1 if has_base else 0) + len(ps.models)
        plan = plan_tensors(ps, inputs[:n], has_base)
        fuse = fused.worth_it(source_entries(plan, len(ps.models)), amortised=False)
        source = MergedTensors(recipe, plan, inputs[:n], workspace_for(recipe, device, fuse=fuse), dtype)
        merged = _Part(source, inputs[plan.primary].config, dirs[plan.primary], "the parameter-space merge")
        count = len(plan.tasks)
    refs = recipe.inputs()

    def part(ref) -> _Part:
        if ref == "ps":
            assert merged is not None
            return merged
        i = refs.index(ref)
        return _Part(inputs[i].tensors, inputs[i].config, dirs[i], inputs[i].label)

    ts = recipe.tokenizer_source
    if dfs is None:
        assert merged is not None
        tensors: Iterator = ((name, merged.tensors.get(name)) for name in merged.tensors.names())
        config = _with_dtype(merged.config, recipe.dtype)
        arch = merged
    else:
        a, b = part(dfs.a), part(dfs.b)
        rule = check_pair(a.config, b.config, a.label, b.label)
        check_path(dfs.path, dfs.scales, layer_counts(a.config, b.config))
        tensors = folded_tensors(dfs.path, dfs.scales, a.tensors, b.tensors, rule, dtype)
        config = path_config(a.config, b.config, dfs.path, recipe.dtype)
        per_layer = {who: _layer_sizes(p.tensors) for who, p in (("a", a), ("b", b))}
        count = sum(1 for n in a.tensors.names() if decoder_layer_index(n) is None)
        count += sum(per_layer[who].get(layer, 0) for who, layer in dfs.path)
        arch = a
    tok = arch.directory if ts == "a" else tokenizer_dir(recipe, dirs)
    return Output(tensors=tensors, count=count, config=config, arch_dir=arch.directory, tokenizer_dir=tok)


def tokenizer_dir(recipe: Recipe, dirs: Sequence[Path]) -> Path:
    """Directory of the tokenizer a recipe names: the base's, or a parameter-space model's.

    (``a``, model A of the data-flow part, is resolved by :func:`build_output`.)
    """
    ts = recipe.tokenizer_source
    if ts == "base":
        return Path(dirs[0])
    if isinstance(ts, int):
        return Path(dirs[ts + (1 if recipe.base_model is not None else 0)])
    raise MergeError("tokenizer_source 'a' is resolved with the data-flow part")


def _layer_sizes(src: TensorSource) -> dict[int, int]:
    out: dict[int, int] = {}
    for n in src.names():
        i = decoder_layer_index(n)
        if i is not None:
            out[i] = out.get(i, 0) + 1
    return out


def merge_to_disk(
    recipe: Recipe,
    dirs: Sequence[Path],
    out: str | Path,
    *,
    device: str = "cpu",
    shard_bytes: int = 2 << 30,
    force: bool = False,
    progress: bool = False,
) -> Path:
    """Build ``recipe`` into ``out``; returns ``out``. ``progress`` shows a bar per tensor."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MergeError(f"{out} is a file, not a directory; choose another --out (--force replaces only directories)")
    if out.exists() and any(out.iterdir()) and not force:
        raise MergeError(f"{out} is a directory that is not empty; choose another --out or pass --force")
    if dirs and is_pipeline(dirs[0]):  # a diffusion pipeline: its UNet merged, the rest copied
        return merge_pipeline(recipe, dirs, out, device=device, shard_bytes=shard_bytes, progress=progress)
    inputs = open_inputs(recipe, dirs)
    built = build_output(recipe, dirs, inputs, device)
    with staged_dir(out) as partial:
        bar = progress_bar(built.count, "merge", "tensor", disable=not progress)
        with bar, ShardedWriter(partial, shard_bytes) as writer:
            for name, t in built.tensors:
                writer.add(name, t)
                bar.update()
        write_json(partial / "config.json", built.config)
        for f in TOKENIZER_FILES:
            if (built.tokenizer_dir / f).is_file():
                shutil.copy2(built.tokenizer_dir / f, partial / f)
        for f in PROCESSOR_FILES:
            if (built.arch_dir / f).is_file():
                shutil.copy2(built.arch_dir / f, partial / f)
        for d in (built.tokenizer_dir, built.arch_dir):
            if (d / "generation_config.json").is_file():
                shutil.copy2(d / "generation_config.json", partial / "generation_config.json")
                break
        atomic_write(partial / "recipe.yaml", recipe.to_yaml(out.resolve()))
    return out
