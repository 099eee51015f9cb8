"""`SpeechTokenizer`: speech -> 12.5 Hz codes, offline (files, arrays, batches) or as a stream."""

from __future__ import annotations

import os

import torch

from ..audio import WHISPER_RATE, load_audio, whisper_log_mel
from ..dtypes import as_dtype
from ..hub import check_state, resolve_checkpoint
from ..quant import quantize_linear_int8
from .checkpoint import check_preprocessor, load_encoder_weights, read_json
from .config import TokenizerConfig
from .network import WhisperVQEncoder

PIECE_SAMPLES = 30 * WHISPER_RATE  # the encoder's 1500 positions: 30 s per pass


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


class SpeechTokenizer:
    """Speech -> 12.5 Hz codes: `tokenize` (one input), `tokenize_batch` (many, batched), `stream()`."""

    def __init__(self, model: WhisperVQEncoder, device="cpu", batch_size: int = 8):
        _check_batch_size(batch_size)
        self.model = model.eval()
        self.config = model.cfg
        self.device = torch.device(device)
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls, path_or_id: str | os.PathLike, device="cpu", dtype="float32", int8: bool = False, batch_size: int = 8
    ):
        """Load a speech tokenizer folder or hub id; `batch_size` is 30 s pieces per forward pass."""
        _check_batch_size(batch_size)
        folder = resolve_checkpoint(path_or_id, ["config.json", "preprocessor_config.json"], "speech tokenizer")
        cfg = TokenizerConfig.from_dict(read_json(folder / "config.json"), str(folder / "config.json"))
        check_preprocessor(read_json(folder / "preprocessor_config.json"), cfg, folder)
        with torch.device("meta"):
            model = WhisperVQEncoder(cfg)
        state = load_encoder_weights(folder, cfg)
        check_state(model.state_dict(), state, f"speech tokenizer {folder}")
        model.load_state_dict(state, strict=True, assign=True)
        model = model.to(device=device, dtype=as_dtype(dtype)).eval()
        if int8:
            quantize_linear_int8(model, "tokenization")
        return cls(model, device=device, batch_size=batch_size)

    # -- offline -------------------------------------------------------------------------------

    def tokenize(self, audio, sample_rate: int | None = None) -> list[int]:
        """One input (path, bytes, or array at `sample_rate`, default 16 kHz) -> codes."""
        return self.tokenize_batch([audio], sample_rate=sample_rate)[0]

    @torch.inference_mode()
    def tokenize_batch(self, audios, sample_rate: int | None = None) -> list[list[int]]:
        """Many inputs -> codes each. 30 s pieces of all inputs are batched together;
        each piece's codes do not depend on the batch, so this equals one by one."""
        waves = [self._load(a, sample_rate) for a in audios]
        pieces = [(i, w[s : s + PIECE_SAMPLES]) for i, w in enumerate(waves) for s in range(0, len(w), PIECE_SAMPLES)]
        # Longest first, so batches hold pieces of similar length (less padding work).
        order = sorted(range(len(pieces)), key=lambda k: -len(pieces[k][1]))
        piece_codes: list[list[int]] = [[] for _ in pieces]
        for start in range(0, len(order), self.batch_size):
            group = order[start : start + self.batch_size]
            features, mask = whisper_log_mel([pieces[k][1] for k in group], device=self.device)
            codes, code_mask = self.model(features, mask)
            for row, k in enumerate(group):
                piece_codes[k] = codes[row][code_mask[row]].tolist()
        out: list[list[int]] = [[] for _ in waves]
        for (i, _), codes in zip(pieces, piece_codes):
            out[i].extend(codes)
        return out

    def _load(self, audio, sample_rate):
        if isinstance(audio, (str, os.PathLike, bytes, bytearray)):
            return load_audio(audio)
        return load_audio(audio, sample_rate=sample_rate or WHISPER_RATE)

    # -- streaming -----------------------------------------------------------------------------

    def stream(self):
        """A `TokenizerStream`: tokenizes 16 kHz audio as it arrives."""
        from .stream import TokenizerStream

        return TokenizerStream(self)
