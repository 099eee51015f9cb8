"""The speech LM's one trainer: pre-training on a mixture (`train-lm`) and streaming-thoughts fine-tuning
(`train-sft`) differ only in where their batches come from.

    glm4voice train-lm --lm runs/speech-lm --mixture mix.json --out runs/pt --steps 10000
    glm4voice train-lm --config tiny-lm.json --text-tokenizer runs/bpe-speech --mixture mix.json --out runs/pt
    torchrun --nproc_per_node 8 -m glm4voice train-lm ...     # each decoder layer sharded across the ranks

`train-lm` reads a mixture (`data.mixture`): samples of every source, drawn by their token shares and packed
into sequences of `seq_length` ids whose samples never see each other (positions restart per sample). Global
sequence g goes to step g // (batch x ranks), so the data order is a function of (mixture, seed, step) alone
and a resumed run on any number of ranks reads what the original would have. Defaults are the paper's
pre-training (SPEC §4): AdamW β (0.9, 0.95), learning rate 6e-5 decaying linearly to 6e-6.

A run starts from an LM folder (either layout; `extend-vocab`'s output for GLM-4-9B-Base) or, for the tiny
recipe, from a config (transformers Glm keys: sizes) and a tokenizer folder (`train-bpe` then
`extend-vocab` for the speech ids): random weights, vocabulary from the tokenizer. `OUT/step-N/` is a
complete LM folder (`load_lm`, `chat` and `serve` take it as it is).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import Glm4VoiceError
from .config import RunConfig
from .dist import Dist, shard
from .loop import Task, open_run, train


def lm_defaults(**overrides) -> RunConfig:
    """The paper's pre-training settings (sequence 8192 is the mixture's `seq_length`)."""
    return RunConfig(**{"lr": 6e-5, "min_lr": 6e-6, "weight_decay": 0.1, "grad_clip": 1.0, **overrides})


def fit_lm(source: Path | None, config: dict | None, tokenizer_from: Path, out, cfg: RunConfig, state,
           make_batch: Callable[[int, Dist], dict], lora: int = 0, adapter: Path | None = None,
           kept: dict | None = None, log=None) -> list[dict]:  # fmt: skip
    """Train the LM of `source` (a folder) or of `config` (random weights) on `make_batch(index, dist)`
    batches (input_ids, labels, and attention_mask or position_ids); returns the logged records.

    `lora` > 0: PEFT LoRA adapters of that rank on every projection, the LM itself frozen (`adapter`: a
    resumed run's adapter folder); checkpoints hold the merged LM and `adapter/` (PEFT's own format). `kept`:
    settings of the caller's own stored in every checkpoint's trainer state (what a resume must check)."""
    dist = Dist()
    try:
        torch.manual_seed(cfg.seed)
        if lora and dist.sharded:
            raise Glm4VoiceError("--lora trains in one process (one GPU's worth of memory); run it without torchrun")
        model = _load(source, dist, cfg) if source is not None else _new(config, dist, cfg)
        model.requires_grad_(not lora)
        if lora:
            model = _with_lora(model, lora, adapter)

        def batch(index: int) -> dict:
            return {k: v.to(dist.device) for k, v in make_batch(index, dist).items()}

        def loss(model, batch) -> tuple[torch.Tensor, dict]:
            counted = float((batch["labels"] != -100).sum())  # the ids that carry loss
            return model(**batch, use_cache=False).loss, {"loss_ids": counted}

        def write_model(weights: dict, folder: Path) -> None:
            from ..lm.checkpoint import write_glm_folder

            if lora:
                weights = _merge_lora(weights, model, folder / ADAPTER)
            write_glm_folder(weights.items(), model.config, torch.float32, folder, tokenizer_from=tokenizer_from)

        layers = model.base_model.model.model.layers if lora else model.model.layers
        task = Task(model, batch, loss, write_model, blocks=list(layers), counts=("loss_ids",),
                    extra_state=(lambda: dict(kept)) if kept else None)  # fmt: skip
        return train(task, cfg, out, dist, state, log=log)
    finally:
        dist.close()


def train_lm(mixture, out, cfg: RunConfig, *, lm=None, config=None, text_tokenizer=None, resume=None,
             log=None) -> list[dict]:  # fmt: skip
    """Pre-train on a mixture file; returns the logged records (see the module docstring)."""
    from ..data.mixture import PackedStream, load_samples, read_mixture
    from ..lm.text import TextTokenizer

    source, tokenizer_from = lm_start(lm, config, text_tokenizer, resume)
    state = open_run(out, resume, cfg)
    mix = read_mixture(mixture)
    tok = TextTokenizer.from_pretrained(tokenizer_from)
    if not tok.n_audio and any(s.kind in ("speech", "asr", "tts") for s in mix.sources):
        raise Glm4VoiceError(f"{tokenizer_from}: the tokenizer has no audio ids; extend-vocab the LM first")
    stream = PackedStream(mix, [load_samples(s, tok) for s in mix.sources], cfg.seed)
    return fit_packed(stream, tok, source, config, tokenizer_from, out, cfg, state, log)


def lm_start(lm, config, text_tokenizer, resume) -> tuple[Path | None, Path]:
    """(the LM folder a run starts from, None for random weights of `config`; the folder its text tokenizer
    comes from), after checking that the options name exactly one start."""
    if resume is None and (lm is None) == (config is None):
        raise Glm4VoiceError("give --lm (an LM folder) or --config with --text-tokenizer (from scratch), or --resume")
    if config is not None and text_tokenizer is None and resume is None:
        raise Glm4VoiceError("--config needs --text-tokenizer (the folder whose vocabulary the new LM gets)")
    source = Path(resume) if resume is not None else (Path(lm) if lm is not None else None)
    return source, source if source is not None else Path(text_tokenizer)


def fit_packed(stream, tok, source, config, tokenizer_from, out, cfg: RunConfig, state, log) -> list[dict]:
    """`fit_lm` on a `PackedStream`: global sequence g goes to step g // (batch x ranks), rank by rank."""
    raw = scratch_config(config, tok) if source is None else None
    pad = tok.token_id("<|endoftext|>")

    def make_batch(index: int, dist: Dist) -> dict:
        return stream.batch((index * dist.world + dist.rank) * cfg.batch_size, cfg.batch_size, pad)

    return fit_lm(source, raw, tokenizer_from, out, cfg, state, make_batch, log=log)


ADAPTER = "adapter"  # a LoRA run's adapter inside each step-N (PEFT's adapter_config.json + safetensors)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"]


def _with_lora(model, rank: int, adapter: Path | None):
    """The frozen LM with trainable LoRA adapters (alpha = 2 x rank, as is usual), or a resumed run's."""
    try:
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    except ImportError:
        raise Glm4VoiceError("--lora needs PEFT: pip install 'glm4voice[train]'") from None
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS,
                                             lora_dropout=0.0))  # fmt: skip
    if adapter is not None:
        from safetensors.torch import load_file

        if not (adapter / "adapter_model.safetensors").is_file():
            raise Glm4VoiceError(f"{adapter}: no adapter_model.safetensors to resume the LoRA run from")
        set_peft_model_state_dict(model, load_file(adapter / "adapter_model.safetensors"))
    return model


def _merge_lora(weights: dict, model, adapter_folder: Path) -> dict:
    """The merged LM's tensors (W + scale B A, transformers names) from a PEFT model's full state dict;
    the adapter itself is written to `adapter_folder` in PEFT's format."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    config = model.peft_config["default"]
    scale = config.lora_alpha / config.r
    prefix, merged = "base_model.model.", {}
    for key, tensor in weights.items():
        if ".lora_" in key:
            continue
        name = key.removeprefix(prefix).replace(".base_layer.", ".")
        stem = key[: -len(".base_layer.weight")] if key.endswith(".base_layer.weight") else None
        if stem is not None and f"{stem}.lora_A.default.weight" in weights:
            a, b = weights[f"{stem}.lora_A.default.weight"], weights[f"{stem}.lora_B.default.weight"]
            tensor = tensor + scale * (b.float() @ a.float()).to(tensor.dtype)
        merged[name] = tensor
    adapter_folder.mkdir()
    adapter = {k: v.contiguous() for k, v in get_peft_model_state_dict(model, state_dict=weights).items()}
    save_file(adapter, str(adapter_folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(adapter_folder))
    return merged


def scratch_config(path, tok) -> dict:
    """A from-scratch LM's Glm config: the sizes of the `--config` file, the vocabulary and ids of `tok`."""
    from ..jsonl import read_json_object

    raw = read_json_object(path, "--config (Glm sizes)")
    return {**raw, "vocab_size": -(-tok.vocab_size // 16) * 16, "pad_token_id": tok.token_id("<|endoftext|>"),
            "eos_token_id": [tok.token_id(n) for n in ("<|endoftext|>", "<|user|>", "<|observation|>")]}  # fmt: skip


def _new(config: dict, dist: Dist, cfg: RunConfig):
    """Random weights of a Glm config (the same on every rank: the seed is set), sharded under torchrun."""
    from transformers import GlmConfig, GlmForCausalLM

    try:
        model = GlmForCausalLM(GlmConfig(**config)).to(dist.device)
    except (TypeError, ValueError) as exc:
        raise Glm4VoiceError(f"--config: not a valid Glm config ({exc})") from None
    if dist.sharded:
        shard(model, model.model.layers, cfg.mixed_precision)
    return model


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

