"""Image suites: the job's own text-to-image protocol on held-out prompts."""

from evohub.score.suites import SUITES, Suite

SUITES.register(
    Suite(
        name="text-to-image",
        doc="held-out prompts (`evaluation.data`) generated and judged as the fitness is (the job's judge, "
        "steps, guidance and size); the images make samples.png",
        runner="task",
        task="text-to-image",
        job_prompt=True,
        metric="judge",
    )
)
