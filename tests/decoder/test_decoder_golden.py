"""The decoder reproduces the reference outputs stored in tests/golden/decoder."""

from __future__ import annotations

import pytest
import torch

from glm4voice.decoder import SpeechDecoder


@pytest.fixture(scope="module")
def decoder(golden):
    return SpeechDecoder.from_pretrained(golden / "decoder")


@pytest.fixture(scope="module")
def cases(golden):
    return torch.load(golden / "decoder" / "cases.pt", weights_only=True)


@pytest.mark.parametrize("index", [0, 1])
def test_flow_cases(decoder, cases, index):
    case = cases["flow"][index]
    prompt_mel = case["prompt_feat"].transpose(1, 2)  # golden stores [1, F, 80]
    mel = decoder.flow_mel(
        case["token"],
        prompt_codes=case["prompt_token"],
        prompt_mel=prompt_mel if prompt_mel.shape[2] else None,
    )
    assert mel.shape == case["mel"].shape
    assert (mel - case["mel"]).abs().max() < 1e-4


def test_flow_accepts_lists(decoder, cases):
    case = cases["flow"][0]
    mel = decoder.flow_mel(case["token"][0].tolist())
    assert (mel - case["mel"]).abs().max() < 1e-4


def test_f0(decoder, cases):
    f0 = decoder.f0(cases["hift"]["mel"])
    assert f0.shape == cases["hift"]["f0"].shape
    assert (f0 - cases["hift"]["f0"]).abs().max() < 1e-4


def test_vocoder_with_given_source(decoder, cases):
    hift = cases["hift"]
    audio = decoder.vocode(hift["mel"], source=hift["source"])
    assert audio.dim() == 1 and audio.shape[0] == hift["speech"].shape[1]
    assert (audio - hift["speech"][0]).abs().max() < 1e-5


def test_decode_offline(decoder, cases):
    case = cases["flow"][0]
    audio = decoder.decode(case["token"])
    assert audio.dim() == 1 and audio.dtype == torch.float32
    assert audio.shape[0] == case["mel"].shape[2] * 256
    assert decoder.sample_rate == 22050
    assert torch.isfinite(audio).all() and audio.abs().max() <= 0.99
    # Deterministic: same ids, same audio.
    assert torch.equal(audio, decoder.decode(case["token"]))
    # The random source is only the excitation: the mel path is exactly the golden one.
    assert torch.equal(decoder.vocode(case["mel"]), decoder.vocode(case["mel"]))
