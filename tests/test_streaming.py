"""The one streaming contract: every stream is a `Stream`, and after `flush` it is as good as new."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glm4voice.audio import StreamResampler
from glm4voice.decoder import SpeechDecoder
from glm4voice.lm.text import TextDecoder, TextTokenizer
from glm4voice.lm.tiny import write_tiny_tokenizer
from glm4voice.streaming import Stream
from glm4voice.tokenizer import SpeechTokenizer


def utterance_twice(stream, pieces, join):
    """Feed the same utterance twice, flushing after each; returns both outputs."""
    outs = []
    for _ in range(2):
        outs.append(join([stream.push(p) for p in pieces] + [stream.flush()]))
    return outs


def test_resampler(speech_clips):
    r = StreamResampler(44100, 16000)
    assert isinstance(r, Stream)
    audio = speech_clips[0][:20000]
    first, again = utterance_twice(r, np.array_split(audio, 7), np.concatenate)
    assert np.array_equal(first, again) and len(first) == round(len(audio) * 16000 / 44100)


def test_speech_tokenizer_stream(golden, speech_clips):
    tok = SpeechTokenizer.from_pretrained(golden / "tokenizer")
    s = tok.stream()
    assert isinstance(s, Stream)
    audio = speech_clips[0][: 16000 * 5]
    first, again = utterance_twice(s, np.array_split(audio, 9), lambda parts: sum(parts, []))
    assert first == again and len(first) == -(-len(audio) // 1280)


def test_text_decoder(tmp_path):
    write_tiny_tokenizer(tmp_path, n_audio=16)
    tok = TextTokenizer.from_pretrained(tmp_path)
    dec = TextDecoder(tok)
    assert isinstance(dec, Stream)
    ids = tok.encode("héllo wörld")
    cut = ids[:-1] + [ids[-1]]
    first, again = utterance_twice(dec, cut, "".join)
    assert first == again == "héllo wörld"


@pytest.fixture(scope="module")
def decoder(golden):
    return SpeechDecoder.from_pretrained(golden / "decoder")


def test_decoder_and_vocoder_streams(decoder):
    codes = torch.randint(0, 512, (23,), generator=torch.Generator().manual_seed(2)).tolist()
    s = decoder.stream(n_steps=1)
    assert isinstance(s, Stream) and isinstance(s.vocoder, Stream)
    first, again = utterance_twice(s, [codes[:11], codes[11:]], torch.cat)
    assert torch.equal(first, again) and first.numel() == decoder.frames(23) * 256
    mel = decoder.flow_mel(codes, n_steps=1)
    v = decoder.vocoder_stream()
    first, again = utterance_twice(v, [mel[:, :, :50], mel[:, :, 50:]], torch.cat)
    assert torch.equal(first, again) and first.numel() == mel.shape[2] * 256


def test_speech_tokenizer_stream_at_another_rate(golden, speech_clips):
    """Chunks at 44.1 kHz go through one streaming resampler: the same codes as resampling the whole first."""
    from glm4voice.audio import resample

    tok = SpeechTokenizer.from_pretrained(golden / "tokenizer")
    audio44 = resample(speech_clips[0][: 16000 * 5], 16000, 44100)
    s = tok.stream()
    streamed = sum((s.push(p, sample_rate=44100) for p in np.array_split(audio44, 13)), []) + s.flush()
    whole = tok.stream()
    expected = whole.push(resample(audio44, 44100, 16000)) + whole.flush()
    assert streamed == expected
    tiny = [s.push(audio44[:3], sample_rate=44100) for _ in range(5)]  # a few samples each: no error
    assert tiny == [[]] * 5 and len(s.flush()) == 1  # 15 samples at 44.1 kHz: one code, at the end
