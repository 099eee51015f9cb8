"""Streaming input helpers: raw PCM decoding and a resampler that matches the one-shot one."""

import numpy as np
import pytest

from glm4voice.audio import StreamResampler, pcm_from_bytes, resample
from glm4voice.errors import AudioError


@pytest.mark.parametrize("rate", [48000, 44100, 8000, 16000])
def test_stream_resampler_equals_one_shot(speech_clips, rate):
    x = resample(speech_clips[0], 16000, rate)
    r = StreamResampler(rate, 16000)
    sizes = [1, 4096, 333, 17, 9000]  # odd piece sizes, as a browser or socket would deliver
    pieces, i, k = [], 0, 0
    while i < len(x):
        pieces.append(r.push(x[i : i + sizes[k % len(sizes)]]))
        i, k = i + sizes[k % len(sizes)], k + 1
    pieces.append(r.flush())
    streamed, whole = np.concatenate(pieces), resample(x, rate, 16000)
    assert streamed.shape == whole.shape
    assert np.abs(streamed - whole).max() < 1e-5


def test_pcm_from_bytes():
    ints = np.array([0, 16384, -32768, 32767], "<i2")
    assert np.allclose(pcm_from_bytes(ints.tobytes(), "s16le"), [0, 0.5, -1, 32767 / 32768])
    floats = np.array([0.25, -0.5], "<f4")
    assert np.array_equal(pcm_from_bytes(floats.tobytes()), floats)
    with pytest.raises(AudioError, match="whole number"):
        pcm_from_bytes(b"\x00\x00\x00", "s16le")
    with pytest.raises(AudioError, match="NaN"):
        pcm_from_bytes(np.array([np.nan], "<f4").tobytes())
    with pytest.raises(AudioError, match="expected one of"):
        pcm_from_bytes(b"", "mp3")
    with pytest.raises(AudioError, match="sample rate"):
        StreamResampler(12, 16000)
