"""Shared test fixtures: the golden checkpoints (a copy of ../shared/golden) and
real speech made on the spot with espeak-ng."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

GOLDEN = Path(__file__).parent / "golden"


def espeak(text: str, voice: str = "en", rate: int = 160, pitch: int = 50, sample_rate: int = 16000):
    """Speak `text` with espeak-ng; returns mono float32 audio at `sample_rate`."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed (make test installs it; or: apt-get install espeak-ng sox)")
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    import io

    from glm4voice.audio import load_audio

    return load_audio(io.BytesIO(wav).getvalue(), target_rate=sample_rate)


@pytest.fixture
def no_embedded_default(tmp_path, monkeypatch) -> None:
    """Hide the checkout's models/tiny: commands given no model find no embedded default."""
    from glm4voice.cli import common

    monkeypatch.setattr(common, "EMBEDDED_MODEL", tmp_path / "no-embedded-default")


@pytest.fixture(scope="session")
def golden() -> Path:
    return GOLDEN


@pytest.fixture(scope="session")
def speech_clips() -> list[np.ndarray]:
    """A handful of real 16 kHz sentences, English and Mandarin, various voices."""
    lines = [
        ("The quick brown fox jumps over the lazy dog near the river bank.", "en", 150, 40),
        ("Streaming speech tokenizers must agree with their offline twins.", "en-us", 175, 60),
        ("今天天气很好，我们去公园散步吧。", "cmn-latn-pinyin", 150, 50),
        ("Please remind me to call my sister tomorrow at nine in the morning.", "en-gb", 140, 70),
    ]
    return [espeak(text, voice, rate, pitch) for text, voice, rate, pitch in lines]


def write_wav16(path: Path, audio: np.ndarray, rate: int = 16000) -> Path:
    sf.write(path, audio, rate)
    return path
