"""Recipes: every training stage in order, each in its own folder with a completion marker.

    glm4voice recipe tiny --out runs/tiny [--smoke]

A stage that finished has `OUT/<stage>/done.json` (what it made, how long it took) and is skipped when the
recipe runs again; a stage that was interrupted runs again and its trainer resumes from its last
checkpoint, so a recipe may be stopped and continued any number of times.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_text


@dataclass
class Stage:
    name: str
    run: Callable[[Path, dict], dict]  # (its folder, the finished stages' summaries) -> its summary
    what: str


def run_stages(stages: list[Stage], out, log=print, until: str | None = None) -> dict:
    """Run the stages not yet done, in order; returns every stage's summary (`until`: stop after that one)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done: dict = {}
    for stage in stages:
        folder = out / stage.name
        marker = folder / "done.json"
        if marker.is_file():
            done[stage.name] = json.loads(marker.read_text(encoding="utf-8"))
            log(json.dumps({"stage": stage.name, "state": "done before", "seconds": done[stage.name]["seconds"]}))
        else:
            folder.mkdir(parents=True, exist_ok=True)
            log(json.dumps({"stage": stage.name, "state": "running", "what": stage.what}))
            start = time.perf_counter()
            summary = {**stage.run(folder, done), "seconds": round(time.perf_counter() - start, 1)}
            write_text(marker, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
            done[stage.name] = summary
            log(json.dumps({"stage": stage.name, "state": "finished", **summary}, ensure_ascii=False))
        if stage.name == until:
            break
    return done


__all__ = ["Stage", "run_stages"]
