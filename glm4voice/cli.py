"""The `glm4voice` command line. Each subcommand is a thin wrapper over the API.

Errors on bad input print one line (`glm4voice CMD: error: ...`) and exit 2;
they never show a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import Glm4VoiceError


def _device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


# --- tokenize (speech -> 12.5 Hz ids) ---------------------------------------------------------


def _add_tokenize(sub) -> None:
    p = sub.add_parser("tokenize", help="audio files -> speech token ids (one JSON line per file)")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder or hub id (THUDM/glm-4-voice-tokenizer)")
    p.add_argument("files", nargs="+", help="audio files (anything soundfile reads)")
    p.add_argument("--int8", action="store_true", help="dynamic int8 linear layers (CPU only, faster)")
    p.add_argument("--batch-size", type=int, default=8, help="30 s pieces per forward pass")
    _device_args(p)
    p.set_defaults(run=_run_tokenize)


def _run_tokenize(args) -> int:
    from .audio import WHISPER_RATE, load_audio
    from .tokenizer import SpeechTokenizer

    if args.batch_size < 1:
        raise Glm4VoiceError(f"--batch-size must be at least 1, got {args.batch_size}")
    tok = SpeechTokenizer.from_pretrained(
        args.tokenizer, device=args.device, dtype=args.dtype, int8=args.int8, batch_size=args.batch_size
    )
    failed = 0
    # Read every file first so one bad file costs only its own line; then tokenize in batches.
    good: list[tuple[str, object]] = []
    for name in args.files:
        try:
            good.append((name, load_audio(name)))
        except Glm4VoiceError as exc:
            failed += 1
            print(json.dumps({"file": name, "error": str(exc)}), flush=True)
    for start in range(0, len(good), args.batch_size):
        chunk = good[start : start + args.batch_size]
        ids = tok.tokenize_batch([audio for _, audio in chunk])
        for (name, audio), tokens in zip(chunk, ids):
            seconds = round(len(audio) / WHISPER_RATE, 3)
            print(json.dumps({"file": name, "seconds": seconds, "tokens": tokens}), flush=True)
    if failed:
        print(f"glm4voice tokenize: {failed} of {len(args.files)} files failed", file=sys.stderr)
        return 1
    return 0


# --- decode (speech ids -> audio): issue 3 ----------------------------------------------------


def _add_decode(sub) -> None:
    p = sub.add_parser("decode", help="speech ids (JSON) -> 22.05 kHz wav")
    p.add_argument("--decoder", required=True, help="decoder folder or hub id (THUDM/glm-4-voice-decoder)")
    p.add_argument(
        "--tokens",
        required=True,
        help="JSON list of ids, {\"tokens\": [...]}, or `glm4voice tokenize` output (lines concatenated)",
    )
    p.add_argument("--out", required=True, help="output wav path")
    p.add_argument("--stream", action="store_true", help="decode as a stream, feeding ids one by one")
    p.add_argument("--int8", action="store_true", help="dynamic int8 linear layers in the flow (CPU only, faster)")
    _device_args(p)
    p.set_defaults(run=_run_decode)


def _run_decode(args) -> int:
    import time

    from .audio import write_wav
    from .decoder import SpeechDecoder
    from .decoder.token_file import read_token_file

    ids = read_token_file(args.tokens)
    dec = SpeechDecoder.from_pretrained(args.decoder, device=args.device, dtype=args.dtype, int8=args.int8)
    dec.ids(ids)  # validate before any work
    start = time.perf_counter()
    summary = {"out": args.out, "ids": len(ids), "mode": "stream" if args.stream else "offline"}
    if args.stream:
        import torch

        stream, pieces, first = dec.stream(), [], None
        for token in ids:
            piece = stream.push([token])
            if piece.numel() and first is None:
                first = time.perf_counter() - start
            pieces.append(piece)
        pieces.append(stream.flush())
        audio = torch.cat(pieces)
        summary["chunks"] = len(stream.stats)
        summary["first_audio_s"] = round(first if first is not None else time.perf_counter() - start, 3)
    else:
        audio = dec.decode(ids)
    summary["compute_s"] = round(time.perf_counter() - start, 3)
    summary["seconds"] = round(audio.numel() / dec.sample_rate, 3)
    try:
        write_wav(args.out, audio, dec.sample_rate)
    except OSError as exc:
        raise Glm4VoiceError(f"cannot write {args.out}: {exc}") from exc
    print(json.dumps(summary), flush=True)
    return 0


# --- lm / chat: issue 4 -----------------------------------------------------------------------


def _add_convert_lm(sub) -> None:
    p = sub.add_parser(
        "convert-lm", help="ChatGLM-format speech LM -> transformers Glm layout (safetensors, sharded)"
    )
    p.add_argument("src", help="LM folder or hub id in the ChatGLM layout (THUDM/glm-4-voice-9b)")
    p.add_argument("dst", help="new (or empty) output folder")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-shard-gb", type=float, default=5.0, help="largest safetensors shard, in GB")
    p.set_defaults(run=_run_convert_lm)


def _run_convert_lm(args) -> int:
    from .lm import convert_lm

    out = convert_lm(args.src, args.dst, dtype=args.dtype, max_shard_bytes=int(args.max_shard_gb * 1e9))
    print(f"wrote {out}")
    return 0


def _add_model_args(p) -> None:
    """The three models and their settings: shared by `chat` and `serve`."""
    p.add_argument("--model-dir", help="folder holding tokenizer/, lm/ and decoder/")
    p.add_argument("--tokenizer", help="speech tokenizer folder or hub id (THUDM/glm-4-voice-tokenizer)")
    p.add_argument("--lm", help="speech LM folder or hub id (THUDM/glm-4-voice-9b)")
    p.add_argument("--decoder", help="speech decoder folder or hub id (THUDM/glm-4-voice-decoder)")
    p.add_argument("--system", help="replace the default system prompt")
    p.add_argument("--temperature", type=float, default=0.2, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--max-new-tokens", type=int, default=2000)
    p.add_argument("--seed", type=int, help="seed the sampler (reproducible replies)")
    p.add_argument("--flow-steps", type=int, default=10, help="decoder flow-matching steps (fewer: faster)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="tokenizer and decoder dtype")  # fmt: skip
    p.add_argument("--int8", action="store_true", help="dynamic int8 linear layers in tokenizer and decoder (CPU)")
    p.add_argument("--lm-dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="LM dtype; auto = the checkpoint's (bf16 for the release)")  # fmt: skip


def _load_chat(args):
    from .chat import VoiceChat
    from .lm.generate import SamplingConfig

    if args.lm is None and args.model_dir is None:
        raise Glm4VoiceError("give --lm (and --tokenizer, --decoder) or --model-dir")
    sampling = SamplingConfig(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    return VoiceChat.from_pretrained(
        args.tokenizer,
        args.lm,
        args.decoder,
        model_dir=args.model_dir,
        device=args.device,
        dtype=args.dtype,
        lm_dtype=args.lm_dtype,
        int8=args.int8,
        system=args.system,
        sampling=sampling,
        stream_options={"n_steps": args.flow_steps},
    )


def _add_chat(sub) -> None:
    p = sub.add_parser("chat", help="spoken or typed turns -> streamed reply text + reply.wav")
    p.add_argument("audio", nargs="?", help="the user's speech (any audio file); or use --text")
    p.add_argument("--text", help="a typed user message instead of speech")
    p.add_argument("--interactive", "-i", action="store_true",
                   help="a multi-turn conversation: one turn per stdin line (text, or @file for speech)")  # fmt: skip
    p.add_argument("--out", default="reply.wav",
                   help="where to write the reply audio (22.05 kHz); interactive turns add -1, -2, ...")  # fmt: skip
    _add_model_args(p)
    p.set_defaults(run=_run_chat)


def _run_chat(args) -> int:
    from pathlib import Path

    given = (args.audio is not None) + (args.text is not None) + bool(args.interactive)
    if given != 1:
        raise Glm4VoiceError("give the user's speech (AUDIO), --text or --interactive, exactly one")
    if args.lm is None and args.model_dir is None:
        raise Glm4VoiceError("give --lm (and --tokenizer, --decoder) or --model-dir")
    if args.audio is not None and args.tokenizer is None and args.model_dir is None:
        raise Glm4VoiceError("speech input needs --tokenizer (or --model-dir)")
    audio = None
    if args.audio is not None:
        from .audio import load_audio

        audio = load_audio(args.audio)  # fail on a bad file before loading 9B parameters
    chat = _load_chat(args)
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
            if line.startswith("@"):
                from .audio import load_audio

                speech, text = load_audio(line[1:].strip()), None
            else:
                speech, text = None, line
            turn += 1
            _chat_turn(chat, speech, text, out.with_name(f"{out.stem}-{turn}{out.suffix}"))
        except Glm4VoiceError as exc:  # a bad line costs only that line
            print(f"glm4voice chat: error: {exc}", file=sys.stderr)
    return 0


def _terminal_safe(text: str) -> str:
    """Model text for a terminal: control characters (an escape sequence could rewrite the screen) shown as U+FFFD."""
    return "".join(c if c in "\n\t" or not (ord(c) < 32 or 127 <= ord(c) < 160) else "\ufffd" for c in text)


def _chat_turn(chat, audio, text, out) -> None:
    """Run one turn: stream its text to stdout, write its audio to `out`, summary to stderr."""
    from .chat import Reply
    from .lm.generate import TextEvent

    reply = None
    for event in chat.turn(audio, text=text):
        if isinstance(event, TextEvent) and event.text:
            print(_terminal_safe(event.text), end="", flush=True)
        elif isinstance(event, Reply):
            reply = event
    print(flush=True)
    t = reply.timings
    first_text = f"{t.first_text:.2f} s" if t.first_text is not None else "-"
    first_audio = f"{t.first_audio:.2f} s" if t.first_audio is not None else "-"
    summary = (
        f"[{reply.n_tokens} tokens ({len(reply.codes)} speech), {t.tokens_per_second:.1f} tok/s, "
        f"first text {first_text}, first audio {first_audio}, ended on {reply.reason}]"
    )
    if chat.decoder is not None and reply.audio.numel():
        from .audio import write_wav

        write_wav(out, reply.audio.numpy(), reply.sample_rate)
        summary += f" wrote {out} ({reply.seconds:.2f} s)"
    elif chat.decoder is None:
        summary += " no --decoder: no audio written"
    else:
        summary += " the reply has no speech: no audio written"
    print(summary, file=sys.stderr)


# --- tokenize-corpus: the Ray Data pipeline -----------------------------------------------------


def _add_tokenize_corpus(sub) -> None:
    p = sub.add_parser("tokenize-corpus", help="speech corpus (JSONL manifest) -> speech-token Parquet shards (Ray)")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder or hub id")
    p.add_argument("--manifest", required=True, help='JSONL: {"id": ..., "audio": path, "text": ... (optional)}')
    p.add_argument("--out", required=True, help="new folder for the Parquet shards")
    p.add_argument("--actors", type=int, default=1, help="tokenizer actors (one model each)")
    p.add_argument("--batch-size", type=int, default=8, help="files per actor call")
    p.add_argument("--int8", action="store_true", help="dynamic int8 tokenizer (CPU)")
    p.add_argument("--ray-address", help="a running Ray cluster (auto, or ray://host:port); default: a local one")
    p.set_defaults(run=_run_tokenize_corpus)


def _run_tokenize_corpus(args) -> int:
    try:
        from .data.corpus import tokenize_corpus
    except ImportError as exc:
        raise Glm4VoiceError(f"the pipeline needs the data extra: pip install 'glm4voice[data]' ({exc})") from None
    summary = tokenize_corpus(args.tokenizer, args.manifest, args.out, actors=args.actors,
                              batch_size=args.batch_size, int8=args.int8, ray_address=args.ray_address)  # fmt: skip
    print(json.dumps(summary), flush=True)
    return 1 if summary["failed"] else 0


# --- train-sft: streaming-thoughts fine-tuning ---------------------------------------------------


def _add_train_sft(sub) -> None:
    from .train.sft import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train-sft", help="streaming-thoughts fine-tuning of the speech LM (torchrun: FSDP)")
    p.add_argument("--lm", required=True, help="LM folder to start from (either layout)")
    p.add_argument("--data", required=True, help="JSONL manifest: question, answer_text, answer_codes per line")
    p.add_argument("--out", required=True, help="run folder: checkpoints land in OUT/step-N/")
    p.add_argument("--resume", help="continue from OUT/step-N (its weights, optimizer and step)")
    for name in ("steps", "batch_size", "warmup_steps", "save_every", "log_every", "seed", "max_length"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "min_lr", "weight_decay", "beta1", "beta2", "grad_clip"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--mixed-precision", choices=["none", "bf16"], default=d.mixed_precision,
                   help="bf16: FSDP computes in bf16 with fp32 master weights (torchrun runs)")  # fmt: skip
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in backward: less memory, more time")  # fmt: skip
    p.set_defaults(run=_run_train_sft)


def _run_train_sft(args) -> int:
    from dataclasses import fields

    from .train.sft import TrainConfig, finished, train_sft

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    records = train_sft(args.lm, args.data, args.out, cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"glm4voice train-sft: {finished(records)}; checkpoint {args.out}/step-{cfg.steps}", file=sys.stderr)
    return 0


# --- serve: the WebSocket server and web page ---------------------------------------------------


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="spoken chat server: web page at /, streaming WebSocket at /v1/chat")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-user-seconds", type=float, default=300.0, help="longest spoken turn accepted")
    _add_model_args(p)
    p.set_defaults(run=_run_serve)


def _run_serve(args) -> int:
    try:
        import uvicorn

        from .serve import ChatServer, create_app
    except ImportError as exc:
        raise Glm4VoiceError(f"serving needs the serve extra: pip install 'glm4voice[serve]' ({exc})") from None
    if not 0 < args.port < 65536:
        raise Glm4VoiceError(f"--port must be 1..65535, got {args.port}")
    if args.max_user_seconds <= 0:
        raise Glm4VoiceError("--max-user-seconds must be positive")
    _check_can_listen(args.host, args.port)  # before minutes of model loading, not after
    server = ChatServer(_load_chat(args), max_user_seconds=args.max_user_seconds,
                        max_new_tokens_limit=max(args.max_new_tokens, 1))  # fmt: skip
    print(f"glm4voice: serving on http://{args.host}:{args.port}/ (WebSocket /v1/chat)", file=sys.stderr)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glm4voice", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


_COMMANDS = [_add_tokenize, _add_decode, _add_convert_lm, _add_chat, _add_serve, _add_tokenize_corpus,
             _add_train_sft]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except Glm4VoiceError as exc:
        print(f"glm4voice {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
