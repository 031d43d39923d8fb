"""``m2n2``: Model Merging of Natural Niches (Abrantes, Lange & Tang, GECCO 2025), in gene space.

M2N2 keeps an archive of models and breeds each child from two of them (docs/design.md#optimisers):

- **Competition** (resource sharing). Archive member i's fitness is shared per item:
  fᵢ = Σⱼ sᵢⱼ / zⱼ with zⱼ = (Σₖ sₖⱼ)^α over the archive (zⱼ = 1 where no member scores), so an item
  that few members solve is worth more to them: a model that solves what the others cannot is kept.
- **Parents.** The first is drawn with probability ∝ fᵢ; the second by **attraction** to it,
  ∝ Σⱼ max(0, sₖⱼ/zⱼ − s_p1,j/zⱼ): the members strong where the first is weak.
- **Crossover with a split point.** A split point s (uniform over the genome's slots, layer
  groups in depth order then the patterns) and a mixing ratio w ~ U(0, 1): the genes of slots
  before s are (1 − w)·p1 + w·p2, those from s on w·p1 + (1 − w)·p2 — the paper's merge boundary
  and mixing ratio. For the linear methods (``linear``, ``task_arithmetic``: weights map linearly
  from genes) the child is exactly that mix of the parents' merges; for the others it is the mix of
  their recipes. A Gaussian ``mutation`` (σ in gene units, 0.05 by default; clipped to the cube)
  follows. The paper mutates only when evolving from scratch; here the archive starts from a few
  seeds in a small genome, and mixing alone stays inside their hull (weights beyond the sources'
  are out of reach): on the demo world σ 0.05 lifted held-out acc_ja from 30.8 to 38.8 over six
  seeds (bench/README.md, "Search"). ``mutation: 0`` is the paper's setting.
- **Replacement.** Each child (with its item scores) joins the archive; while the archive holds
  fewer than ``archive`` members it is kept, else the member of lowest shared fitness, the child
  included, is dropped.

evohub evaluates a generation together, so a generation's ``popsize`` children are all bred from
the archive as it stands at ``ask`` and enter it one by one, in index order, at ``tell`` (the
paper's loop is one child at a time). The first generation seeds the archive: each source alone
(:meth:`~evohub.evolve.genome.PSGenome.source_genotypes`), the start point x0, then x0 plus
N(0, sigma0²) noise. Shared fitness needs every candidate scored on the same items: the schema asks
for the ``full`` estimator without a minibatch. A failed candidate never enters the archive.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evohub.errors import RunError
from evohub.evolve.optimizers import OPTIMIZERS, OptimizerKind
from evohub.registry import Option


def shared_fitness(scores: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(fitness per member, the normalised matrix sᵢⱼ / zⱼ) of an archive's item scores (members × items)."""
    z = scores.sum(axis=0) ** alpha
    z = np.where(z > 0, z, 1.0)
    norm = scores / z[None, :]
    return norm.sum(axis=1), norm


def attraction(norm: np.ndarray, first: int) -> np.ndarray:
    """Each member's attraction to member ``first``: Σⱼ max(0, normₖⱼ − norm_first,j)."""
    return np.maximum(0.0, norm - norm[first][None, :]).sum(axis=1)


def crossover(p1: np.ndarray, p2: np.ndarray, slots: np.ndarray, split: int, w: float) -> np.ndarray:
    """The child of ``p1`` and ``p2``: ratio (1 − w, w) on slots before ``split``, (w, 1 − w) from it on."""
    mix = np.where(slots < split, w, 1.0 - w)
    return (1.0 - mix) * p1 + mix * p2


class M2N2:
    def __init__(self, x0: Sequence[float], sigma0: float, popsize: int, seed: int, options: dict, genome):
        self.rng = np.random.default_rng(seed)
        self.x0, self.sigma0, self.popsize = np.asarray(x0, dtype=float), sigma0, popsize
        self.alpha, self.size = float(options["alpha"]), int(options["archive"]) or popsize
        self.mutation = float(options["mutation"])
        self.slots = np.asarray(genome.slots())
        self.n_slots = int(self.slots.max()) + 1 if len(self.slots) else 1
        self.seeds = [np.asarray(g, dtype=float) for g in genome.source_genotypes()]
        self.genes: list[np.ndarray] = []  # the archive: genotypes, their item scores, (generation, index)
        self.scores: list[np.ndarray] = []
        self.names: list[tuple[int, int]] = []
        self.generation = 0
        self._asked: list[list[float]] | None = None

    def _first_generation(self) -> np.ndarray:
        out = [*self.seeds, self.x0][: self.popsize]
        while len(out) < self.popsize:
            out.append(np.clip(self.x0 + self.sigma0 * self.rng.standard_normal(len(self.x0)), 0.0, 1.0))
        return np.stack(out)

    def _children(self) -> np.ndarray:
        fit, norm = shared_fitness(np.stack(self.scores), self.alpha)
        n = len(self.genes)
        p_fit = fit / fit.sum() if fit.sum() > 0 else np.full(n, 1.0 / n)
        out = []
        for _ in range(self.popsize):
            a = int(self.rng.choice(n, p=p_fit))
            pull = attraction(norm, a)
            if pull.sum() > 0:
                b = int(self.rng.choice(n, p=pull / pull.sum()))
            else:  # no member beats ``a`` on any item: the second parent by fitness, ``a`` left out
                other = p_fit.copy()
                other[a] = 0.0
                b = int(self.rng.choice(n, p=other / other.sum())) if other.sum() > 0 else a
            split = int(self.rng.integers(0, self.n_slots))
            w = float(self.rng.random())
            child = crossover(self.genes[a], self.genes[b], self.slots, split, w)
            if self.mutation > 0:
                child = child + self.mutation * self.rng.standard_normal(len(child))
            out.append(np.clip(child, 0.0, 1.0))
        return np.stack(out)

    def ask(self) -> list[list[float]]:
        X = self._first_generation() if not self.genes else self._children()
        self._asked = [[float(v) for v in x] for x in X]
        return self._asked

    def tell(self, genotypes: Sequence[Sequence[float]], fitness: Sequence[float],
             metrics: Sequence[dict] | None = None, scores=None) -> None:  # fmt: skip
        assert self._asked is not None and len(genotypes) == len(self._asked)
        if scores is None:
            raise RunError("m2n2 needs each candidate's per-item scores at tell time")
        for i, (x, s) in enumerate(zip(genotypes, scores, strict=True)):
            if s is not None:
                self._insert(np.asarray(x, dtype=float), np.asarray(s, dtype=float), (self.generation, i))
        self.generation += 1
        self._asked = None

    def _insert(self, x: np.ndarray, s: np.ndarray, name: tuple[int, int]) -> None:
        if self.scores and len(s) != len(self.scores[0]):
            raise RunError(f"m2n2: candidate {name} was scored on {len(s)} items, the archive on "
                           f"{len(self.scores[0])}; it needs the same items for all (the full estimator)")  # fmt: skip
        if (s < 0).any():
            raise RunError(f"m2n2: candidate {name} has negative item scores; shared fitness needs them >= 0")
        self.genes.append(x)
        self.scores.append(s)
        self.names.append(name)
        if len(self.genes) > self.size:
            fit, _ = shared_fitness(np.stack(self.scores), self.alpha)
            worst = int(np.argmin(fit))  # the first of equals: the longest-kept member goes first
            for part in (self.genes, self.scores, self.names):
                del part[worst]

    def recommend(self) -> None:
        return None  # its best candidates are its answer

    def state(self) -> dict:
        """The archive: each member's (generation, index), mean item score and shared fitness."""
        if not self.genes:
            return {"archive": []}
        fit, _ = shared_fitness(np.stack(self.scores), self.alpha)
        return {"archive": [{"generation": g, "index": i, "mean": round(float(s.mean()), 6),
                             "shared": round(float(f), 6)}
                            for (g, i), s, f in zip(self.names, self.scores, fit, strict=True)]}  # fmt: skip


OPTIMIZERS.register(
    OptimizerKind(
        name="m2n2",
        doc="M2N2 (natural niches): an archive with per-item shared fitness, attraction-chosen parents, "
        "split-point crossover over layer groups; parameter space, full estimator",
        fields=("x0", "sigma0", "popsize", "options"),
        create=M2N2,
        url="https://arxiv.org/abs/2508.16204",
        options=(
            Option(
                "alpha",
                1.0,
                "competition: z_j = (sum of the archive's scores on item j)^alpha",
                integer=False,
                low_inclusive=True,
            ),
            Option("archive", 0, "archive size (0: popsize)", low=0),
            Option(
                "mutation",
                0.05,
                "sigma of Gaussian noise added to each child's genes (0: none, the paper's from pre-trained)",
                integer=False,
                low_inclusive=True,
                high=1.0,
            ),
        ),
        item_scores=True,
        genome=True,
        stages=("ps",),
    )
)
