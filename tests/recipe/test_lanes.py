"""`recipe --jobs N` (recipe/lanes.py): stages side by side in their own processes, never before their inputs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from glm4voice.errors import Glm4VoiceError
from glm4voice.recipe import Stage, run_stages

# one stage's process: notes when it ran and on how many threads, sleeps, then writes its marker (or fails)
CHILD = """
import json, os, sys, time
out, name, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
start = time.time()
time.sleep(seconds)
if name == "bad":
    print("bad: something broke"); sys.exit(3)
summary = {"start": start, "end": time.time(), "threads": int(os.environ["OMP_NUM_THREADS"]), "seconds": seconds,
           "threads_at_end": int(open(os.environ["GLM4VOICE_THREADS_FILE"]).read())}
os.makedirs(os.path.join(out, name), exist_ok=True)
with open(os.path.join(out, name, "done.json"), "w") as f:
    json.dump(summary, f)
"""


def stage(name, *needs):
    def never(folder, done):  # the parent never runs a stage itself
        raise AssertionError("ran in the parent")

    return Stage(name, never, f"stage {name}", needs=needs)


def spawner(out, seconds):
    return lambda name: [sys.executable, "-c", CHILD, str(out), name, str(seconds.get(name, 0.2))]


def test_stages_run_side_by_side_never_before_their_inputs(tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    stages = [stage("a"), stage("b", "a"), stage("c", "a"), stage("d", "b", "c"), stage("e", "b")]
    lines = []
    done = run_stages(stages, tmp_path, log=lines.append, jobs=2, spawn=spawner(tmp_path, {"b": 0.6, "c": 0.6}))
    assert set(done) == {"a", "b", "c", "d", "e"}
    for s in stages:
        assert all(done[n]["end"] <= done[s.name]["start"] for n in s.needs), s.name
    assert done["b"]["start"] < done["c"]["end"] and done["c"]["start"] < done["b"]["end"]  # b and c overlapped
    assert done["a"]["threads"] == 2 and done["b"]["threads"] == done["c"]["threads"] == 1  # the cores shared
    assert [json.loads(line)["state"] for line in lines].count("finished") == 5
    assert (tmp_path / "b" / "log.txt").is_file()
    # again: every stage is done, nothing runs
    lines.clear()
    assert run_stages(stages, tmp_path, log=lines.append, jobs=2, spawn=spawner(tmp_path, {})) == done
    assert [json.loads(line)["state"] for line in lines] == ["done before"] * 5


def test_a_stage_takes_the_core_another_left(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    made = []
    real = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: made.append(real(**kw)) or made[-1])
    stages = [stage("short"), stage("long"), stage("after", "short")]
    lines = []
    done = run_stages(stages, tmp_path, log=lines.append, jobs=2, spawn=spawner(tmp_path, {"long": 2.0}))
    assert done["short"]["threads"] == done["long"]["threads"] == 1  # side by side: a core each
    assert done["after"]["threads"] == 1 and done["after"]["threads_at_end"] == 1  # long still ran then
    assert done["long"]["threads_at_end"] == 2  # alone at the end: both cores
    grew = [json.loads(line) for line in lines if json.loads(line)["state"] == "threads"]
    assert grew == [{"stage": "long", "state": "threads", "threads": 2}]
    assert len(made) == 1 and not Path(made[0]).exists()  # the shares lived in the run's own folder, gone after it


def test_a_failed_stage_stops_new_ones_and_the_running_ones_finish(tmp_path):
    stages = [stage("a"), stage("bad", "a"), stage("slow", "a"), stage("after", "bad")]
    start = time.time()
    with pytest.raises(Glm4VoiceError, match=r"stage bad failed \(exit 3\): its log is .*bad/log.txt"):
        run_stages(stages, tmp_path, log=lambda line: None, jobs=2, spawn=spawner(tmp_path, {"slow": 1.0}))
    assert (tmp_path / "slow" / "done.json").is_file()  # its work is kept
    assert not (tmp_path / "after").exists() and time.time() - start >= 1.0
    assert "something broke" in (tmp_path / "bad" / "log.txt").read_text()


def test_until_stops_after_that_stage(tmp_path):
    stages = [stage("a"), stage("b", "a"), stage("c", "b")]
    done = run_stages(stages, tmp_path, log=lambda line: None, until="b", jobs=2, spawn=spawner(tmp_path, {}))
    assert set(done) == {"a", "b"} and not (tmp_path / "c").exists()


def test_jobs_flag_errors(tmp_path, capsys):
    from glm4voice.cli import main

    for extra in (["--jobs", "0"], ["--jobs", "2", "--only", "texts"]):
        assert main(["recipe", "tiny", "--smoke", "--out", str(tmp_path / "t"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "--jobs" in err and len(err.splitlines()) == 1
