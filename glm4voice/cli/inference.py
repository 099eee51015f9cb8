"""Inference commands: tokenize, transcribe, decode, convert-lm, t2t, chat, serve."""

from __future__ import annotations

import json
import os
import sys
import time

from ..errors import Glm4VoiceError
from .common import (
    DTYPES,
    add_command,
    add_device,
    add_models,
    add_speech_tokenizer,
    check_device,
    check_models,
    check_output_file,
    load_chat,
)
from .common import missing_extra as _missing_extra

# --- tokenize (speech -> 12.5 Hz codes) --------------------------------------------------------


def _add_tokenize(sub) -> None:
    p = add_command(sub, "tokenize", "audio files -> speech codes (one JSON line per file)", _run_tokenize)
    add_speech_tokenizer(p, required=True)
    p.add_argument("files", nargs="+", help="audio files (anything soundfile reads)")
    p.add_argument("--int8", action="store_true", help="dynamic int8 linear layers (CPU only, faster)")
    p.add_argument("--batch-size", type=int, default=8, help="30 s pieces per forward pass")
    add_device(p)


def _run_tokenize(args) -> int:
    from ..audio import WHISPER_RATE, load_audio
    from ..tokenizer import SpeechTokenizer

    if args.batch_size < 1:
        raise Glm4VoiceError(f"--batch-size must be at least 1, got {args.batch_size}")
    tok = SpeechTokenizer.from_pretrained(args.speech_tokenizer, device=args.device, dtype=args.dtype,
                                          int8=args.int8, batch_size=args.batch_size)  # fmt: skip
    failed = 0
    # Files in groups of --batch-size: read (a bad file costs only its own line), tokenize the good ones
    # together, print every line in argument order. Memory stays one group's audio, whatever the file count.
    for start in range(0, len(args.files), args.batch_size):
        lines: list[dict] = []
        good: list[tuple[dict, object]] = []
        for name in args.files[start : start + args.batch_size]:
            try:
                audio = load_audio(name)
            except Glm4VoiceError as exc:
                failed += 1
                lines.append({"file": name, "error": str(exc)})
                continue
            lines.append({"file": name, "seconds": round(len(audio) / WHISPER_RATE, 3)})
            good.append((lines[-1], audio))
        codes = tok.tokenize_batch([audio for _, audio in good]) if good else []
        for (line, _), row in zip(good, codes):
            line["codes"] = row
        for line in lines:
            print(json.dumps(line), flush=True)
    if failed:
        print(f"glm4voice tokenize: {failed} of {len(args.files)} files failed", file=sys.stderr)
        return 1
    return 0


def _add_transcribe(sub) -> None:
    p = add_command(sub, "transcribe", "audio files -> text, by the ASR head of an ASR-layout speech tokenizer",
                    _run_transcribe)  # fmt: skip
    add_speech_tokenizer(p, required=True)
    p.add_argument("files", nargs="+", help="audio files (anything soundfile reads)")
    p.add_argument("--batch-size", type=int, default=8, help="30 s pieces per forward pass")
    p.add_argument("--language", choices=("en", "zh"), default=None,
                   help="the files' language, given to the decoder (default: it names the language itself)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")


def _run_transcribe(args) -> int:
    from ..audio import load_audio
    from ..tokenizer.asr import load_asr, transcribe

    if args.batch_size < 1:
        raise Glm4VoiceError(f"--batch-size must be at least 1, got {args.batch_size}")
    model, codec = load_asr(args.speech_tokenizer)
    model.to(args.device).eval()
    failed = 0
    for name in args.files:  # one line per file, in argument order
        try:
            wave = load_audio(name)
        except Glm4VoiceError as exc:
            failed += 1
            print(json.dumps({"file": name, "error": str(exc)}, ensure_ascii=False), flush=True)
            continue
        langs = None if args.language is None else [args.language]
        text = transcribe(model, codec, [wave], batch_size=args.batch_size, langs=langs)[0]
        print(json.dumps({"file": name, "text": text}, ensure_ascii=False), flush=True)
    if failed:
        print(f"glm4voice transcribe: {failed} of {len(args.files)} files failed", file=sys.stderr)
        return 1
    return 0


# --- decode (speech codes -> audio) -------------------------------------------------------------


OFFLINE_MAX_CODES = 250  # 20 s of speech: beyond it the offline pass's attention costs more than streaming


def _add_decode(sub) -> None:
    p = add_command(sub, "decode", "speech codes (JSON) -> 22.05 kHz wav", _run_decode)
    p.add_argument("--decoder", required=True, help="decoder folder or hub id (THUDM/glm-4-voice-decoder)")
    p.add_argument("--codes", "--tokens", dest="codes", required=True,
                   help='JSON list of codes, {"codes": [...]}, or `glm4voice tokenize` output (lines concatenated)')
    p.add_argument("--out", required=True, help="output wav path")
    p.add_argument("--mode", choices=["auto", "offline", "stream"], default="auto",
                   help=f"offline: one pass (time and memory grow with the square of the length); stream: chunk "
                        f"by chunk, as chat does (linear); auto: offline up to {OFFLINE_MAX_CODES} codes, then stream")
    p.add_argument("--stream", dest="mode", action="store_const", const="stream", help="the same as --mode stream")
    p.add_argument("--int8", action="store_true", help="dynamic int8 linear layers in the flow (CPU only, faster)")
    add_device(p)


def _run_decode(args) -> int:
    from ..audio import write_wav
    from ..decoder import SpeechDecoder
    from ..decoder.codes_file import read_codes_file

    codes = read_codes_file(args.codes)
    check_output_file(args.out)
    dec = SpeechDecoder.from_pretrained(args.decoder, device=args.device, dtype=args.dtype, int8=args.int8)
    dec.check_codes(codes)  # validate before any work
    start = time.perf_counter()
    mode = args.mode if args.mode != "auto" else ("offline" if len(codes) <= OFFLINE_MAX_CODES else "stream")
    summary = {"out": args.out, "codes": len(codes), "mode": mode}
    if mode == "stream":
        import torch

        stream, pieces, first = dec.stream(), [], None
        for code in codes:
            piece = stream.push([code])
            if piece.numel() and first is None:
                first = time.perf_counter() - start
            pieces.append(piece)
        pieces.append(stream.flush())
        audio = torch.cat(pieces)
        summary["chunks"] = len(stream.stats)
        summary["first_audio_s"] = round(first if first is not None else time.perf_counter() - start, 3)
    else:
        audio = dec.decode(codes)
    summary["compute_s"] = round(time.perf_counter() - start, 3)
    summary["seconds"] = round(audio.numel() / dec.sample_rate, 3)
    try:
        write_wav(args.out, audio, dec.sample_rate)
    except OSError as exc:
        raise Glm4VoiceError(f"cannot write {args.out}: {exc}") from exc
    print(json.dumps(summary), flush=True)
    return 0


# --- convert-lm -----------------------------------------------------------------------------------


def _add_convert_lm(sub) -> None:
    p = add_command(sub, "convert-lm", "ChatGLM-format speech LM -> transformers Glm layout (safetensors, sharded)",
                    _run_convert_lm)  # fmt: skip
    p.add_argument("src", help="LM folder or hub id in the ChatGLM layout (THUDM/glm-4-voice-9b)")
    p.add_argument("dst", help="new (or empty) output folder")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    p.add_argument("--max-shard-gb", type=float, default=5.0, help="largest safetensors shard, in GB")


def _run_convert_lm(args) -> int:
    import math

    from ..lm import convert_lm

    if not (math.isfinite(args.max_shard_gb) and args.max_shard_gb > 0):
        raise Glm4VoiceError(f"--max-shard-gb must be a positive number, got {args.max_shard_gb}")
    out = convert_lm(args.src, args.dst, dtype=args.dtype, max_shard_bytes=int(args.max_shard_gb * 1e9))
    print(f"wrote {out}")
    return 0


# --- t2t ------------------------------------------------------------------------------------------


def _add_t2t(sub) -> None:
    from ..lm.t2t import T2TConfig

    d = T2TConfig()
    p = add_command(sub, "t2t", "text -> speech codes with a text-to-token model (JSON lines for `decode`)", _run_t2t)
    p.add_argument("--t2t", required=True, help="text-to-token model folder (train-t2t's step-N)")
    p.add_argument("--text", action="append", required=True, help="a text (repeat for a batch)")
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")


def _run_t2t(args) -> int:
    import json

    from ..lm.t2t import T2TConfig, TextToToken

    cfg = T2TConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    check_device(args.device)
    model = TextToToken.from_pretrained(args.t2t, device=args.device)
    for text, codes in zip(args.text, model.generate(args.text, cfg)):
        print(json.dumps({"text": text, "codes": codes}, ensure_ascii=False))
    return 0


# --- chat -----------------------------------------------------------------------------------------


def _add_chat(sub) -> None:
    p = add_command(sub, "chat", "spoken or typed turns -> streamed reply text + reply.wav", _run_chat)
    p.add_argument("audio", nargs="?", help="the user's speech (any audio file); or use --text")
    p.add_argument("--text", help="a typed user message instead of speech")
    p.add_argument("--interactive", "-i", action="store_true",
                   help="a multi-turn conversation: one turn per stdin line (text, or @file for speech)")  # fmt: skip
    p.add_argument("--out", default="reply.wav",
                   help="where to write the reply audio (22.05 kHz); interactive turns add -1, -2, ...")  # fmt: skip
    add_models(p)


def _run_chat(args) -> int:
    from pathlib import Path

    from ..audio import load_audio

    given = (args.audio is not None) + (args.text is not None) + bool(args.interactive)
    if given != 1:
        raise Glm4VoiceError("give the user's speech (AUDIO), --text or --interactive, exactly one")
    check_models(args, speech_input=args.audio is not None)
    check_output_file(args.out)  # before the models load and the reply is made, not after
    audio = load_audio(args.audio) if args.audio is not None else None  # a bad file fails before 9B load
    chat = load_chat(args)
    if not args.interactive:
        _chat_turn(chat, audio, args.text, args.out)
        return 0
    out = Path(args.out)
    print("one turn per line: text, or @path/to/speech.wav; /reset starts over; an empty line ends",
          file=sys.stderr)  # fmt: skip
    turn = 0
    for line in sys.stdin:
        line = line.strip()
        if not line:
            break
        if line == "/reset":
            chat.reset()
            continue
        try:
            speech, text = (load_audio(line[1:].strip()), None) if line.startswith("@") else (None, line)
            turn += 1
            _chat_turn(chat, speech, text, out.with_name(f"{out.stem}-{turn}{out.suffix}"))
        except Glm4VoiceError as exc:  # a bad line costs only that line
            print(f"glm4voice chat: error: {exc}", file=sys.stderr)
    return 0


def terminal_safe(text: str) -> str:
    """Model text for a terminal: control characters (an escape sequence could rewrite the screen) shown as U+FFFD."""
    return "".join(c if c in "\n\t" or not (ord(c) < 32 or 127 <= ord(c) < 160) else "\ufffd" for c in text)


def _chat_turn(chat, audio, text, out) -> None:
    """Run one turn: stream its text to stdout, write its audio to `out`, summary to stderr."""
    from ..events import Reply, TextEvent

    reply = None
    for event in chat.turn(audio, text=text):
        if isinstance(event, TextEvent) and event.text:
            print(terminal_safe(event.text), end="", flush=True)
        elif isinstance(event, Reply):
            reply = event
    print(flush=True)
    t = reply.timings
    first_text = f"{t.first_text:.2f} s" if t.first_text is not None else "-"
    first_audio = f"{t.first_audio:.2f} s" if t.first_audio is not None else "-"
    summary = (
        f"[{reply.n_ids} ids ({len(reply.codes)} speech), {t.ids_per_second:.1f} ids/s, "
        f"first text {first_text}, first audio {first_audio}, ended on {reply.reason}]"
    )
    if chat.decoder is not None and reply.audio.numel():
        from ..audio import write_wav

        try:
            write_wav(out, reply.audio.numpy(), reply.sample_rate)
        except OSError as exc:  # the reply was shown; the conversation goes on
            raise Glm4VoiceError(f"cannot write {out}: {exc.strerror or exc}") from None
        summary += f" wrote {out} ({reply.seconds:.2f} s)"
    elif chat.decoder is None:
        summary += " no --decoder: no audio written"
    else:
        summary += " the reply has no speech: no audio written"
    print(summary, file=sys.stderr)


# --- serve ----------------------------------------------------------------------------------------


def _add_serve(sub) -> None:
    p = add_command(sub, "serve", "spoken chat server: web page at /, streaming WebSocket at /v1/chat", _run_serve)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-user-seconds", type=float, default=300.0, help="longest spoken turn accepted")
    p.add_argument("--api-key", default=os.environ.get("GLM4VOICE_API_KEY"),
                   help="every route and the WebSocket need it (default: $GLM4VOICE_API_KEY; none: open)")
    p.add_argument("--model-name", default="glm-4-voice", help="the model id of the OpenAI-compatible API")
    p.add_argument("--max-active", type=int, default=8, help="replies generated together (one batched LM step)")
    p.add_argument("--max-queue", type=int, default=32, help="turns waiting for a place; more are told busy")
    p.add_argument("--max-connections", type=int, default=64,
                   help="open WebSocket conversations at most (each keeps its KV cache); more are told to retry")
    p.add_argument("--slow-client-seconds", type=float, default=30.0,
                   help="a client whose unsent messages stay at the limit (256) this long is cut off")
    add_models(p)


def _run_serve(args) -> int:
    try:
        import uvicorn

        from ..serve import ChatServer, create_app
    except ImportError as exc:
        raise _missing_extra("serve", "serving", exc) from None
    if not 0 < args.port < 65536:
        raise Glm4VoiceError(f"--port must be 1..65535, got {args.port}")
    if args.max_user_seconds <= 0:
        raise Glm4VoiceError("--max-user-seconds must be positive")
    check_models(args)
    _check_can_listen(args.host, args.port)  # before minutes of model loading, not after
    if args.api_key is not None and not args.api_key.strip():
        raise Glm4VoiceError("--api-key is empty (unset GLM4VOICE_API_KEY for an open server)")
    if not args.model_name.strip():
        raise Glm4VoiceError("--model-name is empty")
    if args.slow_client_seconds <= 0:
        raise Glm4VoiceError("--slow-client-seconds must be positive")
    if args.max_active < 1 or args.max_queue < 0 or args.max_connections < 1:
        raise Glm4VoiceError("--max-active and --max-connections must be at least 1, --max-queue at least 0")
    server = ChatServer(load_chat(args), max_user_seconds=args.max_user_seconds,
                        max_new_tokens_limit=max(args.max_new_tokens, 1), api_key=args.api_key,
                        model_name=args.model_name, max_active=args.max_active, max_queue=args.max_queue,
                        slow_client_seconds=args.slow_client_seconds, max_connections=args.max_connections)  # fmt: skip
    print(f"glm4voice: serving on http://{args.host}:{args.port}/ (WebSocket /v1/chat, OpenAI API /v1)"
          + (" with an API key" if args.api_key else ""), file=sys.stderr)  # fmt: skip
    uvicorn.run(create_app(server), host=args.host, port=args.port, log_level="info")
    return 0


def _check_can_listen(host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Glm4VoiceError(f"--host {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise Glm4VoiceError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def add(sub) -> None:
    for add_one in (_add_tokenize, _add_transcribe, _add_decode, _add_convert_lm, _add_t2t, _add_chat, _add_serve):
        add_one(sub)
