"""Recipes: every training stage in order, each in its own folder with a completion marker.

    glm4voice recipe tiny --out runs/tiny [--smoke]

A stage that finished has `OUT/<stage>/done.json` (what it made, how long it took) and is skipped when the
recipe runs again; a stage that was interrupted runs again and its trainer resumes from its last
checkpoint, so a recipe may be stopped and continued any number of times. `only` runs one stage alone (a
second process may run another beside it, e.g. the vocoder beside the speech tokenizer); a stage already
running in another process is refused, never run twice at once. `jobs` > 1 runs stages whose inputs are
done side by side, each in its own process (`spawn`: the command that runs one stage alone, i.e. `only`), the
machine's cores shared among them: on 2 cores the tiny recipe's decoder trains beside its LM stages.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_text
from ..errors import Glm4VoiceError


@dataclass
class Stage:
    name: str
    run: Callable[[Path, dict], dict]  # (its folder, the finished stages' summaries) -> its summary
    what: str
    needs: tuple[str, ...] = ()  # the stages whose summaries it reads: what must be done before it starts


def run_stages(stages: list[Stage], out, log=print, until: str | None = None, only: str | None = None,
               jobs: int = 1, spawn: Callable[[str], list[str]] | None = None) -> dict:  # fmt: skip
    """Run the stages not yet done, in order; returns every stage's summary (`until`: stop after that one;
    `only`: that stage alone, the stages it reads done before; `jobs` > 1: up to that many at once, each
    in a process that `spawn(name)`'s command starts)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if jobs > 1 and only is None:
        if until is not None:
            stages = stages[: [s.name for s in stages].index(until) + 1]
        from .lanes import run_side_by_side

        return run_side_by_side(stages, out, jobs, spawn, log)
    names = {s.name for s in stages}
    done: dict = {}
    for stage in stages:
        folder = out / stage.name
        marker = folder / "done.json"
        if not marker.is_file() and only in (None, stage.name):
            folder.mkdir(parents=True, exist_ok=True)
            with _running(folder, stage.name):
                if not marker.is_file():  # another process may have finished it before this one took the lock
                    done[stage.name] = _run(stage, folder, done, names, log)
        if stage.name not in done and marker.is_file():
            done[stage.name] = done_before(marker, stage.name, log)
        if stage.name in (until, only):
            break
    return done


def done_before(marker: Path, name: str, log) -> dict:
    """A stage finished in an earlier run (or another process): its summary, read from its marker."""
    summary = json.loads(marker.read_text(encoding="utf-8"))
    log(json.dumps({"stage": name, "state": "done before", "seconds": summary["seconds"]}))
    return summary


def _run(stage: Stage, folder: Path, done: dict, names: set, log) -> dict:
    """Run one stage and write its marker; returns its summary."""
    log(json.dumps({"stage": stage.name, "state": "running", "what": stage.what}))
    start = time.perf_counter()
    try:
        summary = {**stage.run(folder, done), "seconds": round(time.perf_counter() - start, 1)}
    except KeyError as exc:  # a summary it reads is missing: `only` ran it before that stage
        missing = exc.args[0] if exc.args else None
        if missing not in names or missing in done:
            raise
        raise Glm4VoiceError(f"stage {stage.name} needs stage {missing} done first") from None
    write_text(folder / "done.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    log(json.dumps({"stage": stage.name, "state": "finished", **summary}, ensure_ascii=False))
    return summary


@contextmanager
def _running(folder: Path, name: str):
    """Hold the stage's lock while it runs: a second process on the same stage gets a clear error (the lock
    goes with the process, so a killed run never leaves a stale one)."""
    import fcntl

    with open(folder / ".running", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Glm4VoiceError(f"stage {name} is running in another process ({folder})") from None
        yield


__all__ = ["Stage", "done_before", "run_stages"]
