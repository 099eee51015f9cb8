"""Shared by the server tests: a tiny random LM with the golden tokenizer and decoder, and a real uvicorn."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import pytest

from glm4voice.chat import VoiceChat
from glm4voice.lm import load_lm
from glm4voice.lm.generate import SamplingConfig
from glm4voice.lm.tiny import write_tiny_lm
from glm4voice.serve import create_app

GREEDY = SamplingConfig(temperature=0, stop_ids=(), max_new_tokens=30)


@pytest.fixture(scope="package")
def lm_folder(tmp_path_factory):
    return write_tiny_lm(tmp_path_factory.mktemp("serve_lm"), n_audio=512, seed=3)


@pytest.fixture(scope="package")
def template(golden, lm_folder):
    from glm4voice.decoder import SpeechDecoder
    from glm4voice.tokenizer import SpeechTokenizer

    tok = SpeechTokenizer.from_pretrained(golden / "tokenizer")
    dec = SpeechDecoder.from_pretrained(golden / "decoder")
    return VoiceChat(tok, load_lm(lm_folder), dec, sampling=GREEDY, stream_options={"n_steps": 1})


@contextmanager
def live_server(server):
    """uvicorn serving `server` on a free local port in a thread; yields the port."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    running = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not running.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running.started
        yield port
    finally:
        running.should_exit = True
        thread.join(timeout=10)
