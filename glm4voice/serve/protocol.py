"""The WebSocket protocol of `glm4voice serve`: client messages parsed and checked, server messages built.

One connection is one conversation. JSON text frames carry control and text;
binary frames carry audio (client -> server: the user's PCM after
`audio.start`; server -> client: reply audio, mono float32 little-endian at
the `ready` message's `output_sample_rate`). The full description, with an
example exchange, is `docs/protocol.md`; keep the two in step.

Client -> server
    {"type": "audio.start", "sample_rate": 48000, "format": "f32le" | "s16le", ...sampling}
    <binary PCM frames>                  tokenized while they arrive
    {"type": "audio.end"}                the reply starts
    {"type": "text", "text": "...", ...sampling}
    {"type": "stop"}                     end the reply being generated (barge-in)
    {"type": "reset"}                    forget the conversation
    sampling (all optional): temperature, top_p, top_k, max_new_tokens, seed
    (a frame is at most 16 MiB: uvicorn closes the connection with 1009 over that)

Server -> client
    {"type": "ready", "input_sample_rate", "output_sample_rate", "audio_format", "speech_input", "speech_output"}
    {"type": "input", "codes": N}        speech codes final so far in the user's turn
    {"type": "queued", "position": N}     the turn waits for a free place (sent whenever N changes)
    {"type": "user", "codes": N} or {"type": "user", "text": "..."}
    {"type": "text", "delta": "..."}     reply text as it is sampled
    <binary frame>                       reply audio
    {"type": "done", "text", "reason", "ids", "codes", "audio_seconds", "timings"}
    {"type": "reset"}
    {"type": "error", "message": "..."}  the connection stays usable
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

from ..audio import PCM_FORMATS
from ..errors import Glm4VoiceError
from ..lm.generate import SamplingConfig

CLIENT_TYPES = ("audio.start", "audio.end", "text", "stop", "reset")
SAMPLING_KEYS = {"temperature": float, "top_p": float, "top_k": int, "max_new_tokens": int, "seed": int}
MAX_TEXT_CHARS = 20000


class ProtocolError(Glm4VoiceError):
    """A client message the server cannot act on; answered with an `error` message."""


@dataclass
class ClientMessage:
    type: str
    text: str | None = None
    sample_rate: int | None = None
    format: str = "f32le"
    sampling: SamplingConfig | None = None  # the server's defaults with this turn's overrides


def parse_client(raw: str, defaults: SamplingConfig, max_new_tokens_limit: int) -> ClientMessage:
    """One JSON text frame -> ClientMessage, or ProtocolError saying what is wrong."""
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise ProtocolError("not JSON this server reads: nested too deeply") from None
    if not isinstance(data, dict):
        raise ProtocolError("a message is a JSON object with a 'type'")
    kind = data.get("type")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(f"unknown message type {kind!r}; expected one of {', '.join(CLIENT_TYPES)}")
    if kind not in ("text", "audio.start") and SAMPLING_KEYS.keys() & data.keys():
        raise ProtocolError(f"sampling settings go with 'text' or 'audio.start', not '{kind}'")
    msg = ClientMessage(type=kind, sampling=_sampling(data, defaults, max_new_tokens_limit))
    if kind == "text":
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ProtocolError("a 'text' message needs a non-empty string 'text'")
        if len(text) > MAX_TEXT_CHARS:
            raise ProtocolError(f"'text' is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON may escape a lone surrogate (\ud800): no character at all
            raise ProtocolError(f"'text' is not valid Unicode (a lone surrogate at position {exc.start})") from None
        msg.text = text
    elif kind == "audio.start":
        rate = data.get("sample_rate")
        if isinstance(rate, bool) or not isinstance(rate, int) or not 8000 <= rate <= 192000:
            raise ProtocolError("'audio.start' needs an integer 'sample_rate' between 8000 and 192000")
        fmt = data.get("format", "f32le")
        if fmt not in PCM_FORMATS:
            raise ProtocolError(f"'format' {fmt!r}: expected one of {', '.join(sorted(PCM_FORMATS))}")
        msg.sample_rate, msg.format = rate, fmt
    return msg


def _no_constant(name: str):
    raise ProtocolError(f"not JSON: {name} is not a JSON number")


def _sampling(data: dict, defaults: SamplingConfig, max_new_tokens_limit: int) -> SamplingConfig:
    out = {}
    for key, kind in SAMPLING_KEYS.items():
        if key not in data:
            continue
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            kind is int and value != int(value)
        ):
            raise ProtocolError(f"'{key}' must be a finite number" + (" (an integer)" if kind is int else ""))
        out[key] = kind(value)
    if not 1 <= out.get("max_new_tokens", 1) <= max_new_tokens_limit:
        raise ProtocolError(f"'max_new_tokens' must lie in 1..{max_new_tokens_limit}")
    try:
        return replace(defaults, **out)  # SamplingConfig checks the ranges
    except Glm4VoiceError as exc:
        raise ProtocolError(f"sampling: {exc}") from None
