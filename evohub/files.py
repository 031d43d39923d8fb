"""Writing files so that a crash never leaves half of one (docs/design.md#nothing-lost).

Every file evohub replaces goes through :func:`atomic_write`: the bytes go to a temporary sibling,
are flushed and fsynced, then renamed over the target (a rename within a directory is atomic on
POSIX). Directories that appear whole (a merged model) go through :func:`replace_dir`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from evohub.errors import RunError


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Replace ``path`` with ``data`` (text is UTF-8): temp file, fsync, rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one JSON row to an append-only log, flushed and fsynced before it returns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path, what: str, repair: bool = True) -> list[dict]:
    """The rows of an append-only JSON-lines log (none when there is no file). A last row cut
    short by a crash is left out and, with ``repair``, cut from the file, so the next append
    starts on a line of its own; a damaged row before it is a one-line error naming ``what``."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for k, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if k != len(lines) - 1:
                raise RunError(f"{path}:{k + 1}: not a JSON row; {what} is damaged") from None
            if repair:
                atomic_write(path, "".join(x + "\n" for x in lines[:k]))
    return rows


def write_json(path: str | Path, obj: object, indent: int | None = 2) -> Path:
    """Atomically replace ``path`` with ``obj`` as JSON (non-ASCII kept; floats for numpy scalars)."""
    return atomic_write(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=float) + "\n")


def replace_dir(partial: Path, out: Path) -> Path:
    """Move a completed directory ``partial`` to ``out``, replacing what is there; an interrupted
    swap leaves either the old or the new directory at ``out``, never a mix."""
    if out.exists():
        if not out.is_dir():
            raise IsADirectoryError(f"{out} is a file; a directory cannot replace it")
        trash = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, trash)
        try:
            os.replace(partial, out)
        except BaseException:
            os.replace(trash, out)  # the old directory back: never neither
            raise
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(partial, out)
    return out


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A directory to write ``out`` into: beside it, renamed into place (:func:`replace_dir`) when
    the block completes, removed when it raises (a crash leaves the old ``out`` or nothing)."""
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        yield partial
        replace_dir(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
