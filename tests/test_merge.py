from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from ref_merge import ref_keep, ref_key, ref_merge

from evohub.errors import EvohubError
from evohub.merging import kernels as methods
from evohub.merging.arch import decoder_layer_index
from evohub.merging.build import merge_to_disk, open_inputs
from evohub.merging.export import to_mergekit
from evohub.merging.io import CheckpointReader, ShardedWriter
from evohub.merging.methods import METHODS
from evohub.merging.ps import ResidentMerge
from evohub.models import KINDS
from evohub.spec import Recipe

ALL = ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp"]

VLM, LLM = KINDS.get("vlm"), KINDS.get("llm")


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict[str, Path]:
    """Two worlds of a base + 2 fine-tunes (3 layers): float32 single-file, bfloat16 sharded."""
    from tiny import make_mistral

    out = {}
    for kind, dtype, shard in (("f32", torch.float32, None), ("bf16", torch.bfloat16, "60KB")):
        root = tmp_path_factory.mktemp(kind)
        base = make_mistral(root / "base", seed=0, layers=3, dtype=dtype, shard=shard, tokenizer=True)
        make_mistral(root / "ft1", seed=1, base=base, dtype=dtype, shard=shard, noise=0.05)
        make_mistral(root / "ft2", seed=2, base=base, dtype=dtype, shard=shard, noise=0.05)
        out[kind] = root
    return out


def recipe_for(root: Path, method: str, dtype: str = "float32", seed: int = 7, groups: int = 1, **extra) -> Recipe:
    w = {"linear": (0.7, 0.5), "slerp": (0.3, 0.7)}.get(method, (0.9, -0.4))
    models = []
    for i, name in enumerate(["ft1", "ft2"]):
        m = {"source": {"path": str(root / name)}, "weight": w[i]}
        if method in ("ties", "dare_ties", "dare_linear"):
            m["density"] = (0.35, 0.8)[i]
        models.append(m | extra.get(f"m{i}", {}))
    data = {
        "evohub_recipe": 1,
        "dtype": dtype,
        "seed": seed,
        "tokenizer_source": "base" if method not in ("linear", "slerp") else 0,
        "parameter_space": {
            "method": method,
            "normalize": extra.get("normalize", False),
            "layer_groups": groups,
            "models": models,
        },
    }
    if method not in ("linear", "slerp"):
        data["base_model"] = {"path": str(root / "base")}
    return Recipe.model_validate(data)


def load_dir(d: Path) -> dict[str, torch.Tensor]:
    r = CheckpointReader(d)
    return {n: r.get(n) for n in r.names()}


def reference(recipe: Recipe, root: Path) -> dict[str, torch.Tensor]:
    ps = recipe.parameter_space
    base = load_dir(root / "base")
    srcs = [load_dir(root / n) for n in ("ft1", "ft2")]
    out = {}
    for name in base:
        layer = decoder_layer_index(name)
        G = ps.layer_groups
        g = layer * G // 3 if layer is not None else (0 if "embed" in name else G - 1)
        ws = [m.weight[g] if isinstance(m.weight, tuple) else m.weight for m in ps.models]
        ds = [
            (m.density[g] if isinstance(m.density, tuple) else m.density) if m.density is not None else 1
            for m in ps.models
        ]
        keys = [ref_key(recipe.seed, k, name) for k in range(2)]
        out[name] = ref_merge(ps.method, base[name], [s[name] for s in srcs], ws, ds, keys, ps.normalize)
    return out


@pytest.mark.parametrize("kind", ["f32", "bf16"])
@pytest.mark.parametrize("method", ALL)
def test_every_method_matches_reference(worlds, tmp_path, kind, method):
    root = worlds[kind]
    dtype = "float32" if kind == "f32" else "bfloat16"
    recipe = recipe_for(root, method, dtype=dtype)
    out = merge_to_disk(recipe, [Path(r.path) for r in recipe.inputs()], tmp_path / "out")
    got = load_dir(out)
    want = reference(recipe, root)
    assert set(got) == set(want)
    for name, w in want.items():
        g = got[name]
        assert g.dtype == getattr(torch, dtype), name
        if kind == "f32":
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=name)
        else:  # both round the same float32 value to bfloat16, up to float32 summation order
            assert ((g.float() - w.to(torch.bfloat16).float()).abs() <= w.abs() * 2**-7 + 1e-12).all(), name


def test_output_directory_is_a_loadable_model(worlds, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = worlds["bf16"]
    recipe = recipe_for(root, "dare_ties", dtype="bfloat16")
    out = merge_to_disk(recipe, [Path(r.path) for r in recipe.inputs()], tmp_path / "m", shard_bytes=50_000)
    files = sorted(p.name for p in out.iterdir())
    shards = [f for f in files if f.startswith("model-")]
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "recipe.yaml",
        "model.safetensors.index.json",
    } <= set(files)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert Recipe.from_yaml((out / "recipe.yaml").read_text(), base_dir=out) == recipe  # paths relative to it
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("t1 t2 t3", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 6)
    assert not list(tmp_path.glob(".m.partial-*"))


def ties(base, xs, weights, densities, normalize=False, method="ties", chunk=None):
    method = METHODS.get(method)
    ws = methods.Workspace(methods.slots_for(method, normalize), chunk=chunk)
    keys = [methods.dare_key(0, k, "t") for k in range(len(xs))]
    return methods.merge_deltas(method, base, xs, weights, densities, keys, normalize, torch.empty_like(base), ws)


def test_ties_sign_election_and_trimming_by_hand():
    base = torch.zeros(4)
    a = torch.tensor([3.0, -1.0, 0.5, 2.0])
    b = torch.tensor([-1.0, -2.0, 4.0, -3.0])
    # density 0.5 keeps the two largest magnitudes: a -> [3, 0, 0, 2], b -> [0, 0, 4, -3]
    # sums [3, 0, 4, -1] -> signs +,+,+,- (0 counts as +); agreeing entries: [3, 0, 4, -3]
    assert ties(base, [a, b], [1.0, 1.0], [0.5, 0.5]).tolist() == [3.0, 0.0, 4.0, -3.0]
    # density 0.75 keeps three: a -> [3, -1, 0, 2], b -> [0, -2, 4, -3]; sums [3, -3, 4, -1]
    assert ties(base, [a, b], [1.0, 1.0], [0.75, 0.75]).tolist() == [3.0, -3.0, 4.0, -3.0]
    # divided by the agreeing weights [1, 2, 1, 1]
    assert ties(base, [a, b], [1.0, 1.0], [0.75, 0.75], normalize=True).tolist() == [
        3.0,
        -1.5,
        4.0,
        -3.0,
    ]
    # weighted: [6,-2,1,4] and [-1,-2,4,-3]; sums [5,-4,5,1] -> +,-,+,+
    # agreeing sums: [6, -4, 5, 4]; divisors (agreeing weights): [2, 3, 3, 2]
    out = ties(base, [a, b], [2.0, 1.0], [1.0, 1.0], normalize=True)
    assert out.tolist() == pytest.approx([3.0, -4 / 3, 5 / 3, 2.0])
    # a zero sum elects +: only the positive delta is added
    assert ties(base[:1], [a[:1] - 1, 1 - a[:1]], [1.0, 1.0], [1.0, 1.0]).tolist() == [2.0]
    # exactly k entries survive trimming even when magnitudes tie; the lowest indices win
    tied = torch.tensor([1.0, -1.0, 1.0, 1.0])
    assert ties(base, [tied], [1.0], [0.5]).tolist() == [1.0, -1.0, 0.0, 0.0]


@pytest.mark.parametrize("chunk", [1, 7, 64, None])
def test_trim_is_exact_top_k_with_ties_across_chunks(chunk):
    g = torch.Generator().manual_seed(0)
    base = torch.zeros(1000)
    x = torch.randint(-6, 7, (1000,), generator=g).float() / 4  # many equal magnitudes
    for density in (0.01, 0.3, 0.5, 0.77, 0.999):
        got = ties(base, [x], [1.0], [density], chunk=chunk)
        want = ref_merge("ties", base, [x], [1.0], [density], [None], False)
        assert torch.equal(got, want), density
        assert int((got != 0).sum()) == min(max(1, int(density * 1000)), int((x != 0).sum()))


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear", "task_arithmetic"])
def test_results_do_not_depend_on_chunk_size(method):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(5000, generator=g).bfloat16()
    xs = [base.float() + 0.1 * torch.randn(5000, generator=g) for _ in range(3)]
    xs = [x.bfloat16() for x in xs]
    ws, ds = [0.7, -0.2, 1.1], [0.3, 0.6, 0.9]
    outs = [ties(base, xs, ws, ds, normalize=True, method=method, chunk=c) for c in (3, 1000, None)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])


def test_dare_keep_fraction_and_unbiased_rescale():
    n, density = 1_000_000, 0.3
    ws = methods.Workspace(0, chunk=n)
    x = torch.ones(n)
    methods.dare_(x, 0, density, methods.dare_key(0, 0, "w"), ws)
    kept = int((x != 0).sum())
    sigma = math.sqrt(n * density * (1 - density))
    assert abs(kept - n * density) < 5 * sigma
    assert x.unique().tolist() == pytest.approx([0.0, 1 / density])
    assert abs(x.mean().item() - 1.0) < 5 * sigma / (n * density)  # E[dare(x)] = x
    # two different tensors' masks are independent: joint keep rate ~ density^2
    y = torch.ones(n)
    methods.dare_(y, 0, density, methods.dare_key(0, 0, "v"), ws)
    both = int(((x != 0) & (y != 0)).sum())
    assert abs(both - n * density**2) < 5 * math.sqrt(n * density**2)


def test_dare_mask_matches_reference_hash_in_any_chunking():
    n = 700_001
    key = ref_key(3, 1, "model.layers.0.mlp.up_proj.weight")
    assert key == methods.dare_key(3, 1, "model.layers.0.mlp.up_proj.weight")
    ws = methods.Workspace(0, chunk=65_537)
    x = torch.ones(n)
    for s, e in ws.spans(n):
        methods.dare_(x[s:e], s, 0.6, key, ws)
    assert torch.equal(x != 0, ref_keep(n, key, 0.6))


def test_slerp_endpoints_and_midpoint():
    ws = methods.Workspace(1)

    def sl(t, a, b):
        return methods.slerp(t, a, b, torch.empty_like(a), ws).tolist()

    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    assert sl(0.0, a, b) == pytest.approx([1.0, 0.0])
    assert sl(1.0, a, b) == pytest.approx([0.0, 2.0])
    assert sl(0.5, a, b) == pytest.approx([math.sqrt(0.5), 2 * math.sqrt(0.5)])
    near = torch.tensor([1.0, 1e-3])  # nearly collinear: linear interpolation
    assert sl(0.25, a, near) == pytest.approx([1.0, 0.25e-3])


def test_deterministic_across_runs_orders_and_threads(worlds, tmp_path):
    root = worlds["bf16"]
    recipe = recipe_for(root, "dare_ties", dtype="bfloat16", seed=11)
    dirs = [Path(r.path) for r in recipe.inputs()]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = load_dir(merge_to_disk(recipe, dirs, tmp_path / "a"))
        torch.set_num_threads(2)
        two = load_dir(merge_to_disk(recipe, dirs, tmp_path / "b"))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(one[k], two[k]) for k in one)
    # reversed tensor order: the same bits per tensor
    inputs = open_inputs(recipe, dirs)
    from evohub.merging.ps import merged_tensors, plan_tensors, workspace_for

    plan = plan_tensors(recipe.parameter_space, inputs, True)
    rev = type(plan)(tasks=plan.tasks[::-1], primary=plan.primary, has_base=True)
    ws = workspace_for(recipe, "cpu", chunk=999)  # and another chunk size
    for name, t in merged_tensors(recipe, rev, inputs, ws, torch.bfloat16):
        assert torch.equal(t, one[name]), name
    # another seed gives other masks
    other = load_dir(merge_to_disk(recipe.model_copy(update={"seed": 12}), dirs, tmp_path / "c"))
    assert not torch.equal(other["model.layers.0.mlp.up_proj.weight"], one["model.layers.0.mlp.up_proj.weight"])


@pytest.mark.parametrize(
    "method,tables",
    [
        ("dare_ties", True),
        ("dare_ties", False),
        ("dare_linear", True),
        ("ties", None),
        ("linear", None),
    ],
)
def test_in_memory_equals_on_disk(worlds, tmp_path, method, tables):
    from transformers import AutoModelForCausalLM

    root = worlds["bf16"]
    template = recipe_for(root, method, dtype="bfloat16")
    dirs = [Path(r.path) for r in template.inputs()]
    model = AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.bfloat16)
    resident = ResidentMerge(open_inputs(template, dirs), template, device="cpu", mask_tables=tables)
    assert resident.mask_tables == bool(tables)
    params = dict(model.named_parameters())
    ws_before = [b.data_ptr() for b in resident.ws._f32]
    # two candidates into one resident model: other weights, and other densities where there are any
    for weights, dens in (((0.2, 0.9), (0.3, 0.95)), ((1.1, -0.3), (0.8, 0.1))):
        models = tuple(
            m.model_copy(update={"weight": w} | ({"density": d} if m.density is not None else {}))
            for m, w, d in zip(template.parameter_space.models, weights, dens, strict=True)
        )
        cand = template.model_copy(
            update={"parameter_space": template.parameter_space.model_copy(update={"models": models})}
        )
        n = resident.apply(cand, params)
        assert n == len(params)
        disk = load_dir(merge_to_disk(cand, dirs, tmp_path / f"{method}{weights}"))
        for name, p in params.items():
            assert torch.equal(p.data, disk[name]), name
    assert [b.data_ptr() for b in resident.ws._f32] == ws_before  # scratch reused, not reallocated


def test_resident_merge_writes_strided_places_and_one_tensor_at_a_time_as_it_writes_parameters(worlds):
    """An engine's places need not be whole contiguous parameters (docs/design.md#candidates-in-vllm):
    a transposed view gets the same values through a scratch copy, ``write`` merges one tensor,
    ``skip`` leaves a tensor alone, and a place of another shape is refused."""
    root = worlds["f32"]
    recipe = recipe_for(root, "dare_ties")
    resident = ResidentMerge(open_inputs(recipe, [Path(r.path) for r in recipe.inputs()]), recipe)
    shapes = {t.key: t.shape for t in resident.plan.tasks if t.key is not None}
    plain = {k: torch.zeros(s) for k, s in shapes.items()}
    strided = {k: torch.zeros(s[::-1]).t() if len(s) == 2 else torch.zeros(s) for k, s in shapes.items()}
    assert resident.apply(recipe, plain) == len(shapes)
    skip = "model.norm.weight"
    assert resident.apply(recipe, strided, skip={skip}) == len(shapes) - 1
    assert not strided["model.layers.0.self_attn.q_proj.weight"].is_contiguous()
    assert all(torch.equal(strided[k], plain[k]) for k in shapes if k != skip)
    assert not strided[skip].any()
    resident.write(recipe, skip, strided[skip])
    assert torch.equal(strided[skip], plain[skip])
    with pytest.raises(EvohubError, match="with shape"):
        resident.write(recipe, "model.norm.weight", torch.zeros(3))


def test_layer_groups_and_overrides_pick_the_right_values(worlds, tmp_path):
    root = worlds["f32"]
    recipe = recipe_for(
        root,
        "linear",
        groups=3,
        m0={
            "weight": [1.0, 0.0, 0.0],
            "overrides": [{"pattern": r"self_attn\.q_proj", "weight": 0.5}],
        },
        m1={"weight": [0.0, 1.0, 0.0]},
    )
    got = load_dir(merge_to_disk(recipe, [Path(r.path) for r in recipe.inputs()], tmp_path / "o"))
    ft1, ft2 = load_dir(root / "ft1"), load_dir(root / "ft2")
    torch.testing.assert_close(got["model.embed_tokens.weight"], ft1["model.embed_tokens.weight"])  # group 0
    torch.testing.assert_close(got["model.layers.0.mlp.up_proj.weight"], ft1["model.layers.0.mlp.up_proj.weight"])
    torch.testing.assert_close(got["model.layers.1.mlp.up_proj.weight"], ft2["model.layers.1.mlp.up_proj.weight"])
    assert got["model.layers.2.mlp.up_proj.weight"].abs().max() == 0  # group 2: both weights 0
    assert got["lm_head.weight"].abs().max() == 0  # the last group's values
    q = "model.layers.1.self_attn.q_proj.weight"  # override: 0.5*ft1 + 1*ft2 in group 1
    torch.testing.assert_close(got[q], 0.5 * ft1[q] + ft2[q])


def test_vlm_language_model_merges_with_llm(tmp_path):
    """A LLaVA-style checkpoint (old and new naming) merges its LM with an LLM; vision stays."""
    from tiny import make_mistral

    base = make_mistral(tmp_path / "base", seed=0)
    llm = make_mistral(tmp_path / "llm", seed=1, base=base)
    lm = load_dir(make_mistral(tmp_path / "lm", seed=2, base=base))
    cfg = json.loads((base / "config.json").read_text())
    for style, prefix, head in (
        ("old", "language_model.model.", "language_model.lm_head."),
        ("new", "model.language_model.", "lm_head."),
    ):
        vlm = tmp_path / f"vlm-{style}"
        vision = {"model.vision_tower.x.weight" if style == "new" else "vision_tower.x.weight": torch.randn(4, 4)}
        tensors = {
            (prefix + k[len("model.") :] if k.startswith("model.") else head + k[len("lm_head.") :]): v
            for k, v in lm.items()
        }
        with ShardedWriter(vlm) as w:
            for k, v in {**tensors, **vision}.items():
                w.add(k, v)
        (vlm / "config.json").write_text(
            json.dumps({"model_type": "llava", "text_config": cfg, "vision_config": {"hidden_size": 4}})
        )
        recipe = Recipe.model_validate(
            {
                "evohub_recipe": 1,
                "dtype": "float32",
                "base_model": {"path": str(base)},
                "parameter_space": {
                    "method": "task_arithmetic",
                    "models": [
                        {"source": {"path": str(llm)}, "weight": 0.5},
                        {"source": {"path": str(vlm)}, "weight": 1.0},
                    ],
                },
            }
        )
        out = load_dir(merge_to_disk(recipe, [base, llm, vlm], tmp_path / f"out-{style}"))
        assert set(out) == set(tensors) | set(vision)  # the VLM's architecture and names
        for k in vision:
            assert torch.equal(out[k], vision[k])
        b, l1 = load_dir(base), load_dir(llm)
        key = "model.layers.1.mlp.down_proj.weight"
        own = prefix + key[len("model.") :]
        torch.testing.assert_close(out[own], b[key] + 0.5 * (l1[key] - b[key]) + (lm[key] - b[key]))
        assert json.loads((tmp_path / f"out-{style}" / "config.json").read_text())["model_type"] == "llava"


def test_lm_name_mapping():
    assert LLM.lm_name("model.layers.3.mlp.up_proj.weight") == "model.layers.3.mlp.up_proj.weight"
    assert VLM.lm_name("language_model.model.layers.3.x") == "model.layers.3.x"
    assert VLM.lm_name("language_model.lm_head.weight") == "lm_head.weight"
    assert VLM.lm_name("model.language_model.embed_tokens.weight") == "model.embed_tokens.weight"
    assert VLM.lm_name("model.vision_tower.encoder.layers.0.x") is None
    assert VLM.lm_name("multi_modal_projector.linear_1.weight") is None


def _corrupt(root: Path, tmp: Path, name: str, fn) -> Path:
    d = tmp / name
    d.mkdir()
    tensors = load_dir(root / "ft2")
    fn(tensors)
    with ShardedWriter(d) as w:
        for k, v in tensors.items():
            w.add(k, v)
    (d / "config.json").write_text((root / "ft2" / "config.json").read_text())
    return d


@pytest.mark.parametrize(
    "case,words",
    [
        ("missing", "tensor 'model.layers.1.mlp.up_proj.weight' is in"),
        ("shape", "has shape (96, 64) in"),
        ("vocab", "vocabulary size mismatch in 'model.embed_tokens.weight'"),
        ("extra", "tensor 'model.extra.weight' is in"),
    ],
)
def test_bad_inputs_are_one_line_errors(worlds, tmp_path, run_cli, case, words):
    root = worlds["f32"]
    fns = {
        "missing": lambda t: t.pop("model.layers.1.mlp.up_proj.weight"),
        "shape": lambda t: t.update({"model.layers.1.mlp.up_proj.weight": torch.zeros(96, 32)}),
        "vocab": lambda t: t.update({"model.embed_tokens.weight": torch.zeros(130, 64)}),
        "extra": lambda t: t.update({"model.extra.weight": torch.zeros(2)}),
    }
    bad = _corrupt(root, tmp_path, case, fns[case])
    recipe = recipe_for(root, "task_arithmetic")
    text = recipe.to_yaml().replace(str(root / "ft2"), str(bad))
    (tmp_path / "r.yaml").write_text(text)
    code, _, err = run_cli("merge", tmp_path / "r.yaml", "--out", tmp_path / "o", "-q")
    assert code == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("evohub: error: ") and words in line, line
    assert not (tmp_path / "o").exists()


def test_pickle_only_directory_is_refused(tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(EvohubError, match=r"only pickle weights.*add 'weights: pickle'"):
        CheckpointReader(d)


def test_corrupt_safetensors_is_one_line_error(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(EvohubError, match=r"model.safetensors: not a readable safetensors file"):
        CheckpointReader(d)
    (d / "model.safetensors").write_bytes(b"\x02")
    with pytest.raises(EvohubError, match="not a readable safetensors file"):
        CheckpointReader(d)


def test_cli_merge_and_refuse_to_overwrite(worlds, tmp_path, run_cli):
    root = worlds["bf16"]
    r = tmp_path / "recipe.yaml"
    r.write_text(recipe_for(root, "ties", dtype="bfloat16").to_yaml())
    code, _out, err = run_cli("merge", r, "--out", tmp_path / "m", "--shard-size", "100KB", "-q")
    assert code == 0, err
    code, _, err = run_cli("merge", r, "--out", tmp_path / "m", "-q")
    assert code == 2 and "is a directory that is not empty" in err
    code, _, err = run_cli("merge", r, "--out", tmp_path / "m", "-q", "--force")
    assert code == 0, err
    code, _, err = run_cli("merge", r, "--out", tmp_path / "x", "--shard-size", "lots")
    assert code == 2 and "not a size" in err


def test_export_mergekit(worlds, tmp_path, run_cli):
    root = worlds["f32"]
    recipe = recipe_for(
        root,
        "dare_ties",
        groups=3,
        m0={"weight": [0.1, 0.2, 0.3], "overrides": [{"pattern": "self_attn", "density": 0.5}]},
    )
    r = tmp_path / "recipe.yaml"
    r.write_text(recipe.to_yaml())
    code, out, err = run_cli("export-mergekit", r)
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["merge_method"] == "dare_ties" and cfg["base_model"] == str(root / "base")
    assert cfg["parameters"] == {"normalize": False, "rescale": True}
    assert (cfg["dtype"], cfg["out_dtype"]) == ("float32", "float32")
    w0 = cfg["models"][0]["parameters"]["weight"]
    assert w0[:3] == [
        {"filter": "layers.0.", "value": 0.1},
        {"filter": "layers.1.", "value": 0.2},
        {"filter": "layers.2.", "value": 0.3},
    ]
    assert w0[-2:] == [{"filter": "embed_tokens", "value": 0.1}, {"value": 0.3}]
    assert cfg["models"][0]["parameters"]["density"] == [
        {"filter": "self_attn", "value": 0.5},
        {"value": 0.35},
    ]
    assert cfg["models"][1]["parameters"] == {"weight": -0.4, "density": 0.8}
    slerp = recipe_for(root, "slerp")
    assert yaml.safe_load(to_mergekit(slerp))["parameters"] == {"t": 0.7}
    bad = recipe_for(root, "ties", m0={"overrides": [{"pattern": r"layers\.[0-3]\.", "weight": 1.0}]})
    with pytest.raises(EvohubError, match="regex"):
        to_mergekit(bad)


@pytest.mark.parametrize("method", ["task_arithmetic", "dare_ties"])
def test_vocab_base_merges_over_the_base_vocabulary(worlds, tmp_path, run_cli, method):
    """A source with 2 added tokens (rows 128, 129) merges with `vocab: base`: the first 128 rows
    are exactly the merge of the sources cut to the base vocabulary, the added rows are dropped
    (the output has the base's architecture); without the rule it is refused."""
    root = worlds["f32"]
    extra = lambda t: t.update({k: torch.cat([t[k], torch.randn(2, t[k].shape[1])]) for k in  # noqa: E731
                                ("model.embed_tokens.weight", "lm_head.weight")})  # fmt: skip
    big = _corrupt(root, tmp_path, "vocab", extra)
    config = json.loads((big / "config.json").read_text()) | {"vocab_size": 130}
    (big / "config.json").write_text(json.dumps(config))
    recipe = recipe_for(root, method)
    ps = recipe.parameter_space.model_copy(update={"vocab": "base"})
    r = recipe.model_copy(update={"parameter_space": ps})
    (tmp_path / "big.yaml").write_text(r.to_yaml().replace(str(root / "ft2"), str(big)))
    (tmp_path / "cut.yaml").write_text(r.to_yaml())  # the same merge on the 128-row original
    code, _, err = run_cli("merge", tmp_path / "big.yaml", "--out", tmp_path / "big-out", "-q")
    assert code == 0, err
    code, _, err = run_cli("merge", tmp_path / "cut.yaml", "--out", tmp_path / "cut-out", "-q")
    assert code == 0, err
    a, b = load_dir(tmp_path / "big-out"), load_dir(tmp_path / "cut-out")
    assert a["model.embed_tokens.weight"].shape == (128, 64)
    assert all(torch.equal(a[k], b[k]) for k in a)  # cut rows merge exactly like the original's
    assert "vocab: base" in (tmp_path / "big-out" / "recipe.yaml").read_text()
    (tmp_path / "norule.yaml").write_text(recipe.to_yaml().replace(str(root / "ft2"), str(big)))
    code, _, err = run_cli("merge", tmp_path / "norule.yaml", "--out", tmp_path / "x", "-q")
    assert code == 2 and "set parameter_space.vocab: base" in err
