"""`SpeechDecoder`: 12.5 Hz speech codes -> 22.05 kHz audio (flow matching + HiFT).

Loads a `glm-4-voice-decoder` folder as released (`config.yaml`, `flow.pt`,
`hift.pt`): the yaml is read as data, the state dicts with weights_only=True.
"""

from __future__ import annotations

import operator
import os
import pickle
from fractions import Fraction

import torch

from ..dtypes import as_dtype
from ..errors import CheckpointError, Glm4VoiceError
from ..hub import check_state, resolve_checkpoint
from ..quant import quantize_linear_int8
from .config import DecoderConfig, read_config
from .flow import FlowModel
from .hift import HiFT, VocoderStream, fold_weight_norm

DECODER_FILES = ["config.yaml", "flow.pt", "hift.pt"]


class CodeError(Glm4VoiceError, ValueError):
    """Speech codes the decoder cannot use: empty, not integers, out of range."""


def _load_state(path, what: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # objects other than tensors, or bytes that are no pickle: never retried unsafely
        raise CheckpointError(f"decoder checkpoint {path}: {what} is corrupt or holds more than tensors "
                              "(only plain state dicts are loaded)") from None  # fmt: skip
    except Exception as exc:  # a truncated zip, not a torch file, ...
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"decoder checkpoint {path}: cannot load {what} ({type(exc).__name__}: "
                              f"{detail})") from None  # fmt: skip
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"decoder checkpoint {path}: {what} is not a plain state dict of tensors")
    return state


def _fill(module: torch.nn.Module, state: dict, path) -> None:
    check_state(module.state_dict(), state, f"decoder checkpoint {path}")
    module.load_state_dict(state, strict=True)


class SpeechDecoder:
    """codes -> mel (`flow_mel`) -> audio (`vocode`); `decode` does both, `stream()` does it incrementally."""

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
        # Exact mel frames per code (441/64 for 12.5 Hz codes at 22050/256 frames per second).
        self.frames_per_code = Fraction(config.hift.sampling_rate, self.samples_per_frame) / Fraction(
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

    def check_codes(self, codes, what: str = "codes", allow_empty: bool = False) -> torch.Tensor:
        """Validate speech codes (list, 1-D or [1, N] tensor) -> LongTensor [1, N] on the device."""
        if isinstance(codes, torch.Tensor):
            if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
                raise CodeError(f"{what}: expected integer codes, got a {codes.dtype} tensor")
            if codes.dim() == 2 and codes.shape[0] == 1:
                codes = codes[0]
            if codes.dim() != 1:
                raise CodeError(f"{what}: expected a list of codes or a [1, N] tensor, got shape {tuple(codes.shape)}")
            out = codes.to("cpu", torch.long)
        else:
            try:
                values = list(codes)
            except TypeError as exc:
                raise CodeError(f"{what}: expected a list of codes, got {type(codes).__name__}") from exc
            try:
                out = torch.tensor([_as_int(v) for v in values], dtype=torch.long)
            except (TypeError, OverflowError, RuntimeError, ValueError) as exc:  # ValueError: past int64
                raise CodeError(f"{what}: every code must be an integer in 0..{self.vocab_size - 1}") from exc
        if out.numel() == 0 and not allow_empty:
            raise CodeError(f"{what}: no speech codes to decode")
        if out.numel():
            lo, hi = int(out.min()), int(out.max())
            if lo < 0 or hi >= self.vocab_size:
                bad = lo if lo < 0 else hi
                raise CodeError(f"{what}: code {bad} is out of range (speech codes are 0..{self.vocab_size - 1})")
        return out[None].to(self.device)

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
        if mel.shape[2] == 0 and what == "mel":
            raise Glm4VoiceError("mel: no frames to vocode")
        return mel.to(self.device, self.dtype)

    def frames(self, n_codes: int) -> int:
        """Mel frames for n codes: floor(n * 441/64), exactly (the one formula, offline and streamed).

        The reference computes n / 12.5 * 22050 / 256 in floating point, which
        falls one frame short at some lengths (3,392 codes: 23,372 in float32).
        """
        return int(n_codes * self.frames_per_code)

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
    def flow_mel(self, codes, prompt_codes=None, prompt_mel=None, n_steps: int = 10, noise=None) -> torch.Tensor:
        """codes -> mel [1, 80, T] for `codes`, continuing `prompt_codes`/`prompt_mel` [1, 80, F].

        With noise=None the initial noise is the reference's: a generator seeded
        42, standard normal over [1, 80, T_total] (prompt frames included).
        """
        new = self.check_codes(codes)
        prompt = self.check_codes(prompt_codes if prompt_codes is not None else [], "prompt_codes", allow_empty=True)
        all_codes = torch.cat([prompt, new], dim=1)
        total = self.frames(all_codes.shape[1])
        mel_prompt = None if prompt_mel is None else self._mel_input(prompt_mel, "prompt_mel")
        n_prompt = 0 if mel_prompt is None else mel_prompt.shape[2]
        if n_prompt >= total:
            raise Glm4VoiceError(
                f"prompt_mel has {n_prompt} frames but prompt + codes cover only {total}; "
                "pass the mel of prompt_codes"
            )
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise Glm4VoiceError(f"n_steps must be an integer >= 1, got {n_steps!r}")
        if mel_prompt is not None and prompt.shape[1] == 0:
            raise Glm4VoiceError("prompt_mel needs the prompt_codes it was made from")
        return self.solve(all_codes, total, mel_prompt, n_steps, noise)

    def solve(self, codes: torch.Tensor, total: int, mel_prompt, n_steps: int, noise) -> torch.Tensor:
        """The flow for checked codes [B, N] over `total` mel frames, the first ones given by `mel_prompt`
        [B, 80, F] (or None): returns the new frames [B, 80, total - F] (float32). `noise` [B, 80, total] or
        None (the reference's seed-42 draw, B = 1). `flow_mel` and the streams' chunks all come here; B
        streams of the same shapes are solved in one batch."""
        n_mels = self.config.flow.output_size
        n_prompt = 0 if mel_prompt is None else mel_prompt.shape[2]
        b = codes.shape[0]
        if noise is None:
            g = torch.Generator().manual_seed(42)
            noise = torch.randn(1, n_mels, total, generator=g).expand(b, -1, -1)
        elif tuple(noise.shape) != (b, n_mels, total):
            raise Glm4VoiceError(f"noise: expected shape [{b}, {n_mels}, {total}], got {tuple(noise.shape)}")
        noise = noise.to(self.device, self.dtype)
        mu = self.flow.mu(codes, total)
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

    def vocoder_stream(self, context: int = 12, seed: int = 0) -> VocoderStream:
        """HiFT over mel that arrives in pieces, joined without seams (see hift.VocoderStream)."""
        return VocoderStream(self.hift, context=context, seed=seed)

    def decode(self, codes, n_steps: int = 10) -> torch.Tensor:
        """codes -> audio (1-D float32 tensor at `sample_rate`), offline, whole utterance."""
        return self.vocode(self.flow_mel(codes, n_steps=n_steps))

    def stream(self, **options):
        """A `DecoderStream`: push codes as they come, get audio chunks back (see streaming.py)."""
        from .streaming import DecoderStream

        return DecoderStream(self, **options)


def _as_int(value) -> int:
    if isinstance(value, bool):
        raise TypeError("bool is not an id")
    return operator.index(value)  # ints and numpy integers; floats and strings raise TypeError
