"""An evaluation suite added in one file: the ja-math protocol on a local file, by another name."""

from evohub.score.suites import SUITES, Suite

TOY = SUITES.register(
    Suite(
        name="toy-math",
        doc="ja-math on local toy problems (a test plug-in)",
        runner="task",
        task="ja-math",
        metric="acc_ja",
    )
)
