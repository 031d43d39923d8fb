"""Japanese VQA suites (the paper's EvoVLM-JP evaluation); they need a VLM."""

from evohub.score.suites import SUITES, HubDataset, Suite

SUITES.register(
    Suite(
        name="ja-vg-vqa-500",
        doc="JA-VG-VQA-500 (test: 500 images, the first question of each): ja-vqa protocol, ROUGE-L",
        runner="task",
        task="ja-vqa",
        dataset=HubDataset("SakanaAI/JA-VG-VQA-500", split="test"),
        vision=True,
        metric="rougeL",
    )
)
SUITES.register(
    Suite(
        name="ja-vlm-bench-itw",
        doc="JA-VLM-Bench-In-the-Wild (test): ja-vqa protocol, ROUGE-L",
        runner="task",
        task="ja-vqa",
        dataset=HubDataset("SakanaAI/JA-VLM-Bench-In-the-Wild", split="test"),
        vision=True,
        metric="rougeL",
    )
)
