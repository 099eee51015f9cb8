"""Server overhead: a spoken turn over the real WebSocket (uvicorn, TCP) vs the same turn in-process.

Uses the demo bundle (golden tokenizer, tiny random LM, golden decoder; built
on the spot like `make demo`) so it runs anywhere in seconds; the models are
small, so what it isolates is what the server adds: resampling and streaming
tokenization of pushed audio, thread hand-offs, JSON/binary framing, TCP.

For each of --repeats runs (alternating), it prints the median of:
- user speech end -> `user` message (server) / tokenize (in-process);
- user speech end -> first reply text, and -> first reply audio;
- whole turn.
The client sends 16-bit PCM at 48 kHz in 20 ms frames as fast as it can
(real clients send in real time, so tokenization then overlaps the speech).

    .venv/bin/python benchmarks/serve.py [--repeats 5] [--tokens 60]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from glm4voice.audio import load_audio, resample  # noqa: E402
from glm4voice.chat import AudioChunk, UserEvent, VoiceChat  # noqa: E402
from glm4voice.demo import make_bundle  # noqa: E402
from glm4voice.lm.generate import SamplingConfig, TextEvent  # noqa: E402
from glm4voice.serve import ChatServer, create_app  # noqa: E402

QUESTION = "Could you tell me what the weather will be like tomorrow morning in the city?"


def over_the_wire(port: int, pcm48: bytes, tokens: int) -> dict:
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/v1/chat", max_size=None) as ws:
        json.loads(ws.recv())
        ws.send(json.dumps({"type": "audio.start", "sample_rate": 48000, "format": "s16le",
                            "max_new_tokens": tokens}))  # fmt: skip
        step = 2 * 960  # 20 ms
        for i in range(0, len(pcm48), step):
            ws.send(pcm48[i : i + step])
        start = time.perf_counter()
        ws.send(json.dumps({"type": "audio.end"}))
        out = {}
        while True:
            frame = ws.recv()
            now = time.perf_counter() - start
            if isinstance(frame, bytes):
                out.setdefault("first_audio", now)
                continue
            kind = json.loads(frame)["type"]
            if kind in ("user", "text"):
                out.setdefault("user" if kind == "user" else "first_text", now)
            elif kind == "done":
                out["total"] = now
                return out


def in_process(chat: VoiceChat, speech16: np.ndarray) -> dict:
    chat.reset()
    start = time.perf_counter()
    out = {}
    for event in chat.turn(speech16):
        now = time.perf_counter() - start
        if isinstance(event, UserEvent):
            out["user"] = now
        elif isinstance(event, TextEvent) and event.text:
            out.setdefault("first_text", now)
        elif isinstance(event, AudioChunk):
            out.setdefault("first_audio", now)
    out["total"] = time.perf_counter() - start
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=60, help="reply tokens (greedy, no stop)")
    args = ap.parse_args()
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", QUESTION], check=True, capture_output=True).stdout
    speech16 = load_audio(wav)
    pcm48 = (np.clip(resample(speech16, 16000, 48000), -1, 1) * 32767).astype("<i2").tobytes()
    bundle = make_bundle(ROOT / "out" / "bench-serve" / "bundle")
    sampling = SamplingConfig(temperature=0, stop_ids=(), max_new_tokens=args.tokens)
    chat = VoiceChat.from_pretrained(model_dir=bundle, sampling=sampling, stream_options={"n_steps": 10})
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(ChatServer(chat)), host="127.0.0.1", port=port,
                                           log_level="warning"))  # fmt: skip
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    print(f"question: {len(speech16) / 16000:.2f} s of espeak-ng speech, reply {args.tokens} tokens, 10 flow steps")
    wire, local = [], []
    over_the_wire(port, pcm48, args.tokens), in_process(chat, speech16)  # warm-up
    for _ in range(args.repeats):
        wire.append(over_the_wire(port, pcm48, args.tokens))
        local.append(in_process(chat, speech16))
    server.should_exit = True
    print(f"{'seconds after the speech ends':<32}{'WebSocket':>11}{'in-process':>12}")
    for key, label in [("user", "speech codes ready"), ("first_text", "first reply text"),
                       ("first_audio", "first reply audio"), ("total", "whole turn")]:  # fmt: skip
        w = statistics.median(r[key] for r in wire)
        p = statistics.median(r[key] for r in local)
        print(f"{label:<32}{w:>11.3f}{p:>12.3f}")


if __name__ == "__main__":
    main()
