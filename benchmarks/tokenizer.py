"""Speech tokenizer speed and memory at full size (whisper-large-v3 shape, random weights).

Prints, per configuration (dtype x batch): seconds of compute per second of
audio (RTF, wall clock; also process CPU time / threads, which is steadier on a
shared machine), peak memory, and the fraction of this machine's matmul peak
reached (peak measured here; FLOPs counted analytically, only the block-causal
attention scores that matter). `ref` is the same network with the reference's
attention (a full [T, T] float mask, every score computed): a baseline measured
on this machine at the same moment. Then the int8 path's id agreement with fp32
on real speech (espeak-ng sentences), through the golden checkpoint and through
the full-size random model.

    .venv/bin/python benchmarks/tokenizer.py                  # CPU, 60 s of audio
    .venv/bin/python benchmarks/tokenizer.py --device cuda    # GPU: fp32 and bf16
    .venv/bin/python benchmarks/tokenizer.py --seconds 20 --configs fp32:1,int8:1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")

from benchmarks.machine import cpu_info, matmul_peak, sync  # noqa: E402
from glm4voice.audio import load_audio  # noqa: E402
from glm4voice.quant import quantize_linear_int8  # noqa: E402
from glm4voice.tokenizer import SpeechTokenizer, TokenizerConfig, WhisperVQEncoder  # noqa: E402

SENTENCES = [
    ("The quick brown fox jumps over the lazy dog near the river bank.", "en"),
    ("Streaming speech tokenizers must agree with their offline twins.", "en-us"),
    ("今天天气很好，我们去公园散步吧。", "cmn-latn-pinyin"),
    ("Please remind me to call my sister tomorrow at nine in the morning.", "en-gb"),
    ("A speech language model listens, thinks in text, and answers in speech.", "en"),
]


def speech(seconds: float) -> np.ndarray:
    """Real speech from espeak-ng, repeated to `seconds` at 16 kHz."""
    clips = []
    for i, (text, voice) in enumerate(SENTENCES):
        wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(140 + 10 * i), "--stdout", text],
                             check=True, capture_output=True).stdout
        clips.append(load_audio(wav))
    audio = np.concatenate(clips)
    return np.resize(audio, int(seconds * 16000)).astype(np.float32)


def full_size_model(seed: int = 0) -> WhisperVQEncoder:
    torch.manual_seed(seed)
    model = WhisperVQEncoder(TokenizerConfig()).eval()
    with torch.no_grad():  # Whisper-like scales so activations stay in a sane range
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() >= 2:
                p.normal_(0, 0.02)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    return model


def encoder_flops(cfg: TokenizerConfig, samples: int) -> float:
    """Multiply-adds x 2 of the encoder on `samples` (cut in 30 s pieces)."""
    total = 0.0
    for start in range(0, samples, 480000):
        n = min(480000, samples - start)
        frames = -(-n // 1280) * 8  # mel frames after padding
        t = frames // 2
        d, f = cfg.d_model, cfg.ffn_dim
        conv = cfg.n_mels * 3 * d * frames + d * 3 * d * t
        layers = 0.0
        for i in range(cfg.n_layers):
            rate = cfg.pooling_kernel if i >= cfg.pooling_position else 1
            ti, block = t // rate, cfg.block_size // rate
            # block-causal attention: a query sees keys up to the end of its block
            keys = sum(min((q // block + 1) * block, ti) for q in range(ti))
            layers += ti * (4 * d * d + 2 * d * f) + 2 * keys * d
        code = (t // cfg.pooling_kernel) * cfg.codebook_size * d
        total += 2 * (conv + layers + code)
    return total


def linear_flops(cfg: TokenizerConfig, samples: int) -> float:
    """The linear layers' share of encoder_flops: what int8 quantization speeds up."""
    frames = sum(-(-min(480000, samples - s) // 1280) * 4 for s in range(0, samples, 480000))  # after conv2
    d, f = cfg.d_model, cfg.ffn_dim
    return 2 * cfg.n_layers * frames * (4 * d * d + 2 * d * f)


def int8_peak(n: int = 4096) -> float:
    from torch.ao.quantization import quantize_dynamic

    lin = quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(n, n)), {torch.nn.Linear}, dtype=torch.qint8)
    x = torch.randn(n, n)
    lin(x)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        lin(x)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def reference_style_attention(q, k, v, key_mask, block):
    """What the reference computes: one [T, S] additive float mask, every score evaluated."""
    S, T = k.shape[2], q.shape[2]
    i = torch.arange(S - T, S)[:, None]
    j = torch.arange(S)[None, :]
    allowed = ((j <= i) | (i // block == j // block))[None, None] & key_mask[:, None, None, :]
    bias = (~allowed).to(q.dtype) * torch.finfo(q.dtype).min
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B, H, T, hd]
    return out.transpose(1, 2).reshape(q.shape[0], T, -1)


def worker(kind: str, batch: int, seconds: float, device: str) -> dict:
    """One configuration, in its own process so its peak memory is its own."""
    model = full_size_model()
    if kind == "ref":  # our fp32 network with the reference's attention: a same-machine baseline
        import glm4voice.tokenizer.network as tokenizer_module

        tokenizer_module.block_causal_attention = reference_style_attention
    if kind == "int8":
        model = quantize_linear_int8(model, "tokenization")
    else:
        model = model.to(device=device, dtype=torch.bfloat16 if kind == "bf16" else torch.float32)
    tok = SpeechTokenizer(model, device=device, batch_size=8)
    audio = speech(seconds)
    tok.tokenize(audio[:16000 * 4])  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    cpu0, t0 = time.process_time(), time.perf_counter()
    ids = tok.tokenize_batch([audio] * batch)
    sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    audio_seconds = seconds * batch
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"kind": kind, "batch": batch, "rtf": wall / audio_seconds,
            "cpu_rtf": cpu / torch.get_num_threads() / audio_seconds, "wall": wall,
            "peak_mb": peak / 2**20, "ids": len(ids[0]),
            "flops_per_s": encoder_flops(TokenizerConfig(), len(audio)) * batch / wall}


def agreement(seconds: float) -> None:
    audio = speech(seconds)
    golden = ROOT / "tests" / "golden" / "tokenizer"
    pairs = [("golden checkpoint", SpeechTokenizer.from_pretrained(golden),
              SpeechTokenizer.from_pretrained(golden, int8=True))]
    fp32 = full_size_model()
    int8 = quantize_linear_int8(full_size_model(), "tokenization")
    pairs.append(("full-size random", SpeechTokenizer(fp32), SpeechTokenizer(int8)))
    for name, a, b in pairs:
        x, y = a.tokenize(audio), b.tokenize(audio)
        same = sum(i == j for i, j in zip(x, y))
        print(f"int8 vs fp32 ids, {name}, {seconds:.0f} s espeak-ng speech: {same}/{len(x)} identical "
              f"({same / len(x):.2%})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--configs", default=None,
                    help="comma list of kind:batch (kinds: ref = fp32 with the reference's full-mask attention, "
                    "fp32, bf16, int8)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, batch = args.worker.split(":")
        print(json.dumps(worker(kind, int(batch), args.seconds, args.device)))
        return
    on_gpu = args.device.startswith("cuda")
    default = "ref:1,fp32:1,fp32:8,bf16:1,bf16:8" if on_gpu else "ref:1,fp32:1,fp32:8,int8:1,int8:8,bf16:1"
    configs = (args.configs or default).split(",")
    fc1 = ((1500, 1280, 5120),)  # the encoder's fc1 shape
    peaks = {"fp32": matmul_peak(args.device, torch.float32, n=4096, shapes=fc1),
             "bf16": matmul_peak(args.device, torch.bfloat16, n=1024 if not on_gpu else 8192, shapes=fc1,
                                 reps=2 if not on_gpu else 5)}
    if not on_gpu:
        peaks["int8"] = int8_peak()
    print(f"cpu: {cpu_info()}")
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, audio {args.seconds:.0f} s per input")
    print("matmul peak here: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()))
    print(f"encoder work: {encoder_flops(TokenizerConfig(), int(args.seconds * 16000)) / 1e12:.2f} TFLOP "
          f"per {args.seconds:.0f} s input")
    if "int8" in peaks:
        bound = linear_flops(TokenizerConfig(), int(args.seconds * 16000)) / peaks["int8"] / args.seconds
        print(f"int8 bound: the linear layers alone, at the int8 peak, need RTF {bound:.3f} "
              "(attention, convolutions, norms and GELU stay in fp32 and come on top)")
    print(f"{'config':<10}{'RTF wall':>10}{'RTF cpu':>10}{'peak MB':>10}{'GFLOP/s':>10}{'of peak':>9}")
    for config in configs:
        out = subprocess.run([sys.executable, __file__, "--worker", config, "--seconds", str(args.seconds),
                              "--device", args.device], capture_output=True, text=True, env=os.environ)
        if out.returncode:
            print(f"{config:<10} failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        frac = r["flops_per_s"] / peaks["fp32" if r["kind"] == "ref" else r["kind"]]
        print(f"{config:<10}{r['rtf']:>10.3f}{r['cpu_rtf']:>10.3f}{r['peak_mb']:>10.0f}"
              f"{r['flops_per_s'] / 1e9:>10.0f}{frac:>9.0%}")
    if not on_gpu:
        agreement(min(args.seconds, 60.0))


if __name__ == "__main__":
    main()
