"""Japanese math suites: the paper's MGSM-JA, and the ja-math protocol on a job's own held-out split."""

from evohub.score.suites import SUITES, HubDataset, Suite

SUITES.register(
    Suite(
        name="mgsm-ja",
        doc="MGSM-JA (250 problems): the paper's zero-shot CoT protocol, acc_ja",
        runner="task",
        task="ja-math",
        dataset=HubDataset("juletxara/mgsm", config="ja", split="test"),
        metric="acc_ja",
    )
)
SUITES.register(
    Suite(
        name="ja-math",
        doc="the ja-math protocol on local examples (`evaluation.data`), with the job's prompt and stop strings",
        runner="task",
        task="ja-math",
        job_prompt=True,
        metric="acc_ja",
    )
)
