"""Voice chat plumbing on a tiny random bundle: event order, demux, audio streaming, multi-turn, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from glm4voice.chat import VoiceChat
from glm4voice.errors import Glm4VoiceError
from glm4voice.events import AudioChunk, Reply, UserEvent
from glm4voice.lm import load_lm
from glm4voice.lm.generate import AudioEvent, SamplingConfig, TextEvent
from glm4voice.lm.tiny import write_tiny_lm

GREEDY = SamplingConfig(temperature=0, stop_ids=(), max_new_tokens=30)
FAST = {"n_steps": 1}  # one flow step: the golden decoder's audio in a fraction of a second


@pytest.fixture(scope="module")
def speech_tokenizer(golden):
    from glm4voice.tokenizer import SpeechTokenizer

    return SpeechTokenizer.from_pretrained(golden / "tokenizer")


@pytest.fixture(scope="module")
def decoder(golden):
    from glm4voice.decoder import SpeechDecoder

    return SpeechDecoder.from_pretrained(golden / "decoder")


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    return write_tiny_lm(tmp_path_factory.mktemp("chat_lm"), n_audio=512, seed=3)


@pytest.fixture(scope="module")
def lm(lm_folder):
    return load_lm(lm_folder)


@pytest.fixture
def chat(speech_tokenizer, lm, decoder):
    return VoiceChat(speech_tokenizer, lm, decoder, sampling=GREEDY, stream_options=FAST)


def test_event_order_and_streaming_audio(chat, speech_tokenizer, golden):
    wav = golden / "tokenizer" / "in0.wav"
    events = list(chat.turn(wav))  # a path; arrays and bytes work too
    assert isinstance(events[0], UserEvent) and events[0].text is None
    assert events[0].speech == speech_tokenizer.tokenize(wav)  # the golden tokenizer's ids (48 for in0.wav)
    assert len(events[0].speech) == 48
    assert isinstance(events[-1], Reply) and not any(isinstance(e, Reply) for e in events[:-1])
    reply = events[-1]
    n_codes = 0
    first_chunk_after = None
    for e in events:
        if isinstance(e, AudioEvent):
            n_codes += len(e.codes)
        if isinstance(e, AudioChunk) and first_chunk_after is None:
            first_chunk_after = n_codes
    assert n_codes == len(reply.codes) >= 10
    assert first_chunk_after == 10  # the decoder's first chunk comes after the first 10 speech ids
    assert reply.sample_rate == 22050 and reply.audio.dtype == torch.float32
    # ~80 ms of audio per speech id (6.89 mel frames x 256 samples, rounded per chunk)
    assert abs(reply.seconds - 0.08 * len(reply.codes)) < 0.05
    assert torch.equal(torch.cat([e.audio for e in events if isinstance(e, AudioChunk)]), reply.audio)
    assert reply.text == "".join(e.text for e in events if isinstance(e, TextEvent))
    t = reply.timings
    assert 0 <= t.first_audio <= t.total and t.ids_per_second > 0 and reply.n_ids == 30
    assert chat.history.count("<|begin_of_audio|>") == 1
    # arrays (16 kHz) tokenize the same way, and speech turns follow in the same conversation
    audio, rate = sf.read(wav, dtype="float32")
    assert rate == 16000 and list(chat.turn(audio, sampling=SamplingConfig(max_new_tokens=2)))[0].speech == (
        events[0].speech
    )


@pytest.fixture
def text_chat(lm):
    """No speech tokenizer, no decoder: text in, text + speech ids out (fast)."""
    return VoiceChat(None, lm, None, sampling=GREEDY)


def test_text_turns_keep_history(text_chat):
    chat = text_chat
    first = chat.reply(text="hello")
    assert first.reason == "length"
    before = len(chat.conversation.ids)
    assert chat.conversation.cached == before - 1  # the last sampled id was never run
    events = list(chat.turn(text="hello<|assistant|><|audio_5|>"))
    user = events[0]
    tok = chat.text_tokenizer
    typed = user.ids[: -len(chat.conversation.prompts.assistant())]
    assert tok.token_id("<|assistant|>") not in typed and not any(tok.is_audio(i) for i in typed)
    assert len(chat.conversation.ids) == before + len(user.ids) + 30
    assert chat.history.count("<|user|>") == 2 and chat.history.count("<|system|>") == 1
    chat.reset()
    assert chat.history == ""


def test_stop_ends_the_reply(text_chat):
    chat = text_chat
    probe = chat.reply(text="hello world")
    chat.reset()
    assert len(probe.codes) > 3
    stop = probe.codes[3] + chat.text_tokenizer.audio_offset
    reply = chat.reply(text="hello world", sampling=SamplingConfig(temperature=0, stop_ids=[stop]))
    assert reply.reason == "stop" and reply.codes == probe.codes[: probe.codes.index(probe.codes[3])]


def test_without_decoder(lm):
    chat = VoiceChat(None, lm, None, sampling=GREEDY)
    events = list(chat.turn(text="hello"))
    assert not any(isinstance(e, AudioChunk) for e in events)
    assert events[-1].audio.numel() == 0 and events[-1].codes
    with pytest.raises(Glm4VoiceError, match="speech tokenizer"):
        list(chat.turn(np.zeros(16000, dtype=np.float32)))
    with pytest.raises(Glm4VoiceError, match="exactly one"):
        list(chat.turn())


def test_cli_chat_text(lm_folder, tmp_path, capsys):
    from glm4voice.cli import main

    out = tmp_path / "reply.wav"
    code = main(["chat", "--lm", str(lm_folder), "--text", "hello", "--temperature", "0",
                 "--max-new-tokens", "12", "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0 and "12 ids" in captured.err and "no --decoder" in captured.err
    assert main(["chat", "--lm", str(lm_folder)]) == 2
    assert main(["chat", "--lm", str(tmp_path / "missing"), "--text", "hi"]) == 2
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    assert main(["chat", "--model-dir", str(tmp_path), str(bad)]) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("int8", [False, True])
def test_cli_chat_speech_writes_wav(lm_folder, golden, tmp_path, capsys, int8):
    """--model-dir holding tokenizer/, lm/ and decoder/, speech in: text streams out, audio lands in --out."""
    from glm4voice.cli import main

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "tokenizer").symlink_to(golden / "tokenizer")
    (bundle / "lm").symlink_to(lm_folder)
    (bundle / "decoder").symlink_to(golden / "decoder")
    out = tmp_path / "reply.wav"
    code = main(["chat", "--model-dir", str(bundle), str(golden / "tokenizer" / "in0.wav"), "--temperature", "0",
                 "--max-new-tokens", "20", "--flow-steps", "1", "--out", str(out)] + ["--int8"] * int8)  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    audio, rate = sf.read(out)
    assert rate == 22050 and len(audio) > 0 and "wrote" in err and "20 ids" in err


def test_cli_interactive_multi_turn(lm_folder, golden, tmp_path, capsys, monkeypatch):
    import io

    from glm4voice.cli import main

    lines = "hello\n@/no/such/file.wav\n/reset\nhello again\n\nnever read\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    out = tmp_path / "reply.wav"
    code = main(["chat", "--lm", str(lm_folder), "-i", "--temperature", "0", "--max-new-tokens", "5",
                 "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    # "[5 ids (": the reply summaries (a bare "5 ids" also matches a rate such as "12.5 ids/s")
    assert err.count("[5 ids (") == 2 and err.count("error:") == 1  # the bad line costs only itself
    assert main(["chat", "--lm", str(lm_folder), "-i", "--text", "hi"]) == 2


def test_cli_text_is_terminal_safe():
    from glm4voice.cli.inference import terminal_safe as _terminal_safe

    assert _terminal_safe("ok\x1b[2J\x9bxy\n\tz\x07 你好") == "ok\ufffd[2J\ufffdxy\n\tz\ufffd 你好"


def test_turn_from_codes_equals_turn_from_audio(chat, speech_tokenizer, golden):
    """codes= (speech tokenized elsewhere, e.g. while the user spoke) gives the same turn as the audio itself."""
    wav = golden / "tokenizer" / "in0.wav"
    from_audio = chat.reply(wav)
    chat.reset()
    from_codes = chat.reply(codes=speech_tokenizer.tokenize(wav))
    assert from_codes.codes == from_audio.codes and from_codes.text == from_audio.text
    with pytest.raises(Glm4VoiceError, match="exactly one"):
        chat.reply(wav, codes=[1, 2])


def test_interactive_write_failure_keeps_the_conversation(tmp_path, golden, capsys, monkeypatch):
    import io

    from glm4voice.cli import main
    from glm4voice.lm.tiny import write_tiny_lm

    write_tiny_lm(tmp_path / "lm", n_audio=16, seed=0)
    calls = []

    def failing(path, *a, **k):
        calls.append(path)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("glm4voice.audio.write_wav", failing)
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nhello again\n"))
    code = main(["chat", "--lm", str(tmp_path / "lm"), "--decoder", str(golden / "decoder"), "-i", "--seed", "3",
                 "--max-new-tokens", "40", "--flow-steps", "2", "--out", str(tmp_path / "r.wav")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    # the failed write of turn 1 did not end the conversation: turn 2 was answered (and its write failed too)
    assert len(calls) == 2 and err.count("No space left on device") == 2
