"""Data commands: `tokenize-corpus` (speech corpus -> speech-code shards on Ray Data) and the `data` group that
makes the training corpora (`data speak`, `data tiny-texts`, `data text-corpus`, `data import-lhotse`,
`data interleave`)."""

from __future__ import annotations

import argparse
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


# --- data: the training corpora ------------------------------------------------------------------------------


def _span(text: str) -> tuple[float, float]:
    """`LO:HI` (one number: a fixed value)."""
    try:
        parts = [float(v) for v in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"{text!r}: write a range as LO:HI, e.g. 0.9:1.1")
    return parts[0], parts[-1]


def _text(span: tuple[float, float]) -> str:
    return f"{span[0]:g}:{span[1]:g}"


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _data_command(group, name: str, help: str, run) -> argparse.ArgumentParser:
    """A `data` subcommand; its errors read `glm4voice data NAME: error: ...`."""

    def named(args) -> int:
        args.command = f"data {name}"
        return run(args)

    return add_command(group, name, help, named)


def _add_speak(group) -> None:
    from ..data.speak import AUGMENTS, DEFAULT_VOICES, SpeakSettings

    d = SpeakSettings()
    p = _data_command(group, "speak", "text manifest -> many-voice synthetic speech corpus (flac + manifest.jsonl)",
                      _run_speak)  # fmt: skip
    p.add_argument("--texts", required=True, help='JSONL: {"id": ..., "text": ..., "lang": "en"|"zh", "voice": '
                                                  '"engine:name" (optional), "rate": 1.0 (optional)}')  # fmt: skip
    p.add_argument("--out", required=True, help="corpus folder (an unfinished run there is resumed)")
    p.add_argument("--voices", type=_names, default=",".join(DEFAULT_VOICES),
                   help="engine:name,... (espeak-ng, flite, festival)")  # fmt: skip
    p.add_argument("--seed", type=int, default=d.seed, help="same seed, same bytes")
    p.add_argument("--workers", type=int, default=1, help="processes speaking in parallel")
    p.add_argument("--rate", type=_span, default=_text(d.rate), help="speaking-rate factor range (1 = default)")
    p.add_argument("--pitch", type=_span, default=_text(d.pitch), help="pitch shift range in semitones "
                   "(a negative one: --pitch=-3:1)")  # fmt: skip
    p.add_argument("--augment", type=_names, default="", help=f"sox augmentations, any of {','.join(AUGMENTS)}")
    p.add_argument("--augment-prob", type=float, default=d.augment_prob, help="chance of each augmentation")
    p.add_argument("--snr", type=_span, default=_text(d.snr), help="noise augmentation: speech-to-noise ratio, dB")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_speak(args) -> int:
    from ..data.speak import SpeakSettings, speak

    settings = SpeakSettings(voices=args.voices, seed=args.seed, rate=args.rate, pitch=args.pitch,
                             augment=args.augment, augment_prob=args.augment_prob, snr=args.snr)  # fmt: skip
    summary = speak(args.texts, args.out, settings, workers=args.workers, progress=not args.no_progress)
    print(json.dumps(summary, ensure_ascii=False), flush=True)
    return 1 if summary["failed"] else 0


def _add_tiny_texts(group) -> None:
    p = _data_command(group, "tiny-texts", "the tiny bilingual domain (questions, answers, facts, stories) -> texts",
                      _run_tiny_texts)  # fmt: skip
    p.add_argument("--out", required=True, help="text manifest to write (JSONL), the input of `data speak`")
    p.add_argument("--langs", type=_names, default="en,zh")


def _run_tiny_texts(args) -> int:
    from ..data.domain import write_tiny_texts

    print(json.dumps(write_tiny_texts(args.out, args.langs), ensure_ascii=False), flush=True)
    return 0


def _add_text_corpus(group) -> None:
    p = _data_command(group, "text-corpus", "Debian fortunes (en, zh) and user text -> cleaned, deduplicated corpus",
                      _run_text_corpus)  # fmt: skip
    p.add_argument("files", nargs="*", help="more text: .jsonl text manifests, or plain text files")
    p.add_argument("--out", required=True, help="corpus.jsonl, or corpus.parquet (data extra)")
    p.add_argument("--langs", type=_names, default="en,zh")
    p.add_argument("--no-fortunes", action="store_true", help="only the given files")


def _run_text_corpus(args) -> int:
    from ..data.text_corpus import write_text_corpus

    summary = write_text_corpus(args.out, fortunes=not args.no_fortunes, langs=args.langs, files=args.files)
    print(json.dumps(summary, ensure_ascii=False), flush=True)
    return 0


def _add_import_lhotse(group) -> None:
    p = _data_command(group, "import-lhotse", "lhotse CutSet (or recordings + supervisions) -> our manifest",
                      _run_import_lhotse)  # fmt: skip
    p.add_argument("manifests", nargs="+", help="CUTS.jsonl.gz, or RECORDINGS.jsonl.gz SUPERVISIONS.jsonl.gz")
    p.add_argument("--out", required=True, help="manifest to write (JSONL)")
    p.add_argument("--audio-dir", help="where cut-out segments go as flac (default: OUT's name + -audio)")


def _run_import_lhotse(args) -> int:
    from ..data.lhotse_import import import_lhotse

    print(json.dumps(import_lhotse(args.manifests, args.out, args.audio_dir), ensure_ascii=False), flush=True)
    return 0


def _add_interleave(group) -> None:
    from ..data.interleave import InterleaveOptions

    d = InterleaveOptions()
    p = _data_command(group, "interleave", "text corpus -> speech-text interleaved samples (t2t model on Ray)",
                      _run_interleave)  # fmt: skip
    p.add_argument("--t2t", required=True, help="text-to-token model folder (train-t2t's step-N)")
    p.add_argument("--corpus", nargs="+", required=True, help="text: data text-corpus JSONL/Parquet, plain files")
    p.add_argument("--out", required=True, help="new folder for the Parquet shards (an unfinished run is resumed)")
    p.add_argument("--eta", type=float, default=d.eta, help="share of the words turned into speech codes")
    p.add_argument("--span-mean", type=float, default=d.span_mean, help="mean span length (Poisson), in words")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--seq-length", type=int, default=d.seq_length, help="longer samples are cut into pieces")
    p.add_argument("--docs-per-shard", type=int, default=d.docs_per_shard)
    p.add_argument("--pairs", nargs="*", default=(), help="tokenize-corpus shards: add speech, ASR and TTS samples")
    p.add_argument("--actors", type=int, default=1, help="t2t actors (one model each)")
    p.add_argument("--ray-address", help="a running Ray cluster (auto, or ray://host:port); default: a local one")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_interleave(args) -> int:
    try:
        from ..data.interleave import InterleaveOptions, interleave
    except ImportError as exc:
        raise missing_extra("data", "the pipeline", exc) from None
    options = InterleaveOptions(args.eta, args.span_mean, args.seed, args.seq_length, args.docs_per_shard)
    report = interleave(args.t2t, args.corpus, args.out, options, actors=args.actors, ray_address=args.ray_address,
                        pairs=args.pairs, progress=not args.no_progress)  # fmt: skip
    print(json.dumps(report, ensure_ascii=False), flush=True)
    return 1 if report["failed"] else 0


def _add_data(sub) -> None:
    help = "make training corpora: synthetic speech, the tiny domain, real text, lhotse imports"
    p = sub.add_parser("data", help=help, description=help)
    group = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    for add_one in (_add_speak, _add_tiny_texts, _add_text_corpus, _add_import_lhotse, _add_interleave):
        add_one(group)


def add(sub) -> None:
    _add_tokenize_corpus(sub)
    _add_data(sub)
