"""The speech LM's vocabulary: tokenizer files in the release's layout, and a text LM extended with speech.

    glm4voice extend-vocab --lm THUDM/glm-4-9b --n-audio 16384 --out runs/glm-4-9b-speech

GLM-4-Voice starts from a text LM (GLM-4-9B-Base) whose vocabulary gains the audio delimiters and one
`<|audio_k|>` id per speech code (SPEC §4). `extend_vocab` does that to any Glm/ChatGLM folder (or to a
tokenizer folder alone, `train-bpe`'s, for an LM trained from scratch): the new
ids follow the highest existing one, the embedding and output matrices grow by as many rows (a multiple
of 16), and each new row is drawn from the per-dimension mean and standard deviation of the old ids' rows
(the new ids start as typical tokens, not as zeros or outliers). Rows of old ids are copied unchanged, so on
text the extended LM gives exactly the old logits. Tensors stream through one at a time (a 9B LM extends
in about its own size of memory per tensor, not the whole model) into the transformers layout, written
atomically.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..errors import CheckpointError
from .text import AUDIO_TOKEN, BUILTIN_SPECIALS, TextTokenizer

SPEECH_SPECIALS = ("<|begin_of_audio|>", "<|end_of_audio|>", "<|begin_of_transcription|>",
                   "<|end_of_transcription|>")  # fmt: skip
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")  # the rows that are ids (transformers names)


def write_tokenizer_files(folder: str | Path, ranks: dict[bytes, int], n_audio: int = 0, speech: bool = True,
                          audio_gap: int = 0) -> dict[str, int]:  # fmt: skip
    """`tokenizer.model` (tiktoken ranks) and `tokenizer_config.json` as the release has them; returns the
    special ids. The 14 built-ins follow the ranks; with `speech`, the audio and transcription delimiters,
    then `audio_gap` unused ids, then `n_audio` `<|audio_k|>` tokens."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{base64.b64encode(token).decode()} {rank}" for token, rank in ranks.items()]
    (folder / "tokenizer.model").write_text("\n".join(lines) + "\n")
    names = (*BUILTIN_SPECIALS, *(SPEECH_SPECIALS if speech else ()))
    specials = {name: len(ranks) + i for i, name in enumerate(names)}
    first_audio = len(ranks) + len(names) + audio_gap
    specials.update({AUDIO_TOKEN.format(code): first_audio + code for code in range(n_audio)})
    config = {"added_tokens_decoder": {str(i): _added(name) for name, i in specials.items()},
              "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
              "padding_side": "left", "tokenizer_class": "ChatGLM4Tokenizer"}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return specials


def _added(name: str) -> dict:
    return {"content": name, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}  # fmt: skip


def new_speech_ids(tok: TextTokenizer, n_audio: int) -> dict[str, int]:
    """The ids `extend_vocab` gives: the speech delimiters the tokenizer lacks, then the audio tokens."""
    if tok.n_audio:
        raise CheckpointError(f"{tok.source}: already has {tok.n_audio} audio tokens; extend a text LM")
    names = [s for s in SPEECH_SPECIALS if s not in tok.specials] + [AUDIO_TOKEN.format(k) for k in range(n_audio)]
    return {name: tok.vocab_size + i for i, name in enumerate(names)}


def grow_rows(tensor: torch.Tensor, keep: int, rows: int, generator: torch.Generator) -> torch.Tensor:
    """[old rows, D] -> [rows, D]: rows below `keep` (the old ids) unchanged, every other row drawn from
    N(mean, std) of the kept rows, per dimension."""
    old = tensor[:keep].float()
    mean, std = old.mean(0), old.std(0)
    out = (mean + std * torch.randn(rows, tensor.shape[1], generator=generator)).to(tensor.dtype)
    out[:keep] = tensor[:keep]
    return out


def extend_vocab(lm: str | os.PathLike, n_audio: int, out: str | os.PathLike, seed: int = 0) -> dict:
    """Write `lm` with the speech vocabulary added to `out` (transformers Glm layout); returns a report."""
    from ..hub import resolve_checkpoint
    from .checkpoint import checkpoint_dtype, glm_config, iter_glm_tensors, read_config, write_glm_folder

    if not isinstance(n_audio, int) or n_audio < 1:
        raise CheckpointError(f"--n-audio must be a positive integer, not {n_audio!r}")
    folder = resolve_checkpoint(lm, ["tokenizer.model", "tokenizer_config.json"], "LM or tokenizer")
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out}: exists and is not an empty folder; pick a new destination")
    tok = TextTokenizer.from_pretrained(folder)
    new = new_speech_ids(tok, n_audio)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_config.setdefault("added_tokens_decoder", {}).update({str(i): _added(name) for name, i in new.items()})
    report = {"out": str(out), "old_ids": tok.vocab_size, "new_ids": len(new),
              "first_audio_id": new[AUDIO_TOKEN.format(0)]}  # fmt: skip
    if not (folder / "config.json").is_file():  # a tokenizer alone (train-bpe's): for an LM from scratch
        with atomic_path(out, folder=True) as tmp:
            (tmp / "tokenizer.model").write_bytes((folder / "tokenizer.model").read_bytes())
            (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=1))
        return report
    raw = read_config(folder)
    config = glm_config(folder, raw)
    keep, needed = tok.vocab_size, tok.vocab_size + len(new)
    rows = max(config.vocab_size, -(-needed // 16) * 16)
    if keep > config.vocab_size:
        raise CheckpointError(f"{folder}: the tokenizer has {keep} ids but the LM only {config.vocab_size} rows")
    generator = torch.Generator().manual_seed(seed)
    dtype = checkpoint_dtype(folder)
    grown = []

    def tensors():
        for _, name, tensor in iter_glm_tensors(folder, config, raw.get("model_type") == "chatglm", dtype):
            if name in VOCAB_TENSORS:
                tensor = grow_rows(tensor, keep, rows, generator)
                grown.append(name)
            yield name, tensor

    config.vocab_size = rows
    with atomic_path(out, folder=True) as tmp:
        write_glm_folder(tensors(), config, dtype, tmp, tokenizer_from=folder)
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=1))
        if not grown:
            raise CheckpointError(f"{folder}: no embedding or output matrix among the LM's tensors")
    return {**report, "rows": rows, "grown": grown}
