"""What cheaper fitness costs and loses: `full`, `minibatch`, `race`, `irt`, `gmp-irt` on one world.

    .venv/bin/python bench/fitness_cost.py [--seeds 0 1 2] [--evals 300] [--out bench/results/fitness_cost.json]
        [--reuse EARLIER.json ...]

Setup (issue 20): the demo world's three models (jobs/demo-world), a fitness set of 1069 Japanese
addition problems from the world's own generator (a fixed seed; disjoint from a 64-problem
validation set and the 300 held-out test problems), the demo's parameter-space stage
(task_arithmetic, 4 layer groups + embeddings + LM head, 12 genes, popsize 10) with `--evals`
evaluations, the winner chosen among its finalists on full-set fitness and validation pooled
(docs/design.md#fitness-estimators), then scored on the test set. Each strategy runs the same job
but for `fitness` (`minibatch`: the audited estimator, 75 items a generation, so that with its
audits it scores under a tenth of `full`'s items; `full-minibatch`: `full` with a fresh 107-item
minibatch per generation, the paper's unaudited rule), for each seed, in this one process, one
after another, the threads pinned (EVOHUB_THREADS, default 2).

Reported per strategy (mean over seeds): items scored, generated tokens and wall time of the
evolution (references, audits and validation included: the stage's score matrix and
validation.json), the winner's held-out acc_ja, its gap to `full`'s, and `evohub plan`'s CPU
estimate of the stage's tokens and hours beside the measured ones. The 300 test problems score a
model within about ±2.9 points, as much as the gaps the issue asks about, so each winner is also
scored on every two-digit addition the bench never used (6667 problems: "unseen"), and that gap
is given with its standard error over seeds (paired by seed). `--reuse` keeps the rows of earlier
outputs whose runs are still in `--dir` (scoring their winners on the unseen set where missing),
so more seeds can be added to a table without running the first ones again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORLD = ROOT / "jobs" / "demo-world"
STRATEGIES = {
    "full": {},
    "minibatch": {"estimator": "minibatch", "estimator_options": {"size": 75}},  # audits included: ≤ 1/10
    # the same items audited, spent on the 3 best every 20 generations instead of the 2 best every 10
    "minibatch-20x3": {"estimator": "minibatch", "estimator_options": {"size": 75, "audit_every": 20, "audit_top": 3}},
    # the same share of full's tokens (at --evals 300) spent on twice the evaluations, 32 items each
    "minibatch-600": {
        "max_evals": 600,
        "estimator": "minibatch",
        "estimator_options": {"size": 32, "audit_every": 20, "audit_top": 3},
    },
    # the stretch: 1/30 of full's tokens (16 items a generation, one audit of the 2 best at the end)
    "minibatch-16": {"estimator": "minibatch", "estimator_options": {"size": 16, "audit_every": 30}},
    # the stretch at the paper's 1000 evaluations (--evals 1000): 24 items a generation, audits of the
    # 2 best at generations 50 and 100, so that with the finalists' full-set scores it is under 1/30
    "minibatch-24": {"estimator": "minibatch", "estimator_options": {"size": 24, "audit_every": 50}},
    "full-minibatch": {"minibatch": 107},  # the paper's rule: no audits
    "irt": {"estimator": "irt"},
    "gmp-irt": {"estimator": "gmp-irt"},
    "race": {"estimator": "race"},
}
FITNESS, VALIDATION, TEST = 1069, 64, 300


def write_world(root: Path, fitness: int = FITNESS) -> None:
    """The fitness, validation and test sets (``fitness``: the first so many of the 1069 fitness
    problems; validation and test the same for any), every other two-digit addition (``unseen``:
    6667 problems) and links to the world's three models."""
    from evohub.local.world import target_rows

    rows = target_rows(FITNESS + VALIDATION + TEST, seed=1069)
    parts = {"fitness": rows[:fitness], "validation": rows[FITNESS : FITNESS + VALIDATION],
             "test": rows[FITNESS + VALIDATION :]}  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    unseen = [{"question": f"{a}+{b}", "answer_number": a + b} for a in range(10, 100) for b in range(10, 100)]
    used = {r["question"] for r in rows}
    (root / "unseen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in unseen if r["question"] not in used))
    for m in ("base", "math", "japanese"):
        if not (root / m).exists():
            (root / m).symlink_to(WORLD / m)


def base_spec(root: Path, name: str, seed: int, evals: int, x0: float | None = None) -> dict:
    """The demo's parameter-space stage on the world in ``root`` (write_world): fitness, validation
    and test sets, ``evals`` evaluations, no data-flow stage, no publication; ``x0`` replaces the
    demo's start point (0.5 of the weight bounds [0, 2.5]: each source's task vector at 1.25)."""
    spec = yaml.safe_load((ROOT / "jobs" / "demo.yaml").read_text())
    spec.pop("data_flow_space")
    spec["name"] = name
    spec["seed"] = seed
    for k in ("base_model",):
        spec[k] = {"path": str(root / "base")}
    spec["sources"] = [
        {"name": "math", "path": str(root / "math")},
        {"name": "japanese", "path": str(root / "japanese")},
    ]
    spec["parameter_space"]["optimizer"]["max_evals"] = evals
    if x0 is not None:
        spec["parameter_space"]["optimizer"]["x0"] = x0
    fit = spec["fitness"]
    fit["data"] = {"path": str(root / "fitness.jsonl")}
    fit["validation"] = {"path": str(root / "validation.jsonl")}
    spec["evaluation"]["data"] = {"ja-math": str(root / "test.jsonl")}
    spec["evaluation"]["compare_sources"] = False
    spec.pop("publish", None)
    return spec


def strategy_evals(strategy: str, evals: int) -> int:
    """The stage's evaluations: ``--evals``, or the strategy's own (one that spends its tokens on more)."""
    return STRATEGIES[strategy].get("max_evals", evals)


def run_path(root: Path, strategy: str, seed: int) -> Path:
    return root / "runs" / f"{strategy}-{seed}"


def job(root: Path, strategy: str, seed: int, evals: int, x0: float | None = None) -> Path:
    spec = base_spec(root, f"fitness-cost-{strategy}-{seed}", seed, strategy_evals(strategy, evals), x0)
    spec["fitness"].update({k: v for k, v in STRATEGIES[strategy].items() if k != "max_evals"})
    out = root / "jobs" / f"{strategy}-{seed}.yaml"
    out.parent.mkdir(exist_ok=True)
    out.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return out


def measure(root: Path, strategy: str, seed: int, evals: int, x0: float | None = None) -> dict:
    import evohub
    from evohub.evolve.matrix import ScoreMatrix, totals
    from evohub.pipeline.rundir import RunDir

    spec_path = job(root, strategy, seed, evals, x0)
    run_dir = run_path(root, strategy, seed)
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    summary = evohub.run(spec_path, run_dir, device="cpu", progress=False, publish=False)
    wall = time.perf_counter() - start
    run = RunDir(run_dir)
    cost = totals(ScoreMatrix(run.scores_path("ps")).rows)
    validation = run.read_json(run.validation_path("ps")) or []
    val = totals(validation)
    results = json.loads(run.results_path.read_text())
    held_out = _acc_ja(results)
    unseen = _unseen_acc_ja(root, run_dir)
    evolution_s = cost["seconds"] + val["seconds"]
    budget = fitness_budget(spec_path)
    return {"strategy": strategy, "seed": seed, "items": cost["items"] + val["items"],
            "calls": cost["calls"] + val["calls"],
            # a call's longest answer over the budget, the cost model's `longest` (mean over the stage's calls)
            "longest_share": round(cost["longest_tokens"] / max(cost["calls"], 1) / budget, 3),
            "generated_tokens": cost["generated_tokens"] + val["generated_tokens"],
            "prompt_tokens": cost["prompt_tokens"] + val["prompt_tokens"], "evolution_s": round(evolution_s, 2),
            "wall_s": round(wall, 2), "acc_ja": held_out, "acc_ja_unseen": unseen,
            "evals": strategy_evals(strategy, evals),
            "run": summary.run_dir.name}  # fmt: skip


def fitness_budget(spec_path: Path) -> int:
    """The fitness generation budget (max_new_tokens) of a bench job."""
    from evohub.score.tasks import TASKS
    from evohub.spec.load import load_job

    fit = load_job(spec_path).fitness
    return fit.max_new_tokens or TASKS.get(fit.task).max_new_tokens


def _acc_ja(results: dict) -> float:
    """The evolved model's held-out acc_ja (0-100) from results.json."""
    return _suite_acc_ja(results["models"]["evolved"]["suites"])


def _suite_acc_ja(suites: dict) -> float:
    """acc_ja (0-100) from one model's evaluated suites (``evaluate``'s ``suites``)."""
    return 100 * float(suites["ja-math"]["metrics"]["acc_ja"])


def _unseen_acc_ja(root: Path, run_dir: Path) -> float:
    """The winner's acc_ja (0-100) on every two-digit addition the bench never showed it (unseen.jsonl):
    the same quantity as the 300-problem test, without its sampling noise (±2.9 points a model)."""
    from evohub.score.evaluate import evaluate
    from evohub.spec.load import load_job

    job = load_job(run_dir / "job.yaml")
    fit, ev = job.fitness, job.evaluation
    r = evaluate(run_dir / "model", ["ja-math"], out_dir=run_dir / "eval" / "unseen", label="unseen", backend="hf",
                 device="cpu", data={"ja-math": str(root / "unseen.jsonl")}, max_new_tokens=ev.max_new_tokens,
                 prompt=fit.prompt, stop=fit.stop, prompt_version=ev.prompt_version, dtype=job.dtype, batch_size=64)  # fmt: skip
    return _suite_acc_ja(r["suites"])


def estimate(root: Path, strategy: str, evals: int, x0: float | None = None) -> dict:
    """`evohub plan --gpu cpu --json`'s estimate of the parameter-space stage (the command, run now)."""
    out = subprocess.run([sys.executable, "-m", "evohub", "plan", str(job(root, strategy, 0, evals, x0)), "--gpu", "cpu",
                          "--json"], check=True, capture_output=True, text=True).stdout  # fmt: skip
    st = json.loads(out)["cost"]["stages"][0]
    return {
        "generated_tokens": st["generated_tokens"],
        "items": st["items"],
        "calls": st["calls"],
        "seconds": st["hours"] * 3600,
    }


def summarize(root: Path, strategy: str, rows: list[dict], evals: int, x0: float | None = None) -> dict:
    """A strategy's table row: means over its seeds, its gaps to ``full`` (the unseen-set gap with
    its standard error over seeds, paired by seed) and the plan's estimate beside the measured."""
    mine = [r for r in rows if r["strategy"] == strategy]
    full = {r["seed"]: r for r in rows if r["strategy"] == "full"}
    m = {k: statistics.mean(r[k] for r in mine)
         for k in ("items", "generated_tokens", "evolution_s", "wall_s", "acc_ja", "acc_ja_unseen")}  # fmt: skip
    gaps = [r["acc_ja_unseen"] - full[r["seed"]]["acc_ja_unseen"] for r in mine if r["seed"] in full]
    full_tokens = statistics.mean(r["generated_tokens"] for r in full.values()) if full else None
    est = estimate(root, strategy, evals, x0)
    return m | {
        "strategy": strategy, "acc_ja_per_seed": [r["acc_ja"] for r in mine],
        "acc_ja_unseen_per_seed": [round(r["acc_ja_unseen"], 2) for r in mine],
        "gap_to_full": None if not full else round(m["acc_ja"] - statistics.mean(r["acc_ja"] for r in full.values()), 2),
        "gap_unseen": round(statistics.mean(gaps), 2) if gaps else None,
        "gap_unseen_se": round(statistics.stdev(gaps) / len(gaps) ** 0.5, 2) if len(gaps) > 1 and any(gaps) else None,
        "token_share": None if not full_tokens else round(m["generated_tokens"] / full_tokens, 4),
        "plan_tokens": est["generated_tokens"], "plan_seconds": round(est["seconds"], 1),
        "calls": statistics.mean(r.get("calls", math.nan) for r in mine), "plan_calls": round(est["calls"]),
        "longest_share": statistics.mean(r.get("longest_share", math.nan) for r in mine),
        "plan_tokens_ratio": round(est["generated_tokens"] / m["generated_tokens"], 2),
        "plan_seconds_ratio": round(est["seconds"] / m["evolution_s"], 2),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--evals", type=int, default=300)
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    ap.add_argument("--dir", type=Path, default=Path("/tmp/evohub-fitness-cost"))
    ap.add_argument("--reuse", type=Path, nargs="*", default=[], metavar="JSON",
                    help="earlier outputs of this bench whose runs are still in --dir: their rows are kept (the "
                    "winner scored on the unseen set if the row lacks it) instead of run again")  # fmt: skip
    ap.add_argument(
        "--x0",
        type=float,
        default=None,
        help="the stage's start point in the unit cube (default the demo's 0.5: each task vector at "
        "weight 1.25, a broken merge; 0.2 puts each at 0.5, as the shipped EvoLLM jobs start)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fitness_cost.json")
    args = ap.parse_args()
    os.environ.setdefault("EVOHUB_THREADS", "2")
    write_world(args.dir)
    earlier = {(r["strategy"], r["seed"]): r for path in args.reuse for r in json.loads(path.read_text())["rows"]}
    rows = []
    for strategy in args.strategies:  # each strategy's seeds together: a cut-short run keeps whole strategies
        for seed in args.seeds:
            r = earlier.get((strategy, seed))
            if r is None:
                r = measure(args.dir, strategy, seed, args.evals, args.x0)
            elif "acc_ja_unseen" not in r:
                r = r | {"acc_ja_unseen": _unseen_acc_ja(args.dir, run_path(args.dir, strategy, seed))}
            rows.append(r)
            print(json.dumps(r), flush=True)
    table = [summarize(args.dir, strategy, rows, args.evals, args.x0) for strategy in args.strategies]
    print(
        "\n| strategy | items | generated tokens | share of full | evolution s | wall s | held-out acc_ja (seeds) | gap to full |"
        " unseen acc_ja | its gap ± s.e. | plan tokens (x) | plan s (x) | calls (plan) | a call's longest / budget |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t in table:
        seeds = ", ".join(f"{a:.1f}" for a in t["acc_ja_per_seed"])
        se = "" if t["gap_unseen_se"] is None else f" ± {t['gap_unseen_se']:.1f}"
        gap, gap_unseen = (("—" if v is None else f"{v:+.1f}") for v in (t["gap_to_full"], t["gap_unseen"]))
        print(f"| {t['strategy']} | {t['items']:.0f} | {t['generated_tokens']:.0f} | {t['token_share']} | "
              f"{t['evolution_s']:.0f} | {t['wall_s']:.0f} | {t['acc_ja']:.1f} ({seeds}) | {gap} | "
              f"{t['acc_ja_unseen']:.1f} | {gap_unseen}{se} | "
              f"{t['plan_tokens']:.0f} ({t['plan_tokens_ratio']}) | {t['plan_seconds']:.0f} ({t['plan_seconds_ratio']}) | "
              f"{t['calls']:.0f} ({t['plan_calls']}) | {t['longest_share']:.2f} |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": sys.version.split()[0], "evals": args.evals, "x0": args.x0, "seeds": args.seeds,
        "reused": [p.name for p in args.reuse],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, "rows": rows, "table": table,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
