"""Bad checkpoints, configs and ids raise glm4voice errors with clear messages."""

from __future__ import annotations

import shutil

import pytest
import torch

from glm4voice.decoder import CodeError, SpeechDecoder
from glm4voice.decoder.config import parse_config
from glm4voice.errors import CheckpointError, Glm4VoiceError


@pytest.fixture(scope="module")
def decoder(golden):
    return SpeechDecoder.from_pretrained(golden / "decoder")


@pytest.fixture(scope="module")
def yaml_text(golden):
    return (golden / "decoder" / "config.yaml").read_text()


def test_config_reads_without_executing(yaml_text):
    cfg = parse_config(yaml_text)
    assert cfg.flow.vocab_size == 512 and cfg.flow.encoder.block_size == 10
    assert cfg.flow.estimator.channels == (32, 32) and cfg.flow.t_scheduler == "cosine"
    assert cfg.hift.upsample_rates == (8, 8) and cfg.hift.samples_per_frame == 256


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("cosyvoice.hifigan.generator.HiFTGenerator", "cosyvoice.hifigan.generator.HiFiGAN", "HiFiGAN"),
        (
            "selfattention_layer_type: 'block_rel_selfattn'",
            "selfattention_layer_type: 'rel_selfattn'",
            "selfattention_layer_type",
        ),
        ("use_cnn_module: False", "use_cnn_module: True", "use_cnn_module"),
        ("solver: 'euler'", "solver: 'midpoint'", "solver"),
        ("act_fn: 'gelu'", "act_fn: 'snake'", "act_fn"),
        ("num_heads: 4\n", "num_heads: 4\n            fancy_option: 3\n", "fancy_option"),
        ("sampling_rate: !ref <sample_rate>", "sampling_rate: !ref <nowhere>", "nowhere"),
    ],
)
def test_unsupported_config(yaml_text, old, new, message):
    head, flow = yaml_text.split("\nflow:", 1)  # edit the flow/hift part, not the unused llm section
    assert old in flow
    with pytest.raises(CheckpointError, match=message):
        parse_config(head + "\nflow:" + flow.replace(old, new, 1))


def test_apply_tags_are_not_run(yaml_text):
    # A tag naming a dangerous function is inert data: parsing must not call it.
    text = "__x: !apply:os.system ['touch /tmp/glm4voice_pwned']\n" + yaml_text
    parse_config(text)
    import os

    assert not os.path.exists("/tmp/glm4voice_pwned")


def test_missing_file(golden, tmp_path):
    folder = tmp_path / "dec"
    shutil.copytree(golden / "decoder", folder)
    (folder / "hift.pt").unlink()
    with pytest.raises(CheckpointError, match="hift.pt"):
        SpeechDecoder.from_pretrained(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        SpeechDecoder.from_pretrained(tmp_path / "nope")


def test_state_dict_mismatch(golden, tmp_path):
    folder = tmp_path / "dec"
    shutil.copytree(golden / "decoder", folder)
    state = torch.load(folder / "flow.pt", weights_only=True)
    del state["encoder_proj.weight"]
    torch.save(state, folder / "flow.pt")
    with pytest.raises(CheckpointError, match="encoder_proj.weight"):
        SpeechDecoder.from_pretrained(folder)


def test_corrupt_checkpoint(golden, tmp_path):
    folder = tmp_path / "dec"
    shutil.copytree(golden / "decoder", folder)
    (folder / "flow.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="flow.pt"):
        SpeechDecoder.from_pretrained(folder)


@pytest.mark.parametrize(
    "tokens, message",
    [
        ([], "no speech codes"),
        ([1, 2, 512], "out of range"),
        ([-1], "out of range"),
        ([1.5], "integer"),
        (torch.tensor([[1.0, 2.0]]), "integer"),
        (torch.zeros(2, 3, dtype=torch.long), "shape"),
        ("abc", "integer"),
    ],
)
def test_bad_ids(decoder, tokens, message):
    with pytest.raises(CodeError, match=message):
        decoder.decode(tokens)


def test_bad_prompt_and_noise(decoder):
    with pytest.raises(Glm4VoiceError, match="prompt_mel"):
        decoder.flow_mel([1, 2], prompt_codes=[3], prompt_mel=torch.zeros(1, 80, 100))
    with pytest.raises(Glm4VoiceError, match="noise"):
        decoder.flow_mel([1, 2], noise=torch.zeros(1, 80, 3))
    with pytest.raises(Glm4VoiceError, match="shape"):
        decoder.vocode(torch.zeros(1, 40, 10))


def test_bad_stream_options(decoder):
    with pytest.raises(Glm4VoiceError, match="chunk_codes"):
        decoder.stream(chunk_codes=(0,))
    with pytest.raises(Glm4VoiceError, match="context_codes"):
        decoder.stream(context_codes=3)
    with pytest.raises(Glm4VoiceError, match="unexpected keyword"):
        decoder.stream(bogus=1)
    s = decoder.stream()
    with pytest.raises(CodeError):
        s.push([100000])
    assert s.flush().numel() == 0  # the bad push changed nothing
