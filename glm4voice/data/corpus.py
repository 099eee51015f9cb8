"""Speech corpus -> 12.5 Hz speech-code shards, with Ray Data: a laptop's cores or a whole Ray cluster.

    glm4voice tokenize-corpus --speech-tokenizer DIR --manifest corpus.jsonl --out shards/ [--actors 2] \
        [--ray-address auto]

The manifest is the project's utterance manifest (`glm4voice.data.manifest`): one row per line,
`{"id": "...", "audio": "path/file.wav", "text": "...", ...}` (`text` is optional and passes through: ASR/TTS
pairs, transcripts for interleaving; the other columns are not needed here).
The output is Parquet shards with the columns id, text, seconds, codes (list of int32) and error.

- Each Ray actor loads the speech tokenizer once and tokenizes `--batch-size` files per call. Its 30 s pieces are
  batched through the encoder, exactly as `SpeechTokenizer.tokenize_batch` does, so the codes equal one-by-one
  tokenization.
- A file that cannot be read keeps its row, with `error` set and no codes. A corpus with bad files still finishes,
  and every failure is listed.
- Shards are written to a temporary sibling folder and renamed to OUT at the end (`glm4voice.atomic`), so OUT
  holds a finished run or nothing. An existing OUT is never touched.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from ..atomic import atomic_path
from ..errors import Glm4VoiceError
from .manifest import read_manifest

__all__ = ["read_manifest", "tokenize_corpus", "TokenizeBatch"]


class TokenizeBatch:
    """A Ray Data actor: one speech tokenizer per actor, a batch of rows per call."""

    def __init__(self, speech_tokenizer: str, int8: bool, batch_size: int):
        from ..tokenizer import SpeechTokenizer

        self.tok = SpeechTokenizer.from_pretrained(speech_tokenizer, int8=int8, batch_size=batch_size)

    def __call__(self, batch):
        import pyarrow as pa

        from ..audio import load_audio

        ids, paths, texts = (batch[c].to_pylist() for c in ("id", "audio", "text"))
        waves, errors = [None] * len(ids), [None] * len(ids)
        for i, path in enumerate(paths):
            try:
                waves[i] = load_audio(path)
            except Glm4VoiceError as exc:
                errors[i] = str(exc)
        good = [i for i, w in enumerate(waves) if w is not None]
        codes: list[list[int]] = [[] for _ in ids]
        for i, row in zip(good, self.tok.tokenize_batch([waves[i] for i in good]) if good else []):
            codes[i] = row
        return pa.table({
            "id": pa.array(ids, pa.string()),
            "text": pa.array(texts, pa.string()),
            "seconds": pa.array([len(w) / 16000 if w is not None else 0.0 for w in waves], pa.float64()),
            "codes": pa.array(codes, pa.list_(pa.int32())),
            "error": pa.array(errors, pa.string()),
        })


def _check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """A host:port that nothing answers is an error now: Ray itself would retry it for minutes."""
    if address is None or address == "auto" or "://" in address:
        return  # `auto` and ray:// fail fast (and clearly) in ray.init
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise Glm4VoiceError(f"--ray-address {address}: expected auto, host:port or ray://host:port")
    import socket

    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise Glm4VoiceError(f"--ray-address {address}: no Ray cluster answers there "
                             f"({getattr(exc, 'strerror', None) or exc})") from None  # fmt: skip


@contextlib.contextmanager
def open_ray(address: str | None, actors: int):
    """Ray for one pipeline: this machine's cores (at least `actors`) by default, or the cluster at `address`;
    a connection problem is one line. A Ray already running in this process is used as it is, and left up."""
    import ray

    _check_ray_address(address)
    started_here = not ray.is_initialized()
    if started_here:
        import logging

        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                     num_cpus=None if address else max(actors, os.cpu_count() or 1))  # fmt: skip
        except (ConnectionError, ValueError, RuntimeError) as exc:  # no cluster at `auto`, no ray[client], ...
            raise Glm4VoiceError(f"--ray-address {address}: {str(exc).splitlines()[0]}") from None
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


def tokenize_corpus(speech_tokenizer: str, manifest: str | os.PathLike, out: str | os.PathLike, *, actors: int = 1,
                    batch_size: int = 8, int8: bool = False, ray_address: str | None = None,
                    rows_per_shard: int = 10000) -> dict:  # fmt: skip
    """Run the pipeline; returns a summary (rows, failed, seconds of audio, wall seconds, failures)."""
    out = Path(out)
    if out.exists():
        raise Glm4VoiceError(f"{out} already exists: pick a new --out (finished shards are never overwritten)")
    if actors < 1 or batch_size < 1 or rows_per_shard < 1:
        raise Glm4VoiceError("actors, batch_size and rows_per_shard must be >= 1")
    _check_ray_address(ray_address)
    rows = [{"id": u.id, "audio": u.audio, "text": u.text} for u in read_manifest(manifest)]
    from ..tokenizer import SpeechTokenizer

    SpeechTokenizer.from_pretrained(speech_tokenizer)  # a bad one fails here, once, not in every actor
    start = time.perf_counter()
    try:
        import ray.data

        with open_ray(ray_address, actors), atomic_path(out, folder=True, overwrite=False) as tmp:
            ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), actors * 4)))
            tokenized = ds.map_batches(TokenizeBatch, fn_constructor_args=(str(speech_tokenizer), int8, batch_size),
                                       batch_size=batch_size, concurrency=actors, batch_format="pyarrow")  # fmt: skip
            tokenized.write_parquet(str(tmp), min_rows_per_file=min(rows_per_shard, len(rows)))
            summary = shards_summary(tmp)
            if summary["rows"] != len(rows):
                raise Glm4VoiceError(f"the pipeline wrote {summary['rows']} rows for {len(rows)} in the manifest")
    except FileExistsError:
        raise Glm4VoiceError(f"{out} already exists: pick a new --out (finished shards are never "
                             "overwritten)") from None  # fmt: skip
    return {**summary, "wall_seconds": round(time.perf_counter() - start, 2)}


def shards_summary(out: str | os.PathLike) -> dict:
    """What the shards of a finished `tokenize_corpus` run hold: rows, failed, seconds of audio, failures.

    A run's OUT exists only once it has finished (it is renamed into place), so a caller that finds it can read
    it back instead of tokenizing again: the recipe's codes stage, stopped after one of its corpora."""
    import pyarrow.parquet as pq

    table = pq.read_table(out, columns=["id", "seconds", "error"])
    errors = [(i, e) for i, e in zip(table["id"].to_pylist(), table["error"].to_pylist()) if e]
    return {"rows": table.num_rows, "failed": len(errors), "audio_seconds": round(sum(table["seconds"].to_pylist()), 2),
            "failures": errors[:20]}  # fmt: skip
