"""`glm4voice eval`: a bundle's figures (suites in glm4voice.eval)."""

from __future__ import annotations

import sys

from .common import add_command


def _add_eval(sub) -> None:
    p = add_command(sub, "eval", "measure a model bundle: asr, recon, tts, qa, cloze, rate, latency", _run_eval)
    p.add_argument("--model-dir", required=True, help="bundle folder: tokenizer/ lm/ decoder/ (t2t/)")
    p.add_argument("--suite", required=True, help="comma-separated suites, or all")
    p.add_argument("--manifest", help="corpus manifest of the rows to score (e.g. the tiny domain's test split)")
    p.add_argument("--out", required=True, help="report folder: results.json, results.md, plots")
    p.add_argument("--limit", type=int,
                   help="at most this many rows of each (role, task, language), evenly spaced through them")
    p.add_argument("--device", default="cpu")


def _run_eval(args) -> int:
    from ..errors import Glm4VoiceError
    from ..eval import evaluate, parse_suites

    suites = parse_suites(args.suite)
    if args.limit is not None and args.limit < 1:
        raise Glm4VoiceError("--limit must be at least 1")
    if args.manifest is None:
        raise Glm4VoiceError("--manifest is needed: the rows every suite scores")
    evaluate(args.model_dir, suites, args.manifest, args.out, limit=args.limit, device=args.device)
    print(f"glm4voice eval: {args.out}/results.md", file=sys.stderr)
    return 0


def add(sub) -> None:
    _add_eval(sub)
