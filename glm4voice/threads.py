"""A running process's torch threads, changed from outside: `recipe --jobs` gives a stage the cores another left.

OMP_NUM_THREADS is read once, at the start. A stage started beside another (one core each on 2 cores) would keep
one thread after the other finished, and the second core would sit idle for the rest of a long trainer (in the
tiny recipe: the LM stages' last hour beside nothing). So the lanes write each stage's share of the cores into a
file named by GLM4VOICE_THREADS_FILE, and the training loop follows it between steps (`ThreadsFile.follow`).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "GLM4VOICE_THREADS_FILE"


def write_threads(path: Path, threads: int) -> None:
    from .atomic import write_text

    write_text(path, f"{threads}\n")


class ThreadsFile:
    """The file a process's thread count follows (None: the environment names none; `follow` does nothing)."""

    def __init__(self, path: str | Path | None = None):
        path = path if path is not None else os.environ.get(ENV)
        self.path = Path(path) if path else None
        self.seen: tuple | None = None  # the file's (inode, modification time) at the last look

    def follow(self) -> int | None:
        """Take the file's thread count if it changed since the last look; returns it (None: no change). A
        missing or unreadable file changes nothing: the process goes on as it was."""
        import torch

        if self.path is None:
            return None
        try:
            stat = self.path.stat()
            if (stat.st_ino, stat.st_mtime_ns) == self.seen:  # each write is a new file: a new inode
                return None
            self.seen = (stat.st_ino, stat.st_mtime_ns)
            threads = int(self.path.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None
        if threads < 1 or threads == torch.get_num_threads():
            return None
        torch.set_num_threads(threads)
        return threads
