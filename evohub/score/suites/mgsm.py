"""Japanese math suites: the paper's MGSM-JA, and the ja-math protocol on a job's own held-out split."""

from evohub.score.suites import SUITES, HubDataset, Reported, Suite

MGSM = HubDataset("juletxara/mgsm", config="ja", split="test")

SUITES.register(
    Suite(
        name="mgsm-ja",
        doc="MGSM-JA (250 problems): the paper's zero-shot CoT protocol, acc_ja",
        runner="task",
        task="ja-math",
        dataset=MGSM,
        metric="acc_ja",
        reports=(Reported(name="MGSM-JA", metric="acc_ja", scale=100, dataset=MGSM),),
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
