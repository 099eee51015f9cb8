"""Train the text-to-token model: (text, speech codes) pairs -> an LM that writes speech codes for text.

    glm4voice train-t2t --data shards/ --config t2t.json --text-tokenizer runs/bpe-speech --out runs/t2t --steps 3000
    glm4voice train-t2t --data shards/ --lm runs/t2t-base --out runs/t2t                 # from an LM folder

The pairs are `tokenize-corpus` shards of a transcribed corpus (rows with text and codes). Each becomes
`text <|endoftext|> <|begin_of_audio|> codes <|end_of_audio|>` with the loss on the codes and the end marker
only (`lm.t2t`); samples are packed as `train-lm` packs them (positions restart per sample, order a pure
function of seed and step), on the same trainer (`train.lm.fit_lm`): resume, torchrun/FSDP, checkpoints that
are LM folders `TextToToken.from_pretrained` and `glm4voice t2t` read.
"""

from __future__ import annotations

from pathlib import Path

from ..data.manifest import parquet_rows
from ..data.mixture import Mixture, PackedStream, Source
from ..data.sft import TrainingSample
from ..errors import Glm4VoiceError
from .config import RunConfig
from .lm import fit_packed, lm_defaults, lm_start
from .loop import open_run


def t2t_defaults(**overrides) -> RunConfig:
    return lm_defaults(**{"lr": 1e-3, "min_lr": 1e-4, "weight_decay": 0.01, "batch_size": 8, **overrides})


def load_pairs(paths: list[Path], tok) -> list[TrainingSample]:
    """Every shard row with text and codes, as a t2t training sample."""
    from ..lm.t2t import t2t_sample_ids

    samples = [TrainingSample(*t2t_sample_ids(tok, row["text"], row["codes"]))
               for row in parquet_rows(paths, ("codes", "text")) if row["codes"] and row["text"]]  # fmt: skip
    if not samples:
        raise Glm4VoiceError(f"{', '.join(map(str, paths))}: no rows with both text and codes")
    return samples


def train_t2t(data, out, cfg: RunConfig, *, lm=None, config=None, text_tokenizer=None, seq_length: int = 1024,
              resume=None, log=None) -> list[dict]:  # fmt: skip
    """Train on the pairs of `data` (shard files or folders); returns the logged records."""
    from ..lm.text import TextTokenizer

    source, tokenizer_from = lm_start(lm, config, text_tokenizer, resume)
    if seq_length < 16:
        raise Glm4VoiceError(f"--seq-length must be at least 16, not {seq_length}")
    state = open_run(out, resume, cfg)
    paths = [Path(p) for p in ([data] if isinstance(data, str | Path) else data)]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise Glm4VoiceError(f"{missing[0]}: no such file or folder")
    tok = TextTokenizer.from_pretrained(tokenizer_from)
    if not tok.n_audio:
        raise Glm4VoiceError(f"{tokenizer_from}: the tokenizer has no audio ids; extend-vocab it first")
    mixture = Mixture([Source("tts", paths, 1.0, "pairs")], seq_length)
    stream = PackedStream(mixture, [load_pairs(paths, tok)], cfg.seed)
    return fit_packed(stream, tok, source, config, tokenizer_from, out, cfg, state, log)
