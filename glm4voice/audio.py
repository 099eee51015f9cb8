"""Audio in and out, and the two mel front ends of the system.

* `load_audio` reads anything soundfile reads (or bytes, or an array), mixes to
  mono and resamples with soxr. Bad input raises `AudioError`.
* `whisper_log_mel` is the speech tokenizer's front end (16 kHz, 128 bins,
  log10, floor at max - 8, (x + 4) / 4), the same numbers as
  `transformers.WhisperFeatureExtractor`, in torch, batched, on any device.
* `decoder_log_mel` is the speech decoder's (22.05 kHz, 80 bins, natural log),
  used to make prompts and decoder training targets.

Both share one filterbank (`mel_filterbank`) and one STFT (`stft_power`).
"""

from __future__ import annotations

import io
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from .atomic import atomic_path
from .errors import AudioError

WHISPER_RATE = 16000
WHISPER_N_FFT = 400
WHISPER_HOP = 160
WHISPER_N_MELS = 128
# One speech token per 1280 samples: hop 160 x conv stride 2 x pooling 4.
SAMPLES_PER_TOKEN = 1280

DECODER_RATE = 22050
DECODER_N_FFT = 1024
DECODER_HOP = 256
DECODER_N_MELS = 80


# ----------------------------------------------------------------------------- I/O


def load_audio(source, sample_rate: int | None = None, target_rate: int = WHISPER_RATE) -> np.ndarray:
    """Read audio as mono float32 at `target_rate`.

    `source` is a path, raw file bytes, or an array (then `sample_rate` is
    required). A 2-D array is (channels, samples) or (samples, channels): the
    shorter axis is taken as channels. Returns shape [samples].
    """
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise AudioError(name, "no such file")
        if path.is_dir():
            raise AudioError(name, "is a folder, not an audio file")
        if path.stat().st_size == 0:
            raise AudioError(name, "empty file")
        audio, rate = _read_soundfile(path, name)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError(name, "empty bytes")
        audio, rate = _read_soundfile(io.BytesIO(bytes(source)), name)
    else:
        if sample_rate is None:
            raise AudioError(name, "an array needs its sample_rate")
        audio, rate = _to_mono(_as_numpy(source, name)), _rate(sample_rate, name)
    if rate <= 0:
        raise AudioError(name, f"invalid sample rate {rate}")
    if audio.size == 0:
        raise AudioError(name, "no samples")
    if not np.isfinite(audio).all():
        raise AudioError(name, "contains NaN or infinite samples")
    try:
        out = resample(audio, rate, target_rate)
    except (ValueError, RuntimeError, MemoryError) as exc:  # soxr refuses absurd rate ratios
        raise AudioError(name, f"cannot resample from {rate} Hz ({exc})") from None
    if out.size == 0:
        raise AudioError(name, f"{audio.size} samples at {rate} Hz are no samples at {target_rate} Hz")
    return out


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """High-quality resampling (soxr); a no-op when the rates agree."""
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if from_rate == to_rate:
        return audio
    return soxr.resample(audio, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


class StreamResampler:
    """Resample audio that arrives in pieces (soxr's streaming resampler, same quality as `resample`).

    Resampling each piece on its own would put a filter edge at every seam;
    this keeps the filter state, so the pieces join as one signal would.
    Follows the stream contract (`glm4voice.streaming`): `flush()` returns the
    filter's tail and the next push starts a new signal.
    """

    def __init__(self, from_rate: int, to_rate: int):
        if not (isinstance(from_rate, int) and 1000 <= from_rate <= 384000):
            raise AudioError(f"sample rate {from_rate!r}", "expected an integer between 1000 and 384000 Hz")
        self.from_rate, self.to_rate = from_rate, to_rate
        self._soxr = self._new_state()

    def _new_state(self):
        same = self.from_rate == self.to_rate
        return None if same else soxr.ResampleStream(self.from_rate, self.to_rate, 1, "float32", "HQ")

    def push(self, audio: np.ndarray, last: bool = False) -> np.ndarray:
        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        if self._soxr is None:
            return audio
        return self._soxr.resample_chunk(audio, last=last).astype(np.float32, copy=False)

    def flush(self) -> np.ndarray:
        tail = self.push(np.zeros(0, np.float32), last=True)
        self._soxr = self._new_state()
        return tail


PCM_FORMATS = {"f32le": np.dtype("<f4"), "s16le": np.dtype("<i2")}


def pcm_from_bytes(data: bytes, fmt: str = "f32le") -> np.ndarray:
    """Raw mono PCM (little-endian float32 or int16) -> float32 samples in [-1, 1]."""
    if fmt not in PCM_FORMATS:
        raise AudioError(f"PCM format {fmt!r}", f"expected one of {sorted(PCM_FORMATS)}")
    dtype = PCM_FORMATS[fmt]
    if len(data) % dtype.itemsize:
        raise AudioError(f"{len(data)} bytes of {fmt} PCM", f"not a whole number of {dtype.itemsize}-byte samples")
    samples = np.frombuffer(data, dtype=dtype)
    if fmt == "s16le":
        return samples.astype(np.float32) / 32768.0
    samples = samples.astype(np.float32)
    if not np.isfinite(samples).all():
        raise AudioError("f32le PCM", "contains NaN or infinite samples")
    return samples


def write_wav(path: str | os.PathLike, audio, sample_rate: int) -> None:
    """Write mono 16-bit PCM wav atomically (a crash never leaves half a file)."""
    data = audio.detach().float().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    data = np.clip(data.reshape(-1).astype(np.float32), -1.0, 1.0)
    with atomic_path(path) as tmp:
        sf.write(tmp, data, sample_rate, subtype="PCM_16", format="WAV")


# Encoded reply audio (the OpenAI-compatible API's formats). pcm16 is OpenAI's: raw s16le mono at 24 kHz.
ENCODINGS = ("wav", "mp3", "flac", "opus", "pcm16")
PCM16_RATE = 24000


def encode_audio(audio, sample_rate: int, fmt: str) -> bytes:
    """Mono float audio -> file bytes in `fmt` (one of ENCODINGS); opus at 48 kHz and pcm16 at 24 kHz."""
    data = audio.detach().float().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    data = np.clip(data.reshape(-1).astype(np.float32), -1.0, 1.0)
    if fmt == "pcm16":
        return pcm16_bytes(resample(data, sample_rate, PCM16_RATE))
    if fmt not in ENCODINGS:
        raise AudioError(f"audio format {fmt!r}", f"expected one of {', '.join(ENCODINGS)}")
    if fmt == "opus":  # Opus runs at 8/12/16/24/48 kHz only
        data, sample_rate = resample(data, sample_rate, 48000), 48000
    out = io.BytesIO()
    kind = {"wav": ("WAV", "PCM_16"), "mp3": ("MP3", None), "flac": ("FLAC", "PCM_16"), "opus": ("OGG", "OPUS")}
    sf.write(out, data, sample_rate, format=kind[fmt][0], subtype=kind[fmt][1])
    return out.getvalue()


def pcm16_bytes(audio: np.ndarray) -> bytes:
    """Float samples -> little-endian int16 bytes (clipped to [-1, 1])."""
    return (np.clip(np.asarray(audio, np.float32), -1.0, 1.0) * 32767).round().astype("<i2").tobytes()


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def _read_soundfile(file, name: str) -> tuple[np.ndarray, int]:
    try:
        audio, rate = sf.read(file, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for bad data
        raise AudioError(name, f"not readable as audio ({exc})") from None
    return audio.mean(axis=1), int(rate)


MAX_RATE = 384000  # the highest sample rate audio interfaces use; soxr's ratios stay sane below it


def _rate(value, name: str) -> int:
    """A sample rate: a whole number of Hz in 1..384000 (1.5 is not silently 1, nan not silently anything)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise AudioError(name, f"sample_rate must be a number of Hz, got {value!r}")
    if not (np.isfinite(value) and float(value).is_integer() and 1 <= value <= MAX_RATE):
        raise AudioError(name, f"sample_rate must be a whole number of Hz in 1..{MAX_RATE}, got {value!r}")
    return int(value)


def _as_numpy(array, name: str) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        if array.is_complex():
            raise AudioError(name, "complex samples: audio is real")
        array = array.detach().float().cpu().numpy()
    if np.iscomplexobj(array):
        raise AudioError(name, "complex samples: audio is real")
    try:
        array = np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError):
        raise AudioError(name, "not a numeric array") from None
    if array.ndim not in (1, 2):
        raise AudioError(name, f"expected 1-D or 2-D audio, got shape {tuple(array.shape)}")
    if array.size and np.isfinite(array).all() and np.abs(array).max() > 2.0:
        raise AudioError(name, f"samples reach {np.abs(array).max():.0f}: float audio lies in [-1, 1] "
                               "(int16 values? divide by 32768)")  # fmt: skip
    return array


def _to_mono(audio: np.ndarray) -> np.ndarray:
    if audio.ndim == 1:
        return audio
    channel_axis = 0 if audio.shape[0] <= audio.shape[1] else 1
    return audio.mean(axis=channel_axis)


# ----------------------------------------------------------------------------- mel


@lru_cache(maxsize=8)
def _mel_filterbank_cpu(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> torch.Tensor:
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=fmin,
        max_frequency=fmax,
        sampling_rate=sample_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(np.ascontiguousarray(bank.T, dtype=np.float32))  # [n_mels, n_freq]


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float, device=None):
    """Slaney-normalised mel filters (librosa's default), [n_mels, n_fft // 2 + 1]."""
    return _mel_filterbank_cpu(sample_rate, n_fft, n_mels, float(fmin), float(fmax)).to(device)


def stft_power(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """|STFT|^2 with a periodic Hann window and no centering: [B, n_fft//2+1, frames].

    Callers do their own padding, so the same function serves offline
    (reflect-padded whole signal) and streaming (a slice of the signal).
    """
    window = torch.hann_window(n_fft, device=x.device, dtype=torch.float32)
    spec = torch.stft(x.float(), n_fft, hop, window=window, center=False, return_complex=True)
    return spec.real.square() + spec.imag.square()


def whisper_log10_mel(x: torch.Tensor) -> torch.Tensor:
    """Raw log10 mel power of an already padded signal [B, N] -> [B, 128, frames]."""
    power = stft_power(x, WHISPER_N_FFT, WHISPER_HOP)
    bank = mel_filterbank(WHISPER_RATE, WHISPER_N_FFT, WHISPER_N_MELS, 0.0, 8000.0, x.device)
    return torch.clamp(bank @ power, min=1e-10).log10()


def whisper_normalize(log_mel: torch.Tensor, max_value) -> torch.Tensor:
    """Whisper's dynamic-range floor (max - 8) and scaling."""
    return (torch.maximum(log_mel, torch.as_tensor(max_value, dtype=log_mel.dtype) - 8.0) + 4.0) / 4.0


def whisper_log_mel(waves, device=None, pad_multiple: int = SAMPLES_PER_TOKEN):
    """Whisper features for a batch of 16 kHz mono waves.

    Each wave is zero-padded to its own multiple of `pad_multiple` (what the
    reference does for one input), so a wave's features never depend on what
    else is in the batch. Returns (features [B, 128, T], mask [B, T] bool);
    T is the longest wave's frame count and mask marks frames of real audio
    (ceil(samples / 160) of them).
    """
    feats, masks = [], []
    for wave in waves:
        wave = torch.as_tensor(wave, dtype=torch.float32, device=device).reshape(-1)
        n = wave.shape[0]
        padded = math.ceil(n / pad_multiple) * pad_multiple
        wave = torch.nn.functional.pad(wave, (0, padded - n))
        half = WHISPER_N_FFT // 2
        # center=True equivalent: reflect half a window at both ends, then drop the last frame.
        framed = torch.nn.functional.pad(wave[None, None], (half, half), mode="reflect")[0]
        log_mel = whisper_log10_mel(framed)[0, :, :-1]  # [128, padded / 160]
        feats.append(whisper_normalize(log_mel, log_mel.max()))
        masks.append(torch.arange(log_mel.shape[1], device=log_mel.device) < math.ceil(n / WHISPER_HOP))
    length = max(f.shape[1] for f in feats)
    features = torch.stack([torch.nn.functional.pad(f, (0, length - f.shape[1])) for f in feats])
    mask = torch.stack([torch.nn.functional.pad(m, (0, length - m.shape[0])) for m in masks])
    return features, mask


def decoder_log_mel(audio: torch.Tensor) -> torch.Tensor:
    """The decoder's mel (Matcha/CosyVoice): 22.05 kHz audio [B, N] -> [B, 80, N // 256].

    Magnitude (not power) STFT, n_fft = win = 1024, hop 256, reflect padding of
    (n_fft - hop) / 2 on both sides, fmax 8000, natural log of max(x, 1e-5).
    """
    audio = audio.float()
    if audio.dim() == 1:
        audio = audio[None]
    pad = (DECODER_N_FFT - DECODER_HOP) // 2
    padded = torch.nn.functional.pad(audio[:, None], (pad, pad), mode="reflect")[:, 0]
    magnitude = torch.sqrt(stft_power(padded, DECODER_N_FFT, DECODER_HOP) + 1e-9)
    bank = mel_filterbank(DECODER_RATE, DECODER_N_FFT, DECODER_N_MELS, 0.0, 8000.0, audio.device)
    return torch.log(torch.clamp(bank @ magnitude, min=1e-5))


def decoder_f0(audio, sample_rate: int = DECODER_RATE, hop: int = DECODER_HOP) -> np.ndarray:
    """F0 in Hz of each decoder mel frame (0 where unvoiced), by Praat's autocorrelation tracker (parselmouth).

    Frame i of `decoder_log_mel` is centred on sample i * hop + hop / 2; the track is read there (nearest
    analysis frame), so the result has one value per mel frame: len(audio) // hop of them.
    """
    try:
        import parselmouth
    except ImportError as exc:
        raise ImportError("decoder_f0 needs praat-parselmouth: pip install 'glm4voice[train]'") from exc
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    frames = len(audio) // hop
    if frames == 0:
        return np.zeros(0, np.float32)
    sound = parselmouth.Sound(audio, sampling_frequency=sample_rate)
    track = sound.to_pitch_ac(time_step=hop / sample_rate, pitch_floor=60.0, pitch_ceiling=600.0)
    values = track.selected_array["frequency"]
    if len(values) == 0:
        return np.zeros(frames, np.float32)
    centres = (np.arange(frames) * hop + hop / 2) / sample_rate
    nearest = np.clip(np.round((centres - track.xs()[0]) / track.dt).astype(int), 0, len(values) - 1)
    return values[nearest].astype(np.float32)
