"""Scoring: transcript normalisation and error counts, DTW against brute force, mel cepstral distortion,
the English recogniser's independence from what it heard before."""

from __future__ import annotations

import numpy as np
import pytest

from glm4voice.scoring import dtw, errors, mel_cepstral_distortion, normalize


def test_normalize_and_errors():
    assert normalize("Hello, World!", "en") == "hello world" and normalize("你好，世界。", "zh") == "你好世界"
    assert errors("the cat sat", "the cat sat down", "en") == (1, 3)
    assert errors("你好世界", "你好", "zh") == (2, 4)


def _brute_force(cost: np.ndarray) -> float:
    best = np.full(cost.shape, np.inf)
    for i in range(cost.shape[0]):
        for j in range(cost.shape[1]):
            prior = [best[i - 1, j]] if i else []
            prior += [best[i, j - 1]] if j else []
            prior += [best[i - 1, j - 1]] if i and j else []
            best[i, j] = cost[i, j] + (min(prior) if prior else 0.0)
    return float(best[-1, -1])


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (6, 1), (7, 9), (23, 17)])
def test_dtw_equals_brute_force(shape):
    cost = np.random.default_rng(sum(shape)).random(shape)
    total, pairs = dtw(cost)
    assert total == pytest.approx(_brute_force(cost), rel=1e-12)
    assert max(shape) <= pairs <= sum(shape) - 1


def test_mel_cepstral_distortion():
    rng = np.random.default_rng(0)
    mel = rng.normal(size=(80, 120))
    assert mel_cepstral_distortion(mel, mel) == 0.0
    assert mel_cepstral_distortion(mel, np.repeat(mel, 2, axis=1)) == pytest.approx(0.0, abs=1e-9)  # slower: DTW
    assert mel_cepstral_distortion(mel, mel + 5.0) == pytest.approx(0.0, abs=1e-9)  # loudness (c0) is excluded
    near = mel_cepstral_distortion(mel, mel + 0.1 * rng.normal(size=mel.shape))
    far = mel_cepstral_distortion(mel, mel + 1.0 * rng.normal(size=mel.shape))
    assert 0 < near < far


def test_recognition_does_not_depend_on_what_came_before(tmp_path):
    # pocketsphinx's front end kept state across utterances: this sentence, heard after 3 s of noise, lost a word
    pytest.importorskip("pocketsphinx")
    import subprocess

    import soundfile as sf

    import glm4voice.scoring as scoring

    subprocess.run(["flite", "-voice", "slt", "-t", "What is zero plus zero?", "-o", str(tmp_path / "q.wav")],
                   check=True)  # fmt: skip
    audio, rate = sf.read(tmp_path / "q.wav", dtype="float32")
    noise = np.random.default_rng(0).normal(0, 0.3, 16000 * 3).astype(np.float32)
    scoring._DECODER = None  # a fresh recogniser
    first = scoring.recognise_english(audio, rate)
    scoring.recognise_english(noise, 16000)
    assert scoring.recognise_english(audio, rate) == first and "zero" in first
