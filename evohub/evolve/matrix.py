"""Per-item scores and what they cost: a stage's score matrix, ``stages/<stage>/scores.jsonl``.

Every scoring call — a candidate on some fitness items — appends one row, fsynced, beside the
candidates log (docs/design.md#per-item-scores-and-the-cost-ledger)::

    {"g": 3, "i": 5, "at": 3, "why": "fitness", "items": [17, 402, ...], "scores": [1, 0, ...],
     "fitness": 0.5, "metrics": {...}, "error": null, "prompt_tokens": 5210, "generated_tokens": 880,
     "merge_s": 0.21, "generate_s": 3.9, "score_s": 0.05, "seconds": 4.16}

``g``/``i`` name the candidate (generation, index; references — the base and the sources, scored
to calibrate an estimator — have ``g`` = -1 and ``ref``); ``at`` is the generation during which the
call was made (an audit after generation 7 has ``at`` 7); ``why`` is ``fitness``, ``audit`` or
``reference``; ``items`` index the fitness rows and ``scores`` hold each item's contribution to
the fitness metric (``Scored.items``: for ``ja-math`` 1 when right and Japanese, else 0);
``fitness`` and ``metrics`` are the task's on those items.

A call is keyed by (g, i, items), so a resumed stage that asks for the same call again gets the
logged scores and evaluates nothing; a row cut short by a crash is dropped. The matrix is the
source of truth for item scores, as ``candidates.jsonl`` is for what the optimiser was told.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from evohub.files import append_jsonl, read_jsonl

#: what one scoring call costs; rows of the matrix and of candidates.jsonl carry these fields.
#: ``longest_tokens`` is a call's longest answer: a call decodes that many steps (its median over a
#: run's calls is what the cost model's "longest answer of a call" stands for: ``plan --measured``);
#: ``steps`` are the decode steps the call ran (vLLM: engine steps, fewer than the longest answer's
#: tokens with drafts; hf: each batch's new-token width, summed)
COST_FIELDS = ("items", "prompt_tokens", "generated_tokens", "longest_tokens", "steps", "merge_s", "generate_s",
               "score_s", "seconds")  # fmt: skip
_INT_FIELDS = frozenset({"items", "prompt_tokens", "generated_tokens", "longest_tokens", "steps", "calls"})


def totals(rows: Iterable[dict]) -> dict:
    """The summed cost of ``rows`` (matrix or candidates rows): ``calls`` and each of
    :data:`COST_FIELDS` (a row without ``items`` counts the length of its item list; a failed
    call's items were not scored, and count nothing)."""
    out: dict = {"calls": 0} | {k: 0 for k in COST_FIELDS}
    for r in rows:
        out["calls"] += 1
        for k in COST_FIELDS:
            v = r.get(k)
            if k == "items":
                v = 0 if r.get("error") is not None else len(v) if isinstance(v, list) else v
            out[k] += v or 0
    return {k: (int(v) if k in _INT_FIELDS else round(float(v), 4)) for k, v in out.items()}


def _compact(x: float) -> float | int:
    return int(x) if float(x).is_integer() else round(float(x), 6)


class ScoreMatrix:
    """``scores.jsonl`` of one stage: append-only, one row per scoring call."""

    def __init__(self, path: Path | None):
        """``path`` None keeps the matrix in memory only (evaluators without items: tests)."""
        self.path = path
        self.rows: list[dict] = []
        self._calls: dict[tuple, dict] = {}
        self._of: dict[tuple[int, int], list[dict]] = {}  # candidate -> its calls, in order
        self._known: dict[tuple[int, int], dict[int, float]] = {}
        for row in read_jsonl(path, "the score matrix") if path is not None else []:
            self._add(row)

    @staticmethod
    def key(g: int, i: int, items: Sequence[int] | None) -> tuple:
        return g, i, None if items is None else tuple(items)

    def _add(self, row: dict) -> None:
        self.rows.append(row)
        self._calls[self.key(row["g"], row["i"], row["items"])] = row
        self._of.setdefault((row["g"], row["i"]), []).append(row)
        if row.get("error") is None and row["items"] is not None and row.get("scores") is not None:
            known = self._known.setdefault((row["g"], row["i"]), {})
            known.update(zip(row["items"], row["scores"], strict=True))

    def get(self, g: int, i: int, items: Sequence[int] | None) -> dict | None:
        return self._calls.get(self.key(g, i, items))

    def append(self, row: dict) -> dict:
        row = dict(row)
        if row.get("scores") is not None:
            row["scores"] = [_compact(s) for s in row["scores"]]
        if self.path is not None:
            append_jsonl(self.path, row)
        self._add(row)
        return row

    def calls_of(self, g: int, i: int) -> list[dict]:
        """Every call candidate (g, i) had, in the order they were made."""
        return self._of.get((g, i), [])

    def fitness_calls(self, g: int, i: int) -> list[dict]:
        """The calls that estimated candidate (g, i)'s fitness in its generation (not its audits)."""
        return [r for r in self.calls_of(g, i) if r["why"] == "fitness" and r["at"] == g]

    def known(self, g: int, i: int) -> dict[int, float]:
        """Item -> score of every item candidate (g, i) was scored on so far."""
        return self._known.get((g, i), {})

    def full_score(self, g: int, i: int, pool: Sequence[int]) -> float | None:
        """The candidate's mean item score over the whole item pool, when every item of it is known."""
        known = self.known(g, i)
        if not pool or any(j not in known for j in pool):
            return None
        return sum(known[j] for j in pool) / len(pool)

    def full_rows(self, pool: Sequence[int], before: int | None = None) -> dict[tuple[int, int], list[float]]:
        """(g, i) -> scores on ``pool`` (in its order) of every candidate scored on all of it by calls
        made before generation ``before`` (all calls when None): an estimator's calibration data."""
        seen: dict[tuple[int, int], dict[int, float]] = {}
        for r in self.rows:
            if r.get("error") is not None or r.get("scores") is None or (before is not None and r["at"] >= before):
                continue
            seen.setdefault((r["g"], r["i"]), {}).update(zip(r["items"], r["scores"], strict=True))
        return {k: [v[j] for j in pool] for k, v in seen.items() if all(j in v for j in pool)}

    def cost(self) -> dict:
        return totals(self.rows)
