"""Merge kernels: pure tensor functions, float32 arithmetic, any storage dtype in and out.

What each method means is its registry entry (:mod:`evohub.merging.methods`); :func:`apply` runs the
entry's kernel. Semantics (docs/design.md#merge-methods; the same as mergekit's for the shared
methods):

- ``linear``: Σ w_k θ_k (the base is not used).
- ``task_arithmetic``: θ_b + Σ w_k δ_k with task vectors δ_k = θ_k − θ_b.
- ``ties``: each δ_k keeps its k = max(1, ⌊density·n⌋) entries largest in magnitude (exactly k;
  among entries tied at the threshold, the lowest flat indices), then sign election.
- ``dare_ties`` / ``dare_linear``: each entry of δ_k is kept with probability ``density`` and
  rescaled by 1/density; ``dare_ties`` then elects signs, ``dare_linear`` adds all.
- Sign election (ties, dare_ties): the weighted deltas w_k δ_k vote with their sum; per entry only
  the deltas agreeing with the sign of the sum (≥ 0 counts as +) are added.
- ``normalize``: divide by the sum of the weights (of the agreeing deltas, per entry, with
  sign election); a zero divisor leaves the sum as it is.
- ``slerp``: spherical interpolation of two whole tensors with t = w₁ / (w₀ + w₁); nearly
  collinear tensors (|cos| > 0.9995) are interpolated linearly.

Every method streams over a tensor in chunks of ``Workspace.chunk`` elements, so the passes over
memory stay in cache on a CPU and the scratch space is a few chunks, not a few tensors. Results
do not depend on the chunk size, since everything per entry is elementwise and TIES thresholds
are found exactly in a first pass; only slerp's norms are sums of per-chunk float32 sums.

DARE masks are counter-based (docs/design.md#dare-masks): entry i of a tensor is kept iff ``hash32(i; key) < density·2³²``,
where the 64-bit key derives from (recipe seed, source index, tensor name) alone. The hash is
integer arithmetic that never overflows int64, so masks are identical on CPU and GPU, in any
tensor order, with any chunk size and any number of threads, and are computed on the device.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from evohub.merging import fused
from evohub.merging.methods import MergeMethod

_M32 = 0xFFFFFFFF
_C1, _C2 = 0x7FEB352D, 0x31848BAB  # odd multipliers < 2^31: products of 32-bit values fit in int64
DOT_THRESHOLD = 0.9995
EPS = 1e-8
#: Elements per chunk: cache-sized on a CPU; on a GPU large, to keep kernel launches few.
CHUNK = {"cpu": 1 << 19, "cuda": 1 << 26}


def dare_key(seed: int, source_index: int, tensor_name: str, domain: str = "dare") -> tuple[int, int]:
    """The two 32-bit words keying one tensor's DARE mask (``domain``: another method's masks,
    e.g. ``della``, drawn from the same hash but independent of DARE's)."""
    tag = f"evohub-{domain}-v1\0{seed}\0{source_index}\0{tensor_name}"
    digest = hashlib.blake2b(tag.encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")


def slots_for(method: MergeMethod, normalize: bool) -> int:
    """Float32 chunk buffers ``method`` needs."""
    if method.kernel in ("linear", "slerp"):
        return 1
    if method.kernel != "deltas":
        return 8  # a plug-in kernel gets the most any built-in uses
    if method.consensus:
        return 8 if normalize else 6
    return 3


def resolve_device(device: torch.device | str) -> torch.device:
    """``cuda`` → ``cuda:<current>``, so devices compare equal to tensors' devices."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


class Workspace:
    """Chunk-sized scratch buffers, reused for every chunk of every tensor."""

    def __init__(self, slots: int, device: torch.device | str = "cpu", chunk: int | None = None, fuse: bool = True):
        self.device = resolve_device(device)
        #: whether tensors large enough go through the fused kernels (:func:`fused.worth_it`)
        self.fuse = fuse
        self.chunk = chunk or CHUNK.get(self.device.type, CHUNK["cuda"])
        dev = self.device
        self.mask_slot = slots  # one more float32 buffer, for DARE's keep mask
        self._f32 = [torch.empty(self.chunk, dtype=torch.float32, device=dev) for _ in range(slots + 1)]
        self._i64 = [torch.empty(self.chunk, dtype=torch.int64, device=dev) for _ in range(2)]
        self._iota = torch.arange(self.chunk, dtype=torch.int64, device=dev)
        self._bool = [torch.empty(self.chunk, dtype=torch.bool, device=dev) for _ in range(2)]

    def f32(self, i: int, n: int) -> torch.Tensor:
        return self._f32[i][:n]

    def spans(self, n: int) -> Iterator[tuple[int, int]]:
        for start in range(0, n, self.chunk):
            yield start, min(start + self.chunk, n)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1) if not t.is_contiguous() else t.view(-1)


def _hash32_(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """In place: a 32-bit integer mix (xorshift-multiply) of int64 values in [0, 2³²)."""
    torch.bitwise_right_shift(x, 16, out=tmp)
    x.bitwise_xor_(tmp).mul_(_C1).bitwise_and_(_M32)
    torch.bitwise_right_shift(x, 15, out=tmp)
    x.bitwise_xor_(tmp).mul_(_C2).bitwise_and_(_M32)
    torch.bitwise_right_shift(x, 16, out=tmp)
    return x.bitwise_xor_(tmp)


def _hash_chunk(x: torch.Tensor, t: torch.Tensor, start: int, key: tuple[int, int], ws: Workspace) -> torch.Tensor:
    """hash32 of the flat indices start .. start + len(x), keyed, into ``x`` (int64)."""
    torch.add(ws._iota[: x.numel()], start, out=x)
    x.bitwise_xor_(key[0])
    _hash32_(x, t).bitwise_xor_(key[1])
    return _hash32_(x, t)


def dare_table(n: int, key: tuple[int, int], ws: Workspace) -> torch.Tensor:
    """The whole DARE hash of an n-entry tensor, stored as int32 (hash − 2³¹), on ws's device.

    Evolution re-merges the same tensors with other densities; with this table a mask costs one
    comparison per entry instead of the hash (4 bytes per entry per source of memory).
    """
    table = torch.empty(n, dtype=torch.int32, device=ws.device)
    for s, e in ws.spans(n):
        x = _hash_chunk(ws._i64[0][: e - s], ws._i64[1][: e - s], s, key, ws)
        table[s:e].copy_(x.sub_(2**31))
    return table


def dare_mask_(
    d: torch.Tensor,
    start: int,
    density: float,
    key: tuple[int, int],
    ws: Workspace,
    table: torch.Tensor | None = None,
) -> torch.Tensor:
    """In place on a flat chunk whose first entry has flat index ``start``: zero each entry with
    probability 1 − ``density`` (the survivors are not rescaled here; see :func:`dare_`).

    ``table`` is the tensor's :func:`dare_table` when one was kept: the same mask, faster.
    """
    if density >= 1:
        return d
    if density <= 0:
        return d.zero_()
    n = d.numel()
    keep = ws.f32(ws.mask_slot, n)  # 1.0 / 0.0: multiplying by it beats a bool mask
    threshold = int(density * 2**32)
    if table is not None:
        torch.lt(table[start : start + n], threshold - 2**31, out=keep)
    else:
        torch.lt(_hash_chunk(ws._i64[0][:n], ws._i64[1][:n], start, key, ws), threshold, out=keep)
    return d.mul_(keep)


def dare_(d: torch.Tensor, start: int, density: float, key: tuple[int, int], ws: Workspace) -> torch.Tensor:
    """DARE on a flat chunk: keep each entry with probability ``density``, rescale by 1/density."""
    dare_mask_(d, start, density, key, ws)
    return d.div_(density) if 0 < density < 1 else d


# ----------------------------------------------------------------------------------------------
# TIES trimming: an exact top-k threshold by radix selection on float bits


@dataclass(frozen=True)
class Trim:
    """Keep entries whose |δ| bits exceed ``bits``, and those equal with flat index <= ``cutoff``."""

    bits: int
    cutoff: int


def _abs_bits(x: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """int32 bit patterns of |x − b| (float32): for non-negative floats they sort like the values."""
    return out.copy_(x).sub_(b).abs_().view(torch.int32)


def trim_threshold(x: torch.Tensor, base: torch.Tensor, density: float, ws: Workspace, slot: int) -> Trim | None:
    """Where TIES cuts δ = x − base: None keeps everything, else a :class:`Trim`.

    A radix select on the float32 bit patterns of |δ|: a histogram of their top 16 bits finds
    the bucket holding the k-th largest, one of the low 16 bits inside the bucket the exact
    pattern, and the flat index of the last tie kept (the lowest indices win).
    """
    n = x.numel()
    if density >= 1 or n == 0:
        return None
    if density <= 0:
        return Trim(bits=2**31 - 1, cutoff=-1)  # nothing is above the largest bit pattern
    k = max(1, int(density * n))
    xf, bf = _flat(x), _flat(base)
    dev = ws.device
    hi = torch.zeros(1 << 15, dtype=torch.int64, device=dev)
    for s, e in ws.spans(n):
        bits = _abs_bits(xf[s:e], bf[s:e], ws.f32(slot, e - s))
        hi += torch.bincount(torch.bitwise_right_shift(bits, 16), minlength=1 << 15)
    bucket, above = _select(hi, k)
    lo_per_span = []  # low-16-bit histograms inside the bucket, per span (to place ties later)
    for s, e in ws.spans(n):
        bits = _abs_bits(xf[s:e], bf[s:e], ws.f32(slot, e - s))
        inside = bits[torch.bitwise_right_shift(bits, 16) == bucket]
        lo_per_span.append(torch.bincount(torch.bitwise_and(inside, 0xFFFF), minlength=1 << 16))
    lo = torch.stack(lo_per_span).sum(0)
    low, above_lo = _select(lo, k - above)
    threshold = (bucket << 16) | low
    room = k - above - above_lo  # entries equal to the threshold that are kept
    if room >= int(lo[low]):
        return Trim(bits=threshold, cutoff=n)
    tied_before = torch.cumsum(torch.stack([h[low] for h in lo_per_span]), 0).tolist()
    i = next(j for j, c in enumerate(tied_before) if c >= room)  # the span holding the cutoff
    s, e = i * ws.chunk, min((i + 1) * ws.chunk, n)
    bits = _abs_bits(xf[s:e], bf[s:e], ws.f32(slot, e - s))
    tied = (bits == threshold).nonzero().view(-1)
    seen = int(tied_before[i - 1]) if i else 0
    return Trim(bits=threshold, cutoff=s + int(tied[room - seen - 1]))


def _select(counts: torch.Tensor, k: int) -> tuple[int, int]:
    """The bucket holding the k-th largest entry, and how many entries lie in higher buckets."""
    above = torch.cumsum(counts.flip(0), 0).flip(0) - counts  # entries in strictly higher buckets
    bucket = int(torch.nonzero((above < k) & (above + counts >= k)).max())
    return bucket, int(above[bucket])


def _apply_trim(d: torch.Tensor, start: int, trim: Trim, ws: Workspace, slot: int) -> None:
    bits = torch.abs(d, out=ws.f32(slot, d.numel())).view(torch.int32)
    end = start + d.numel()
    keep = ws._bool[1][: d.numel()]
    if trim.cutoff >= end - 1:
        torch.ge(bits, trim.bits, out=keep)
    elif trim.cutoff < start:
        torch.gt(bits, trim.bits, out=keep)
    else:
        tied_ok = (bits == trim.bits) & (torch.arange(start, end, device=d.device) <= trim.cutoff)
        torch.gt(bits, trim.bits, out=keep).logical_or_(tied_ok)
    d.mul_(keep)


# ----------------------------------------------------------------------------------------------
# Whole tensors


def merge_deltas(
    method: MergeMethod,
    base: torch.Tensor,
    sources: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    keys: Sequence[tuple[int, int]],
    normalize: bool,
    out: torch.Tensor,
    ws: Workspace,
    tables: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """A task-vector method (the ``deltas`` kernel) on one tensor, written into ``out``.

    Inputs and ``out`` may have any float dtype and must be on the workspace's device; the
    arithmetic is float32, accumulating the deltas one source at a time, in source order.
    (One function on purpose, over 60 lines: it is the fused per-chunk loop of every task-vector
    method — sparsify, weight, elect, sum in one pass over each chunk — and splitting it would
    add passes over memory or hide the loop that issue-level kernel work has to read.)
    ``tables`` are the sources' :func:`dare_table` where kept (same result, faster).
    """
    n = base.numel()
    elect = method.consensus
    dare = method.sparsify == "random"
    # DARE's 1/density rescale is folded into the weight: one pass less per source
    scales = [w / dens if dare and 0 < dens < 1 else w for w, dens in zip(weights, densities, strict=True)]
    trims = (
        [trim_threshold(x, base, dens, ws, slot=1) for x, dens in zip(sources, densities, strict=True)]
        if method.sparsify == "magnitude"
        else None
    )
    if ws.fuse and fused.merge_deltas(method, base, sources, scales, weights, densities, keys, normalize, out, trims):
        return out
    bf, of = _flat(base), _flat(out)
    xs = [_flat(x) for x in sources]
    for s, e in ws.spans(n):
        m = e - s
        d, total = ws.f32(0, m), ws.f32(1, m)
        if elect:
            pos, neg, tmp = ws.f32(2, m), ws.f32(3, m), ws.f32(4, m)
            if normalize:
                wpos, wneg = ws.f32(6, m), ws.f32(7, m)
                wpos.zero_()
                wneg.zero_()
        b = ws.f32(2 if not elect else 5, m).copy_(bf[s:e])  # float32, so x − b is float32
        for k, (x, w) in enumerate(zip(xs, weights, strict=True)):
            torch.sub(x[s:e], b, out=d)
            if trims is not None:
                if trims[k] is not None:
                    _apply_trim(d, s, trims[k], ws, slot=4)
            elif dare:
                dare_mask_(d, s, densities[k], keys[k], ws, tables[k] if tables else None)
            # weighted deltas, summed in source order; the first initialises the sums
            if k == 0:
                torch.mul(d, scales[k], out=total)
                if elect:
                    torch.clamp(total, min=0, out=pos)
                    torch.clamp(total, max=0, out=neg)
            else:
                d.mul_(scales[k])
                total.add_(d)
                if elect:
                    pos.add_(torch.clamp(d, min=0, out=tmp))
                    neg.add_(torch.clamp(d, max=0, out=tmp))
            if elect and normalize:
                weighted = total if k == 0 else d  # this source's weighted delta
                wpos.add_(torch.gt(weighted, 0, out=ws._bool[1][:m]), alpha=w)
                wneg.add_(torch.lt(weighted, 0, out=ws._bool[1][:m]), alpha=w)
        if elect:
            # total ≥ 0 ? pos : neg, by arithmetic on a 1/0 mask (exact: one term is ±0), which
            # is several times faster on a CPU than torch.where with a random mask
            up = torch.ge(total, 0, out=ws.f32(ws.mask_slot, m))
            pos.mul_(up)
            if normalize:
                wpos.mul_(up)
            down = up.sub_(1)  # 0 where up, -1 where not
            torch.sub(pos, neg.mul_(down), out=total)
            if normalize:
                div = wpos.sub_(wneg.mul_(down))
                div.masked_fill_(div == 0, 1)
                total.div_(div)
        elif normalize:
            sw = float(sum(weights))
            if abs(sw) >= EPS:
                total.div_(sw)
        of[s:e].copy_(total.add_(b))
    return out


def linear(
    sources: Sequence[torch.Tensor],
    weights: Sequence[float],
    normalize: bool,
    out: torch.Tensor,
    ws: Workspace,
) -> torch.Tensor:
    """Σ w_k θ_k (divided by Σ w_k when ``normalize``), written into ``out``."""
    if ws.fuse and fused.linear(sources, weights, normalize, out):
        return out
    xs = [_flat(x) for x in sources]
    of = _flat(out)
    sw = float(sum(weights))
    for s, e in ws.spans(of.numel()):
        acc = ws.f32(0, e - s).zero_()
        for x, w in zip(xs, weights, strict=True):
            acc.add_(x[s:e], alpha=w)
        if normalize and abs(sw) >= EPS:
            acc.div_(sw)
        of[s:e].copy_(acc)
    return out


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, out: torch.Tensor, ws: Workspace) -> torch.Tensor:
    """Spherical interpolation between two whole tensors (t = 0 gives ``v0``), into ``out``."""
    a, b, of = _flat(v0), _flat(v1), _flat(out)
    aa = bb = ab = 0.0
    for s, e in ws.spans(a.numel()):
        x = ws.f32(0, e - s).copy_(a[s:e])
        y = b[s:e].float()
        aa += float(torch.dot(x, x))
        bb += float(torch.dot(y, y))
        ab += float(torch.dot(x, y))
    na = math.sqrt(aa) if math.sqrt(aa) > EPS else 1.0
    nb = math.sqrt(bb) if math.sqrt(bb) > EPS else 1.0
    dot = max(-1.0, min(1.0, ab / (na * nb)))
    if abs(dot) > DOT_THRESHOLD:
        ca, cb = 1 - t, t
    else:
        theta = math.acos(dot)
        ca = math.sin((1 - t) * theta) / math.sin(theta)
        cb = math.sin(t * theta) / math.sin(theta)
    for s, e in ws.spans(a.numel()):
        acc = ws.f32(0, e - s).copy_(a[s:e]).mul_(ca)
        of[s:e].copy_(acc.add_(b[s:e], alpha=cb))
    return out


def apply(
    method: MergeMethod,
    base: torch.Tensor | None,
    sources: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    keys: Sequence[tuple[int, int]],
    normalize: bool,
    out: torch.Tensor,
    ws: Workspace,
    tables: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Run ``method``'s kernel on one tensor (``base`` is None for methods without a base)."""
    if method.kernel == "linear":
        return linear(sources, weights, normalize, out, ws)
    if method.kernel == "slerp":
        return slerp(weights[1] / (weights[0] + weights[1]), sources[0], sources[1], out, ws)
    if method.kernel == "deltas":
        assert base is not None
        return merge_deltas(method, base, sources, weights, densities, keys, normalize, out, ws, tables)
    kernel = method.kernel
    if isinstance(kernel, str):  # "module:function", imported when first used (the registry stays light)
        module, _, name = kernel.partition(":")
        kernel = getattr(importlib.import_module(module), name)
    return kernel(method, base, sources, weights, densities, keys, normalize, out, ws, tables)
