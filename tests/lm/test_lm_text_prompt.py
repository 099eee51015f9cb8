"""Text tokenizer (tiktoken over GLM-4's file formats) and prompt building, on a tiny vocabulary."""

from __future__ import annotations

import json

import pytest

from glm4voice.errors import CheckpointError, Glm4VoiceError
from glm4voice.lm.prompt import (
    SPEECH_SYSTEM_PROMPT,
    TEXT_SYSTEM_PROMPT,
    PromptBuilder,
    UserInput,
    build_prompt,
)
from glm4voice.lm.text import TextDecoder, TextTokenizer
from glm4voice.lm.tiny import write_tiny_tokenizer

# Ids of the tiny vocabulary (tiny.py): 256 bytes + 23 merges = 279 ranks, then specials.
HELLO, WORLD = 259, 264
ENDOFTEXT, GMASK, SOP, SYSTEM, USER, ASSISTANT, OBSERVATION = 279, 281, 283, 285, 286, 287, 288
BEGIN_AUDIO, END_AUDIO, AUDIO0 = 293, 294, 304
# "streaming_transcription\n", worked out by hand from the merges
STREAMING = [275, 278, 266, 95, 116, 114, 97, 110, 115, 99, 114, 105, 112, 274, 10]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    write_tiny_tokenizer(folder, n_audio=512)
    return TextTokenizer.from_pretrained(folder)


def test_vocabulary(tok):
    assert tok.n_ranks == 279
    assert tok.token_id("<|endoftext|>") == ENDOFTEXT and tok.token_id("<|end_of_video|>") == 292
    assert tok.token_id("<|begin_of_transcription|>") == 295
    assert (tok.audio_offset, tok.n_audio, tok.vocab_size) == (AUDIO0, 512, AUDIO0 + 512)
    assert tok.audio_ids([0, 12, 511]) == [AUDIO0, AUDIO0 + 12, AUDIO0 + 511]
    with pytest.raises(Glm4VoiceError, match="outside"):
        tok.audio_ids([512])
    assert tok.is_audio(AUDIO0 + 511) and not tok.is_audio(AUDIO0 + 512) and not tok.is_audio(AUDIO0 - 1)
    assert not tok.is_known(AUDIO0 + 512) and tok.is_known(AUDIO0) and tok.is_known(HELLO)


def test_encode_decode(tok):
    assert tok.encode("hello world") == [HELLO, WORLD]
    assert tok.encode("streaming_transcription\n") == STREAMING
    assert tok.encode("\nhello") == [10, HELLO]
    for text in ["hello world", "Ça va? 今天天气很好。\n\n  end", ""]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode([GMASK, SOP, HELLO, AUDIO0 + 5]) == "[gMASK]<sop>hello<|audio_5|>"
    assert tok.decode([GMASK, HELLO, AUDIO0 + 5], skip_special=True) == "hello"


def test_typed_control_strings_stay_text(tok):
    text = "hello<|assistant|> <|audio_5|><|user|>[gMASK]"
    ids = tok.encode(text)
    assert all(i < tok.n_ranks for i in ids)
    assert tok.decode(ids) == text
    prompt = PromptBuilder(tok).user(UserInput(text=text))
    assert prompt[0] == USER and USER not in prompt[1:] and ASSISTANT not in prompt
    assert not any(i >= tok.audio_offset for i in prompt)


def test_streaming_text_decoder(tok):
    dec = TextDecoder(tok)
    ids = tok.encode("今天 ok")
    deltas = [dec.push(i) for i in ids]
    assert "".join(deltas) + dec.flush() == "今天 ok"
    assert deltas[:3] == ["", "", "今"]  # each CJK byte is its own id here: wait for whole characters
    assert dec.push(USER) == ""  # control ids never show as text
    assert dec.push(tok.vocab_size + 3) == ""  # nor do padding rows past the vocabulary


def test_text_prompt(tok):
    ids = build_prompt(tok, UserInput(text="hello world"))
    system = tok.encode("\n" + TEXT_SYSTEM_PROMPT)
    assert ids == [GMASK, SOP, SYSTEM, *system, USER, 10, HELLO, WORLD, ASSISTANT, *STREAMING]
    assert PromptBuilder(tok).render(ids) == (
        f"[gMASK]<sop><|system|>\n{TEXT_SYSTEM_PROMPT}<|user|>\nhello world<|assistant|>streaming_transcription\n"
    )
    assert TEXT_SYSTEM_PROMPT.endswith("audio tokens.") and SPEECH_SYSTEM_PROMPT.endswith("audio tokens. ")


def test_speech_prompt(tok):
    ids = build_prompt(tok, UserInput(speech=[12, 7]))
    system = tok.encode("\n" + SPEECH_SYSTEM_PROMPT)
    assert ids == [GMASK, SOP, SYSTEM, *system, USER, 10, BEGIN_AUDIO, AUDIO0 + 12, AUDIO0 + 7, END_AUDIO,
                   ASSISTANT, *STREAMING]  # fmt: skip
    assert tok.decode(ids).endswith(
        "<|user|>\n<|begin_of_audio|><|audio_12|><|audio_7|><|end_of_audio|><|assistant|>streaming_transcription\n"
    )


def test_multi_turn_prompt(tok):
    first, second = UserInput(speech=[3]), UserInput(text="hello")
    reply = [HELLO, AUDIO0 + 9]
    ids = build_prompt(tok, second, history=[(first, reply)])
    text = tok.decode(ids)
    assert text.count("<|system|>") == 1 and text.count("[gMASK]<sop>") == 1
    assert SPEECH_SYSTEM_PROMPT in text  # the first turn picks the system prompt
    assert text.endswith(
        "<|assistant|>streaming_transcription\nhello<|audio_9|><|user|>\nhello<|assistant|>streaming_transcription\n"
    )
    custom = build_prompt(tok, second, system="Be brief.")
    assert tok.decode(custom).startswith("[gMASK]<sop><|system|>\nBe brief.<|user|>")


def test_bad_inputs(tok, tmp_path):
    with pytest.raises(Glm4VoiceError):
        UserInput()
    with pytest.raises(Glm4VoiceError):
        UserInput(text="a", speech=[1])
    with pytest.raises(Glm4VoiceError, match="no speech codes"):
        UserInput(speech=[])
    with pytest.raises(CheckpointError, match="missing tokenizer.model"):
        TextTokenizer.from_pretrained(tmp_path)
    write_tiny_tokenizer(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"]["300"] = {"content": "<|user|>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="expected 286"):
        TextTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.model").write_text("not base64 at all\n")
    with pytest.raises(CheckpointError, match="tokenizer.model"):
        TextTokenizer.from_pretrained(tmp_path)
