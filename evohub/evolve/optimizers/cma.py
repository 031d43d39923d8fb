"""``cma-es``: CMA-ES from the ``cma`` package, seeded from the job (the paper's optimiser).

pycma would draw from numpy's global generator; here it gets ``randn`` from a generator of its
own, so two runs with one seed ask the same genotypes. Bounds are the unit cube; every stopping
rule of pycma is off (the budget is evohub's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from evohub.evolve.optimizers import OPTIMIZERS, OptimizerKind


class CMAES:
    def __init__(self, x0: Sequence[float], sigma0: float, popsize: int, seed: int):
        import cma
        import numpy as np

        rng = np.random.default_rng(seed)
        self.es = cma.CMAEvolutionStrategy(
            list(x0),
            sigma0,
            {"seed": np.nan, "randn": lambda *shape: rng.standard_normal(shape), "bounds": [0, 1],
             "popsize": popsize, "verbose": -9, "maxfevals": math.inf, "tolfun": 0, "tolx": 0,
             "tolfunhist": 0, "tolstagnation": math.inf, "tolflatfitness": math.inf},
        )  # fmt: skip

    def ask(self) -> list[list[float]]:
        self._asked = self.es.ask()
        return [[float(v) for v in x] for x in self._asked]

    def tell(self, genotypes: Sequence[Sequence[float]], fitness: Sequence[float],
             metrics: Sequence[dict] | None = None, scores=None) -> None:  # fmt: skip
        # pycma recognises its own solution arrays (others count as injected): hand them back
        assert len(genotypes) == len(self._asked)
        self.es.tell(self._asked, [-f for f in fitness])  # cma minimises

    def state(self) -> dict:
        return {"sigma": float(self.es.sigma), "mean": [float(v) for v in self.es.mean]}

    def recommend(self) -> list[float]:
        # the mean mapped into the bounds as pycma maps every sample (its ``result.xfavorite``):
        # under noisy fitness the mean estimates the optimum better than the best sample
        return [float(v) for v in self.es.boundary_handler.transform(self.es.mean)]


OPTIMIZERS.register(
    OptimizerKind(
        name="cma-es",
        doc="CMA-ES (pycma), seeded; the paper's optimiser (x0 0.5, sigma0 1/6, popsize 4 + ⌊3 ln n⌋)",
        fields=("x0", "sigma0", "popsize"),
        create=CMAES,
        url="https://arxiv.org/abs/1604.00772",
    )
)
