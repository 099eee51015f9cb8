"""Tokenize while audio arrives (the stream contract of `glm4voice.streaming`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..audio import (
    SAMPLES_PER_TOKEN,
    WHISPER_HOP,
    WHISPER_N_FFT,
    WHISPER_RATE,
    StreamResampler,
    load_audio,
    whisper_log10_mel,
    whisper_normalize,
)
from ..errors import AudioError
from .network import EncoderState
from .offline import PIECE_SAMPLES


@dataclass
class TokenizerStreamState:
    """What the stream carries within one 30 s piece of one utterance."""

    encoder: EncoderState  # conv tails, KV caches, frames consumed
    buffer: np.ndarray  # audio of the current 30 s piece
    done_samples: int = 0  # samples of the piece whose codes were returned
    running_max: float = -math.inf  # loudest log-mel value so far (Whisper's floor is max - 8)
    resampler: StreamResampler | None = None  # for pushes at another rate: one filter across the chunks


class TokenizerStream:
    """Tokenize while audio arrives: `push(chunk)` returns the codes of every
    attention block (4 s, 50 codes) finished so far; `flush()` the rest, and the
    next push starts a new utterance (the contract of `glm4voice.streaming`).

    A block's codes are final once its audio (plus 40 samples of STFT look-ahead)
    is in, because convs are causal and attention is block-causal. The stream
    restarts at every 30 s piece, exactly as offline tokenization does. The one
    difference from offline: Whisper floors log-mel at (max - 8) over the whole
    input; a stream only knows the maximum so far, so it uses the running max.
    """

    def __init__(self, tokenizer):
        self.device = tokenizer.device
        self.model = tokenizer.model
        self.block_samples = self.model.cfg.block_size * 2 * WHISPER_HOP  # 200 frames @ 50 Hz = 64000 samples
        self.state = self._new_state()

    def _new_state(self) -> TokenizerStreamState:
        return TokenizerStreamState(encoder=self.model.new_state(1), buffer=np.zeros(0, dtype=np.float32))

    @torch.inference_mode()
    def push(self, chunk, sample_rate: int | None = None) -> list[int]:
        """Add audio (array at `sample_rate`, default 16 kHz; one rate per utterance); returns newly final codes.

        Audio at another rate goes through one streaming resampler, so chunk seams leave no filter edges."""
        if chunk is None or isinstance(chunk, (str, bytes)):
            raise AudioError(f"<{type(chunk).__name__}>", "push takes an array of samples")
        rate = WHISPER_RATE if sample_rate is None else sample_rate  # 0 is an error, not 16 kHz
        audio = load_audio(chunk, sample_rate=rate, target_rate=rate) if len(chunk) else np.zeros(0, np.float32)
        rate = int(rate)
        if rate != WHISPER_RATE or self.state.resampler is not None:
            if self.state.resampler is None:
                self.state.resampler = StreamResampler(rate, WHISPER_RATE)
            elif self.state.resampler.from_rate != rate:
                raise AudioError(f"{rate} Hz audio", f"this utterance arrives at {self.state.resampler.from_rate} Hz")
            audio = self.state.resampler.push(audio)
        return self._add(audio)

    def _add(self, audio: np.ndarray) -> list[int]:
        out: list[int] = []
        lookahead = WHISPER_N_FFT // 2 - WHISPER_HOP  # the last frame's window reaches 40 samples on
        while len(audio):
            st = self.state
            room = PIECE_SAMPLES - len(st.buffer)
            st.buffer = np.concatenate([st.buffer, audio[:room]])
            audio = audio[room:]
            while len(st.buffer) >= st.done_samples + self.block_samples + lookahead:
                out += self._encode(st.done_samples, st.done_samples + self.block_samples)
            if len(st.buffer) == PIECE_SAMPLES:
                out += self._finish_piece()
        return out

    @torch.inference_mode()
    def flush(self) -> list[int]:
        """The codes of the audio not yet returned; the stream then starts anew."""
        out = self._add(self.state.resampler.flush()) if self.state.resampler is not None else []
        out += self._finish_piece() if len(self.state.buffer) else []
        self.state = self._new_state()
        return out

    def _finish_piece(self) -> list[int]:
        st = self.state
        n = len(st.buffer)
        padded = math.ceil(n / SAMPLES_PER_TOKEN) * SAMPLES_PER_TOKEN
        st.buffer = np.pad(st.buffer, (0, padded - n))
        out: list[int] = []
        while st.done_samples < padded:
            end = min(st.done_samples + self.block_samples, padded)
            out += self._encode(st.done_samples, end, real_end=n, at_end=end == padded)
        self.state = self._new_state()  # the next 30 s piece starts afresh, as offline; the resampler goes on
        self.state.resampler = st.resampler
        return out

    def _encode(self, start: int, end: int, real_end: int | None = None, at_end: bool = False) -> list[int]:
        """Codes for samples [start, end) of the piece: frames start/160 .. end/160."""
        st = self.state
        half = WHISPER_N_FFT // 2
        lo, hi = start - half, end - WHISPER_HOP + half  # window span of the frames
        wave = torch.from_numpy(st.buffer[max(lo, 0) : min(hi, len(st.buffer))]).to(self.device)
        left = max(0, -lo)
        right = hi - min(hi, len(st.buffer)) if at_end else 0
        if left or right:  # reflect at the piece's ends, as center=True does offline
            wave = F.pad(wave[None, None], (left, right), mode="reflect")[0, 0]
        log_mel = whisper_log10_mel(wave[None])  # [1, 128, (end - start) / 160]
        st.running_max = max(st.running_max, log_mel.max().item())
        features = whisper_normalize(log_mel, st.running_max)
        frames = torch.arange(start // WHISPER_HOP, end // WHISPER_HOP, device=self.device)
        limit = math.ceil(real_end / WHISPER_HOP) if real_end is not None else end // WHISPER_HOP
        codes, code_mask = self.model(features, (frames < limit)[None], st.encoder)
        st.done_samples = end
        return codes[0][code_mask[0]].tolist()
