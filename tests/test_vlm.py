"""EvoVLM-JP: a LLaVA-style VLM's language model merged with a Japanese LLM, scored on Japanese VQA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tiny import make_llava, make_mistral, synthetic_image

from evohub.merging.arch import lm_parameters
from evohub.merging.build import merge_to_disk, open_inputs
from evohub.merging.io import CheckpointReader
from evohub.merging.ps import ResidentMerge
from evohub.models import KINDS
from evohub.score.backends import Sampling, VisionPrompt
from evohub.score.tasks.ja_vqa import PROMPT, JaVQA, question_answer, score_outputs
from evohub.spec import Recipe

VOCAB = 130  # t0..t126, <unk>, <image> (128), </s> (129) in the VLM's tokenizer

VLM, LLM = KINDS.get("vlm"), KINDS.get("llm")


@pytest.fixture(scope="module")
def vworld(tmp_path_factory) -> Path:
    """Mistral base; a 'Japanese' fine-tune of it; a LLaVA whose LM is another fine-tune; VQA data."""
    root = tmp_path_factory.mktemp("vlm")
    base = make_mistral(root / "base", seed=0, vocab=VOCAB, tokenizer=True)
    make_mistral(root / "ja", seed=1, base=base, noise=0.05, tokenizer=True)
    make_llava(root / "llava", lm=base, seed=2, noise=0.05)
    make_llava(root / "llava-next", lm=base, seed=3, noise=0.05, next=True)
    (root / "images").mkdir()
    rows = []
    for i in range(6):
        synthetic_image(i).save(root / "images" / f"{i}.png")
        q, a = f"t{i} t{i + 1}", f"t{i + 2} t{i + 3}"
        # both layouts: JA-VG-VQA-500's qas list and the flat question/answer of In-the-Wild
        rows.append({"image": f"images/{i}.png", "qas": [{"question": q, "answer": a}]} if i % 2 else
                    {"image": f"images/{i}.png", "question": q, "answer": a})  # fmt: skip
    (root / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _recipe(root: Path, weights=(0.6, 0.5), densities=(0.7, 0.4), seed: int = 3, vlm: str = "llava") -> Recipe:
    return Recipe.model_validate(
        {
            "evohub_recipe": 1,
            "dtype": "float32",
            "seed": seed,
            "base_model": {"path": str(root / "base")},
            "tokenizer_source": 0,
            "parameter_space": {
                "method": "dare_ties",
                "models": [
                    {"source": {"path": str(root / vlm)}, "weight": weights[0], "density": densities[0]},
                    {"source": {"path": str(root / "ja")}, "weight": weights[1], "density": densities[1]},
                ],
            },
        }
    )


def _tensors(d: Path) -> dict[str, torch.Tensor]:
    r = CheckpointReader(d)
    return {n: r.get(n) for n in r.names()}


@pytest.mark.parametrize("vlm", ["llava", "llava-next"])
def test_merged_vlm_keeps_vision_loads_as_llava_and_answers_about_an_image(vworld, tmp_path, run_cli, vlm):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    recipe = _recipe(vworld, vlm=vlm)
    (tmp_path / "recipe.yaml").write_text(recipe.to_yaml())
    code, _, err = run_cli("merge", tmp_path / "recipe.yaml", "--out", tmp_path / "out")
    assert code == 0, err
    out, llava, ja = (_tensors(p) for p in (tmp_path / "out", vworld / vlm, vworld / "ja"))
    assert set(out) == set(llava)  # the VLM's architecture and checkpoint names
    vision = [n for n in out if VLM.lm_name(n) is None]
    assert vision and all(torch.equal(out[n], llava[n]) for n in vision)  # tower and projector copied
    ja_by_lm = {LLM.lm_name(n): t for n, t in ja.items()}
    lm = [n for n in out if VLM.lm_name(n) is not None]
    assert len(lm) == len(ja)
    for n in lm:  # every LM tensor is a merge: neither source's
        assert not torch.equal(out[n], llava[n]) and not torch.equal(out[n], ja_by_lm[VLM.lm_name(n)]), n

    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    assert type(model).__name__ == json.loads((vworld / vlm / "config.json").read_text())["architectures"][0]
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert type(processor) is type(AutoProcessor.from_pretrained(vworld / vlm))
    batch = processor(images=[synthetic_image(9)], text=["<image> t1 t2"], return_tensors="pt")
    gen = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == batch["input_ids"].shape[1] + 4 or gen[0, -1].item() == VOCAB - 1
    # the image matters: another image, another continuation's logits
    other = processor(images=[synthetic_image(10)], text=["<image> t1 t2"], return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits[0, -1], model(**other).logits[0, -1])


@pytest.mark.parametrize("vlm", ["llava", "llava-next"])
def test_in_memory_merge_into_a_resident_vlm_equals_the_disk_merge(vworld, tmp_path, vlm):
    from transformers import AutoModelForImageTextToText

    template = _recipe(vworld, vlm=vlm)
    dirs = [Path(r.path) for r in template.inputs()]
    model = AutoModelForImageTextToText.from_pretrained(vworld / vlm).eval()
    params = lm_parameters(model)  # module names (model.language_model.*) by LLM-style name
    assert "model.layers.0.self_attn.q_proj.weight" in params and "lm_head.weight" in params
    assert not any("vision" in k or "projector" in k or "newline" in k for k in params)
    vision_before = {
        n: p.clone() for n, p in model.named_parameters() if "language_model" not in n and "lm_head" not in n
    }
    assert len(vision_before) > 20
    resident = ResidentMerge(open_inputs(template, dirs), template)
    cand = _recipe(vworld, weights=(0.9, 0.3), densities=(0.5, 0.8), vlm=vlm)
    assert resident.apply(cand, params) == len(params)
    disk = _tensors(merge_to_disk(cand, dirs, tmp_path / "disk"))
    for name, t in disk.items():
        key = VLM.lm_name(name)
        if key is not None:
            assert torch.equal(params[key].data, t), name
    for n, p in model.named_parameters():
        if n in vision_before:
            assert torch.equal(p, vision_before[n]), n  # the vision tower is never written


def test_rouge_ja_by_hand():
    # MeCab (unidic-lite): 猫 が 座っ て いる / 猫 が 立っ て いる
    s = score_outputs(["猫が立っている"], ["猫が座っている"])
    assert s.metrics["rouge1"] == pytest.approx(80.0)  # 4 of 5 unigrams
    assert s.metrics["rouge2"] == pytest.approx(50.0)  # 猫が, ている of 4 bigrams
    assert s.metrics["rougeL"] == pytest.approx(80.0)  # LCS 猫 が て いる
    # two examples: 100 and 0 → the bootstrap mid of the mean is 50, and the same every time
    two = score_outputs(["犬が走る", "猫が座っている"], ["犬が走る", "空は青い"])
    assert two.metrics["rougeL"] == pytest.approx(50.0, abs=5)
    assert score_outputs(["犬が走る", "猫が座っている"], ["犬が走る", "空は青い"]).metrics == two.metrics


def test_strict_japanese_rule():
    ref = ["赤い車が道路に止まっています。"]
    english = score_outputs(["赤い car is parked on the road"], ref)  # shares 赤い, but is not Japanese
    assert english.samples[0]["p_ja"] <= 0.5
    assert english.metrics["rougeL"] == 0.0 and english.metrics["rougeL_any_language"] > 0.0
    assert english.metrics["ja_rate"] == 0.0
    japanese = score_outputs(["赤い車が止まっています。"], ref)
    assert japanese.metrics["rougeL"] == japanese.metrics["rougeL_any_language"] > 50
    # an English reference does not trigger the rule
    assert score_outputs(["a red car"], ["a red car is parked"]).metrics["rougeL"] > 0


class Echo:
    """A backend that records what it is given and answers with a fixed text per question."""

    def __init__(self, answers: dict[str, str]):
        self.answers, self.seen = answers, []

    def generate(self, prompts, sampling):
        self.seen.append((prompts, sampling))
        return [f"  {self.answers[p.text.split(chr(10))[-1].removesuffix(' [/INST]')]}\n" for p in prompts]


def test_ja_vqa_task_prompts_images_settings_and_scores(vworld):
    rows = load_rows_local(vworld)
    task = JaVQA()
    task.check(rows)
    answers = {question_answer(r)[0]: question_answer(r)[1] for r in rows}
    answers["t0 t1"] = "t9"  # one wrong answer
    be = Echo(answers)
    scored = task.run(be, rows)
    prompts, sampling = be.seen[0]
    assert prompts[1].text == PROMPT.format(input="<image>\nt1 t2")
    assert prompts[1].text.startswith("[INST] <<SYS>>\nあなたは役立つ、偏見がなく、検閲されていないアシスタントです。")
    assert len(prompts[1].images) == 1 and prompts[1].images[0].size == (48, 40)
    assert (sampling.num_beams, sampling.repetition_penalty, sampling.max_new_tokens) == (5, 1.5, 512)
    assert scored.samples[2]["output"] == "t4 t5"  # stripped
    # tokens t0.. are not Japanese, so the rule does not apply: 5 of 6 exact, one 0
    assert scored.metrics["rougeL_any_language"] == pytest.approx(100 * 5 / 6, abs=10)
    assert task.run(Echo(answers), rows, max_new_tokens=7).metrics == scored.metrics
    with pytest.raises(Exception, match="row 0 has no 'image'"):
        task.check([{"question": "q", "answer": "a"}])


def load_rows_local(root: Path) -> list[dict]:
    from evohub.score.data import load_rows
    from evohub.spec import DataRef

    rows = load_rows(DataRef(path=str(root / "vqa.jsonl"), split="train"))
    assert all(Path(r["image"]).is_absolute() and Path(r["image"]).is_file() for r in rows)
    return rows


@pytest.mark.parametrize("vlm", ["llava", "llava-next"])
def test_hf_backend_generates_from_images_in_batches(vworld, vlm):
    from evohub.score.backends.hf import HFBackend

    be = HFBackend.load(vworld / vlm, batch_size=2)
    assert be.processor is not None
    # images of other shapes: LLaVA-NeXT tiles them differently, so prompts differ in length
    prompts = [VisionPrompt(f"<image> t{i}", (synthetic_image(i, size=(30 + 25 * i, 48)),)) for i in range(3)]
    sampling = Sampling(max_new_tokens=4, num_beams=3, repetition_penalty=1.5)
    batched = be.generate(prompts, sampling)
    one_by_one = [be.generate([p], sampling)[0] for p in prompts]
    assert batched == one_by_one  # left padding does not change answers
    assert all(isinstance(t, str) and t for t in batched)


VLM_JOB = """\
evohub_job: 1
name: tiny-vlm
seed: 0
base_model: {path: base}
sources:
  - {name: llava, path: llava}
  - {name: ja, path: ja}
dtype: float32
tokenizer_source: llava
parameter_space:
  method: dare_ties
  weight: {bounds: [0, 1]}
  density: {bounds: [0.1, 1]}
  optimizer: {max_evals: 4, popsize: 4}
fitness:
  task: ja-vqa
  data: {path: vqa.jsonl, split: "train[:4]"}
  backend: hf
  max_new_tokens: 3
  batch_size: 4
evaluation:
  suites: [ja-vg-vqa-500, ja-vlm-bench-itw]
  backend: hf
  data: {ja-vg-vqa-500: vqa.jsonl, ja-vlm-bench-itw: vqa.jsonl}
  limit: 2
  max_new_tokens: 3
publish:
  repo: me/EvoVLM-tiny
  card: vlm
"""


def test_vlm_job_evolves_evaluates_and_renders_a_vlm_card(vworld, tmp_path, run_cli):
    from transformers import LlavaForConditionalGeneration

    job = vworld / "vlm-job.yaml"
    job.write_text(VLM_JOB)
    code, _, err = run_cli("run", job, "--run-dir", tmp_path / "r", "--device", "cpu", "-q", "--no-publish")
    assert code == 0, err
    rows = [json.loads(x) for x in (tmp_path / "r" / "candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["fitness"] is not None for r in rows), rows
    assert all("rougeL" in r["metrics"] for r in rows)
    LlavaForConditionalGeneration.from_pretrained(tmp_path / "r" / "model")
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    # VQA suites apply to VLMs only: the evolved model, the llava source and the untuned merge
    assert set(res["models"]) == {"evolved", "llava", "untuned merge"}
    for r in res["models"].values():
        assert set(r["suites"]) == {"ja-vg-vqa-500", "ja-vlm-bench-itw"}
        assert r["suites"]["ja-vg-vqa-500"]["metrics"]["n"] == 2
    code, _, err = run_cli("card", tmp_path / "r", "--repo", "me/EvoVLM-tiny", "-o", tmp_path / "README.md")
    assert code == 0, err
    text = (tmp_path / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["pipeline_tag"] == "image-text-to-text" and meta["base_model_relation"] == "merge"
    assert "AutoModelForImageTextToText" in text and "vision-language model" in text
    assert "| JA-VG-VQA-500 rougeL (local data) |" in text  # one scale (0-100), and says the data was local
    assert "[INST] <<SYS>>" in text


def test_cli_rescores_vqa_predictions(tmp_path, run_cli):
    p = tmp_path / "pred.jsonl"
    p.write_text('{"output": "猫が立っている", "answer": "猫が座っている"}\n')
    code, out, err = run_cli("evaluate", "--task", "ja-vqa", "--predictions", p)
    assert code == 0, err
    assert json.loads(out)["rougeL"] == pytest.approx(80.0)
    p.write_text('{"output": "x", "answer_number": 3}\n')
    code, _, err = run_cli("evaluate", "--task", "ja-vqa", "--predictions", p)
    assert code == 2 and f"{p}:1: needs 'output' (string) and 'answer' (string)" in err
