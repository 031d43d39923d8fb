"""Japanese LM evaluation through lm-eval: the paper's JP-LMEH as jp-stable ran it, lm-eval 0.4's
``japanese_leaderboard`` port beside it, and any lm-eval task (docs/design.md#jp-lmeh)."""

from evohub.score.suites import SUITES, HubDataset, Reported, Suite

JGLUE = "shunk031/JGLUE"  # the JGLUE copy jp-stable read (lm-eval 0.4 reads Rakuten/JGLUE)


def _jps(name: str, task: str, metric: str, scale: float, dataset: HubDataset, kind: str = "accuracy") -> Reported:
    return Reported(name=name, task=f"jp_stable_{task}", metric=f"{metric},none", scale=scale, dataset=dataset,
                    metric_type=kind)  # fmt: skip


#: jp-stable's nine tasks in the paper's column order; what its average script takes from each:
#: acc x 100, else exact_match, else rouge2 (both already 0-100). JCoLA has no acc: balanced_acc.
JP_STABLE = (
    _jps("JComQA", "jcommonsenseqa", "acc", 100, HubDataset(JGLUE, "JCommonsenseQA", "validation")),
    _jps("JNLI", "jnli", "acc", 100, HubDataset(JGLUE, "JNLI", "validation")),
    _jps("MARC", "marc_ja", "acc", 100, HubDataset(JGLUE, "MARC-ja", "validation")),
    _jps("JSQuAD", "jsquad", "exact_match", 1, HubDataset(JGLUE, "JSQuAD", "validation"), "exact_match"),
    _jps("JAQKET", "jaqket_v2", "exact_match", 1, HubDataset("kumapo/JAQKET", "v2.0", "validation"), "exact_match"),
    _jps("XLSum", "xlsum_ja", "rouge2", 1, HubDataset("mkshing/xlsum_ja", None, "test"), "rouge"),
    _jps("XWino", "xwinograd_ja", "acc", 100, HubDataset("polm-stability/xwinograd-ja", None, "test")),
    _jps("MGSM", "mgsm", "acc", 100, HubDataset("juletxara/mgsm", "ja", "test")),
    _jps("JCoLA", "jcola", "balanced_acc", 100, HubDataset(JGLUE, "JCoLA", "validation")),
)

#: the paper's JP-LMEH averages (Akiba et al. 2024, Table 2; SakanaAI/evolutionary-model-merge README)
PAPER = "arXiv 2403.13187, Table 2"
REFERENCES = (
    ("EvoLLM-JP-v1-7B", 70.5, PAPER), ("EvoLLM-JP-A-v1-7B", 69.0, PAPER), ("EvoLLM-JP-v1-10B", 66.2, PAPER),
    ("shisa-gamma-7b-v1", 66.1, PAPER), ("WizardMath-7B-V1.1", 60.1, PAPER), ("Abel-7B-002", 56.5, PAPER),
    ("Arithmo2-Mistral-7B", 56.4, PAPER),
)  # fmt: skip

SUITES.register(
    Suite(
        name="jp-lmeh",
        doc="the paper's JP-LMEH: jp-stable's nine tasks, prompts and few-shot draws, and their average",
        runner="lmeval",
        lmeval_tasks=tuple(r.task for r in JP_STABLE),  # type: ignore[misc]
        reports=JP_STABLE,
        average="JP-LMEH average (9 tasks)",
        references=REFERENCES,
        prompt_versions=True,
    )
)
SUITES.register(
    Suite(
        name="jcola",
        doc="JCoLA as jp-stable ran it (jcola-0.2, 3 stratified shots, balanced accuracy)",
        runner="lmeval",
        lmeval_tasks=("jp_stable_jcola",),
        reports=(JP_STABLE[-1],),
        prompt_versions=True,
    )
)

_RAKUTEN = "Rakuten/JGLUE"


def _lb(name: str, task: str, metric: str, dataset: HubDataset, kind: str = "accuracy") -> Reported:
    return Reported(name=name, task=f"ja_leaderboard_{task}", metric=f"{metric},none", scale=100, dataset=dataset,
                    metric_type=kind)  # fmt: skip


SUITES.register(
    Suite(
        name="ja-leaderboard",
        doc="lm-eval 0.4's `japanese_leaderboard` port (8 tasks, its own prompts and 0-1 metrics, shown x 100)",
        runner="lmeval",
        lmeval_tasks=("japanese_leaderboard",),
        reports=(
            _lb("JComQA", "jcommonsenseqa", "acc", HubDataset(_RAKUTEN, "JCommonsenseQA", "validation")),
            _lb("JNLI", "jnli", "acc", HubDataset(_RAKUTEN, "JNLI", "validation")),
            _lb("MARC", "marc_ja", "acc", HubDataset(_RAKUTEN, "MARC-ja", "validation")),
            _lb("JSQuAD", "jsquad", "exact_match", HubDataset(_RAKUTEN, "JSQuAD", "validation"), "exact_match"),
            _lb("JAQKET", "jaqket_v2", "exact_match", HubDataset("kumapo/JAQKET", "v2.0", "validation"), "exact_match"),
            _lb("XLSum", "xlsum", "rouge2", HubDataset("mkshing/xlsum_ja", None, "test"), "rouge"),
            _lb("XWino", "xwinograd", "acc", HubDataset("polm-stability/xwinograd-ja", None, "test")),
            _lb("MGSM", "mgsm", "acc", HubDataset("juletxara/mgsm", "ja", "test")),
        ),
    )
)
SUITES.register(Suite(name="lmeval:", doc="any lm-eval task or group: `lmeval:<task>`", runner="lmeval"))
