import io

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import WhisperFeatureExtractor

from glm4voice.audio import decoder_log_mel, load_audio, whisper_log_mel, write_wav
from glm4voice.errors import AudioError


@pytest.fixture(scope="module")
def extractor(golden):
    return WhisperFeatureExtractor.from_pretrained(str(golden / "tokenizer"))


@pytest.mark.parametrize("n", [16000, 17600, 60680, 1000, 1279 * 10])
def test_whisper_features_match_transformers(extractor, speech_clips, n):
    wave = np.resize(speech_clips[0], n).astype(np.float32)
    ref = extractor(
        [wave], sampling_rate=16000, return_attention_mask=True, return_tensors="pt",
        padding="longest", pad_to_multiple_of=1280,
    )
    ours, mask = whisper_log_mel([wave])
    assert ours.shape == ref.input_features.shape
    torch.testing.assert_close(ours, ref.input_features, atol=1e-4, rtol=0)
    assert torch.equal(mask, ref.attention_mask.bool())
    assert int(mask.sum()) == -(-n // 160)


def test_whisper_features_batch_is_per_item(speech_clips):
    waves = [speech_clips[0], speech_clips[1][:20000]]
    batch, mask = whisper_log_mel(waves)
    for row, wave in enumerate(waves):
        alone, alone_mask = whisper_log_mel([wave])
        T = alone.shape[2]
        assert torch.equal(batch[row, :, :T], alone[0])
        assert torch.equal(mask[row, :T], alone_mask[0]) and not mask[row, T:].any()


def test_load_audio_formats_channels_and_rates(tmp_path, speech_clips):
    mono = speech_clips[0][:8000]
    stereo = np.stack([mono, mono * 0.5], axis=1)
    sf.write(tmp_path / "a.flac", stereo, 8000)
    sf.write(tmp_path / "a.ogg", stereo, 8000)
    for name in ["a.flac", "a.ogg"]:
        out = load_audio(tmp_path / name)
        assert out.dtype == np.float32 and out.ndim == 1
        assert abs(len(out) - 16000) <= 2  # 8 kHz -> 16 kHz
    flac = load_audio(tmp_path / "a.flac", target_rate=8000)
    np.testing.assert_allclose(flac, stereo.mean(axis=1), atol=1e-4)
    # arrays: channels on the short axis, either orientation; bytes too
    np.testing.assert_allclose(load_audio(stereo.T, sample_rate=16000), stereo.mean(axis=1), atol=1e-6)
    buf = io.BytesIO()
    sf.write(buf, mono, 16000, format="WAV")
    assert len(load_audio(buf.getvalue())) == len(mono)
    assert len(load_audio(torch.from_numpy(mono), sample_rate=16000)) == len(mono)


def test_bad_audio_raises_one_clear_error(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("this is not audio at all")
    (tmp_path / "trunc.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    cases = {
        tmp_path / "missing.wav": "no such file",
        tmp_path / "empty.wav": "empty",
        tmp_path / "text.wav": "not readable as audio",
        tmp_path / "trunc.wav": "not readable as audio",
        tmp_path: "folder",
    }
    for source, problem in cases.items():
        with pytest.raises(AudioError, match=problem) as info:
            load_audio(source)
        assert str(source) in str(info.value)
    with pytest.raises(AudioError, match="empty bytes"):
        load_audio(b"")
    with pytest.raises(AudioError, match="sample_rate"):
        load_audio(np.zeros(10))
    with pytest.raises(AudioError, match="no samples"):
        load_audio(np.zeros(0), sample_rate=16000)
    with pytest.raises(AudioError, match="NaN"):
        load_audio(np.array([0.0, np.nan]), sample_rate=16000)


def test_write_wav_round_trip_and_atomic(tmp_path):
    audio = 0.5 * np.sin(np.linspace(0, 100, 22050)).astype(np.float32)
    path = tmp_path / "sub" / "out.wav"
    write_wav(path, torch.from_numpy(audio), 22050)
    back, rate = sf.read(path, dtype="float32")
    assert rate == 22050 and np.abs(back - audio).max() < 1e-4
    assert [p.name for p in path.parent.iterdir()] == ["out.wav"]  # no temp files left


def test_decoder_mel_shape_and_scale():
    t = torch.arange(22050) / 22050
    audio = 0.5 * torch.sin(2 * torch.pi * 440 * t)
    mel = decoder_log_mel(audio)
    assert mel.shape == (1, 80, 22050 // 256)
    # a 440 Hz tone puts its energy in a low mel band, silence sits at log(1e-5)
    peak_band = int(mel[0, :, 10:-10].mean(1).argmax())
    assert 5 <= peak_band <= 20
    silent = decoder_log_mel(torch.zeros(22050))
    assert torch.allclose(silent, torch.full_like(silent, float(np.log(1e-5))), atol=1e-3)
