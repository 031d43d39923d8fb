"""Kernels of the newer merge operators: DELLA, Model Breadcrumbs, Model Stock and TSV-Merge.

Their registry entries are in :mod:`evohub.merging.methods.operators`; the definitions, papers and
the keying of DELLA's masks are in docs/design.md#merge-methods. Each kernel has the signature of
:func:`evohub.merging.kernels.merge_deltas` and works on whole tensors in float32 (a sort or a
norm of the whole task vector is part of each definition), so it takes a few float32 copies of a
tensor of scratch memory; these methods have no fused kernels.

- ``della`` / ``della_linear``: per task vector, per row (the whole tensor when 1-D), entries
  ranked by |δ| (ascending; ties: lower flat index first) get keep probabilities
  p = clamp(density − ε + 2ε·rank/(m − 1), 0, 1); entry i is kept iff
  ``hash32(i; key) < ⌊p·2³²⌋`` (the DARE hash, keyed in the ``della`` domain) and rescaled by 1/p.
- ``breadcrumbs`` / ``breadcrumbs_ties``: per task vector, the ⌊γ·n⌋ entries largest in |δ| and
  then the smallest are dropped so that ⌊density·n⌋ remain (ties: lower flat index counts larger).
- ``model_stock``: θ_b + t·mean_k δ_k with t = K·cosθ / (1 + (K − 1)·cosθ), cosθ the mean pairwise
  cosine of the deltas over the whole tensor.
- ``tsv`` (TSV-Merge): per 2-D tensor, each task matrix's top-k singular triplets (k = ⌊min(m, n)/T⌋
  by default), σ scaled by the model's weight, concatenated; the concatenated U and V are each
  replaced by their orthogonal Procrustes factor P·Qᵀ and the delta is U⊥·diag(σ)·V⊥ᵀ. Other
  tensors take the mean of the weighted deltas. SVDs in float32 (``torch.linalg.svd``).

Sparsified deltas are then weighted, optionally sign-elected and normalised exactly as the
``deltas`` kernel does (:func:`combine`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evohub.merging.kernels import EPS, Workspace, _hash_chunk
from evohub.merging.methods import MergeMethod


def _delta(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1).float() - base.reshape(-1).float()


def della_probabilities(d: torch.Tensor, shape: Sequence[int], density: float, epsilon: float) -> torch.Tensor:
    """DELLA's keep probability of each entry of the flat delta ``d`` (float64, flat).

    Per row of ``shape`` (the whole tensor when it has fewer than two dimensions), entries are
    ranked by |δ| ascending (stable: ties rank by flat index); rank r of m gets
    p = density − ε + 2ε·r/(m − 1), clamped to [0, 1] (a row of one entry gets p = density).
    """
    rows = d.view(shape[0], -1) if len(shape) >= 2 else d.view(1, -1)
    m = rows.shape[1]
    order = torch.argsort(rows.abs(), dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(m, device=d.device).expand_as(order))
    spread = ranks.double() / (m - 1) if m > 1 else torch.full_like(ranks, 0.5, dtype=torch.float64)
    return (density - epsilon + 2 * epsilon * spread).clamp_(0, 1).view(-1)


def della_sparsify(
    d: torch.Tensor, shape: Sequence[int], density: float, epsilon: float, key: tuple[int, int], ws: Workspace
) -> torch.Tensor:
    """DELLA's MAGPRUNE on the flat float32 delta ``d`` (a new tensor): entry i is kept iff
    ``hash32(i; key) < ⌊p_i·2³²⌋`` and divided by its p_i; density ≥ 1 keeps ``d`` whole."""
    if density >= 1:
        return d.clone()
    if density <= 0:
        return torch.zeros_like(d)
    p = della_probabilities(d, shape, density, epsilon)
    h = torch.empty(d.numel(), dtype=torch.int64, device=d.device)
    tmp = torch.empty(min(ws.chunk, d.numel()), dtype=torch.int64, device=d.device)
    for s, e in ws.spans(d.numel()):
        _hash_chunk(h[s:e], tmp[: e - s], s, key, ws)
    keep = h.double() < torch.floor(p * 2.0**32)  # p = density: exactly DARE's ⌊density·2³²⌋
    return torch.where(keep, d / p.float(), torch.zeros((), dtype=d.dtype, device=d.device))


def breadcrumbs_sparsify(d: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Model Breadcrumbs on the flat float32 delta ``d`` (a new tensor): drop the ⌊γ·n⌋ entries
    largest in |δ| (fewer when ⌊density·n⌋ would not remain), keep the next ⌊density·n⌋, drop the
    rest. Ties are broken by flat index, the lower one counting larger, as in TIES."""
    n = d.numel()
    if density >= 1:
        return d.clone()
    keep_n = int(density * n)
    top = min(int(gamma * n), n - keep_n)
    order = torch.argsort(d.abs(), descending=True, stable=True)
    out = torch.zeros_like(d)
    kept = order[top : top + keep_n]
    out[kept] = d[kept]
    return out


def combine(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    weights: Sequence[float],
    elect: bool,
    normalize: bool,
    out: torch.Tensor,
) -> torch.Tensor:
    """θ_b + the sum of the weighted sparsified deltas, with the ``deltas`` kernel's sign election
    and ``normalize`` (docs/design.md#merge-methods), written into ``out``."""
    total = torch.zeros_like(deltas[0])
    pos, neg = torch.zeros_like(total), torch.zeros_like(total)
    wpos, wneg = torch.zeros_like(total), torch.zeros_like(total)
    for d, w in zip(deltas, weights, strict=True):
        wd = d * w
        total += wd
        if elect:
            pos += wd.clamp(min=0)
            neg += wd.clamp(max=0)
            if normalize:
                wpos += (wd > 0).float() * w
                wneg += (wd < 0).float() * w
    if elect:
        up = total >= 0
        total = torch.where(up, pos, neg)
        if normalize:
            div = torch.where(up, wpos, wneg)
            total /= div.masked_fill_(div == 0, 1)
    elif normalize and abs(float(sum(weights))) >= EPS:
        total /= float(sum(weights))
    return out.copy_((total + base.reshape(-1).float()).view(out.shape))


def della(method: MergeMethod, base, sources, weights, densities, keys, normalize, out, ws, tables=None):
    """DELLA (arXiv 2406.11617): MAGPRUNE each task vector, then sign election when the entry
    has ``consensus`` (``della``), plain addition when not (``della_linear``)."""
    eps = method.option("epsilon")
    ds = [
        della_sparsify(_delta(x, base), tuple(base.shape), dens, eps, key, ws)
        for x, dens, key in zip(sources, densities, keys, strict=True)
    ]
    return combine(base, ds, weights, method.consensus, normalize, out)


def breadcrumbs(method: MergeMethod, base, sources, weights, densities, keys, normalize, out, ws, tables=None):
    """Model Breadcrumbs (arXiv 2312.06795): drop each task vector's largest ``gamma`` fraction
    and its smallest, keep ``density``; sign election with ``consensus`` (``breadcrumbs_ties``)."""
    gamma = method.option("gamma")
    ds = [breadcrumbs_sparsify(_delta(x, base), dens, gamma) for x, dens in zip(sources, densities, strict=True)]
    return combine(base, ds, weights, method.consensus, normalize, out)


def stock_ratio(deltas: Sequence[torch.Tensor]) -> float:
    """Model Stock's t = K·cosθ / (1 + (K − 1)·cosθ), cosθ the mean pairwise cosine of the
    deltas (each norm product at least 1e-6, each cosine clamped to [−1, 1]); 0 where the
    denominator vanishes."""
    k = len(deltas)
    norms = [float(torch.linalg.vector_norm(d)) for d in deltas]
    cosines = [
        max(-1.0, min(1.0, float(torch.dot(deltas[i], deltas[j])) / max(norms[i] * norms[j], 1e-6)))
        for i in range(k)
        for j in range(i + 1, k)
    ]
    cos = sum(cosines) / len(cosines)
    denom = 1 + (k - 1) * cos
    return k * cos / denom if abs(denom) > EPS else 0.0


def model_stock(method: MergeMethod, base, sources, weights, densities, keys, normalize, out, ws, tables=None):
    """Model Stock (arXiv 2403.19522): θ_b + t·(mean of the fine-tuned models − θ_b), t from the
    angle between the task vectors (:func:`stock_ratio`); weights and densities are not read."""
    ds = [_delta(x, base) for x in sources]
    t = stock_ratio(ds)
    mean = torch.stack(ds).mean(0)
    return out.copy_((base.reshape(-1).float() + t * mean).view(out.shape))


def polar(a: torch.Tensor) -> torch.Tensor:
    """The orthogonal Procrustes factor P·Qᵀ of ``a`` = P·Σ·Qᵀ (thin SVD): the (semi-)orthogonal
    matrix nearest to ``a`` in Frobenius norm, TSV-M's decorrelation of concatenated bases."""
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


def tsv_rank(shape: Sequence[int], tasks: int, fraction: float) -> int:
    """Singular components kept per task: max(1, ⌊f·min(m, n)⌋), f = ``fraction`` or, when it is
    0, 1/T (the paper's choice: the T truncated bases then fill the matrix's rank)."""
    f = fraction if fraction > 0 else 1.0 / tasks
    return max(1, int(f * min(shape[0], shape[1])))


def tsv_delta(deltas: Sequence[torch.Tensor], weights: Sequence[float], k: int) -> torch.Tensor:
    """TSV-M's merged task matrix from the 2-D float32 task matrices ``deltas``: each task's top-k
    singular triplets (σ scaled by its weight) are concatenated, U and V each replaced by their
    Procrustes factor, and U⊥·diag(w·σ)·V⊥ᵀ returned (rank ≤ T·k)."""
    us, ss, vs = [], [], []
    for d, w in zip(deltas, weights, strict=True):
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k] * w)
        vs.append(vh[:k].mT)
    u_perp, v_perp = polar(torch.cat(us, 1)), polar(torch.cat(vs, 1))
    return (u_perp * torch.cat(ss)) @ v_perp.mT


def tsv(method: MergeMethod, base, sources, weights, densities, keys, normalize, out, ws, tables=None):
    """TSV-Merge (Task Singular Vectors, arXiv 2412.00081) in float32: a 2-D tensor gets
    θ_b + :func:`tsv_delta` (per-task rank from option ``rank``, :func:`tsv_rank`); any other tensor
    (norms, biases) θ_b + (1/T)·Σ w_k δ_k, the paper's task-arithmetic mean. ``normalize`` divides
    the merged delta by the mean weight (all-equal weights then give the paper's TSV-M)."""
    ds = [_delta(x, base) for x in sources]
    if base.dim() == 2:
        k = tsv_rank(base.shape, len(ds), method.option("rank"))
        merged = tsv_delta([d.view(base.shape) for d in ds], weights, k).reshape(-1)
    else:
        merged = sum(d * w for d, w in zip(ds, weights, strict=True)) / len(ds)
    mean_w = float(sum(weights)) / len(weights)
    if normalize and abs(mean_w) >= EPS:
        merged = merged / mean_w
    return out.copy_((base.reshape(-1).float() + merged).view(out.shape))
