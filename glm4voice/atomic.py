"""One way to write results: into a temporary sibling, then rename into place.

A crash, a full disk or Ctrl-C mid-write leaves the old result (or nothing)
at the final path, never half a file or half a folder. The temporary sibling
lives in the same folder, so the rename is atomic on POSIX file systems.

    with atomic_path("out/reply.wav") as tmp:      # a file
        soundfile.write(tmp, audio, rate)
    with atomic_path("runs/x/step-100", folder=True) as tmp:   # a folder
        (tmp / "model.safetensors").write_bytes(...)

Files and folders get the modes the process's umask gives a plain `open` or
`mkdir` (a bare `mkstemp` would leave every file 0600).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(final: str | os.PathLike, folder: bool = False, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; on success rename it to `final`, on any error remove it.

    `folder`: the sibling is a new empty folder (a folder being replaced is
    removed only after the new one is complete). `overwrite=False`: an existing
    `final` is an error (FileExistsError), checked before and after the work.
    """
    final = Path(final)
    if not overwrite and final.exists():
        raise FileExistsError(f"{final} already exists")
    final.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_umask())
    else:
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        if not overwrite and final.exists():
            raise FileExistsError(f"{final} already exists")
        if folder and final.is_dir():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_bytes(final: str | os.PathLike, data: bytes) -> None:
    """Write a whole file atomically."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text(final: str | os.PathLike, text: str) -> None:
    """Write a whole UTF-8 text file atomically."""
    write_bytes(final, text.encode("utf-8"))
