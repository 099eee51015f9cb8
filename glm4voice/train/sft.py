"""Streaming-thoughts fine-tuning of the speech LM: one process on a laptop CPU, or torchrun + FSDP on a cluster.

    glm4voice train-sft --lm LM_DIR --data sft.jsonl --out runs/sft [--steps 1000] [--batch-size 8]
    glm4voice train-sft --lm LM_DIR --data sft.jsonl --out runs/lora --lora 16   # adapters only: one 24 GB GPU
    torchrun --nproc_per_node 8 -m glm4voice train-sft ...   # each decoder layer sharded across the ranks

Recipe defaults follow the paper (SPEC §4): AdamW β (0.9, 0.95), weight decay
0.1, learning rate 1e-5 decaying linearly to 1e-6, gradient clipping at 1.0
(`sft_defaults`). Data is `glm4voice.data.sft` samples read from a JSONL
manifest. `OUT/step-N/` is a complete LM folder (`load_lm`, `chat` and `serve`
take it as it is) plus `trainer_state.pt`; `--resume OUT/step-N` continues
on any number of ranks. The model, loss and export are `train.lm`'s (one trainer
for pre-training and fine-tuning); the loop, checkpoints and resume are `train.loop`'s.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..data.sft import collate, read_sft_manifest, with_speech_copies
from ..errors import Glm4VoiceError
from .config import RunConfig
from .dist import Dist
from .lm import fit_lm
from .loop import open_run
from .schedule import batch_indices


def sft_defaults(**overrides) -> RunConfig:
    """The paper's fine-tuning settings."""
    return RunConfig(**{"lr": 1e-5, "min_lr": 1e-6, "weight_decay": 0.1, "grad_clip": 1.0, **overrides})


def train_sft(lm: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, cfg: RunConfig,
              max_length: int = 8192, lora: int = 0, resume: str | os.PathLike | None = None,
              speech_copies: int = 1, log=None) -> list[dict]:  # fmt: skip
    """Fine-tune; returns the logged records. `max_length`: ids per sample (a longer one is an error, never cut).
    `speech_copies`: each turn's speech-output copy that many times per pass over the data (`with_speech_copies`).

    `lora` > 0: LoRA adapters of that rank train, the LM stays frozen; a resumed LoRA run starts again from
    `lm` with the checkpoint's adapter."""
    from ..lm.text import TextTokenizer

    if lora < 0:
        raise Glm4VoiceError(f"--lora must be a rank >= 1 (0: off), not {lora}")
    if speech_copies < 1:
        raise Glm4VoiceError(f"--speech-copies must be >= 1, not {speech_copies}")
    kept = {"speech_copies": speech_copies}  # it shapes the data: a resume must keep it
    state = open_run(out, resume, cfg, kept)
    source = Path(resume) if resume is not None and not lora else Path(lm)
    adapter = Path(resume) / "adapter" if resume is not None and lora else None
    text_tokenizer = TextTokenizer.from_pretrained(source)
    samples = with_speech_copies(read_sft_manifest(data, text_tokenizer), text_tokenizer, speech_copies)
    longest = max(len(s.input_ids) for s in samples)
    if longest > max_length:
        raise Glm4VoiceError(f"{data}: a sample has {longest} ids, more than max_length {max_length}")
    pad = text_tokenizer.token_id("<|endoftext|>")

    def make_batch(index: int, dist: Dist) -> dict:
        picked = batch_indices(index, dist.rank, dist.world, cfg.batch_size, len(samples), cfg.seed)
        return collate([samples[i] for i in picked], pad)

    return fit_lm(source, None, source, out, cfg, state, make_batch, lora=lora, adapter=adapter,
                  kept=kept, log=log)  # fmt: skip
