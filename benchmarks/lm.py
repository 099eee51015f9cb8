"""Speech LM decode speed at batch 1: glm4voice's decode loop vs plain `model.generate`.

A random-weight GLM (transformers `GlmForCausalLM`) of a mid-size shape runs
the same prompt through both; each reports decode tokens/s, measured as
(N - 1) / (time for N new tokens - time for 1 new token), so the prompt pass
cancels out. Greedy (both must give the same ids) and the reference's sampling
settings (temperature 0.2, top_p 0.8, top_k 50). Runs alternate and the best of
`--repeats` counts (the machine may be shared). Process CPU time per token is
printed too: it is steadier than wall time under contention.

    .venv/bin/python benchmarks/lm.py                         # CPU, hidden 1024, 8 layers, vocab 168960
    .venv/bin/python benchmarks/lm.py --layers 4 --new 64     # quicker
    .venv/bin/python benchmarks/lm.py --full --device cuda --dtype bfloat16   # the 9B shape (GPU)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glm4voice.lm.generate import Sampler, SamplingConfig, sample_ids  # noqa: E402

FULL = dict(hidden=4096, layers=40, heads=32, kv_heads=2, head_dim=128, ffn=13696, vocab=168960)


def build(args):
    from transformers import GlmConfig, GlmForCausalLM

    head_dim = args.hidden // args.heads
    shape = FULL if args.full else dict(
        hidden=args.hidden, layers=args.layers, heads=args.heads, kv_heads=2, head_dim=head_dim,
        ffn=args.ffn, vocab=args.vocab,
    )  # fmt: skip
    config = GlmConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["ffn"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        head_dim=shape["head_dim"],
        pad_token_id=None,
        eos_token_id=None,  # never stop early: both sides generate exactly N tokens
    )
    config._attn_implementation = "sdpa"
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = GlmForCausalLM(config).to(dtype).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = None
    n_params = sum(p.numel() for p in model.parameters())
    return model, shape, n_params


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run_ours(model, prompt, n, cfg):
    from transformers import DynamicCache

    sampler = Sampler(SamplingConfig(**{**cfg, "max_new_tokens": n}), device=model.device)
    return list(sample_ids(model, prompt[0].tolist(), DynamicCache(config=model.config), sampler, n, ()))


def run_generate(model, prompt, n, cfg):
    kwargs = dict(max_new_tokens=n, min_new_tokens=0, pad_token_id=0)
    if cfg["temperature"] == 0:
        kwargs.update(do_sample=False)
    else:
        kwargs.update(do_sample=True, temperature=cfg["temperature"], top_p=cfg["top_p"], top_k=cfg["top_k"])
    with torch.inference_mode():
        out = model.generate(prompt, **kwargs)
    return out[0, prompt.shape[1] :].tolist()


def timed(fn, device, *args):
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--ffn", type=int, default=2816)
    p.add_argument("--vocab", type=int, default=168960, help="the release's padded vocabulary")
    p.add_argument("--full", action="store_true", help="the 9B shape (40 x 4096, ffn 13696): GPU only")
    p.add_argument("--prompt", type=int, default=64, help="prompt length")
    p.add_argument("--new", type=int, default=128, help="new tokens per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    args = p.parse_args()

    model, shape, n_params = build(args)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, shape["vocab"], (1, args.prompt), generator=g).to(args.device)
    settings = {
        "greedy": dict(temperature=0.0, top_p=1.0, top_k=50, seed=0),
        "sample (T 0.2, top_p 0.8, top_k 50)": dict(temperature=0.2, top_p=0.8, top_k=50, seed=0),
    }
    runners = {"glm4voice loop": run_ours, "model.generate": run_generate}
    results = {}
    for name, cfg in settings.items():
        best = {r: [float("inf"), float("inf")] for r in runners}
        ids = {}
        for fn in runners.values():  # warm-up
            fn(model, prompt, 2, cfg)
        for _ in range(args.repeats):
            for r, fn in runners.items():
                w1, c1, _ = timed(fn, args.device, model, prompt, 1, cfg)
                wn, cn, out = timed(fn, args.device, model, prompt, args.new, cfg)
                ids[r] = out
                n = args.new - 1
                best[r][0] = min(best[r][0], (wn - w1) / n)
                best[r][1] = min(best[r][1], (cn - c1) / n)
        same = ids["glm4voice loop"] == ids["model.generate"] if cfg["temperature"] == 0 else None
        results[name] = {r: {"tok_s": 1 / w, "cpu_ms_per_tok": c * 1e3} for r, (w, c) in best.items()}
        results[name]["speedup"] = best["model.generate"][0] / best["glm4voice loop"][0]
        results[name]["same_ids"] = same

    info = {
        "device": args.device,
        "dtype": args.dtype,
        "shape": shape,
        "params_M": round(n_params / 1e6, 1),
        "threads": torch.get_num_threads(),
        "prompt": args.prompt,
        "new_tokens": args.new,
        "results": results,
    }
    if args.json:
        print(json.dumps(info))
        return
    print(
        f"GLM {shape['layers']} x {shape['hidden']} (ffn {shape['ffn']}, vocab {shape['vocab']}), "
        f"{info['params_M']} M params, {args.dtype} on {args.device} ({info['threads']} threads); "
        f"prompt {args.prompt}, {args.new} new tokens, best of {args.repeats}"
    )
    for name, res in results.items():
        print(f"  {name}:")
        for r in runners:
            print(f"    {r:<16} {res[r]['tok_s']:8.1f} tok/s   {res[r]['cpu_ms_per_tok']:7.1f} ms CPU/token")
        extra = "" if res["same_ids"] is None else f"   same ids: {res['same_ids']}"
        print(f"    speedup          {res['speedup']:8.2f}x{extra}")


if __name__ == "__main__":
    main()
