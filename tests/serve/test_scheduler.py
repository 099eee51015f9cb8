"""The scheduler: replies of many conversations in one batched LM step each id, first come first served, a
bounded queue, stop while waiting or running."""

from __future__ import annotations

import threading

import pytest
import torch
from fastapi.testclient import TestClient

from glm4voice.events import Reply
from glm4voice.lm.generate import SamplingConfig
from glm4voice.serve import ChatServer, create_app
from glm4voice.serve.scheduler import Busy, Job, Scheduler
from tests.serve.test_server import connect, recv, until_done

TEXTS = ["first", "a second and much longer question", "third one", "the fourth", "fifth"]


def run_jobs(server: ChatServer, texts: list[str], n_ids: int = 20) -> list[Reply]:
    """One turn per text, each in a new conversation, all submitted at once; their Replies."""
    replies, done = {}, threading.Semaphore(0)
    sampling = SamplingConfig(temperature=0, stop_ids=(), max_new_tokens=n_ids)

    def job(i: int, text: str) -> Job:
        chat = server.new_chat()

        def emit(event) -> None:
            if isinstance(event, Reply) or (isinstance(event, tuple) and event[0] == "error"):
                replies[i] = event
                done.release()

        return Job(start=lambda: chat.begin(text=text, sampling=sampling), emit=emit)

    for i, text in enumerate(texts):
        server.scheduler.submit(job(i, text))
    for _ in texts:
        assert done.acquire(timeout=120)
    return [replies[i] for i in range(len(texts))]


def test_batched_replies_equal_replies_one_at_a_time(template):
    together = ChatServer(template, max_active=8)
    one_by_one = ChatServer(template, max_active=1)
    try:
        batched = run_jobs(together, TEXTS)
        alone = run_jobs(one_by_one, TEXTS)
        assert together.scheduler.peak == len(TEXTS) and one_by_one.scheduler.peak == 1
        for a, b in zip(batched, alone):
            assert isinstance(a, Reply) and a.text == b.text and a.codes == b.codes and a.n_ids == 20
            assert a.audio.numel() == b.audio.numel() > 0
            assert torch.allclose(a.audio, b.audio, atol=1e-4)  # decoded in one batch or alone: the same
        # and the same as a conversation outside the server (the decoder's own push, chunk by chunk)
        plain = together.new_chat().reply(text=TEXTS[1], sampling=SamplingConfig(temperature=0, stop_ids=(),
                                                                                   max_new_tokens=20))  # fmt: skip
        assert plain.codes == batched[1].codes and torch.allclose(plain.audio, batched[1].audio, atol=1e-4)
        assert "glm4voice_batch_size_bucket" in together.metrics.render().decode()
    finally:
        together.close()
        one_by_one.close()


def test_queue_is_first_come_first_served_and_bounded(template):
    server = ChatServer(template, max_active=1, max_queue=1)
    try:
        with TestClient(create_app(server)) as c:
            with connect(c) as a, connect(c) as b, connect(c) as full:
                a.send_json({"type": "text", "text": "long one", "max_new_tokens": 4000})
                assert recv(a)["type"] == "user"
                b.send_json({"type": "text", "text": "waits", "max_new_tokens": 5})
                assert recv(b) == {"type": "queued", "position": 1}  # told it waits, and where
                full.send_json({"type": "text", "text": "no room", "max_new_tokens": 5})
                busy = [recv(full), recv(full)]
                assert "busy" in busy[0]["message"] and busy[1]["reason"] == "busy"
                a.send_json({"type": "stop"})
                assert until_done(a)[-1]["reason"] == "interrupted"
                events = until_done(b)  # b runs once a has left
                assert events[0]["type"] == "user" and events[-1]["ids"] == 5
                full.send_json({"type": "text", "text": "room now", "max_new_tokens": 5})
                assert until_done(full)[-1]["ids"] == 5  # the connection that was refused goes on
    finally:
        server.close()


def test_stop_while_queued_ends_the_turn_before_it_starts(template):
    server = ChatServer(template, max_active=1, max_queue=4)
    try:
        with TestClient(create_app(server)) as c:
            with connect(c) as a, connect(c) as b:
                a.send_json({"type": "text", "text": "long one", "max_new_tokens": 4000})
                assert recv(a)["type"] == "user"
                b.send_json({"type": "text", "text": "never mind", "max_new_tokens": 5})
                assert recv(b)["type"] == "queued"
                b.send_json({"type": "stop"})
                done = until_done(b)  # at once, while a still holds the only place
                assert done == [{"type": "done", "text": "", "reason": "interrupted", "audio_seconds": 0.0}]
                a.send_json({"type": "stop"})
                assert until_done(a)[-1]["reason"] == "interrupted"
                b.send_json({"type": "text", "text": "now then", "max_new_tokens": 5})
                events = until_done(b)
                assert events[0] == {"type": "user", "text": "now then"}  # the stopped turn left no trace
    finally:
        server.close()


def test_bad_limits_and_closed_scheduler(template):
    with pytest.raises(Exception, match="max_active"):
        Scheduler(template.lm, max_active=0)
    s = Scheduler(template.lm, max_active=1, max_queue=0)
    s.close()
    with pytest.raises(Exception, match="shutting down"):
        s.submit(Job(start=lambda: None, emit=lambda e: None))
    assert issubclass(Busy, Exception)


def test_a_failed_step_fails_its_replies_and_the_server_goes_on(template, monkeypatch):
    """A batched step that raises (out of memory, a bug): every reply in it ends with an error, their
    conversations' caches start over (nothing half-updated is kept), and the next turns work."""
    server = ChatServer(template, max_active=8)
    step, calls = server.scheduler.batch.step, [0]

    def failing_once():
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("simulated out of memory")
        step()

    monkeypatch.setattr(server.scheduler.batch, "step", failing_once)
    try:
        first = run_jobs(server, TEXTS[:2])
        assert all(isinstance(r, tuple) and "simulated out of memory" in str(r[1]) for r in first)
        again = run_jobs(server, TEXTS[:2])  # the scheduler is alive, with a fresh batch
        assert all(isinstance(r, Reply) and r.n_ids == 20 for r in again)
    finally:
        server.close()
