"""The vLLM test tier: runs in its own venv with vllm-cpu (``make test-vllm``), skipped elsewhere.

vLLM runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0), on the CPU, with a small KV cache.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

vllm = pytest.importorskip("vllm", reason="the vLLM tier runs in .venv-vllm (make test-vllm)")
pytestmark = pytest.mark.vllm


def _logprobs_hf(model_dir: Path, ids: list[int]) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return [lp[i - 1, ids[i]].item() for i in range(1, len(ids))]


def _logprobs_vllm(model_dir: Path, ids: list[int]) -> list[float]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model_dir), dtype="float32", max_model_len=64, enforce_eager=True, seed=0)
    out = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0))
    prompt = out[0].prompt_logprobs
    return [prompt[i][ids[i]].logprob for i in range(1, len(ids))]


def test_folded_dfs_model_loads_and_matches_in_vllm(tmp_path):
    from tiny import make_mistral

    from evohub.merging.build import merge_to_disk
    from evohub.spec import Recipe

    cfg = {
        "layers": 3,
        "hidden": 128,
        "heads": 4,
        "kv_heads": 2,
        "vocab": 256,
        "inter": 256,
        "rms_norm_eps": 1e-12,
        "initializer_range": 0.2,
    }
    a = make_mistral(tmp_path / "a", seed=0, tokenizer=True, **cfg)
    b = make_mistral(tmp_path / "b", seed=1, tokenizer=True, **cfg)
    path = [("a", 0), ("b", 1), ("a", 1), ("a", 1), ("b", 2), ("a", 2)]
    recipe = Recipe.model_validate({
        "evohub_recipe": 1, "dtype": "float32", "tokenizer_source": "a",
        "data_flow_space": {"a": {"path": str(a)}, "b": {"path": str(b)}, "path": [list(h) for h in path],
                            "scales": [1.0, 0.7, 1.6, 1.1, 0.9, 1.3]},
    })  # fmt: skip
    folded = merge_to_disk(recipe, [a, b], tmp_path / "folded")
    ids = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38]
    want = _logprobs_hf(folded, ids)
    got = _logprobs_vllm(folded, ids)
    assert got == pytest.approx(want, abs=2e-3)


def test_vllm_backend_greedy_equals_hf_before_and_after_a_weight_swap(tmp_path):
    import torch
    from tiny import make_mistral

    from evohub.merging.io import CheckpointReader
    from evohub.score.backends import Sampling
    from evohub.score.backends.hf import HFBackend
    from evohub.score.backends.vllm import VLLMBackend

    cfg = {
        "layers": 2,
        "hidden": 128,
        "heads": 2,
        "kv_heads": 1,
        "vocab": 256,
        "inter": 256,
        "initializer_range": 0.3,
    }
    a = make_mistral(tmp_path / "a", seed=0, tokenizer=True, **cfg)  # head_dim 64
    b = make_mistral(tmp_path / "b", seed=1, tokenizer=True, **cfg)
    prompts = ["t1 t2 t3", "t40 t41", "t7 t8 t9 t10 t11", "t200"]
    greedy = Sampling(max_new_tokens=8)
    hf = HFBackend.load(a, dtype=torch.float32)
    vl = VLLMBackend(a, dtype="float32", max_model_len=64, enforce_eager=True)
    before = hf.generate(prompts, greedy)
    assert vl.generate(prompts, greedy) == before
    reader = CheckpointReader(b)
    weights = [(n, reader.get(n).clone()) for n in reader.names()]
    hf.load_weights(weights)
    vl.load_weights(weights)
    after = hf.generate(prompts, greedy)
    assert after != before  # the swap took effect ...
    assert vl.generate(prompts, greedy) == after  # ... identically in both backends


def test_vllm_beam_search_returns_the_continuation_like_hf(tmp_path):
    import torch
    from tiny import make_mistral

    from evohub.score.backends import Sampling
    from evohub.score.backends.hf import HFBackend
    from evohub.score.backends.vllm import VLLMBackend

    cfg = {"layers": 2, "hidden": 128, "heads": 2, "kv_heads": 1, "vocab": 256, "inter": 256, "initializer_range": 0.3}
    a = make_mistral(tmp_path / "a", seed=0, tokenizer=True, **cfg)
    prompts = ["t1 t2 t3", "t40 t41", "t7 t8 t9 t10 t11"]
    beams = Sampling(max_new_tokens=6, num_beams=3)
    vl = VLLMBackend(a, dtype="float32", max_model_len=64, enforce_eager=True)
    got = vl.generate(prompts, beams)
    assert all(g and not g.strip().startswith("t1 t2 t3") for g in got)  # the continuation, not the prompt
    assert got == HFBackend.load(a, dtype=torch.float32).generate(prompts, beams)


def test_vllm_loop_stop_keeps_the_texts_of_full_decoding_and_decodes_a_round_a_loop(tmp_path):
    from tiny import make_successor

    from evohub.score.backends import Sampling
    from evohub.score.backends.hf import HFBackend
    from evohub.score.backends.vllm import LOOP_CHUNK, VLLMBackend

    chain = {1: 2, 2: 3, 3: 4, 4: 1, 10: 11, 11: 12, 12: 255, 20: 21, 21: 22, 22: 20}
    chain |= {i: i + 1 for i in range(29, 200)}  # t29 -> t30 ... t200, then t200 for ever: no loop for 171 tokens
    model = make_successor(tmp_path / "m", chain, vocab=256)
    prompts = ["t5 t1", "t7 t10", "t20", "t230", "t29"]
    budget = 3 * LOOP_CHUNK
    full = Sampling(max_new_tokens=budget)
    want = HFBackend.load(model).generate(prompts, full)
    vl = VLLMBackend(model, dtype="float32", max_model_len=256, enforce_eager=True)
    assert vl.generate(prompts, full) == want
    decoded = vl.usage["generated_tokens"]
    assert vl.generate(prompts, Sampling(max_new_tokens=budget, loop_span=12)) == want
    # three loops seen at the end of the first round; t29's answer runs its budget, t10's ends (</s> counted)
    assert (decoded, vl.usage["generated_tokens"] - decoded) == (4 * budget + 3, 3 * LOOP_CHUNK + 3 + budget)
    # a stop string across the rounds' boundary (t93 is the 64th token, t94 the 65th) ends the answer there,
    # after its second round
    across = Sampling(max_new_tokens=budget, stop=("t93 t94",))
    want = HFBackend.load(model).generate(prompts, across)
    decoded = vl.usage["generated_tokens"]
    assert want[4].endswith("t92 ") and vl.generate(prompts, Sampling(**vars(across) | {"loop_span": 12})) == want
    assert vl.usage["generated_tokens"] - decoded == 3 * LOOP_CHUNK + 3 + 2 * LOOP_CHUNK


def test_drafted_answers_are_full_decodings_texts_in_fewer_steps_and_a_call_waits_for_its_longest(tmp_path):
    """n-gram drafts (docs/design.md#drafted-answers), on a model whose next token is a fixed
    function of the current one: the same texts as full decoding; a looping answer's loop is
    drafted from its earlier period, one that never repeats takes a step a token."""
    from tiny import make_successor

    from evohub.score.backends import Sampling
    from evohub.score.backends.hf import HFBackend
    from evohub.score.backends.vllm import VLLMBackend
    from evohub.score.backends.vllm_path import VLLMPathBackend

    chain = {1: 2, 2: 3, 3: 4, 4: 1, 20: 21, 21: 22, 22: 20} | {i: i + 1 for i in range(29, 200)}
    a = make_successor(tmp_path / "a", chain, vocab=256)
    budget, full = 64, Sampling(max_new_tokens=64)
    loop, chained = ["t5 t1"], ["t29"]  # t2 t3 t4 t1 t2 ... for ever; t30 t31 ... t93, no token twice
    hf = HFBackend.load(a)
    vl = VLLMBackend(a, dtype="float32", max_model_len=256, enforce_eager=True, draft_tokens=4)
    steps = []
    for prompts in (loop, chained, loop + chained + ["t20"]):
        before = vl.usage["steps"]
        assert vl.generate(prompts, full) == hf.generate(prompts, full)
        steps.append(vl.usage["steps"] - before)
    # the loop's first 4 tokens have nothing earlier to draft from (t1 then drafts from the prompt's
    # t1): 4 steps, then 4 drafts + 1 token a step; the chain one a step a token; a call its longest
    assert steps == [4 + -(-(budget - 4) // 5), budget, budget]
    del vl
    gc.collect()
    # the data-flow path model drafts too (its layers add nothing here: the path is the successor)
    b = make_successor(tmp_path / "b", chain, seed=1, vocab=256)
    path = VLLMPathBackend(a, b, hops=4, dtype="float32", max_model_len=256, draft_tokens=4)
    path.set_path([("a", 0), ("b", 1)], [1.0, 1.5])
    before = path.usage["steps"]
    assert path.generate(loop, full) == hf.generate(loop, full) and path.usage["steps"] - before == steps[0]
    path.close()


def test_vllm_answers_about_images_like_hf(tmp_path):
    pytest.importorskip(
        "torchvision",
        reason="vLLM's LLaVA imports torchvision, which has no CPU wheel for torch 2.13 on PyPI (GPU runners have it)",
    )
    import torch
    from tiny import make_llava, make_mistral, synthetic_image

    from evohub.score.backends import Sampling, VisionPrompt
    from evohub.score.backends.hf import HFBackend
    from evohub.score.backends.vllm import VLLMBackend

    base = make_mistral(tmp_path / "base", vocab=130, tokenizer=True)
    llava = make_llava(tmp_path / "llava", lm=base, seed=2)
    prompts = [VisionPrompt(f"<image> t{i}", (synthetic_image(i),)) for i in range(3)]
    greedy = Sampling(max_new_tokens=6, repetition_penalty=1.5)
    want = HFBackend.load(llava, dtype=torch.float32).generate(prompts, greedy)
    assert VLLMBackend(llava, dtype="float32", max_model_len=64, enforce_eager=True).generate(prompts, greedy) == want


# ----------------------------------------------------------------------------------------------
# Parameter-space candidates merged straight into the engine's weights (score/backends/vllm_merge)

#: head_dim 32 (vllm-cpu's floor); q rows 128, k and v rows 64 each, gate and up rows 256 each
_MERGE_CFG = {"layers": 2, "hidden": 128, "heads": 4, "kv_heads": 2, "vocab": 256, "inter": 256,
              "initializer_range": 0.2}  # fmt: skip
_PROMPTS = [[3, 14, 15, 92, 65, 35], [89, 79, 32, 38, 46, 26, 43], [7, 200, 11]]


#: two genotypes of the worker's genome: 2 sources x 2 layer groups x (weight, density)
_GENOTYPES = ([0.7, 0.5, 0.3, 0.6, 0.4, 0.8, 0.6, 0.3], [0.2, 0.9, 0.8, 0.1, 0.9, 0.3, 0.2, 0.7])


@pytest.fixture(scope="module")
def merge_world(tmp_path_factory) -> dict:
    """A tiny Mistral base and two fine-tunes, a dare_ties genome over them (two layer groups),
    two candidates it decodes, each merged to disk as ``evohub merge`` builds it, and what vLLM
    makes of each merged checkpoint (``want``). Those engines run first: in one process, closing an
    engine tears down vLLM's process-wide parallel state, so none may close while the merging
    engine is in use."""
    from tiny import make_mistral

    from evohub.evolve.genome import PSGenome
    from evohub.merging.build import merge_to_disk
    from evohub.spec import ModelRef, PSSearch

    root = tmp_path_factory.mktemp("vllm-merge")
    base = make_mistral(root / "base", seed=0, tokenizer=True, **_MERGE_CFG)
    dirs = [base] + [make_mistral(root / f"ft{i}", seed=i, base=base, noise=0.05) for i in (1, 2)]
    search = PSSearch(method="dare_ties", layer_groups=2, density={"bounds": [0.2, 1.0]}, optimizer={"generations": 1})
    genome = PSGenome(search=search, sources=tuple(ModelRef(path=str(d)) for d in dirs[1:]),
                      base=ModelRef(path=str(base)), seed=3, dtype="float32", tokenizer_source="base")  # fmt: skip
    recipes = [genome.decode(x) for x in _GENOTYPES]
    merged = [merge_to_disk(r, dirs, root / f"merged{i}") for i, r in enumerate(recipes)]
    want = [_from_disk(m, _PROMPTS) for m in merged]
    (root / "rows.jsonl").write_text('{"question": "t1 t2 t3", "answer_number": 3.0}\n')
    return {"root": root, "dirs": dirs, "genome": genome, "recipes": recipes, "merged": merged, "want": want}


@pytest.fixture(scope="module")
def ps_worker(merge_world):
    """A parameter-space worker whose fitness backend is vLLM, as a run builds it: one engine on
    the base with the merge's inputs resident in its worker (started once per module: an engine
    start is the slow part of this tier)."""
    from evohub.evolve.worker import Worker, WorkerSpec
    from evohub.spec import Fitness

    fitness = Fitness(task="ja-math", data={"path": str(merge_world["root"] / "rows.jsonl")}, backend="vllm",
                      max_new_tokens=4, prompt="{input}")  # fmt: skip
    spec = WorkerSpec("ps", genome=merge_world["genome"], fitness=fitness, seed=0, dtype="float32",
                      model_dirs=tuple(map(str, merge_world["dirs"])), tokenizer_dir=str(merge_world["dirs"][0]))  # fmt: skip
    worker = Worker(spec)
    yield worker
    worker.close()


def _greedy_and_logprobs(llm, prompts: list[list[int]]) -> list[tuple[list[int], list[float]]]:
    """Each prompt's greedy continuation (6 tokens) and the log-probability of each prompt token."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=6, temperature=0, prompt_logprobs=0, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
    return [
        (list(o.outputs[0].token_ids), [o.prompt_logprobs[i][ids[i]].logprob for i in range(1, len(ids))])
        for o, ids in zip(outs, prompts, strict=True)
    ]


def _from_disk(model_dir: Path, prompts: list[list[int]]) -> list[tuple[list[int], list[float]]]:
    """What an engine configured as the worker's (VLLMBackend's defaults: compiled kernels differ
    from eager ones in the last bits) makes of a checkpoint."""
    from evohub.score.backends.vllm import VLLMBackend

    be = VLLMBackend(model_dir, dtype="float32")
    try:
        return _greedy_and_logprobs(be.llm, prompts)
    finally:
        be.close()


def test_candidates_merged_into_the_engine_equal_vllm_loading_them_from_disk(merge_world, ps_worker):
    be = ps_worker.backend
    assert not hasattr(ps_worker, "merge")  # the sources are resident in the engine's worker only
    # vllm-cpu packs its linear weights after loading: candidates go through vLLM's own reload
    assert be.resident_info["mode"] == "reload" and be.resident_info["tensors"] == 21
    got = []
    for x, recipe, want in zip(_GENOTYPES, merge_world["recipes"], merge_world["want"], strict=True):
        outcome = ps_worker.evaluate(x, recipe, items=[0])  # the worker merges it into the engine, then scores
        assert outcome.error is None and outcome.cost["merge_s"] > 0
        got.append(_greedy_and_logprobs(be.llm, _PROMPTS))
        assert got[-1] == want  # the same tokens and the same logprobs, exactly
    assert got[0] != got[1]  # the second candidate replaced the first
    done = be.merge(merge_world["recipes"][0])
    assert done["tensors"] == 21 and 0 < done["merge_s"] <= done["total_s"]
    assert _greedy_and_logprobs(be.llm, _PROMPTS) == merge_world["want"][0]  # and back


def _layout_facts(layout: dict, layers: int) -> list[tuple]:
    """Where q, k, v, gate, up and o of each layer land: (name, parameter, element offset, shape)."""
    return [(n, *layout[n]) for i in range(layers) for n in (
        f"model.layers.{i}.self_attn.q_proj.weight", f"model.layers.{i}.self_attn.k_proj.weight",
        f"model.layers.{i}.self_attn.v_proj.weight", f"model.layers.{i}.self_attn.o_proj.weight",
        f"model.layers.{i}.mlp.gate_proj.weight", f"model.layers.{i}.mlp.up_proj.weight")]  # fmt: skip


def _want_layout(layers: int) -> list[tuple]:
    h, q, kv, inter = 128, 128, 64, 256
    out = []
    for i in range(layers):
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        out += [
            (a + "q_proj.weight", a + "qkv_proj.weight", 0, (q, h)),
            (a + "k_proj.weight", a + "qkv_proj.weight", q * h, (kv, h)),
            (a + "v_proj.weight", a + "qkv_proj.weight", (q + kv) * h, (kv, h)),
            (a + "o_proj.weight", a + "o_proj.weight", 0, (h, q)),
            (m + "gate_proj.weight", m + "gate_up_proj.weight", 0, (inter, h)),
            (m + "up_proj.weight", m + "gate_up_proj.weight", inter * h, (inter, h)),
        ]
    return out


def test_the_probe_map_covers_every_language_model_tensor_at_its_fused_place(merge_world, ps_worker):
    from evohub.merging.io import CheckpointReader

    be = ps_worker.backend
    be.merge(merge_world["recipes"][0])  # the reload way maps where tensors land on its first candidate
    got = be.llm.collective_rpc("evohub_layout")[0]
    assert sorted(got["layout"]) == sorted(CheckpointReader(merge_world["dirs"][0]).names())
    assert got["skipped"] == []
    assert _layout_facts(got["layout"], 2) == _want_layout(2)


def _direct_into_fresh_models(worker, dirs: list[str], template: dict, merged_dir: str) -> dict:
    """Run in the engine's worker: two more instances of the engine's model class, built but not
    post-processed, so in checkpoint layout as a GPU engine keeps its weights. One gets the
    candidate through the direct map, the other the merged checkpoint through vLLM's own loader."""
    import torch
    from vllm.model_executor.model_loader.utils import initialize_model

    from evohub.merging.build import open_inputs
    from evohub.merging.io import CheckpointReader
    from evohub.merging.ps import ResidentMerge
    from evohub.score.backends.vllm_merge import EngineMerge
    from evohub.spec import Recipe

    config = worker.model_runner.vllm_config
    prefixes = ("evohub_direct", "evohub_loaded")
    try:
        direct, loaded = (initialize_model(vllm_config=config, prefix=p) for p in prefixes)
        for p in direct.parameters():
            p.data.fill_(7.0)
        recipe = Recipe.model_validate(template)
        em = EngineMerge(direct, ResidentMerge(open_inputs(recipe, [Path(d) for d in dirs]), recipe),
                         torch.float32, direct=True)  # fmt: skip
        untouched = all(bool((p == 7.0).all()) for p in direct.parameters())  # the replay wrote nothing
        params = dict(direct.named_parameters())
        views = all(
            em.dests[k].untyped_storage().data_ptr() == params[name].untyped_storage().data_ptr()
            and em.dests[k].storage_offset() == offset
            for k, (name, offset, _) in em.layout.items()
        )
        done = em.write(recipe)
        reader = CheckpointReader(merged_dir)
        loaded.load_weights((n, reader.get(n)) for n in reader.names())
        want = dict(loaded.named_parameters())
        differ = sorted(n for n, p in params.items() if not torch.equal(p, want[n]))
        return {"mode": em.mode, "layout": em.layout, "untouched": untouched, "views": views, "done": done,
                "differ": differ}  # fmt: skip
    finally:  # the extra models' attention layers must not stay registered with the engine
        context = config.compilation_config.static_forward_context
        for name in [n for n in context if n.startswith(prefixes)]:
            del context[name]


def test_the_direct_map_writes_what_vllms_loader_writes_from_the_merged_checkpoint(merge_world, ps_worker):
    """The GPU way, checked on the CPU: into parameters that keep the checkpoint layout the
    candidate is merged through views of them, and equals the merged checkpoint loaded by vLLM."""
    be = ps_worker.backend
    recipe, merged = merge_world["recipes"][1], merge_world["merged"][1]
    dump = recipe.model_dump(mode="json", exclude_none=True)
    dirs = [str(d) for d in merge_world["dirs"]]
    got = be.llm.collective_rpc(_direct_into_fresh_models, args=(dirs, dump, str(merged)))[0]
    assert got["mode"] == "direct" and got["untouched"] and got["views"]
    assert got["done"]["tensors"] == 21
    assert got["differ"] == []  # every parameter, fused ones included, equals vLLM's load of the checkpoint
    assert _layout_facts(got["layout"], 2) == _want_layout(2)


def test_a_probe_lands_whole_views_and_refuses_parts_and_transforms():
    import torch

    from evohub.errors import MergeError
    from evohub.score.backends.vllm_merge import Probe, landing

    dest = torch.zeros(6, 4)
    seen: list[tuple[str, torch.Tensor]] = []
    with landing(lambda key, d: seen.append((key, d))):
        p = Probe.make("w", (4, 4), torch.float32)
        dest.narrow(0, 2, 4).copy_(p.narrow(0, 0, 4).reshape(4, 4))  # a tensor-parallel "shard" of it all
        dest[2:] = p
        torch.empty(4, 4, device="meta").copy_(p)  # vLLM's reload counts elements on meta: no landing
        for part in (p.narrow(0, 1, 2), p.t(), p * 2, p.to(torch.bfloat16)):
            with pytest.raises(MergeError, match="a part or a transform of 'w'"):
                dest[: part.shape[0]].copy_(part)
    assert [k for k, _ in seen] == ["w", "w"]
    assert all(d.untyped_storage().data_ptr() == dest.untyped_storage().data_ptr() and d.storage_offset() == 8
               for _, d in seen)  # fmt: skip
    assert bool((dest == 0).all())  # nothing was copied
    with pytest.raises(RuntimeError, match="outside a probe replay"):
        dest[2:].copy_(p)
