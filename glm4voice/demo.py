"""`make demo`: the main job on the embedded default.

With the embedded default (`models/tiny`, the bundle the tiny recipe trains)
the demo speaks held-out questions of its domain (English and Mandarin, in
voice settings it never trained on), chats, and prints and saves each answer.
Until that bundle exists, the demo runs on the small golden checkpoints of a
source checkout (`tests/golden`, found from the current folder; `--golden DIR`
names another) and a tiny random LM written on the spot (random weights: the
codes, text and audio prove the pipeline runs end to end, they carry no
meaning). Nothing is downloaded.

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


def main(out_dir: Path = Path("out/demo"), golden: Path = Path("tests/golden"), model: Path | None = None,
         max_new_tokens: int = 400) -> int:  # fmt: skip
    """`model`: a trained bundle to ask spoken questions (None: the embedded default when there is one);
    `max_new_tokens`: LM ids per answer."""
    from .cli import main as cli
    from .cli.common import embedded_model

    if shutil.which("espeak-ng") is None:
        print("demo: espeak-ng is missing; install it with: sudo apt-get install -y espeak-ng sox", file=sys.stderr)
        return 1
    model = model if model is not None else embedded_model()
    if model is not None:
        return ask(Path(model), Path(out_dir), max_new_tokens)
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


def held_out_questions(tasks: tuple[str, ...] = ("add", "capital")) -> list[dict]:
    """The first held-out (test split) question of each task, in English and Mandarin: text rows to speak."""
    from .data.domain import tiny_texts
    from .data.manifest import first_of_each

    rows = [u.to_json() for u in tiny_texts()]
    rows = [r for r in rows if r.get("role") == "question" and r.get("split") == "test" and r.get("task") in tasks]
    return sorted(first_of_each(rows, 1, lambda r: (r["lang"], r["task"])), key=lambda r: (r["lang"], r["task"]))


def ask(model: Path, out_dir: Path, max_new_tokens: int = 400) -> int:
    """Held-out spoken questions (voice settings the tiny model never trained on) to a trained bundle: each
    answer's text and timings printed, its speech saved."""
    from .cli import main as cli
    from .data.speak import SpeakSettings, speak_one
    from .recipe.tiny import HELD_OUT_VOICES

    out_dir.mkdir(parents=True, exist_ok=True)
    for n, row in enumerate(held_out_questions(), 1):
        spoken = speak_one(row, out_dir / "questions", SpeakSettings(**HELD_OUT_VOICES))
        if "error" in spoken:
            print(f"demo: could not speak {row['text']!r}: {spoken['error']}", file=sys.stderr)
            return 1
        question, answer = out_dir / "questions" / spoken["audio"], out_dir / f"answer-{n}.wav"
        print(f"demo: asked {row['text']!r} ({spoken['voice']}, rate {spoken['rate']}, pitch {spoken['pitch']})")
        chat = ["chat", "--model-dir", str(model), str(question), "--out", str(answer), "--temperature", "0",
                "--max-new-tokens", str(max_new_tokens)]  # fmt: skip
        print(f"demo: glm4voice {' '.join(chat)}", flush=True)
        status = cli(chat)
        if status:
            return status
    print(f"demo: the spoken answers are in {out_dir}; talk to the model in the browser: .venv/bin/glm4voice serve "
          "(then open http://127.0.0.1:8000/), or type: .venv/bin/glm4voice chat --interactive")  # fmt: skip
    return 0


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
    parser.add_argument("--model-dir", type=Path, help="a trained bundle (default: the embedded models/tiny, if any)")
    args = parser.parse_args()
    sys.exit(main(args.out, args.golden, args.model_dir))
