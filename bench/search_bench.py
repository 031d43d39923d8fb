"""Optimisers and merge operators at one evaluation budget: held-out acc_ja, speed, seconds.

    EVOHUB_THREADS=1 .venv/bin/python bench/search_bench.py [--seeds 0 1 2] [--evals 150] [--fitness 128]

Setup (issue 22): fitness_cost.py's world (the demo world's three models, Japanese addition problems
from the world's own generator: the first ``--fitness`` of its 1069 fitness problems, the same
64-problem validation split and 300 held-out test problems), the demo's parameter-space stage (4
layer groups + embeddings + LM head, weight bounds [0, 2.5], popsize 10, the `full` estimator) with
``--evals`` evaluations for every arm, the winner chosen on the validation split, then scored on the
test set. An arm is an optimiser over a merge method (``ARMS``); the methods with a density take a
(weight, density) per group and source (24 genes), task_arithmetic a weight (12).

Reported per arm and seed: the winner's held-out acc_ja, the evaluations the search took to reach 90%
of its own best fitness, its best fitness, and the run's wall seconds (evolution, validation and the
test evaluation); per arm the mean over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fitness_cost import ROOT, _acc_ja, base_spec, write_world

from evohub.evolve.optimizers import OPTIMIZERS
from evohub.merging.methods import METHODS

#: map-elites' grid: the answers' mean length in characters (ja-math's ``mean_chars``; the demo's
#: answers are at most 8 characters). ja_rate and acc_strict, the other candidates, are
#: saturated or equal to the fitness here: a first run over them kept one cell (coverage 1/24).
DESCRIPTORS = [{"metric": "mean_chars", "bounds": [0.0, 8.0], "bins": 16}]
#: name -> (optimizer fields, merge method). `cma-es/dare_ties` is the paper's jobs' default
#: (jobs/evollm-jp*.yaml), `cma-es/task_arithmetic` the demo job's own.
ARMS = {
    "cma-es/dare_ties": ({"algorithm": "cma-es"}, "dare_ties"),
    "cma-es/task_arithmetic": ({"algorithm": "cma-es"}, "task_arithmetic"),
    "nsga2/dare_ties": ({"algorithm": "nsga2", "objectives": ["acc_ja", "ja_rate"]}, "dare_ties"),
    "cma-es/della": ({"algorithm": "cma-es"}, "della"),
    "cma-es/breadcrumbs": ({"algorithm": "cma-es"}, "breadcrumbs"),
    "cma-es/breadcrumbs_ties": ({"algorithm": "cma-es"}, "breadcrumbs_ties"),
    "cma-es/tsv": ({"algorithm": "cma-es"}, "tsv"),
    # M2N2 mixes genotypes: exactly the parents' merges for task_arithmetic (linear in its genes).
    # Without mutation (the paper's setting from pre-trained models) ...
    "m2n2/task_arithmetic": ({"algorithm": "m2n2", "options": {"mutation": 0.0}}, "task_arithmetic"),
    "m2n2/dare_ties": ({"algorithm": "m2n2", "options": {"mutation": 0.0}}, "dare_ties"),
    # ... and with Gaussian noise of sigma 0.05 on each child's genes (m2n2's default since this run)
    "m2n2+mutation/task_arithmetic": ({"algorithm": "m2n2", "options": {"mutation": 0.05}}, "task_arithmetic"),
    "map-elites/dare_ties": ({"algorithm": "map-elites", "descriptors": DESCRIPTORS}, "dare_ties"),
}
BASELINE = "cma-es/dare_ties"


def real_weights_spec(world: Path, name: str, seed: int, evals: int) -> dict:
    """The real-weights example's job (SmolLM2-135M-Instruct and its two fine-tunes, built by
    ``evohub.local.real_weights.build_world`` in ``world``): its own stage (6 layer groups, weight
    bounds [0, 1], popsize 12), fitness, validation and 200 held-out problems; ``evals``
    evaluations; the evolved model alone evaluated; no publication."""
    from evohub.local.real_weights import JOB, WORLD

    spec = yaml.safe_load(JOB.read_text().replace(WORLD, f"{world.resolve()}/"))
    spec["name"], spec["seed"] = name, seed
    spec["parameter_space"]["optimizer"]["max_evals"] = evals
    spec["evaluation"]["compare_sources"] = False
    spec.pop("publish", None)
    return spec


def job(root: Path, arm: str, seed: int, evals: int, world: Path | None = None) -> Path:
    """The arm's job on the demo-derived world in ``root``, or with ``world`` on the real-weights one."""
    optimizer, method = ARMS[arm]
    slug = arm.replace("/", "-").replace("+", "-")
    name = f"search-bench-{slug}-{seed}"
    spec = real_weights_spec(world, name, seed, evals) if world else base_spec(root, name, seed, evals)
    ps = spec["parameter_space"]
    ps["method"] = method
    if METHODS.get(method).density:
        ps["density"] = {"bounds": [0, 1]}
    opt = {"popsize": ps["optimizer"]["popsize"], "max_evals": evals} | optimizer
    reads = OPTIMIZERS.get(optimizer["algorithm"]).fields
    opt |= {f: ps["optimizer"][f] for f in ("x0", "sigma0") if f in reads}
    ps["optimizer"] = opt
    out = root / "jobs" / f"{slug}-{seed}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return out


def evals_to_90(fitness: list[float | None]) -> tuple[int, float]:
    """The 1-based evaluation at which the best-so-far first reached 90% of the run's best, and that best."""
    ok = [f if f is not None else float("-inf") for f in fitness]
    best = max(ok)
    running = float("-inf")
    for i, f in enumerate(ok, 1):
        running = max(running, f)
        if running >= 0.9 * best:
            return i, best
    return len(ok), best


def measure(root: Path, arm: str, seed: int, evals: int, world: Path | None = None) -> dict:
    import evohub
    from evohub.pipeline.rundir import RunDir

    spec_path = job(root, arm, seed, evals, world)
    run_dir = root / "runs" / f"{arm.replace('/', '-').replace('+', '-')}-{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    evohub.run(spec_path, run_dir, device="cpu", progress=False, publish=False)
    wall = time.perf_counter() - start
    run = RunDir(run_dir)
    rows = [r for r in run.log_rows() if r.get("stage") == "ps"]
    rows.sort(key=lambda r: (r["generation"], r["index"]))
    to_90, best = evals_to_90([r.get("fitness") for r in rows])
    results = json.loads(run.results_path.read_text())
    return {"arm": arm, "seed": seed, "evals": len(rows), "acc_ja": round(_acc_ja(results), 2),
            "best_fitness": round(100 * best, 2), "evals_to_90": to_90, "wall_s": round(wall, 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--evals", type=int, default=150)
    ap.add_argument("--fitness", type=int, default=128, help="fitness problems (of the world's 1069)")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--dir", type=Path, default=Path("/tmp/evohub-search-bench"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "search_bench.json")
    ap.add_argument("--rows", type=Path, help="tabulate the JSON rows a run printed (a cut-short run's log) instead")
    ap.add_argument("--real-weights", type=Path, metavar="WORLD",
                    help="run the arms on the real-weights example's world built in WORLD "
                    "(evohub.local.real_weights.build_world + write_splits) instead of the demo's")  # fmt: skip
    args = ap.parse_args()
    os.environ.setdefault("EVOHUB_THREADS", "1")
    rows = []
    if args.rows:
        rows = [json.loads(x) for x in args.rows.read_text().splitlines() if x.startswith('{"arm"')]
        args.arms = [a for a in args.arms if any(r["arm"] == a for r in rows)]
        args.seeds = sorted({r["seed"] for r in rows})
    elif not args.real_weights:
        write_world(args.dir, args.fitness)
    for arm in [] if args.rows else args.arms:  # each arm's seeds together: a cut-short run keeps whole arms
        for seed in args.seeds:
            r = measure(args.dir, arm, seed, args.evals, args.real_weights)
            rows.append(r)
            print(json.dumps(r), flush=True)
    table = []
    for arm in args.arms:
        mine = [r for r in rows if r["arm"] == arm]
        accs = [r["acc_ja"] for r in mine]
        table.append({
            "arm": arm, "acc_ja": round(statistics.mean(accs), 2), "acc_ja_per_seed": accs,
            "acc_ja_sd": round(statistics.stdev(accs), 2) if len(accs) > 1 else None,
            "best_fitness": round(statistics.mean(r["best_fitness"] for r in mine), 2),
            "evals_to_90": round(statistics.mean(r["evals_to_90"] for r in mine), 1),
            "wall_s": round(statistics.mean(r["wall_s"] for r in mine), 1),
        })  # fmt: skip
    base = next((t["acc_ja"] for t in table if t["arm"] == BASELINE), None)
    for t in table:
        t["vs_baseline"] = None if base is None else round(t["acc_ja"] - base, 2)
    seeds = ", ".join(map(str, args.seeds))
    print(f"\n| arm (optimiser/method) | held-out acc_ja, mean (seeds {seeds}) | sd | vs {BASELINE} | "
          "best fitness | evals to 90% | wall s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for t in table:
        per = ", ".join(f"{a:.1f}" for a in t["acc_ja_per_seed"])
        vs = "" if t["vs_baseline"] is None else f"{t['vs_baseline']:+.1f}"
        print(f"| {t['arm']} | {t['acc_ja']:.1f} ({per}) | {t['acc_ja_sd']} | {vs} | {t['best_fitness']:.1f} | "
              f"{t['evals_to_90']:.0f} | {t['wall_s']:.0f} |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": sys.version.split()[0], "threads": os.environ["EVOHUB_THREADS"], "evals": args.evals,
        "fitness_items": 48 if args.real_weights else args.fitness,
        "world": "real-weights" if args.real_weights else "demo", "seeds": args.seeds, "baseline": BASELINE,
        "peak_rss_mb": None if args.rows else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, "rows": rows, "table": table,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
