"""The newer merge operators (della, breadcrumbs, model_stock, tsv) against straightforward formulas."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ref_merge import _mix

from evohub.errors import EvohubError
from evohub.merging import kernels, operators
from evohub.merging.build import merge_to_disk
from evohub.merging.export import to_mergekit
from evohub.merging.io import CheckpointReader
from evohub.merging.methods import METHODS
from evohub.spec import Recipe


def ws(chunk: int | None = None) -> kernels.Workspace:
    return kernels.Workspace(8, "cpu", chunk=chunk, fuse=False)


def run(method: str, base, xs, weights, densities, keys=None, normalize=False, **options):
    m = METHODS.get(method).bind(options)
    keys = keys or [kernels.dare_key(3, k, "t", m.key_domain) for k in range(len(xs))]
    out = torch.empty_like(base)
    return kernels.apply(m, base, xs, weights, densities, keys, normalize, out, ws())


def della_key(seed: int, index: int, name: str) -> tuple[int, int]:
    d = hashlib.blake2b(f"evohub-della-v1\0{seed}\0{index}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(d[:4], "little"), int.from_bytes(d[4:], "little")


def ref_hash(n: int, key: tuple[int, int]) -> np.ndarray:
    i = np.arange(n, dtype=np.uint64)
    return _mix(_mix(i ^ np.uint64(key[0])) ^ np.uint64(key[1]))


def ref_della(d: torch.Tensor, density: float, eps: float, key: tuple[int, int]) -> torch.Tensor:
    """Per row: rank by |δ| (ties by index), p = density − ε + 2ε·r/(m−1), keep iff hash < ⌊p·2³²⌋."""
    rows = d.reshape(d.shape[0], -1) if d.dim() >= 2 else d.reshape(1, -1)
    m = rows.shape[1]
    h = ref_hash(d.numel(), key)
    out = torch.zeros(d.numel())
    for r in range(rows.shape[0]):
        order = sorted(range(m), key=lambda j: (abs(float(rows[r, j])), j))
        for rank, j in enumerate(order):
            p = min(1.0, max(0.0, density - eps + 2 * eps * rank / (m - 1)))
            i = r * m + j
            if int(h[i]) < math.floor(p * 2**32):
                out[i] = float(np.float32(rows[r, j].item()) / np.float32(p))
    return out.view(d.shape)


@pytest.mark.parametrize("shape", [(6, 40), (97,), (3, 4, 5)])
def test_della_keeps_each_entry_with_its_rank_probability(shape):
    g = torch.Generator().manual_seed(1)
    d = torch.randn(shape, generator=g)
    d.view(-1)[:6] = 0.5  # ties: ranked by flat index
    key = kernels.dare_key(11, 1, "model.layers.0.mlp.up_proj.weight", "della")
    assert key == della_key(11, 1, "model.layers.0.mlp.up_proj.weight")
    want = ref_della(d, 0.4, 0.2, key)
    for chunk in (7, None):  # the hash does not depend on the chunking
        got = operators.della_sparsify(d.reshape(-1), shape, 0.4, 0.2, key, ws(chunk)).view(shape)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_della_keep_rate_follows_magnitude_and_is_keyed_apart_from_dare():
    d = torch.randn(64, 4096, generator=torch.Generator().manual_seed(2))
    flat = d.reshape(-1)
    key = kernels.dare_key(5, 0, "w", "della")
    assert key != kernels.dare_key(5, 0, "w")
    kept = operators.della_sparsify(flat, d.shape, 0.5, 0.3, key, ws()) != 0
    assert abs(kept.float().mean().item() - 0.5) < 0.01
    big = d.abs() >= d.abs().median(dim=1, keepdim=True).values
    rate_big, rate_small = kept.view(d.shape)[big].float().mean(), kept.view(d.shape)[~big].float().mean()
    assert rate_big > 0.6 > 0.4 > rate_small  # p runs 0.2 .. 0.8 with the rank
    # with epsilon 0, DELLA's mask is DARE's hash test at the density, under DELLA's own key
    same = operators.della_sparsify(flat, d.shape, 0.5, 0.0, key, ws()) != 0
    dare = torch.ones_like(flat)
    kernels.dare_mask_(dare, 0, 0.5, kernels.dare_key(5, 0, "w"), ws())
    other = torch.ones_like(flat)
    kernels.dare_mask_(other, 0, 0.5, key, ws())
    assert torch.equal(same, other.bool())
    assert (same != dare.bool()).float().mean() > 0.4  # independent of DARE's mask


def test_della_with_zero_epsilon_is_dare_with_its_keys():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(8, 33, generator=g)
    xs = [base + 0.1 * torch.randn(8, 33, generator=g) for _ in range(3)]
    keys = [kernels.dare_key(9, k, "t", "della") for k in range(3)]
    for normalize in (False, True):
        for della, dare in (("della", "dare_ties"), ("della_linear", "dare_linear")):
            a = run(della, base, xs, [0.6, -0.3, 0.9], [0.3, 0.5, 0.7], keys, normalize, epsilon=0.0)
            b = run(dare, base, xs, [0.6, -0.3, 0.9], [0.3, 0.5, 0.7], keys, normalize)
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def ref_breadcrumbs(d: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Sort by (−|δ|, index); drop the first ⌊γn⌋ (fewer if ⌊density·n⌋ would not remain), keep ⌊density·n⌋."""
    flat = d.reshape(-1).tolist()
    n = len(flat)
    keep_n = int(density * n)
    top = min(int(gamma * n), n - keep_n)
    order = sorted(range(n), key=lambda i: (-abs(flat[i]), i))
    out = [0.0] * n
    for i in order[top : top + keep_n]:
        out[i] = flat[i]
    return torch.tensor(out).view(d.shape)


@pytest.mark.parametrize(("density", "gamma"), [(0.5, 0.1), (0.9, 0.3), (0.2, 0.0), (0.05, 0.5), (1.0, 0.2)])
def test_breadcrumbs_cuts_are_exact_with_ties(density, gamma):
    d = torch.randint(-4, 5, (7, 13), generator=torch.Generator().manual_seed(4)).float()  # many ties
    want = ref_breadcrumbs(d, density, gamma) if density < 1 else d
    got = operators.breadcrumbs_sparsify(d.reshape(-1), density, gamma).view(d.shape)
    assert torch.equal(got, want)


def test_breadcrumbs_ties_with_zero_gamma_is_ties():
    g = torch.Generator().manual_seed(5)
    base = torch.randn(9, 31, generator=g)
    xs = [base + torch.randn(9, 31, generator=g) for _ in range(3)]
    for normalize in (False, True):
        a = run("breadcrumbs_ties", base, xs, [0.5, 1.0, -0.2], [0.3, 0.6, 0.9], normalize=normalize, gamma=0.0)
        b = run("ties", base, xs, [0.5, 1.0, -0.2], [0.3, 0.6, 0.9], normalize=normalize)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        plain = run("breadcrumbs", base, xs, [0.5, 1.0, -0.2], [0.3, 0.6, 0.9], normalize=normalize, gamma=0.1)
        ds = [
            ref_breadcrumbs(x - base, dens, 0.1) * w
            for x, w, dens in zip(xs, [0.5, 1.0, -0.2], [0.3, 0.6, 0.9], strict=True)
        ]
        want = sum(ds) / (1.3 if normalize else 1.0) + base
        torch.testing.assert_close(plain, want, rtol=1e-5, atol=1e-6)


def ref_stock(base: torch.Tensor, xs: list[torch.Tensor]) -> torch.Tensor:
    ds = [(x - base).reshape(-1).double() for x in xs]
    k = len(ds)
    cos = [float(ds[i] @ ds[j] / (ds[i].norm() * ds[j].norm())) for i in range(k) for j in range(i + 1, k)]
    c = sum(cos) / len(cos)
    t = k * c / (1 + (k - 1) * c)
    return (base.double() + t * (sum(xs).double() / k - base.double())).float()


@pytest.mark.parametrize("k", [2, 3, 5])
def test_model_stock_is_the_cosine_formula(k):
    g = torch.Generator().manual_seed(k)
    base = torch.randn(12, 20, generator=g)
    shared = torch.randn(12, 20, generator=g)
    xs = [base + shared + 0.8 * torch.randn(12, 20, generator=g) for _ in range(k)]
    got = run("model_stock", base, xs, [1.0] * k, [1.0] * k)
    torch.testing.assert_close(got, ref_stock(base, xs), rtol=1e-5, atol=1e-5)
    # identical fine-tunes: cos 1, t 1, the fine-tune itself; a vanishing task vector: the base
    torch.testing.assert_close(run("model_stock", base, [xs[0]] * k, [1.0] * k, [1.0] * k), xs[0])
    torch.testing.assert_close(run("model_stock", base, [base] * k, [1.0] * k, [1.0] * k), base)


# ----------------------------------------------------------------------------------------------
# From a recipe, end to end


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from tiny import make_mistral

    root = tmp_path_factory.mktemp("ops")
    base = make_mistral(root / "base", seed=0, layers=2, tokenizer=True)
    for k in (1, 2, 3):
        make_mistral(root / f"ft{k}", seed=k, base=base, noise=0.05)
    return root


def recipe(root: Path, method: str, seed: int = 7, options: dict | None = None, **model) -> Recipe:
    per = model or ({} if method == "model_stock" else {"weight": 0.7, "density": 0.5})
    data = {
        "evohub_recipe": 1,
        "dtype": "float32",
        "seed": seed,
        "base_model": {"path": str(root / "base")},
        "parameter_space": {
            "method": method,
            "options": options or {},
            "models": [{"source": {"path": str(root / f"ft{k}")}} | per for k in (1, 2, 3)],
        },
    }
    return Recipe.model_validate(data)


def load(d: Path) -> dict[str, torch.Tensor]:
    r = CheckpointReader(d)
    return {n: r.get(n) for n in r.names()}


def merge(r: Recipe, out: Path) -> dict[str, torch.Tensor]:
    return load(merge_to_disk(r, [Path(x.path) for x in r.inputs()], out))


def test_model_stock_from_a_recipe(world, tmp_path):
    r = recipe(world, "model_stock")
    assert "weight" not in r.to_yaml() and Recipe.from_yaml(r.to_yaml()) == r
    got = merge(r, tmp_path / "ms")
    base, xs = load(world / "base"), [load(world / f"ft{k}") for k in (1, 2, 3)]
    for name, t in got.items():
        torch.testing.assert_close(t, ref_stock(base[name], [x[name] for x in xs]), rtol=1e-5, atol=1e-6, msg=name)


def test_breadcrumbs_from_a_recipe_uses_its_gamma(world, tmp_path):
    r = recipe(world, "breadcrumbs", options={"gamma": 0.05})
    assert Recipe.from_yaml(r.to_yaml()) == r and "gamma: 0.05" in r.to_yaml()
    got = merge(r, tmp_path / "bc")
    base, xs = load(world / "base"), [load(world / f"ft{k}") for k in (1, 2, 3)]
    for name, t in got.items():
        want = base[name] + sum(0.7 * ref_breadcrumbs(x[name] - base[name], 0.5, 0.05) for x in xs)
        torch.testing.assert_close(t, want, rtol=1e-5, atol=1e-6, msg=name)


def test_della_from_a_recipe_is_keyed_by_seed_source_and_tensor(world, tmp_path):
    r = recipe(world, "della", options={"epsilon": 0.1})
    one, two = merge(r, tmp_path / "a"), merge(r, tmp_path / "b")
    assert all(torch.equal(one[n], two[n]) for n in one)
    other = merge(r.model_copy(update={"seed": 8}), tmp_path / "c")
    assert any(not torch.equal(one[n], other[n]) for n in one)
    base, xs = load(world / "base"), [load(world / f"ft{k}") for k in (1, 2, 3)]
    for name, t in one.items():
        ds = [0.7 * ref_della(x[name] - base[name], 0.5, 0.1, della_key(7, k, name)) for k, x in enumerate(xs)]
        total = sum(ds)
        pos = sum(d.clamp(min=0) for d in ds)
        neg = sum(d.clamp(max=0) for d in ds)
        want = base[name] + torch.where(total >= 0, pos, neg)
        torch.testing.assert_close(t, want, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    ("method", "options", "model", "words"),
    [
        ("della", {"gamma": 0.1}, None, "has no option 'gamma'"),
        ("breadcrumbs", {"gamma": 1.5}, None, "outside [0, 1]"),
        ("model_stock", None, {"weight": 0.5}, "takes no weights"),
        ("ties", None, {"density": 0.5}, "needs a weight"),
    ],
)
def test_recipe_rules_for_options_and_weights(world, method, options, model, words):
    with pytest.raises(EvohubError, match=words.replace("[", r"\[")):
        recipe(world, method, options=options, **(model or {}))


def test_export_to_mergekit(world):
    text = to_mergekit(recipe(world, "della", options={"epsilon": 0.05}))
    assert "merge_method: della" in text and "epsilon: 0.05" in text and "rescale: true" in text
    text = to_mergekit(recipe(world, "breadcrumbs_ties"))
    assert "merge_method: breadcrumbs_ties" in text and "gamma: 0.01" in text
    text = to_mergekit(recipe(world, "model_stock"))
    assert "merge_method: model_stock" in text and "weight" not in text and "filter_wise: false" in text


# ----------------------------------------------------------------------------------------------
# TSV-Merge


def ref_polar(a: np.ndarray) -> np.ndarray:
    """A·(AᵀA)^(−1/2): the orthogonal Procrustes factor, computed without an SVD of A."""
    lam, q = np.linalg.eigh(a.T @ a)
    return a @ (q / np.sqrt(lam)) @ q.T


def ref_tsv(base: torch.Tensor, xs: list[torch.Tensor], weights: list[float], fraction: float = 0.0) -> torch.Tensor:
    """TSV-M in float64 numpy: matrices by truncated SVD + Procrustes, other tensors the mean."""
    b = base.double().numpy()
    ds = [x.double().numpy() - b for x in xs]
    t = len(ds)
    if b.ndim != 2:
        return torch.from_numpy(b + sum(w * d for w, d in zip(weights, ds, strict=True)) / t).float()
    k = max(1, int((fraction or 1 / t) * min(b.shape)))
    svds = [np.linalg.svd(d, full_matrices=False) for d in ds]
    u = np.concatenate([s[0][:, :k] for s in svds], axis=1)
    sigma = np.concatenate([w * s[1][:k] for w, s in zip(weights, svds, strict=True)])
    v = np.concatenate([s[2][:k].T for s in svds], axis=1)
    return torch.from_numpy(b + ref_polar(u) @ np.diag(sigma) @ ref_polar(v).T).float()


def tasks(shape, t: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + 0.1 * torch.randn(shape, generator=g) for _ in range(t)]


@pytest.mark.parametrize("t", [2, 3])
@pytest.mark.parametrize("shape", [(12, 20), (21, 9)])
@pytest.mark.parametrize("fraction", [0.0, 0.2])
def test_tsv_is_the_formula(t, shape, fraction):
    base, xs = tasks(shape, t, seed=10 * t + shape[0])
    weights = [0.7, -0.4, 1.2][:t]
    got = run("tsv", base, xs, weights, [1.0] * t, rank=fraction)
    torch.testing.assert_close(got, ref_tsv(base, xs, weights, fraction), rtol=1e-4, atol=1e-5)
    # normalize divides by the mean weight: only the weights' ratios matter
    again = run("tsv", base, xs, [3 * w for w in weights], [1.0] * t, normalize=True, rank=fraction)
    want = base + (ref_tsv(base, xs, weights, fraction) - base) / (sum(weights) / t)
    torch.testing.assert_close(again, want, rtol=1e-4, atol=1e-5)
    # a weight scales its task's singular values: the same as scaling its task matrix first
    scaled = [base + w * (x - base) for w, x in zip(weights, xs, strict=True)]
    torch.testing.assert_close(run("tsv", base, scaled, [1.0] * t, [1.0] * t, rank=fraction), got, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(17,), (2, 3, 4)])
def test_tsv_takes_the_mean_of_tensors_that_are_not_matrices(shape):
    base, xs = tasks(shape, 3, seed=5)
    got = run("tsv", base, xs, [1.0, 0.5, -2.0], [1.0] * 3)
    want = base + sum(w * (x - base) for w, x in zip([1.0, 0.5, -2.0], xs, strict=True)) / 3
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, ref_tsv(base, xs, [1.0, 0.5, -2.0]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("t", "shape", "fraction"), [(2, (16, 30), 0.2), (3, (20, 30), 0.0), (3, (24, 24), 0.1)])
def test_tsv_rank_and_orthogonal_bases(t, shape, fraction):
    base, xs = tasks(shape, t, seed=t)
    k = operators.tsv_rank(shape, t, fraction)
    assert k == max(1, int((fraction or 1 / t) * min(shape)))
    assert t * k < min(shape)  # so that the rank bound says something
    delta = run("tsv", base, xs, [1.0] * t, [1.0] * t, rank=fraction) - base
    sv = torch.linalg.svdvals(delta.double())  # (θ_b + Δ) − θ_b in float32: rounding noise ~1e-7
    assert sv[t * k :].max() < 1e-5 * sv[0] and sv[t * k - 1] > 1e-2 * sv[0]
    # the decorrelated bases are orthonormal where the concatenated ones were not
    ds = [(x - base).float() for x in xs]
    us = torch.cat([torch.linalg.svd(d, full_matrices=False)[0][:, :k] for d in ds], 1)
    vs = torch.cat([torch.linalg.svd(d, full_matrices=False)[2][:k].mT for d in ds], 1)
    eye = torch.eye(t * k)
    assert (us.mT @ us - eye).abs().max() > 1e-2
    for concat in (us, vs):
        basis = operators.polar(concat)
        torch.testing.assert_close(basis.mT @ basis, eye, rtol=0, atol=1e-5)
        torch.testing.assert_close(
            basis, torch.from_numpy(ref_polar(concat.double().numpy())).float(), rtol=0, atol=1e-5
        )
        # the nearest orthonormal basis (Procrustes): closer than another one of the same span (QR's)
        q = torch.linalg.qr(concat)[0]
        assert torch.linalg.matrix_norm(basis - concat) < torch.linalg.matrix_norm(q - concat)


def test_tsv_of_tasks_in_orthogonal_subspaces_is_task_arithmetic():
    g = torch.Generator().manual_seed(6)
    base = torch.randn(12, 10, generator=g)
    d1, d2 = torch.zeros(12, 10), torch.zeros(12, 10)
    d1[:6, :5] = torch.randn(6, 5, generator=g)
    d2[6:, 5:] = torch.randn(6, 5, generator=g)
    got = run("tsv", base, [base + d1, base + d2], [0.6, 1.5], [1.0, 1.0])  # k = 5 = each task's rank
    torch.testing.assert_close(got, base + 0.6 * d1 + 1.5 * d2, rtol=1e-5, atol=1e-5)
    # is deterministic: the same input gives the same bits
    assert torch.equal(got, run("tsv", base, [base + d1, base + d2], [0.6, 1.5], [1.0, 1.0]))


def test_tsv_from_a_recipe_and_no_mergekit_export(world, tmp_path):
    r = recipe(world, "tsv", weight=1.0)
    assert Recipe.from_yaml(r.to_yaml()) == r
    got = merge(r, tmp_path / "tsv")
    base, xs = load(world / "base"), [load(world / f"ft{k}") for k in (1, 2, 3)]
    assert any(t.dim() == 2 for t in got.values()) and any(t.dim() == 1 for t in got.values())
    for name, t in got.items():
        torch.testing.assert_close(
            t, ref_tsv(base[name], [x[name] for x in xs], [1.0] * 3), rtol=1e-4, atol=1e-5, msg=name
        )
    with pytest.raises(EvohubError, match="mergekit has no equivalent of merge method 'tsv'"):
        to_mergekit(r)
