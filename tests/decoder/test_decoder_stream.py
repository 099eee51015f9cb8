"""Streaming decode: first audio after 10 ids, bounded context, output close to offline.

Bound. With the same noise field, the streamed mel differs from the offline mel
only because chunks see bounded context and no right context past their end
(cross-faded). We require that difference (mean |delta log-mel|) to be under
half the difference between two offline decodes of the same ids that differ
only in their initial noise: chunking must change the output less than
re-sampling it does, i.e. the stream is as faithful a rendering of the ids as
offline decoding. (Measured: ~0.25 of it on these random weights.)
"""

from __future__ import annotations

import pytest
import torch

from glm4voice.audio import decoder_log_mel
from glm4voice.decoder import SpeechDecoder


@pytest.fixture(scope="module")
def decoder(golden):
    return SpeechDecoder.from_pretrained(golden / "decoder")


def _ids(n, seed=1):
    return torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _run(stream, ids, step=1):
    pieces = [stream.push(ids[i : i + step]) for i in range(0, len(ids), step)]
    return pieces, stream.flush()


def test_first_audio_after_ten_ids(decoder):
    s = decoder.stream()
    for i in range(9):
        assert s.push([i]).numel() == 0
    first = s.push([9])
    assert first.dim() == 1 and first.numel() > 0
    # 68 frames for 10 ids, 34 held back for the cross-fade -> 34 frames of audio now.
    assert first.numel() == (decoder.frames(10) - 34) * 256
    assert s.flush().numel() == 34 * 256


def test_stream_close_to_offline(decoder):
    ids = _ids(70)
    n = decoder.frames(len(ids))
    offline = decoder.flow_mel(ids, noise=decoder.positional_noise(0, n))
    resampled = decoder.flow_mel(ids, noise=decoder.positional_noise(0, n, seed=7))
    s = decoder.stream(keep_mel=True)
    decoder.hift.m_source.noise_scale = 0.0  # compare audio without the source's random noise
    try:
        pieces, last = _run(s, ids)
        ref, ref_resampled = decoder.vocode(offline), decoder.vocode(resampled)
    finally:
        decoder.hift.m_source.noise_scale = 1.0
    streamed = torch.cat(s.mel, dim=2)
    assert streamed.shape == offline.shape
    assert [c.codes for c in s.stats] == [10, 20, 40]
    d_stream = (streamed - offline).abs().mean().item()
    d_noise = (resampled - offline).abs().mean().item()
    assert d_stream < 0.5 * d_noise, (d_stream, d_noise)

    # Audio: right length, continuous, and its log-mel as close to offline as the mel is.
    audio = torch.cat([*pieces, last])
    assert audio.shape[0] == n * 256 and torch.isfinite(audio).all()
    a_stream = (decoder_log_mel(audio) - decoder_log_mel(ref)).abs().mean().item()
    a_noise = (decoder_log_mel(ref_resampled) - decoder_log_mel(ref)).abs().mean().item()
    assert a_stream < 0.5 * a_noise, (a_stream, a_noise)


def test_push_pattern_does_not_matter(decoder):
    ids = _ids(45, seed=3)
    a, last_a = _run(decoder.stream(n_steps=2), ids, step=1)
    b, last_b = _run(decoder.stream(n_steps=2), ids, step=45)
    assert torch.equal(torch.cat([*a, last_a]), torch.cat([*b, last_b]))


def test_context_is_bounded(decoder):
    ids = _ids(330, seed=5)
    s = decoder.stream(n_steps=1, context_codes=20, chunk_codes=(10, 20, 40))
    _run(s, ids, step=7)
    # Every chunk after the first sees 20-29 ids of history, never the whole reply.
    assert all(c.context_codes <= 29 for c in s.stats)
    assert max(c.frames for c in s.stats) <= decoder.frames(29 + 40) + 1
    assert s.state.codes.shape[1] <= 20 + 10 + 40 and s.state.mel.shape[2] <= decoder.frames(20 + 10 + 40)
    assert sum(c.codes for c in s.stats) == 330


def test_vocoder_stream_matches_offline(decoder, golden):
    mel = torch.load(golden / "decoder" / "cases.pt", weights_only=True)["hift"]["mel"]
    mel = torch.cat([mel, mel.flip(-1)], dim=2)
    decoder.hift.m_source.noise_scale = 0.0  # the sine source is then a function of F0 and phase
    try:
        offline = decoder.vocode(mel)
        voc = decoder.vocoder_stream(context=12, seed=0)
        cuts = [0, 34, 100, 181, 250, mel.shape[2]]
        with torch.inference_mode():
            pieces = [
                voc.push(mel[:, :, a:b], mel[:, :, b : b + 34] if b < mel.shape[2] else None)
                for a, b in zip(cuts, cuts[1:], strict=False)
            ]
    finally:
        decoder.hift.m_source.noise_scale = 1.0
    assert (torch.cat(pieces) - offline).abs().max() < 1e-5


def test_one_frame_formula_offline_and_streamed(decoder, monkeypatch):
    """3,392 codes: n / 12.5 * 22050 / 256 in float32 gives 23,372 frames, exactly it is 23,373; both paths agree."""
    n = 3392
    assert decoder.frames(n) == 23373

    def solve(codes, total, mel_prompt, n_steps, noise):  # the bookkeeping is under test, not the flow
        return torch.zeros(1, 80, total - (0 if mel_prompt is None else mel_prompt.shape[2]))

    monkeypatch.setattr(decoder, "solve", solve)
    offline = decoder.flow_mel([1] * n)
    s = decoder.stream(keep_mel=True)
    monkeypatch.setattr(s.vocoder, "push", lambda mel, lookahead=None: torch.zeros(mel.shape[2] * 256))
    audio = torch.cat([s.push([1] * n), s.flush()])
    assert offline.shape[2] == sum(m.shape[2] for m in s.mel) == 23373 and audio.numel() == 23373 * 256


def test_flush_starts_a_new_utterance(decoder):
    """The stream contract: after flush the stream is as good as new."""
    codes = _ids(25, seed=4)
    s = decoder.stream(n_steps=2)
    first = torch.cat([s.push(codes), s.flush()])
    again = torch.cat([s.push(codes), s.flush()])
    fresh = decoder.stream(n_steps=2)
    assert torch.equal(first, again) and torch.equal(again, torch.cat([fresh.push(codes), fresh.flush()]))
