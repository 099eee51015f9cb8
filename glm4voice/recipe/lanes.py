"""Stages side by side (`glm4voice recipe ... --jobs N`): each ready stage in its own process, the cores shared.

A stage is ready when every stage it `needs` is done; ready stages start in the recipe's order while fewer than
`jobs` run. One started alone gets every core (torch's threads, through OMP_NUM_THREADS), one started beside
others the cores they leave (at least one). Each process is the recipe run with `--only` that stage, so it
keeps every guarantee of a stage run alone (its lock, its marker, its trainer's resume), and writes its lines to
`OUT/<stage>/log.txt`. A stage that fails stops new ones from starting; the running ones finish (their work is
kept) and the error names the stage and its log. Ctrl-C stops them all; every trainer resumes on the next run.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import Glm4VoiceError
from . import done_before

POLL_SECONDS = 0.5


def run_side_by_side(stages: list, out: Path, jobs: int, spawn: Callable[[str], list[str]] | None, log) -> dict:
    """Run the stages not yet done, up to `jobs` at once; returns every stage's summary."""
    if spawn is None:
        raise ValueError("jobs > 1 needs spawn: the command that runs one stage alone")
    names = [s.name for s in stages]
    for s in stages:
        if not set(s.needs) <= set(names[: names.index(s.name)]):
            raise ValueError(f"stage {s.name} needs {s.needs}: every one must come before it")
    done = {s.name: done_before(out / s.name / "done.json", s.name, log) for s in stages
            if (out / s.name / "done.json").is_file()}  # fmt: skip
    cores = os.cpu_count() or 1
    running: dict[str, tuple[subprocess.Popen, int]] = {}  # name -> (its process, its threads)
    failed: list[tuple[str, int]] = []
    try:
        while True:
            if not failed:
                ready = [s for s in stages if s.name not in done and s.name not in running
                         and all(n in done for n in s.needs)][: jobs - len(running)]  # fmt: skip
                free = cores - sum(threads for _, threads in running.values())
                for i, stage in enumerate(ready):
                    threads = max(1, free // (len(ready) - i))
                    free -= threads
                    running[stage.name] = (_start(stage, out, threads, spawn, log), threads)
            if not running:
                break
            time.sleep(POLL_SECONDS)
            for name, (process, _) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[name]
                marker = out / name / "done.json"
                if code == 0 and marker.is_file():
                    done[name] = json.loads(marker.read_text(encoding="utf-8"))
                    log(json.dumps({"stage": name, "state": "finished", **done[name]}, ensure_ascii=False))
                else:
                    failed.append((name, code))
                    where = str(out / name / "log.txt")
                    log(json.dumps({"stage": name, "state": "failed", "exit": code, "log": where}))
    except BaseException:  # Ctrl-C or an error here: no stage is left running unseen
        for process, _ in running.values():
            process.terminate()
        for process, _ in running.values():
            process.wait()
        raise
    if failed:
        name, code = failed[0]
        raise Glm4VoiceError(f"stage {name} failed (exit {code}): its log is {out / name / 'log.txt'}")
    return done


def _start(stage, out: Path, threads: int, spawn: Callable[[str], list[str]], log) -> subprocess.Popen:
    folder = out / stage.name
    folder.mkdir(parents=True, exist_ok=True)
    log(json.dumps({"stage": stage.name, "state": "running", "what": stage.what, "threads": threads,
                    "log": str(folder / "log.txt")}))  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(folder / "log.txt", "a", encoding="utf-8") as handle:  # the child holds its own copy
        return subprocess.Popen(spawn(stage.name), stdout=handle, stderr=subprocess.STDOUT, env=env)
