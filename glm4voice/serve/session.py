"""One WebSocket connection's conversation, in plain synchronous code (the app runs it in worker threads).

Listening: `start_audio` opens a streaming resampler (any client rate -> 16
kHz) and a `TokenizerStream`, so the user's speech is tokenized while it
arrives and the reply can start as soon as `audio.end` comes. Replying:
`job` makes one `VoiceChat` turn for the server's scheduler, which runs it
beside other conversations' turns and hands each event to `emit` as a protocol
message; `stop` ends it at its next id (barge-in).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from ..audio import WHISPER_RATE, StreamResampler, pcm_from_bytes
from ..chat import VoiceChat
from ..events import AudioChunk, Reply, UserEvent
from ..lm.generate import SamplingConfig, TextEvent
from .protocol import ProtocolError
from .scheduler import Job


class ChatServer:
    """The loaded models (as one template `VoiceChat`), shared by every connection and API request.

    Replies run on the `scheduler` (batched across conversations); speech tokenization of arriving audio
    runs under `compute()`. `api_key`: when set, every route and the WebSocket need it. `model_name`: the id
    `/v1/models` lists and `/v1/chat/completions` answers to."""

    def __init__(self, template: VoiceChat, max_user_seconds: float = 300.0, max_new_tokens_limit: int = 4000,
                 api_key: str | None = None, model_name: str = "glm-4-voice", max_active: int = 8,
                 max_queue: int = 32, send_limit: int = 256, slow_client_seconds: float = 30.0,
                 max_connections: int = 64):  # fmt: skip
        from .metrics import Metrics
        from .scheduler import Scheduler

        self.template = template
        self.lock = threading.Lock()
        self.max_user_seconds = max_user_seconds
        self.max_new_tokens_limit = max_new_tokens_limit
        self.api_key = api_key or None
        self.model_name = model_name
        self.send_limit = send_limit  # messages waiting to be sent to one client before its reply pauses
        self.slow_client_seconds = slow_client_seconds  # ... and how long before a client that reads nothing is cut off
        # open WebSocket conversations at most (each keeps its KV cache between turns: this bounds the memory)
        self.max_connections = max_connections
        self.connections = 0  # counted on the event loop only
        self.metrics = Metrics()
        self.scheduler = Scheduler(template.lm, self.metrics, max_active, max_queue)

    @contextmanager
    def compute(self) -> Iterator[None]:
        """Hold the speech tokenizer for one piece of work (tokenizing a user's audio)."""
        with self.lock:
            yield

    def close(self) -> None:
        self.scheduler.close()

    def new_chat(self, system: str | None = None, speech_output: bool = True) -> VoiceChat:
        """A conversation on the shared models (`system`: instead of the template's; `speech_output` False:
        no decoder, the speech codes are sampled but not turned into audio)."""
        t = self.template
        return VoiceChat(t.speech_tokenizer, t.lm, t.decoder if speech_output else None, t.text_tokenizer,
                         system=system if system is not None else t.conversation.system, sampling=t.sampling,
                         stream_options=t.stream_options, trim_history=t.conversation.trim_history)  # fmt: skip

    @property
    def output_sample_rate(self) -> int:
        return int(self.template.decoder.sample_rate) if self.template.decoder is not None else 0

    def ready_message(self) -> dict:
        return {
            "type": "ready",
            "input_sample_rate": WHISPER_RATE,
            "output_sample_rate": self.output_sample_rate,
            "audio_format": "f32le",
            "speech_input": self.template.speech_tokenizer is not None,
            "speech_output": self.template.decoder is not None,
        }


class _Listening:
    def __init__(self, server: ChatServer, sample_rate: int, fmt: str, sampling: SamplingConfig):
        self.resampler = StreamResampler(sample_rate, WHISPER_RATE)
        self.stream = server.template.speech_tokenizer.stream()
        self.format, self.sampling = fmt, sampling
        self.codes: list[int] = []
        self.samples = 0  # 16 kHz samples received


class Session:
    def __init__(self, server: ChatServer):
        self.server = server
        self.chat = server.new_chat()
        self.listening: _Listening | None = None

    # ---------------------------------------------------------------- listening

    def start_audio(self, sample_rate: int, fmt: str, sampling: SamplingConfig) -> None:
        if self.listening is not None:
            raise ProtocolError("audio.start while already receiving audio: send audio.end first")
        if self.server.template.speech_tokenizer is None:
            raise ProtocolError("this server has no speech tokenizer: send text")
        self.listening = _Listening(self.server, sample_rate, fmt, sampling)

    def push_audio(self, data: bytes) -> int:
        """Add PCM bytes to the user's turn; returns the count of speech codes final so far."""
        lis = self._need_listening("binary audio")
        audio = lis.resampler.push(pcm_from_bytes(data, lis.format))
        self._add(lis, audio)
        return len(lis.codes)

    def end_audio(self) -> tuple[list[int], SamplingConfig]:
        """Close the user's turn: its speech codes (the stream flushed) and its sampling settings."""
        lis = self._need_listening("audio.end")
        self.listening = None
        self._add(lis, lis.resampler.flush())
        lis.codes += lis.stream.flush()
        if not lis.codes:
            raise ProtocolError("no audio arrived between audio.start and audio.end")
        return lis.codes, lis.sampling

    def cancel_audio(self) -> None:
        self.listening = None

    def _need_listening(self, what: str) -> _Listening:
        if self.listening is None:
            raise ProtocolError(f"{what} without audio.start")
        return self.listening

    def _add(self, lis: _Listening, audio: np.ndarray) -> None:
        lis.samples += len(audio)
        if lis.samples > self.server.max_user_seconds * WHISPER_RATE:
            self.listening = None
            raise ProtocolError(f"the user's turn is longer than {self.server.max_user_seconds:.0f} s: dropped")
        if len(audio):
            lis.codes += lis.stream.push(audio)

    # ---------------------------------------------------------------- replying

    def job(self, emit: Callable[[object], None], stop: threading.Event, *, text: str | None = None,
            codes: list[int] | None = None, sampling: SamplingConfig | None = None) -> Job:  # fmt: skip
        """One turn for the scheduler; `emit` gets protocol messages (dicts) and reply audio (bytes), ending
        with a `done` message."""
        rate = self.server.output_sample_rate

        def on_event(event) -> None:
            if isinstance(event, tuple):
                kind, value = event
                if kind == "queued":
                    emit({"type": "queued", "position": value})
                elif kind == "error":
                    emit({"type": "error", "message": str(value)})
                    emit({"type": "done", "text": "", "reason": "error"})
                elif kind == "cancelled":
                    emit({"type": "done", "text": "", "reason": "interrupted", "audio_seconds": 0.0})
            elif isinstance(event, UserEvent):
                emit({"type": "user", "text": text} if text is not None
                     else {"type": "user", "codes": len(event.speech)})  # fmt: skip
            elif isinstance(event, TextEvent) and event.text:
                emit({"type": "text", "delta": event.text})
            elif isinstance(event, AudioChunk):
                emit(event.audio.numpy().astype("<f4").tobytes())
            elif isinstance(event, Reply):
                t = event.timings
                emit({"type": "done", "text": event.text, "reason": event.reason, "ids": event.n_ids,
                      "codes": len(event.codes), "audio_seconds": event.audio.numel() / rate if rate else 0.0,
                      "timings": {"first_text": t.first_text, "first_audio": t.first_audio, "total": t.total,
                                  "ids_per_second": t.ids_per_second}})  # fmt: skip

        def start():
            return self.chat.begin(text=text, codes=codes, sampling=sampling)

        return Job(start=start, emit=on_event, stop=stop)

    def reset(self) -> None:
        self.listening = None
        self.chat.reset()
