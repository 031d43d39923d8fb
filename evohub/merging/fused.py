"""Fused merge kernels: each task-vector method and ``linear`` in one pass over memory
(docs/design.md#fused-merge-kernels).

The kernels of :mod:`evohub.merging.kernels` are chains of whole-chunk torch ops: about thirty
passes over each source element for DARE-TIES (most of them the int64 mask hash), each reading
and writing a float32 buffer. Here the same arithmetic is written once per tensor as a
pointwise expression and handed to ``torch.compile``: inductor fuses it into one loop (C++ with
OpenMP and SIMD on a CPU, a Triton kernel on a GPU) that reads the base and the sources once
and writes the output once, the DARE hash and the TIES trim computed in registers.

The results equal the reference kernels' element for element (tests/test_fused.py): the
expression is the same sequence of float32 operations, IEEE-rounded one at a time (inductor
compiles C++ with ``-ffp-contract=off``; ``emulate_precision_casts`` turns Triton's FMA fusion
off), and the DARE hash is the same integer arithmetic on int32 lanes. TIES's exact top-k
threshold is found first by the reference's radix select (kernels.trim_threshold); the fused
pass applies it.

Compiling costs seconds in a fresh process (about 3 s on a 2-core CPU with inductor's disk
cache warm; more cold), so tensors under :data:`MIN_NUMEL` entries stay on the reference
kernels, and a one-shot merge fuses only from :data:`MIN_WORK` source entries
(:func:`worth_it`; evolution's resident merge always does). ``EVOHUB_FUSED=0`` turns fusion off,
``=1`` forces it; where it cannot compile (no C++ compiler, no Triton) evohub warns once and
uses the reference kernels.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Sequence

import torch

from evohub.merging.methods import MergeMethod

log = logging.getLogger(__name__)

#: Tensors smaller than this (entries) use the reference kernels: compiling cannot pay there.
MIN_NUMEL = 1 << 18
#: int32 lanes index a tensor; larger ones (4 GB of bf16) use the reference kernels
MAX_NUMEL = 2**31 - 1
#: kernels._C1 and _C2 as int32 (both are below 2³¹); this module sits below kernels (it cannot import it)
_S1, _S2 = 0x7FEB352D, 0x31848BAB
_INF_BITS = 0x7F800000  # the pattern of +inf: patterns above it are NaNs
_OPTIONS = {"emulate_precision_casts": True}  # eager's rounding: no FMA contraction in Triton
#: A one-shot merge (``evohub merge``) fuses when it moves at least this many source entries:
#: below, the seconds of compiling in a fresh process cost more than the kernels save.
MIN_WORK = 1 << 30
_MODE = os.environ.get("EVOHUB_FUSED", "auto")  # auto | 1 (always) | 0 (never)
_state = {"enabled": _MODE != "0", "warned": False}


def worth_it(entries: int, amortised: bool) -> bool:
    """Whether a merge moving ``entries`` source entries should use the fused kernels: always
    when repeated (evolution's resident merge: compiled once, run per candidate) or forced with
    ``EVOHUB_FUSED=1``; for a one-shot merge from :data:`MIN_WORK` entries (docs/design.md#fused-merge-kernels)."""
    if not _state["enabled"]:
        return False
    return amortised or _MODE == "1" or entries >= MIN_WORK


def enabled(device: torch.device) -> bool:
    """Whether fused kernels are used on ``device`` (CPU, or CUDA with Triton)."""
    if not _state["enabled"]:
        return False
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return device.type == "cpu"


def _failed(e: Exception) -> None:
    _state["enabled"] = False
    if not _state["warned"]:
        _state["warned"] = True
        log.warning("fused merge kernels unavailable (%s: %s); using the reference kernels", type(e).__name__, e)


# ----------------------------------------------------------------------------------------------
# The expressions (traced by torch.compile; every operation as in the reference kernels)


def _lsr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int32 lanes holding uint32 values (>> on int32 is arithmetic)."""
    return (x >> s) & ((1 << (32 - s)) - 1)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """kernels._hash32_ on int32 lanes: multiplication wraps modulo 2³², which is the reference's
    ``& 0xFFFFFFFF`` on int64, at half the memory traffic and twice the SIMD width."""
    x = (x ^ _lsr(x, 16)) * _S1
    x = (x ^ _lsr(x, 15)) * _S2
    return x ^ _lsr(x, 16)


def _deltas(
    out: torch.Tensor,
    base: torch.Tensor,
    xs: tuple[torch.Tensor, ...],
    p: torch.Tensor,
    q: torch.Tensor,
    sparsify: str,
    elect: bool,
    normalize: bool,
) -> None:
    """out ← base + the elected (or plain) sum of the sparsified, weighted task vectors.

    ``p`` (float32, K×4): per source, the scale its delta is multiplied by (DARE's 1/density
    folded in); its weight (the divisor's terms when elected sums are normalised; for a plain
    normalised sum ``p[0, 1]`` is the divisor: Σw, or 1 where Σw is 0); 0 where the sparsifier
    keeps nothing, else 1; and TIES's threshold |δ|. ``q`` (int32, K×3): for DARE the largest
    kept hash (as hash − 2³¹, so a signed comparison orders them as unsigned) and the two key
    words (as int32); for TIES the tie cutoff (flat index of the last tie kept).
    """
    b = base.float()
    total = pos = neg = wpos = wneg = b  # placeholders, bound in the first iteration
    idx = torch.arange(b.numel(), device=b.device, dtype=torch.int32) if sparsify != "none" else None
    for k, x in enumerate(xs):
        d = x.float() - b
        if sparsify == "random":
            keep = (_hash32(_hash32(idx ^ q[k, 1]) ^ q[k, 2]) ^ -(2**31)) <= q[k, 0]
            d = d * keep.float() * p[k, 2]
        elif sparsify == "magnitude":
            # |δ|'s bit pattern against a finite threshold pattern T is |δ| against the float
            # with pattern T: non-negative floats order like their patterns (NaN deltas stay
            # NaN whether kept or not); a bit cast here would stop inductor's vectorising
            mag, threshold = d.abs(), p[k, 3]
            keep = (mag > threshold) | ((mag == threshold) & (idx <= q[k, 1]))
            d = d * keep.float() * p[k, 2]
        d = d * p[k, 0]
        if k == 0:
            total = d
            if elect:
                pos, neg = d.clamp(min=0), d.clamp(max=0)
        else:
            total = total + d
            if elect:
                pos, neg = pos + d.clamp(min=0), neg + d.clamp(max=0)
        if elect and normalize:
            up_k, down_k = (d > 0).float() * p[k, 1], (d < 0).float() * p[k, 1]
            wpos, wneg = (up_k, down_k) if k == 0 else (wpos + up_k, wneg + down_k)
    if elect:
        up = (total >= 0).float()
        down = up - 1
        total = pos * up - neg * down
        if normalize:
            div = wpos * up - wneg * down
            total = total / torch.where(div == 0, 1.0, div)
    elif normalize:
        total = total / p[0, 1]
    out.copy_(total + b)


def _linear(out: torch.Tensor, xs: tuple[torch.Tensor, ...], w: torch.Tensor, normalize: bool) -> None:
    # the reference accumulates with add_(x, alpha=w), which eager torch computes as one fused
    # multiply-add (CPU and CUDA alike); inductor's fma primitive is the same single rounding
    from torch._inductor.inductor_prims import fma

    acc = xs[0].float() * w[0]
    for k in range(1, len(xs)):
        acc = fma(xs[k].float(), w[k], acc)
    if normalize:
        acc = acc / w[len(xs)]
    out.copy_(acc)


_compiled: dict[str, Callable] = {}


def _fn(name: str, fn: Callable) -> Callable:
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, dynamic=True, options=_OPTIONS)
    return _compiled[name]


# ----------------------------------------------------------------------------------------------
# Entry points (the reference kernels' signatures; None where the caller must fall back)


def merge_deltas(
    method: MergeMethod,
    base: torch.Tensor,
    sources: Sequence[torch.Tensor],
    scales: Sequence[float],
    weights: Sequence[float],
    densities: Sequence[float],
    keys: Sequence[tuple[int, int]],
    normalize: bool,
    out: torch.Tensor,
    trims: Sequence | None,
) -> bool:
    """:func:`evohub.merging.kernels.merge_deltas` in one fused pass, with the caller's
    ``scales`` (each weight, DARE's 1/density folded in) and TIES ``trims``; False when not done here."""
    dev = base.device
    dare = method.sparsify == "random"
    cut = [-1.0] * len(sources)  # TIES's threshold |δ|: −1 keeps everything
    alive = [1.0] * len(sources)
    if method.sparsify == "magnitude":
        assert trims is not None
        q = [(0, 0, 0) if t is None else (0, t.cutoff, 0) for t in trims]
        for i, t in enumerate(trims):
            if t is not None and t.bits >= _INF_BITS:
                if t.cutoff >= 0 or t.bits != 2**31 - 1:
                    return False  # an inf or NaN threshold (a broken model): the reference
                alive[i] = 0.0  # density 0: nothing kept
            elif t is not None:
                cut[i] = _float_of(t.bits)
    elif dare:
        # the reference keeps entry i iff hash(i) < ⌊density·2³²⌋ (all for density ≥ 1, none for ≤ 0)
        thr = [min(max(int(d * 2**32), 0), 2**32) for d in densities]
        q = [(t - 1 - 2**31 if t else 0, _s32(k0), _s32(k1)) for t, (k0, k1) in zip(thr, keys, strict=True)]
        alive = [1.0 if t else 0.0 for t in thr]
    else:
        q = [(0, 0, 0)] * len(sources)
    second = list(weights) if method.consensus else [_divisor(weights)] * len(weights)
    p = torch.tensor(list(zip(scales, second, alive, cut, strict=True)), dtype=torch.float32, device=dev)
    qt = torch.tensor(q, dtype=torch.int32, device=dev)
    fn = _fn(f"deltas-{method.sparsify}-{method.consensus}-{normalize}-{len(sources)}", _deltas)
    return _run(fn, out, _flat(base), tuple(_flat(x) for x in sources), p, qt,
                method.sparsify, method.consensus, normalize)  # fmt: skip


def linear(sources: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool, out: torch.Tensor) -> bool:
    """:func:`evohub.merging.kernels.linear` in one fused pass; False when not done here."""
    w = torch.tensor([*weights, _divisor(weights)], dtype=torch.float32, device=out.device)
    fn = _fn(f"linear-{normalize}-{len(sources)}", _linear)
    return _run(fn, out, tuple(_flat(x) for x in sources), w, normalize)


def _float_of(bits: int) -> float:
    """The float32 whose bit pattern is ``bits`` (a non-negative int32)."""
    return struct.unpack("<f", struct.pack("<i", bits))[0]


def _s32(word: int) -> int:
    """A 32-bit word as the int32 with the same bits."""
    return word - 2**32 if word >= 2**31 else word


def _divisor(weights: Sequence[float]) -> float:
    """What a normalised plain sum is divided by: Σw, or 1 (x / 1 = x) where it is 0."""
    sw = float(sum(weights))
    return sw if abs(sw) >= 1e-8 else 1.0  # kernels.EPS


def _run(fn: Callable, out: torch.Tensor, *args) -> bool:
    if not enabled(out.device) or not MIN_NUMEL <= out.numel() <= MAX_NUMEL or not out.is_contiguous():
        return False
    try:
        fn(out.view(-1), *args)
    except Exception as e:  # no compiler, no Triton, an unsupported device: the reference kernels
        _failed(e)
        return False
    return True


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1) if t.is_contiguous() else t.reshape(-1)
