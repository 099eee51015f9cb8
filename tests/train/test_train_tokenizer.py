"""Speech tokenizer training: it learns to transcribe through the VQ, exports both layouts, resumes exactly,
starts from a transformers Whisper folder, runs under torchrun, and reports bad input in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from glm4voice.cli import main
from glm4voice.errors import CheckpointError, Glm4VoiceError
from glm4voice.tokenizer import SpeechTokenizer
from glm4voice.tokenizer.asr import TranscriptCodec, load_asr
from glm4voice.train.config import RunConfig
from glm4voice.train.tokenizer import train_tokenizer
from tests.conftest import espeak

TINY = {"d_model": 64, "encoder_layers": 3, "quantize_position": 2, "pooling_position": 2,
        "encoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_layers": 1, "decoder_attention_heads": 4,
        "decoder_ffn_dim": 128, "num_mel_bins": 128, "quantize_vocab_size": 64, "max_target_positions": 64}  # fmt: skip
# Three utterances of clearly different lengths: a tiny model can tell them apart within a few seconds of CPU.
SENTENCES = [("a", "en", "red green blue", "en-us"), ("b", "en", "one two three four five six seven", "en-us"),
             ("c", "zh", "你好世界", "cmn-latn-pinyin")]  # fmt: skip
FAST = dict(lr=3e-3, min_lr=3e-4, weight_decay=0.0, log_every=50)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import soundfile as sf

    root = tmp_path_factory.mktemp("asr")
    rows = []
    for id_, lang, text, voice in SENTENCES:
        sf.write(root / f"{id_}.wav", espeak(text, voice=voice), 16000)
        rows.append({"id": id_, "audio": f"{id_}.wav", "text": text, "lang": lang})
    (root / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (root / "tiny.json").write_text(json.dumps(TINY))
    return root


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tok"
    records = train_tokenizer(corpus / "train.jsonl", out, RunConfig(steps=100, **FAST), config=corpus / "tiny.json",
                              valid=corpus / "train.jsonl", batch_seconds=4, vocab_size=300, log=lambda line: None)
    return out, records


def test_overfits_to_zero_error(trained):
    out, records = trained
    final = records[-1]
    assert final["loss"] < 0.2 * records[0]["loss"]
    assert final["wer_en"] == 0.0 and final["cer_zh"] == 0.0  # greedy, through the quantized bottleneck
    assert 0 < final["codes_used"] <= 1 and final["code_perplexity"] > 1
    assert "ctc_wer_en" not in final  # no CTC head, no CTC transcripts
    assert final["lang_accuracy"] == 1.0  # the language it was not asked for, it would have named right


def test_a_given_language_starts_the_transcript(trained, corpus):
    """With the language given, the decoder continues from <sot><lang><transcribe><notimestamps>: the ids it
    returns are the transcript's body alone, exactly the training target's."""
    from glm4voice.audio import load_audio, whisper_log_mel

    out, _ = trained
    model, codec = load_asr(out / "step-100")
    features, mask = whisper_log_mel([load_audio(corpus / "c.wav"), load_audio(corpus / "a.wav")])
    given = model.eval().transcribe_ids(features, mask, codec, langs=["zh", "en"])
    assert given == [codec.encode("你好世界", "zh")[len(codec.prefix("zh")) : -1],
                     codec.encode("red green blue", "en")[len(codec.prefix("en")) : -1]]  # fmt: skip
    with pytest.raises(Glm4VoiceError, match="one language per row") as bad:
        model.transcribe_ids(features, mask, codec, langs=["zh"])
    assert not isinstance(bad.value, CheckpointError)  # the caller's mistake, not the checkpoint's
    guessed = model.transcribe_ids(features, mask, codec)  # from <sot> alone: the language token comes first
    assert guessed[0][0] == codec.lang_id("zh") and codec.decode(guessed[0]) == "你好世界"


def test_exports_load_and_give_the_training_quantizer_codes(trained, corpus):
    out, _ = trained
    model, codec = load_asr(out / "step-100")
    from glm4voice.audio import load_audio, whisper_log_mel

    wave = load_audio(corpus / "a.wav")
    features, mask = whisper_log_mel([wave])
    _, m, vq, h = model.eval().encode(features, mask)
    expected = model.vq.nearest(h[0][m[0]]).tolist()
    for folder in (out / "tokenizer", out / "step-100"):  # the released layout and the ASR-training layout
        assert SpeechTokenizer.from_pretrained(folder).tokenize(wave) == expected
    assert not (out / "tokenizer" / "tokenizer.json").exists()  # the released layout is inference-only
    # the CLI: codes through `tokenize`, text through `transcribe`
    done = subprocess.run([sys.executable, "-m", "glm4voice", "transcribe", "--speech-tokenizer", str(out / "step-100"),
                           str(corpus / "c.wav"), str(corpus / "missing.wav")], capture_output=True, text=True)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 1 and lines[0]["text"] == "你好世界" and "no such file" in lines[1]["error"]
    given = subprocess.run([sys.executable, "-m", "glm4voice", "transcribe", "--speech-tokenizer",
                            str(out / "step-100"), "--language", "zh", str(corpus / "c.wav")],
                           capture_output=True, text=True)  # fmt: skip
    assert given.returncode == 0 and json.loads(given.stdout)["text"] == "你好世界"
    released = subprocess.run([sys.executable, "-m", "glm4voice", "transcribe", "--speech-tokenizer",
                               str(out / "tokenizer"), str(corpus / "a.wav")], capture_output=True, text=True)
    assert released.returncode == 2 and "no Whisper decoder" in released.stderr and "Traceback" not in released.stderr


def test_resume_is_bit_exact_across_codebook_restarts(corpus, tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps({**TINY, "quantize_restart_interval": 2}))
    cfg = RunConfig(steps=6, save_every=3, **{**FAST, "log_every": 1})
    kwargs = dict(config=tmp_path / "cfg.json", batch_seconds=4, vocab_size=300, log=lambda line: None)
    records = train_tokenizer(corpus / "train.jsonl", tmp_path / "a", cfg, **kwargs)
    assert any("codes_restarted" in r for r in records)  # restarts happened, inside the resumed span too
    resumed = train_tokenizer(corpus / "train.jsonl", tmp_path / "b", cfg, resume=tmp_path / "a" / "step-3", **kwargs)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in records[3:]]
    from safetensors.torch import load_file

    a = load_file(tmp_path / "a" / "step-6" / "model.safetensors")
    b = load_file(tmp_path / "b" / "step-6" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "model.encoder.ema_count" in a and "model.decoder.embed_tokens.weight" in a


def test_vq_warm_up_then_resume_across_it(corpus, tmp_path):
    cfg = RunConfig(steps=5, save_every=2, **{**FAST, "log_every": 1})
    kwargs = dict(config=corpus / "tiny.json", batch_seconds=4, vocab_size=300, vq_warmup=3, log=lambda line: None)
    records = train_tokenizer(corpus / "train.jsonl", tmp_path / "a", cfg, **kwargs)
    # steps 1-3 bypass the quantizer (no commitment, no codes); step 4 starts the codebook from the trained encoder
    assert [r["commit_loss"] for r in records[:3]] == [0.0] * 3 and all(r["commit_loss"] > 0 for r in records[3:])
    assert [r["codes_in_batch"] for r in records[:3]] == [0.0] * 3 and records[3]["codes_in_batch"] > 0
    # validation after step 3 comes before the codebook exists: it transcribes through the bypassed encoder
    checked = train_tokenizer(corpus / "train.jsonl", tmp_path / "c", RunConfig(steps=4, **FAST), valid=corpus /
                              "train.jsonl", eval_every=3, **kwargs)  # fmt: skip
    assert checked[-2]["vq_bypassed"] and "codes_used" not in checked[-2] and "codes_used" in checked[-1]
    resumed = train_tokenizer(corpus / "train.jsonl", tmp_path / "b", cfg, resume=tmp_path / "a" / "step-2", **kwargs)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in records[2:]]  # the switch happens at the same step


def test_a_commitment_loss_that_swamps_the_asr_loss_is_reported(corpus, tmp_path, capsys):
    kwargs = dict(batch_seconds=4, vocab_size=300, vq_warmup=2, log=lambda line: None)
    for scale, said in ((1e8, True), (1e-6, False)):  # tiny data: k-means fits the frames closely
        # 16 codes: fewer than the corpus's frames (with a code per frame the commitment loss would be 0)
        (tmp_path / f"{scale}.json").write_text(json.dumps({**TINY, "quantize_loss_scale": scale,
                                                            "quantize_vocab_size": 16}))  # fmt: skip
        train_tokenizer(corpus / "train.jsonl", tmp_path / str(scale), RunConfig(steps=3, **FAST),
                        config=tmp_path / f"{scale}.json", **kwargs)  # fmt: skip
        out = capsys.readouterr().out
        assert ("the codebook may collapse; quantize_loss_scale" in out) == said


def test_max_seconds_leaves_out_longer_utterances(corpus):
    from glm4voice.train.tokenizer import Utterances

    every = Utterances(corpus / "train.jsonl", "training")
    cut = sorted(every.seconds())[1] + 0.01  # keeps the two shorter of three
    short = Utterances(corpus / "train.jsonl", "training", max_seconds=cut)
    assert short.skipped == 1 and len(short) == 2 and max(short.seconds()) <= cut


def test_kmeans_finds_separated_clusters_and_fills_every_code():
    from glm4voice.train.tokenizer import kmeans

    g = torch.Generator().manual_seed(1)
    for seed in range(3):
        centres = torch.randn(8, 4, generator=g) * 10
        frames = torch.cat([c + 0.1 * torch.randn(50, 4, generator=g) for c in centres])
        book = kmeans(frames, 8, seed=seed)
        assert torch.cdist(centres, book).min(1).values.max() < 0.2  # one code at each cluster
    assert kmeans(torch.randn(5, 3), 8).shape == (8, 3)  # fewer frames than codes: all still placed


def test_spec_augment_masks_only_real_frames_and_is_pure_in_its_seed():
    from glm4voice.train.tokenizer import spec_augment

    features = torch.randn(2, 128, 500)
    mask = torch.zeros(2, 500, dtype=torch.bool)
    mask[0, :500], mask[1, :300] = True, True
    out = spec_augment(features, mask, seed=5)
    assert torch.equal(out, spec_augment(features, mask, seed=5))
    assert not torch.equal(out, spec_augment(features, mask, seed=6))
    assert torch.equal(out[1, :, 300:], features[1, :, 300:])  # padding untouched
    zeroed = out == 0
    assert 0.01 < zeroed[0].float().mean() < 0.5 and 0.01 < zeroed[1, :, :300].float().mean() < 0.5
    assert torch.equal(out[~zeroed], features[~zeroed])  # the rest is the input


def test_spec_augment_and_label_smoothing_train_and_resume_exactly(corpus, tmp_path):
    cfg = RunConfig(steps=4, save_every=2, **{**FAST, "log_every": 1})
    kwargs = dict(config=corpus / "tiny.json", batch_seconds=4, vocab_size=300, spec_augment_on=True,
                  label_smoothing=0.1, log=lambda line: None)  # fmt: skip
    records = train_tokenizer(corpus / "train.jsonl", tmp_path / "a", cfg, **kwargs)
    resumed = train_tokenizer(corpus / "train.jsonl", tmp_path / "b", cfg, resume=tmp_path / "a" / "step-2", **kwargs)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in records[2:]]
    with pytest.raises(Exception, match="label-smoothing"):
        train_tokenizer(corpus / "train.jsonl", tmp_path / "c", cfg, **{**kwargs, "label_smoothing": 1.0})


def test_ctc_head_trains_is_saved_in_the_asr_layout_only_and_resumes_exactly(corpus, tmp_path):
    from safetensors.torch import load_file

    (tmp_path / "cfg.json").write_text(json.dumps({**TINY, "ctc_weight": 0.3}))
    cfg = RunConfig(steps=4, save_every=2, **{**FAST, "log_every": 1})
    kwargs = dict(config=tmp_path / "cfg.json", batch_seconds=4, vocab_size=300, log=lambda line: None,
                  valid=corpus / "train.jsonl")  # fmt: skip
    records = train_tokenizer(corpus / "train.jsonl", tmp_path / "a", cfg, **kwargs)
    # validation scores the CTC head's own greedy transcripts beside the decoder's
    assert {"wer_en", "cer_zh", "ctc_wer_en", "ctc_cer_zh"} <= set(records[-1])
    # the logged loss is the mix: 0.7 x attention + 0.3 x CTC + commitment
    r = records[0]
    assert r["ctc_loss"] > 0 and r["loss"] == pytest.approx(0.7 * r["asr_loss"] + 0.3 * r["ctc_loss"] +
                                                            r["commit_loss"], rel=1e-4)  # fmt: skip
    resumed = train_tokenizer(corpus / "train.jsonl", tmp_path / "b", cfg, resume=tmp_path / "a" / "step-2", **kwargs)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in records[2:]]  # the head came back from the folder
    assert "model.ctc_head.weight" in load_file(tmp_path / "a" / "step-4" / "model.safetensors")
    assert not any("ctc" in k for k in load_file(tmp_path / "a" / "tokenizer" / "model.safetensors"))
    model, codec = load_asr(tmp_path / "a" / "step-4")
    assert model.ctc_head is not None and json.loads((tmp_path / "a" / "step-4" / "config.json").read_text())[
        "ctc_weight"] == 0.3  # fmt: skip
    # the CTC loss itself: an utterance whose transcript has more ids than frames adds nothing (not inf)
    encoded, mask = torch.randn(2, 3, 64), torch.ones(2, 3, dtype=torch.bool)
    loss = model.ctc_loss(encoded, mask, [[7, 8], [7, 8, 9, 10, 11]], codec.eot)
    assert torch.isfinite(loss)
    # greedy CTC: repeats merge, blanks go, padded frames are ignored
    with torch.no_grad():
        model.ctc_head.weight.zero_()
        model.ctc_head.bias.zero_()
        for dim, token in enumerate([7, 8, 9, codec.eot]):
            model.ctc_head.weight[token, dim] = 1.0
    frames = torch.nn.functional.one_hot(torch.tensor([[0, 0, 3, 1, 1, 3, 0, 2]]), 64).float()
    assert model.ctc_ids(frames, torch.ones(1, 8, dtype=torch.bool), codec.eot) == [[7, 8, 7, 9]]
    assert model.ctc_ids(frames, torch.arange(8)[None] < 7, codec.eot) == [[7, 8, 7]]
    (tmp_path / "bad.json").write_text(json.dumps({**TINY, "ctc_weight": 1.0}))
    with pytest.raises(Exception, match="ctc_weight must lie in"):
        train_tokenizer(corpus / "train.jsonl", tmp_path / "c", cfg, **{**kwargs, "config": tmp_path / "bad.json"})


def test_intermediate_ctc_head_hears_the_50_hz_states_and_shares_the_ctc_loss(corpus, tmp_path):
    from safetensors.torch import load_file

    (tmp_path / "cfg.json").write_text(json.dumps({**TINY, "ctc_weight": 0.4, "inter_ctc_weight": 0.25}))
    cfg = RunConfig(steps=4, save_every=2, **{**FAST, "log_every": 1})
    kwargs = dict(config=tmp_path / "cfg.json", batch_seconds=4, vocab_size=300, log=lambda line: None,
                  valid=corpus / "train.jsonl")  # fmt: skip
    records = train_tokenizer(corpus / "train.jsonl", tmp_path / "a", cfg, **kwargs)
    # validation scores the intermediate head's own greedy transcripts beside the final head's
    assert {"ctc_wer_en", "ctc_cer_zh", "inter_ctc_wer_en", "inter_ctc_cer_zh"} <= set(records[-1])
    # 0.6 x attention + 0.4 x (0.75 x final CTC + 0.25 x intermediate CTC) + commitment
    r = records[0]
    assert r["inter_ctc_loss"] > 0 and r["loss"] == pytest.approx(
        0.6 * r["asr_loss"] + 0.4 * (0.75 * r["ctc_loss"] + 0.25 * r["inter_ctc_loss"]) + r["commit_loss"], rel=1e-4)
    resumed = train_tokenizer(corpus / "train.jsonl", tmp_path / "b", cfg, resume=tmp_path / "a" / "step-2", **kwargs)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in records[2:]]  # the head came back from the folder
    assert "model.inter_ctc_head.weight" in load_file(tmp_path / "a" / "step-4" / "model.safetensors")
    assert not any("ctc" in k for k in load_file(tmp_path / "a" / "tokenizer" / "model.safetensors"))
    model, codec = load_asr(tmp_path / "a" / "step-4")
    assert model.inter_ctc_head is not None
    # it hears the states the pooling reads: 4 frames for each encoder output frame, padding masked alike
    features, mask = torch.randn(2, 128, 160), torch.arange(160)[None] < torch.tensor([[160], [96]])
    pre_pool = []
    encoded, m, _, _ = model.encode(features, mask, pre_pool=pre_pool)
    (hidden, hidden_mask), = pre_pool
    assert hidden.shape[1] == 4 * encoded.shape[1] and hidden_mask.sum(1).tolist() == [80, 48]
    assert m.sum(1).tolist() == [20, 12]
    assert torch.isfinite(model.inter_ctc_loss(pre_pool, [[7, 8], [9]], codec.eot))
    # its greedy path reads the 50 Hz states: repeats merge, blanks go, padded frames are ignored
    with torch.no_grad():
        model.inter_ctc_head.weight.zero_()
        model.inter_ctc_head.bias.zero_()
        for dim, token in enumerate([7, 8, codec.eot]):
            model.inter_ctc_head.weight[token, dim] = 1.0
    frames = torch.zeros(2, 6, hidden.shape[-1])
    for row, dims in enumerate(([0, 0, 2, 0, 1, 1], [1, 2, 1, 0, 0, 0])):
        frames[row, torch.arange(6), torch.tensor(dims)] = 1.0
    assert model.inter_ctc_ids([(frames, torch.arange(6)[None] < torch.tensor([[6], [3]]))], codec.eot) == [
        [7, 7, 8], [8, 8]]  # fmt: skip
    for bad, match in (({"ctc_weight": 0.0, "inter_ctc_weight": 0.5}, "needs a CTC head"),
                       ({"ctc_weight": 0.5, "inter_ctc_weight": 1.0}, "inter_ctc_weight must lie in")):
        (tmp_path / "bad.json").write_text(json.dumps({**TINY, **bad}))
        with pytest.raises(Exception, match=match):
            train_tokenizer(corpus / "train.jsonl", tmp_path / "c", cfg, **{**kwargs, "config": tmp_path / "bad.json"})


def test_intermediate_head_on_phonemes_learns_espeak_ng_phonemes_and_keeps_its_symbols(corpus, tmp_path):
    from glm4voice.data.phonemes import phonemes
    from glm4voice.scoring import symbol_errors
    from glm4voice.train.tokenizer import phoneme_targets

    config = {**TINY, "ctc_weight": 0.5, "inter_ctc_weight": 0.5, "inter_ctc_targets": "phonemes"}
    cfg, kwargs, records = _phonemic_run(corpus, tmp_path, config, 60)
    model, codec = load_asr(tmp_path / "a" / "step-60")
    # the head's classes: the training transcripts' phonemes (kept in the config), blank 0 before them
    symbols = model.config["inter_ctc_phonemes"]
    assert set(symbols) == {p for _, lang, text, _ in SENTENCES for p in phonemes(text, lang)}
    assert model.inter_phonemic and not model.phonemic and model.inter_ctc_head.out_features == len(symbols) + 1
    # validation scores it by phoneme error rate; it learns the three utterances' phonemes
    first, last = next(r for r in records if r.get("step") == 30), records[-1]
    assert {"inter_ctc_per_en", "inter_ctc_per_zh"} <= set(last) and "inter_ctc_wer_en" not in last
    assert last["inter_ctc_per_en"] < first["inter_ctc_per_en"] and last["inter_ctc_loss"] < first["inter_ctc_loss"]
    # resuming reads the symbols back from the folder and goes on exactly
    resumed = train_tokenizer(corpus / "train.jsonl", tmp_path / "b", cfg, resume=tmp_path / "a" / "step-30",
                              **kwargs)  # fmt: skip
    before = {r["step"]: r["loss"] for r in records}
    assert [r["loss"] for r in resumed if r["step"] in before] == [before[s] for s in (40, 50, 60)]
    from glm4voice.data.manifest import read_manifest

    rows = list(read_manifest(corpus / "train.jsonl"))
    assert [len(t) for t in phoneme_targets(model, rows)] == [len(phonemes(r.text, r.lang)) for r in rows]
    assert symbol_errors([1, 2, 3], [1, 3]) == (1, 3) and symbol_errors([1, 2], [4, 1, 2]) == (1, 2)
    _refuses(corpus, tmp_path, cfg, kwargs, config, [
        ({"inter_ctc_weight": 0.0}, "inter_ctc_targets phonemes needs its head"),
        ({"inter_ctc_targets": "letters"}, "transcript or phonemes")])  # fmt: skip



def test_final_head_on_phonemes_at_four_steps_a_frame_learns_what_the_codes_say(corpus, tmp_path):
    from glm4voice.data.phonemes import phonemes

    config = {**TINY, "ctc_weight": 0.5, "ctc_targets": "phonemes", "ctc_upsample": 4}
    cfg, kwargs, records = _phonemic_run(corpus, tmp_path, config, 120)
    model, _ = load_asr(tmp_path / "a" / "step-120")
    symbols = model.config["inter_ctc_phonemes"]  # one inventory, whichever head reads it
    assert set(symbols) == {p for _, lang, text, _ in SENTENCES for p in phonemes(text, lang)}
    assert model.phonemic and not model.inter_phonemic and model.upsample == 4 and model.blank(99) == 0
    assert model.ctc_head.out_features == 4 * (len(symbols) + 1)
    first, last = next(r for r in records if r.get("step") == 60), records[-1]
    assert {"ctc_per_en", "ctc_per_zh"} <= set(last) and "ctc_wer_en" not in last
    assert last["ctc_per_en"] < first["ctc_per_en"] and last["ctc_loss"] < first["ctc_loss"]
    # each frame's four steps in order: frame 0 says 1 2, frame 1 says 2 (blank between), frame 2 says nothing
    classes = len(symbols) + 1
    with torch.no_grad():
        model.ctc_head.weight.zero_()
        model.ctc_head.bias.zero_()
        for frame_dim, steps in enumerate([[1, 2, 2, 0], [0, 2, 0, 0], [0, 0, 0, 0]]):
            for k, symbol in enumerate(steps):
                model.ctc_head.weight[k * classes + symbol, frame_dim] = 1.0
    frames = torch.nn.functional.one_hot(torch.tensor([[0, 1, 2, 0]]), TINY["d_model"]).float()
    assert model.ctc_ids(frames, torch.ones(1, 4, dtype=torch.bool), 0) == [[1, 2, 2, 1, 2]]
    assert model.ctc_ids(frames, torch.arange(4)[None] < 2, 0) == [[1, 2, 2]]  # a padded frame's steps are not read
    # 12 steps for 9 symbols: the loss is finite where 3 frames alone could not hold them
    assert torch.isfinite(model.ctc_loss(frames[:, :3], torch.ones(1, 3, dtype=torch.bool), [[1, 2] * 4 + [1]], 0))
    _refuses(corpus, tmp_path, cfg, kwargs, config, [
        ({"ctc_upsample": 0}, "ctc_upsample must be an integer"),
        ({"ctc_weight": 0.0}, "ctc_targets phonemes needs its head"),
        ({"ctc_targets": "letters"}, "ctc_targets is transcript or phonemes")])  # fmt: skip


def _phonemic_run(corpus, tmp_path, config: dict, steps: int):
    """Train `config` from scratch for `steps`, saved and validated (on the training rows) half way and at the end
    into tmp_path/a; returns (run config, the trainer's keyword arguments, records)."""
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    cfg = RunConfig(steps=steps, save_every=steps // 2, **{**FAST, "log_every": 10})
    kwargs = dict(config=tmp_path / "cfg.json", batch_seconds=8, vocab_size=300, log=lambda line: None,
                  valid=corpus / "train.jsonl", eval_every=steps // 2)  # fmt: skip
    return cfg, kwargs, train_tokenizer(corpus / "train.jsonl", tmp_path / "a", cfg, **kwargs)


def _refuses(corpus, tmp_path, cfg, kwargs, config: dict, cases) -> None:
    """Each (change to `config`, error pattern) of `cases` stops the trainer with that error."""
    for bad, match in cases:
        (tmp_path / "bad.json").write_text(json.dumps({**config, **bad}))
        with pytest.raises(Exception, match=match):
            train_tokenizer(corpus / "train.jsonl", tmp_path / "c", cfg, **{**kwargs, "config": tmp_path / "bad.json"})


def test_starts_from_a_transformers_whisper_folder(corpus, tmp_path):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    codec = TranscriptCodec.train([s[2] for s in SENTENCES], 300)
    whisper = WhisperForConditionalGeneration(WhisperConfig(
        d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=128, vocab_size=codec.vocab_size,
        max_target_positions=64, pad_token_id=codec.eot, decoder_start_token_id=codec.sot))  # fmt: skip
    whisper.save_pretrained(tmp_path / "whisper")
    codec.save(tmp_path / "whisper")
    (tmp_path / "vq.json").write_text(json.dumps({"quantize_position": 1, "quantize_vocab_size": 32}))
    model, _ = load_asr(tmp_path / "whisper", {"quantize_position": 1, "quantize_vocab_size": 32})
    theirs = whisper.model.encoder.layers[1].fc1.weight
    assert torch.equal(model.post_layers[0].fc1.weight, theirs)  # layer 1 sits past the quantizer
    assert torch.equal(model.decoder.layers[0].fc1.weight, whisper.model.decoder.layers[0].fc1.weight)
    argv = ["train-tokenizer", "--init", str(tmp_path / "whisper"), "--config", str(tmp_path / "vq.json"),
            "--data", str(corpus / "train.jsonl"), "--out", str(tmp_path / "run"), "--steps", "2",
            "--batch-seconds", "4"]  # fmt: skip
    assert main(argv) == 0
    assert SpeechTokenizer.from_pretrained(tmp_path / "run" / "tokenizer").config.codebook_size == 32


@pytest.mark.parametrize("case, message", [
    ("no_lang", "needs a text and lang en or zh"),
    ("missing_audio", "no such file"),
    ("released", "no Whisper decoder"),
    ("nothing", "give --init"),
    ("bad_config", "must divide d_model"),
    ("all_too_long", "no utterances of at most 0.5 s for the training set"),
    ("max_seconds_range", "--max-seconds must lie in (0, 30]"),
])  # fmt: skip
def test_bad_input_is_one_clear_line(corpus, tmp_path, capsys, golden, case, message):
    data, extra = corpus / "train.jsonl", ["--config", str(corpus / "tiny.json")]
    if case == "no_lang":
        data = tmp_path / "x.jsonl"
        data.write_text(json.dumps({"id": "a", "audio": str(corpus / "a.wav"), "text": "hi"}) + "\n")
    elif case == "missing_audio":
        data = tmp_path / "x.jsonl"
        data.write_text(json.dumps({"id": "a", "audio": "nope.wav", "text": "hi", "lang": "en"}) + "\n")
    elif case == "released":
        extra = ["--init", str(golden / "tokenizer")]
    elif case == "nothing":
        extra = []
    elif case == "bad_config":
        (tmp_path / "c.json").write_text(json.dumps({**TINY, "encoder_attention_heads": 5}))
        extra = ["--config", str(tmp_path / "c.json")]
    elif case == "all_too_long":
        extra += ["--max-seconds", "0.5"]
    elif case == "max_seconds_range":
        extra += ["--max-seconds", "31"]
    code = main(["train-tokenizer", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_torchrun_two_ranks(corpus, tmp_path):
    """Two ranks start from the one-process loss (its two micro-batches) and keep one codebook."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "glm4voice",
           "train-tokenizer", "--config", str(corpus / "tiny.json"), "--data", str(corpus / "train.jsonl"),
           "--out", str(tmp_path / "f"), "--steps", "3", "--batch-seconds", "4", "--vocab-size", "300",
           "--lr", "3e-3", "--log-every", "1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    logged = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3]
    assert all(r["codebook_rank_spread"] == 0.0 for r in logged if "codebook_rank_spread" in r)
    assert sum("codebook_rank_spread" in r for r in logged) >= 2
    single = train_tokenizer(corpus / "train.jsonl", tmp_path / "s", RunConfig(steps=1, accumulate=2, lr=3e-3),
                             config=corpus / "tiny.json", batch_seconds=4, vocab_size=300, log=lambda line: None)
    assert abs(logged[0]["loss"] - single[0]["loss"]) < 0.01 * single[0]["loss"]
    assert SpeechTokenizer.from_pretrained(tmp_path / "f" / "tokenizer").tokenize(corpus / "a.wav")


def test_the_packaged_tiny_config_builds_a_model_whose_heads_both_hear_phonemes():
    from glm4voice.data.phonemes import inventory
    from glm4voice.recipe.tiny import CONFIGS
    from glm4voice.tokenizer.asr import new_asr

    config = json.loads((CONFIGS / "tokenizer-tiny.json").read_text())
    config["inter_ctc_phonemes"] = inventory((text, lang) for _, lang, text, _ in SENTENCES)  # as the trainer fills
    model = new_asr(config, TranscriptCodec.train([s[2] for s in SENTENCES], 300))
    assert model.phonemic and model.inter_phonemic and model.upsample == 4
    features, mask = torch.randn(1, 128, 200), torch.ones(1, 200, dtype=torch.bool)  # 2 s: 25 codes, 100 steps
    pre_pool = []
    encoded, m, _, _ = model.encode(features, mask, pre_pool=pre_pool)
    assert encoded.shape[1] == 25 and torch.isfinite(model.ctc_loss(encoded, m, [list(range(1, 40))], 0))


def test_the_codebook_frames_span_the_length_range():
    """The k-means frames come from up to 16 batches from the shortest to the longest, in bit-reversed order:
    any first few spread over all lengths (the frames suffice after a few)."""
    from glm4voice.train.tokenizer import spread_batches

    groups = list(range(31))  # batches in length order
    order = spread_batches(groups)
    assert len(order) == 16 and order[0] == 0 and 30 in order and len(set(order)) == 16
    assert order[:4] == [0, 16, 8, 24] and max(order[:6]) >= 24  # six batches reach from the shortest to the longest
    assert sorted(spread_batches([0, 1, 2])) == [0, 1, 2] and spread_batches(["a"]) == ["a"]
