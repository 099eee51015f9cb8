"""`SpeechDecoder`: 12.5 Hz speech ids -> 22.05 kHz audio (flow matching + HiFT).

Loads a `glm-4-voice-decoder` folder as released (`config.yaml`, `flow.pt`,
`hift.pt`): the yaml is read as data, the state dicts with weights_only=True.
"""

from __future__ import annotations

import operator
import os
from fractions import Fraction

import torch

from ..dtypes import as_dtype
from ..errors import CheckpointError, Glm4VoiceError
from ..hub import resolve_checkpoint
from ..quant import quantize_linear_int8
from .config import DecoderConfig, read_config
from .flow import FlowModel
from .hift import HiFT, fold_weight_norm

DECODER_FILES = ["config.yaml", "flow.pt", "hift.pt"]


class TokenError(Glm4VoiceError, ValueError):
    """Speech ids the decoder cannot use: empty, not integers, out of range."""


def _load_state(path, what: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with objects, ...
        raise CheckpointError(f"decoder checkpoint {path}: cannot load {what} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"decoder checkpoint {path}: {what} is not a plain state dict of tensors")
    return state


def _fill(module: torch.nn.Module, state: dict, path) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
        if bad:
            k = bad[0]
            parts.append(f"{len(bad)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise CheckpointError(f"decoder checkpoint {path}: does not match config.yaml: {'; '.join(parts)}")
    module.load_state_dict(state, strict=True)




class SpeechDecoder:
    """ids -> mel (`flow_mel`) -> audio (`vocode`); `decode` does both, `stream()` does it incrementally."""

    def __init__(self, config: DecoderConfig, flow: FlowModel, hift: HiFT, device="cpu", dtype=torch.float32):
        self.config = config
        self.device = torch.device(device)
        self.dtype = as_dtype(dtype)
        self.flow = flow.to(self.device, self.dtype).eval()
        self.hift = hift.to(self.device, self.dtype).eval()
        self.sample_rate = config.hift.sampling_rate
        self.samples_per_frame = config.hift.samples_per_frame
        self.vocab_size = config.flow.vocab_size
        self.block_size = config.flow.encoder.block_size
        # Exact mel frames per id (441/64 for 12.5 Hz ids at 22050/256 frames per second).
        self.frames_per_id = Fraction(config.hift.sampling_rate, self.samples_per_frame) / Fraction(
            str(config.flow.input_frame_rate)
        )

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls, path_or_hub_id: str | os.PathLike, device="cpu", dtype="float32", int8: bool = False
    ) -> SpeechDecoder:
        """Load a decoder folder or hub id. `int8`: dynamic int8 linear layers in the flow (CPU only).

        HiFT has no linear layers worth quantizing; the flow's (token encoder and
        estimator) carry most of its FLOPs. The mel moves by far less than the
        sampling noise does (benchmarks/decoder.py reports both).
        """
        folder = resolve_checkpoint(path_or_hub_id, DECODER_FILES, "decoder")
        config = read_config(folder / "config.yaml")
        flow, hift = FlowModel(config.flow), HiFT(config.hift)
        _fill(flow, _load_state(folder / "flow.pt", "flow.pt"), folder / "flow.pt")
        _fill(hift, fold_weight_norm(_load_state(folder / "hift.pt", "hift.pt")), folder / "hift.pt")
        dec = cls(config, flow, hift, device=device, dtype=dtype)
        if int8:
            quantize_linear_int8(dec.flow, "decoding")
        return dec

    # ------------------------------------------------------------------ inputs

    def ids(self, tokens, what: str = "tokens", allow_empty: bool = False) -> torch.Tensor:
        """Validate ids (list, 1-D or [1, N] tensor) -> LongTensor [1, N] on the device."""
        if isinstance(tokens, torch.Tensor):
            if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
                raise TokenError(f"{what}: expected integer ids, got a {tokens.dtype} tensor")
            if tokens.dim() == 2 and tokens.shape[0] == 1:
                tokens = tokens[0]
            if tokens.dim() != 1:
                raise TokenError(f"{what}: expected a list of ids or a [1, N] tensor, got shape {tuple(tokens.shape)}")
            ids = tokens.to("cpu", torch.long)
        else:
            try:
                values = list(tokens)
            except TypeError as exc:
                raise TokenError(f"{what}: expected a list of ids, got {type(tokens).__name__}") from exc
            try:
                ids = torch.tensor([_as_int(v) for v in values], dtype=torch.long)
            except (TypeError, OverflowError, RuntimeError) as exc:
                raise TokenError(f"{what}: every id must be an integer") from exc
        if ids.numel() == 0 and not allow_empty:
            raise TokenError(f"{what}: no speech ids to decode")
        if ids.numel():
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.vocab_size:
                bad = lo if lo < 0 else hi
                raise TokenError(f"{what}: id {bad} is out of range (speech ids are 0..{self.vocab_size - 1})")
        return ids[None].to(self.device)

    def _mel_input(self, mel, what: str) -> torch.Tensor:
        if not isinstance(mel, torch.Tensor):
            raise Glm4VoiceError(f"{what}: expected a tensor [1, 80, frames]")
        n_mels = self.config.flow.output_size
        if mel.dim() == 2:
            mel = mel[None]
        if mel.dim() != 3 or mel.shape[0] != 1 or mel.shape[1] != n_mels:
            raise Glm4VoiceError(f"{what}: expected shape [1, {n_mels}, frames], got {tuple(mel.shape)}")
        if not torch.isfinite(mel).all():
            raise Glm4VoiceError(f"{what}: contains NaN or infinite values")
        return mel.to(self.device, self.dtype)

    def frames(self, n_ids: int) -> int:
        """Exact mel frames covering the first n ids (streaming bookkeeping)."""
        return int(n_ids * self.frames_per_id)

    # ------------------------------------------------------------------ flow

    def positional_noise(self, start: int, stop: int, seed: int = 42) -> torch.Tensor:
        """Noise [1, 80, stop - start] that depends only on absolute frame positions.

        Frames come in blocks of 64, each from its own seeded generator, so any
        slice equals the same slice of a whole-utterance draw: streamed chunks and
        an offline pass given this noise start from the same point.
        """
        n_mels, block = self.config.flow.output_size, 64
        parts = []
        for b in range(start // block, (stop + block - 1) // block):
            g = torch.Generator().manual_seed(seed * 1_000_003 + b)
            parts.append(torch.randn(n_mels, block, generator=g))
        if not parts:
            return torch.zeros(1, n_mels, 0, device=self.device, dtype=self.dtype)
        noise = torch.cat(parts, dim=1)
        offset = start - (start // block) * block
        return noise[None, :, offset : offset + stop - start].to(self.device, self.dtype)

    @torch.inference_mode()
    def flow_mel(self, tokens, prompt_tokens=None, prompt_mel=None, n_steps: int = 10, noise=None) -> torch.Tensor:
        """ids -> mel [1, 80, T] for `tokens`, continuing `prompt_tokens`/`prompt_mel` [1, 80, F].

        With noise=None the initial noise is the reference's: a generator seeded
        42, standard normal over [1, 80, T_total] (prompt frames included).
        """
        ids = self.ids(tokens)
        prompt = self.ids(prompt_tokens if prompt_tokens is not None else [], "prompt_tokens", allow_empty=True)
        all_ids = torch.cat([prompt, ids], dim=1)
        total = self.flow.frames_for(all_ids.shape[1])
        mel_prompt = None if prompt_mel is None else self._mel_input(prompt_mel, "prompt_mel")
        n_prompt = 0 if mel_prompt is None else mel_prompt.shape[2]
        if n_prompt >= total:
            raise Glm4VoiceError(
                f"prompt_mel has {n_prompt} frames but prompt + tokens cover only {total}; "
                "pass the mel of prompt_tokens"
            )
        if int(n_steps) < 1:
            raise Glm4VoiceError(f"n_steps must be >= 1, got {n_steps}")
        return self._solve(all_ids, total, mel_prompt, n_steps, noise)

    def _solve(self, all_ids, total, mel_prompt, n_steps, noise) -> torch.Tensor:
        n_mels = self.config.flow.output_size
        n_prompt = 0 if mel_prompt is None else mel_prompt.shape[2]
        if noise is None:
            g = torch.Generator().manual_seed(42)
            noise = torch.randn(1, n_mels, total, generator=g)
        elif tuple(noise.shape) != (1, n_mels, total):
            raise Glm4VoiceError(f"noise: expected shape [1, {n_mels}, {total}], got {tuple(noise.shape)}")
        noise = noise.to(self.device, self.dtype)
        mu = self.flow.mu(all_ids, total)
        cond = torch.zeros_like(mu)
        if n_prompt:
            cond[:, :, :n_prompt] = mel_prompt
        mel = self.flow.solve(noise, mu, cond, int(n_steps))
        return mel[:, :, n_prompt:].float()

    # ------------------------------------------------------------------ vocoder

    @torch.inference_mode()
    def f0(self, mel) -> torch.Tensor:
        """mel [1, 80, T] -> F0 in Hz [1, T]."""
        return self.hift.f0(self._mel_input(mel, "mel")).float()

    @torch.inference_mode()
    def vocode(self, mel, source=None, seed: int = 0) -> torch.Tensor:
        """mel [1, 80, T] -> audio [T * 256] (1-D, float32, on CPU).

        `source` [1, 1, T * 256] replaces the random sine excitation (then the
        output is deterministic); otherwise it is drawn from a generator seeded
        with `seed`.
        """
        mel = self._mel_input(mel, "mel")
        need = mel.shape[2] * self.samples_per_frame
        if source is None:
            g = torch.Generator().manual_seed(seed)
            source, _ = self.hift.source_from_f0(self.hift.f0(mel), generator=g)
        else:
            if source.dim() == 2:
                source = source[None]
            if tuple(source.shape) != (1, 1, need):
                raise Glm4VoiceError(f"source: expected shape [1, 1, {need}], got {tuple(source.shape)}")
        return self.hift(mel, source.to(self.device, self.dtype))[0].float().cpu()

    def decode(self, tokens, n_steps: int = 10) -> torch.Tensor:
        """ids -> audio (1-D float32 tensor at `sample_rate`), offline, whole utterance."""
        return self.vocode(self.flow_mel(tokens, n_steps=n_steps))

    def stream(self, **options):
        """A `DecoderStream`: push ids as they come, get audio chunks back (see streaming.py)."""
        from .streaming import DecoderStream

        return DecoderStream(self, **options)


def _as_int(value) -> int:
    if isinstance(value, bool):
        raise TypeError("bool is not an id")
    return operator.index(value)  # ints and numpy integers; floats and strings raise TypeError
