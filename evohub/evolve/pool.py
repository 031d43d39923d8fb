"""Evaluating a population: in this process, or on Ray actors (one per GPU, or per CPU slot).

Workers receive genotypes and their recipes, never weights: each one holds the stage's inputs
and a scoring model resident and merges in memory. A candidate whose evaluation fails is tried once more, then
recorded as failed with its error, and the run goes on; an actor that dies is replaced and its
candidate resubmitted.

    >>> pool = RayPool(worker_spec, actors=8, gpus_per_actor=1)   # doctest: +SKIP
    >>> pool.evaluate(candidates, done)      # done(candidate, outcome) as each one finishes
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace

from evohub.evolve.search import Candidate, Evaluator, Outcome
from evohub.evolve.worker import Worker, WorkerSpec

ATTEMPTS = 2  # a failing candidate is evaluated at most twice
#: what an attempt's cost says of the attempt alone: the last one's items and longest answer
_OWN = ("items", "longest_tokens")


def after(earlier: Outcome | None, out: Outcome) -> Outcome:
    """``out``, charged with what an ``earlier`` failed attempt at the same candidate spent (its
    seconds, tokens, steps and stage seconds): the ledger and a time budget count every attempt."""
    if earlier is None:
        return out
    cost = dict(out.cost)
    for k, v in earlier.cost.items():
        if k not in _OWN and isinstance(v, int | float):
            cost[k] = (cost.get(k) or 0) + v
    return replace(out, seconds=out.seconds + earlier.seconds, cost=cost)


class InProcessPool(Evaluator):
    """One resident worker in this process, built on first use."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self._worker: Worker | None = None

    def evaluate(self, batch: Sequence[Candidate], done: Callable[[Candidate, Outcome], None]) -> None:
        if self._worker is None:
            self._worker = self.spec.build()
        for c in batch:
            out = None
            for _ in range(ATTEMPTS):
                out = after(out, self._worker.evaluate(c.genotype, c.recipe, c.items, c.split))
                if out.error is None:
                    break
            done(c, out)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None


class _Actor:
    """The Ray actor: a worker built inside the actor process."""

    def __init__(self, spec: WorkerSpec):
        self.worker = spec.build()

    def evaluate(self, genotype: list[float], recipe, items: tuple[int, ...] | None, split: str) -> Outcome:
        return self.worker.evaluate(genotype, recipe, items, split)

    def pid(self) -> int:
        return os.getpid()


class RayPool(Evaluator):
    """``actors`` Ray actors, each with its own resident worker; joins ``RAY_ADDRESS`` if set."""

    def __init__(
        self,
        spec: WorkerSpec,
        actors: int,
        gpus_per_actor: float = 0.0,
        cpus_per_actor: float = 1.0,
    ):
        import ray

        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)  # fmt: skip
        self._ray = ray
        self.spec = spec
        self._cls = ray.remote(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor, max_restarts=0)(_Actor)
        self.actors = [self._cls.remote(spec) for _ in range(actors)]
        self.replaced = 0

    def evaluate(self, batch: Sequence[Candidate], done: Callable[[Candidate, Outcome], None]) -> None:
        ray = self._ray
        queue: list[tuple[Candidate, int]] = [(c, 0) for c in batch]
        pending: dict = {}  # ObjectRef -> (actor slot, candidate, attempt)
        failed: dict[int, Outcome] = {}  # id(candidate) -> its failed attempt, while it is tried again
        free = list(range(len(self.actors)))
        while queue or pending:
            while queue and free:
                slot = free.pop(0)
                c, attempt = queue.pop(0)
                ref = self.actors[slot].evaluate.remote(list(c.genotype), c.recipe, c.items, c.split)
                pending[ref] = (slot, c, attempt)
            ready, _ = ray.wait(list(pending), num_returns=1)
            slot, c, attempt = pending.pop(ready[0])
            try:
                out: Outcome = ray.get(ready[0])
            except ray.exceptions.RayActorError as e:  # the actor died: replace it, try again
                self.actors[slot] = self._cls.remote(self.spec)
                self.replaced += 1
                out = Outcome(None, {}, f"actor died: {str(e).splitlines()[0]}", 0.0)
            except ray.exceptions.RayTaskError as e:
                out = Outcome(None, {}, str(e).splitlines()[0], 0.0)
            free.append(slot)
            out = after(failed.pop(id(c), None), out)
            if out.error is not None and attempt + 1 < ATTEMPTS:
                failed[id(c)] = out
                queue.append((c, attempt + 1))
            else:
                done(c, out)

    def close(self) -> None:
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []
