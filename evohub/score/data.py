"""Examples for fitness and evaluation: a Hub dataset or a local JSON/JSONL file, and subsets.

    >>> rows = load_rows(DataRef(path="data/fit.jsonl", split="train[:100]"))   # doctest: +SKIP

A local file may name images (``image``) by paths relative to itself (VQA data).
Subsets are drawn from the job seed, so a run sees the same examples every time: ``limit``
picks a fixed subset once; ``minibatch`` picks a fresh subset per generation.
"""

from __future__ import annotations

import random
from pathlib import Path

from evohub.errors import EvohubError
from evohub.spec import DataRef


def load_rows(ref: DataRef) -> list[dict]:
    """All rows of a dataset split as dicts (``split`` may slice: ``train[:869]``)."""
    import datasets

    datasets.disable_progress_bars()
    try:
        if ref.path is not None:
            ds = datasets.load_dataset("json", data_files=ref.path, split=ref.split)
        else:
            ds = datasets.load_dataset(ref.repo, ref.config, split=ref.split, revision=ref.revision)
    except Exception as e:  # datasets raises many kinds; each becomes one line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EvohubError(f"cannot load {ref.display()}: {msg}") from e
    rows = [dict(r) for r in ds]
    if not rows:
        raise EvohubError(f"{ref.display()} has no rows")
    if ref.path is not None:  # a local file names its images relative to itself
        root = Path(ref.path).resolve().parent
        for r in rows:
            if isinstance(r.get("image"), str) and not Path(r["image"]).is_absolute():
                r["image"] = str(root / r["image"])
    return rows


def fixed_subset(n: int, size: int | None, seed: int) -> list[int]:
    """Indices of the fixed fitness subset (all rows when ``size`` is None)."""
    if size is None or size >= n:
        return list(range(n))
    return sorted(random.Random(f"evohub-subset-{seed}").sample(range(n), size))


def minibatch(indices: list[int], size: int | None, seed: int, generation: int) -> list[int]:
    """The examples generation ``generation`` is scored on (fresh per generation)."""
    if size is None or size >= len(indices):
        return indices
    return sorted(random.Random(f"evohub-minibatch-{seed}-{generation}").sample(indices, size))
