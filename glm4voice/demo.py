"""`make demo`: the main job on the embedded default.

Until the tiny trained bundle exists, the demo speaks a sentence with espeak-ng
and runs `glm4voice tokenize` on it with the small golden tokenizer checkpoint
(tests/golden/tokenizer: random weights, so the ids prove the pipeline runs,
not that they mean anything). Nothing is downloaded.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SENTENCE = "Hello! This is glm4voice, turning speech into twelve and a half tokens per second."


def main(out_dir: Path = ROOT / "out" / "demo") -> int:
    from .cli import main as cli

    if shutil.which("espeak-ng") is None:
        print("demo: espeak-ng is missing; install it with: sudo apt-get install -y espeak-ng sox", file=sys.stderr)
        return 1
    out_dir.mkdir(parents=True, exist_ok=True)
    wav = out_dir / "question.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), SENTENCE], check=True)
    print(f"demo: spoke {SENTENCE!r} into {wav}")
    print("demo: glm4voice tokenize --tokenizer tests/golden/tokenizer", wav)
    return cli(["tokenize", "--tokenizer", str(ROOT / "tests" / "golden" / "tokenizer"), str(wav)])


if __name__ == "__main__":
    sys.exit(main())
