"""``race``: all candidates of a generation race on shared item blocks; the hopeless stop early.

Racing inside CMA-ES follows Heidrich-Meisner & Igel (2009, "Hoeffding and Bernstein races for
selecting policies in evolutionary direct policy search"): CMA-ES's update needs the μ best of a
generation (and their order), not every candidate's fitness to full precision.

Each generation draws one random order of the item pool from the job seed (common random
numbers: every candidate sees the same items in the same order) and scores the candidates still
racing on it block by block. After each block of n items seen of the pool's N, every racing
candidate's mean m has a confidence interval m ± ε with the Hoeffding-Serfling bound for
sampling without replacement (Serfling 1974; Bardenet & Maillard 2015), values in a range of
width R and a union bound over the K candidates and B blocks::

    ε = R · sqrt( (1 − (n − 1)/N) · ln(2·K·B/δ) / (2n) )

so ε is 0 once the whole pool is seen. A candidate whose upper bound is below the lower bounds
of μ' others (μ' = the parent slots not yet taken) stops, *rejected*; one whose lower bound is
above the upper bounds of all but fewer than μ' others stops, *accepted* (a parent); the race
ends when every candidate is decided, or when the items (``max_items``, default the pool) run out.

What the optimiser is told (``tell``): accepted and undecided candidates their mean; a rejected
candidate ``lo − R·(1 + u) + (m − lo)`` with u the blocks it did not see, so every rejected one
ranks below every parent, later rejections above earlier ones, and among those rejected after the
same block (the same items seen) by their mean. CMA-ES uses ranks only, so these values change
nothing but the order. Active CMA's negative weights go to the worst ranks: they act on that
same order, a coarser one than full scores would give (candidates rejected after one block are
told apart by one block's mean). The recorded ``fitness`` is the mean on the items seen.

Each block is a scoring call per racing candidate: the candidate is merged into the engine again,
and the call lasts as long as its longest answer. On a CPU with a small model both are cheap; on
a GPU with a 7B model they cost a race more than the items it saves (docs/design.md#cost-model):
``evohub plan --gpu`` counts them.
"""

from __future__ import annotations

import math
import random

from evohub.evolve.estimators import (
    AUDIT_OPTIONS,
    ESTIMATORS,
    Calls,
    Estimate,
    Estimator,
    Option,
    PlanInputs,
    audit_calls,
)

#: the share of the pool a race scores per candidate, as measured on the demo world: 0.92 over
#: the first 120 candidates of bench/fitness_cost.py's seed 0 (2026-12-05; bench/README.md):
#: the plan's cost model uses it. A generation's candidates differ by less than the bound
#: resolves in a few blocks, so most race to the end.
MEASURED_SHARE = 0.92


def order(pool: list[int], seed: int, stage: str, generation: int) -> list[int]:
    """The generation's item order (common to every candidate), drawn from the job seed."""
    return random.Random(f"evohub-race-{seed}-{stage}-{generation}").sample(pool, len(pool))


def half_width(n: int, N: int, width: float, k: int, blocks: int, delta: float) -> float:
    """Hoeffding-Serfling ε after n of N items, union-bounded over k candidates and the blocks."""
    if n >= N:
        return 0.0
    return width * math.sqrt((1 - (n - 1) / N) * math.log(2 * k * blocks / delta) / (2 * n))


def decide(mean: dict[int, float], eps: float, slots: int) -> dict[int, str]:
    """The racing candidates decided after a block: ``rejected`` when at least ``slots`` others are
    surely better, ``accepted`` when fewer than ``slots`` others could be better."""
    out = {}
    for k, m in mean.items():
        better = sum(1 for o, v in mean.items() if o != k and v - eps > m + eps)
        maybe = sum(1 for o, v in mean.items() if o != k and v + eps > m - eps)
        if better >= slots:
            out[k] = "rejected"
        elif maybe < slots:
            out[k] = "accepted"
    return out


class Race:
    def __init__(self, options: dict):
        self.block, self.delta, self.max_items = options["block"], options["delta"], options["max_items"]

    def generation(self, ctx, generation: int, cands) -> list[Estimate]:
        lo, hi = ctx.item_range
        width = hi - lo
        items = order(ctx.pool, ctx.seed, ctx.stage, generation)
        if self.max_items:
            items = items[: self.max_items]
        blocks = [items[s : s + self.block] for s in range(0, len(items), self.block)]
        N, K, B = len(ctx.pool), len(cands), len(blocks)
        sums = [0.0] * K
        status: dict[int, str | None] = dict.fromkeys(range(K))  # None racing, then accepted/rejected/failed
        errors: dict[int, str] = {}
        seen = [0] * K  # items seen
        slots = ctx.mu  # parent places not yet taken
        for block in blocks:
            racing = [k for k in range(K) if status[k] is None]
            if not racing:
                break
            for k, call in zip(racing, ctx.score([(cands[k], block) for k in racing]), strict=True):
                if call.error is not None:
                    status[k], errors[k] = "failed", call.error
                else:
                    sums[k] += sum(call.scores)
                    seen[k] += len(block)
            racing = [k for k in racing if status[k] is None]
            if not racing:
                break
            n = seen[racing[0]]
            eps = half_width(n, N, width, K, B, self.delta)
            mean = {k: sums[k] / n for k in racing}
            if len(racing) <= slots or slots == 0:  # the rest are all parents, or none is
                status.update(dict.fromkeys(racing, "accepted" if slots else "rejected"))
                break
            decided = decide(mean, eps, slots)
            status.update(decided)
            slots -= sum(1 for v in decided.values() if v == "accepted")
        return [self._estimate(status[k] or "finalist", sums[k], seen[k], len(items), lo, width, errors.get(k))
                for k in range(K)]  # fmt: skip

    def _estimate(self, state: str, total: float, seen: int, items: int, lo: float, width: float,
                  error: str | None) -> Estimate:  # fmt: skip
        """A candidate's estimate (its mean on the items it saw) and the value that keeps its rank."""
        if state == "failed":
            return Estimate(None, {}, error)
        m = total / seen
        tell = m
        if state == "rejected":
            unseen = math.ceil((items - seen) / self.block)
            tell = lo - width * (1 + unseen) + (m - lo)
        return Estimate(m, {"estimate": m, "items_seen": seen, "race": state}, None, tell)


def planned_calls(inputs: PlanInputs, options: dict) -> list[Calls]:
    """A call per block a candidate races on (each merges the candidate again: a block's calls
    go through the generation's candidates in turn), at the measured share of the pool."""
    per = min(int(options["max_items"]) or inputs.n_items, inputs.n_items)
    block = min(int(options["block"]), per)
    return [Calls(inputs.evaluations * per * MEASURED_SHARE / block, block), audit_calls(inputs, options)]


ESTIMATORS.register(
    Estimator(
        name="race",
        doc="a generation races on shared item blocks; candidates that cannot reach the top μ stop (Hoeffding-Serfling)",
        create=lambda options, minibatch_size: Race(options),
        planned_calls=planned_calls,
        options=(
            Option("block", 32, "items per block: after each, the candidates that are decided stop", low=1),
            Option(
                "delta",
                0.05,
                "the race's error probability (union-bounded over candidates and blocks)",
                integer=False,
                high=1.0,
            ),
            Option("max_items", 0, "items a candidate sees at most (0: the whole pool)", low=0),
            *AUDIT_OPTIONS,
        ),
        needs="bounded",
    )
)
