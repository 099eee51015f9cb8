"""Speech tokenizer training throughput: seconds of audio trained per second, and the share of the matmul peak.

    .venv/bin/python benchmarks/train_tokenizer.py [--configs tiny,small] [--steps 3] [--device cuda]

For each configuration (random weights; `tiny`: the size the tiny recipe trains
on this CPU, `small`: whisper-small's shape, 12 + 12 layers of width 768) it
times full training steps (forward, backward, AdamW, EMA codebook update) on a
batch of real espeak-ng speech with transcripts, counts the step's FLOPs with
torch's FLOP counter, and measures the fp32 matmul peak of this machine in the
same run. Prints the CPU model and flags first, then one JSON line per config.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_info, print_against_peak, time_steps  # noqa: E402
from glm4voice.audio import load_audio, whisper_log_mel  # noqa: E402
from glm4voice.tokenizer.asr import TranscriptCodec, new_asr  # noqa: E402

CONFIGS = {
    "tiny": {"d_model": 256, "encoder_layers": 6, "quantize_position": 4, "pooling_position": 4,
             "encoder_attention_heads": 4, "encoder_ffn_dim": 1024, "decoder_layers": 2, "decoder_attention_heads": 4,
             "decoder_ffn_dim": 1024, "quantize_vocab_size": 1024},
    "small": {"d_model": 768, "encoder_layers": 12, "quantize_position": 6, "pooling_position": 6,
              "encoder_attention_heads": 12, "encoder_ffn_dim": 3072, "decoder_layers": 12,
              "decoder_attention_heads": 12, "decoder_ffn_dim": 3072, "quantize_vocab_size": 4096},
}  # fmt: skip
TEXTS = ["The quick brown fox jumps over the lazy dog near the river bank.",
         "A stitch in time saves nine, and an apple a day keeps the doctor away.",
         "Speech tokens arrive twelve and a half times every second.",
         "Every good boy deserves fudge, said the music teacher once again."]  # fmt: skip


def batch(device: str):
    waves = []
    for text in TEXTS:
        wav = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", text], check=True, capture_output=True).stdout
        waves.append(load_audio(wav))
    features, mask = whisper_log_mel(waves, device=device)
    return waves, features, mask


def run(name: str, steps: int, device: str) -> dict:
    waves, features, mask = batch(device)
    codec = TranscriptCodec.train(TEXTS * 4, 400)
    torch.manual_seed(0)
    model = new_asr({**CONFIGS[name], "num_mel_bins": 128}, codec).to(device).train()
    seqs = [codec.encode(t, "en") for t in TEXTS]
    longest = max(len(s) for s in seqs) - 1
    inputs = torch.full((len(seqs), longest), codec.eot, dtype=torch.long)
    labels = torch.full((len(seqs), longest), -100, dtype=torch.long)
    for row, s in enumerate(seqs):
        inputs[row, : len(s) - 1], labels[row, : len(s) - 1] = torch.tensor(s[:-1]), torch.tensor(s[1:])
    inputs, labels = inputs.to(device), labels.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        encoded, m, vq, _ = model.encode(features, mask, update=True)
        logits = model.logits(encoded, inputs, m)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()) + vq.loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    best, flops = time_steps(step, steps, device)
    audio = sum(len(w) for w in waves) / 16000
    params = sum(p.numel() for p in model.parameters())
    return {"config": name, "params_M": round(params / 1e6, 1), "audio_s_per_step": round(audio, 2),
            "step_s": round(best, 3), "audio_s_per_s": round(audio / best, 2), "gflop_per_step": round(flops / 1e9, 1),
            "gflop_s": round(flops / best / 1e9, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,small")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"cpu: {cpu_info()}")
    results = [run(name, args.steps, args.device) for name in args.configs.split(",")]
    print_against_peak(results, args.device, "gflop_s", "of_peak")

if __name__ == "__main__":
    main()
