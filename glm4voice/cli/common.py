"""What every command shares: device and dtype options, the three model folders, sampling, optional extras.

Defined once here so `chat`, `serve` and the trainers spell an option the same
way, with the same default and help text.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import Glm4VoiceError

DTYPES = ["float32", "bfloat16", "float16"]
# The embedded default: the bundle the tiny recipe trained, committed in a source checkout (`make tiny` makes one).
EMBEDDED_MODEL = Path(__file__).resolve().parents[2] / "models" / "tiny"


def embedded_model() -> Path | None:
    """The embedded default bundle when this install has one (tokenizer/, lm/ and decoder/), else None."""
    parts = ("tokenizer/config.json", "lm/config.json", "decoder/config.yaml")
    if all((EMBEDDED_MODEL / part).is_file() for part in parts):
        return EMBEDDED_MODEL
    return None


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows every option's default."""


def add_command(sub, name: str, help: str, run) -> argparse.ArgumentParser:
    """A subcommand whose `--help` shows defaults; `run(args) -> exit code`."""
    p = sub.add_parser(name, help=help, description=help, formatter_class=Formatter)
    p.set_defaults(run=run)
    return p


def add_device(p: argparse.ArgumentParser, dtype_help: str = "weights dtype") -> None:
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help=dtype_help)


def add_speech_tokenizer(p: argparse.ArgumentParser, required: bool = False) -> None:
    """--speech-tokenizer (the old spelling --tokenizer still works)."""
    p.add_argument("--speech-tokenizer", "--tokenizer", dest="speech_tokenizer", required=required,
                   help="speech tokenizer folder or hub id (THUDM/glm-4-voice-tokenizer)")  # fmt: skip


def add_models(p: argparse.ArgumentParser) -> None:
    """The three models and their settings: shared by `chat` and `serve`."""
    p.add_argument("--model-dir", help="folder holding tokenizer/, lm/ and decoder/")
    add_speech_tokenizer(p)
    p.add_argument("--lm", help="speech LM folder or hub id (THUDM/glm-4-voice-9b)")
    p.add_argument("--decoder", help="speech decoder folder or hub id (THUDM/glm-4-voice-decoder)")
    p.add_argument("--system", help="replace the default system prompt")
    p.add_argument("--temperature", type=float, default=0.2, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--max-new-tokens", type=int, default=2000, help="LM ids per reply, text and speech")
    p.add_argument("--seed", type=int, help="seed the sampler (reproducible replies)")
    p.add_argument("--flow-steps", type=int, default=10, help="decoder flow-matching steps (fewer: faster)")
    p.add_argument("--context-full", choices=["drop-oldest", "refuse"], default="drop-oldest",
                   help="when a conversation fills the LM's context: forget its oldest turns, or refuse the turn")
    add_device(p, dtype_help="speech tokenizer and decoder dtype")
    p.add_argument("--int8", action="store_true",
                   help="dynamic int8 linear layers in the speech tokenizer and decoder (CPU)")  # fmt: skip
    p.add_argument("--lm-dtype", default="auto", choices=["auto", *DTYPES],
                   help="LM dtype; auto = the one its config names (bf16 for the release)")  # fmt: skip


def check_models(args, speech_input: bool = False) -> None:
    """The model folders a command needs, named before anything loads. None named: the embedded default."""
    if args.lm is None and args.model_dir is None and args.speech_tokenizer is None and args.decoder is None:
        default = embedded_model()
        if default is not None:
            print(f"glm4voice: no model named, using the embedded default {default}", file=sys.stderr)
            args.model_dir = str(default)
    if args.lm is None and args.model_dir is None:
        raise Glm4VoiceError("give --lm (and --speech-tokenizer, --decoder) or --model-dir "
                             f"(this install has no embedded default in {EMBEDDED_MODEL})")  # fmt: skip
    if speech_input and args.speech_tokenizer is None and args.model_dir is None:
        raise Glm4VoiceError("speech input needs --speech-tokenizer (or --model-dir)")


def load_chat(args):
    """A `VoiceChat` from the `add_models` options."""
    from ..chat import VoiceChat
    from ..lm.generate import SamplingConfig

    check_models(args)
    if args.flow_steps < 1:
        raise Glm4VoiceError(f"--flow-steps must be at least 1, got {args.flow_steps}")
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                              max_new_tokens=args.max_new_tokens, seed=args.seed)  # fmt: skip
    return VoiceChat.from_pretrained(
        args.speech_tokenizer, args.lm, args.decoder, model_dir=args.model_dir, device=args.device, dtype=args.dtype,
        lm_dtype=args.lm_dtype, int8=args.int8, system=args.system, sampling=sampling,
        stream_options={"n_steps": args.flow_steps}, trim_history=args.context_full == "drop-oldest",
    )  # fmt: skip


def missing_extra(extra: str, what: str, exc: ImportError) -> Glm4VoiceError:
    """The one error for an optional dependency that is not installed."""
    return Glm4VoiceError(f"{what} needs the {extra} extra: pip install 'glm4voice[{extra}]' ({exc})")


def check_output_file(path, suffixes: tuple[str, ...] = (".wav",)) -> None:
    """An output file the command can write, checked before any work (work is never lost to a bad --out)."""
    import os
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise Glm4VoiceError(f"--out {path} is a folder; give a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        kind = path.suffix or "suffix-less"
        raise Glm4VoiceError(f"--out {path}: writes {', '.join(suffixes)} files, not {kind} ones")
    parent = path.parent if str(path.parent) else Path(".")
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise Glm4VoiceError(f"--out {path}: cannot write in {parent}")
    if path.exists() and not os.access(path, os.W_OK):
        raise Glm4VoiceError(f"--out {path}: the file is not writable")


def check_device(name: str) -> None:
    """A torch device this machine has: `cuda` on a CPU-only torch, or a typo, is one line, not a traceback."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise Glm4VoiceError(f"--device {name}: not a torch device ({str(exc).splitlines()[0]})") from None
    if device.type not in ("cpu", "cuda"):  # mps, xpu, ...: a torch device, but not one glm4voice supports here
        raise Glm4VoiceError(f"--device {name}: use cpu or cuda[:N]")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Glm4VoiceError(f"--device {name}: this torch has no CUDA device (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise Glm4VoiceError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
