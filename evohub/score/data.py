"""Examples for fitness and evaluation: a Hub dataset or a local JSON/JSONL file.

    >>> rows = load_rows(DataRef(path="data/fit.jsonl", split="train[:100]"))   # doctest: +SKIP

A local file may name images (``image``) by paths relative to itself (VQA data). Which rows a
generation is scored on is the fitness estimator's choice (:mod:`evohub.evolve.estimators`).
"""

from __future__ import annotations

from pathlib import Path

import datasets

from evohub.errors import ScoreError
from evohub.hub import client
from evohub.spec import DataRef


def checked(task, rows: list[dict], ref: DataRef) -> list[dict]:
    """``rows`` after ``task.check``; a problem names the dataset it is in."""
    try:
        task.check(rows)
    except ScoreError as e:
        raise ScoreError(f"{ref.display()}: {e}") from e
    return rows


def _innermost(e: BaseException) -> str:
    """The first line of the deepest cause (pyarrow's "JSON parse error ... in row 1", not datasets'
    "An error occurred while generating the dataset")."""
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _check_json(path: str) -> None:
    """A local JSON (one document) or JSON-lines file parses; else one line naming the bad row's line."""
    import json

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ScoreError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from e
    try:
        json.loads(text)
        return
    except ValueError:
        pass
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                json.loads(line)
            except ValueError as e:
                raise ScoreError(f"{path}:{i}: not a JSON row ({e})") from e


def load_rows(ref: DataRef) -> list[dict]:
    """All rows of a dataset split as dicts (``split`` may slice: ``train[:869]``)."""
    import logging

    datasets.disable_progress_bars()
    quiet = logging.getLogger("datasets")
    level, quiet.level = quiet.level, logging.CRITICAL  # its own error lines: the message below says it once
    try:
        if ref.path is not None:
            if str(ref.path).endswith((".json", ".jsonl")):
                _check_json(ref.path)
            ds = datasets.load_dataset("json", data_files=ref.path, split=ref.split)
        elif not client.offline() and client.unreadable(
            ref.repo, client.listing(ref.repo, ref.revision, "dataset").files
        ):  # type: ignore[arg-type]
            # rows behind a loading script: read the Hub's parquet conversion, never run the script
            config = ref.config or "default"
            ds = datasets.load_dataset(ref.repo, revision=client.PARQUET_REF, data_dir=config, split=ref.split)
        else:
            ds = datasets.load_dataset(ref.repo, ref.config, split=ref.split, revision=ref.revision)
    except ScoreError:
        raise
    except Exception as e:  # datasets raises many kinds; each becomes one line
        raise ScoreError(f"cannot load {ref.display()}: {_innermost(e)}") from e
    finally:
        quiet.level = level
    rows = [dict(r) for r in ds]
    if not rows:
        raise ScoreError(f"{ref.display()} has no rows")
    if ref.path is not None:  # a local file names its images relative to itself
        root = Path(ref.path).resolve().parent
        for r in rows:
            if isinstance(r.get("image"), str) and not Path(r["image"]).is_absolute():
                r["image"] = str(root / r["image"])
    return rows
