"""Checks of a document's Hub references against the Hub itself, before any compute
(``evohub validate --strict``; docs/design.md#checked-before-compute).

Metadata only — repo listings, card data, refs, config.json files — never weights or data rows.
Each problem is one line at the field it concerns: a repo or revision that does not exist, a
gated repo this token cannot read, a model with only pickle weights and no ``weights: pickle``,
a dataset split or config that is not there (``'train' not in X (splits: test)``), a dataset that
is behind a loading script, a repo that was renamed, a source whose vocabulary differs from the base's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from evohub.errors import HubError, MergeError
from evohub.hub import client
from evohub.merging.arch import read_config
from evohub.spec.job import JobSpec
from evohub.spec.recipe import Recipe
from evohub.spec.refs import DataRef, ModelRef
from evohub.spec.yamlio import Loc


def _glob(pattern: str) -> re.Pattern:
    """An fsspec-style glob (``**/`` any directories, ``*`` within one) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:[^/]*/)*", i + 3
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            j = pattern.index("]", i)
            out, i = out + pattern[i : j + 1], j + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def inferred_splits(files: list[str]) -> list[str]:
    """The splits ``datasets`` infers from a repo's data files (names like ``*test*.jsonl``,
    ``train/``, ...; none of them: everything is ``train``)."""
    from datasets.data_files import _get_data_files_patterns

    data = [f for f in files if f.endswith(client.DATA_SUFFIXES) and not f.split("/")[-1].startswith((".", "__"))]
    patterns = _get_data_files_patterns(lambda p: [f for f in data if _glob(p).match(f)])
    return [str(split) for split in patterns]


def _card_splits(card: dict | None, config: str | None) -> tuple[list[str], list[str]] | None:
    """(configs, splits of ``config``) from a dataset card's ``configs:``, or None without one."""
    configs = (card or {}).get("configs")
    if not isinstance(configs, list) or not configs:
        return None
    names = [c.get("config_name", "default") for c in configs if isinstance(c, dict)]
    chosen = next((c for c in configs if c.get("config_name", "default") == config), None)
    if chosen is None and config is None:
        chosen = next((c for c in configs if c.get("default")), configs[0])
    if chosen is None:
        return names, []
    files = chosen.get("data_files")
    if isinstance(files, list) and files and all(isinstance(f, dict) for f in files):
        return names, [str(f.get("split", "train")) for f in files]
    return names, ["train"]


def _dataset_problems(loc: Loc, ref: DataRef, found: client.Listing) -> Iterator[tuple[Loc, str]]:
    where = f"{ref.repo}" + (f"@{ref.revision}" if ref.revision else "")
    split = re.sub(r"\[.*$", "", ref.split)
    card = _card_splits(found.card, ref.config)
    if client.unreadable(ref.repo, found.files):  # type: ignore[arg-type]
        script = client.loading_script(ref.repo, found.files)  # type: ignore[arg-type]
        layout = client.parquet_layout(ref.repo)  # type: ignore[arg-type]
        if layout is None:
            scripts = ", ".join(f for f in found.files if f.endswith(".py"))
            held = f" (it holds {scripts})" if scripts else ""
            what = f"is a loading script ({script})" if script else f"has no data files{held}"
            yield (
                loc,
                f"{where} {what} and no parquet conversion (refs/convert/parquet); evohub never runs dataset scripts",
            )
            return
        config = ref.config or ("default" if "default" in layout else None)
        if config not in layout:
            yield (*loc, "config"), (f"{where} is read from its parquet conversion; name one of its configs "
                                     f"({', '.join(layout)})")  # fmt: skip
            return
        splits = layout[config]
    elif card is not None:
        configs, splits = card
        if ref.config is not None and ref.config not in configs:
            yield (*loc, "config"), f"no config {ref.config!r} in {where} (configs: {', '.join(configs)})"
            return
    else:
        if ref.config is not None:
            yield (*loc, "config"), f"{where} has no configs (its data files are read directly); drop 'config'"
            return
        splits = inferred_splits(found.files)
    if split not in splits:
        yield (*loc, "split"), f"{split!r} not in {where} (splits: {', '.join(splits)})"


def _model_problems(loc: Loc, ref: ModelRef, found: client.Listing) -> Iterator[tuple[Loc, str]]:
    if found.gated:
        try:
            client.check_access(ref.repo, "model")  # type: ignore[arg-type]
        except HubError as e:
            yield loc, str(e)
    if not any(f.endswith(".safetensors") for f in found.files):
        pickles = [f for f in found.files if f.endswith(client.PICKLE_SUFFIXES)]
        if not pickles:
            yield loc, f"{ref.repo}@{ref.revision or 'main'} has no weights (no *.safetensors, no *.bin)"
        elif ref.weights != "pickle":
            yield loc, str(client.no_safetensors(ref.repo, ref.revision, found.files))  # type: ignore[arg-type]


def _vocab(ref: ModelRef) -> int | None:
    try:
        cfg = client.fetch_config(ref.repo, ref.revision) if ref.repo else read_config(ref.path)  # type: ignore[arg-type]
    except (HubError, MergeError):
        return None
    text = cfg.get("text_config") or cfg
    return text.get("vocab_size")


def _vocab_problems(job: JobSpec) -> Iterator[tuple[Loc, str]]:
    """Each source's vocabulary against the base's (one vocabulary, unless ``vocab: base``)."""
    if job.base_model is None or (job.parameter_space is not None and job.parameter_space.vocab == "base"):
        return
    base = _vocab(job.base_model)
    for i, s in enumerate(job.sources):
        n = _vocab(s.ref())
        if base is not None and n is not None and n != base:
            yield ("sources", i), (f"vocab_size {n} differs from the base model's {base}; set parameter_space.vocab: base "
                                   "to merge over the base vocabulary")  # fmt: skip


def remote_problems(doc: JobSpec | Recipe, refs) -> Iterator[tuple[Loc, str]]:
    """Every problem of ``doc``'s Hub references (``refs``: :func:`~evohub.spec.load.walk_refs`)."""
    for loc, ref in refs:
        if ref.repo is None:
            continue
        kind = "dataset" if isinstance(ref, DataRef) else "model"
        try:
            found = client.listing(ref.repo, ref.revision, kind)
        except HubError as e:
            yield loc, str(e)
            continue
        if found.id and found.id != ref.repo:
            yield (*loc, "repo"), f"{ref.repo} was renamed to {found.id} (the Hub redirects); name {found.id}"
        yield from (_dataset_problems if kind == "dataset" else _model_problems)(loc, ref, found)  # type: ignore[operator]
    if isinstance(doc, JobSpec):
        yield from _vocab_problems(doc)
