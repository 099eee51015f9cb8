"""The pre-training mixture (SPEC §4): sources of samples, their token shares, packing into sequences.

A mixture file is JSON:

    {"seq_length": 8192,
     "sources": [{"kind": "text",        "path": ["fortunes.parquet"],  "weight": 0.3},
                 {"kind": "speech",      "path": ["shards/"],           "weight": 0.1},
                 {"kind": "asr",         "path": ["shards/"],           "weight": 0.05},
                 {"kind": "tts",         "path": ["shards/"],           "weight": 0.05},
                 {"kind": "interleaved", "path": ["interleaved/"],      "weight": 0.5}]}

Kinds, and which ids carry loss:
- `text`: a text corpus (JSONL rows with text, `data text-corpus` Parquet, plain files): text + end, all ids.
- `speech`: `tokenize-corpus` shards: `<|begin_of_audio|>` codes `<|end_of_audio|>`, all ids.
- `asr`: the same shards' (codes, text) pairs: speech, then the transcript + end; loss on the text only.
- `tts`: text, then speech; loss on the speech only.
- `interleaved`: Parquet rows of LM ids with a per-id loss mask (`ids`, `loss_mask`: `data interleave`).
- `sft`: a streaming-thoughts manifest (`train-sft`'s JSONL): both copies of every turn.

Weights are shares of *tokens*: the next sample comes from the source furthest below its share of the
tokens drawn so far (ties to the first listed), and each source walks through seeded permutations of its
samples, epoch after epoch. Samples are packed in that order into sequences of `seq_length` ids; a sample
that does not fit in what is left of a sequence starts the next one (a sample longer than a sequence is
cut into sequence-long pieces). Each piece restarts its positions, so attention never crosses a sample
(transformers reads packed samples from the positions) and its first id carries no loss. The whole order
is a pure function of (mixture, seed): sequence g is the same on every run and every number of ranks.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import Glm4VoiceError
from ..lm.text import TextTokenizer
from .manifest import parquet_rows
from .sft import IGNORE, TrainingSample, asr_sample, speech_ids, text_sample

KINDS = ("text", "speech", "asr", "tts", "interleaved", "sft")


@dataclass
class Source:
    kind: str
    paths: list[Path]
    weight: float
    name: str = ""


@dataclass
class Mixture:
    sources: list[Source]
    seq_length: int = 8192
    path: str = "mixture"


@dataclass
class Piece:
    """A stretch of one sample inside a packed sequence."""

    source: int
    sample: int
    start: int
    stop: int


@dataclass
class Sequence:
    pieces: list[Piece] = field(default_factory=list)
    length: int = 0


def read_mixture(path: str | os.PathLike) -> Mixture:
    """A mixture file, checked: every problem is one line naming the file (and the source)."""
    from ..jsonl import positive_int, read_json_object

    raw = read_json_object(path, "mixture")
    where = str(path)
    seq_length = positive_int(raw.get("seq_length", 8192), "seq_length", where)
    items = raw.get("sources")
    if not isinstance(items, list) or not items:
        raise Glm4VoiceError(f"{where}: sources must be a non-empty list")
    base = Path(path).parent
    sources = []
    for n, item in enumerate(items):
        at = f"{where}: sources[{n}]"
        if not isinstance(item, dict):
            raise Glm4VoiceError(f"{at} must be an object with kind, path and weight")
        kind, weight, paths = item.get("kind"), item.get("weight", 1.0), item.get("path")
        if kind not in KINDS:
            raise Glm4VoiceError(f"{at}: kind {kind!r} is not one of {', '.join(KINDS)}")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise Glm4VoiceError(f"{at}: weight must be a positive number, not {weight!r}")
        paths = [paths] if isinstance(paths, str) else paths
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise Glm4VoiceError(f"{at}: path must be a file or folder name, or a list of them")
        resolved = [p if p.is_absolute() else base / p for p in map(Path, paths)]
        missing = [p for p in resolved if not p.exists()]
        if missing:
            raise Glm4VoiceError(f"{at}: {missing[0]}: no such file or folder")
        sources.append(Source(kind, resolved, float(weight), str(item.get("name", f"{kind}{n}"))))
    return Mixture(sources, seq_length, where)


def load_samples(source: Source, tok: TextTokenizer) -> list[TrainingSample]:
    """Every sample of one source, as LM ids with their labels."""
    samples: list[TrainingSample] = []
    if source.kind == "text":
        from .text_corpus import documents

        for doc in documents(fortunes=False, files=tuple(str(p) for p in source.paths)):
            samples.append(text_sample(tok, doc.text))
    elif source.kind == "sft":
        from .sft import read_sft_manifest

        for path in source.paths:
            samples += read_sft_manifest(path, tok)
    elif source.kind == "interleaved":
        for row in parquet_rows(source.paths, ("ids", "loss_mask")):
            ids, mask = row["ids"], row["loss_mask"]
            if not ids or len(ids) != len(mask):
                raise Glm4VoiceError(f"{source.name}: a row's ids and loss_mask differ in length (or are empty)")
            samples.append(TrainingSample(list(ids), [i if m else IGNORE for i, m in zip(ids, mask)]))
    else:  # speech, asr, tts: tokenize-corpus shards
        for row in parquet_rows(source.paths, ("codes", "text")):
            if not row["codes"] or (source.kind != "speech" and not row["text"]):
                continue  # a failed file, or (asr, tts) an utterance without a transcript
            speech = speech_ids(tok, row["codes"])
            if source.kind == "speech":
                samples.append(TrainingSample(speech, list(speech)))
            elif source.kind == "asr":
                samples.append(asr_sample(tok, row["codes"], row["text"]))
            else:
                text = text_sample(tok, row["text"]).input_ids
                samples.append(TrainingSample(text + speech, [IGNORE] * len(text) + speech))
    if not samples:
        raise Glm4VoiceError(f"{source.name} ({', '.join(map(str, source.paths))}): no samples")
    return samples


class PackedStream:
    """Sequence g of the mixture, for any g, the same on every run: the order described in the module doc."""

    def __init__(self, mixture: Mixture, samples: list[list[TrainingSample]], seed: int):
        self.mixture, self.samples, self.seed = mixture, samples, seed
        total = sum(s.weight for s in mixture.sources)
        self.shares = [s.weight / total for s in mixture.sources]
        self.sequences: list[Sequence] = []
        self.drawn = [0] * len(samples)  # samples taken from each source so far
        self.tokens = [0] * len(samples)  # their ids
        self.pending: list[Piece] = []  # pieces of a sample cut across sequences

    def __getitem__(self, g: int) -> Sequence:
        while len(self.sequences) <= g:
            self._pack_one()
        return self.sequences[g]

    def _next_pieces(self) -> list[Piece]:
        drawn_total = sum(self.tokens)
        deficits = [share * drawn_total - t for share, t in zip(self.shares, self.tokens)]
        s = max(range(len(deficits)), key=lambda i: (deficits[i], -i))
        n = len(self.samples[s])
        k = self.drawn[s]
        index = _epoch_order(n, self.seed * 7919 + s * 104729 + k // n)[k % n]
        self.drawn[s] += 1
        length = len(self.samples[s][index].input_ids)
        self.tokens[s] += length
        cut = self.mixture.seq_length
        return [Piece(s, index, a, min(a + cut, length)) for a in range(0, length, cut)]

    def _pack_one(self) -> None:
        seq = Sequence()
        while True:
            if not self.pending:
                self.pending = self._next_pieces()
            piece = self.pending[0]
            size = piece.stop - piece.start
            if seq.length + size > self.mixture.seq_length:
                break  # it starts the next sequence
            seq.pieces.append(self.pending.pop(0))
            seq.length += size
        self.sequences.append(seq)

    def tensors(self, seq: Sequence, pad_id: int) -> dict[str, torch.Tensor]:
        """input_ids, labels, position_ids [T]: positions restart in every piece (and in the padding)."""
        ids, labels, positions = [], [], []
        for p in seq.pieces:
            sample = self.samples[p.source][p.sample]
            ids += sample.input_ids[p.start : p.stop]
            labels += [IGNORE] + sample.labels[p.start + 1 : p.stop]  # the first id has no context
            positions += range(p.stop - p.start)
        pad = self.mixture.seq_length - len(ids)
        ids += [pad_id] * pad
        labels += [IGNORE] * pad
        positions += range(pad)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(positions)}

    def batch(self, first: int, size: int, pad_id: int) -> dict[str, torch.Tensor]:
        rows = [self.tensors(self[g], pad_id) for g in range(first, first + size)]
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


@functools.lru_cache(maxsize=64)
def _epoch_order(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
