"""Merge methods as pure tensor functions (float32 in, float32 out).

Semantics (DESIGN.md; the same as mergekit's for the shared methods):

- ``linear``: Σ w_k θ_k (the base is not used).
- ``task_arithmetic``: θ_b + Σ w_k δ_k with task vectors δ_k = θ_k − θ_b.
- ``ties``: each δ_k keeps its top ``density`` fraction by magnitude, then sign election.
- ``dare_ties`` / ``dare_linear``: each entry of δ_k is kept with probability ``density`` and
  rescaled by 1/density; ``dare_ties`` then elects signs, ``dare_linear`` adds all.
- Sign election (ties, dare_ties): the weighted deltas w_k δ_k vote with their sum; per entry only
  the deltas agreeing with the sign of the sum (≥ 0 counts as +) are added.
- ``normalize``: divide by the sum of the weights (of the agreeing deltas, per entry, with
  sign election); a zero divisor leaves the sum as it is.
- ``slerp``: spherical interpolation of two whole tensors with t = w₁ / (w₀ + w₁); nearly
  collinear tensors (|cos| > 0.9995) are interpolated linearly.

DARE masks are counter-based: entry i of a tensor is kept iff ``hash32(i; key) < density·2³²``,
where the 64-bit key derives from (recipe seed, source index, tensor name) alone. The hash is
integer arithmetic that never overflows int64, so masks are identical on CPU and GPU, in any
tensor order, with any number of threads, and are computed on the tensor's own device.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch

METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp")
_M32 = 0xFFFFFFFF
_C1, _C2 = 0x7FEB352D, 0x31848BAB  # odd multipliers < 2^31: products of 32-bit values fit in int64
_CHUNK = 1 << 18
DOT_THRESHOLD = 0.9995
EPS = 1e-8


def dare_key(seed: int, source_index: int, tensor_name: str) -> tuple[int, int]:
    """The two 32-bit words keying one tensor's DARE mask."""
    digest = hashlib.blake2b(
        f"evohub-dare-v1\0{seed}\0{source_index}\0{tensor_name}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")


class Workspace:
    """Scratch buffers reused for every tensor, so merging allocates nothing per tensor."""

    def __init__(self, numel: int, count: int, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.numel = numel
        self._f32 = [
            torch.empty(numel, dtype=torch.float32, device=self.device) for _ in range(count)
        ]
        chunk = min(_CHUNK, max(numel, 1))
        self._i64 = [torch.empty(chunk, dtype=torch.int64, device=self.device) for _ in range(2)]
        self._mask = torch.empty(chunk, dtype=torch.bool, device=self.device)

    def f32(self, i: int, shape: Sequence[int]) -> torch.Tensor:
        n = math.prod(shape)
        if n > self.numel:
            raise ValueError(f"workspace holds {self.numel} elements, tensor needs {n}")
        return self._f32[i][:n].view(*shape)


def hash32_(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """In place: a 32-bit integer mix (xorshift-multiply) of int64 values in [0, 2³²)."""
    torch.bitwise_right_shift(x, 16, out=tmp)
    x.bitwise_xor_(tmp).mul_(_C1).bitwise_and_(_M32)
    torch.bitwise_right_shift(x, 15, out=tmp)
    x.bitwise_xor_(tmp).mul_(_C2).bitwise_and_(_M32)
    torch.bitwise_right_shift(x, 16, out=tmp)
    return x.bitwise_xor_(tmp)


def dare_(delta: torch.Tensor, density: float, key: tuple[int, int], ws: Workspace) -> torch.Tensor:
    """In place: keep each entry with probability ``density``, rescale survivors by 1/density."""
    if density >= 1:
        return delta
    if density <= 0:
        return delta.zero_()
    threshold = int(density * 2**32)
    flat = delta.view(-1)
    x_buf, t_buf = ws._i64
    m_buf = ws._mask
    for start in range(0, flat.numel(), x_buf.numel()):
        n = min(x_buf.numel(), flat.numel() - start)
        x, t, m = x_buf[:n], t_buf[:n], m_buf[:n]
        torch.arange(start, start + n, out=x)
        x.bitwise_xor_(key[0])
        hash32_(x, t).bitwise_xor_(key[1])
        hash32_(x, t)
        torch.lt(x, threshold, out=m)
        flat[start : start + n].mul_(m)
    return delta.div_(density)


def trim_(delta: torch.Tensor, density: float, ws: Workspace, slot: int) -> torch.Tensor:
    """In place: keep the k = max(1, ⌊density·n⌋) entries largest in magnitude (TIES).

    Exactly k entries survive; among entries tied with the k-th largest magnitude the ones with
    the lowest flat index are kept. ``slot`` is a free workspace buffer.
    """
    n = delta.numel()
    if density >= 1 or n == 0:
        return delta
    if density <= 0:
        return delta.zero_()
    k = max(1, int(density * n))
    mag = ws.f32(slot, (n,))
    torch.abs(delta.view(-1), out=mag)
    threshold = torch.kthvalue(mag, n - k + 1).values
    keep = mag > threshold
    room = k - int(keep.sum())
    tied = mag == threshold
    if room < int(tied.sum()):
        tied &= torch.cumsum(tied, 0) <= room
    keep |= tied
    return delta.mul_(keep.view_as(delta))


def workspace_slots(method: str, normalize: bool) -> int:
    """How many float32 buffers of the largest tensor's size ``method`` needs."""
    if method in ("ties", "dare_ties"):
        return 8 if normalize else 6
    if method in ("task_arithmetic", "dare_linear"):
        return 3
    return 2  # linear, slerp


def merge_deltas(
    method: str,
    base: torch.Tensor,
    sources: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    keys: Sequence[tuple[int, int]],
    normalize: bool,
    ws: Workspace,
) -> torch.Tensor:
    """task_arithmetic, ties, dare_ties, dare_linear on one tensor; returns a workspace view.

    ``base`` and ``sources`` may have any float dtype; arithmetic is float32 and the deltas are
    accumulated one source at a time, in source order.
    """
    shape = base.shape
    b, d, total = ws.f32(0, shape), ws.f32(1, shape), ws.f32(2, shape)
    b.copy_(base)
    total.zero_()
    elect = method in ("ties", "dare_ties")
    if elect:
        pos, neg, tmp = ws.f32(3, shape), ws.f32(4, shape), ws.f32(5, shape)
        pos.zero_()
        neg.zero_()
        if normalize:
            wpos, wneg = ws.f32(6, shape), ws.f32(7, shape)
            wpos.zero_()
            wneg.zero_()
    for x, w, density, key in zip(sources, weights, densities, keys, strict=True):
        torch.sub(x, b, out=d)  # promotes to float32
        if method == "ties":
            trim_(d, density, ws, slot=5)
        elif method in ("dare_ties", "dare_linear"):
            dare_(d, density, key, ws)
        d.mul_(w)
        total.add_(d)
        if elect:
            pos.add_(torch.clamp(d, min=0, out=tmp))
            neg.add_(torch.clamp(d, max=0, out=tmp))
            if normalize:
                wpos.add_(torch.gt(d, 0).float(), alpha=w)
                wneg.add_(torch.lt(d, 0).float(), alpha=w)
    if elect:
        up = total >= 0
        torch.where(up, pos, neg, out=total)
        if normalize:
            div = torch.where(up, wpos, wneg)
            div[div == 0] = 1
            total.div_(div)
    elif normalize:
        s = float(sum(weights))
        if abs(s) >= EPS:
            total.div_(s)
    return total.add_(b)


def linear(
    sources: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool, ws: Workspace
) -> torch.Tensor:
    """Σ w_k θ_k (divided by Σ w_k when ``normalize``); returns a workspace view."""
    out = ws.f32(0, sources[0].shape)
    out.zero_()
    x32 = ws.f32(1, sources[0].shape)
    for x, w in zip(sources, weights, strict=True):
        x32.copy_(x)
        out.add_(x32, alpha=w)
    s = float(sum(weights))
    if normalize and abs(s) >= EPS:
        out.div_(s)
    return out


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, ws: Workspace) -> torch.Tensor:
    """Spherical interpolation between two whole tensors (t = 0 gives ``v0``)."""
    a, b = ws.f32(0, v0.shape), ws.f32(1, v0.shape)
    a.copy_(v0)
    b.copy_(v1)
    na = torch.linalg.vector_norm(a).item()
    nb = torch.linalg.vector_norm(b).item()
    na = na if na > EPS else 1.0
    nb = nb if nb > EPS else 1.0
    dot = max(-1.0, min(1.0, (torch.dot(a.view(-1), b.view(-1)) / (na * nb)).item()))
    if abs(dot) > DOT_THRESHOLD:
        ca, cb = 1 - t, t
    else:
        theta = math.acos(dot)
        ca = math.sin((1 - t) * theta) / math.sin(theta)
        cb = math.sin(t * theta) / math.sin(theta)
    return a.mul_(ca).add_(b, alpha=cb)
