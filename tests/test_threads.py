"""threads.py: a process's torch threads follow a file that `recipe --jobs` rewrites."""

from __future__ import annotations

import torch

from glm4voice.threads import ThreadsFile, write_threads


def test_the_thread_count_follows_the_file(tmp_path):
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    path = tmp_path / "threads"
    try:
        follower = ThreadsFile(path)
        assert follower.follow() is None and torch.get_num_threads() == before  # no file yet
        write_threads(path, other)
        assert follower.follow() == other and torch.get_num_threads() == other
        assert follower.follow() is None  # unchanged since the last look
        write_threads(path, before)
        assert follower.follow() == before and torch.get_num_threads() == before
        for bad in ("", "two", "0"):  # unreadable or no core: the process goes on as it was
            path.write_text(bad)
            assert ThreadsFile(path).follow() is None and torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
