"""SigLIP judges: the probability a sigmoid image-text model gives an (image, prompt) pair.

SigLIP is trained with a sigmoid loss on image-text pairs, so ``sigmoid(logit_scale·cos + bias)``
of one pair is a calibrated probability that the text describes the image, in [0, 1], without a
softmax over other prompts: each image is scored on its own prompt alone. Loaded with plain
transformers (``AutoModel``, ``AutoProcessor``), no remote code.

Why these checkpoints (docs/design.md#image-fitness): SigLIP 2 (Tschannen et al., 2025,
"Multilingual Vision-Language Encoders") is trained on WebLI with its non-English share kept
and a multilingual Gemma tokenizer, so Japanese prompts are in its training distribution;
``siglip-multilingual`` is the first SigLIP's multilingual base checkpoint (mSigLIP). Neither
checkpoint's Japanese scores could be measured on this machine (no Hub access): that check is a
GPU runner's first step before a job relies on them.
"""

from __future__ import annotations

from collections.abc import Sequence

from evohub.score.judges import JUDGES, Judge


class SiglipScorer:
    """Scores (image, prompt) pairs with a SigLIP model from a Hub id or a local directory."""

    def __init__(self, model: str, device: str = "cpu", revision: str | None = None):
        import torch
        from transformers import AutoModel, AutoProcessor

        self.device = device
        self.processor = AutoProcessor.from_pretrained(model, revision=revision)
        self.model = AutoModel.from_pretrained(model, revision=revision).to(device).eval()
        self._torch = torch

    def score(self, images: Sequence, prompts: Sequence[str]) -> list[float]:
        torch = self._torch
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        inputs = self.processor(text=list(prompts), images=list(images), padding="max_length", truncation=True,
                                return_tensors="pt").to(self.device)  # fmt: skip
        with torch.no_grad():
            logits = self.model(**inputs).logits_per_image  # images x texts
        return [float(v) for v in torch.sigmoid(logits.diagonal().float())]


def load(device: str, model: str | None) -> SiglipScorer:
    if model is None:
        raise ValueError("a SigLIP judge needs its model (a directory or a Hub repo)")
    return SiglipScorer(model, device)


for name, repo, doc in (
    ("siglip2", "google/siglip2-base-patch16-224", "SigLIP 2 base (multilingual): P(prompt describes image)"),
    ("siglip-multilingual", "google/siglip-base-patch16-256-multilingual",
     "mSigLIP base (multilingual SigLIP): P(prompt describes image)"),
):  # fmt: skip
    JUDGES.register(Judge(name=name, doc=doc, load="evohub.score.judges.siglip:load", item_range=(0.0, 1.0), repo=repo))
