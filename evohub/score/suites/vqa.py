"""Japanese VQA suites (the paper's EvoVLM-JP evaluation); they need a VLM. ``ja-vg-vqa-500-paper``
is JA-VG-VQA-500 as Sakana AI's released code scored it (docs/design.md#the-paper-vqa-suite)."""

from evohub.score.suites import SUITES, HubDataset, Reported, Suite

VG = HubDataset("SakanaAI/JA-VG-VQA-500", split="test")
ITW = HubDataset("SakanaAI/JA-VLM-Bench-In-the-Wild", split="test")
PAPER = "arXiv 2403.13187, Table 3"

SUITES.register(
    Suite(
        name="ja-vg-vqa-500",
        doc="JA-VG-VQA-500 (test: 500 images, the first question of each): ja-vqa protocol, ROUGE-L",
        runner="task",
        task="ja-vqa",
        dataset=VG,
        vision=True,
        metric="rougeL",
        reports=(Reported(name="JA-VG-VQA-500", metric="rougeL", scale=1, dataset=VG, metric_type="rouge"),),
    )
)
SUITES.register(
    Suite(
        name="ja-vg-vqa-500-paper",
        doc="JA-VG-VQA-500 scored as Sakana AI's released code scored EvoVLM-JP (LLaVA loading, float16): "
        "ja-vqa-paper protocol, ROUGE-L of Japanese answers",
        runner="task",
        task="ja-vqa-paper",
        dataset=VG,
        vision=True,
        metric="rougeL_ja",
        reports=(Reported(name="JA-VG-VQA-500 (paper)", metric="rougeL_ja", scale=1, dataset=VG, metric_type="rouge"),),
        references=(("EvoVLM-JP-v1-7B", 19.7, PAPER), ("llava-v1.6-mistral-7b-hf", 14.3, PAPER)),
    )
)
SUITES.register(
    Suite(
        name="ja-vlm-bench-itw",
        doc="JA-VLM-Bench-In-the-Wild (test): ja-vqa protocol, ROUGE-L",
        runner="task",
        task="ja-vqa",
        dataset=ITW,
        vision=True,
        metric="rougeL",
        reports=(
            Reported(name="JA-VLM-Bench-In-the-Wild", metric="rougeL", scale=1, dataset=ITW, metric_type="rouge"),
        ),
    )
)
