"""Synthetic speech-text interleaved samples from plain text (SPEC §4): the text-to-token model turns
sampled spans of a text corpus into speech codes; no audio is made.

    glm4voice data interleave --t2t runs/t2t/step-3000 --corpus texts.jsonl --out interleaved/ [--eta 0.3] \
        [--seed 0] [--actors 2] [--ray-address auto] [--pairs shards/]

For each document: words (characters for Mandarin) are cut into spans whose lengths follow a Poisson law
(mean `--span-mean`, at least 1), placed at random where they touch no other span, until the share `--eta`
of the words is in spans. Each span's text becomes speech codes by the t2t model, between `<|begin_of_audio|>` and
`<|end_of_audio|>`; the text around it stays text. Loss on every id (the paper's pre-training). A sample
longer than `--seq-length` is cut into pieces. `--pairs` adds the paired kinds of the mixture from
`tokenize-corpus` shards: speech only, ASR (loss on the text), TTS (loss on the speech).

Exactly once, resumable, deterministic: documents are grouped into blocks of `--docs-per-shard` in corpus
order; a block's spans, its t2t batch and its sampling seed depend only on (block, seed, options), so its
shard is the same bytes whichever Ray actor makes it and however many there are. Each shard is written
atomically into `OUT.partial/`; a rerun of a killed run skips the shards already there, and the finished
folder is renamed to OUT (never overwritten). A document that fails is counted, reported and skipped.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import Glm4VoiceError

SHARD = "shard-{:05d}.parquet"


@dataclass(frozen=True)
class InterleaveOptions:
    eta: float = 0.3
    span_mean: float = 5.0
    seed: int = 0
    seq_length: int = 8192
    docs_per_shard: int = 64

    def check(self) -> None:
        if not 0 < self.eta < 1:
            raise Glm4VoiceError(f"--eta must lie in (0, 1), not {self.eta}")
        if not 0 < self.span_mean <= 1000:
            raise Glm4VoiceError(f"--span-mean must lie in (0, 1000], not {self.span_mean}")
        if self.seq_length < 16 or self.docs_per_shard < 1:
            raise Glm4VoiceError("--seq-length must be >= 16 and --docs-per-shard >= 1")


def words_of(text: str, lang: str) -> list[str]:
    """The pieces spans are made of: words with their leading space (English), characters (Mandarin), so
    joining any run of them gives back that stretch of the text."""
    if lang == "zh":
        return list(text)
    import re

    return re.findall(r"\s*\S+", text)


def sample_spans(n: int, eta: float, mean: float, rng: random.Random) -> list[tuple[int, int]]:
    """Non-touching [start, stop) spans over n words covering eta * n of them in expectation, sorted; Poisson
    lengths (a length over n is the whole document).

    A drawn length keeps its draw: it is placed at another random start when it lands on a span (a new length
    for every miss would favour short spans). The span that would pass the target is taken with probability
    (what is left of the target) / (its length), and the sampling stops there either way: the expected speech
    is eta * n for every document, short ones included (stopping before it, or taking it only when that came
    nearer the target, left a short document mostly text: 0.25 of the tiny corpus's words for eta 0.3)."""
    target = eta * n
    taken = [False] * n
    spans, covered = [], 0
    for _ in range(1000):
        if covered >= target:
            break
        length = min(max(1, _poisson(mean, rng)), n)
        last = covered + length > target
        if last and rng.random() >= (target - covered) / length:
            break
        for _ in range(20):
            start = rng.randrange(0, n - length + 1)
            if not any(taken[max(0, start - 1) : start + length + 1]):  # spans never touch
                break
        else:
            if last:
                break
            continue  # no room for this length: draw another
        for i in range(start, start + length):
            taken[i] = True
        spans.append((start, start + length))
        covered += length
        if last:
            break
    return sorted(spans)


def _poisson(mean: float, rng: random.Random) -> int:
    """Knuth's method (means here are small)."""
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


class InterleaveBlock:
    """A Ray Data actor: one t2t model per actor; one block of documents per call, written as one shard."""

    def __init__(self, t2t: str, options: dict, out: str):
        from ..lm.t2t import TextToToken

        self.model = TextToToken.from_pretrained(t2t)
        self.options = InterleaveOptions(**options)
        self.out = Path(out)

    def __call__(self, batch):
        import pyarrow as pa

        blocks = [json.loads(block) for block in batch["block"].to_pylist()]
        reports = [make_shard(self.model, block, self.options, self.out) for block in blocks]
        return pa.table({"report": pa.array([json.dumps(r) for r in reports], pa.string())})


def block_seed(seed: int, block: int) -> int:
    return (seed * 1_000_003 + block) % (2**62)


def make_shard(model, block: dict, options: InterleaveOptions, out: Path) -> dict:
    """Interleave one block's documents into OUT/shard-N.parquet (atomically); returns its statistics.
    A shard already there (a killed run's) is read for its statistics instead of made again."""
    from ..atomic import atomic_path
    from ..lm.t2t import T2TConfig

    path = out / SHARD.format(block["index"])
    if path.exists():
        return _stats_of(path)
    tok, rng = model.tok, random.Random(block_seed(options.seed, block["index"]))
    plans, failed = [], []
    for doc in block["docs"]:
        words = words_of(doc["text"], doc["lang"])
        if not words:
            failed.append([doc["id"], "no words"])
            continue
        spans = sample_spans(len(words), options.eta, options.span_mean, rng)
        # a blank stretch (a space between Mandarin characters) has nothing to say: it stays text
        plans.append((doc, words, [(a, b) for a, b in spans if "".join(words[a:b]).strip()]))
    texts = ["".join(words[a:b]).strip() for _, words, spans in plans for a, b in spans]
    config = T2TConfig(seed=block_seed(options.seed, block["index"]))
    try:
        speech = model.generate(texts, config) if texts else []
    except Exception as exc:  # the whole block's batch failed: every document in it is reported
        failed += [[d["id"], f"t2t: {exc}"] for d, _, _ in plans]
        plans, speech = [], []
    rows = {"doc_id": [], "piece": [], "ids": [], "loss_mask": [], "spans": [], "speech_words": [], "text_words": []}
    boa, eoa = tok.token_id("<|begin_of_audio|>"), tok.token_id("<|end_of_audio|>")
    eos, k = tok.token_id("<|endoftext|>"), 0
    for doc, words, spans in plans:
        ids, at = [], 0
        for a, b in spans:
            ids += tok.encode("".join(words[at:a]))
            ids += [boa, *tok.audio_ids(speech[k]), eoa]
            at, k = b, k + 1
        ids += tok.encode("".join(words[at:])) + [eos]
        in_spans = sum(b - a for a, b in spans)
        for piece, start in enumerate(range(0, len(ids), options.seq_length)):
            chunk = ids[start : start + options.seq_length]
            rows["doc_id"].append(doc["id"])
            rows["piece"].append(piece)
            rows["ids"].append(chunk)
            rows["loss_mask"].append([1] * len(chunk))
            rows["spans"].append([list(s) for s in spans] if piece == 0 else [])
            rows["speech_words"].append(in_spans if piece == 0 else 0)
            rows["text_words"].append(len(words) - in_spans if piece == 0 else 0)
    with atomic_path(path) as tmp:
        _write_rows(rows, tmp, failed)
    return _stats_of(path)


def _write_rows(rows: dict, path: Path, failed: list, kinds: list[str] | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "doc_id": pa.array(rows["doc_id"], pa.string()),
        "piece": pa.array(rows["piece"], pa.int32()),
        "kind": pa.array(kinds or ["interleaved"] * len(rows["doc_id"]), pa.string()),
        "ids": pa.array(rows["ids"], pa.list_(pa.int32())),
        "loss_mask": pa.array(rows["loss_mask"], pa.list_(pa.int8())),
        "spans": pa.array(rows["spans"], pa.list_(pa.list_(pa.int32()))),
        "speech_words": pa.array(rows["speech_words"], pa.int32()),
        "text_words": pa.array(rows["text_words"], pa.int32()),
    })  # fmt: skip
    pq.write_table(table.replace_schema_metadata({"failed": json.dumps(failed)}), path)


def _stats_of(path: Path) -> dict:
    """A shard's statistics, from the shard itself (so a resumed run's report counts every shard alike)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    spans = [b - a for row in table["spans"].to_pylist() for a, b in row]
    failed = json.loads((table.schema.metadata or {}).get(b"failed", b"[]"))
    return {"documents": len(set(table["doc_id"].to_pylist())), "failed": failed, "rows": table.num_rows,
            "ids": sum(len(x) for x in table["ids"].to_pylist()),
            "speech_words": sum(table["speech_words"].to_pylist()), "text_words": sum(table["text_words"].to_pylist()),
            "span_lengths": dict(Counter(spans))}  # fmt: skip


def read_documents(paths) -> list[dict]:
    """The corpus in order: `data text-corpus` JSONL/Parquet or plain text files (ids made unique per file)."""
    from .text_corpus import documents

    docs = [{"id": d.id, "text": d.text, "lang": d.lang} for d in documents(fortunes=False, files=tuple(paths))]
    if not docs:
        raise Glm4VoiceError(f"{', '.join(map(str, paths))}: no documents")
    return docs


def interleave(t2t, corpus, out, options: InterleaveOptions, *, actors: int = 1, ray_address: str | None = None,
               pairs=(), progress: bool = True) -> dict:  # fmt: skip
    """Run the pipeline (see the module docstring); returns the report, also written to OUT/report.json."""
    from .corpus import open_ray

    options.check()
    out = Path(out)
    if out.exists():
        raise Glm4VoiceError(f"{out} already exists: pick a new --out (finished runs are never overwritten)")
    if actors < 1:
        raise Glm4VoiceError("--actors must be >= 1")
    from ..lm.t2t import TextToToken

    TextToToken.from_pretrained(t2t)  # a missing or wrong model fails here, once, not in every actor
    docs = read_documents(corpus)
    partial = out.with_name(out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    _check_options(partial, options, t2t, corpus)
    for stale in partial.glob(".*.tmp"):  # a killed run's half-written shard: never renamed, so never counted
        stale.unlink()
    per = options.docs_per_shard
    blocks = [{"index": i, "docs": docs[s : s + per]} for i, s in enumerate(range(0, len(docs), per))]
    start = time.perf_counter()
    reports = []
    with open_ray(ray_address, actors):
        import ray.data
        from tqdm import tqdm

        ds = ray.data.from_items([{"block": json.dumps(b, ensure_ascii=False)} for b in blocks],
                                 override_num_blocks=len(blocks))  # fmt: skip
        made = ds.map_batches(InterleaveBlock, fn_constructor_args=(str(t2t), asdict(options), str(partial)),
                              batch_size=1, concurrency=actors, batch_format="pyarrow")  # fmt: skip
        with tqdm(total=len(blocks), unit="shard", disable=not progress or None, leave=False) as bar:
            for row in made.iter_rows():
                reports.append(json.loads(row["report"]))
                bar.update(1)
    if pairs:
        reports.append(_pair_shard(t2t, pairs, options, partial, len(blocks)))
    report = _summary(reports, len(docs), time.perf_counter() - start, options)
    from ..atomic import write_text

    write_text(partial / "report.json", json.dumps(report, indent=1) + "\n")
    os.replace(partial, out)
    return report


def _check_options(partial: Path, options: InterleaveOptions, t2t, corpus) -> None:
    """A killed run continues only with the same options: its shards must not mix with another run's."""
    from ..atomic import write_text

    record = {"options": asdict(options), "t2t": str(t2t), "corpus": [str(c) for c in corpus]}
    saved = partial / "options.json"
    if saved.exists() and json.loads(saved.read_text()) != record:
        raise Glm4VoiceError(f"{partial} holds an unfinished run with other options: rerun it with the same "
                             "command, or remove it")  # fmt: skip
    write_text(saved, json.dumps(record, indent=1) + "\n")


def _pair_shard(t2t, pairs, options: InterleaveOptions, partial: Path, index: int) -> dict:
    """The paired kinds (speech only, ASR, TTS) of `tokenize-corpus` shards, as one more shard."""
    from ..atomic import atomic_path
    from ..lm.text import TextTokenizer
    from .mixture import Source, load_samples
    from .sft import IGNORE

    path = partial / SHARD.format(index)
    if not path.exists():
        tok = TextTokenizer.from_pretrained(t2t)
        rows = {"doc_id": [], "piece": [], "ids": [], "loss_mask": [], "spans": [], "speech_words": [],
                "text_words": []}  # fmt: skip
        kinds = []
        for kind in ("speech", "asr", "tts"):
            for n, s in enumerate(load_samples(Source(kind, [Path(p) for p in pairs], 1.0, kind), tok)):
                rows["doc_id"].append(f"{kind}-{n}")
                rows["piece"].append(0)
                rows["ids"].append(s.input_ids[: options.seq_length])
                rows["loss_mask"].append([int(x != IGNORE) for x in s.labels[: options.seq_length]])
                rows["spans"].append([])
                rows["speech_words"].append(0)
                rows["text_words"].append(0)
                kinds.append(kind)
        with atomic_path(path) as tmp:
            _write_rows(rows, tmp, [], kinds)
    stats = _stats_of(path)
    stats["documents"] = 0  # pairs are not corpus documents
    return stats


def _summary(reports: list[dict], documents: int, seconds: float, options: InterleaveOptions) -> dict:
    speech = sum(r["speech_words"] for r in reports)
    text = sum(r["text_words"] for r in reports)
    lengths = Counter()
    for r in reports:
        lengths.update({int(k): v for k, v in r["span_lengths"].items()})
    failed = [f for r in reports for f in r["failed"]]
    spans = sum(lengths.values())
    ids = sum(r["ids"] for r in reports)
    return {"documents": documents, "failed": len(failed), "failures": failed[:20],
            "rows": sum(r["rows"] for r in reports), "ids": ids,
            "eta": options.eta, "achieved_eta": round(speech / max(speech + text, 1), 4),
            "span_mean": options.span_mean, "achieved_span_mean": round(speech / max(spans, 1), 3),
            "span_lengths": dict(sorted(lengths.items())), "seconds": round(seconds, 2),
            "ids_per_second": round(ids / max(seconds, 1e-9), 1)}  # fmt: skip
