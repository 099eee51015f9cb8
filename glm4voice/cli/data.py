"""Data commands: `tokenize-corpus` (speech corpus -> speech-code shards on Ray Data)."""

from __future__ import annotations

import json

from .common import add_command, add_speech_tokenizer, missing_extra


def _add_tokenize_corpus(sub) -> None:
    p = add_command(sub, "tokenize-corpus", "speech corpus (JSONL manifest) -> speech-code Parquet shards (Ray)",
                    _run_tokenize_corpus)  # fmt: skip
    add_speech_tokenizer(p, required=True)
    p.add_argument("--manifest", required=True, help='JSONL: {"id": ..., "audio": path, "text": ... (optional)}')
    p.add_argument("--out", required=True, help="new folder for the Parquet shards")
    p.add_argument("--actors", type=int, default=1, help="speech tokenizer actors (one model each)")
    p.add_argument("--batch-size", type=int, default=8, help="files per actor call")
    p.add_argument("--int8", action="store_true", help="dynamic int8 speech tokenizer (CPU)")
    p.add_argument("--ray-address", help="a running Ray cluster (auto, or ray://host:port); default: a local one")


def _run_tokenize_corpus(args) -> int:
    try:
        from ..data.corpus import tokenize_corpus
    except ImportError as exc:
        raise missing_extra("data", "the pipeline", exc) from None
    summary = tokenize_corpus(args.speech_tokenizer, args.manifest, args.out, actors=args.actors,
                              batch_size=args.batch_size, int8=args.int8, ray_address=args.ray_address)  # fmt: skip
    print(json.dumps(summary), flush=True)
    return 1 if summary["failed"] else 0


def add(sub) -> None:
    _add_tokenize_corpus(sub)
