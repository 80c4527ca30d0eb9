"""Atomic file writes and safe loads for run directories (JSON, .npy, Parquet; no pickle)."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

FORMAT_NAME = "dit-run"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGN_CONVENTION = (
    "positive = removing the sample would raise the query; for a loss query, "
    "positive means the sample helped and negative means it hurt"
)


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


_FILE_MODE = 0o666 & ~_umask()


def _tmp_path(path: Path) -> Path:
    """A fresh temporary file beside ``path`` (same file system, so rename is atomic)."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "cannot write a file there: it is a directory", str(path))
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"cannot write a file there: the folder {path.parent} does not exist", str(path)) from None
    except NotADirectoryError:
        raise NotADirectoryError(errno.ENOTDIR, f"cannot write a file there: {path.parent} is not a folder", str(path)) from None
    os.close(fd)
    os.chmod(name, _FILE_MODE)  # mkstemp creates 0600; published files get the usual mode
    return Path(name)


def _fsync(path: Path) -> None:
    """Flush a written file to disk before it is renamed into place (so a crash or power loss
    leaves either the old file or the complete new one, never an empty one)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` a temporary file beside ``path``, flush it to disk, then rename it to ``path``:
    readers see the old file or the complete new one, and a failed write leaves no temporary file."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    write_atomically(path, lambda tmp: tmp.write_text(text))


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file beside it, then rename)."""
    write_atomically(path, lambda tmp: tmp.write_bytes(data))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to the temporary name
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)

    write_atomically(path, write)


def load_npy(path: Path, mmap: bool = True) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def open_npy_for_writing(path: Path, shape: tuple[int, ...], dtype: Any) -> tuple[np.memmap, Path]:
    """A writable .npy memmap at a temporary name; call ``commit_npy`` to publish it."""
    path = Path(path)
    tmp = _tmp_path(path)
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
    return arr, tmp


def commit_npy(arr: np.memmap, tmp: Path, path: Path) -> None:
    arr.flush()
    del arr
    _fsync(tmp)
    os.replace(tmp, path)


def save_parquet(path: Path, df: pd.DataFrame) -> None:
    write_atomically(path, lambda tmp: df.to_parquet(tmp, index=False))


def load_parquet(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)
