"""Streaming-thoughts samples: inference's exact layout, the paper's two loss masks, a batch the LM trains on."""

from __future__ import annotations

import pytest
import torch

from glm4voice.data.sft import IGNORE, TrainingSample, collate, interleave_reply, sft_samples
from glm4voice.errors import Glm4VoiceError
from glm4voice.lm import load_lm
from glm4voice.lm.prompt import UserInput, build_prompt
from glm4voice.lm.text import TextTokenizer
from glm4voice.lm.tiny import write_tiny_lm


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    return write_tiny_lm(tmp_path_factory.mktemp("sft_lm"), n_audio=512, seed=1)


@pytest.fixture(scope="module")
def tok(lm_folder):
    return TextTokenizer.from_pretrained(lm_folder)


def test_interleave_runs_of_13_and_26():
    text, speech = list(range(30)), list(range(100, 160))
    out = interleave_reply(text, speech)
    assert out == text[:13] + speech[:26] + text[13:26] + speech[26:52] + text[26:] + speech[52:]
    long_text = list(range(50))  # text outlasts the speech: the rest of the text follows
    assert interleave_reply(long_text, speech[:30]) == long_text[:13] + speech[:26] + long_text[13:26] + speech[
        26:30
    ] + long_text[26:39] + long_text[39:]
    with pytest.raises(Glm4VoiceError):
        interleave_reply(text, speech, text_run=0)


def test_samples_follow_the_inference_layout(tok):
    question = UserInput(speech=[5, 6, 7, 8])
    text_ids = tok.encode("Sure, here is the answer to your question about speech.")
    codes = list(range(40))
    text_copy, speech_copy = sft_samples(tok, question, text_ids, codes)
    prompt = build_prompt(tok, question)  # exactly what the chat feeds the LM
    assert text_copy.input_ids == speech_copy.input_ids
    assert text_copy.input_ids[: len(prompt)] == prompt
    reply = text_copy.input_ids[len(prompt) :]
    assert reply[-1] == tok.token_id("<|user|>")  # the stop id the chat ends on
    assert [i for i in reply[:-1] if not tok.is_audio(i)] == text_ids
    assert [i - tok.audio_offset for i in reply[:-1] if tok.is_audio(i)] == codes
    assert tok.is_audio(reply[len(text_ids[:13])]) and not tok.is_audio(reply[12])  # 13 text, then speech
    rendered = tok.decode(text_copy.input_ids)
    assert rendered.startswith("[gMASK]<sop><|system|>\nUser will provide you with a speech instruction.")
    assert "<|end_of_audio|><|assistant|>streaming_transcription\nSure" in rendered

    # Loss: never on the prompt; text copy on text ids + stop, speech copy on speech ids + stop.
    assert set(text_copy.labels[: len(prompt)]) == set(speech_copy.labels[: len(prompt)]) == {IGNORE}
    text_loss = [i for i in text_copy.labels if i != IGNORE]
    speech_loss = [i for i in speech_copy.labels if i != IGNORE]
    assert text_loss == text_ids + [tok.token_id("<|user|>")]
    assert speech_loss == tok.audio_ids(codes) + [tok.token_id("<|user|>")]


def test_history_is_context_without_loss(tok):
    first = UserInput(text="hello")
    earlier = tok.encode("hi!") + tok.audio_ids([1, 2, 3])
    text_copy, _ = sft_samples(tok, UserInput(text="and then?"), tok.encode("then this."), [9, 9],
                               history=[(first, earlier)])  # fmt: skip
    prompt = build_prompt(tok, UserInput(text="and then?"), history=[(first, earlier)])
    assert text_copy.input_ids[: len(prompt)] == prompt
    assert set(text_copy.labels[: len(prompt)]) == {IGNORE}


def test_bad_inputs(tok):
    q = UserInput(text="q")
    with pytest.raises(Glm4VoiceError, match="both"):
        sft_samples(tok, q, [], [1])
    with pytest.raises(Glm4VoiceError, match="plain text"):
        sft_samples(tok, q, tok.audio_ids([3]), [1])
    with pytest.raises(Glm4VoiceError):
        TrainingSample([1, 2], [1])
    with pytest.raises(Glm4VoiceError, match="max_length"):
        collate([TrainingSample([1, 2, 3], [1, 2, 3])], pad_id=0, max_length=2)


def test_batch_trains_the_lm_on_exactly_the_unmasked_ids(tok, lm_folder):
    """transformers' loss on the collated batch equals cross-entropy over the labelled positions only."""
    lm = load_lm(lm_folder).train()
    for p in lm.parameters():
        p.requires_grad_(True)
    samples = sft_samples(tok, UserInput(speech=[1, 2, 3]), tok.encode("a short answer"), list(range(30)))
    short = sft_samples(tok, UserInput(text="hi"), tok.encode("ok"), [4, 5])[1]
    batch = collate([*samples, short], pad_id=tok.token_id("<|endoftext|>"))
    assert batch["input_ids"].shape[0] == 3 and batch["attention_mask"][2].sum() == len(short.input_ids)
    out = lm(**batch)
    logits = out.logits[:, :-1].float()
    target = batch["labels"][:, 1:]
    manual = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                               ignore_index=IGNORE)  # fmt: skip
    assert torch.isfinite(out.loss) and torch.allclose(out.loss, manual, atol=1e-5)
    out.loss.backward()  # the batch is trainable as it is
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lm.parameters())


def test_replay_rows_are_the_mixtures_samples(tok, tmp_path):
    """A manifest's replay rows give one sample each, laid out and labelled exactly as the pre-training
    mixture's `text` and `asr` sources lay out the same text and codes; bad ones name their line."""
    import json

    from glm4voice.data.mixture import Source, load_samples
    from glm4voice.data.sft import read_sft_manifest

    codes = [3, 1, 4, 1, 5]
    rows = [{"question": {"text": "hi"}, "answer_text": "hello", "answer_codes": [7, 8]},
            {"replay": "text", "text": "The capital of Peru is Lima."},
            {"replay": "asr", "codes": codes, "text": "three one four"}]  # fmt: skip
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = read_sft_manifest(path, tok)
    assert len(samples) == 2 + 1 + 1  # a turn's two copies, then one sample per replay row
    fact = {"id": "f", "text": "The capital of Peru is Lima.", "lang": "en"}
    (tmp_path / "t.jsonl").write_text(json.dumps(fact) + "\n")
    (text,) = load_samples(Source("text", [tmp_path / "t.jsonl"], 1.0), tok)
    assert samples[2] == text and samples[2].labels == samples[2].input_ids
    asr = samples[3]
    heard = len(codes) + 2  # begin-of-audio, the codes, end-of-audio: no loss; the transcript and its end: loss
    assert asr.input_ids[heard:] == tok.encode("three one four") + [tok.token_id("<|endoftext|>")]
    assert asr.labels == [IGNORE] * heard + asr.input_ids[heard:]
    assert asr.input_ids[1:heard - 1] == tok.audio_ids(codes)
    for bad, message in (({"replay": "asr", "codes": [], "text": "x"}, "needs speech codes"),
                         ({"replay": "tts", "text": "x"}, "replay must be"),
                         ({"replay": "text", "text": " "}, "non-empty"),
                         ({"replay": "text"}, "missing 'text'"),
                         ({"replay": "text", "text": "x", "history": []}, "not history")):  # fmt: skip
        path.write_text(json.dumps(bad) + "\n")
        with pytest.raises(Glm4VoiceError, match=f"sft.jsonl:1: .*{message}"):
            read_sft_manifest(path, tok)


def test_history_rows_give_multi_turn_samples_as_the_chat_keeps_them(tok, tmp_path):
    """A manifest row's `history` is the conversation so far: each earlier turn's prompt and its reply's
    interleaved ids (no stop id, as `Conversation` keeps them), no loss anywhere in it."""
    import json

    from glm4voice.data.sft import read_sft_manifest

    first = {"question": {"codes": [1, 2, 3]}, "answer_text": "Four.", "answer_codes": [9, 8, 7, 6]}
    second = {"question": {"text": "And two more?"}, "answer_text": "Six.", "answer_codes": [5, 5]}
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({**second, "history": [first]}) + "\n")
    text_copy, speech_copy = read_sft_manifest(path, tok)
    earlier = [(UserInput(speech=[1, 2, 3]), interleave_reply(tok.encode("Four."), tok.audio_ids([9, 8, 7, 6])))]
    expected = sft_samples(tok, UserInput(text="And two more?"), tok.encode("Six."), [5, 5], history=earlier)
    assert (text_copy, speech_copy) == expected
    prompt = build_prompt(tok, UserInput(text="And two more?"), earlier)
    assert text_copy.input_ids[: len(prompt)] == prompt and set(text_copy.labels[: len(prompt)]) == {IGNORE}
    assert tok.audio_ids([9, 8, 7, 6])[0] in prompt  # the earlier reply's speech is in the context
    for history, message in (([{"question": {"text": "x"}, "answer_text": "y"}], r"history\[0\]: missing"),
                             ("not a list", "history must be a list"),
                             ([{**first, "answer_codes": [-1]}], r"history\[0\]: speech codes")):  # fmt: skip
        path.write_text(json.dumps({**second, "history": history}) + "\n")
        with pytest.raises(Glm4VoiceError, match=f"sft.jsonl:1: {message}"):
            read_sft_manifest(path, tok)
