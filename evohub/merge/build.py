"""Build a merged model directory from a recipe: weights, config, tokenizer, recipe.yaml.

Parameter-space recipes stream merged tensors; data-flow recipes stream the folded path
(:mod:`evohub.merge.dfs`), reading model A from the parameter-space merge when ``a: ps``.

    >>> merge_to_disk(recipe, dirs, "out/")      # doctest: +SKIP

``dirs`` are local directories of the recipe's inputs, in :func:`input_refs` order (the caller
resolves Hub references; this module never talks to the Hub). The output is written into a
temporary sibling directory and renamed into place when complete, so ``out`` never holds a
half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from evohub.errors import EvohubError
from evohub.merge.arch import decoder_layer_index
from evohub.merge.dfs import check_pair, check_path, folded_tensors, layer_counts, path_config
from evohub.merge.io import DTYPES, CheckpointReader, ShardedWriter, write_json_atomic
from evohub.merge.ps import MergedTensors, Model, TensorSource, make_plan, workspace_for
from evohub.spec import ModelRef, Recipe

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


def input_refs(recipe: Recipe) -> list[ModelRef]:
    """The models a recipe reads: the base (if any), the parameter-space models in order, then
    the data-flow models not already listed."""
    refs: list[ModelRef] = [recipe.base_model] if recipe.base_model else []
    if recipe.parameter_space is not None:
        refs += [m.source for m in recipe.parameter_space.models]
    if recipe.data_flow_space is not None:
        for ref in (recipe.data_flow_space.a, recipe.data_flow_space.b):
            if isinstance(ref, ModelRef) and ref not in refs:
                refs.append(ref)
    return refs


def open_inputs(recipe: Recipe, dirs: Sequence[Path]) -> list[Model]:
    """One :class:`Model` per :func:`input_refs` entry, reading the matching directory."""
    refs = input_refs(recipe)
    if len(dirs) != len(refs):
        raise ValueError(f"expected {len(refs)} directories, got {len(dirs)}")
    models = []
    for ref, d in zip(refs, dirs, strict=True):
        cfg_path = Path(d) / "config.json"
        try:
            config = json.loads(cfg_path.read_text())
        except FileNotFoundError:
            raise EvohubError(f"{d}: no config.json; is {ref.display()} a transformers model?") from None
        except ValueError as e:
            raise EvohubError(f"{cfg_path}: not valid JSON: {e}") from e
        models.append(Model(label=ref.display(), tensors=CheckpointReader(d), config=config))
    return models


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
    """Plan ``recipe`` over opened inputs: parameter space, data flow, or one after the other."""
    dirs = [Path(d) for d in dirs]
    dtype = DTYPES[recipe.dtype]
    has_base = recipe.base_model is not None
    ps, dfs = recipe.parameter_space, recipe.data_flow_space
    merged: _Part | None = None
    count = 0
    if ps is not None:
        n = (1 if has_base else 0) + len(ps.models)
        plan = make_plan(ps, inputs[:n], has_base)
        source = MergedTensors(recipe, plan, inputs[:n], workspace_for(recipe, device), dtype)
        merged = _Part(source, inputs[plan.primary].config, dirs[plan.primary], "the parameter-space merge")
        count = len(plan.tasks)
    refs = input_refs(recipe)

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
    raise EvohubError("tokenizer_source 'a' is resolved with the data-flow part")


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
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise EvohubError(f"{out} exists and is not empty; choose another --out or pass --force")
    inputs = open_inputs(recipe, dirs)
    built = build_output(recipe, dirs, inputs, device)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        bar = tqdm(total=built.count, unit="tensor", desc="merge", disable=not progress)
        with bar, ShardedWriter(partial, shard_bytes) as writer:
            for name, t in built.tensors:
                writer.add(name, t)
                bar.update()
        write_json_atomic(partial / "config.json", built.config)
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
        (partial / "recipe.yaml").write_text(recipe.to_yaml())
        if out.exists():
            trash = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, trash)
            os.replace(partial, out)
            shutil.rmtree(trash)
        else:
            os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out
