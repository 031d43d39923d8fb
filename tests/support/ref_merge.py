"""A plain, independent reference of the merge semantics in docs/design.md, for tests.

Written for clarity, not speed: whole stacked tensors, numpy for the DARE hash (Python-int
semantics, no overflow questions), a stable sort for TIES trimming.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch


def ref_key(seed: int, index: int, name: str) -> tuple[int, int]:
    d = hashlib.blake2b(f"evohub-dare-v1\0{seed}\0{index}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(d[:4], "little"), int.from_bytes(d[4:], "little")


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(0xFFFFFFFF)
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x31848BAB)) & np.uint64(0xFFFFFFFF)
    return x ^ (x >> np.uint64(16))


def ref_keep(n: int, key: tuple[int, int], density: float) -> torch.Tensor:
    i = np.arange(n, dtype=np.uint64)
    u = _mix(_mix(i ^ np.uint64(key[0])) ^ np.uint64(key[1]))
    return torch.from_numpy(u < np.uint64(int(density * 2**32)))


def ref_trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    n = delta.numel()
    if density >= 1:
        return delta.clone()
    k = max(1, int(density * n))
    order = torch.sort(delta.abs().reshape(-1), descending=True, stable=True).indices[:k]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order] = True
    return delta * mask.reshape(delta.shape)


def ref_dare(delta: torch.Tensor, density: float, key) -> torch.Tensor:
    if density >= 1:
        return delta.clone()
    if density <= 0:
        return torch.zeros_like(delta)
    return delta * ref_keep(delta.numel(), key, density).reshape(delta.shape) / density


def ref_merge(method, base, xs, weights, densities, keys, normalize):
    """One tensor, float32 everywhere."""
    xs = [x.float() for x in xs]
    if method == "linear":
        out = sum(w * x for w, x in zip(weights, xs, strict=False))
        return out / sum(weights) if normalize and abs(sum(weights)) >= 1e-8 else out
    if method == "slerp":
        t = weights[1] / (weights[0] + weights[1])
        a, b = xs
        na, nb = a.norm().item() or 1.0, b.norm().item() or 1.0
        cos = max(-1.0, min(1.0, float((a * b).sum()) / (na * nb)))
        if abs(cos) > 0.9995:
            return (1 - t) * a + t * b
        th = math.acos(cos)
        return (math.sin((1 - t) * th) * a + math.sin(t * th) * b) / math.sin(th)
    base = base.float()
    deltas = []
    for x, d, key in zip(xs, densities, keys, strict=False):
        delta = x - base
        if method == "ties":
            delta = ref_trim(delta, d)
        elif method.startswith("dare"):
            delta = ref_dare(delta, d, key)
        deltas.append(delta)
    w = torch.tensor(weights).reshape(-1, *([1] * base.dim()))
    stacked = torch.stack(deltas) * w
    if method in ("ties", "dare_ties"):
        elected = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
        agree = torch.sign(stacked) == elected
        mixed = (stacked * agree).sum(0)
        if normalize:
            div = (w * agree).sum(0)
            mixed = mixed / torch.where(div == 0, torch.ones_like(div), div)
    else:
        mixed = stacked.sum(0)
        if normalize and abs(sum(weights)) >= 1e-8:
            mixed = mixed / sum(weights)
    return base + mixed
