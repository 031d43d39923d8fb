"""Data-flow paths on stock vLLM (docs/design.md#data-flow-paths-on-vllm): the vLLM tier, in its
own venv with vllm-cpu (``make test-vllm``), skipped elsewhere.

One path-model engine serves the module, built the way a run builds it: by a data-flow worker
whose fitness backend is vLLM. Its greedy text is compared with the transformers path executor's
(an hf worker over the same models) across path switches, and with the folded model's in stock vLLM.
"""

from __future__ import annotations

import gc
import json
import os

import pytest

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

vllm = pytest.importorskip("vllm", reason="the vLLM tier runs in .venv-vllm (make test-vllm)")
pytestmark = pytest.mark.vllm

HOPS = 8  # the engine's hops (max_path_length): every path below is shorter, so some hops are unused
CFG = {"layers": 3, "hidden": 128, "heads": 4, "kv_heads": 2, "vocab": 256, "inter": 256,
       "initializer_range": 0.3, "rms_norm_eps": 1e-12}  # fmt: skip  # head_dim 32; ε ≈ 0 so the fold is exact
#: slots of the genotype's path (3 + 3 layers, r = 2): a0, b1, a0 again, a2 (a1 skipped)
SLOTS = (0, 4, 6, 8)
#: a second path: two of B's layers, a1 twice, its own scales
PATH_2 = ([("a", 0), ("b", 0), ("b", 2), ("a", 1), ("a", 1), ("a", 2)], [1.0, 1.3, 0.7, 1.6, 0.9, 1.2])
#: the last prompt is longer than vllm-cpu's 128-token KV block, so the prefix cache holds a block of
#: it: served after a switch, that block would carry the old path's keys and values
QUESTIONS = ["t1 t2 t3", "t40 t41", "t7 t8 t9 t10 t11", " ".join(f"t{(7 * i) % 250}" for i in range(150))]


def _genome(a, b):
    from evohub.evolve.genome import DFSGenome
    from evohub.spec import DFSSearch, ModelRef

    search = DFSSearch(a="a", b="b", repeats=2, max_path_length=HOPS, scales={"bounds": [0.5, 2.0]},
                       optimizer={"generations": 1})  # fmt: skip
    return DFSGenome(search=search, layers_a=3, layers_b=3, a=ModelRef(path=str(a)), b=ModelRef(path=str(b)),
                     base=None, seed=0, dtype="float32")  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Models A and B, a genotype whose path repeats a layer, crosses models, skips a layer and
    scales, and fitness rows: the even rows' answers are the numbers the path executor ends on."""
    import torch
    from tiny import make_mistral

    from evohub.merging.path import PathExecutor
    from evohub.score.backends import Sampling
    from evohub.score.backends.hf import HFBackend, load_model
    from evohub.score.metrics import extract_number
    from evohub.score.tasks.ja_math import STOP

    root = tmp_path_factory.mktemp("vllm-dfs")
    a = make_mistral(root / "a", seed=0, tokenizer=True, **CFG)
    b = make_mistral(root / "b", seed=1, tokenizer=True, **CFG)
    genome = _genome(a, b)
    x = [1.0 if t in SLOTS else 0.0 for t in range(genome.T)] + [0.5] * (genome.dims - genome.T)  # scales 1
    for (i, j), gene in {(0, 4): 0.8, (4, 0): 0.25, (0, 2): 0.7}.items():  # a0 -> b1 -> a0 -> a2
        x[genome.T + i * genome.M + j] = gene
    recipe = genome.decode(x)
    dfs = recipe.data_flow_space
    assert [tuple(h) for h in dfs.path] == [("a", 0), ("b", 1), ("a", 0), ("a", 2)]
    assert dfs.scales == pytest.approx([1.0, 0.5 * 4**0.8, 0.5 * 4**0.25, 0.5 * 4**0.7])
    (model_a, tokenizer, _), (model_b, _, _) = (load_model(d, "cpu", torch.float32) for d in (a, b))
    executor = PathExecutor(model_a, model_b)
    executor.set_path(dfs.path, dfs.scales)
    outs = HFBackend(executor.model, tokenizer).generate(QUESTIONS, Sampling(max_new_tokens=8, stop=STOP))
    rows = [{"question": q, "answer_number": extract_number(o) if i % 2 == 0 else -1.0}
            for i, (q, o) in enumerate(zip(QUESTIONS, outs, strict=True))]  # fmt: skip
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"root": root, "a": a, "b": b, "genome": genome, "x": x, "recipe": recipe}


def _worker(world, backend: str):
    from evohub.evolve.worker import Worker, WorkerSpec
    from evohub.spec import Fitness

    fitness = Fitness(task="ja-math", data={"path": str(world["root"] / "rows.jsonl")}, backend=backend,
                      max_new_tokens=8, prompt="{input}")  # fmt: skip
    spec = WorkerSpec("dfs", genome=world["genome"], fitness=fitness, seed=0, dtype="float32",
                      model_dirs=(str(world["a"]), str(world["b"])))  # fmt: skip
    return Worker(spec)


@pytest.fixture(scope="module")
def vllm_worker(world):
    """The module's one path-model engine, started by a data-flow worker (fitness backend vllm)."""
    gc.collect()  # earlier modules' engines shut down now, not while this one runs (see folded_engine)
    worker = _worker(world, "vllm")
    yield worker
    worker.close()


@pytest.fixture(scope="module")
def hf_worker(world):
    worker = _worker(world, "hf")
    yield worker
    worker.close()


def _greedy():
    from evohub.score.backends import Sampling

    return Sampling(max_new_tokens=8)


def test_a_vllm_dfs_worker_scores_candidates_like_the_hf_path_executor(world, vllm_worker, hf_worker):
    from evohub.score.backends.vllm_path import VLLMPathBackend

    assert isinstance(vllm_worker.backend, VLLMPathBackend) and vllm_worker.backend.hops == HOPS
    want = hf_worker.evaluate(world["x"], world["recipe"])
    got = vllm_worker.evaluate(world["x"], world["recipe"])
    assert got.error is None and want.error is None
    assert vllm_worker.backend.path == [tuple(h) for h in world["recipe"].data_flow_space.path]
    assert want.metrics["acc"] == 0.5  # the even rows' answers are the executor's own numbers ...
    assert got.metrics == want.metrics and got.scores == want.scores  # ... and the path model finds them too
    assert got.cost["generated_tokens"] == want.cost["generated_tokens"] == 8 * len(QUESTIONS)
    assert got.cost["longest_tokens"] == want.cost["longest_tokens"] == 8  # the call's longest answer


def test_switching_paths_without_a_restart_gives_the_path_executors_text(world, vllm_worker, hf_worker):
    dfs = world["recipe"].data_flow_space
    engine, executor, hf = vllm_worker.backend, hf_worker.executor, hf_worker.backend
    llm = engine.llm
    texts = []
    for path, scales in [(dfs.path, dfs.scales), PATH_2, (dfs.path, dfs.scales)]:
        executor.set_path(path, scales)
        want = hf.generate(QUESTIONS, _greedy())
        engine.set_path(path, scales)
        assert engine.llm is llm  # the same engine: no restart
        assert engine.generate(QUESTIONS, _greedy()) == want
        texts.append(want)
    assert texts[0] != texts[1] and texts[2] == texts[0]  # the switch is real, and switching back is exact
    assert texts[0][-1] != texts[1][-1]  # also for the prompt whose first block the prefix cache held


@pytest.fixture(scope="module")
def folded_engine(world, vllm_worker, tmp_path_factory):
    """PATH_2 folded to a plain Mistral (the DFS fold) in a stock vLLM engine. Module-scoped and set
    up after the path engine, so it is shut down first, after the last test: an in-process engine's
    shutdown tears down the process-wide parallel state the other engine still uses."""
    from evohub.merging.build import merge_to_disk
    from evohub.score.backends.vllm import VLLMBackend
    from evohub.spec import Recipe

    a, b = world["a"], world["b"]
    path, scales = PATH_2
    recipe = Recipe.model_validate({
        "evohub_recipe": 1, "dtype": "float32", "tokenizer_source": "a",
        "data_flow_space": {"a": {"path": str(a)}, "b": {"path": str(b)}, "path": [list(h) for h in path],
                            "scales": scales},
    })  # fmt: skip
    folded = merge_to_disk(recipe, [a, b], tmp_path_factory.mktemp("folded") / "model")
    engine = VLLMBackend(folded, dtype="float32", max_model_len=256, enforce_eager=True)
    yield engine
    engine.close()


def test_the_folded_model_in_stock_vllm_says_what_the_path_model_says(vllm_worker, folded_engine):
    vllm_worker.backend.set_path(*PATH_2)
    got = vllm_worker.backend.generate(QUESTIONS, _greedy())
    assert got == folded_engine.generate(QUESTIONS, _greedy())


def test_paths_the_engine_cannot_run_are_refused_in_one_line(world, vllm_worker):
    from evohub.errors import MergeError, ScoreError
    from evohub.score.backends.vllm_path import VLLMPathBackend

    engine = vllm_worker.backend
    with pytest.raises(ScoreError, match="at most 8"):
        engine.set_path([("a", 0)] * (HOPS + 1), [1.0] * (HOPS + 1))
    with pytest.raises(MergeError, match="layer 3 of model 'b' does not exist"):
        engine.set_path([("a", 0), ("b", 3)], [1.0, 1.0])
    with pytest.raises(ScoreError, match="eager"):  # refused before an engine starts
        VLLMPathBackend(world["a"], world["b"], hops=HOPS, enforce_eager=False)
