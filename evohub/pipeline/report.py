"""What a run did, in numbers and a plot: per-stage summaries and ``fitness.png``."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

from evohub.files import atomic_write


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


def summarize(stage: str, rows: list[dict], validation: list[dict] | None) -> StageSummary:
    """A stage's summary from its log rows and its validation scores (if any)."""
    rows = [r for r in rows if r["stage"] == stage]
    ok = [r["fitness"] for r in rows if r["fitness"] is not None]
    vals = [r["validation"] for r in validation or [] if r["validation"] is not None]
    return StageSummary(
        stage=stage,
        evaluations=len(rows),
        generations=len({r["generation"] for r in rows}),
        popsize=max((r["index"] for r in rows), default=-1) + 1,
        failed=len(rows) - len(ok),
        best_fitness=max(ok) if ok else math.nan,
        validation=max(vals, default=None),
    )


def plot_fitness(rows: list[dict], out: Path, stages: list[str]) -> None:
    """fitness.png: best-so-far and mean fitness per generation, stages side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(out, buf.getvalue())
