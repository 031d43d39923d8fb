"""``map-elites``: MAP-Elites (Mouret & Clune 2015) from pyribs, over descriptors the job names.

The job names one to three **descriptors** (``descriptors: [{metric: ja_rate, bounds: [0, 1],
bins: 10}]``): metrics the fitness task reports, each cut into ``bins`` equal cells over its
``bounds`` (a value outside them falls in the edge cell). pyribs' ``GridArchive`` keeps, per cell,
the candidate of best fitness (the quality); its ``IsoLineEmitter`` breeds each child from two
elites drawn uniformly, x_i + σ_iso·N(0, I) + σ_line·(x_j − x_i)·N(0, 1) (Vassiliades & Mouret
2018's Iso+LineDD), clipped to the unit cube (docs/design.md#optimisers). σ_iso is the job's
``sigma0`` (the step size, as for CMA-ES: 1/6 by default; Iso+LineDD's own 0.01 is for budgets of
thousands of evaluations, not a few hundred), σ_line ``options.line_sigma`` (0.2, the paper's).
The first generation is the start point x0 and x0 + N(0, sigma0²) draws (clipped). A failed
candidate enters no cell.

Every random number comes from generators seeded from the stage seed (the archive's, for picking
elites; the emitter's, for the noise; ours, for the first generation), so a resumed run that replays
the log asks the same genotypes. The stage's winner is the best fitness, as for ``cma-es`` (the
best candidate is always an elite); ``checkpoint.json`` adds the archive's coverage, QD score and
elites.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from evohub.errors import RunError
from evohub.evolve.optimizers import OPTIMIZERS, OptimizerKind
from evohub.registry import Option


def descriptor_values(descriptors: Sequence, metrics: dict | None) -> list[float] | None:
    """A candidate's descriptor values (None: failed, or a descriptor that is not finite)."""
    if not metrics:
        return None
    out = []
    for d in descriptors:
        if d.metric not in metrics:
            known = ", ".join(sorted(metrics))
            raise RunError(f"optimizer.descriptors: {d.metric!r} is not a metric the fitness task reports ({known})")
        v = metrics[d.metric]
        if v is None or not math.isfinite(float(v)):
            return None
        out.append(float(v))
    return out


class MapElites:
    def __init__(self, x0: Sequence[float], sigma0: float, popsize: int, seed: int, descriptors: Sequence,
                 options: dict):  # fmt: skip
        from ribs.archives import GridArchive
        from ribs.emitters import IsoLineEmitter

        n = len(x0)
        self.descriptors = tuple(descriptors)
        rng = np.random.default_rng(seed)
        first = np.clip(np.asarray(x0, dtype=float) + sigma0 * rng.standard_normal((popsize, n)), 0.0, 1.0)
        first[0] = x0
        self.archive = GridArchive(
            solution_dim=n, dims=[d.bins for d in self.descriptors], ranges=[d.bounds for d in self.descriptors],
            seed=int(rng.integers(2**31)), dtype=np.float64, extra_fields={"gen": ((), np.int64), "idx": ((), np.int64)},
        )  # fmt: skip
        self.emitter = IsoLineEmitter(
            self.archive, iso_sigma=sigma0, line_sigma=float(options["line_sigma"]),
            initial_solutions=first, bounds=[(0.0, 1.0)] * n, batch_size=popsize, seed=int(rng.integers(2**31)),
        )  # fmt: skip
        self.generation = 0
        self._asked: np.ndarray | None = None

    def ask(self) -> list[list[float]]:
        self._asked = np.asarray(self.emitter.ask(), dtype=float)
        return [[float(v) for v in x] for x in self._asked]

    def tell(self, genotypes: Sequence[Sequence[float]], fitness: Sequence[float],
             metrics: Sequence[dict] | None = None, scores=None) -> None:  # fmt: skip
        assert self._asked is not None and len(genotypes) == len(self._asked)
        if metrics is None:
            raise RunError("map-elites needs each candidate's metrics at tell time")
        keep = [(i, v) for i, m in enumerate(metrics) if (v := descriptor_values(self.descriptors, m)) is not None]
        if keep:
            idx = np.array([i for i, _ in keep])
            self.archive.add(self._asked[idx], np.asarray(fitness, dtype=float)[idx], np.array([v for _, v in keep]),
                             gen=np.full(len(idx), self.generation), idx=idx)  # fmt: skip
        self.generation += 1
        self._asked = None

    def recommend(self) -> None:
        return None  # its best candidates are its answer

    def state(self) -> dict:
        """The archive: coverage, QD score and each elite's cell, (generation, index) and fitness."""
        data = self.archive.data(["index", "objective", "gen", "idx"])
        elites = sorted(
            ({"cell": int(c), "generation": int(g), "index": int(i), "fitness": float(f)}
             for c, f, g, i in zip(data["index"], data["objective"], data["gen"], data["idx"], strict=True)),
            key=lambda e: e["cell"],
        )  # fmt: skip
        stats = self.archive.stats
        return {"descriptors": [d.metric for d in self.descriptors], "coverage": round(float(stats.coverage), 6),
                "qd_score": round(float(stats.qd_score), 6), "elites": elites}  # fmt: skip


OPTIMIZERS.register(
    OptimizerKind(
        name="map-elites",
        doc="MAP-Elites (pyribs: a grid over the named 'descriptors', Iso+LineDD children), seeded; "
        "winner: best fitness",
        fields=("x0", "sigma0", "popsize", "descriptors", "options"),
        create=MapElites,
        url="https://arxiv.org/abs/1504.04909",
        options=(
            Option(
                "line_sigma",
                0.2,
                "sigma of a child's step along the line between its two elites",
                integer=False,
                low_inclusive=True,
                high=10.0,
            ),
        ),
    )
)
