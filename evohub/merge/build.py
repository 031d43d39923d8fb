"""Build a merged model directory from a recipe: weights, config, tokenizer, recipe.yaml.

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
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from evohub.errors import EvohubError
from evohub.merge.io import DTYPES, CheckpointReader, ShardedWriter, write_json_atomic
from evohub.merge.ps import Model, make_plan, merged_tensors, workspace_for
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
    """The models a parameter-space recipe reads: the base (if any), then its models."""
    if recipe.data_flow_space is not None:
        raise EvohubError(
            "this recipe has a data_flow_space section; data-flow-space merging is not in this evohub yet"
        )
    ps = recipe.parameter_space
    assert ps is not None
    return ([recipe.base_model] if recipe.base_model else []) + [m.source for m in ps.models]


def open_inputs(recipe: Recipe, dirs: Sequence[Path]) -> list[Model]:
    refs = input_refs(recipe)
    if len(dirs) != len(refs):
        raise ValueError(f"expected {len(refs)} directories, got {len(dirs)}")
    models = []
    for ref, d in zip(refs, dirs, strict=True):
        cfg_path = Path(d) / "config.json"
        try:
            config = json.loads(cfg_path.read_text())
        except FileNotFoundError:
            raise EvohubError(
                f"{d}: no config.json; is {ref.display()} a transformers model?"
            ) from None
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


def _tokenizer_dir(recipe: Recipe, dirs: Sequence[Path]) -> Path:
    ts = recipe.tokenizer_source
    has_base = recipe.base_model is not None
    if ts == "base":
        return Path(dirs[0])
    if isinstance(ts, int):
        return Path(dirs[ts + (1 if has_base else 0)])
    raise EvohubError(f"tokenizer_source {ts!r} needs a data_flow_space section")


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
    """Merge ``recipe`` into ``out``; returns ``out``. ``progress`` shows a bar per tensor."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise EvohubError(f"{out} exists and is not empty; choose another --out or pass --force")
    inputs = open_inputs(recipe, dirs)
    ps = recipe.parameter_space
    assert ps is not None
    plan = make_plan(ps, inputs, has_base=recipe.base_model is not None)
    ws = workspace_for(recipe, device)
    dtype = DTYPES[recipe.dtype]
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        bar = tqdm(total=len(plan.tasks), unit="tensor", desc="merge", disable=not progress)
        with bar, ShardedWriter(partial, shard_bytes) as writer:
            for name, t in merged_tensors(recipe, plan, inputs, ws, dtype):
                writer.add(name, t)
                bar.update()
        primary_dir = Path(dirs[plan.primary])
        write_json_atomic(
            partial / "config.json", _with_dtype(inputs[plan.primary].config, recipe.dtype)
        )
        tok_dir = _tokenizer_dir(recipe, dirs)
        for f in TOKENIZER_FILES:
            if (tok_dir / f).is_file():
                shutil.copy2(tok_dir / f, partial / f)
        for f in PROCESSOR_FILES:
            if (primary_dir / f).is_file():
                shutil.copy2(primary_dir / f, partial / f)
        for d in (tok_dir, primary_dir):
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
    finally:
        for m in inputs:
            close = getattr(m.tensors, "close", None)
            if close:
                close()
    return out
