"""Opt-in int8 decoding: same shapes, mel far closer to fp32 than re-sampling moves it, CPU/fp32 only."""

from __future__ import annotations

import pytest
import torch

from glm4voice.cli import main
from glm4voice.decoder import SpeechDecoder
from glm4voice.errors import CheckpointError


def test_int8_flow_is_close_to_fp32(golden):
    fp32 = SpeechDecoder.from_pretrained(golden / "decoder")
    int8 = SpeechDecoder.from_pretrained(golden / "decoder", int8=True)
    assert any("quantized" in type(m).__module__ for m in int8.flow.modules())
    ids = torch.randint(0, 512, (40,), generator=torch.Generator().manual_seed(5)).tolist()
    n = fp32.frames(len(ids))
    ref = fp32.flow_mel(ids, noise=fp32.positional_noise(0, n))
    mel = int8.flow_mel(ids, noise=fp32.positional_noise(0, n))
    other = fp32.flow_mel(ids, noise=fp32.positional_noise(0, n, seed=7))
    d_int8 = (mel - ref).abs().mean().item()
    d_noise = (other - ref).abs().mean().item()
    assert 0 < d_int8 < 0.05 * d_noise, (d_int8, d_noise)
    audio = torch.cat([int8.stream().push(ids), torch.zeros(0)])
    assert audio.numel() > 0 and torch.isfinite(audio).all()


def test_int8_needs_float32(golden):
    with pytest.raises(CheckpointError, match="float32"):
        SpeechDecoder.from_pretrained(golden / "decoder", dtype="bfloat16", int8=True)


def test_decode_cli_int8(golden, tmp_path, capsys):
    tokens, out = tmp_path / "ids.json", tmp_path / "reply.wav"
    tokens.write_text("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]")
    argv = ["decode", "--decoder", str(golden / "decoder"), "--codes", str(tokens), "--out", str(out), "--int8"]
    assert main(argv) == 0 and out.stat().st_size > 0
