"""``lm-loss``: fitness = −(mean negative log-likelihood per token) of texts under the model.

Rows have a ``text`` field, or ``prompt`` + ``completion`` (then only the completion is scored).
A generic, deterministic objective: evolve a merge towards a domain corpus, or test the
evolution machinery on tiny models with no generation involved.
"""

from __future__ import annotations

import math

from evohub.errors import ScoreError
from evohub.score.tasks.base import TASKS, Scored


@TASKS.register
class LMLoss:
    name = "lm-loss"
    doc = "−(mean NLL per token) of texts under the model (reads logits: hf backend)"
    fitness_metric = "neg_nll"
    options = ()
    backends = ("hf",)
    max_new_tokens = None
    shown = ("neg_nll", "ppl")
    metrics = ("neg_nll", "ppl", "tokens")
    item_range, item_binary = None, False  # an example's score: −(its mean NLL per token)

    def check(self, rows: list[dict]) -> None:
        for i, r in enumerate(rows):
            if not isinstance(r.get("text"), str) and not (
                isinstance(r.get("prompt"), str) and isinstance(r.get("completion"), str)
            ):
                raise ScoreError(f"lm-loss: row {i} needs a 'text' string, or 'prompt' and 'completion' strings")

    def score(self, backend, rows: list[dict], batch_size: int = 16, **_) -> dict[str, float]:
        """Token-weighted mean NLL over ``rows``; returns ``neg_nll`` (higher is better) and ``ppl``.

        Needs the transformers backend (it reads logits).
        """
        return self.run(backend, rows, batch_size=batch_size).metrics

    def run(self, backend, rows: list[dict], batch_size: int = 16, **_) -> Scored:
        """The metrics, and each example's −(mean NLL per token) as its item score."""
        import torch

        with torch.no_grad():
            return self._score(backend, rows, batch_size)

    def _score(self, backend, rows: list[dict], batch_size: int) -> Scored:
        import torch

        model, tokenizer = getattr(backend, "model", None), getattr(backend, "tokenizer", None)
        if model is None or not hasattr(model, "parameters"):
            raise ScoreError("lm-loss needs the hf backend (fitness.backend: hf)")
        device = next(model.parameters()).device
        total_nll, total_tokens, items = 0.0, 0, []
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            seqs, starts = [], []
            for r in batch:
                if "text" in r and isinstance(r.get("text"), str):
                    ids = tokenizer(r["text"], add_special_tokens=True).input_ids
                    seqs.append(ids)
                    starts.append(1)
                else:
                    p = tokenizer(r["prompt"], add_special_tokens=True).input_ids
                    c = tokenizer(r["completion"], add_special_tokens=False).input_ids
                    seqs.append(p + c)
                    starts.append(len(p))
            width = max(len(s) for s in seqs)
            ids = torch.zeros(len(seqs), width, dtype=torch.long)
            mask = torch.zeros(len(seqs), width, dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], -1)
            target = ids[:, 1:].to(device)
            nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            scored = torch.zeros_like(nll, dtype=torch.bool)
            for i, (s, st) in enumerate(zip(seqs, starts, strict=True)):
                scored[i, max(st, 1) - 1 : len(s) - 1] = True
            total_nll += float(nll[scored].sum())
            total_tokens += int(scored.sum())
            per = (nll * scored).sum(1) / scored.sum(1).clamp(min=1)
            items += [-float(x) for x in per]
        if total_tokens == 0:
            raise ScoreError("lm-loss: no tokens to score")
        mean = total_nll / total_tokens
        if (usage := getattr(backend, "usage", None)) is not None:
            usage["prompt_tokens"] += total_tokens
        metrics = {"neg_nll": -mean, "ppl": math.exp(min(mean, 50.0)), "tokens": float(total_tokens)}
        return Scored(metrics, [], items)
