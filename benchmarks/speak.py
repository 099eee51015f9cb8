"""Synthetic speech throughput: seconds of speech made per second of wall time, per engine, 1 and N workers.

Each engine speaks the same sentences (questions and answers of the tiny domain; Mandarin ones for espeak-ng's
cmn voice) through `glm4voice.data.speak.speak`, so the figure includes everything a corpus run does: the engine
process, sox where it is needed, the flac encoding and the manifest. A last row adds all four sox augmentations
(tempo, pitch, noise, reverb) to the espeak-ng run. Figures depend on the CPU: its model and flags are printed.

Usage: .venv/bin/python benchmarks/speak.py [--sentences 80] [--workers 2] [--engines espeak-ng,flite,festival]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from glm4voice.data.domain import tiny_texts
from glm4voice.data.speak import SpeakSettings, parse_voice, speak
from glm4voice.machine import cpu_info

ENGINES = {
    "espeak-ng": ["espeak-ng:en-us", "espeak-ng:en-gb+f3", "espeak-ng:cmn-latn-pinyin"],
    "flite": ["flite:slt", "flite:rms", "flite:awb", "flite:kal16"],
    "festival": ["festival:cmu_us_slt_arctic_hts", "festival:kal_diphone"],
}
def texts(path: Path, voices: list[str], count: int) -> Path:
    """`count` domain sentences, each given one of `voices` in turn (Mandarin text for Mandarin voices)."""
    rows = [r for r in tiny_texts() if r.extra["role"] in ("question", "answer")]
    pools = {lang: [r for r in rows if r.lang == lang][::37] for lang in ("en", "zh")}
    out = []
    for i in range(count):
        voice = voices[i % len(voices)]
        pool = pools[parse_voice(voice).lang]
        row = pool[i % len(pool)]
        out.append({"id": f"b{i:04d}", "text": row.text, "lang": row.lang, "voice": voice})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), encoding="utf-8")
    return path


def run(folder: Path, name: str, voices: list[str], count: int, workers: int, augment=()) -> tuple[float, float]:
    """(speech seconds made, wall seconds) for one fresh corpus."""
    path = texts(folder / f"{name}.jsonl", voices, count)
    start = time.perf_counter()
    summary = speak(path, folder / f"{name}-{workers}", SpeakSettings(voices=tuple(voices), augment=augment,
                                                                      augment_prob=1.0), workers=workers,
                    progress=False)  # fmt: skip
    wall = time.perf_counter() - start
    assert summary["failed"] == 0, summary["failures"]
    return summary["audio_seconds"], wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sentences", type=int, default=80, help="sentences per engine and run")
    p.add_argument("--workers", type=int, default=2, help="the parallel run's process count")
    p.add_argument("--engines", default=",".join(ENGINES), help="which engines to time")
    args = p.parse_args()
    print(f"CPU: {cpu_info()}")
    print(f"{args.sentences} sentences per run; speech seconds made per wall second (higher is faster)\n")
    print(f"{'engine':<28} {'speech s':>9} {'1 worker':>10} {f'{args.workers} workers':>10}")
    engines = args.engines.split(",")
    jobs = [(engine, ENGINES[engine], ()) for engine in engines]
    if "espeak-ng" in engines:
        jobs.append(("espeak-ng + 4 augmentations", ENGINES["espeak-ng"], ("tempo", "pitch", "noise", "reverb")))
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, voices, augment) in enumerate(jobs):
            speech, one = run(Path(tmp), f"j{k}", voices, args.sentences, 1, augment)
            _, many = run(Path(tmp), f"j{k}", voices, args.sentences, args.workers, augment)
            print(f"{name:<28} {speech:9.1f} {speech / one:10.1f} {speech / many:10.1f}")


if __name__ == "__main__":
    main()
