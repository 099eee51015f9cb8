"""Streaming-thoughts fine-tuning of the speech LM: one process on a laptop CPU, or torchrun + FSDP on a cluster.

    glm4voice train-sft --lm LM_DIR --data sft.jsonl --out runs/sft [--steps 1000] [--batch-size 8]
    torchrun --nproc_per_node 8 -m glm4voice train-sft ...   # each decoder layer sharded across the ranks

Recipe defaults follow the paper (SPEC §4): AdamW β (0.9, 0.95), weight decay
0.1, learning rate 1e-5 decaying linearly to 1e-6, gradient clipping at 1.0
(`sft_defaults`). Data is `glm4voice.data.sft` samples read from a JSONL
manifest. `OUT/step-N/` is a complete LM folder (`load_lm`, `chat` and `serve`
take it as it is) plus `trainer_state.pt`; `--resume OUT/step-N` continues
on any number of ranks. The loop, checkpoints and resume are `train.loop`'s.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..data.sft import collate, read_sft_manifest
from ..errors import Glm4VoiceError
from .config import RunConfig
from .dist import Dist, shard
from .loop import Task, open_run, train
from .schedule import batch_indices


def sft_defaults(**overrides) -> RunConfig:
    """The paper's fine-tuning settings."""
    return RunConfig(**{"lr": 1e-5, "min_lr": 1e-6, "weight_decay": 0.1, "grad_clip": 1.0, **overrides})


def train_sft(lm: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, cfg: RunConfig,
              max_length: int = 8192, resume: str | os.PathLike | None = None, log=None) -> list[dict]:  # fmt: skip
    """Fine-tune; returns the logged records. `max_length`: ids per sample (a longer one is an error, never cut)."""
    from ..lm.text import TextTokenizer

    state = open_run(out, resume, cfg)
    source = Path(resume) if resume is not None else Path(lm)
    text_tokenizer = TextTokenizer.from_pretrained(source)
    samples = read_sft_manifest(data, text_tokenizer)
    longest = max(len(s.input_ids) for s in samples)
    if longest > max_length:
        raise Glm4VoiceError(f"{data}: a sample has {longest} ids, more than max_length {max_length}")
    pad = text_tokenizer.token_id("<|endoftext|>")
    dist = Dist()
    try:
        torch.manual_seed(cfg.seed)
        model = _load(source, dist, cfg)
        model.requires_grad_(True)

        def batch(index: int) -> dict:
            picked = batch_indices(index, dist.rank, dist.world, cfg.batch_size, len(samples), cfg.seed)
            return {k: v.to(dist.device) for k, v in collate([samples[i] for i in picked], pad).items()}

        def loss(model, batch) -> tuple[torch.Tensor, dict]:
            return model(**batch).loss, {"ids": float(batch["attention_mask"].sum())}

        def write_model(weights: dict, folder: Path) -> None:
            from ..lm.checkpoint import write_glm_folder

            write_glm_folder(weights.items(), model.config, torch.float32, folder, tokenizer_from=source)

        task = Task(model, batch, loss, write_model, blocks=list(model.model.layers), counts=("ids",))
        return train(task, cfg, out, dist, state, log=log)
    finally:
        dist.close()


def _load(source: Path, dist: Dist, cfg: RunConfig):
    """The LM in fp32; under torchrun each decoder layer sharded, without a full copy on any accelerator.

    Every rank builds the model on the meta device and shards it; only rank 0
    reads the checkpoint (into CPU memory), and its tensors are broadcast
    straight into the other ranks' shards.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from ..lm import load_lm
    from ..lm.checkpoint import meta_lm, rebuild_rotary

    if not dist.sharded:
        return load_lm(source, device=dist.device, dtype="float32")
    model = meta_lm(source)
    shard(model, model.model.layers, cfg.mixed_precision)
    model.to_empty(device=dist.device)
    rebuild_rotary(model, dist.device)
    full = load_lm(source, device="cpu", dtype="float32").state_dict() if dist.rank == 0 else {}
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    model.name_or_path = str(source)
    return model
