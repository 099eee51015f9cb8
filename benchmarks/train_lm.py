"""Speech LM training throughput: tokens per second and model-FLOPs utilisation (MFU).

    .venv/bin/python benchmarks/train_lm.py [--configs small,mid] [--seq 512] [--batch 4] [--steps 3] [--bf16]

For each configuration (random weights, transformers' GlmForCausalLM as `train-lm` trains it; `small`: the
size the tiny recipe trains on this CPU, `mid`: 12 layers of 768) it times whole training steps (forward,
backward, AdamW) on packed sequences of random ids, and reports tokens/s and MFU: the model's FLOPs per
token (6 x parameters outside the embedding, plus attention: 12 x layers x width x sequence / 2 for causal)
times tokens/s, over the fp32 matmul peak measured in the same run; torch's FLOP counter's own count is
printed beside it. `--bf16` times each config a second time under bf16 autocast (fp32 master weights: what
`mixed_precision = "bf16"` does in one process) beside the fp32 run. Prints the CPU model and flags first,
then one JSON line per config and precision.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_info, print_against_peak, time_steps  # noqa: E402

CONFIGS = {
    "small": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 6144},
    "mid": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
            "num_key_value_heads": 4, "head_dim": 64, "vocab_size": 21504},
}  # fmt: skip


def run(name: str, args, bf16: bool = False) -> dict:
    import contextlib

    from transformers import GlmConfig, GlmForCausalLM

    torch.manual_seed(0)
    cfg = GlmConfig(**CONFIGS[name], max_position_embeddings=max(args.seq, 2048), pad_token_id=0)
    model = GlmForCausalLM(cfg).to(args.device).train()
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=args.device)
    positions = torch.arange(args.seq, device=args.device).expand(args.batch, -1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast(args.device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = model(input_ids=ids, labels=ids, position_ids=positions, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    best, flops = time_steps(step, args.steps, args.device)
    tokens = args.batch * args.seq
    params = sum(p.numel() for p in model.parameters())
    dense = params - model.model.embed_tokens.weight.numel()
    per_token = 6 * dense + 12 * cfg.num_hidden_layers * cfg.hidden_size * args.seq / 2
    return {"config": name, "precision": "bf16" if bf16 else "fp32", "params_M": round(params / 1e6, 1),
            "tokens_per_step": tokens, "step_s": round(best, 3),
            "tokens_per_s": round(tokens / best, 1), "model_gflop_per_token": round(per_token / 1e9, 4),
            "model_gflop_s": round(per_token * tokens / best / 1e9, 1),
            "counted_gflop_s": round(flops / best / 1e9, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="small,mid")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="also time each config under bf16 autocast")
    args = parser.parse_args()
    print(f"cpu: {cpu_info()}; sequence {args.seq}, batch {args.batch}")
    results = [run(name, args, bf16) for name in args.configs.split(",") for bf16 in (False, True)[:1 + args.bf16]]
    print_against_peak(results, args.device, "model_gflop_s", "mfu")

if __name__ == "__main__":
    main()
