"""`make demo`: the main job on the embedded default.

Until the tiny trained bundle exists, the demo runs the speech round trip on
the small golden checkpoints in tests/golden (random weights: the ids and the
audio prove the pipeline runs end to end, they carry no meaning):
espeak-ng speaks a sentence -> `glm4voice tokenize` -> 12.5 Hz ids ->
`glm4voice decode --stream` -> a 22.05 kHz wav. Nothing is downloaded.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
SENTENCE = "Hello! This is glm4voice, turning speech into twelve and a half tokens per second."


def main(out_dir: Path = ROOT / "out" / "demo") -> int:
    from .cli import main as cli

    if shutil.which("espeak-ng") is None:
        print("demo: espeak-ng is missing; install it with: sudo apt-get install -y espeak-ng sox", file=sys.stderr)
        return 1
    out_dir.mkdir(parents=True, exist_ok=True)
    question, ids, reply = out_dir / "question.wav", out_dir / "ids.jsonl", out_dir / "reply.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(question), SENTENCE], check=True)
    print(f"demo: spoke {SENTENCE!r} into {question}")

    print(f"demo: glm4voice tokenize --tokenizer tests/golden/tokenizer {question} > {ids}")
    with open(ids, "w") as f, redirect_stdout(f):
        status = cli(["tokenize", "--tokenizer", str(GOLDEN / "tokenizer"), str(question)])
    if status:
        return status
    print(ids.read_text().strip())

    print(f"demo: glm4voice decode --decoder tests/golden/decoder --tokens {ids} --out {reply} --stream")
    decode = ["decode", "--decoder", str(GOLDEN / "decoder"), "--tokens", str(ids), "--out", str(reply), "--stream"]
    status = cli(decode)
    if status == 0:
        print(f"demo: wrote {reply}")
    return status


if __name__ == "__main__":
    sys.exit(main())
