"""What a run did, in numbers and a plot: per-stage summaries, what fitness cost, and ``fitness.png``.

A stage's cost is the ledger of its scoring calls (docs/design.md#runs): its score matrix
(``stages/<stage>/scores.jsonl``, every call, audits and references included) summed, else the
running totals its checkpoint keeps (``cost``), else its ``candidates.jsonl`` rows summed; a run
that recorded none (an older run) has no cost. Evaluation seconds are labelled by the device the
run scored on: GPU-seconds on a CUDA device, CPU-seconds on the CPU.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

from evohub.evolve.matrix import COST_FIELDS, totals
from evohub.files import atomic_write
from evohub.pipeline.rundir import RunDir

#: the fields that only a run with a cost ledger writes (``seconds`` every run has)
_LEDGER_FIELDS = ("items", "prompt_tokens", "generated_tokens")
#: the stages' short names, as the card's cost line gives them
SHORT = {"ps": "PS", "dfs": "DFS"}


@dataclass
class StageSummary:
    stage: str
    evaluations: int
    generations: int
    popsize: int
    failed: int
    best_fitness: float
    validation: float | None
    seconds: float = 0.0
    #: the stage's fitness ledger (:func:`evohub.evolve.matrix.totals`: calls, items, prompt_tokens,
    #: generated_tokens, merge_s, generate_s, score_s, seconds); None for a run without one
    cost: dict | None = None
    #: what choosing the winner on the validation split cost, when its rows record it
    validation_cost: dict | None = None


def _has_ledger(rows: list[dict]) -> bool:
    return any(k in r for r in rows for k in _LEDGER_FIELDS)


def stage_cost(
    stage: str, rows: list[dict], checkpoint: dict | None = None, matrix: list[dict] | None = None
) -> dict | None:
    """A stage's cost totals: its score matrix summed, else its checkpoint's ``cost``, else its
    candidates rows summed; None when the run recorded no cost."""
    if matrix:
        return totals(matrix)
    kept = (checkpoint or {}).get("cost")
    if isinstance(kept, dict):
        return {"calls": 0} | {k: 0 for k in COST_FIELDS} | {k: v for k, v in kept.items() if k != "estimator"}
    mine = [r for r in rows if r.get("stage") == stage]
    return totals(mine) if _has_ledger(mine) else None


def summarize(
    stage: str,
    rows: list[dict],
    validation: list[dict] | None,
    checkpoint: dict | None = None,
    matrix: list[dict] | None = None,
) -> StageSummary:
    """A stage's summary from its log rows, its validation scores (if any) and its cost ledger
    (its checkpoint and score matrix rows, when given)."""
    rows = [r for r in rows if r["stage"] == stage]
    ok = [r["fitness"] for r in rows if r["fitness"] is not None]
    # an audited estimator's fitness is an estimate: its best is the best audited full-set score
    audited = [v for v in ((checkpoint or {}).get("audited") or {}).values() if v is not None]
    vals = [r["validation"] for r in validation or [] if r["validation"] is not None]
    return StageSummary(
        stage=stage,
        evaluations=len(rows),
        generations=len({r["generation"] for r in rows}),
        popsize=max((r["index"] for r in rows), default=-1) + 1,
        failed=len(rows) - len(ok),
        best_fitness=max(audited) if audited else max(ok) if ok else math.nan,
        validation=max(vals, default=None),
        cost=stage_cost(stage, rows, checkpoint, matrix),
        validation_cost=totals(validation) if validation and _has_ledger(validation) else None,
    )


def stage_summary(run: RunDir, stage: str, rows: list[dict]) -> StageSummary:
    """:func:`summarize` of one stage of a run directory, its validation scores and ledger read from it."""
    checkpoint = run.read_json(run.checkpoint_path(stage))
    return summarize(stage, rows, run.read_json(run.validation_path(stage)), checkpoint, run.score_rows(stage))  # type: ignore[arg-type]


def stage_matrices(run: RunDir, stages: list[str]) -> dict[str, list[dict]]:
    """Each stage's score matrix rows (empty for a stage without one)."""
    return {stage: run.score_rows(stage) for stage in stages}


def seconds_key(device: str | None) -> str:
    """What a run's evaluation seconds are called: ``gpu_seconds`` on a CUDA device,
    ``cpu_seconds`` on the CPU (``<device>_seconds`` otherwise; ``seconds`` when unknown)."""
    if not device:
        return "seconds"
    kind = device.split(":")[0].lower()
    return {"cuda": "gpu", "cpu": "cpu"}.get(kind, kind) + "_seconds"


def _labelled(cost: dict, key: str) -> dict:
    out = {k: v for k, v in cost.items() if k != "seconds"}
    return out | {key: cost.get("seconds", 0.0)}


def run_cost(summaries: list[StageSummary], device: str | None) -> dict | None:
    """``results.json``'s ``cost``: per stage and overall, the fitness calls, items scored, prompt
    and generated tokens and evaluation seconds (keyed by the device: ``gpu_seconds``,
    ``cpu_seconds``), and what validation cost where recorded; None for a run without a ledger."""
    staged = [s for s in summaries if s.cost is not None]
    if not staged:
        return None
    key = seconds_key(device)
    stages = {}
    for s in staged:
        stages[s.stage] = _labelled(s.cost, key)  # type: ignore[arg-type]
        if s.validation_cost is not None:
            stages[s.stage]["validation"] = _labelled(s.validation_cost, key)
    out = {"device": device, "stages": stages, "total": _labelled(_sum(s.cost for s in staged), key)}  # type: ignore[misc]
    valid = [s.validation_cost for s in staged if s.validation_cost is not None]
    if valid:
        out["total"]["validation"] = _labelled(_sum(valid), key)
    return out


def _sum(costs) -> dict:
    out: dict = {}
    for c in costs:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# fitness.png


def _value(r: dict) -> float | None:
    """What a candidate scored: its full-set score when known, else its fitness."""
    v = r.get("full")
    v = r.get("fitness") if v is None else v
    return v if isinstance(v, int | float) and math.isfinite(v) else None


def token_curves(
    rows: list[dict], stages: list[str], matrices: dict[str, list[dict]] | None = None
) -> list[tuple[str, list[float], list[float], float]] | None:
    """Per stage (stage, cumulative generated tokens, best fitness so far, tokens at its end): the
    x-axis runs on across stages. Tokens are counted per scoring call of the stage's score matrix
    in file order (a candidate's fitness counts from its last fitness call), else per candidates
    row; None for a run that generated no tokens (or counted none)."""
    matrices = matrices or {}
    counted = [c.get("generated_tokens") or 0 for st in stages for c in matrices.get(st) or ()]
    if not counted:  # no matrix: the candidates rows' own counts
        counted = [r.get("generated_tokens") or 0 for r in rows]
    if not any(counted):  # an older run, or a task that generates nothing (lm-loss)
        return None
    value = {(r["stage"], r["generation"], r["index"]): _value(r) for r in rows}
    total, out = 0.0, []
    for st in stages:
        # calls: (generated tokens, the candidates whose fitness is known after it)
        if matrices.get(st):
            last = {(c["g"], c["i"]): k for k, c in enumerate(matrices[st]) if c.get("why", "fitness") == "fitness"}
            done: dict[int, list] = {}
            for key, k in last.items():
                done.setdefault(k, []).append(key)
            calls = [(c.get("generated_tokens") or 0, done.get(k, [])) for k, c in enumerate(matrices[st])]
        else:
            calls = [
                (r.get("generated_tokens") or 0, [(r["generation"], r["index"])]) for r in rows if r["stage"] == st
            ]
        xs, ys, best = [], [], -math.inf
        for tokens, known in calls:
            total += tokens
            best = max([best, *(v for key in known if (v := value.get((st, *key))) is not None)])
            if best > -math.inf:
                xs.append(total)
                ys.append(best)
        out.append((st, xs, ys, total))
    return out


def plot_fitness(rows: list[dict], out: Path, stages: list[str], matrices: dict[str, list[dict]] | None = None) -> None:
    """fitness.png: best-so-far and mean fitness per generation, stages side by side; beside it,
    for a run that counted its tokens, the best fitness so far against the cumulative generated
    tokens (``matrices``: each stage's score matrix rows, when it has one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = token_curves(rows, stages, matrices)
    fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(12, 4) if curves else (7, 4), squeeze=False)
    _generations_panel(axes[0][0], rows, stages)
    if curves:
        _tokens_panel(axes[0][1], curves)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(out, buf.getvalue())


def plot_front(rows: list[dict], out: Path, stages: dict[str, tuple[tuple[str, ...], str | None]]) -> None:
    """front.png, for the stages of a multi-objective optimiser (``stages``: each one's objectives
    and its winner's recipe hash): every candidate by its first two objectives, the final Pareto
    front (docs/design.md#optimisers) joined, the winner starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from evohub.evolve.optimizers.nsga2 import front_rows, parse_objective

    fig, axes = plt.subplots(1, len(stages), figsize=(6 * len(stages), 4.5), squeeze=False)
    for ax, (stage, (objectives, winner)) in zip(axes[0], stages.items(), strict=True):
        names = [parse_objective(o)[0] for o in objectives[:2]]
        mine = [r for r in rows if r["stage"] == stage and r.get("error") is None and r.get("metrics")]
        xy = [(r["metrics"].get(names[0]), r["metrics"].get(names[1])) for r in mine]
        ax.scatter([x for x, _ in xy], [y for _, y in xy], s=10, color="lightgrey", label="candidates")
        front = sorted(front_rows(mine, objectives), key=lambda r: r["metrics"][names[0]])
        ax.plot([r["metrics"][names[0]] for r in front], [r["metrics"][names[1]] for r in front], "o-",
                ms=4, label="Pareto front")  # fmt: skip
        won = [r for r in front if r["recipe_hash"] == winner] or [r for r in mine if r["recipe_hash"] == winner]
        if won:
            ax.plot([won[0]["metrics"][names[0]]], [won[0]["metrics"][names[1]]], "*", ms=14, color="crimson",
                    label="winner")  # fmt: skip
        ax.set_xlabel(objectives[0])
        ax.set_ylabel(objectives[1])
        ax.set_title(stage)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(out, buf.getvalue())


#: rows of samples.png at most (the first held-out prompts)
SAMPLE_ROWS = 4


def plot_samples(columns: dict[str, Path], out: Path, rows: int = SAMPLE_ROWS) -> bool:
    """samples.png: the first ``rows`` held-out images (rows: prompts, each from its fixed seed)
    of each model (columns: name -> the folder of its saved images, ``000.png``, ...), the
    evolved model last. False (nothing written) when no model saved images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    have = {name: sorted(d.glob("*.png"))[:rows] for name, d in columns.items() if d.is_dir()}
    have = {k: v for k, v in have.items() if v}
    if not have:
        return False
    n = max(len(v) for v in have.values())
    fig, axes = plt.subplots(n, len(have), figsize=(2.2 * len(have), 2.2 * n), squeeze=False)
    for c, (name, files) in enumerate(have.items()):
        for r in range(n):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r < len(files):
                with Image.open(files[r]) as im:
                    ax.imshow(im.convert("RGB"))
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"prompt {r + 1}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(out, buf.getvalue())
    return True


def _generations_panel(ax, rows: list[dict], stages: list[str]) -> None:
    offset = 0
    for stage in stages:
        mine = [r for r in rows if r["stage"] == stage]
        gens = sorted({r["generation"] for r in mine})
        if not gens:
            continue
        per = [[r["fitness"] for r in mine if r["generation"] == g and r["fitness"] is not None] for g in gens]
        xs = [offset + g for g, p in zip(gens, per, strict=True) if p]
        best_so_far, running = [], -math.inf
        for p in per:
            if p:
                running = max(running, max(p))
                best_so_far.append(running)
        ax.plot(xs, best_so_far, label=f"{stage}: best so far")
        ax.plot(xs, [sum(p) / len(p) for p in per if p], "--", label=f"{stage}: generation mean")
        if offset:
            ax.axvline(offset - 0.5, color="grey", lw=0.8)
        offset += len(gens)
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _tokens_panel(ax, curves: list[tuple[str, list[float], list[float], float]]) -> None:
    positive = [x for _, xs, _, _ in curves for x in xs if x > 0]
    log = bool(positive) and max(positive) / min(positive) >= 100  # it spans decades
    for stage, xs, ys, _ in curves:
        pts = [(x, y) for x, y in zip(xs, ys, strict=True) if x > 0 or not log]
        if pts:
            ax.step(*zip(*pts, strict=True), where="post", label=f"{stage}: best so far")
    for _, _, _, end in curves[:-1]:
        if end > 0 or not log:
            ax.axvline(end, color="grey", lw=0.8)  # a stage boundary
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("generated tokens (cumulative)")
    ax.set_ylabel("best fitness so far")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
