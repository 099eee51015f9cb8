"""The OpenAI-compatible API, driven by the official `openai` client against a real uvicorn; the API key, the
metrics and bad requests."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from glm4voice.serve import ChatServer, create_app
from tests.serve.conftest import live_server

KEY = "test-key-123"


@pytest.fixture(scope="module")
def api(template):
    """(openai client, port, server) on a live uvicorn with an API key."""
    openai = pytest.importorskip("openai")
    server = ChatServer(template, api_key=KEY)
    with live_server(server) as port:
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=120), port, \
            server  # fmt: skip


def wav_b64(wave: np.ndarray, rate: int = 16000) -> str:
    out = io.BytesIO()
    sf.write(out, wave, rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(out.getvalue()).decode()


def test_models_and_a_text_reply(api):
    client, _, _ = api
    assert [m.id for m in client.models.list().data] == ["glm-4-voice"]
    done = client.chat.completions.create(model="glm-4-voice", messages=[{"role": "user", "content": "hello"}],
                                          max_completion_tokens=12, temperature=0)  # fmt: skip
    choice = done.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.role == "assistant"
    assert choice.finish_reason == "length" and done.usage.completion_tokens == 12 and done.usage.prompt_tokens > 5
    assert done.object == "chat.completion" and done.id.startswith("chatcmpl-")


def test_spoken_question_spoken_answer_then_its_audio_id_in_the_history(api, speech_clips):
    client, _, _ = api
    question = {"role": "user", "content": [{"type": "input_audio",
                                              "input_audio": {"data": wav_b64(speech_clips[0]), "format": "wav"}}]}
    first = client.chat.completions.create(model="glm-4-voice", modalities=["text", "audio"],
                                           audio={"voice": "alloy", "format": "wav"}, messages=[question],
                                           max_completion_tokens=40, temperature=0)  # fmt: skip
    audio = first.choices[0].message.audio
    wave, rate = sf.read(io.BytesIO(base64.b64decode(audio.data)))
    assert rate == 22050 and len(wave) > 0 and first.choices[0].message.content is None
    assert isinstance(audio.transcript, str) and audio.id.startswith("audio_") and audio.expires_at > 0
    # the earlier reply comes back by its id: its exact ids, so the prompt grows by exactly its 40 ids
    follow = [question, {"role": "assistant", "audio": {"id": audio.id}}, {"role": "user", "content": "and then?"}]
    second = client.chat.completions.create(model="glm-4-voice", messages=follow, max_completion_tokens=5,
                                            temperature=0)  # fmt: skip
    alone = client.chat.completions.create(model="glm-4-voice", messages=[question], max_completion_tokens=5,
                                           temperature=0)  # fmt: skip
    assert second.usage.prompt_tokens > alone.usage.prompt_tokens + 40
    import openai

    with pytest.raises(openai.BadRequestError, match="unknown or expired"):
        client.chat.completions.create(model="glm-4-voice", max_completion_tokens=5, messages=[
            question, {"role": "assistant", "audio": {"id": "audio_nope"}}, {"role": "user", "content": "hm"}])


def test_streaming_text_and_pcm16_audio(api):
    client, _, _ = api
    ask = dict(model="glm-4-voice", messages=[{"role": "user", "content": "tell me"}], max_completion_tokens=60,
               temperature=0)  # fmt: skip
    whole = client.chat.completions.create(**ask).choices[0].message.content
    transcript, pcm, finish, ids = [], b"", None, set()
    stream = client.chat.completions.create(**ask, stream=True, modalities=["text", "audio"],
                                            audio={"voice": "alloy", "format": "pcm16"},
                                            stream_options={"include_usage": True})  # fmt: skip
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        audio = getattr(delta, "audio", None)
        if audio:
            ids.add(audio.id)  # the client's own type for OpenAI's audio deltas
            transcript.append(audio.transcript or "")
            pcm += base64.b64decode(audio.data or "")
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(transcript) == whole  # the same greedy reply, streamed
    assert finish == "length" and usage.completion_tokens == 60 and len(ids) == 1
    assert len(pcm) > 0 and len(pcm) % 2 == 0  # s16le at 24 kHz, OpenAI's pcm16
    text_only = [c.choices[0].delta.content for c in client.chat.completions.create(**ask, stream=True)
                 if c.choices and c.choices[0].delta.content]  # fmt: skip
    assert "".join(text_only) == whole


def get(url: str, key: str | None = None) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_api_key_guards_every_route_and_the_websocket(api):
    import openai
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect as ws_connect

    client, port, server = api
    wrong = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    base = f"http://127.0.0.1:{port}"
    assert get(f"{base}/health")[0] == 401 and get(f"{base}/metrics")[0] == 401 and get(f"{base}/")[0] == 401
    assert get(f"{base}/?api_key={KEY}")[0] == 200 and get(f"{base}/health", KEY)[0] == 200
    with pytest.raises(InvalidStatus):
        ws_connect(f"ws://127.0.0.1:{port}/v1/chat", open_timeout=10)
    with ws_connect(f"ws://127.0.0.1:{port}/v1/chat?api_key={KEY}", open_timeout=10) as ws:
        assert '"ready"' in ws.recv(timeout=10)
        metrics = get(f"{base}/metrics", KEY)[1]
        assert "glm4voice_active_conversations 1.0" in metrics  # this open connection
    client.chat.completions.create(model="glm-4-voice", messages=[{"role": "user", "content": "count me"}],
                                   max_completion_tokens=3)  # fmt: skip
    metrics = get(f"{base}/metrics?api_key={KEY}")[1]
    assert 'glm4voice_turns_total{reason="length"}' in metrics and "glm4voice_generated_ids_total" in metrics
    assert "glm4voice_first_text_seconds_bucket" in metrics and "glm4voice_queue_length 0.0" in metrics


@pytest.mark.parametrize("body, status, message", [
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}, 404, "is not served here"),
    ({"model": "glm-4-voice", "messages": []}, 400, "non-empty list"),
    ({"model": "glm-4-voice", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     400, "in a row"),
    ({"model": "glm-4-voice", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "!!notbase64", "format": "wav"}}]}]}, 400, "not base64"),
    ({"model": "glm-4-voice", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFFjunk").decode(), "format": "wav"}}]}]},
     400, "input_audio"),
    ({"model": "glm-4-voice", "messages": [{"role": "user", "content": "x"}], "stream": True,
      "modalities": ["text", "audio"], "audio": {"format": "wav"}}, 400, "pcm16"),
    ({"model": "glm-4-voice", "messages": [{"role": "user", "content": "x"}], "modalities": ["audio", "text"],
      "audio": {"format": "aac"}}, 400, "audio.format"),
    ({"model": "glm-4-voice", "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "one choice"),
    ({"model": "glm-4-voice", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400,
     "temperature"),
    ({"model": "glm-4-voice", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "1.."),
    ({"model": "glm-4-voice", "messages": [{"role": "user", "content": "x"}], "top_p": 0}, 400, "top_p"),
    ({"model": "glm-4-voice", "messages": [{"role": "assistant", "content": "x"}]}, 400, "answers a user"),
    ({"model": "glm-4-voice", "messages": [{"role": "user", "content": "\ud800"}]}, 400, "surrogate"),
    ([1, 2], 400, "JSON object"),
])  # fmt: skip
def test_bad_requests_get_openai_shaped_errors(template, body, status, message):
    with TestClient(create_app(ChatServer(template))) as c:
        r = c.post("/v1/chat/completions", content=json.dumps(body), headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert message in error["message"] and error["type"] == "invalid_request_error"
        bad = c.post("/v1/chat/completions", content=b'{"model": NaN}', headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "not JSON" in bad.json()["error"]["message"]
        huge = b'{"model": "glm-4-voice", "messages": [{"role": "user", "content": "x"}], "seed": 1e400}'
        r = c.post("/v1/chat/completions", content=huge, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "finite" in r.json()["error"]["message"]  # JSON reads 1e400 as inf


def test_a_client_leaving_a_stream_frees_the_models(api):
    import time

    client, _, server = api
    stream = client.chat.completions.create(model="glm-4-voice", messages=[{"role": "user", "content": "go on"}],
                                            max_completion_tokens=4000, temperature=0, stream=True)  # fmt: skip
    for n, _ in enumerate(stream):
        if n == 3:
            break
    stream.close()
    deadline = time.monotonic() + 15
    while server.scheduler.busy() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.scheduler.busy(), "the reply kept running after its client left"
    assert 'glm4voice_turns_total{reason="interrupted"}' in server.metrics.render().decode()


def test_serve_cli_refuses_an_empty_key(capsys, monkeypatch):
    from glm4voice.cli import main

    monkeypatch.setenv("GLM4VOICE_API_KEY", " ")
    assert main(["serve", "--lm", "x"]) == 2
    assert "--api-key is empty" in capsys.readouterr().err
