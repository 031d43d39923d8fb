"""Switching a data-flow candidate: the path executor vs materialising the folded model.

    python bench/dfs_bench.py --runs 5

On the merge benchmark's 8-layer models (A = ft1, B = ft2; built if missing), for random paths
of 12 hops (repeats, skips, cross-model hops, scales in [0.5, 2]): the time to switch the
resident PathExecutor to the path, against writing the folded model with ``merge_to_disk`` and
loading it with transformers. Also the time of one forward pass over 256 tokens, for scale.
Medians of ``--runs`` paths. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--hops", type=int, default=12)
    p.add_argument("--out", type=Path, default=HERE / "out")
    a = p.parse_args()
    root = a.out / "models-8L"
    if not (root / "ft2" / "tokenizer.json").exists():
        subprocess.run([sys.executable, str(HERE / "make_models.py"), str(root), "--layers", "8"], check=True)

    import torch
    from transformers import AutoModelForCausalLM

    from evohub.merging.build import merge_to_disk
    from evohub.merging.path import PathExecutor
    from evohub.spec import Recipe

    model_a = AutoModelForCausalLM.from_pretrained(root / "ft1", dtype=torch.bfloat16).eval()
    model_b = AutoModelForCausalLM.from_pretrained(root / "ft2", dtype=torch.bfloat16).eval()
    ex = PathExecutor(model_a, model_b)
    ids = torch.randint(0, 32000, (1, 256), generator=torch.Generator().manual_seed(0))
    t: dict[str, list[float]] = {"switch": [], "forward": [], "fold_to_disk": [], "load": []}
    for i in range(a.runs):
        rng = random.Random(i)
        path = [("a", 0)] + [(w, rng.randrange(8)) for w in (rng.choice("ab") for _ in range(a.hops - 2))] + [("a", 7)]
        scales = [1.0] + [rng.uniform(0.5, 2.0) for _ in range(a.hops - 1)]
        s = time.perf_counter()
        ex.set_path(path, scales)
        t["switch"].append(time.perf_counter() - s)
        with torch.no_grad():
            s = time.perf_counter()
            ex.model(ids)
            t["forward"].append(time.perf_counter() - s)
        recipe = Recipe.model_validate({
            "evohub_recipe": 1, "dtype": "bfloat16", "tokenizer_source": "a",
            "data_flow_space": {"a": {"path": str(root / "ft1")}, "b": {"path": str(root / "ft2")},
                                "path": [list(h) for h in path], "scales": scales},
        })  # fmt: skip
        out = Path(tempfile.mkdtemp(prefix="evohub-dfs-")) / "m"
        s = time.perf_counter()
        merge_to_disk(recipe, [root / "ft1", root / "ft2"], out)
        t["fold_to_disk"].append(time.perf_counter() - s)
        s = time.perf_counter()
        AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
        t["load"].append(time.perf_counter() - s)
        shutil.rmtree(out.parent)
    med = {k: statistics.median(v) for k, v in t.items()}
    print(json.dumps({"runs": a.runs, "hops": a.hops, "median_s": med,
                      "switch_speedup_vs_materialise": (med["fold_to_disk"] + med["load"]) / med["switch"]}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
