"""Server overhead and many users: a spoken turn over the real WebSocket (uvicorn, TCP) vs in-process, and
1, 4 and 8 conversations at once.

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

Many users (`--clients 1,4,8`): that many WebSocket clients at once, each sending --turns typed turns one
after the other (a reply of --tokens ids each, greedy, no stop); it prints the turns per second of all
of them together and the first audio p50/p90 as the clients see it (from sending the turn to the first
audio frame), with the server's batched scheduler and, beside it as the baseline, the same server with
--max-active 1 (one reply at a time, as before batching).

    .venv/bin/python benchmarks/serve.py [--repeats 5] [--tokens 60] [--clients 1,4,8] [--turns 3]
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


def typed_turns(port: int, turns: int, tokens: int, barrier: threading.Barrier) -> list[float]:
    """One client: `turns` typed turns in a row; the first-audio latency of each."""
    from websockets.sync.client import connect

    firsts = []
    with connect(f"ws://127.0.0.1:{port}/v1/chat", max_size=None) as ws:
        json.loads(ws.recv())
        barrier.wait()
        for n in range(turns):
            start = time.perf_counter()
            ws.send(json.dumps({"type": "text", "text": f"question {n}: {QUESTION}", "max_new_tokens": tokens}))
            first = None
            while True:
                frame = ws.recv()
                if isinstance(frame, bytes):
                    first = first or time.perf_counter() - start
                elif json.loads(frame)["type"] == "done":
                    break
            firsts.append(first)
    return firsts


def many_users(chat: VoiceChat, clients: int, turns: int, tokens: int, max_active: int) -> dict:
    server = ChatServer(chat, max_active=max_active)
    with serving(server) as port:
        barrier = threading.Barrier(clients + 1)
        results: list[list[float]] = [[] for _ in range(clients)]

        def client(i: int) -> None:
            results[i] = typed_turns(port, turns, tokens, barrier)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    firsts = sorted(x for r in results for x in r)
    return {"clients": clients, "max_active": max_active, "turns_per_s": round(clients * turns / wall, 3),
            "first_audio_p50": round(float(np.percentile(firsts, 50)), 3),
            "first_audio_p90": round(float(np.percentile(firsts, 90)), 3), "peak_batch": server.scheduler.peak}


class serving:
    """uvicorn serving a ChatServer on a free port (a context manager yielding the port)."""

    def __init__(self, chat_server: ChatServer):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(create_app(chat_server), host="127.0.0.1", port=self.port,
                                                    log_level="warning"))  # fmt: skip

    def __enter__(self) -> int:
        threading.Thread(target=self.server.run, daemon=True).start()
        while not self.server.started:
            time.sleep(0.05)
        return self.port

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True


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
    ap.add_argument("--clients", help="comma-separated numbers of clients at once (e.g. 1,4,8): the many-users run")
    ap.add_argument("--turns", type=int, default=3, help="turns per client in the many-users run")
    args = ap.parse_args()
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", QUESTION], check=True, capture_output=True).stdout
    speech16 = load_audio(wav)
    pcm48 = (np.clip(resample(speech16, 16000, 48000), -1, 1) * 32767).astype("<i2").tobytes()
    bundle = make_bundle(ROOT / "out" / "bench-serve" / "bundle", ROOT / "tests" / "golden")
    sampling = SamplingConfig(temperature=0, stop_ids=(), max_new_tokens=args.tokens)
    chat = VoiceChat.from_pretrained(model_dir=bundle, sampling=sampling, stream_options={"n_steps": 10})
    from benchmarks.machine import cpu_info, matmul_peak

    print(f"cpu: {cpu_info()}; fp32 matmul peak {matmul_peak() / 1e9:.0f} GFLOP/s (this run)")
    if args.clients:
        print(f"many users: typed turns of {args.tokens} reply ids (10 flow steps), {args.turns} per client")
        for n in [int(x) for x in args.clients.split(",")]:
            for max_active in (8, 1):  # batched scheduler, then one reply at a time (the baseline)
                print(json.dumps(many_users(chat, n, args.turns, args.tokens, max_active)), flush=True)
        return
    served = serving(ChatServer(chat))
    port = served.__enter__()
    server = served.server
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
