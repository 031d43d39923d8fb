"""Per-candidate cost of evolution: decode + in-memory merge vs scoring, and in-memory vs disk.

    python bench/evolve_bench.py --runs 5 --texts 64 --tokens 64

On the merge benchmark's 58M-parameter models (bench/make_models.py; built if missing), for a
dare_ties parameter-space candidate (2 sources, 2 layer groups):

- decode: genotype → Recipe (schema 1, validated);
- merge in memory: ResidentMerge.apply into the resident scoring model;
- score: the lm-loss fitness task on ``--texts`` sequences of ``--tokens`` tokens;
- disk round trip, what a tool without in-memory merging does per candidate: merge_to_disk
  into a fresh directory, then load it with transformers (``from_pretrained``).

Medians of ``--runs`` candidates. Prints JSON.
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
    p.add_argument("--texts", type=int, default=64)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--out", type=Path, default=HERE / "out")
    a = p.parse_args()
    root = a.out / "models-8L"
    if not (root / "ft2" / "tokenizer.json").exists():
        subprocess.run([sys.executable, str(HERE / "make_models.py"), str(root), "--layers", "8"], check=True)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evohub.evolve.genome import PSGenome
    from evohub.merging.build import merge_to_disk, open_inputs
    from evohub.merging.ps import ResidentMerge
    from evohub.score.backends.hf import HFBackend
    from evohub.score.tasks.lm_loss import LMLoss
    from evohub.spec import JobSpec

    rng = random.Random(0)
    data = root / "texts.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": " ".join(f"w{rng.randrange(31998)}" for _ in range(a.tokens))}) + "\n"
            for _ in range(a.texts)
        )
    )
    spec = JobSpec.model_validate({
        "evohub_job": 1, "name": "bench", "seed": 0, "base_model": {"path": str(root / "base")},
        "sources": [{"name": "a", "path": str(root / "ft1")}, {"name": "b", "path": str(root / "ft2")}],
        "dtype": "bfloat16", "parameter_space": {"method": "dare_ties", "layer_groups": 2, "density": {"bounds": [0.1, 1]},
                                                  "optimizer": {"max_evals": 10}},
        "fitness": {"task": "lm-loss", "backend": "hf", "data": {"path": str(data)}},
    })  # fmt: skip
    genome = PSGenome.for_job(spec)
    template = genome.decode(genome.x0())
    dirs = [Path(r.path) for r in template.inputs()]
    model = AutoModelForCausalLM.from_pretrained(dirs[0], dtype=torch.bfloat16).eval()
    tok = AutoTokenizer.from_pretrained(dirs[0])
    backend = HFBackend(model, tok)
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    task = LMLoss()
    resident = ResidentMerge(open_inputs(template, dirs), template)
    params = dict(model.named_parameters())
    t: dict[str, list[float]] = {
        "decode": [],
        "merge": [],
        "score": [],
        "disk_merge": [],
        "disk_load": [],
    }
    for i in range(a.runs):
        x = [random.Random(i).random() for _ in range(genome.dims)]
        s = time.perf_counter()
        recipe = genome.decode(x)
        t["decode"].append(time.perf_counter() - s)
        s = time.perf_counter()
        resident.apply(recipe, params)
        t["merge"].append(time.perf_counter() - s)
        s = time.perf_counter()
        task.score(backend, rows, batch_size=16)
        t["score"].append(time.perf_counter() - s)
        out = Path(tempfile.mkdtemp(prefix="evohub-bench-")) / "m"
        s = time.perf_counter()
        merge_to_disk(recipe, dirs, out)
        t["disk_merge"].append(time.perf_counter() - s)
        s = time.perf_counter()
        AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
        t["disk_load"].append(time.perf_counter() - s)
        shutil.rmtree(out.parent)
    med = {k: statistics.median(v) for k, v in t.items()}
    overhead = med["decode"] + med["merge"]
    disk = med["disk_merge"] + med["disk_load"]
    print(json.dumps({
        "runs": a.runs, "texts": a.texts, "tokens_per_text": a.tokens, "median_s": med,
        "overhead_share_of_candidate": overhead / (overhead + med["score"]),
        "in_memory_speedup_vs_disk": disk / overhead,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
