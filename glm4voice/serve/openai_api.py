"""The OpenAI-compatible API: `POST /v1/chat/completions` in the shape of OpenAI's audio chat, `GET /v1/models`.

Any OpenAI client talks to it (`OpenAI(base_url="http://host:8000/v1", api_key=...)`). What a request may hold:

    model        the served name (`/v1/models`)
    messages     an optional system message, then user and assistant messages in turn, ending with a user one.
                 user: a string, or parts: text parts, or one `input_audio` part ({"data": base64, "format":
                 "wav" | "mp3" | "flac" | "ogg"}); a turn is text or speech, not both. assistant: `{"audio":
                 {"id": ...}}` naming an earlier reply of this server (its exact text and speech ids come back),
                 or its text `content`.
    modalities   ["text"] (OpenAI's default: the reply's text in `content`) or ["text", "audio"] (the text is
                 `audio.transcript`, the speech `audio.data`, base64 in `audio.format`)
    audio        {"format": wav | mp3 | flac | opus | pcm16, "voice": ...}: one voice; pcm16 is s16le at 24 kHz
    stream       server-sent `chat.completion.chunk`s: text deltas, and with audio base64 pcm16 deltas
    temperature, top_p, seed, max_completion_tokens (or max_tokens: text and speech ids together); n is 1.

The API is stateless, as OpenAI's: each request rebuilds its conversation from the messages (earlier speech is
tokenized again, cached by content). Errors are OpenAI's shape: `{"error": {"message", "type", "param",
"code"}}` with 400 (bad request), 401 (key) or 404 (unknown model).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import math
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..audio import ENCODINGS, PCM16_RATE, StreamResampler, encode_audio, load_audio, pcm16_bytes
from ..errors import Glm4VoiceError
from ..events import AudioChunk, Reply, TextEvent
from ..lm.prompt import UserInput
from .scheduler import Busy, Job

AUDIO_TTL = 3600.0  # seconds an `audio.id` stays usable in later requests (OpenAI: `expires_at`)
MAX_STORED = 1000  # replies remembered for their audio ids
MAX_CACHED_SPEECH = 256  # tokenized input audios remembered by content


class ApiError(Glm4VoiceError):
    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def response(self) -> JSONResponse:
        kind = {401: "authentication_error"}.get(self.status, "server_error" if self.status >= 500 else
                                                   "invalid_request_error")  # fmt: skip
        body = {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


@dataclass
class Turn:
    """One user message (text, or speech as audio bytes) and the reply after it (None for the last)."""

    text: str | None = None
    audio: bytes | None = None
    reply_text: str | None = None  # the reply after it, as text ...
    reply_audio_id: str | None = None  # ... or as the audio id of this server's reply (its exact ids)

    @property
    def answered(self) -> bool:
        return self.reply_text is not None or self.reply_audio_id is not None


@dataclass
class Completion:
    turns: list[Turn]
    system: str | None
    audio_format: str | None  # None: text only
    stream: bool
    include_usage: bool
    sampling_overrides: dict = field(default_factory=dict)
    audio_id: str = field(default_factory=lambda: f"audio_{uuid.uuid4().hex}")  # this reply's, for later requests


class ApiState:
    """What the API remembers between requests: replies by audio id, and tokenized input speech by content."""

    def __init__(self):
        self.lock = threading.Lock()
        self.replies: OrderedDict[str, tuple[float, list[int]]] = OrderedDict()
        self.speech: OrderedDict[str, list[int]] = OrderedDict()

    def remember(self, audio_id: str, ids: list[int]) -> int:
        """Keep a reply's ids under its audio id; returns when the id expires (Unix seconds)."""
        expires = time.time() + AUDIO_TTL
        with self.lock:
            self.replies[audio_id] = (expires, list(ids))
            while len(self.replies) > MAX_STORED:
                self.replies.popitem(last=False)
        return int(expires)

    def reply_ids(self, audio_id: str) -> list[int]:
        with self.lock:
            found = self.replies.get(audio_id)
        if found is None or found[0] < time.time():
            raise ApiError(f"audio id {audio_id!r} is unknown or expired: send the reply's text as content",
                           param="messages")  # fmt: skip
        return found[1]

    def codes(self, chat, data: bytes) -> list[int]:
        key = hashlib.sha256(data).hexdigest()
        with self.lock:
            if key in self.speech:
                self.speech.move_to_end(key)
                return self.speech[key]
        try:
            codes = list(chat.speech_tokenizer.tokenize(load_audio(data)))
        except Glm4VoiceError as exc:
            raise ApiError(f"input_audio: {exc}", param="messages") from None
        with self.lock:
            self.speech[key] = codes
            while len(self.speech) > MAX_CACHED_SPEECH:
                self.speech.popitem(last=False)
        return codes


# ------------------------------------------------------------------------------------------------ parsing


def parse_completion(body, server) -> Completion:
    """A request body (parsed JSON) -> Completion, or ApiError naming the field at fault."""
    if not isinstance(body, dict):
        raise ApiError("the request body is a JSON object")
    model = body.get("model")
    if model != server.model_name:
        raise ApiError(f"model {model!r} is not served here; this server has {server.model_name!r}", 404, "model",
                       "model_not_found")  # fmt: skip
    if body.get("n", 1) != 1:
        raise ApiError("n: this server makes one choice per request", param="n")
    modalities = body.get("modalities") or ["text"]
    if not isinstance(modalities, list) or not set(modalities) <= {"text", "audio"} or "text" not in modalities:
        raise ApiError('modalities is ["text"] or ["text", "audio"]', param="modalities")
    audio_format = None
    if "audio" in modalities:
        if server.template.decoder is None:
            raise ApiError("this server has no speech decoder: ask for modalities [\"text\"]", param="modalities")
        audio = body.get("audio")
        if not isinstance(audio, dict) or audio.get("format") not in ENCODINGS:
            raise ApiError(f"with audio output, audio.format is one of {', '.join(ENCODINGS)}", param="audio")
        audio_format = audio["format"]
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError("stream is true or false", param="stream")
    if stream and audio_format not in (None, "pcm16"):
        raise ApiError("stream: true sends the speech as pcm16 deltas: set audio.format to pcm16", param="audio")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError("stream_options is an object", param="stream_options")
    system, turns = _messages(body.get("messages"), server)
    return Completion(turns, system, audio_format, stream, bool(options.get("include_usage")),
                      _sampling(body, server.max_new_tokens_limit))  # fmt: skip


def _sampling(body: dict, limit: int) -> dict:
    out = {}
    for name, key, kind in (("temperature", "temperature", float), ("top_p", "top_p", float), ("seed", "seed", int),
                            ("max_completion_tokens", "max_new_tokens", int), ("max_tokens", "max_new_tokens", int)):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            kind is int and value != int(value)
        ):
            raise ApiError(f"{name} must be a finite number" + (" (an integer)" if kind is int else ""), param=name)
        out.setdefault(key, kind(value))
    if "temperature" in out and out["temperature"] > 2:
        raise ApiError("temperature lies in 0..2", param="temperature")
    if not 1 <= out.get("max_new_tokens", 1) <= limit:
        raise ApiError(f"max_completion_tokens lies in 1..{limit}", param="max_completion_tokens")
    return out


def _messages(messages, server) -> tuple[str | None, list[Turn]]:
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages is a non-empty list", param="messages")
    system, turns = None, []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role in ("system", "developer"):
            if i != 0:
                raise ApiError("a system message comes first, and once", param=f"messages[{i}]")
            system = _text_of(m.get("content"), f"messages[{i}]")
        elif role == "user":
            if turns and not turns[-1].answered:
                raise ApiError("two user messages in a row: user and assistant messages take turns",
                               param=f"messages[{i}]")  # fmt: skip
            turns.append(_user(m.get("content"), f"messages[{i}]", server))
        elif role == "assistant":
            if not turns or turns[-1].answered:
                raise ApiError("an assistant message answers a user message", param=f"messages[{i}]")
            audio = m.get("audio")
            if isinstance(audio, dict) and isinstance(audio.get("id"), str):
                turns[-1].reply_audio_id = audio["id"]  # resolved to ids when the request runs
            else:
                turns[-1].reply_text = _text_of(m.get("content"), f"messages[{i}]")
        else:
            raise ApiError(f"role {role!r}: expected system, user or assistant", param=f"messages[{i}]")
    if not turns or turns[-1].answered:
        raise ApiError("the last message is the user's", param="messages")
    return system, turns


def _text_of(content, where: str) -> str:
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):  # fmt: skip
            raise ApiError("this message's parts are text parts", param=where)
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str) or not content.strip():
        raise ApiError("this message needs some text content", param=where)
    try:
        content.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError("the text is not valid Unicode (a lone surrogate)", param=where) from None
    return content


def _user(content, where: str, server) -> Turn:
    if isinstance(content, list):
        audio = [p for p in content if isinstance(p, dict) and p.get("type") == "input_audio"]
        if audio:
            if len(content) != 1:
                raise ApiError("a user turn is text or one input_audio part, not both", param=where)
            return Turn(audio=_audio_part(audio[0], where, server))
    return Turn(text=_text_of(content, where))


def _audio_part(part: dict, where: str, server) -> bytes:
    if server.template.speech_tokenizer is None:
        raise ApiError("this server has no speech tokenizer: send text", param=where)
    spec = part.get("input_audio")
    if not isinstance(spec, dict) or not isinstance(spec.get("data"), str):
        raise ApiError("input_audio needs base64 'data' (and its 'format')", param=where)
    try:
        data = base64.b64decode(spec["data"], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError("input_audio.data is not base64", param=where) from None
    if not data:
        raise ApiError("input_audio.data is empty", param=where)
    return data


# ------------------------------------------------------------------------------------------------ running


def prepare(server, state: ApiState, req: Completion):
    """The request's conversation rebuilt from its messages (speech tokenized: the caller holds
    `server.compute()`), its last user input and its sampling."""
    chat = server.new_chat(system=req.system, speech_output=req.audio_format is not None)
    conv = chat.conversation
    for turn in req.turns[:-1]:
        conv.add_user(_user_input(chat, state, turn))
        if turn.reply_audio_id is not None:
            ids = state.reply_ids(turn.reply_audio_id)
        else:
            ids = chat.text_tokenizer.encode(turn.reply_text)
        try:
            conv.add_reply(ids)
        except Glm4VoiceError as exc:
            raise ApiError(str(exc), param="messages") from None
    last = _user_input(chat, state, req.turns[-1])
    try:
        sampling = replace(chat.sampling, **req.sampling_overrides)
    except Glm4VoiceError as exc:
        raise ApiError(str(exc)) from None
    return chat, last, sampling


def submit_completion(server, state: ApiState, req: Completion, prepared, stop: threading.Event) -> asyncio.Queue:
    """Put the request on the scheduler now (ApiError 503 when it is full); its items arrive in the returned
    queue: ("text", str), ("audio", float32 array), then ("done", dict of reason, expires_at, usage,
    sample_rate) or ("error", ApiError), and ("end", None) last. Called on the event loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def put(item) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    chat, last, sampling = prepared
    conv = chat.conversation

    def on_event(event) -> None:  # on the scheduler's thread
        if isinstance(event, tuple):
            kind, value = event
            if kind == "error":
                if not isinstance(value, ApiError):  # a bug is the server's (500), a turn it cannot take is 400
                    value = ApiError(str(value), 500 if str(value).startswith("internal error") else 400)
                put(("error", value))
            if kind in ("error", "cancelled"):
                put(("end", None))
        elif isinstance(event, TextEvent) and event.text:
            put(("text", event.text))
        elif isinstance(event, AudioChunk):
            put(("audio", event.audio.numpy()))
        elif isinstance(event, Reply):
            reply_ids = conv.turns[-1][1]
            expires = state.remember(req.audio_id, reply_ids)
            prompt = len(conv.ids) - len(reply_ids)
            usage = {"prompt_tokens": prompt, "completion_tokens": event.n_ids, "total_tokens": prompt + event.n_ids}
            put(("done", {"reason": event.reason, "expires_at": expires, "usage": usage,
                          "sample_rate": event.sample_rate}))  # fmt: skip
            put(("end", None))

    job = Job(start=lambda: chat.begin(text=last.text, codes=last.speech, sampling=sampling), emit=on_event, stop=stop)
    try:
        server.scheduler.submit(job)
    except Busy as exc:
        raise ApiError(str(exc), 503, code="server_busy") from None
    return queue


async def items_of(queue: asyncio.Queue):
    while True:
        item = await queue.get()
        if item[0] == "end":
            return
        yield item


def _user_input(chat, state: ApiState, turn: Turn) -> UserInput:
    try:
        if turn.audio is not None:
            return UserInput(speech=state.codes(chat, turn.audio))
        return UserInput(text=turn.text)
    except ApiError:
        raise
    except Glm4VoiceError as exc:
        raise ApiError(str(exc), param="messages") from None


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


# ------------------------------------------------------------------------------------------------ routes


def add_openai_routes(app, server) -> None:
    state = ApiState()

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": server.model_name, "object": "model", "created": 0,
                                            "owned_by": "glm4voice"}]}  # fmt: skip

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        try:
            try:
                body = json.loads(await request.body(), parse_constant=_no_constant)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
                raise ApiError(f"the body is not JSON: {exc}") from None
            req = parse_completion(body, server)

            def work():
                with server.compute():  # the speech tokenizer
                    return prepare(server, state, req)

            prepared = await asyncio.to_thread(work)
        except ApiError as exc:
            return exc.response()
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": server.model_name}
        stop = threading.Event()
        try:
            queue = submit_completion(server, state, req, prepared, stop)
        except ApiError as exc:  # busy: 503 before any byte of a stream, so clients back off and retry
            return exc.response()
        if req.stream:
            return StreamingResponse(_stream(server, req, queue, stop, head), media_type="text/event-stream")
        return await _complete(server, req, queue, stop, head, request)


def _no_constant(name: str):
    raise ApiError(f"the body is not JSON: {name} is not a JSON number")


async def _complete(server, req: Completion, queue: asyncio.Queue, stop: threading.Event, head: dict, request):
    items: dict[str, list] = {"text": [], "audio": [], "done": [], "error": []}

    async def watch() -> None:  # a client that leaves stops its reply at the next id
        while not stop.is_set():
            if await request.is_disconnected():
                stop.set()
                return
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch())
    server.metrics.conversations.inc()
    try:
        async for kind, value in items_of(queue):
            items[kind].append(value)
    finally:
        stop.set()
        watcher.cancel()
        server.metrics.conversations.dec()
    if items["error"]:
        return items["error"][0].response()
    end, audio = items["done"][0], items["audio"]
    text = "".join(items["text"])
    message: dict = {"role": "assistant", "content": text, "refusal": None}
    if req.audio_format is not None:
        import numpy as np

        wave = np.concatenate(audio) if audio else np.zeros(0, np.float32)
        data = encode_audio(wave, end["sample_rate"], req.audio_format)
        message["content"] = None
        message["audio"] = {"id": req.audio_id, "expires_at": end["expires_at"],
                            "data": base64.b64encode(data).decode("ascii"), "transcript": text}  # fmt: skip
    return {**head, "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": _finish(end["reason"]), "logprobs": None}],
            "usage": end["usage"]}  # fmt: skip


async def _stream(server, req: Completion, queue: asyncio.Queue, stop: threading.Event, head: dict):
    """Server-sent events: the reply's items as OpenAI's chunks, then `data: [DONE]`."""

    def chunk(delta: dict, finish: str | None = None) -> str:
        body = {**head, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}  # fmt: skip
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def error(exc: ApiError) -> str:
        return f"data: {json.dumps({'error': {'message': str(exc), 'type': 'invalid_request_error'}})}\n\n"

    spoken = req.audio_format is not None
    resampler = StreamResampler(int(server.output_sample_rate), PCM16_RATE) if spoken else None
    server.metrics.conversations.inc()
    try:
        yield chunk({"role": "assistant", "content": None if spoken else ""})
        try:
            async for kind, value in items_of(queue):
                if kind == "text":
                    yield chunk({"audio": {"id": req.audio_id, "transcript": value}} if spoken else {"content": value})
                elif kind == "audio":
                    data = pcm16_bytes(resampler.push(value))
                    yield chunk({"audio": {"id": req.audio_id, "data": base64.b64encode(data).decode("ascii")}})
                elif kind == "done":
                    if spoken:
                        tail = base64.b64encode(pcm16_bytes(resampler.flush())).decode("ascii")
                        yield chunk({"audio": {"id": req.audio_id, "data": tail, "expires_at": value["expires_at"]}})
                    yield chunk({}, _finish(value["reason"]))
                    if req.include_usage:
                        body = {**head, "object": "chat.completion.chunk", "choices": [], "usage": value["usage"]}
                        yield f"data: {json.dumps(body)}\n\n"
                elif kind == "error":
                    yield error(value)
        except ApiError as exc:
            yield error(exc)
        yield "data: [DONE]\n\n"
    finally:
        stop.set()  # the client went away (or the stream ended): a running reply stops at its next id
        server.metrics.conversations.dec()
