from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from test_merge import load_dir

from evohub.errors import EvohubError
from evohub.merging.build import merge_to_disk
from evohub.merging.dfs import check_pair
from evohub.merging.path import PathExecutor
from evohub.spec import Recipe


def _mistral(seed: int, layers: int = 3):
    from tiny import mistral_config
    from transformers import MistralForCausalLM

    torch.manual_seed(seed)
    return MistralForCausalLM(mistral_config(layers=layers, rms_norm_eps=1e-12)).eval()


def _gemma(seed: int, layers: int = 4):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=128,
        sliding_window=4, layer_types=["sliding_attention", "full_attention"] * (layers // 2),
        rms_norm_eps=1e-12, query_pre_attn_scalar=32,
    )  # fmt: skip
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():  # random norm gains, so that folding them is tested for real
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    return model


def _save(model, path: Path) -> Path:
    model.save_pretrained(path)
    return path


def _random_path(rng: random.Random, la: int, lb: int, hops: int) -> tuple[list, list]:
    path = [("a", 0)] + [(rng.choice("ab"), 0) for _ in range(hops - 2)] + [("a", la - 1)]
    path = [(w, rng.randrange(la if w == "a" else lb)) if 0 < k < hops - 1 else (w, i) for k, (w, i) in enumerate(path)]
    scales = [1.0] + [rng.uniform(0.5, 2.0) for _ in range(hops - 1)]
    return path, scales


def _recipe(a: Path, b: Path, path, scales, **extra) -> Recipe:
    return Recipe.model_validate(
        {"evohub_recipe": 1, "dtype": "float32", "tokenizer_source": "a",
         "data_flow_space": {"a": {"path": str(a)}, "b": {"path": str(b)}, "path": [list(h) for h in path], "scales": scales}} | extra
    )  # fmt: skip


@pytest.mark.parametrize("arch,seed", [("mistral", 0), ("mistral", 1), ("gemma", 2), ("gemma", 3)])
def test_folded_model_matches_path_executor(tmp_path, arch, seed):
    from transformers import AutoModelForCausalLM

    make = _mistral if arch == "mistral" else _gemma
    ma, mb = make(seed), make(seed + 100)
    a, b = _save(ma, tmp_path / "a"), _save(mb, tmp_path / "b")
    la, lb = ma.config.num_hidden_layers, mb.config.num_hidden_layers
    rng = random.Random(seed)
    ex = PathExecutor(ma, mb)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(seed))
    for trial in range(3):  # repeats, skips, cross-model hops, scales in [0.5, 2]
        path, scales = _random_path(rng, la, lb, hops=rng.randrange(3, 9))
        out = merge_to_disk(_recipe(a, b, path, scales), [a, b], tmp_path / f"folded{trial}")
        folded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        assert folded.config.num_hidden_layers == len(path)
        if arch == "gemma":  # per-layer attention types follow the hops
            assert folded.config.layer_types == [
                ma.config.layer_types[i] if w == "a" else mb.config.layer_types[i] for w, i in path
            ]
        ex.set_path(path, scales)
        with torch.no_grad():
            want = ex.model(ids).logits
            got = folded(ids).logits
        scale = want.abs().max().item()
        assert (got - want).abs().max().item() <= 1e-4 * max(scale, 1.0), (path, scales)


def test_executor_generates_with_per_hop_cache_like_the_folded_model(tmp_path):
    from transformers import AutoModelForCausalLM

    ma, mb = _mistral(5), _mistral(6)
    a, b = _save(ma, tmp_path / "a"), _save(mb, tmp_path / "b")
    path = [("a", 0), ("b", 1), ("a", 1), ("a", 1), ("b", 2), ("a", 2)]  # a repeated layer
    scales = [1.0, 0.7, 1.6, 1.1, 0.9, 1.3]
    folded = AutoModelForCausalLM.from_pretrained(merge_to_disk(_recipe(a, b, path, scales), [a, b], tmp_path / "f"))
    ex = PathExecutor(ma, mb)
    ex.set_path(path, scales)
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    kw = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(ex.model.generate(ids, **kw), folded.generate(ids, **kw))
    no_cache = ex.model.generate(ids, use_cache=False, **kw)
    assert torch.equal(no_cache, folded.generate(ids, **kw))


def test_switching_paths_copies_no_weights():
    ma, mb = _mistral(7), _mistral(8)
    ex = PathExecutor(ma, mb)
    before = {id(p): p.data_ptr() for p in list(ma.parameters()) + list(mb.parameters())}
    ex.set_path([("a", 0), ("b", 2), ("a", 2)], [1.0, 0.5, 2.0])
    hop_params = {p.data_ptr() for p in ex.model.parameters()}
    ex.set_path([("a", 0), ("a", 0), ("b", 1), ("a", 2)], [1.0, 1.2, 0.8, 1.0])
    assert ex.model.model.layers[1].layer is ma.model.layers[0]  # the same object, twice
    assert ex.model.model.layers[2].layer is mb.model.layers[1]
    assert {id(p): p.data_ptr() for p in list(ma.parameters()) + list(mb.parameters())} == before
    assert hop_params <= set(before.values())


def test_ps_then_dfs_equals_the_two_steps(tiny_world: Path, tmp_path):
    ps = {"method": "dare_ties", "models": [
        {"source": {"path": str(tiny_world / "ft1")}, "weight": 0.7, "density": 0.6},
        {"source": {"path": str(tiny_world / "ft2")}, "weight": 0.5, "density": 0.8}]}  # fmt: skip
    path, scales = [("a", 0), ("b", 1), ("a", 1)], [1.0, 0.8, 1.3]
    both = Recipe.model_validate({
        "evohub_recipe": 1, "dtype": "float32", "seed": 3, "base_model": {"path": str(tiny_world / "base")},
        "tokenizer_source": "base", "parameter_space": ps,
        "data_flow_space": {"a": "ps", "b": {"path": str(tiny_world / "ft2")}, "path": [list(h) for h in path], "scales": scales},
    })  # fmt: skip
    assert [r.path for r in both.inputs()] == [str(tiny_world / n) for n in ("base", "ft1", "ft2")]
    one = load_dir(merge_to_disk(both, [tiny_world / n for n in ("base", "ft1", "ft2")], tmp_path / "one"))
    stage1 = both.model_copy(update={"data_flow_space": None})
    ps_dir = merge_to_disk(stage1, [tiny_world / n for n in ("base", "ft1", "ft2")], tmp_path / "ps")
    stage2 = _recipe(ps_dir, tiny_world / "ft2", path, scales)
    two = load_dir(merge_to_disk(stage2, [ps_dir, tiny_world / "ft2"], tmp_path / "two"))
    assert set(one) == set(two) and all(torch.equal(one[k], two[k]) for k in one)
    assert json.loads((tmp_path / "one" / "config.json").read_text())["num_hidden_layers"] == 3


def test_unfoldable_or_mismatched_models_are_refused(tmp_path):
    ma = _mistral(0)
    small = _mistral(1, layers=2)
    cfg = ma.config.to_dict()
    with pytest.raises(EvohubError, match="cannot fold a data-flow path through model_type 'gpt2'"):
        check_pair(cfg | {"model_type": "gpt2"}, cfg, "x", "y")
    with pytest.raises(EvohubError, match="differ in hidden_size"):
        check_pair(cfg, cfg | {"hidden_size": 128}, "x", "y")
    a, b = _save(ma, tmp_path / "a"), _save(small, tmp_path / "b")
    with pytest.raises(EvohubError, match=r"path\[1\].*layer 2 of model 'b' does not exist"):
        merge_to_disk(_recipe(a, b, [("a", 0), ("b", 2)], [1.0, 1.0]), [a, b], tmp_path / "x")


def test_check_pair_compares_configs_as_transformers_reads_them():
    """A config that leaves defaults out (hidden_act, rope_theta) or spells rope the old way is the
    same architecture; a real difference (another rope base) is still refused."""
    import pytest

    from evohub.errors import MergeError
    from evohub.merging.dfs import check_pair

    a = {"model_type": "mistral", "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
         "num_key_value_heads": 1, "head_dim": 32, "hidden_act": "silu", "rope_theta": 10000.0}  # fmt: skip
    b = {k: v for k, v in a.items() if k not in ("hidden_act", "rope_theta")}
    check_pair(a, b, "a", "b")
    with pytest.raises(MergeError, match="differ in rope_parameters"):
        check_pair(a, a | {"rope_theta": 1e6}, "a", "c")
    with pytest.raises(MergeError, match="differ in hidden_size"):
        check_pair(a, a | {"hidden_size": 256, "head_dim": 64}, "a", "d")
