"""A current Japanese leaderboard's view beside the paper's: JMMLU as the Swallow LLM Leaderboard
(pre-trained models, Japanese) reports it, through llm-jp-eval 1.3.0's protocol
(docs/design.md#jmmlu)."""

from evohub.score.suites import SUITES, HubDataset, Reported, Suite

#: the last commit of the Hub's JMMLU with plain CSV files (main has a loading script)
JMMLU = HubDataset("nlp-waseda/JMMLU", None, "test", "f64b86b5e0981fc8c5990b7a98fd2a9c09e9bd3d")

#: published JMMLU figures of pre-trained models (swallow-llm/leaderboard, _data/model.yml, ja_pre)
BOARD = "Swallow LLM Leaderboard (pre-trained, Japanese)"
REFERENCES = (
    ("Qwen2.5-7B", 63.4, BOARD), ("Meta-Llama-3.1-8B", 47.9, BOARD), ("Llama-3.3-Swallow-8B-v0.5", 59.0, BOARD),
    ("gemma-2-9b", 62.3, BOARD), ("Qwen2.5-0.5B", 30.4, BOARD), ("Qwen3-0.6B-Base", 37.3, BOARD),
)  # fmt: skip

SUITES.register(
    Suite(
        name="jmmlu",
        doc="JMMLU as the Swallow LLM Leaderboard runs it (llm-jp-eval 1.3.0: 53 subjects, its 3,541-question "
        "test half, 5 fixed shots, one generated letter, exact match)",
        runner="lmeval",
        lmeval_tasks=("swallow_jmmlu",),
        reports=(Reported(name="JMMLU", task="swallow_jmmlu", metric="exact_match,none", scale=100, dataset=JMMLU),),
        references=REFERENCES,
    )
)
