"""Stages side by side (`glm4voice recipe ... --jobs N`): each ready stage in its own process, the cores shared.

A stage is ready when every stage it `needs` is done; ready stages start in the recipe's order while fewer than
`jobs` run. The cores are shared evenly among the running stages (torch's threads: OMP_NUM_THREADS at the start,
then a file of this run's own, in a temporary folder, which the training loop follows: threads.py): one alone gets
every core, and when one of two finishes, the other's trainer takes the core it left. Stages that do not train
(speech, codes, interleaved, eval) keep the threads they started with. Each process is the recipe run with
`--only` that stage, so it keeps every guarantee of a stage run alone (its lock, its marker, its trainer's
resume), and writes its lines to `OUT/<stage>/log.txt`. A stage that fails stops new ones from starting; the
running ones finish (their work is kept) and the error names the stage and its log. Ctrl-C stops them all; every
trainer resumes on the next run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import Glm4VoiceError
from ..threads import ENV as THREADS_ENV
from ..threads import write_threads
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
    shares_dir = Path(tempfile.mkdtemp(prefix="glm4voice-threads-"))  # this run's own: no other run writes there
    try:
        while True:
            ready = [] if failed else [s for s in stages if s.name not in done and s.name not in running
                                       and all(n in done for n in s.needs)][: jobs - len(running)]  # fmt: skip
            shares = _shares([*running, *(s.name for s in ready)], cores)
            for name, (process, threads) in list(running.items()):
                if shares[name] != threads and _share(shares_dir / name, shares[name], log):
                    log(json.dumps({"stage": name, "state": "threads", "threads": shares[name]}))
                    running[name] = (process, shares[name])
            for stage in ready:
                _share(shares_dir / stage.name, shares[stage.name], log)
                process = _start(stage, out, shares[stage.name], shares_dir / stage.name, spawn, log)
                running[stage.name] = (process, shares[stage.name])
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
    finally:
        shutil.rmtree(shares_dir, ignore_errors=True)
    if failed:
        name, code = failed[0]
        raise Glm4VoiceError(f"stage {name} failed (exit {code}): its log is {out / name / 'log.txt'}")
    return done


def _shares(names: list[str], cores: int) -> dict[str, int]:
    """The cores shared evenly among the stages, the earlier ones taking what does not divide (at least one)."""
    base, rest = divmod(cores, max(1, len(names)))
    return {name: max(1, base + (i < rest)) for i, name in enumerate(names)}


def _share(path: Path, threads: int, log) -> bool:
    """Write a stage's share of the cores for its trainer to follow; a failed write is logged, never fatal (the
    stage goes on with the threads it has)."""
    try:
        write_threads(path, threads)
        return True
    except OSError as exc:
        log(json.dumps({"stage": path.name, "state": "threads", "error": str(exc)}))
        return False


def _start(stage, out: Path, threads: int, share: Path, spawn: Callable[[str], list[str]], log) -> subprocess.Popen:
    folder = out / stage.name
    folder.mkdir(parents=True, exist_ok=True)
    log(json.dumps({"stage": stage.name, "state": "running", "what": stage.what, "threads": threads,
                    "log": str(folder / "log.txt")}))  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), THREADS_ENV: str(share)}
    with open(folder / "log.txt", "a", encoding="utf-8") as handle:  # the child holds its own copy
        return subprocess.Popen(spawn(stage.name), stdout=handle, stderr=subprocess.STDOUT, env=env)
