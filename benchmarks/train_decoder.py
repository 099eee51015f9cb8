"""Speech decoder training throughput: steps/s, seconds of audio trained per second, and the share of the peak.

    .venv/bin/python benchmarks/train_decoder.py [--configs tiny,full] [--stages flow,hift,hift+gan] [--steps 3]
        [--precisions none,bf16]

For each decoder size (random weights; `tiny`: the packaged config the tiny recipe trains on this CPU,
`full`: the released glm-4-voice-decoder's sizes) and each stage (`flow`: the flow-matching loss on
crops of --crop-codes codes; `hift`: the vocoder's generator losses on crops of --crop-frames mel frames;
`hift+gan`: with the discriminators and their losses), it times whole training steps (forward, backward,
AdamW) on the trainers' own loss modules, counts one step's FLOPs with torch's FLOP counter, and measures
the fp32 matmul peak of this machine in the same run (`of_peak`; a bf16 row's share is of that fp32 peak too),
in float32 and, with `--precisions none,bf16`, under the trainers' bf16 autocast. The inputs are random (a
step's work does not depend on the values). Prints the CPU model and flags first, then one JSON line per
(size, stage, precision).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_info, print_against_peak, time_steps  # noqa: E402
from glm4voice.decoder.config import DecoderConfig, FlowConfig, HiftConfig, read_config  # noqa: E402
from glm4voice.decoder.flow import FlowModel  # noqa: E402
from glm4voice.decoder.hift import HiFT  # noqa: E402
from glm4voice.train.decoder import FlowLoss, sample_conditions  # noqa: E402
from glm4voice.train.discriminators import Discriminators  # noqa: E402
from glm4voice.train.vocoder import VocoderLoss  # noqa: E402


def config(name: str) -> DecoderConfig:
    if name == "tiny":
        return read_config(ROOT / "glm4voice" / "train" / "configs" / "decoder-tiny.yaml")
    return DecoderConfig(FlowConfig(), HiftConfig())  # the defaults are the released sizes


def stage_step(cfg: DecoderConfig, stage: str, batch: int, crop_codes: int, crop_frames: int, device: str,
               precision: str = "none"):
    """(one training step as a function, seconds of audio it trains on); `precision` bf16: the forward under
    autocast, fp32 weights, as the training loop's `mixed_precision` runs it."""
    torch.manual_seed(0)
    rate = cfg.hift.sampling_rate / cfg.hift.samples_per_frame  # mel frames per second
    if stage == "flow":
        flow = FlowModel(cfg.flow).to(device).train()
        model = FlowLoss(flow)
        frames = round(crop_codes * rate / cfg.flow.input_frame_rate)
        codes = torch.randint(0, cfg.flow.vocab_size, (batch, crop_codes), device=device)
        mel = torch.randn(batch, 80, frames, device=device)

        def loss():
            return model(codes, mel, *sample_conditions(flow, batch, frames, device))[0]  # (flow, prior) terms

        seconds = batch * frames / rate
    else:
        hift = HiFT(cfg.hift).to(device).train()
        gan = stage == "hift+gan"
        model = VocoderLoss(hift, Discriminators(cfg.hift.base_channels / 512).to(device) if gan else None)
        mel = torch.randn(batch, 80, crop_frames, device=device)
        f0 = torch.full((batch, crop_frames), 150.0, device=device)
        audio = 0.1 * torch.randn(batch, crop_frames * cfg.hift.samples_per_frame, device=device)

        def loss():
            return model(mel, f0, audio, gan)[0]

        seconds = batch * crop_frames / rate
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            value = loss()
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step.model = model  # what the step trains (tests/benchmarks check that it does)
    return step, seconds, sum(p.numel() for p in model.parameters())


def run(name: str, stage: str, precision: str, args) -> dict:
    step, seconds, params = stage_step(config(name), stage, args.batch_size, args.crop_codes, args.crop_frames,
                                       args.device, precision)  # fmt: skip
    best, flops = time_steps(step, args.steps, args.device)
    return {"config": name, "stage": stage, "precision": precision, "params_M": round(params / 1e6, 2),
            "audio_s_per_step": round(seconds, 2),
            "step_s": round(best, 3), "steps_per_s": round(1 / best, 3), "audio_s_per_s": round(seconds / best, 2),
            "gflop_per_step": round(flops / 1e9, 1), "gflop_s": round(flops / best / 1e9, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,full")
    parser.add_argument("--stages", default="flow,hift,hift+gan")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop-codes", type=int, default=40)
    parser.add_argument("--crop-frames", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="none", help="none, bf16 or none,bf16 (bf16: autocast)")
    args = parser.parse_args()
    print(f"cpu: {cpu_info()}")
    precisions = args.precisions.split(",")
    if any(p not in ("none", "bf16") for p in precisions):
        parser.error(f"--precisions: none and/or bf16, got {args.precisions!r}")
    results = [run(name, stage, precision, args) for name in args.configs.split(",")
               for stage in args.stages.split(",") for precision in precisions]  # fmt: skip
    print_against_peak(results, args.device, "gflop_s", "of_peak")

if __name__ == "__main__":
    main()
