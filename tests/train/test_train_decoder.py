"""Flow-matching training of the speech decoder: the loss by hand, prompt and CFG dropout, overfit, export, resume."""

from __future__ import annotations

import functools
import json
import math
import random

import pytest
import torch

from glm4voice.decoder import SpeechDecoder
from glm4voice.errors import Glm4VoiceError
from glm4voice.train.config import RunConfig
from glm4voice.train.decoder import (
    Example,
    crop_batch,
    flow_loss,
    flow_terms,
    length_buckets,
    load_examples,
    mel_l1,
    train_decoder,
)
from tests.conftest import GOLDEN, write_wav16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, speech_clips):
    root = tmp_path_factory.mktemp("voice")
    import subprocess

    rows = []
    texts = ["The quick brown fox jumps over the lazy dog near the river bank.",
             "Streaming speech tokenizers must agree with their offline twins."]  # what conftest's clips say
    for i, clip in enumerate(speech_clips[:2]):
        write_wav16(root / f"u{i}.wav", clip)
        rows.append({"id": f"u{i}", "audio": f"u{i}.wav", "text": texts[i], "lang": "en"})
    # flite's slt: a voice pocketsphinx recognises well (espeak-ng: 45-70 % WER), for the intelligibility check
    subprocess.run(["flite", "-voice", "slt", "-t", texts[0], "-o", str(root / "slt.wav")], check=True)
    rows[0] = {**rows[0], "audio": "slt.wav"}
    (root / "voice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "one.jsonl").write_text(json.dumps(rows[0]) + "\n")
    return root


@pytest.fixture(scope="module")
def flow(golden):
    return SpeechDecoder.from_pretrained(golden / "decoder").flow.float()


@functools.cache
def _golden_decoder() -> SpeechDecoder:
    return SpeechDecoder.from_pretrained(GOLDEN / "decoder")


def frames_for(n: int) -> int:
    """Mel frames of n codes: the decoder's one formula."""
    return _golden_decoder().frames(n)


def test_flow_loss_equals_a_hand_computation(flow):
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, flow.cfg.vocab_size, (2, 6), generator=g)
    frames = frames_for(6)
    mel, z = torch.randn(2, 80, frames, generator=g), torch.randn(2, 80, frames, generator=g)
    prompt, drop, t = torch.tensor([0, 10]), torch.tensor([False, True]), torch.tensor([0.3, 0.8])
    got = flow_loss(flow, codes, mel, prompt, drop, t, z)
    # by hand, one sample at a time: sample 1 has its conditions dropped, sample 2 ... see drop
    total, count, s = 0.0, 0, flow.cfg.sigma_min
    for i in range(2):
        y = (1 - (1 - s) * t[i]) * z[i : i + 1] + t[i] * mel[i : i + 1]
        u = mel[i : i + 1] - (1 - s) * z[i : i + 1]
        mu = flow.mu(codes[i : i + 1], frames)
        cond = torch.zeros_like(mu)
        cond[:, :, : prompt[i]] = mel[i : i + 1, :, : prompt[i]]
        spk = flow.speaker(torch.float32, "cpu")
        if drop[i]:
            mu, cond, spk = torch.zeros_like(mu), torch.zeros_like(cond), torch.zeros_like(spk)
        pred = flow.decoder.estimator(y, mu, t[i : i + 1], spk, cond)
        total += float(((pred - u)[:, :, prompt[i] :] ** 2).sum().detach())
        count += 80 * (frames - int(prompt[i]))
    assert float(got.detach()) == pytest.approx(total / count, rel=1e-5)


def test_the_prior_loss_is_half_the_squared_distance_of_mu_to_the_mel_on_every_frame(flow):
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, flow.cfg.vocab_size, (2, 6), generator=g)
    frames = frames_for(6)
    mel, z = torch.randn(2, 80, frames, generator=g), torch.randn(2, 80, frames, generator=g)
    args = (codes, mel, torch.tensor([0, 10]), torch.tensor([False, True]), torch.tensor([0.3, 0.8]), z)
    with torch.no_grad():
        fm, prior = flow_terms(flow, *args)
        assert float(fm) == float(flow_loss(flow, *args))  # the flow-matching term is flow_loss itself
        by_hand = sum(float(((flow.mu(codes[i : i + 1], frames) - mel[i]) ** 2).sum()) for i in range(2))
    # prompt frames and dropped conditions count too: the prior is on the token encoder, before either applies
    assert float(prior) == pytest.approx(0.5 * by_hand / mel.numel(), rel=1e-5)


def test_the_prompt_gets_no_loss_and_dropout_zeroes_what_inference_zeroes(flow):
    seen = {}

    def grab(module, args, output):
        seen["args"] = args
        output.retain_grad()
        seen["pred"] = output

    handle = flow.decoder.estimator.register_forward_hook(grab)
    try:
        g = torch.Generator().manual_seed(1)
        codes = torch.randint(0, flow.cfg.vocab_size, (2, 5), generator=g)
        frames = frames_for(5)
        mel, z = torch.randn(2, 80, frames, generator=g), torch.randn(2, 80, frames, generator=g)
        loss = flow_loss(flow, codes, mel, torch.tensor([12, 0]), torch.tensor([False, True]), torch.rand(2), z)
        loss.backward()
    finally:
        handle.remove()
    grad = seen["pred"].grad
    assert grad[0, :, :12].abs().max() == 0 and grad[0, :, 12:].abs().min() > 0  # prompt frames: no loss
    _, mu, _, spk, cond = seen["args"]
    assert mu[1].abs().max() == 0 and spk[1].abs().max() == 0 and cond[1].abs().max() == 0  # dropped: all zero
    assert mu[0].abs().max() > 0 and spk[0].abs().max() > 0  # ... as in FlowModel.solve's unconditioned row
    assert torch.equal(cond[0, :, :12], mel[0, :, :12]) and cond[0, :, 12:].abs().max() == 0


def test_crops_are_aligned_and_half_start_at_zero(corpus, golden):
    examples = load_examples(corpus / "voice.jsonl", golden / "tokenizer", frames_for, "training")
    for e in examples:
        assert e.mel.shape[1] == frames_for(len(e.codes))
    codes, mel = crop_batch(length_buckets(examples, 8), 64, 8, random.Random(0), frames_for)
    assert codes.shape == (64, 8) and mel.shape == (64, 80, frames_for(8))
    starts = sum(any(torch.equal(c, e.codes[:8]) for e in examples) for c in codes)
    assert 16 < starts < 56


def test_crops_use_every_utterance_short_ones_whole():
    # utterances of 3..30 codes (the tiny recipe's are mostly shorter than its 40-code crops); code k of
    # utterance i is 100 i + k and its mel's frame j holds 1000 i + j, so each crop says where it came from
    def example(i, n):
        return Example(f"u{i}", torch.arange(n) + 100 * i, (torch.arange(frames_for(n)) + 1000.0 * i).expand(80, -1))

    lengths = [3, 5, 8, 12, 20, 30] * 8
    examples = [example(i, n) for i, n in enumerate(lengths)] + [Example("one code", torch.zeros(1).long(),
                                                                         torch.zeros(80, frames_for(1)))]
    seen, whole, trained, buckets = set(), set(), [0] * len(lengths), length_buckets(examples, 10)
    for step in range(400):
        codes, mel = crop_batch(buckets, 4, 10, random.Random(step), frames_for)
        b, n = codes.shape
        assert n <= 10 and b == 4 * 10 // n and mel.shape == (b, 80, frames_for(n))  # the same codes a step
        for c, m in zip(codes, mel):
            i, start = int(c[0]) // 100, int(c[0]) % 100
            assert torch.equal(c, torch.arange(start, start + n) + 100 * i)
            assert torch.equal(m[0], torch.arange(frames_for(n)) + frames_for(start) + 1000.0 * i)  # aligned
            seen.add(i)
            trained[i] += n
            if n == lengths[i]:
                whole.add(i)
    assert seen == set(range(len(lengths)))  # short ones too (and whole); never the 1-code one
    assert {i for i, n in enumerate(lengths) if n < 10} <= whole
    per_code = [sum(t for t, m in zip(trained, lengths) if m == n) / n for n in lengths[:6]]  # by length
    assert max(per_code) < 2 * min(per_code), per_code  # every second of speech about as often


def test_overfits_one_utterance_exports_and_resumes(corpus, golden, tmp_path):
    one = load_examples(corpus / "one.jsonl", golden / "tokenizer", frames_for, "validation")
    before = mel_l1(SpeechDecoder.from_pretrained(golden / "decoder").flow.float(), one, "cpu")
    cfg = RunConfig(steps=150, batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=10, weight_decay=0.0, log_every=50,
                    save_every=75)  # fmt: skip
    kwargs = dict(valid=corpus / "one.jsonl", crop_codes=len(one[0].codes), log=lambda line: None)
    records = train_decoder(golden / "decoder", golden / "tokenizer", corpus / "one.jsonl", tmp_path / "a", cfg,
                            **kwargs)  # fmt: skip
    after = records[-1]["valid_mel_l1"]
    assert after < before / 2.5, (before, after)  # 150 steps here: 5.4 -> 1.7 (400 steps: 1.2)
    # pocketsphinx judges the re-synthesis beside the recording: the golden HiFT is random, so it is noise
    assert records[-1]["valid_wer_original"] < 0.2 and records[-1]["valid_wer_resynth"] > 0.8
    assert records[-1]["valid_mcd"] > 0  # DTW-aligned mel cepstral distortion of the re-synthesis
    # the exported folder is a decoder: the same mel as the training model gave
    dec = SpeechDecoder.from_pretrained(tmp_path / "a" / "step-150")
    assert mel_l1(dec.flow.float(), one, "cpu") == after
    # resume from the middle: the same weights at the end
    resumed = train_decoder(None, golden / "tokenizer", corpus / "one.jsonl", tmp_path / "b", cfg,
                            resume=tmp_path / "a" / "step-75", **kwargs)  # fmt: skip
    assert resumed[-1]["loss"] == records[-1]["loss"]
    a = torch.load(tmp_path / "a" / "step-150" / "flow.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "step-150" / "flow.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not math.isnan(before)


def test_bad_inputs(corpus, golden, tmp_path):
    cfg = RunConfig(steps=2, batch_size=2)
    with pytest.raises(Glm4VoiceError, match="crop-codes"):
        train_decoder(golden / "decoder", golden / "tokenizer", corpus / "voice.jsonl", tmp_path / "a", cfg,
                      crop_codes=1)  # fmt: skip
    with pytest.raises(Glm4VoiceError, match="--init"):
        train_decoder(None, golden / "tokenizer", corpus / "voice.jsonl", tmp_path / "b", cfg)
    with pytest.raises(Glm4VoiceError, match="flow or hift"):
        train_decoder(golden / "decoder", golden / "tokenizer", corpus / "voice.jsonl", tmp_path / "c", cfg,
                      stage="gan")  # fmt: skip
    with pytest.raises(Glm4VoiceError, match="needs --speech-tokenizer"):
        train_decoder(golden / "decoder", None, corpus / "voice.jsonl", tmp_path / "d", cfg)
    for weight in (-1.0, float("nan"), float("inf")):
        with pytest.raises(Glm4VoiceError, match="prior-weight must be"):
            train_decoder(golden / "decoder", golden / "tokenizer", corpus / "voice.jsonl", tmp_path / "e", cfg,
                          prior_weight=weight)  # fmt: skip
    with pytest.raises(Glm4VoiceError, match="for the flow stage"):
        train_decoder(golden / "decoder", None, corpus / "voice.jsonl", tmp_path / "f", cfg, stage="hift",
                      prior_weight=1.0)  # fmt: skip


def test_the_prior_loss_trains_the_token_encoder_toward_the_mel(corpus, golden, tmp_path):
    cfg = RunConfig(steps=40, batch_size=2, lr=3e-3, min_lr=3e-4, warmup_steps=5, weight_decay=0.0, log_every=1)
    records = train_decoder(golden / "decoder", golden / "tokenizer", corpus / "one.jsonl", tmp_path / "p", cfg,
                            crop_codes=8, prior_weight=1.0, log=lambda line: None)  # fmt: skip
    prior = [r["prior_loss"] for r in records if "prior_loss" in r]
    assert len(prior) == 40 and all(r["loss"] > r["flow_loss"] for r in records if "prior_loss" in r)
    assert sum(prior[-5:]) < 0.5 * sum(prior[:5]), prior  # mu moves toward the mel it conditions


def test_cli(corpus, golden, tmp_path, capsys):
    from glm4voice.cli import main

    argv = ["train-decoder", "--init", str(golden / "decoder"), "--speech-tokenizer", str(golden / "tokenizer"),
            "--data", str(corpus / "voice.jsonl"), "--steps", "2", "--crop-codes", "8", "--batch-size", "2"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    assert SpeechDecoder.from_pretrained(tmp_path / "run" / "step-2").vocab_size == 512
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2  # the run folder already holds checkpoints
    assert main([*argv[:2], str(tmp_path / "nope"), *argv[3:], "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "already holds checkpoints" in err[-2] and "no such folder" in err[-1]


def test_torchrun_two_ranks(corpus, golden, tmp_path):
    """FSDP over two ranks: every step logged once, the gathered flow exports as a decoder folder."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "glm4voice",
           "train-decoder", "--init", str(golden / "decoder"), "--speech-tokenizer", str(golden / "tokenizer"),
           "--data", str(corpus / "voice.jsonl"), "--out", str(tmp_path / "f"), "--steps", "3", "--crop-codes", "8",
           "--batch-size", "2", "--log-every", "1", "--valid", str(corpus / "one.jsonl")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    logged = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["step"] for r in logged] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in logged)
    assert "valid_mel_l1" in logged[-1] and "valid_wer_resynth" in logged[-1]  # rank 0 judged a gathered copy
    state = torch.load(tmp_path / "f" / "step-3" / "flow.pt", weights_only=True)
    assert state.keys() == SpeechDecoder.from_pretrained(golden / "decoder").flow.state_dict().keys()
    SpeechDecoder.from_pretrained(tmp_path / "f" / "step-3")


def test_hift_stage_learns_one_second_and_exports_the_release_keys(corpus, golden, tmp_path):
    from glm4voice.train.vocoder import VocoderLoss, load_recordings

    clip = load_recordings(corpus / "one.jsonl", "validation")[0]
    assert clip.f0.shape == (clip.mel.shape[1],) and (clip.f0 > 0).any()  # Praat's track, one value per frame
    one = tmp_path / "one.jsonl"
    write_wav16(tmp_path / "second.wav", clip.audio[:22050].numpy(), rate=22050)
    one.write_text(json.dumps({"id": "s", "audio": "second.wav", "text": "x", "lang": "en"}) + "\n")
    second = load_recordings(one, "validation")[0]
    torch.manual_seed(0)
    hift = SpeechDecoder.from_pretrained(golden / "decoder").hift.float()
    with torch.no_grad():
        _, before = VocoderLoss(hift)(second.mel[None], second.f0[None], second.audio[None])
    cfg = RunConfig(steps=60, batch_size=2, lr=2e-3, min_lr=2e-4, warmup_steps=5, weight_decay=0.0, log_every=20)
    records = train_decoder(golden / "decoder", None, one, tmp_path / "run", cfg, stage="hift", valid=one,
                            crop_frames=64, log=lambda line: None)  # fmt: skip
    after = records[-1]
    assert after["valid_stft_loss"] < 0.9 * before["stft_loss"], (before, after)
    assert after["valid_mel_l1"] < before["mel_l1"] and after["valid_f0_l1"] < before["f0_l1"]
    exported = torch.load(tmp_path / "run" / "step-60" / "hift.pt", weights_only=True)
    released = torch.load(golden / "decoder" / "hift.pt", weights_only=True)
    assert exported.keys() == released.keys()  # weight_g / weight_v where the release has them
    assert all(exported[k].shape == released[k].shape for k in exported)
    SpeechDecoder.from_pretrained(tmp_path / "run" / "step-60").vocode(second.mel[None])


def test_starts_from_a_config_alone(corpus, golden, tmp_path, capsys):
    """--config: random weights of its sizes; a checkpoint is a decoder folder in the release's layout."""
    from glm4voice.cli import main

    cfg = RunConfig(steps=2, batch_size=2, log_every=1)
    train_decoder(None, golden / "tokenizer", corpus / "voice.jsonl", tmp_path / "f", cfg,
                  config=golden / "decoder" / "config.yaml", crop_codes=8, log=lambda line: None)  # fmt: skip
    step = tmp_path / "f" / "step-2"
    assert (step / "config.yaml").read_bytes() == (golden / "decoder" / "config.yaml").read_bytes()
    released = torch.load(golden / "decoder" / "hift.pt", weights_only=True)
    assert torch.load(step / "hift.pt", weights_only=True).keys() == released.keys()  # weight_g / weight_v too
    golden_flow = torch.load(golden / "decoder" / "flow.pt", weights_only=True)
    trained = torch.load(step / "flow.pt", weights_only=True)
    assert trained.keys() == golden_flow.keys() and not torch.equal(trained["input_embedding.weight"],
                                                                    golden_flow["input_embedding.weight"])
    SpeechDecoder.from_pretrained(step).decode([1, 2, 3, 4, 5])
    # the packaged tiny sizes through the CLI (the hift stage: no tokenizer needed)
    argv = ["train-decoder", "--stage", "hift", "--config", "tiny", "--data", str(corpus / "one.jsonl"),
            "--out", str(tmp_path / "h"), "--steps", "1", "--batch-size", "1"]  # fmt: skip
    assert main(argv) == 0
    tiny = SpeechDecoder.from_pretrained(tmp_path / "h" / "step-1")
    assert tiny.config.hift.base_channels == 64 and tiny.vocab_size == 1024
    assert main([*argv[:-4], "--init", str(golden / "decoder"), "--out", str(tmp_path / "x"), *argv[-4:-2]]) == 2
    assert "not both" in capsys.readouterr().err


def test_adversarial_training_updates_each_side_by_its_own_loss(golden):
    from glm4voice.train.discriminators import Discriminators, discriminator_loss
    from glm4voice.train.vocoder import VocoderLoss

    torch.manual_seed(0)
    hift = SpeechDecoder.from_pretrained(golden / "decoder").hift.float()
    model = VocoderLoss(hift, Discriminators(scale=1 / 16))
    mel, f0, audio = torch.randn(2, 80, 32), torch.full((2, 32), 120.0), 0.1 * torch.randn(2, 32 * 256)
    torch.manual_seed(1)
    loss, metrics = model(mel, f0, audio, adversarial=True)
    loss.backward()
    assert {"adv_loss", "fm_loss", "disc_loss"} <= metrics.keys()
    together = {n: p.grad.clone() for n, p in model.disc.named_parameters()}
    # the discriminators' gradient is that of their own loss alone (the generator's terms leave them be)
    model.zero_grad()
    torch.manual_seed(1)
    predicted = hift.f0(mel)
    source, _ = hift.source_from_f0(predicted.detach())
    fake = hift(mel, source)[:, : audio.shape[1]].detach()
    discriminator_loss(model.disc(audio)[0], model.disc(fake)[0]).backward()
    assert all(torch.allclose(together[n], p.grad, atol=1e-6) for n, p in model.disc.named_parameters())
    assert all(p.requires_grad for p in model.disc.parameters())


def test_adversarial_stage_starts_at_its_step_and_resumes_exactly(corpus, golden, tmp_path):
    cfg = RunConfig(steps=4, batch_size=1, save_every=2, log_every=1, lr=1e-3, min_lr=1e-4, warmup_steps=1)
    kwargs = dict(stage="hift", crop_frames=32, adversarial_from=3, log=lambda line: None)
    records = train_decoder(golden / "decoder", None, corpus / "one.jsonl", tmp_path / "a", cfg, **kwargs)
    assert ["disc_loss" in r for r in records] == [False, False, True, True]  # a generator-only warm-up first
    assert (tmp_path / "a" / "step-2" / "discriminators.pt").is_file()
    resumed = train_decoder(None, None, corpus / "one.jsonl", tmp_path / "b", cfg, resume=tmp_path / "a" / "step-2",
                            **kwargs)  # fmt: skip
    assert [r["loss"] for r in resumed] == [r["loss"] for r in records[2:]]
    for name in ("hift.pt", "discriminators.pt"):
        a = torch.load(tmp_path / "a" / "step-4" / name, weights_only=True)
        b = torch.load(tmp_path / "b" / "step-4" / name, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(Glm4VoiceError, match="hift stage"):
        train_decoder(golden / "decoder", golden / "tokenizer", corpus / "one.jsonl", tmp_path / "c", cfg,
                      adversarial_from=2)  # fmt: skip


def test_split_weight_norm_is_exact():
    from glm4voice.decoder.hift import fold_weight_norm
    from glm4voice.train.vocoder import split_weight_norm

    weights = {"a.weight": torch.randn(4, 3, 5), "b.weight": torch.randn(2, 2)}
    split = split_weight_norm(weights, {"a"})
    assert set(split) == {"a.weight_g", "a.weight_v", "b.weight"} and split["a.weight_g"].shape == (4, 1, 1)
    folded = fold_weight_norm(split)
    assert torch.allclose(folded["a.weight"], weights["a.weight"], atol=1e-6) and torch.equal(folded["b.weight"],
                                                                                              weights["b.weight"])
