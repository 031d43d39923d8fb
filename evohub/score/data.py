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


def load_rows(ref: DataRef) -> list[dict]:
    """All rows of a dataset split as dicts (``split`` may slice: ``train[:869]``)."""
    datasets.disable_progress_bars()
    try:
        if ref.path is not None:
            ds = datasets.load_dataset("json", data_files=ref.path, split=ref.split)
        elif not client.offline() and client.unreadable(
            ref.repo, client.listing(ref.repo, ref.revision, "dataset").files
        ):  # type: ignore[arg-type]
            # rows behind a loading script: read the Hub's parquet conversion, never run the script
            config = ref.config or "default"
            ds = datasets.load_dataset(ref.repo, revision=client.PARQUET_REF, data_dir=config, split=ref.split)
        else:
            ds = datasets.load_dataset(ref.repo, ref.config, split=ref.split, revision=ref.revision)
    except Exception as e:  # datasets raises many kinds; each becomes one line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ScoreError(f"cannot load {ref.display()}: {msg}") from e
    rows = [dict(r) for r in ds]
    if not rows:
        raise ScoreError(f"{ref.display()} has no rows")
    if ref.path is not None:  # a local file names its images relative to itself
        root = Path(ref.path).resolve().parent
        for r in rows:
            if isinstance(r.get("image"), str) and not Path(r["image"]).is_absolute():
                r["image"] = str(root / r["image"])
    return rows
