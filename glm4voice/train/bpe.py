"""A byte-level BPE text tokenizer for a from-scratch LM, in the format the LM loader reads.

    glm4voice train-bpe --corpus texts.jsonl --vocab-size 4000 --out runs/bpe

Trained with HF `tokenizers` (its BPE trainer, over GLM-4's own pre-tokenization pattern, on bytes) and
written as tiktoken ranks: the 256 bytes first (rank = byte value), then every merge in the order it was
learned, so tiktoken's lowest-rank-first merging repeats the trainer's merges and both encode alike
(tested). The folder holds `tokenizer.model` and `tokenizer_config.json` with GLM-4's 14 built-in
specials: a text LM's tokenizer, which `extend-vocab` gives the speech ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..atomic import atomic_path
from ..errors import Glm4VoiceError

MIN_VOCAB = 256 + 1  # the bytes and at least one merge


def byte_symbols() -> dict[int, str]:
    """The byte -> printable character map byte-level BPE trains on (GPT-2's): printable Latin-1 bytes stand
    for themselves, the rest take the characters from U+0100 on, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def train_bpe(texts: Iterable[str], vocab_size: int) -> dict[bytes, int]:
    """Tiktoken ranks (bytes -> rank) of a BPE with `vocab_size` ranks (fewer if the texts run out of pairs)."""
    return ranks_of(hf_bpe(texts, vocab_size))


def hf_bpe(texts: Iterable[str], vocab_size: int):
    """The HF `tokenizers` BPE trained on `texts` over GLM-4's pre-tokenization, on bytes."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from ..lm.text import PATTERN

    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
        raise Glm4VoiceError(f"--vocab-size must be at least {MIN_VOCAB} (256 bytes and a merge), not {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    return tok


def ranks_of(tok) -> dict[bytes, int]:
    """A trained HF byte-level BPE as tiktoken ranks: bytes by value, then merges in learned order."""
    import json

    to_byte = {c: b for b, c in byte_symbols().items()}
    ranks = {bytes([b]): b for b in range(256)}
    for merge in json.loads(tok.to_str())["model"]["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        ranks.setdefault(bytes(to_byte[c] for c in left + right), len(ranks))
    if len(ranks) == 256:
        raise Glm4VoiceError("the corpus gave no merges: it needs some text")
    return ranks


def write_bpe_folder(texts: Iterable[str], vocab_size: int, out: str | os.PathLike) -> dict:
    """Train and write the tokenizer folder atomically; returns a report."""
    from ..lm.vocab import write_tokenizer_files

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Glm4VoiceError(f"{out}: exists and is not an empty folder; pick a new --out")
    counted = _Counted(texts)
    ranks = train_bpe(counted, vocab_size)
    with atomic_path(out, folder=True) as tmp:
        specials = write_tokenizer_files(tmp, ranks, speech=False)
    return {"out": str(out), "documents": counted.n, "ranks": len(ranks), "vocab": max(specials.values()) + 1}


class _Counted:
    def __init__(self, texts: Iterable[str]):
        self.texts, self.n = texts, 0

    def __iter__(self):
        for text in self.texts:
            self.n += 1
            yield text
