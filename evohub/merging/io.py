"""Checkpoint I/O: a lazy reader of (sharded) safetensors and a sharded, crash-safe writer.

    >>> with CheckpointReader("models/base") as ckpt:           # doctest: +SKIP
    ...     w = ckpt.get("model.embed_tokens.weight")            # read on demand, nothing else
    >>> with ShardedWriter("out", shard_bytes=2 << 30) as out:  # doctest: +SKIP
    ...     out.add("model.embed_tokens.weight", w)

Pickle checkpoints (``*.bin``, ``*.pt``) are never loaded: a directory that has only those is
refused with a message saying so.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from evohub.errors import MergeError
from evohub.files import replace_dir, write_json

INDEX = "model.safetensors.index.json"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
              "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
              "F8_E5M2": torch.float8_e5m2}  # fmt: skip


@dataclass(frozen=True)
class _Entry:
    file: Path
    offset: int  # absolute byte offset of the data in the file
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def read_header(path: Path) -> dict[str, _Entry]:
    """The tensor table of a safetensors file (8-byte little-endian length, then JSON)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 << 20:
                raise ValueError(f"header of {n} bytes")
            header = json.loads(f.read(n))
        size = path.stat().st_size
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, stop = info["data_offsets"]
            dtype = _ST_DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            nbytes = stop - start
            if 8 + n + stop > size:
                raise ValueError(f"truncated: {size} bytes, where tensor {name!r} ends at byte {8 + n + stop}")
            if nbytes != math.prod(shape) * torch.empty(0, dtype=dtype).element_size():
                raise ValueError(f"tensor {name!r} has inconsistent offsets")
            out[name] = _Entry(path, 8 + n + start, nbytes, dtype, shape)
        return out
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        raise MergeError(f"{path}: not a readable safetensors file ({e})") from e


class CheckpointReader:
    """Tensor names, shapes and dtypes from safetensors headers; tensor data read on demand.

    :meth:`get` returns a zero-copy view of the memory-mapped file; :meth:`release` tells the
    kernel this process is done with a tensor's pages, so a streaming merge holds only the
    tensors it is working on, whatever the size of the inputs (the page cache keeps the data).
    """

    def __init__(self, directory: str | Path, index_name: str = INDEX, files: list[str] | None = None):
        """``files`` (names in ``directory``) are the checkpoint when given; else the ``index_name``
        index when present, else every ``*.safetensors`` file there."""
        self._maps: dict[Path, mmap.mmap] = {}
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise MergeError(f"{self.directory}: no such model directory")
        index = self.directory / index_name
        weight_map: dict | None = None
        if files is not None:
            files = sorted(files)
        elif index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise MergeError(f"{index}: not a safetensors index ({e})") from e
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.directory.glob("*.safetensors"))
            weight_map = None
        if not files:
            pickles = [p.name for p in pickle_files(self.directory)]
            if pickles:
                raise MergeError(
                    f"{self.directory}: only pickle weights ({', '.join(sorted(pickles)[:3])}); evohub reads "
                    "safetensors: add 'weights: pickle' to the source (read with torch.load(weights_only=True), "
                    "converted once) or use a revision that has safetensors"
                )
            raise MergeError(f"{self.directory}: no *.safetensors weights")
        self._entries: dict[str, _Entry] = {}
        for f in files:
            path = self.directory / f
            if not path.is_file():
                raise MergeError(
                    f"{index}: lists {f}, which is missing" if weight_map is not None else f"{path}: missing"
                )
            for name, entry in read_header(path).items():
                if weight_map is None or weight_map.get(name) == f:
                    self._entries[name] = entry

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise MergeError(f"{self.directory}: has no tensor {name!r}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def dtype(self, name: str) -> torch.dtype:
        return self._entry(name).dtype

    def _map(self, path: Path) -> mmap.mmap:
        mm = self._maps.get(path)
        if mm is None:
            with open(path, "rb") as f:
                # copy-on-write: writable for torch.frombuffer, never written back
                mm = self._maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return mm

    def get(self, name: str) -> torch.Tensor:
        """The tensor, as a view of the memory-mapped file (copy it to keep it past close())."""
        e = self._entry(name)
        if e.nbytes == 0:
            return torch.empty(e.shape, dtype=e.dtype)
        raw = torch.frombuffer(self._map(e.file), dtype=torch.uint8, count=e.nbytes, offset=e.offset)
        return raw.view(e.dtype).view(e.shape)

    def release(self, name: str) -> None:
        """Drop this process's pages of a tensor read with :meth:`get` (the data stays cached)."""
        e = self._entry(name)
        mm = self._maps.get(e.file)
        if mm is None or not hasattr(mm, "madvise"):
            return
        start = -(-e.offset // mmap.PAGESIZE) * mmap.PAGESIZE
        stop = (e.offset + e.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if stop > start:
            mm.madvise(mmap.MADV_DONTNEED, start, stop - start)

    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def close(self) -> None:
        """Forget the file maps; each is unmapped once no tensor from :meth:`get` views it."""
        self._maps.clear()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ShardedWriter:
    """Writes tensors into ``<stem>-0000i-of-0000N.safetensors`` shards plus the index
    (``stem`` ``model``: transformers' names; ``diffusion_pytorch_model``: diffusers').

    At most one shard is held in memory. Shards are written under temporary names and renamed
    when the writer closes; the index is written last, so a crash never leaves a loadable but
    incomplete checkpoint.
    """

    def __init__(
        self,
        directory: str | Path,
        shard_bytes: int = 2 << 30,
        metadata: dict[str, str] | None = None,
        stem: str = "model",
    ):
        if shard_bytes <= 0:
            raise MergeError(f"shard size must be positive, got {shard_bytes}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shard_bytes, self.stem = shard_bytes, stem
        self.metadata = {"format": "pt", **(metadata or {})}
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue ``tensor`` under ``name``; flushes full shards.

        The writer keeps a reference to a contiguous CPU tensor (no copy): do not modify it
        afterwards. Other tensors are copied.
        """
        nbytes = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + nbytes > self.shard_bytes:
            self._flush()
        self._pending[name] = tensor.detach().to("cpu").contiguous()
        self._pending_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        if not self._pending:
            return
        tmp = self.directory / f".shard-{len(self._shards) + 1:05d}.safetensors.tmp"
        write_safetensors(tmp, self._pending, self.metadata)
        self._shards.append((tmp, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> dict:
        """Write the last shard, name the shards, write the index; returns the index."""
        self._flush()
        n = len(self._shards)
        weight_map: dict[str, str] = {}
        for i, (tmp, names) in enumerate(self._shards, start=1):
            final = f"{self.stem}-{i:05d}-of-{n:05d}.safetensors"
            os.replace(tmp, self.directory / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        write_json(self.directory / f"{self.stem}.safetensors.index.json", index)
        return index

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()


_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file straight from the tensors' memory.

    The format is an 8-byte little-endian header length, a JSON header (dtype, shape and byte
    range of each tensor, ``__metadata__``) padded to 8 bytes, then the raw bytes. Unlike
    ``safetensors.torch.save_file``, nothing is serialised into an intermediate buffer first,
    which halves peak memory and is 2-3x faster for the shard sizes merges write. Files are
    read back with the ``safetensors`` library (tests check they load).
    """
    header: dict[str, object] = {}
    offset = 0
    names = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))  # aligned, as save_file orders
    for name in names:
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        header[name] = {
            "dtype": _ST_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name in names:
            t = tensors[name].contiguous()
            if t.numel():
                f.write(t.view(-1).view(torch.uint8).numpy().data)


def parse_size(text: str) -> int:
    """'2GB' → 2_000_000_000, '500MB', '1GiB', or a plain number of bytes."""
    units = {
        "": 1,
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
    }
    t = text.strip().upper().replace(" ", "")
    num = t.rstrip("KMGIB")
    unit = t[len(num) :]
    try:
        value = float(num)
    except ValueError:
        value = -1
    if unit not in units or value <= 0:
        raise MergeError(f"{text!r} is not a size (e.g. 2GB, 500MB, 1GiB)")
    return int(value * units[unit])


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
#: Files that travel with converted weights (configs, tokenizer, processor, generation settings).
SIDE_FILES = ("*.json", "tokenizer.model", "*.txt", "*.jinja")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pickle_files(directory: Path) -> list[Path]:
    """A model directory's pickle weight files, in shard order."""
    return sorted(p for p in Path(directory).iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A pickle checkpoint's tensors through ``torch.load(weights_only=True)``: only tensors and
    plain containers are unpickled; anything else (an object that would run code) is refused."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # the legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for forbidden globals, and the many kinds of damage
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MergeError(f"{path}: refused by torch.load(weights_only=True): {first}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MergeError(f"{path}: not a state dict of tensors (got {type(state).__name__})")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def convert_pickle(src: Path, dst: Path, shard_bytes: int = 2 << 30) -> dict:
    """Convert a model directory with pickle weights into ``dst`` with safetensors (and its
    configs and tokenizer files); returns the provenance for the lock: the sha256 of every
    pickle file read and every safetensors file written. ``dst`` appears only when complete."""
    src, dst = Path(src), Path(dst)
    files = pickle_files(src)
    if not files:
        raise MergeError(f"{src}: no pickle weights (*.bin) to convert")
    partial = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        with ShardedWriter(partial, shard_bytes, metadata={"converted_from": "pickle"}) as writer:
            for f in files:
                for name, t in _load_pickle(f).items():
                    writer.add(name, t.contiguous())
        for pattern in SIDE_FILES:
            for f in src.glob(pattern):
                if f.is_file() and not f.name.endswith(".bin.index.json"):
                    shutil.copy2(f, partial / f.name)
        provenance = {
            "from": {f.name: sha256_file(f) for f in files},
            "to": {f.name: sha256_file(f) for f in sorted(partial.glob("*.safetensors"))},
        }
        replace_dir(partial, dst)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return provenance
