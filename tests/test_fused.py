"""The fused merge kernels equal the reference kernels element for element (docs/design.md#fused-merge-kernels).

Every task-vector method and ``linear``, with and without ``normalize``, in bfloat16 and float32,
on tensors large enough to take the fused path; TIES with many entries tied at its threshold
(bf16 deltas of few distinct values), so the tie cutoff inside the fused loop is exercised; DARE
masks bit-identical at the keep/drop boundary (densities 0, 1 and in between). The reference is the
same call with fusion turned off. Skipped where torch cannot compile (no C++ compiler).
"""

from __future__ import annotations

import shutil

import pytest
import torch

from evohub.merging import fused, kernels
from evohub.merging.methods import METHODS

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="torch.compile needs a C++ compiler on a CPU")  # fmt: skip

N = fused.MIN_NUMEL + 12_345  # over the threshold, not a multiple of any chunk


def _inputs(dtype: torch.dtype, k: int, coarse: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(N, generator=g).to(dtype)
    if coarse:  # deltas of a few distinct magnitudes: thousands of exact ties at any threshold
        xs = [(base.float() + torch.randint(-3, 4, (N,), generator=g).float() / 64).to(dtype) for _ in range(k)]
    else:
        xs = [(base.float() + 0.02 * torch.randn(N, generator=g)).to(dtype) for _ in range(k)]
    return base, xs


def _both(monkeypatch, fn):
    """(fused result, reference result) of ``fn()``, and checks the fused path really ran."""
    calls = []
    real = fused._run

    def spy(*a):
        done = real(*a)
        calls.append(done)
        return done

    monkeypatch.setattr(fused, "_run", spy)
    got = fn()
    assert calls and all(calls), "the fused kernel did not run"
    monkeypatch.setitem(fused._state, "enabled", False)
    want = fn()
    monkeypatch.setitem(fused._state, "enabled", True)
    return got, want


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_ties", "dare_linear"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_deltas_equal_reference(monkeypatch, method, normalize, dtype):
    m = METHODS.get(method)
    base, xs = _inputs(dtype, 3, coarse=method == "ties")
    weights, densities = [0.7, -0.4, 0.5], [0.35, 1.0, 0.6]
    keys = [kernels.dare_key(3, i, "model.layers.0.mlp.up_proj.weight") for i in range(3)]

    def run():
        out = torch.empty(N, dtype=dtype)
        ws = kernels.Workspace(kernels.slots_for(m, normalize), chunk=1 << 16)
        return kernels.merge_deltas(m, base, xs, weights, densities, keys, normalize, out, ws)

    got, want = _both(monkeypatch, run)
    assert torch.equal(got, want)
    assert not torch.equal(got, base)


def test_fused_dare_masks_are_the_reference_masks(monkeypatch):
    """Sources 1, 2, 4 over a zero base with weight = density (DARE's scale w/density is then
    exactly 1): the output's bits say which sources survived at each entry."""
    m = METHODS.get("dare_linear")
    base = torch.zeros(N)
    xs = [torch.ones(N), torch.full((N,), 2.0), torch.full((N,), 4.0)]
    keys = [kernels.dare_key(9, i, "t") for i in range(3)]
    for densities in ([0.0, 1.0, 0.5], [1e-6, 0.999999, 0.37]):

        def run(densities=densities):
            ws = kernels.Workspace(3, chunk=1 << 16)
            out = torch.empty(N)
            return kernels.merge_deltas(m, base, xs, densities, densities, keys, False, out, ws)

        got, want = _both(monkeypatch, run)
        assert torch.equal(got, want)
        ref = torch.zeros(N)
        for x, d, key in zip(xs, densities, keys, strict=True):
            ws = kernels.Workspace(0, chunk=N)
            ref += kernels.dare_mask_(x.clone(), 0, d, key, ws) * (1.0 if d > 0 else 0.0)
        assert torch.equal(got, ref)
        kept = [float(((got.long() >> i) & 1).float().mean()) for i in range(3)]
        assert all(abs(k - min(d, 1.0)) < 0.01 for k, d in zip(kept, densities, strict=True)), kept


@pytest.mark.parametrize("normalize", [False, True])
def test_fused_linear_equals_reference(monkeypatch, normalize):
    _, xs = _inputs(torch.bfloat16, 3)
    ws = kernels.Workspace(1, chunk=1 << 16)
    got, want = _both(
        monkeypatch,
        lambda: kernels.linear(xs, [0.5, 0.3, 0.4], normalize, torch.empty(N, dtype=torch.bfloat16), ws),
    )
    assert torch.equal(got, want)


def test_small_and_strided_tensors_use_the_reference(monkeypatch):
    m = METHODS.get("dare_ties")
    small = torch.randn(100)
    assert not fused.merge_deltas(m, small, [small], [2.0], [1.0], [0.5], [(1, 2)], False, torch.empty(100), None)
    wide = torch.empty(2, N)[:, : N // 2]  # not contiguous: never written through a copy
    assert not fused._run(lambda *a: None, wide)


def test_fusion_is_used_where_compiling_pays(monkeypatch, tmp_path):
    """Evolution's resident merge always fuses (compiled once, run per candidate); a one-shot
    merge only from fused.MIN_WORK source entries, or when EVOHUB_FUSED=1 forces it."""
    assert fused.worth_it(0, amortised=True)
    assert not fused.worth_it(fused.MIN_WORK - 1, amortised=False)
    assert fused.worth_it(fused.MIN_WORK, amortised=False)
    monkeypatch.setattr(fused, "_MODE", "1")
    assert fused.worth_it(1, amortised=False)
    monkeypatch.setitem(fused._state, "enabled", False)  # EVOHUB_FUSED=0, or no compiler
    assert not fused.worth_it(fused.MIN_WORK, amortised=True)
