"""Load the ChatGLM-format speech LM (`THUDM/glm-4-voice-9b`) into `transformers.GlmForCausalLM`.

The released checkpoint uses the ChatGLM layout (`model_type: chatglm`, fused
`query_key_value`, `transformer.*` names). The network is exactly GLM-4, which
transformers ships as `GlmForCausalLM` (partial rotary 0.5, adjacent pairs
rotated), so the conversion is a config mapping plus tensor renames and one
split:

| ChatGLM (`transformer.` prefix)                | transformers Glm                                |
|------------------------------------------------|-------------------------------------------------|
| `embedding.word_embeddings`                    | `model.embed_tokens`                            |
| `encoder.layers.N.self_attention.query_key_value` | `model.layers.N.self_attn.{q,k,v}_proj` (rows q;k;v) |
| `encoder.layers.N.self_attention.dense`        | `model.layers.N.self_attn.o_proj`               |
| `encoder.layers.N.mlp.dense_h_to_4h`           | `model.layers.N.mlp.gate_up_proj` (same rows)   |
| `encoder.layers.N.mlp.dense_4h_to_h`           | `model.layers.N.mlp.down_proj`                  |
| `encoder.layers.N.*_layernorm`                 | same names under `model.layers.N`               |
| `encoder.final_layernorm`                      | `model.norm`                                    |
| `output_layer`                                 | `lm_head`                                       |
| `rotary_pos_emb.inv_freq`                      | dropped (recomputed from the config)            |

Memory: the model is built on the meta device and every tensor is read,
converted and assigned one at a time, shard by shard, so loading never holds
more than the model plus one tensor (a 9B bf16 model loads in ~19 GB).
A folder already in the transformers layout (`model_type: glm`, for example
the output of `glm4voice convert-lm`) loads through the same path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..atomic import atomic_path
from ..dtypes import DTYPES, as_dtype
from ..errors import CheckpointError
from ..hub import iter_safetensors, resolve_checkpoint
from ..jsonl import positive_int, read_json_object

_SAFE_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenization_chatglm.py",
)

_LAYER = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.(.+)$")
_LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_TOP_RENAMES = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
_DROPPED = ("transformer.rotary_pos_emb.inv_freq",)


# --- config -----------------------------------------------------------------------------------


def read_config(folder: Path) -> dict:
    return read_json_object(folder / "config.json", "LM config", CheckpointError)


def glm_config_from_chatglm(cfg: dict, source: str = "config.json"):
    """Map a ChatGLM config.json (dict) to a `transformers.GlmConfig`."""
    from transformers import GlmConfig

    def need(key, *alternatives):
        for name in (key, *alternatives):
            if cfg.get(name) is not None:
                return cfg[name]
        raise CheckpointError(f"{source}: missing '{key}'")

    # Variants of the ChatGLM block that GlmForCausalLM cannot express.
    unsupported = {
        "add_bias_linear": True,
        "rmsnorm": False,
        "post_layer_norm": False,
        "apply_residual_connection_post_layernorm": True,
    }
    for key, bad in unsupported.items():
        if cfg.get(key, not bad) == bad:
            raise CheckpointError(f"{source}: {key}={bad} is not supported (not a GLM-4 layout)")
    def count(key, *alternatives):  # a positive integer
        return positive_int(need(key, *alternatives), key, source, CheckpointError)

    heads = count("num_attention_heads")
    hidden = count("hidden_size")
    kv_heads = count("multi_query_group_num") if cfg.get("multi_query_attention", False) else heads
    if cfg.get("kv_channels") is None and hidden % heads:
        raise CheckpointError(f"{source}: num_attention_heads ({heads}) must divide hidden_size ({hidden})")
    head_dim = count("kv_channels") if cfg.get("kv_channels") is not None else hidden // heads
    if heads % kv_heads:
        raise CheckpointError(f"{source}: multi_query_group_num ({kv_heads}) must divide num_attention_heads ({heads})")
    vocab = count("padded_vocab_size", "vocab_size")
    eos = cfg.get("eos_token_id")
    pad = cfg.get("pad_token_id")
    if isinstance(pad, int) and not 0 <= pad < vocab:
        pad = None
    return GlmConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=count("ffn_hidden_size"),
        num_hidden_layers=count("num_layers", "num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=float(cfg.get("layernorm_epsilon", 1e-5)),
        max_position_embeddings=int(cfg.get("seq_length", 8192)),
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0 * float(cfg.get("rope_ratio", 1) or 1),
            "partial_rotary_factor": 0.5,
        },
        attention_bias=bool(cfg.get("add_qkv_bias", True)),
        attention_dropout=0.0,
        tie_word_embeddings=False,
        pad_token_id=pad,
        eos_token_id=eos,
    )


def glm_config(folder: Path, raw: dict | None = None):
    """The `GlmConfig` for a checkpoint folder in either layout."""
    from transformers import GlmConfig

    raw = read_config(folder) if raw is None else raw
    kind = raw.get("model_type")
    if kind == "chatglm":
        return glm_config_from_chatglm(raw, f"{folder}/config.json")
    if kind == "glm":
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            positive_int(raw.get(key), key, f"{folder}/config.json", CheckpointError)
        try:
            return GlmConfig.from_dict(raw)
        except Exception as exc:  # strict dataclass validation
            raise CheckpointError(f"{folder}/config.json: not a valid Glm config ({exc})") from exc
    raise CheckpointError(f"LM checkpoint {folder}: model_type {kind!r} is not supported (expected 'chatglm' or 'glm')")


# --- tensors ----------------------------------------------------------------------------------


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the index's shards, or the single file."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{index}: unreadable index ({exc})") from exc
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(f"LM checkpoint {folder}: missing shard(s) {', '.join(missing)}")
        return [folder / n for n in names]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    if any(folder.glob("*.bin")):
        raise CheckpointError(f"LM checkpoint {folder}: only .bin weights found; safetensors are required")
    raise CheckpointError(f"LM checkpoint {folder}: no model.safetensors or model.safetensors.index.json")


def convert_tensor(name: str, tensor: torch.Tensor, config) -> list[tuple[str, torch.Tensor]]:
    """One ChatGLM tensor -> its transformers Glm tensor(s). Unknown names raise."""
    if name in _TOP_RENAMES:
        return [(_TOP_RENAMES[name], tensor)]
    if name in _DROPPED:
        return []
    match = _LAYER.match(name)
    if match is None:
        raise CheckpointError(f"unexpected tensor {name!r} in a ChatGLM checkpoint")
    layer, rest = match.groups()
    prefix = f"model.layers.{layer}."
    if rest in _LAYER_RENAMES:
        return [(prefix + _LAYER_RENAMES[rest], tensor)]
    if rest in ("self_attention.query_key_value.weight", "self_attention.query_key_value.bias"):
        kind = rest.rsplit(".", 1)[1]
        q_rows = config.num_attention_heads * config.head_dim
        kv_rows = config.num_key_value_heads * config.head_dim
        if tensor.shape[0] != q_rows + 2 * kv_rows:
            raise CheckpointError(f"{name}: {tensor.shape[0]} rows, expected {q_rows} + 2 x {kv_rows} from the config")
        q, k, v = torch.split(tensor, [q_rows, kv_rows, kv_rows], dim=0)
        # clone: each part owns its storage (safetensors refuses shared storage when saving).
        parts = zip("qkv", (q, k, v), strict=True)
        return [(f"{prefix}self_attn.{p}_proj.{kind}", t.clone()) for p, t in parts]
    raise CheckpointError(f"unexpected tensor {name!r} in a ChatGLM checkpoint")


def iter_glm_tensors(
    folder: Path, config, chatglm: bool, dtype: torch.dtype | None = None, device="cpu"
) -> Iterator[tuple[int, str, torch.Tensor]]:
    """Yield (shard index, Glm name, tensor) one tensor at a time, converted and cast."""
    for shard, path in enumerate(weight_files(folder)):
        for name, tensor in iter_safetensors(path, "LM"):
            pieces = convert_tensor(name, tensor, config) if chatglm else [(name, tensor)]
            for new_name, t in pieces:
                if dtype is not None and t.is_floating_point():
                    t = t.to(dtype)
                yield shard, new_name, t.to(device)


def checkpoint_dtype(folder: Path) -> torch.dtype:
    """The floating dtype the checkpoint stores (read from the first shard's header)."""
    path = weight_files(folder)[0]
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                kind = f.get_slice(name).get_dtype()
                if kind in _SAFE_DTYPES:
                    return _SAFE_DTYPES[kind]
    except Exception as exc:  # a damaged header: the same one-line error the tensor reader gives
        detail = str(exc).splitlines()[0] if str(exc) else "damaged"
        raise CheckpointError(f"LM checkpoint {path}: not a readable safetensors file ({detail})") from None
    return torch.float32


# --- load -------------------------------------------------------------------------------------


def meta_lm(folder: Path, raw: dict | None = None, attn_implementation: str = "sdpa"):
    """The checkpoint's `GlmForCausalLM` on the meta device: its structure, no memory, no values yet.

    Fill it (`load_state_dict(..., assign=True)`, or FSDP's `to_empty` + a broadcast), then call
    `rebuild_rotary`: the rotary inverse frequencies are a non-persistent buffer, in no checkpoint.
    """
    from transformers import GlmForCausalLM

    config = glm_config(folder, raw)
    config._attn_implementation = attn_implementation
    with torch.device("meta"):
        return GlmForCausalLM(config)


def rebuild_rotary(model, device) -> None:
    """Recompute the rotary inverse frequencies (created on meta by `meta_lm`) on `device`."""
    from transformers.models.glm.modeling_glm import GlmRotaryEmbedding

    model.model.rotary_emb = GlmRotaryEmbedding(model.config).to(device)


def load_lm(path_or_id: str | os.PathLike, device="cpu", dtype="auto", attn_implementation: str = "sdpa"):
    """Load the speech LM as a `transformers.GlmForCausalLM` in eval mode.

    `path_or_id`: a folder (or hub id) in the ChatGLM layout (the released
    `THUDM/glm-4-voice-9b`) or the transformers layout (`convert-lm` output),
    single-file or sharded. `dtype`: "auto" takes the config's `torch_dtype` or `dtype` (as
    transformers does; bf16 for the release), else the dtype the weights are
    stored in; or float32 / bfloat16 / float16. (The tiny bundle stores bf16
    weights to stay small and names float32: it computes in float32 on CPUs.)
    """
    folder = resolve_checkpoint(path_or_id, ["config.json"], "LM")
    raw = read_config(folder)
    model = meta_lm(folder, raw, attn_implementation)  # checks the config first
    config = model.config
    named = raw.get("torch_dtype", raw.get("dtype"))  # the ChatGLM layout's key; transformers now writes `dtype`
    target = as_dtype(dtype, allow_auto=True) or DTYPES.get(named) or checkpoint_dtype(folder)
    expected = set(model.state_dict().keys())
    loaded: set[str] = set()
    part: dict[str, torch.Tensor] = {}
    current = 0

    def flush():
        if part:
            _assign(model, part, folder)
            loaded.update(part)
            part.clear()

    for shard, name, tensor in iter_glm_tensors(folder, config, raw.get("model_type") == "chatglm", target, device):
        if shard != current:
            flush()
            current = shard
        if name not in expected:
            raise CheckpointError(f"LM checkpoint {folder}: unexpected tensor {name!r}")
        part[name] = tensor
    flush()
    missing = sorted(expected - loaded)
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CheckpointError(f"LM checkpoint {folder}: missing {len(missing)} tensor(s): {shown}")
    rebuild_rotary(model, device)
    model.requires_grad_(False)
    model.eval()
    model.name_or_path = str(folder)
    model.config.name_or_path = str(folder)
    return model


def _assign(model, part: dict[str, torch.Tensor], folder: Path) -> None:
    try:
        model.load_state_dict(part, strict=False, assign=True)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"LM checkpoint {folder}: tensors do not match the config ({exc})") from exc


# --- convert ----------------------------------------------------------------------------------


def convert_lm(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    dtype="auto",
    max_shard_bytes: int = 5 * 1024**3,
) -> Path:
    """Write `src` (ChatGLM layout) to `dst` in the transformers Glm layout, once.

    Writes `config.json`, `generation_config.json`, safetensors shards
    (`model-0000i-of-0000n.safetensors` + index, or one `model.safetensors`)
    and copies the text tokenizer files. Streams tensor by tensor: memory stays
    around one shard. `dst` must not already hold a checkpoint; it is written
    beside and renamed into place, so a crash never leaves half a folder.
    """
    folder = resolve_checkpoint(src, ["config.json"], "LM")
    raw = read_config(folder)
    if raw.get("model_type") != "chatglm":
        raise CheckpointError(f"{folder}: model_type {raw.get('model_type')!r}; convert-lm expects 'chatglm'")
    config = glm_config(folder, raw)
    target = as_dtype(dtype, allow_auto=True) or checkpoint_dtype(folder)
    out = Path(dst).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out}: exists and is not an empty folder; pick a new destination")
    tensors = ((name, tensor) for _, name, tensor in iter_glm_tensors(folder, config, True, target))
    with atomic_path(out, folder=True) as tmp:
        write_glm_folder(tensors, config, target, tmp, tokenizer_from=folder, max_shard_bytes=max_shard_bytes)
    return out


def write_glm_folder(tensors, config, dtype: torch.dtype, out: Path, tokenizer_from: Path,
                     max_shard_bytes: int = 5 * 1024**3) -> None:  # fmt: skip
    """Write (name, tensor) pairs as a transformers Glm checkpoint folder `out` (existing, empty).

    Safetensors shards (`model-0000i-of-0000n.safetensors` + index, or one
    `model.safetensors`), `config.json`, `generation_config.json`, and the
    tokenizer files copied from `tokenizer_from`. Shards are written one at a
    time, so memory stays around one shard. Used by `convert_lm` and by training.
    """
    written: list[tuple[str, list[str]]] = []  # (temporary file name, tensor names)
    shard: dict[str, torch.Tensor] = {}
    size = 0

    def write():
        nonlocal size
        if shard:
            name = f"part-{len(written):05d}.safetensors"
            save_file(shard, str(out / name), metadata={"format": "pt"})
            written.append((name, list(shard)))
            shard.clear()
            size = 0

    total = 0
    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > max_shard_bytes:
            write()
        shard[name] = tensor.contiguous()
        size += nbytes
        total += nbytes
    write()

    if len(written) == 1:
        (out / written[0][0]).rename(out / "model.safetensors")
    else:
        weight_map = {}
        for i, (tmp, names) in enumerate(written):
            final = f"model-{i + 1:05d}-of-{len(written):05d}.safetensors"
            (out / tmp).rename(out / final)
            weight_map.update({n: final for n in names})
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    config.architectures = ["GlmForCausalLM"]
    config.dtype = dtype
    config.save_pretrained(out)
    _write_generation_config(out, config)
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).is_file():
            shutil.copy2(tokenizer_from / name, out / name)


def _write_generation_config(out: Path, config) -> None:
    gen = {"eos_token_id": config.eos_token_id, "do_sample": True, "temperature": 0.2, "top_p": 0.8}
    if config.pad_token_id is not None:
        gen["pad_token_id"] = config.pad_token_id
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
