"""Japanese LM evaluation through lm-eval: the paper's JP-LMEH, JCoLA, and any lm-eval task."""

from evohub.score.suites import SUITES, Suite

SUITES.register(
    Suite(
        name="jp-lmeh",
        doc="lm-eval `japanese_leaderboard` (8 tasks) + our `jcola`: the paper's nine JP-LMEH tasks",
        runner="lmeval",
        lmeval_tasks=("japanese_leaderboard", "jcola"),
    )
)
SUITES.register(Suite(name="jcola", doc="JCoLA (our lm-eval task YAML)", runner="lmeval", lmeval_tasks=("jcola",)))
SUITES.register(Suite(name="lmeval:", doc="any lm-eval task or group: `lmeval:<task>`", runner="lmeval"))
