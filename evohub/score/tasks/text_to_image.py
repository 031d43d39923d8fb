"""``text-to-image``: images generated from fixed prompts and seeds, scored by an image judge
(docs/design.md#image-fitness).

Rows: ``prompt`` (str; Japanese for EvoSDXL-JP) and an optional ``seed`` (int; default the row's
index), so every candidate draws each image from the same starting noise. Generation: ``steps``
denoising steps at ``guidance_scale`` (defaults 4 and 0, SDXL-Lightning's; the paper's stage-1
merge runs with its own scheduler), square images of ``image_size`` pixels (default 1024), in
batches of the fitness ``batch_size``. Each image is scored against its prompt by the job's
``judge`` (``evohub.score.judges``; default ``siglip2``), loaded from ``judge_model`` (a run
passes the directory its lock pinned; default the judge's Hub repo); the fitness is the mean
score, and each image's score is its item score. The images are kept on the result
(``Scored.images``) for the evaluation's sample grid.
"""

from __future__ import annotations

from evohub.errors import ScoreError
from evohub.score.judges import JUDGES
from evohub.score.tasks.base import TASKS, Published, Scored

STEPS, GUIDANCE, SIZE, JUDGE = 4, 0.0, 1024, "siglip2"


@TASKS.register
class TextToImage:
    name = "text-to-image"
    doc = "images from fixed prompts and seeds (steps, guidance, size), scored by an image judge (judge)"
    fitness_metric = "judge"
    options = ("judge", "steps", "guidance_scale", "image_size", "judge_model")
    default_judge = JUDGE
    backends = ("diffusion",)
    max_new_tokens = None
    shown = ("judge",)
    metrics = ("judge", "n")
    item_range, item_binary = (0.0, 1.0), False
    result = Published("judge", "text-to-image", 100.0, "mean judge score (%) of images from fixed prompts and seeds")

    def __init__(self, judge: str = JUDGE, steps: int = STEPS, guidance_scale: float = GUIDANCE,
                 image_size: int = SIZE, judge_model: str | None = None):  # fmt: skip
        self.judge_name, self.steps, self.guidance, self.size = judge, steps, guidance_scale, image_size
        #: the judge's model: the pulled directory (a run's lock), else the judge's Hub repo
        self.judge_model = judge_model
        self.item_range = JUDGES.get(judge).item_range
        self._scorer = None

    def check(self, rows: list[dict]) -> None:
        for i, r in enumerate(rows):
            if not isinstance(r.get("prompt"), str) or not r["prompt"]:
                raise ScoreError(f"text-to-image: row {i} has no 'prompt' string")
            if "seed" in r and (isinstance(r["seed"], bool) or not isinstance(r["seed"], int)):
                raise ScoreError(f"text-to-image: row {i}: 'seed' must be an integer")

    def judge(self, device: str):
        """The judge's scorer, loaded once per task."""
        if self._scorer is None:
            self._scorer = JUDGES.get(self.judge_name).scorer(device, self.judge_model)
        return self._scorer

    def run(self, backend, rows: list[dict], batch_size: int = 4, **_) -> Scored:
        prompts = [r["prompt"] for r in rows]
        seeds = [int(r.get("seed", i)) for i, r in enumerate(rows)]
        images = backend.images(prompts, seeds, steps=self.steps, guidance_scale=self.guidance, size=self.size,
                                batch_size=batch_size)  # fmt: skip
        scores = self.judge(backend.device).score(images, prompts)
        samples = [{"prompt": p, "seed": s, "score": v} for p, s, v in zip(prompts, seeds, scores, strict=True)]
        n = len(scores)
        if n == 0:
            raise ScoreError("text-to-image: no prompts to score")
        return Scored({"judge": sum(scores) / n, "n": float(n)}, samples, list(scores), images)

    def score(self, backend, rows: list[dict], batch_size: int = 4, **kw) -> dict[str, float]:
        return self.run(backend, rows, batch_size=batch_size, **kw).metrics
