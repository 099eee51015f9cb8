"""Streaming generation: sampler, events and the text/speech split, stop handling, KV cache reuse across turns."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from glm4voice.errors import Glm4VoiceError
from glm4voice.events import AudioEvent, EndEvent, TextEvent
from glm4voice.lm import load_lm
from glm4voice.lm.generate import Conversation, Sampler, SamplingConfig, sample_ids
from glm4voice.lm.prompt import UserInput, build_prompt
from glm4voice.lm.text import TextTokenizer
from glm4voice.lm.tiny import write_tiny_lm

GREEDY = dict(temperature=0, stop_ids=())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = write_tiny_lm(tmp_path_factory.mktemp("tiny_lm"), n_audio=512, seed=3)
    return load_lm(folder), TextTokenizer.from_pretrained(folder)


def _run(conv, **kw):
    events = list(conv.turn(**kw))
    assert isinstance(events[-1], EndEvent) and not any(isinstance(e, EndEvent) for e in events[:-1])
    return events


def test_code_of(bundle):
    _, tok = bundle
    off = tok.audio_offset
    ids = [5, off, off + 511, 286, off - 1, off + 3, off + 512]  # off + 512: a padding row past <|audio_511|>
    assert [tok.code_of(i) for i in ids] == [None, 0, 511, None, None, 3, None]


def test_sampler_matches_transformers_filtering():
    torch.manual_seed(0)
    logits = torch.randn(300) * 3
    cfg = SamplingConfig(temperature=0.7, top_p=0.8, top_k=50)
    scores = logits[None].clone()
    for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(50), TopPLogitsWarper(0.8)):
        scores = warper(None, scores)
    allowed = set(torch.nonzero(scores[0] > -float("inf")).flatten().tolist())
    expected = torch.softmax(scores[0], -1)
    sampler = Sampler(SamplingConfig(**{**cfg.__dict__, "seed": 1}))
    counts = torch.zeros(300)
    for _ in range(3000):
        counts[sampler(logits)] += 1
    assert set(torch.nonzero(counts).flatten().tolist()) <= allowed
    assert (counts / counts.sum() - expected).abs().max() < 0.03
    assert Sampler(SamplingConfig(temperature=0))(logits) == int(logits.argmax())
    assert Sampler(SamplingConfig(top_k=1))(logits) == int(logits.argmax())
    with pytest.raises(Glm4VoiceError):
        SamplingConfig(top_p=0)


def test_seeded_sampling_is_reproducible(bundle):
    lm, tok = bundle
    runs = []
    for _ in range(2):
        conv = Conversation(lm, tok)
        cfg = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=15, stop_ids=(), seed=7)
        runs.append(_run(conv, text="hello", sampling=cfg)[-1].n_ids and conv.ids)
    assert runs[0] == runs[1]


def test_events_split_text_and_speech(bundle):
    lm, tok = bundle
    conv = Conversation(lm, tok)
    events = _run(conv, speech=[1, 2, 3], sampling=SamplingConfig(max_new_tokens=40, **GREEDY))
    end = events[-1]
    assert (end.reason, end.stop_id, end.n_ids) == ("length", None, 40)
    reply = conv.turns[0][1]
    text_ids = [i for i in reply if tok.code_of(i) is None]
    codes = [tok.code_of(i) for i in reply if tok.code_of(i) is not None]
    assert [c for e in events if isinstance(e, AudioEvent) for c in e.codes] == codes == end.codes
    assert [i for e in events if isinstance(e, TextEvent) for i in e.ids] == text_ids
    assert "".join(e.text for e in events if isinstance(e, TextEvent)) == end.text
    assert end.text == tok.decode(text_ids, skip_special=True)
    assert codes and text_ids  # a random LM over this vocabulary emits both kinds
    assert end.ids_per_second > 0 and end.prompt_ids == len(conv.ids) - 40


def test_stop_handling(bundle):
    lm, tok = bundle
    conv = Conversation(lm, tok)
    _run(conv, text="hello world", sampling=SamplingConfig(max_new_tokens=30, **GREEDY))
    reply = conv.turns[0][1]
    stop = reply[6]
    cut = reply.index(stop)
    conv2 = Conversation(lm, tok)
    end = _run(conv2, text="hello world", sampling=SamplingConfig(temperature=0, stop_ids=[stop]))[-1]
    assert (end.reason, end.stop_id, end.n_ids) == ("stop", stop, cut)
    assert conv2.turns[0][1] == reply[:cut]  # the stop id is not part of the reply or the history
    assert conv2.ids[-1] != stop and conv2.cached == len(conv2.ids)


def test_default_stop_ids(bundle):
    lm, tok = bundle
    conv = Conversation(lm, tok)
    assert conv.prompts.stop_ids == (tok.token_id("<|endoftext|>"), tok.token_id("<|user|>"),
                                     tok.token_id("<|observation|>"))  # fmt: skip


def test_cache_reuse_equals_recomputation(bundle):
    lm, tok = bundle
    conv = Conversation(lm, tok)
    greedy = SamplingConfig(max_new_tokens=12, **GREEDY)
    _run(conv, speech=[5, 6, 7], sampling=greedy)
    after_first = len(conv.ids)
    events = _run(conv, text="hello", sampling=greedy)
    second_prompt = build_prompt(tok, UserInput(text="hello"), history=[conv.turns[0]])
    assert conv.ids[: len(second_prompt)] == second_prompt
    # turn 2 ran only its own prompt (+ the last id of turn 1, never fed: it ended on length)
    assert events[-1].prompt_ids == len(second_prompt) - after_first + 1
    # recomputation from scratch gives the same reply ...
    fresh = list(sample_ids(lm, second_prompt, DynamicCache(config=lm.config), Sampler(greedy), 12, ()))
    assert fresh == conv.turns[1][1]
    # ... and the same keys/values as the cache built turn by turn
    full = DynamicCache(config=lm.config)
    with torch.inference_mode():
        lm(input_ids=torch.tensor([conv.ids[: conv.cached]]), cache=full, use_cache=True)
    for a, b in zip(conv.cache.layers, full.layers, strict=True):
        assert torch.allclose(a.keys, b.keys, atol=1e-5) and torch.allclose(a.values, b.values, atol=1e-5)
    assert conv.render().count("<|user|>") == 2


def test_interrupted_reply_keeps_history_consistent(bundle):
    lm, tok = bundle
    conv = Conversation(lm, tok)
    stream = conv.turn(text="hello", sampling=SamplingConfig(max_new_tokens=50, **GREEDY))
    for _ in range(5):
        next(stream)
    stream.close()  # the consumer stops early (user pressed stop)
    assert conv.cached == len(conv.ids) - 1
    end = _run(conv, text="world", sampling=SamplingConfig(max_new_tokens=3, **GREEDY))[-1]
    assert end.n_ids == 3 and conv.cached == len(conv.ids) - 1


def test_reset_and_errors(bundle):
    lm, tok = bundle
    conv = Conversation(lm, tok)
    with pytest.raises(Glm4VoiceError, match="add a user turn"):
        list(conv.generate())
    _run(conv, text="hi", sampling=SamplingConfig(max_new_tokens=2, **GREEDY))
    conv.reset()
    assert conv.ids == [] and conv.cached == 0


def test_consumer_code_runs_outside_inference_mode(bundle):
    lm, tok = bundle
    conv = Conversation(lm, tok)
    seen = [torch.is_inference_mode_enabled() for _ in conv.turn(text="hi", sampling=SamplingConfig(max_new_tokens=3))]
    assert seen and not any(seen)


def test_context_length(bundle):
    lm, tok = bundle
    conv = Conversation(lm, tok, trim_history=False)
    limit = lm.config.max_position_embeddings
    try:
        lm.config.max_position_embeddings = len(conv.prompts.turn(UserInput(text="hello"), first=True)) + 5
        end = _run(conv, text="hello", sampling=SamplingConfig(max_new_tokens=50, **GREEDY))[-1]
        assert (end.reason, end.n_ids) == ("length", 5)  # clamped to the context
        n = len(conv.ids)
        with pytest.raises(Glm4VoiceError, match="context"):
            list(conv.turn(text="again"))
        assert len(conv.ids) == n  # the refused turn left no trace
    finally:
        lm.config.max_position_embeddings = limit


def test_a_full_context_drops_the_oldest_turns(bundle):
    lm, tok = bundle
    conv = Conversation(lm, tok)  # trim_history is the default
    limit = lm.config.max_position_embeddings
    greedy = SamplingConfig(max_new_tokens=8, **GREEDY)
    try:
        lm.config.max_position_embeddings = 260  # the system prompt alone is about 150 ids
        for n in range(12):
            _run(conv, text=f"turn number {n}", sampling=greedy)
        assert conv.dropped_turns > 0 and len(conv.ids) <= 260
        kept = conv.turns
        assert kept[-1][0].text == "turn number 11" and len(kept) == 12 - conv.dropped_turns
        # the ids are the prompt of the kept turns, as if the conversation had started with the oldest kept one
        rebuilt = build_prompt(tok, kept[-1][0], [(u, r) for u, r in kept[:-1]]) + kept[-1][1]
        assert conv.ids == rebuilt
        # and generation from the trimmed history equals a fresh conversation given that history
        fresh = Conversation(lm, tok)
        for user, reply in kept:
            fresh.add_user(user)
            fresh.add_reply(reply)
        nxt = [e for e in conv.turn(text="next", sampling=greedy) if isinstance(e, EndEvent)][0]
        again = [e for e in fresh.turn(text="next", sampling=greedy) if isinstance(e, EndEvent)][0]
        assert nxt.text == again.text and nxt.codes == again.codes
    finally:
        lm.config.max_position_embeddings = limit
