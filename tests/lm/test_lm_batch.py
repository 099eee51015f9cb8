"""Batched replies: conversations joining and leaving a shared, left-padded KV cache compute what they compute
alone, and go on alone afterwards from the cache they bring back."""

from __future__ import annotations

import pytest
import torch

from glm4voice.lm import load_lm
from glm4voice.lm.batch import ReplyBatch
from glm4voice.lm.generate import Conversation, SamplingConfig
from glm4voice.lm.prompt import UserInput
from glm4voice.lm.text import TextTokenizer
from glm4voice.lm.tiny import write_tiny_lm

GREEDY = SamplingConfig(temperature=0, stop_ids=(), max_new_tokens=12)
PROMPTS = ["hi", "a much longer question than the others, with many more ids in it", "what now?"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = write_tiny_lm(tmp_path_factory.mktemp("batch_lm"), n_audio=512, seed=5)
    return load_lm(folder), TextTokenizer.from_pretrained(folder)


def alone(lm, tok, prompt: str, turns: int = 1) -> tuple[list[list[int]], list[torch.Tensor]]:
    conv = Conversation(lm, tok)
    replies, logits = [], []
    for t in range(turns):
        conv.add_user(UserInput(text=f"{prompt} {t}"))
        reply = conv.start_reply(GREEDY)
        while not reply.done:
            logits.append(reply.logits.clone())
            reply.accept(reply.sample())
            if not reply.done:
                reply.step()
        replies.append(list(reply.reply))
    return replies, logits


def test_staggered_joins_and_leaves_compute_what_each_computes_alone(bundle):
    lm, tok = bundle
    expected = [alone(lm, tok, p, turns=2) for p in PROMPTS]
    convs = [Conversation(lm, tok) for _ in PROMPTS]
    batch = ReplyBatch(lm)
    replies, seen = {}, {i: [] for i in range(len(PROMPTS))}
    start_at = {0: 0, 1: 3, 2: 5}  # conversation 1 (the longest prompt) joins while 0 runs: rows get re-padded
    done_turns = {i: [] for i in range(len(PROMPTS))}
    sizes = []
    for step in range(60):
        for i, conv in enumerate(convs):
            if i not in replies and len(done_turns[i]) < 2 and step >= start_at[i]:
                conv.add_user(UserInput(text=f"{PROMPTS[i]} {len(done_turns[i])}"))
                replies[i] = conv.start_reply(GREEDY)  # its own prefill, then into the batch
                batch.join(replies[i])
        for i, reply in list(replies.items()):
            seen[i].append(reply.logits.clone())
            reply.accept(reply.sample())
            if reply.done:
                batch.leave(reply)  # back to its own cache: the second turn continues from it
                done_turns[i].append(list(reply.reply))
                del replies[i]
        sizes.append(len(batch))
        if len(batch):
            batch.step()
    assert max(sizes) == 3  # all three ran side by side
    for i in range(len(PROMPTS)):
        assert done_turns[i] == expected[i][0], f"conversation {i}"
        got, want = torch.stack(seen[i]), torch.stack(expected[i][1])
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_a_conversation_leaving_mid_reply_continues_alone(bundle):
    lm, tok = bundle
    (want,), _ = alone(lm, tok, "x")
    conv, other = Conversation(lm, tok), Conversation(lm, tok)
    batch = ReplyBatch(lm)
    conv.add_user(UserInput(text="x 0"))
    other.add_user(UserInput(text="something else entirely 0"))
    a, b = conv.start_reply(GREEDY), other.start_reply(GREEDY)
    batch.join(b)
    batch.join(a)
    for _ in range(4):
        a.accept(a.sample())
        b.accept(b.sample())
        batch.step()
    batch.leave(a)  # halfway: the rest of a's reply runs alone on the cache it took back
    while not a.done:
        a.accept(a.sample())
        if not a.done:
            a.step()
    assert a.reply == want and len(batch) == 1
