"""`make demo`: the main job on the embedded default.

Until the tiny trained bundle exists, the demo runs on the small golden
checkpoints of a source checkout (`tests/golden`, found from the current
folder; `--golden DIR` names another) and a tiny random LM written on the spot
(random weights: the codes, text and audio prove the pipeline runs end to end,
they carry no meaning). Nothing is downloaded.

1. espeak-ng speaks a sentence -> `glm4voice tokenize` -> 12.5 Hz codes ->
   `glm4voice decode --stream` -> a 22.05 kHz wav (the speech round trip);
2. `glm4voice chat` on a bundle (golden tokenizer, tiny LM, golden decoder):
   the spoken question in, the reply's text and speech streamed out. The same
   bundle serves the web page: `glm4voice serve --model-dir out/demo/bundle`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

SENTENCE = "Hello! This is glm4voice, turning speech into twelve and a half tokens per second."


def main(out_dir: Path = Path("out/demo"), golden: Path = Path("tests/golden")) -> int:
    from .cli import main as cli

    if shutil.which("espeak-ng") is None:
        print("demo: espeak-ng is missing; install it with: sudo apt-get install -y espeak-ng sox", file=sys.stderr)
        return 1
    golden = Path(golden).resolve()
    if not all((golden / part).is_dir() for part in ("tokenizer", "decoder")):
        print(f"demo: no golden checkpoints in {golden} (run it from a source checkout, or pass --golden DIR)",
              file=sys.stderr)  # fmt: skip
        return 1
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    question, ids, reply = out_dir / "question.wav", out_dir / "codes.jsonl", out_dir / "reply.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(question), SENTENCE], check=True)
    print(f"demo: spoke {SENTENCE!r} into {question}")

    print(f"demo: glm4voice tokenize --speech-tokenizer {golden / 'tokenizer'} {question} > {ids}")
    with open(ids, "w") as f, redirect_stdout(f):
        status = cli(["tokenize", "--speech-tokenizer", str(golden / "tokenizer"), str(question)])
    if status:
        return status
    print(ids.read_text().strip())

    print(f"demo: glm4voice decode --decoder {golden / 'decoder'} --codes {ids} --out {reply} --stream")
    decode = ["decode", "--decoder", str(golden / "decoder"), "--codes", str(ids), "--out", str(reply), "--stream"]
    status = cli(decode)
    if status:
        return status
    print(f"demo: wrote {reply}")

    bundle = make_bundle(out_dir / "bundle", golden)
    chat_reply = out_dir / "chat-reply.wav"
    chat = ["chat", "--model-dir", str(bundle), str(question), "--out", str(chat_reply),
            "--temperature", "0", "--max-new-tokens", "60", "--flow-steps", "4"]  # fmt: skip
    print(f"demo: glm4voice {' '.join(chat)}   (tiny random LM: the reply is noise, its timing is real)")
    status = cli(chat)
    if status == 0:
        print(f"demo: serve the same bundle with: .venv/bin/glm4voice serve --model-dir {bundle}  (then open http://127.0.0.1:8000/)")
    return status


def make_bundle(folder: Path, golden: Path) -> Path:
    """tokenizer/ and decoder/ link to the golden checkpoints; lm/ is a tiny random LM in the release format."""
    from .lm.tiny import write_tiny_lm

    folder.mkdir(parents=True, exist_ok=True)
    for part in ("tokenizer", "decoder"):
        link = folder / part
        if not link.exists():
            link.symlink_to(golden / part, target_is_directory=True)
    if not (folder / "lm" / "config.json").exists():
        write_tiny_lm(folder / "lm", n_audio=512, seed=3)
    return folder


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m glm4voice.demo", description="the speech round trip and a chat")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for the demo's files")
    parser.add_argument("--golden", type=Path, default=Path("tests/golden"), help="the golden checkpoints")
    args = parser.parse_args()
    sys.exit(main(args.out, args.golden))
