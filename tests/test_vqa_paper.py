"""ja-vg-vqa-500-paper: JA-VG-VQA-500 scored as Sakana AI's released code scored EvoVLM-JP
(docs/design.md#the-paper-vqa-suite): LLaVA loading in float16, the ja-shisa-vqa prompt, 5 beams,
repetition penalty 1.5, new tokens decoded alone, mean MeCab ROUGE and the Japanese rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny import make_llava, make_mistral, synthetic_image

from evohub.errors import ScoreError
from evohub.score.backends.hf import HFBackend, llava_config
from evohub.score.evaluate import evaluate
from evohub.score.metrics import MecabTokenizer, japanese_only
from evohub.score.suites import find_suite
from evohub.score.tasks import TASKS
from evohub.score.tasks.ja_vqa import JaVQAPaper, paper_score_outputs

SUITE = "ja-vg-vqa-500-paper"
#: Sakana AI's "ja-shisa-vqa" template with "<image>\n" + question, written out (evomerge/models)
SAKANA_PROMPT = (
    "[INST] <<SYS>>\n"
    "あなたは役立つ、偏見がなく、検閲されていないアシスタントです。与えられた画像を下に、質問に答えてください。\n"
    "<</SYS>>\n\n"
    "<image>\n{question} [/INST]"
)
QUESTIONS = ["t0 t1", "t1 t2", "t2 t3", "t3 t4"]  # one length: a batch without padding


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vqa-paper")
    base = make_mistral(root / "base", seed=0, vocab=130, tokenizer=True)
    make_llava(root / "llava", lm=base, seed=2, noise=0.05)
    make_llava(root / "llava-next", lm=base, seed=3, noise=0.05, next=True)
    (root / "images").mkdir()
    rows = []
    for i, q in enumerate(QUESTIONS):
        synthetic_image(i, size=(40 + 8 * i, 48)).save(root / "images" / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "qas": [{"question": q, "answer": f"t{i + 2} t{i + 3}"},
                                                         {"question": "t9", "answer": "t9"}]})  # fmt: skip
    (root / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _sakana_answers(world: Path, flavour: str, tmp_path: Path, max_new_tokens: int) -> list[str]:
    """What evomerge's LLaVA wrapper answers: a ``llava`` directory (a LLaVA-NeXT one rewritten
    as EvoVLM-JP's config is: model_type llava, no grid pinpoints) loaded with
    LlavaForConditionalGeneration in float16 and a CLIP-style LlavaProcessor."""
    import transformers

    d = tmp_path / "sakana"
    shutil.copytree(world / flavour, d)
    config = json.loads((d / "config.json").read_text())
    config.pop("image_grid_pinpoints", None)
    config |= {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]}
    (d / "config.json").write_text(json.dumps(config))
    model = transformers.LlavaForConditionalGeneration.from_pretrained(d, dtype=torch.float16).eval()
    clip = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    tokenizer = transformers.AutoTokenizer.from_pretrained(d)
    tokenizer.pad_token = tokenizer.eos_token  # the tiny tokenizer has none (EvoVLM-JP's has)
    processor = transformers.LlavaProcessor(
        image_processor=clip(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    images = [synthetic_image(i, size=(40 + 8 * i, 48)).convert("RGB") for i in range(len(QUESTIONS))]
    text = [SAKANA_PROMPT.format(question=q) for q in QUESTIONS]
    inputs = processor(text=text, images=images, padding=True, return_tensors="pt")
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.float16)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=5,
                             repetition_penalty=1.5)  # fmt: skip
    new = out[:, inputs["input_ids"].shape[1] :]
    decoded = processor.batch_decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return [t.strip() for t in decoded]


@pytest.mark.parametrize("flavour", ["llava", "llava-next"])
def test_the_paper_suite_answers_as_sakanas_code_does(world, tmp_path, flavour):
    res = evaluate(world / flavour, [SUITE], data={SUITE: str(world / "vqa.jsonl")}, max_new_tokens=5,
                   out_dir=tmp_path / "eval")  # fmt: skip
    m = res["suites"][SUITE]["metrics"]
    samples = [json.loads(x) for x in (tmp_path / "eval" / f"samples_{SUITE}.jsonl").read_text().splitlines()]
    assert [s["question"] for s in samples] == QUESTIONS  # the first QA of each image
    outputs = [s["output"] for s in samples]
    assert outputs == _sakana_answers(world, flavour, tmp_path, max_new_tokens=5)
    assert all(len(o.split()) == 5 for o in outputs)
    assert m["n"] == 4 and {"rougeL", "rougeL_ja", "rouge1", "rouge2", "rouge1_ja", "rouge2_ja"} <= set(m)
    assert m["rougeL"] == pytest.approx(sum(s["rougeL"] for s in samples) / 4)  # the mean of the examples
    assert m["rougeL_ja"] == m["rougeL"]  # references t.. are not Japanese: the rule does not apply


def test_the_llava_loading_is_llava_over_the_resident_weights(world):
    import transformers

    native = HFBackend.load(world / "llava-next")
    assert type(native.model).__name__ == "LlavaNextForConditionalGeneration"
    head = native.model.lm_head.weight
    native.load_weights([("lm_head.weight", torch.zeros_like(head))])  # a candidate written in place
    with native.loaded_as("llava") as paper:
        model, processor = paper.model, paper.processor
        assert type(model) is transformers.LlavaForConditionalGeneration and paper.loading == "llava"
        assert model.config.model_type == "llava" and not hasattr(model.config, "image_grid_pinpoints")
        assert model.dtype == torch.float16 and torch.count_nonzero(model.lm_head.weight) == 0
        assert model.config.text_config.to_dict() == native.model.config.text_config.to_dict()  # rope as is
        assert type(processor) is transformers.LlavaProcessor
        assert type(processor.image_processor).__name__.startswith("CLIPImageProcessor")
        batch = processor(images=[synthetic_image(0, size=(30, 64))], text=["<image>\nt1"], return_tensors="pt")
        assert batch["pixel_values"].shape == (1, 3, 32, 32)  # one centre crop, no any-resolution tiles
        assert (batch["input_ids"] == model.config.image_token_index).sum() == 16  # (32 / 8)² patches
    # float16 resident weights are shared, not copied
    half = HFBackend.load(world / "llava", dtype=torch.float16)
    with half.loaded_as("llava") as paper:
        assert paper.model.lm_head.weight.data_ptr() == half.model.lm_head.weight.data_ptr()
    assert HFBackend.load(world / "llava-next", loading="llava").loading == "llava"


def test_llava_config_keeps_the_text_config_and_drops_the_tiles():
    from transformers import CLIPVisionConfig, LlavaNextConfig, MistralConfig

    text = MistralConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, rope_theta=1e6)
    cfg = LlavaNextConfig(vision_config=CLIPVisionConfig().to_dict(), text_config=text.to_dict(),
                          image_grid_pinpoints=[[32, 64]], image_token_index=7)  # fmt: skip
    out = llava_config(cfg)
    assert out.model_type == "llava" and out.architectures == ["LlavaForConditionalGeneration"]
    assert out.image_token_index == 7 and not hasattr(out, "image_grid_pinpoints")
    tc = out.text_config
    assert (getattr(tc, "rope_parameters", None) or {"rope_theta": tc.rope_theta})["rope_theta"] == 1e6


def test_the_prompt_is_sakanas_template():
    rows = [{"image": synthetic_image(0), "qas": [{"question": "この写真の猫は何色ですか?", "answer": "黒"}]}]
    (prompt,) = JaVQAPaper().prompts(rows)
    assert prompt.text == (
        "[INST] <<SYS>>\nあなたは役立つ、偏見がなく、検閲されていないアシスタントです。"
        "与えられた画像を下に、質問に答えてください。\n<</SYS>>\n\n<image>\nこの写真の猫は何色ですか? [/INST]"
    )
    assert len(prompt.images) == 1


def test_generation_is_five_beams_with_repetition_penalty(world, monkeypatch):
    import transformers

    seen = []

    def fake_generate(self, **kw):
        seen.append((self, kw))
        new = torch.tensor([[5, 6, 129]] * kw["input_ids"].shape[0])  # t5 t6 </s>
        return torch.cat([kw["input_ids"], new], dim=1)

    monkeypatch.setattr(transformers.LlavaForConditionalGeneration, "generate", fake_generate)
    task = TASKS.get("ja-vqa-paper")()
    rows = [json.loads(x) for x in (world / "vqa.jsonl").read_text().splitlines()]
    for r in rows:
        r["image"] = str(world / r["image"])
    scored = task.run(HFBackend.load(world / "llava-next"), rows)
    ((model, kw),) = seen
    assert (kw["num_beams"], kw["repetition_penalty"], kw["max_new_tokens"], kw["do_sample"]) == (5, 1.5, 512, False)
    assert type(model) is transformers.LlavaForConditionalGeneration and model.dtype == torch.float16
    assert kw["pixel_values"].shape == (4, 3, 32, 32) and kw["pixel_values"].dtype == torch.float16
    assert [s["output"] for s in scored.samples] == ["t5 t6"] * 4  # new tokens, </s> skipped
    with pytest.raises(ScoreError, match="hf backend"):
        task.run(object(), rows)


def test_paper_rouge_by_hand():
    # MeCab (unidic-lite): 猫 が 座っ て いる / 猫 が 立っ て いる
    one = paper_score_outputs(["猫が立っている"], ["猫が座っている"]).metrics
    assert (one["rouge1"], one["rouge2"], one["rougeL"]) == pytest.approx((80.0, 50.0, 80.0))
    # neologdn: half-width katakana and full-width letters are normalised before MeCab
    tok = MecabTokenizer()
    assert tok.tagger.parse("ｶﾒﾗとＴＶ").split() != tok.tagger.parse("カメラとTV").split()
    assert paper_score_outputs(["ｶﾒﾗとＴＶがある"], ["カメラとTVがある"]).metrics["rougeL"] == pytest.approx(100.0)
    # emoji removed: without, 猫 が いる 🐱 against 猫 が いる is F = 6/7
    assert paper_score_outputs(["猫がいる🐱"], ["猫がいる"]).metrics["rougeL"] == pytest.approx(100.0)
    # the plain mean of per-example F: 100, 80 and 0
    three = paper_score_outputs(["犬が走る", "猫が立っている", "空は青い"], ["犬が走る", "猫が座っている", "犬が走る"])
    assert three.metrics["rougeL"] == pytest.approx(60.0, abs=1e-9)
    assert [s["rougeL"] for s in three.samples] == pytest.approx([100.0, 80.0, 0.0])


def test_paper_japanese_rule():
    ref = ["赤い車が道路に止まっています。"]
    english = paper_score_outputs(["赤い car is parked on the road"], ref)  # shares 赤い, but is not Japanese
    assert english.metrics["rougeL"] > 0 and english.metrics["rougeL_ja"] == 0.0
    assert english.samples[0]["output"] == "赤い car is parked on the road"  # the answer is kept as given
    japanese = paper_score_outputs(["赤い車が止まっています。"], ref).metrics
    assert japanese["rougeL_ja"] == japanese["rougeL"] > 50
    english_ref = paper_score_outputs(["a red car"], ["a red car is parked"]).metrics
    assert english_ref["rougeL_ja"] == english_ref["rougeL"] > 0  # an English reference: no rule
    # Sakana's thresholds: a reference with P(ja) >= 0.5 is Japanese, a prediction with P(ja) < 0.5 is not
    assert japanese_only(["r"], ["x"], {"r": 0.5, "x": 0.5}.get) == ["x"]
    assert japanese_only(["r"], ["x"], {"r": 0.5, "x": 0.4999}.get) == [""]
    assert japanese_only(["r"], ["x"], {"r": 0.4999, "x": 0.0}.get) == ["x"]


def test_the_suite_is_registered_with_the_papers_figure():
    s = find_suite(SUITE)
    assert (s.runner, s.task, s.vision, s.metric) == ("task", "ja-vqa-paper", True, "rougeL_ja")
    assert (s.dataset.repo, s.dataset.split) == ("SakanaAI/JA-VG-VQA-500", "test")
    task = TASKS.get("ja-vqa-paper")
    assert task.fitness_metric == "rougeL_ja" and task.backends == ("hf",)
    assert (task().sampling.num_beams, task().sampling.repetition_penalty) == (5, 1.5)
    assert (task().sampling.max_new_tokens, task().sampling.temperature) == (512, 0.0)
