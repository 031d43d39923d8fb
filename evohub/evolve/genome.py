"""Search spaces as vectors in [0, 1]^n, and what a stage's search costs (docs/design.md#genomes).

The optimiser searches the cube, :meth:`decode` gives a Recipe; this module is the one owner of
a stage's dimensions (``dims``) and of its budget (:class:`Budget`).

    >>> g = PSGenome.for_job(spec)                   # doctest: +SKIP
    >>> g.dims, g.x0()[:2]
    (6, [0.5, 0.5])
    >>> recipe = g.decode(x)                         # a Recipe (schema 1)

Parameter space: one gene per (source, layer group, parameter), parameters ``weight`` then
``density`` (ties / dare_* only), each mapped linearly from [0, 1] to the spec's bounds; each
of the spec's ``patterns`` adds one such slot per source, decoded into an override for the
tensors it matches (e.g. embeddings and LM head apart from the decoder layers). slerp has one
gene per layer group (and pattern), t, written as weights (1 − t, t).

Data-flow space (the paper's DFS): the M = L_a + L_b layers of A and B laid out in order and
repeated r times give T = M·r slots. Gene t < T is slot t's indicator (on when > 0.5); the rest
parameterise the scale entering layer j after layer i: the M×M matrix W (``matrix``, the
paper's), or W_ij = sqrt(u_i·v_j) from two vectors of M (``compact``). Scales map geometrically
from [0, 1] to the spec's bounds, so 0.5 means 1.0 for bounds [0.5, 2]. The path always starts
at A's first layer, entering it with scale 1, and ends at A's last layer: at its last selected
slot (later slots are dropped), or appended when no slot of it is on. At most
``max_path_length`` hops are kept: the earliest ones, then A's last layer.
The start point switches A's first-repetition slots likely on (0.75) and the rest likely off
(0.25), so the mean of the first generation is model A itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from evohub.errors import SpecError
from evohub.spec import DFSSearch, JobSpec, ModelRef, Optimizer, PSSearch, Recipe


@dataclass(frozen=True)
class Budget:
    """What a stage may spend: ``popsize`` candidates per generation, at most ``evaluations`` of
    them (None: bounded by ``max_hours`` only), in at most ``generations`` generations.

    >>> Budget.of(Optimizer(max_evals=1000), dims=6).popsize        # doctest: +SKIP
    9
    """

    popsize: int
    evaluations: int | None
    max_hours: float | None

    @classmethod
    def of(cls, optimizer: Optimizer, dims: int, cap: int | None = None) -> Budget:
        """The budget of a stage with ``dims`` genes; ``cap`` lowers the evaluation count."""
        pop = optimizer.popsize or 4 + int(3 * math.log(max(dims, 1)))
        counts = [optimizer.max_evals, optimizer.generations and optimizer.generations * pop, cap]
        counts = [c for c in counts if c]
        return cls(pop, min(counts) if counts else None, optimizer.max_hours)

    @property
    def generations(self) -> int | None:
        return math.ceil(self.evaluations / self.popsize) if self.evaluations else None


def _lin(g: float, lo: float, hi: float) -> float:
    return lo + min(max(g, 0.0), 1.0) * (hi - lo)


def _geo(g: float, lo: float, hi: float) -> float:
    return lo * (hi / lo) ** min(max(g, 0.0), 1.0)


@dataclass(frozen=True)
class PSGenome:
    """Parameter-space genes of a job: K sources × G layer groups × {weight[, density]}."""

    search: PSSearch
    sources: tuple[ModelRef, ...]
    base: ModelRef | None
    seed: int
    dtype: str
    tokenizer_source: str | int
    #: a diffusion pipeline's whole components: name -> "base" or a source index
    components: tuple[tuple[str, str | int], ...] = ()
    #: LoRAs fused into the merged UNet: (file reference, fixed scale or searched bounds); one
    #: gene per searched scale, after the merge's genes
    loras: tuple[tuple[ModelRef, float | tuple[float, float]], ...] = ()
    #: a diffusion pipeline's scheduler settings
    scheduler: tuple[tuple[str, str | int | float | bool], ...] = ()

    @classmethod
    def for_job(cls, spec: JobSpec, pin: Callable[[ModelRef], ModelRef] = lambda r: r) -> PSGenome:
        """The job's parameter-space genome; ``pin`` maps references to resolved ones."""
        ps = spec.parameter_space
        assert ps is not None
        names = [s.key for s in spec.sources]
        ts = spec.tokenizer_source
        return cls(
            search=ps,
            sources=tuple(pin(s.ref()) for s in spec.sources),
            base=pin(spec.base_model) if spec.base_model else None,
            seed=spec.seed,
            dtype=spec.dtype,
            tokenizer_source="base" if ts == "base" else names.index(ts),
            components=tuple(
                (c, "base" if v == "base" else names.index(v)) for c, v in (spec.components or {}).items()
            ),
            loras=tuple((pin(x.ref()), x.scale if isinstance(x.scale, float) else x.scale.bounds) for x in spec.loras),
            scheduler=tuple((spec.scheduler or {}).items()),
        )

    @property
    def genes_per_slot(self) -> int:
        """Genes per (source, layer group or pattern): the method's parameters (weight[, density])."""
        return len(self.search.kind.params)

    @property
    def dims(self) -> int:
        return self.merge_dims + self.lora_genes

    @property
    def merge_dims(self) -> int:
        """The merge's genes (the LoRA scales come after them)."""
        slots = self.search.layer_groups + len(self.search.patterns)
        if self.search.kind.shares:
            return slots
        return len(self.sources) * slots * self.genes_per_slot

    @property
    def lora_genes(self) -> int:
        return sum(1 for _, scale in self.loras if isinstance(scale, tuple))

    def _lora_scales(self, x: Sequence[float]) -> list[dict]:
        """Each LoRA with its scale: fixed, or its gene (after the merge's) mapped onto its bounds."""
        out, g = [], self.merge_dims
        for ref, scale in self.loras:
            if isinstance(scale, tuple):
                scale, g = _lin(x[g], *scale), g + 1
            out.append({"source": ref, "scale": scale})
        return out

    def describe(self) -> str:
        """The genes in words, for plans and cards."""
        G, P, K = self.search.layer_groups, len(self.search.patterns), len(self.sources)
        slots = f"{G} layer group(s)" + (f" + {P} pattern(s)" if P else "")
        lora = f" + {self.lora_genes} LoRA scale(s)" if self.lora_genes else ""
        if self.search.kind.shares:
            return f"{slots} x t{lora}"
        return f"{K} sources x ({slots}) x {{{', '.join(self.search.kind.params)}}}{lora}"

    def x0(self) -> list[float]:
        x0 = self.search.optimizer.x0
        if not isinstance(x0, tuple):
            return [x0] * self.dims
        if len(x0) != self.dims:
            raise SpecError(f"parameter_space.optimizer.x0: {len(x0)} values for a genome of {self.dims} genes "
                            f"({self.describe()})")  # fmt: skip
        return list(x0)

    def references(self) -> list[tuple[int | None, Recipe]]:
        """The models this stage merges, each as a recipe that reproduces it: the base (every
        weight 0; index None) and each source k (weight 1, the others 0, density 1) — what a
        fitness estimator calibrates on (docs/design.md#fitness-estimators)."""
        ps, K = self.search, len(self.sources)
        out: list[tuple[int | None, Recipe]] = []
        for k in ([None] if ps.kind.base and self.base is not None else []) + list(range(K)):
            models = []
            for j in range(K):
                m: dict = {"source": self.sources[j], "weight": 1.0 if j == k else 0.0}
                if ps.kind.density and not ps.kind.shares:
                    m["density"] = 1.0
                models.append(m)
            data = self.decode(self.x0()).model_dump(mode="python", exclude_none=True)
            data["parameter_space"]["models"] = models
            out.append((k, Recipe.model_validate(data)))
        return out

    @property
    def slot_count(self) -> int:
        """Slots in depth order: the layer groups, then the patterns."""
        return self.search.layer_groups + len(self.search.patterns)

    def slots(self) -> list[int]:
        """Each gene's slot (0 … :attr:`slot_count` − 1): the layer group, or G + the pattern's index;
        a LoRA scale's gene: slot :attr:`slot_count` (after the merge's)."""
        S = self.slot_count
        lora = [S] * self.lora_genes  # the LoRA scales: one slot after the merge's, at the output's end
        if self.search.kind.shares:
            return list(range(S)) + lora
        per = self.genes_per_slot
        return [(n // per) % S for n in range(self.merge_dims)] + lora

    def source_genotypes(self) -> list[list[float]]:
        """For each source, the genotype nearest to it alone (weight 1, the others 0, density 1;
        slerp: t = 0 or 1), each gene clipped to the cube where the bounds leave the value out."""
        ps, K, S = self.search, len(self.sources), self.slot_count

        def gene(v: float, bounds: tuple[float, float]) -> float:
            lo, hi = bounds
            return 0.5 if hi == lo else min(max((v - lo) / (hi - lo), 0.0), 1.0)

        lora = self.x0()[self.merge_dims :]  # the LoRA scales at their start
        if ps.kind.shares:
            return [[gene(float(k), ps.weight.bounds)] * S + lora for k in range(min(K, 2))]
        out = []
        for k in range(K):
            x: list[float] = []
            for j in range(K):
                slot = [gene(1.0 if j == k else 0.0, ps.weight.bounds)]
                if ps.kind.density:
                    assert ps.density is not None
                    slot.append(gene(1.0, ps.density.bounds))
                x += slot * S
            out.append(x + lora)
        return out

    def decode(self, x: Sequence[float]) -> Recipe:
        ps, G, K = self.search, self.search.layer_groups, len(self.sources)
        P = len(ps.patterns)
        if len(x) != self.dims:
            raise ValueError(f"expected {self.dims} genes, got {len(x)}")
        models: list[dict] = []
        if ps.kind.shares:  # one t per layer group, then per pattern
            t = [_lin(x[i], *ps.weight.bounds) for i in range(G + P)]
            for k in range(2):
                share = [1 - v for v in t] if k == 0 else t
                over = [{"pattern": p, "weight": share[G + j]} for j, p in enumerate(ps.patterns)]
                models.append({"source": self.sources[k], "weight": _one(share[:G]), "overrides": over})
        else:
            per = self.genes_per_slot
            for k in range(K):
                genes = [x[(k * (G + P) + i) * per : (k * (G + P) + i + 1) * per] for i in range(G + P)]
                weights = [_lin(g[0], *ps.weight.bounds) for g in genes]
                m: dict = {"source": self.sources[k], "weight": _one(weights[:G])}
                over = [{"pattern": p, "weight": weights[G + j]} for j, p in enumerate(ps.patterns)]
                if ps.kind.density:
                    assert ps.density is not None
                    dens = [_lin(g[1], *ps.density.bounds) for g in genes]
                    m["density"] = _one(dens[:G])
                    for j, o in enumerate(over):
                        o["density"] = dens[G + j]
                m["overrides"] = over
                models.append(m)
        return Recipe.model_validate(
            {
                "evohub_recipe": 1,
                "base_model": self.base,
                "dtype": self.dtype,
                "seed": self.seed,
                "tokenizer_source": self.tokenizer_source,
                "components": dict(self.components) or None,
                "loras": self._lora_scales(x),
                "scheduler": dict(self.scheduler) or None,
                "parameter_space": {
                    "method": ps.method,
                    "normalize": ps.normalize,
                    "layer_groups": G,
                    "vocab": ps.vocab,
                    "options": dict(ps.options or {}),
                    "models": models,
                },
            }
        )


def _one(values: list[float]) -> float | list[float]:
    """A single number when there is one layer group."""
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class DFSGenome:
    """Data-flow-space genes: T slot indicators, then the scale parameters."""

    search: DFSSearch
    layers_a: int
    layers_b: int
    a: ModelRef | str  # 'ps' or a reference
    b: ModelRef
    base: Recipe | None  # the stage-1 recipe when a == 'ps' (its PS part is kept)
    seed: int
    dtype: str

    @property
    def M(self) -> int:
        """Layers of A and B together (the paper's M)."""
        return self.layers_a + self.layers_b

    @property
    def T(self) -> int:
        """Slots: M layers repeated r times (the paper's T)."""
        return self.M * self.search.repeats

    @property
    def dims(self) -> int:
        scale_genes = self.M * self.M if self.search.parameterization == "matrix" else 2 * self.M
        return self.T + scale_genes

    def describe(self) -> str:
        """The genes in words, for plans and cards."""
        M = self.M
        scales = f"{M}x{M} scale matrix" if self.search.parameterization == "matrix" else f"2x{M} compact scales"
        return f"{self.T} slot indicators (M={M} layers x r={self.search.repeats}) + {scales}"

    @property
    def max_hops(self) -> int:
        """The longest path a genotype can give."""
        return min(self.T, self.search.max_path_length or self.T)

    def references(self) -> list:
        """None: a data-flow stage has no recipe that reproduces model B alone."""
        return []

    def x0(self) -> list[float]:
        on = [0.75 if t < self.layers_a else 0.25 for t in range(self.T)]
        lo, hi = self.search.scales.bounds
        one = 0.5 if lo >= 1 or hi <= 1 else math.log(1 / lo) / math.log(hi / lo)  # the gene of scale 1
        return on + [one] * (self.dims - self.T)

    def slot(self, t: int) -> tuple[str, int]:
        j = t % self.M
        return ("a", j) if j < self.layers_a else ("b", j - self.layers_a)

    def scale(self, x: Sequence[float], i: int, j: int) -> float:
        lo, hi = self.search.scales.bounds
        if self.search.parameterization == "matrix":
            return _geo(x[self.T + i * self.M + j], lo, hi)
        u, v = x[self.T + i], x[self.T + self.M + j]
        return math.sqrt(_geo(u, lo, hi) * _geo(v, lo, hi))

    def path(self, x: Sequence[float]) -> tuple[list[tuple[str, int]], list[float]]:
        """The (path, scales) gene vector ``x`` encodes."""
        if len(x) != self.dims:
            raise ValueError(f"expected {self.dims} genes, got {len(x)}")
        end = self.layers_a - 1  # A's last layer, in the combined layer order
        slots = [0] + [t for t in range(1, self.T) if x[t] > 0.5]
        ends = [k for k, t in enumerate(slots) if t % self.M == end]
        slots = slots[: ends[-1] + 1] if ends else [*slots, end]
        cap = self.search.max_path_length
        if cap is not None and len(slots) > cap:
            slots = [*slots[: max(cap - 1, 1)], end] if cap > 1 else [end]
        path = [self.slot(t) for t in slots]
        scales = [1.0] + [self.scale(x, slots[k - 1] % self.M, slots[k] % self.M) for k in range(1, len(slots))]
        return path, scales

    def decode(self, x: Sequence[float]) -> Recipe:
        path, scales = self.path(x)
        data: dict = {
            "evohub_recipe": 1,
            "dtype": self.dtype,
            "seed": self.seed,
            "data_flow_space": {
                "a": self.a,
                "b": self.b,
                "path": [list(h) for h in path],
                "scales": scales,
            },
        }
        if self.base is not None:  # PS then DFS: keep stage 1's merge
            data |= {
                "base_model": self.base.base_model,
                "seed": self.base.seed,
                "tokenizer_source": self.base.tokenizer_source,
                "parameter_space": self.base.parameter_space,
            }
        else:
            data["tokenizer_source"] = "a"
        return Recipe.model_validate(data)


Genome = PSGenome | DFSGenome


def genome_for(
    job: JobSpec,
    stage: str,
    layers: Callable[[ModelRef], int],
    pin: Callable[[ModelRef], ModelRef] = lambda r: r,
    stage1: Recipe | None = None,
) -> Genome:
    """The genome of a job's ``stage`` (``ps`` or ``dfs``).

    ``layers(ref)`` gives a model's decoder layers (from its config), ``pin`` maps references to
    the commits they resolved to, ``stage1`` is the finished parameter-space recipe that a
    PS-then-DFS job's data-flow genome decodes on top of (without it the genome still has its
    dimensions, for planning, but cannot decode).
    """
    if stage == "ps":
        return PSGenome.for_job(job, pin)
    dfs = job.data_flow_space
    assert dfs is not None
    b = job.source(dfs.b).ref()
    if dfs.a == "ps":
        a: ModelRef | str = "ps"
        layers_a = layers(job.base_model or job.sources[0].ref())  # the PS merge has this architecture
    else:
        a_ref = job.source(dfs.a).ref()
        a, layers_a = pin(a_ref), layers(a_ref)
    return DFSGenome(search=dfs, layers_a=layers_a, layers_b=layers(b), a=a, b=pin(b), base=stage1,
                     seed=job.seed, dtype=job.dtype)  # fmt: skip
