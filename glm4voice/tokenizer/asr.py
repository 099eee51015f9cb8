"""The speech tokenizer as it is trained: Whisper ASR with a 12.5 Hz VQ bottleneck in the encoder (SPEC §1).

    speech -> encoder layers < quantize_position (the inference `WhisperVQEncoder`, the same module)
           -> pooling -> VQ (`vq.VectorQuantizer`) -> + embed_positions2
           -> encoder layers >= quantize_position -> layer_norm -> Whisper decoder -> transcript

The decoder is transformers' `WhisperDecoder`; its output projection is tied
to its token embedding, as in Whisper. Transcripts are `TranscriptCodec` ids:
`<|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|> text <|endoftext|>`,
the Whisper layout, so a real Whisper folder's tokenizer works as it is.

Folders: the ASR-training layout (`model.encoder.*`, `model.decoder.*`,
`proj_out.weight`, `tokenizer.json`, a Whisper config with the VQ fields) is
what training writes, resumes and fine-tunes from; a transformers Whisper
folder is the same layout without the VQ tensors, so it initialises training
directly. `write_released_folder` writes the inference-only layout the
reference reads. `SpeechTokenizer.from_pretrained` reads both.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import CheckpointError, Glm4VoiceError
from ..hub import check_state
from .checkpoint import load_training_tensors, read_json
from .config import TokenizerConfig
from .network import EncoderLayer, WhisperVQEncoder
from .vq import VectorQuantizer, VQOutput

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|zh|>", "<|transcribe|>", "<|notimestamps|>"]
PREPROCESSOR = {"chunk_length": 30, "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 128,
                "hop_length": 160, "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000,
                "padding_side": "right", "padding_value": 0.0, "return_attention_mask": False,
                "sampling_rate": 16000}  # fmt: skip
# The VQ fields a Whisper config gains (GLM-4-Voice's values; quantize_position defaults to half the encoder).
VQ_DEFAULTS = {"pooling_kernel_size": 4, "pooling_type": "avg", "quantize_vocab_size": 16384,
               "quantize_causal_block_size": 200, "encoder_causal_convolution": True, "quantize_ema_decay": 0.99,
               "quantize_restart_interval": 100, "quantize_commit_coefficient": 0.25, "quantize_loss_scale": 10.0,
               "skip_language_detection": True}  # fmt: skip
# Our field beyond GLM-4-Voice's: the weight of an auxiliary CTC loss on the encoder output (0: the paper's
# recipe, no CTC head). A model from scratch learns to align far sooner with it (hybrid CTC/attention ASR).
CTC_FIELD = "ctc_weight"
# And its companion (InterCTC): the share of that CTC loss given to a second head on the hidden states the pooling
# reads (50 Hz). At 12.5 Hz an English transcript has nearly as many ids as frames, which CTC can barely align.
INTER_CTC_FIELD = "inter_ctc_weight"
# What the intermediate head predicts: "transcript" (the transcript ids, as the final head) or "phonemes"
# (espeak-ng's phonemes of the transcript, `data.phonemes`: sounds are learnt sooner than spellings); with
# phonemes, the symbols (the inventory of the training transcripts, blank 0 before them) are kept in the config.
INTER_TARGETS_FIELD = "inter_ctc_targets"
PHONEMES_FIELD = "inter_ctc_phonemes"  # the phoneme symbols of whichever head predicts phonemes (one inventory)
# The final head's own choices: its targets (as the intermediate head's), and how many CTC steps each 12.5 Hz
# frame gives it (`ctc_upsample` k: the head predicts k symbols per frame). Phonemes at k 4 make every code
# carry the sounds of its 80 ms, which the flow needs to speak them; the transcript at k 1 is the default.
TARGETS_FIELD = "ctc_targets"
UPSAMPLE_FIELD = "ctc_upsample"
TARGETS = ("transcript", "phonemes")
CTC_HEADS = ("ctc_head", "inter_ctc_head")  # their modules: ASR-training layout only, optional when loading
# checkpoint name -> module name of the VQ tensors
VQ_NAMES = {"codebook.weight": "vq.codebook", "ema_count": "vq.ema_count", "ema_weight": "vq.ema_weight"}


class TranscriptCodec:
    """Transcripts <-> decoder ids, over an HF `tokenizers` tokenizer holding the Whisper special tokens."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        missing = [s for s in SPECIALS if tokenizer.token_to_id(s) is None]
        if missing:
            raise CheckpointError(f"the transcript tokenizer lacks {', '.join(missing)}")
        self.eot, self.sot = tokenizer.token_to_id("<|endoftext|>"), tokenizer.token_to_id("<|startoftranscript|>")
        self.task = [tokenizer.token_to_id("<|transcribe|>"), tokenizer.token_to_id("<|notimestamps|>")]
        self.specials = {tokenizer.token_to_id(s) for s in SPECIALS}

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @classmethod
    def from_folder(cls, folder: Path) -> TranscriptCodec:
        from tokenizers import Tokenizer

        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"{folder}: no tokenizer.json (the transcript tokenizer)")
        return cls(Tokenizer.from_file(str(path)))

    @classmethod
    def train(cls, texts, vocab_size: int = 1000) -> TranscriptCodec:
        """A byte-level BPE on the corpus's transcripts (English and Mandarin alike), with the Whisper specials."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
        tok.train_from_iterator(list(texts), trainer)
        return cls(tok)

    def save(self, folder: Path) -> None:
        self.tokenizer.save(str(Path(folder) / "tokenizer.json"))

    def lang_id(self, lang: str) -> int:
        lang_id = self.tokenizer.token_to_id(f"<|{lang}|>")
        if lang_id is None:
            raise CheckpointError(f"the transcript tokenizer has no language token <|{lang}|>")
        return lang_id

    def prefix(self, lang: str | None = None) -> list[int]:
        """What a transcript starts with: <|startoftranscript|> alone (the decoder names the language), or with
        the language and task given, as in training, so a known language is never guessed wrong."""
        return [self.sot] if lang is None else [self.sot, self.lang_id(lang), *self.task]

    def encode(self, text: str, lang: str) -> list[int]:
        body = self.tokenizer.encode(text, add_special_tokens=False).ids
        return [*self.prefix(lang), *body, self.eot]

    def decode(self, ids) -> str:
        return self.tokenizer.decode([i for i in ids if i not in self.specials], skip_special_tokens=True).strip()


def vq_config(base: dict, overrides: dict | None = None) -> dict:
    """A Whisper config dict with the VQ fields (GLM-4-Voice's defaults, then `overrides`), checked."""
    cfg = {**base}
    for key, value in VQ_DEFAULTS.items():
        cfg.setdefault(key, value)
    cfg.update(overrides or {})
    layers = cfg.get("encoder_layers")
    if not isinstance(layers, int) or layers < 1:
        raise CheckpointError("config: encoder_layers must be a positive integer")
    cfg.setdefault("quantize_position", max(1, layers // 2))
    for field in (CTC_FIELD, INTER_CTC_FIELD):
        cfg.setdefault(field, 0.0)
        if not (isinstance(cfg[field], (int, float)) and 0.0 <= cfg[field] < 1.0):
            raise CheckpointError(f"config: {field} must lie in [0, 1), not {cfg[field]!r}")
    cfg.setdefault("pooling_position", cfg["quantize_position"])
    if cfg[INTER_CTC_FIELD] > 0 and (cfg[CTC_FIELD] == 0 or cfg["pooling_kernel_size"] < 2):
        raise CheckpointError(f"config: {INTER_CTC_FIELD} needs a CTC head ({CTC_FIELD} > 0) and pooling")
    for field, weight in ((INTER_TARGETS_FIELD, INTER_CTC_FIELD), (TARGETS_FIELD, CTC_FIELD)):
        cfg.setdefault(field, "transcript")
        if cfg[field] not in TARGETS:
            raise CheckpointError(f"config: {field} is transcript or phonemes, not {cfg[field]!r}")
        if cfg[field] == "phonemes" and cfg[weight] == 0:
            raise CheckpointError(f"config: {field} phonemes needs its head ({weight} > 0)")
    cfg.setdefault(UPSAMPLE_FIELD, 1)
    if not (isinstance(cfg[UPSAMPLE_FIELD], int) and 1 <= cfg[UPSAMPLE_FIELD] <= 16):
        raise CheckpointError(f"config: {UPSAMPLE_FIELD} must be an integer in 1..16, not {cfg[UPSAMPLE_FIELD]!r}")
    if "phonemes" in (cfg[INTER_TARGETS_FIELD], cfg[TARGETS_FIELD]):
        symbols = cfg.get(PHONEMES_FIELD)
        if not (isinstance(symbols, list) and symbols and all(isinstance(x, str) and x for x in symbols)
                and len(set(symbols)) == len(symbols)):  # fmt: skip
            raise CheckpointError(f"config: {PHONEMES_FIELD} must list the phoneme symbols, each once")
    if not 0 < cfg["quantize_position"] <= layers:
        raise CheckpointError(f"config: quantize_position must lie in 1..encoder_layers ({layers})")
    for key in ("d_model", "encoder_attention_heads", "decoder_attention_heads"):
        if not isinstance(cfg.get(key), int) or cfg[key] < 1:
            raise CheckpointError(f"config: {key} must be a positive integer")
    for heads in ("encoder_attention_heads", "decoder_attention_heads"):
        if cfg["d_model"] % cfg[heads]:
            raise CheckpointError(f"config: {heads} ({cfg[heads]}) must divide d_model ({cfg['d_model']})")
    if cfg.get("num_mel_bins") != 128:
        raise CheckpointError(f"config: num_mel_bins is {cfg.get('num_mel_bins')}; the front end makes 128 "
                              "(Whisper large-v3 and its kind)")  # fmt: skip
    cfg["quantize_encoder_only"] = False
    cfg["model_type"] = "whisper"
    return cfg


def _sinusoids(length: int, channels: int) -> torch.Tensor:
    """Whisper's fixed encoder positions [length, channels]."""
    step = math.log(10000) / (channels // 2 - 1)
    t = torch.arange(length)[:, None] * torch.exp(-step * torch.arange(channels // 2))[None]
    return torch.cat([t.sin(), t.cos()], dim=1)


class AsrTokenizer(nn.Module):
    """The trainable tokenizer + ASR head. `config` is a Whisper config dict with the VQ fields."""

    def __init__(self, config: dict):
        super().__init__()
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperDecoder

        self.config = config
        self.cfg = cfg = TokenizerConfig.from_dict(config, "config")
        d = cfg.d_model
        self.encoder = WhisperVQEncoder(cfg)
        self.encoder.codebook = None  # the VQ below holds the codebook (a buffer, moved by EMA)
        self.vq = VectorQuantizer(cfg.codebook_size, d, config["quantize_ema_decay"], 1e-5,
                                  config["quantize_restart_interval"], config["quantize_commit_coefficient"],
                                  config["quantize_loss_scale"])  # fmt: skip
        self.embed_positions2 = nn.Embedding(cfg.max_positions // cfg.pooling_kernel, d)
        self.post_layers = nn.ModuleList(EncoderLayer(d, cfg.n_heads, cfg.ffn_dim)
                                         for _ in range(config["encoder_layers"] - cfg.n_layers))  # fmt: skip
        self.layer_norm = nn.LayerNorm(d)
        with torch.no_grad():  # from scratch: Whisper's sinusoidal encoder positions (a Whisper start overwrites)
            self.encoder.embed_positions.weight.copy_(_sinusoids(cfg.max_positions, d))
        self.decoder = WhisperDecoder(WhisperConfig(**{k: v for k, v in config.items() if k != "architectures"}))
        # CTC over the transcript vocabulary, <|endoftext|> as the blank (it never occurs inside a transcript)
        # (phonemic heads: the phoneme symbols at 1.., blank 0); the final head predicts `upsample` per frame
        self.upsample = config[UPSAMPLE_FIELD]

        def classes(phonemic: bool) -> int:
            return len(config[PHONEMES_FIELD]) + 1 if phonemic else config["vocab_size"]

        self.ctc_head = nn.Linear(d, classes(self.phonemic) * self.upsample) if config[CTC_FIELD] > 0 else None
        self.inter_ctc_head = nn.Linear(d, classes(self.inter_phonemic)) if config[INTER_CTC_FIELD] > 0 else None

    @property
    def phonemic(self) -> bool:
        """The final CTC head predicts phonemes (`PHONEMES_FIELD` symbols at 1.., blank 0)."""
        return self.config.get(TARGETS_FIELD) == "phonemes"

    @property
    def inter_phonemic(self) -> bool:
        """The intermediate head predicts phonemes."""
        return self.config.get(INTER_TARGETS_FIELD) == "phonemes"

    def blank(self, eot: int) -> int:
        """The final head's blank: 0 over phonemes, <|endoftext|> over transcript ids."""
        return 0 if self.phonemic else eot

    def inter_blank(self, eot: int) -> int:
        """The intermediate head's blank, as `blank`."""
        return 0 if self.inter_phonemic else eot

    @property
    def blocks(self) -> list[nn.Module]:
        """The repeated layers (FSDP units, activation checkpointing)."""
        return [*self.encoder.layers, *self.post_layers, *self.decoder.layers]

    def encode(self, features, mask, update: bool = False, bypass: bool = False, pre_pool: list | None = None):
        """features [B, 128, T], mask [B, T] -> (encoder output [B, T', D], mask [B, T'], VQ, pre-VQ hidden).

        `bypass`: the hidden states skip the quantizer (no loss, no EMA): the warm-up of a model from scratch.
        `pre_pool`: receives the 50 Hz states before the pooling (`inter_ctc_loss` reads them).
        """
        h, m = self.encoder.encode(features, mask, pre_pool=pre_pool)
        if bypass:
            vq = VQOutput(h, self.vq.nearest(h), h.new_zeros(()), 0)
        else:
            vq = self.vq(h, m, update=update)
        x = vq.quantized + self.embed_positions2.weight[: h.shape[1]]
        block = self.cfg.block_size // self.cfg.pooling_kernel if self.cfg.block_size else None
        for layer in self.post_layers:
            x, _ = layer(x, m, block)
        x = self.layer_norm(x) * m[..., None].to(x.dtype)  # padded frames carry nothing to cross-attention
        return x, m, vq, h

    def logits(self, encoded: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Decoder logits [B, L, vocab] for transcript ids [B, L] over `encoded` [B, T', D] with its mask [B, T'].

        The decoder's own layers, run here rather than through `WhisperDecoder.forward`, which has no
        cross-attention mask: a batch's padded frames must be invisible, or the decoder learns to read the
        padding (how long an utterance is) instead of the codes.
        """
        dec = self.decoder
        L = input_ids.shape[1]
        x = dec.embed_tokens(input_ids) + dec.embed_positions.weight[:L]
        low = torch.finfo(x.dtype).min
        causal = torch.full((L, L), low, dtype=x.dtype, device=x.device).triu(1)[None, None]
        cross = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, low)[:, None, None]
        for layer in dec.layers:
            x = layer(x, causal, encoded, encoder_attention_mask=cross, use_cache=False)
        return F.linear(dec.layer_norm(x), dec.embed_tokens.weight)  # tied, as Whisper's proj_out

    def ctc_loss(self, encoded: torch.Tensor, mask: torch.Tensor, ids: list[list[int]], blank: int) -> torch.Tensor:
        """CTC of transcript bodies `ids` (no special tokens; phoneme ids when `phonemic`) over `encoded`
        [B, T', D], `upsample` steps a frame; mean per target id. An utterance with more ids than steps adds
        nothing (zero_infinity)."""
        return _ctc(self.ctc_head, encoded, mask, ids, blank, self.upsample)

    def inter_ctc_loss(self, pre_pool: list, ids: list[list[int]], blank: int) -> torch.Tensor:
        """The same CTC by the intermediate head over the 50 Hz states `encode(..., pre_pool=...)` collected
        (`ids`: transcript bodies, or phoneme ids with blank 0 when `inter_phonemic`)."""
        (hidden, mask), = pre_pool
        return _ctc(self.inter_ctc_head, hidden, mask, ids, blank)

    @torch.no_grad()
    def transcribe_ids(self, features, mask, codec: TranscriptCodec, max_ids: int = 200,
                       bypass: bool = False, langs: list[str] | None = None) -> list[list[int]]:  # fmt: skip
        """Greedy transcripts (ids after the prefix) of a batch. Under torchrun every rank takes the same number
        of steps (FSDP needs it), stopping when all are done. `bypass`: as `encode`; `langs`: as `greedy_ids`."""
        encoded, m, _, _ = self.encode(features, mask, bypass=bypass)
        return self.greedy_ids(encoded, m, codec, max_ids, langs=langs)

    @torch.no_grad()
    def greedy_ids(self, encoded, m, codec: TranscriptCodec, max_ids: int = 200,
                   langs: list[str] | None = None) -> list[list[int]]:  # fmt: skip
        """`transcribe_ids` over `encode`'s output [B, T', D] and mask [B, T'] (a caller that encoded already).
        `langs` (one per row): each transcript starts from its language and task tokens instead of guessing them."""
        import torch.distributed as dist

        if langs is not None and (len(langs) != len(encoded) or not all(isinstance(x, str) for x in langs)):
            raise Glm4VoiceError(f"langs: one language per row ({len(encoded)}), got {langs!r}")
        starts = [codec.prefix(lang) for lang in langs] if langs is not None else [codec.prefix()] * len(encoded)
        ids = torch.tensor(starts, dtype=torch.long, device=encoded.device)  # [B, 1 or 4]
        done = torch.zeros(encoded.shape[0], dtype=torch.bool, device=encoded.device)
        limit = min(max_ids, self.config.get("max_target_positions", 448) - ids.shape[1])
        for _ in range(limit):
            nxt = self.logits(encoded, ids, m)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, codec.eot), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == codec.eot
            flag = torch.tensor([float(done.all())], device=encoded.device)
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            if flag.item() == 1.0:
                break
        out = []
        for row in ids[:, len(starts[0]) :].tolist():
            out.append(row[: row.index(codec.eot)] if codec.eot in row else row)
        return out

    @torch.no_grad()
    def ctc_ids(self, encoded: torch.Tensor, mask: torch.Tensor, blank: int) -> list[list[int]]:
        """Greedy CTC transcripts (transcript ids without special tokens, or phoneme ids when `phonemic`) of
        `encode`'s output [B, T', D]: what the encoder itself hears, without the decoder's language model
        (which, early in training from scratch, recites training sentences whatever the audio)."""
        return _ctc_greedy(self.ctc_head, encoded, mask, blank, self.upsample)

    @torch.no_grad()
    def inter_ctc_ids(self, pre_pool: list, blank: int) -> list[list[int]]:
        """The intermediate head's greedy CTC transcripts of the 50 Hz states `encode(..., pre_pool=...)`
        collected: what the encoder hears before the pooling and the quantizer."""
        (hidden, mask), = pre_pool
        return _ctc_greedy(self.inter_ctc_head, hidden, mask, blank)

    # --- folders ----------------------------------------------------------------------------------------

    def load_tensors(self, parts: dict[str, dict[str, torch.Tensor]], strict_vq: bool, source: str) -> list[str]:
        """Fill from `load_training_tensors` parts; returns what was missing (VQ tensors of a Whisper start)."""
        own = self.state_dict()
        state, qp = {}, self.cfg.n_layers
        for name, tensor in parts["encoder"].items():
            if name.startswith("layers."):
                i, rest = name.split(".", 2)[1:]
                key = f"encoder.layers.{i}.{rest}" if int(i) < qp else f"post_layers.{int(i) - qp}.{rest}"
            elif name in VQ_NAMES:
                key = VQ_NAMES[name]
            elif name.startswith(("layer_norm.", "embed_positions2.")):
                key = name
            else:
                key = f"encoder.{name}"
            state[key] = tensor
        state.update({f"decoder.{k}": v for k, v in parts["decoder"].items()})
        for head in CTC_HEADS:  # a folder without one (Whisper's, ...) starts it afresh
            if getattr(self, head) is not None:
                state.update({k[len("model.") :]: v for k, v in parts["other"].items()
                              if k.startswith(f"model.{head}.")})  # fmt: skip
        ctc = {f"{head}.{p}" for head in CTC_HEADS for p in ("weight", "bias")}
        optional = frozenset(ctc) if strict_vq else frozenset({"vq.codebook", "vq.ema_count", "vq.ema_weight",
                                                                "embed_positions2.weight", *ctc})  # fmt: skip
        missing = check_state(own, state, source, optional)
        self.load_state_dict(state, strict=False)
        return missing

    def training_tensors(self, weights: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The ASR-training layout's tensors (from `weights`, a state dict of this model, or the model's own)."""
        w = weights if weights is not None else self.state_dict()
        qp, out = self.cfg.n_layers, {}
        for key, tensor in w.items():
            if key.startswith("encoder.layers."):
                name = "layers." + key[len("encoder.layers.") :]
            elif key.startswith("post_layers."):
                i, rest = key[len("post_layers.") :].split(".", 1)
                name = f"layers.{int(i) + qp}.{rest}"
            elif key.startswith("encoder."):
                name = key[len("encoder.") :]
            elif key.startswith("vq."):
                name = {v: k for k, v in VQ_NAMES.items()}[key]
            elif key.startswith(("decoder.", *(f"{head}." for head in CTC_HEADS))):
                out["model." + key] = tensor.contiguous()
                continue
            else:
                name = key
            out["model.encoder." + name] = tensor.contiguous()
        out["proj_out.weight"] = w["decoder.embed_tokens.weight"].clone()
        return out


def load_asr(folder: str | Path, init_config: dict | None = None) -> tuple[AsrTokenizer, TranscriptCodec]:
    """An ASR-layout folder (training's own checkpoints) or a transformers Whisper folder (plus `init_config`
    VQ overrides): the model and its transcript codec. A released (inference-only) folder is an error."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: no config.json (need an ASR-layout tokenizer or a Whisper folder)")
    raw = read_json(folder / "config.json")
    if raw.get("model_type") != "whisper":
        raise CheckpointError(f"{folder}: model_type {raw.get('model_type')!r}, expected a Whisper config")
    parts = load_training_tensors(folder)
    if not parts["decoder"]:
        raise CheckpointError(f"{folder}: no Whisper decoder (a released tokenizer only tokenizes; "
                              "training and transcribe need the ASR-training layout)")  # fmt: skip
    has_vq = "quantize_vocab_size" in raw and raw.get("quantize_vocab_size") is not None
    config = vq_config(raw, init_config)
    model = AsrTokenizer(config)
    missing = model.load_tensors(parts, has_vq and "codebook.weight" in parts["encoder"], f"speech tokenizer {folder}")
    model.fresh_vq = "vq.codebook" in missing  # the codebook is to be started from data
    return model, TranscriptCodec.from_folder(folder)


def new_asr(config: dict, codec: TranscriptCodec) -> AsrTokenizer:
    """A model from scratch: `config` holds Whisper config keys (layers, widths, ...) and VQ fields; the
    transcript vocabulary is the codec's."""
    from transformers import WhisperConfig

    try:
        base = WhisperConfig(**config).to_dict()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"config: {exc}") from None
    ids = {"vocab_size": codec.vocab_size, "pad_token_id": codec.eot, "bos_token_id": codec.eot,
           "eos_token_id": codec.eot, "decoder_start_token_id": codec.sot}  # fmt: skip
    ours = {k: v for k, v in config.items()
            if k in VQ_DEFAULTS or k in (CTC_FIELD, INTER_CTC_FIELD, INTER_TARGETS_FIELD, PHONEMES_FIELD,
                                         TARGETS_FIELD, UPSAMPLE_FIELD)}  # fmt: skip
    model = AsrTokenizer(vq_config({**base, **ids}, ours))
    model.fresh_vq = True
    return model


def write_asr_folder(model: AsrTokenizer, codec: TranscriptCodec, folder: Path, weights: dict | None = None) -> None:
    """The ASR-training layout into an existing empty folder (training's checkpoints; resume and fine-tune)."""
    from safetensors.torch import save_file

    save_file(model.training_tensors(weights), str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {**model.config, "architectures": ["WhisperVQForConditionalGeneration"], "vocab_size": codec.vocab_size}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2) + "\n")
    codec.save(folder)


def write_released_folder(model: AsrTokenizer, folder: Path, weights: dict | None = None) -> None:
    """The inference-only layout of the release (what the reference's `WhisperVQEncoder.from_pretrained` reads)."""
    from safetensors.torch import save_file

    qp, keep = model.cfg.n_layers, {}
    for key, tensor in model.training_tensors(weights).items():
        if not key.startswith("model.encoder."):
            continue
        name = key[len("model.encoder.") :]
        if name.startswith("layer_norm.") or (name.startswith("layers.") and int(name.split(".")[1]) >= qp):
            continue
        keep[name] = tensor
    save_file(keep, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {**model.config, "architectures": ["WhisperVQEncoder"], "quantize_encoder_only": True}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2) + "\n")


@torch.no_grad()
def transcribe(model: AsrTokenizer, codec: TranscriptCodec, waves, batch_size: int = 8,
               langs: list[str] | None = None) -> list[str]:  # fmt: skip
    """16 kHz waves -> transcripts through the quantized bottleneck; longer than 30 s: 30 s pieces, joined.
    `langs` (one per wave): the known languages, given to the decoder rather than left to its guess."""
    from ..audio import whisper_log_mel
    from .offline import PIECE_SAMPLES

    if langs is not None and len(langs) != len(waves):
        raise Glm4VoiceError(f"langs: one language per wave ({len(waves)}), got {len(langs)}")
    device = next(model.parameters()).device
    pieces = [(i, w[s : s + PIECE_SAMPLES]) for i, w in enumerate(waves) for s in range(0, len(w), PIECE_SAMPLES)]
    texts: list[list[str]] = [[] for _ in waves]
    for start in range(0, len(pieces), batch_size):
        group = pieces[start : start + batch_size]
        features, mask = whisper_log_mel([w for _, w in group], device=device)
        group_langs = [langs[i] for i, _ in group] if langs is not None else None
        for (i, _), ids in zip(group, model.transcribe_ids(features, mask, codec, langs=group_langs)):
            texts[i].append(codec.decode(ids))
    return [" ".join(t for t in parts if t) for parts in texts]


def _head_logits(head: nn.Module, frames: torch.Tensor, mask: torch.Tensor, upsample: int):
    """`head` over `frames` [B, T, D] -> logits [B, T * upsample, C] and their mask (each frame's k steps in order)."""
    logits = head(frames)
    if upsample > 1:
        logits = logits.unflatten(-1, (upsample, -1)).flatten(1, 2)  # [B, T, k * C] -> [B, T * k, C]
        mask = mask.repeat_interleave(upsample, dim=1)
    return logits, mask


def _ctc(head: nn.Module, frames: torch.Tensor, mask: torch.Tensor, ids: list[list[int]], blank: int,
         upsample: int = 1) -> torch.Tensor:  # fmt: skip
    """CTC of transcript bodies `ids` by `head` over `frames` [B, T, D] with their mask [B, T]; mean per target id."""
    logits, mask = _head_logits(head, frames, mask, upsample)
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # [T, B, classes]
    targets = torch.tensor([i for row in ids for i in row], dtype=torch.long, device=frames.device)
    lengths = torch.tensor([len(row) for row in ids], dtype=torch.long, device=frames.device)
    return F.ctc_loss(log_probs, targets, mask.sum(1), lengths, blank=blank, zero_infinity=True)


def _ctc_greedy(head: nn.Module, frames: torch.Tensor, mask: torch.Tensor, blank: int,
                upsample: int = 1) -> list[list[int]]:  # fmt: skip
    """Best path of `head` over `frames` [B, T, D] with their mask [B, T]: repeats merge, then blanks go."""
    logits, mask = _head_logits(head, frames, mask, upsample)
    best = logits.argmax(-1)  # [B, T * k]
    out = []
    for row, n in zip(best.tolist(), mask.sum(1).tolist()):
        row = row[:n]
        out.append([i for k, i in enumerate(row) if i != blank and (k == 0 or i != row[k - 1])])
    return out
