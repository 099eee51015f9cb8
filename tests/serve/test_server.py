"""The WebSocket server on a tiny random LM with the golden tokenizer and decoder: the protocol end to end."""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest
from fastapi.testclient import TestClient

from glm4voice.audio import resample
from glm4voice.chat import VoiceChat
from glm4voice.cli import main
from glm4voice.serve import ChatServer, create_app
from tests.serve.conftest import GREEDY, live_server


@pytest.fixture
def client(template):
    with TestClient(create_app(ChatServer(template, max_user_seconds=20))) as c:
        yield c


def recv(ws):
    message = ws.receive()
    if message.get("bytes") is not None:
        return message["bytes"]
    return json.loads(message["text"])


def until_done(ws) -> list:
    out = []
    while True:
        item = recv(ws)
        out.append(item)
        if isinstance(item, dict) and item["type"] == "done":
            return out


@contextmanager
def connect(client):
    with client.websocket_connect("/v1/chat") as ws:
        ready = recv(ws)
        assert ready["type"] == "ready" and ready["output_sample_rate"] == 22050 and ready["speech_input"]
        yield ws


def test_page_and_health(client):
    page = client.get("/")
    assert page.status_code == 200 and "/v1/chat" in page.text and "<script>" in page.text
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["speech_output"] and health["input_sample_rate"] == 16000


def test_text_turn_streams_text_then_audio(client):
    with connect(client) as ws:
        ws.send_json({"type": "text", "text": "hello there"})
        events = until_done(ws)
        assert events[0] == {"type": "user", "text": "hello there"}
        done = events[-1]
        deltas = "".join(e["delta"] for e in events if isinstance(e, dict) and e["type"] == "text")
        audio = [np.frombuffer(e, "<f4") for e in events if isinstance(e, bytes)]
        assert done["reason"] == "length" and done["ids"] == 30 and done["text"] == deltas
        assert audio and sum(len(a) for a in audio) == round(done["audio_seconds"] * 22050)
        first_audio = next(i for i, e in enumerate(events) if isinstance(e, bytes))
        assert first_audio < len(events) - 2, "audio must stream during the reply, not only at its end"
        assert done["timings"]["first_audio"] < done["timings"]["total"]


def test_spoken_turn_is_tokenized_while_it_arrives(client, template, speech_clips):
    speech16 = np.concatenate(speech_clips[:2])  # > 4 s: at least one tokenizer block completes early
    speech = resample(speech16, 16000, 44100)
    pcm = (np.clip(speech, -1, 1) * 32767).astype("<i2").tobytes()
    with connect(client) as ws:
        ws.send_json({"type": "audio.start", "sample_rate": 44100, "format": "s16le", "max_new_tokens": 12})
        progress = []
        step = 2 * 4410  # 0.1 s of 16-bit samples
        for i in range(0, len(pcm), step):
            ws.send_bytes(pcm[i : i + step])
        ws.send_json({"type": "audio.end"})
        events = until_done(ws)
        progress = [e["codes"] for e in events if isinstance(e, dict) and e["type"] == "input"]
        user = next(e for e in events if isinstance(e, dict) and e["type"] == "user")
        expected = len(template.speech_tokenizer.tokenize(resample(speech, 44100, 16000)))
        assert progress and progress[0] >= 50 and progress == sorted(progress)  # ids came before audio.end
        assert user["codes"] == expected
        assert events[-1]["ids"] == 12


def test_bad_messages_are_answered_and_the_connection_survives(client):
    with connect(client) as ws:
        bad = [
            ("text", "not json", "not JSON"),
            ("json", {"type": "shout"}, "unknown message type"),
            ("json", [1, 2], "JSON object"),
            ("bytes", b"\x00\x00\x00\x00", "without audio.start"),
            ("json", {"type": "audio.end"}, "without audio.start"),
            ("json", {"type": "text", "text": "  "}, "non-empty"),
            ("json", {"type": "text", "text": "hi", "temperature": -1}, "temperature"),
            ("json", {"type": "text", "text": "hi", "max_new_tokens": 10**9}, "max_new_tokens"),
            ("json", {"type": "audio.start", "sample_rate": "fast"}, "sample_rate"),
        ("json", {"type": "audio.end", "max_new_tokens": 5}, "go with 'text' or 'audio.start'"),
            ("json", {"type": "audio.start", "sample_rate": 16000, "format": "mp3"}, "format"),
        ]
        for kind, payload, message in bad:
            {"text": ws.send_text, "json": ws.send_json, "bytes": ws.send_bytes}[kind](payload)
            reply = recv(ws)
            assert reply["type"] == "error" and message in reply["message"], (payload, reply)
        ws.send_json({"type": "audio.start", "sample_rate": 16000, "format": "s16le"})
        ws.send_bytes(b"\x00\x00\x00")  # half a sample
        assert "whole number" in recv(ws)["message"]
        ws.send_json({"type": "text", "text": "hi"})  # still listening: refused
        assert "audio.end" in recv(ws)["message"]
        ws.send_json({"type": "audio.end"})  # nothing usable arrived
        assert "no audio" in recv(ws)["message"]
        ws.send_json({"type": "text", "text": "still there?"})
        assert until_done(ws)[-1]["reason"] == "length"


def test_stop_interrupts_and_turns_wait_for_done(client):
    with connect(client) as ws:
        ws.send_json({"type": "text", "text": "tell me everything", "max_new_tokens": 4000})
        assert recv(ws)["type"] == "user"
        ws.send_json({"type": "text", "text": "and another thing"})
        ws.send_json({"type": "stop"})
        events = until_done(ws)
        errors = [e for e in events if isinstance(e, dict) and e["type"] == "error"]
        assert errors and "in progress" in errors[0]["message"]
        assert events[-1]["reason"] == "interrupted"
        ws.send_json({"type": "reset"})
        assert recv(ws) == {"type": "reset"}
        ws.send_json({"type": "text", "text": "again"})
        assert until_done(ws)[-1]["reason"] == "length"


def test_text_only_server_refuses_speech(template):
    text_only = VoiceChat(None, template.lm, None, template.text_tokenizer, sampling=GREEDY)
    with TestClient(create_app(ChatServer(text_only))) as c:
        with c.websocket_connect("/v1/chat") as ws:
            ready = recv(ws)
            assert not ready["speech_input"] and not ready["speech_output"]
            ws.send_json({"type": "audio.start", "sample_rate": 16000})
            assert "no speech tokenizer" in recv(ws)["message"]
            ws.send_json({"type": "text", "text": "hi"})
            events = until_done(ws)
            assert not any(isinstance(e, bytes) for e in events) and events[-1]["audio_seconds"] == 0


def test_connections_over_the_limit_are_told_to_retry_and_closed(template):
    from starlette.websockets import WebSocketDisconnect

    with TestClient(create_app(ChatServer(template, max_connections=1))) as c:
        with connect(c) as first:
            with c.websocket_connect("/v1/chat") as second:
                error = recv(second)
                assert error["type"] == "error" and "--max-connections" in error["message"]
                with pytest.raises(WebSocketDisconnect) as closed:
                    second.receive_json()
                assert closed.value.code == 1013
            first.send_json({"type": "text", "text": "still served", "max_new_tokens": 5})
            assert until_done(first)[-1]["ids"] == 5
        with connect(c) as again:  # the place is free once the first conversation closed
            again.send_json({"type": "text", "text": "hello", "max_new_tokens": 5})
            assert until_done(again)[-1]["ids"] == 5


def test_serve_cli_errors(capsys, tmp_path, no_embedded_default):
    assert main(["serve", "--port", "0", "--lm", str(tmp_path)]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["serve"]) == 2
    assert "--model-dir" in capsys.readouterr().err
    import socket

    with socket.socket() as busy:  # a port already taken fails before any model is loaded
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--lm", str(tmp_path / "missing")]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_real_server_over_tcp(template):
    """uvicorn on a free port, a real WebSocket client: the protocol over the wire, not only in-process."""
    from websockets.sync.client import connect as ws_connect

    with live_server(ChatServer(template)) as port:
        with ws_connect(f"ws://127.0.0.1:{port}/v1/chat", open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "ready"
            ws.send(json.dumps({"type": "text", "text": "over the wire", "max_new_tokens": 20}))
            frames = []
            while True:
                frame = ws.recv(timeout=60)
                frames.append(frame)
                if isinstance(frame, str) and json.loads(frame)["type"] == "done":
                    break
        done = json.loads(frames[-1])
        audio = sum(len(f) // 4 for f in frames if isinstance(f, bytes))
        assert done["ids"] == 20 and audio == round(done["audio_seconds"] * 22050)


def test_two_connections_share_the_models(client):
    """Turns from two conversations interleave safely (one computes at a time) and keep separate histories."""
    with connect(client) as a, connect(client) as b:
        a.send_json({"type": "text", "text": "first conversation", "max_new_tokens": 15})
        b.send_json({"type": "text", "text": "second conversation", "max_new_tokens": 15})
        done_a, done_b = until_done(a)[-1], until_done(b)[-1]
        assert done_a["ids"] == done_b["ids"] == 15
        b.send_json({"type": "reset"})
        assert recv(b) == {"type": "reset"}
        a.send_json({"type": "text", "text": "first conversation", "max_new_tokens": 15})
        b.send_json({"type": "text", "text": "first conversation", "max_new_tokens": 15})
        # Greedy: b starts over with the same words as a's first turn, so it must repeat a's first reply;
        # a continues its own conversation, so its prompt (and reply) differ from b's.
        again_a, again_b = until_done(a)[-1], until_done(b)[-1]
        assert again_b["text"] == done_a["text"]
        assert again_a["ids"] == 15


def test_disconnect_mid_reply_stops_it(template):
    """A client that goes away mid-reply frees the models at the next token, not at the end of 4000 tokens."""
    import time

    server = ChatServer(template)
    with TestClient(create_app(server)) as c:
        with connect(c) as ws:
            ws.send_json({"type": "text", "text": "a very long answer please", "max_new_tokens": 4000})
            assert recv(ws)["type"] == "user"
            assert recv(ws)["type"] == "text"
        deadline = time.monotonic() + 15
        while server.scheduler.busy() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.scheduler.busy(), "the reply kept running after its client disconnected"
        with connect(c) as ws:
            ws.send_json({"type": "text", "text": "next user", "max_new_tokens": 5})
            assert until_done(ws)[-1]["ids"] == 5


def test_turn_that_fails_ends_with_error_and_done(client):
    """A turn the LM cannot take (here: longer than its 8192-id context) gets error + done/error, then life goes on."""
    with connect(client) as ws:
        ws.send_json({"type": "text", "text": "語音" * 3000})  # 6000 characters: more ids than the context holds
        first, second = recv(ws), recv(ws)
        assert first["type"] == "error" and "context" in first["message"]
        assert second == {"type": "done", "text": "", "reason": "error"}
        ws.send_json({"type": "text", "text": "short", "max_new_tokens": 3})
        assert until_done(ws)[-1]["ids"] == 3


def test_hardening_cases_each_get_an_error_and_the_connection_stays(client, caplog):
    """Each case found by fuzzing the WebSocket: an `error`, and the next turn still works."""
    cases = [
        ('{"type": "text", "text": "a\\ud800b"}', "lone surrogate"),
        ('{"type": "text", "text": "hi", "top_k": NaN}', "NaN is not a JSON number"),
        ('{"type": "text", "text": "hi", "max_new_tokens": Infinity}', "Infinity is not a JSON number"),
        ('{"type": "text", "text": "hi", "seed": -Infinity}', "-Infinity is not a JSON number"),
        ('{"type": "text", "text": "hi", "temperature": 1e400}', "finite number"),
        ('{"type": "text", "text": "hi", "seed": 18446744073709551616}', "seed"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ]
    with connect(client) as ws:
        for raw, message in cases:
            ws.send_text(raw)
            reply = recv(ws)
            assert reply["type"] == "error" and message in reply["message"], (raw[:60], reply)
        ws.send_json({"type": "text", "text": "tiny", "top_p": 1e-300})  # the best candidate always stays
        assert until_done(ws)[-1]["reason"] == "length"
    assert "Traceback" not in caplog.text


def test_protocol_fuzz_never_breaks_the_connection(client, caplog):
    """Seeded malformed frames (300): each gets an `error` (or is a valid no-op), none ends the connection,
    no traceback is logged; a real turn works at the end."""
    import random

    rng = random.Random(15)
    values = [None, True, -1, 0, 1, 2**70, 1.5, -1e308, "x", "", [], {}, [1, [2]], {"a": {"b": 1}}, "\u00e9"]
    keys = ["type", "text", "sample_rate", "format", "temperature", "top_p", "top_k", "max_new_tokens", "seed", "?"]
    types = ["text", "audio.start", "audio.end", "reset", "shout", 7, None]

    def frame() -> tuple[str, object]:
        kind = rng.random()
        if kind < 0.15:
            return "bytes", bytes(rng.randrange(256) for _ in range(rng.randrange(0, 9)))
        if kind < 0.3:
            raw = json.dumps({"type": "text", "text": "hi"})
            cut = rng.randrange(len(raw))
            raw = raw[:cut] + rng.choice(["", "}", "NaN", "\\ud800", '"', "\x00"]) + raw[cut + 1 :]
            try:
                starts_a_turn = json.loads(raw).get("type") == "text"
            except (ValueError, AttributeError):
                starts_a_turn = False
            return "text", raw if not starts_a_turn else "{"  # a damaged frame that is still a turn is no fuzz
        message = {"type": rng.choice(types)}
        for key in rng.sample(keys, rng.randrange(0, 4)):
            message[key] = rng.choice(values)
        if message["type"] == "text" and "text" not in message:
            message["text"] = 5  # never a real turn: those are slow
        return "text", json.dumps(message)

    with connect(client) as ws:
        for _ in range(300):
            kind, payload = frame()
            (ws.send_bytes if kind == "bytes" else ws.send_text)(payload)
            ws.send_json({"type": "stop"})  # a no-op that also ends any listening, so frames stay independent
            ws.send_json({"type": "reset"})  # always answered: the marker that this frame's answer is complete
            while (reply := recv(ws)) != {"type": "reset"}:
                assert isinstance(reply, dict) and reply["type"] in ("error", "input"), (payload, reply)
        ws.send_json({"type": "text", "text": "still there?"})
        assert until_done(ws)[-1]["reason"] == "length"
    assert "Traceback" not in caplog.text
