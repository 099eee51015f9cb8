"""Training commands: `train-sft`. Every trainer takes the shared run options (`RunConfig`) the same way."""

from __future__ import annotations

import os
import sys
from dataclasses import fields

from .common import add_command


def add_run_options(p, defaults) -> None:
    """One flag per `RunConfig` field, with the trainer's defaults."""
    from ..train.config import RunConfig

    for f in fields(RunConfig):
        flag, value = "--" + f.name.replace("_", "-"), getattr(defaults, f.name)
        if f.name == "mixed_precision":
            p.add_argument(flag, choices=["none", "bf16"], default=value,
                           help="bf16: compute in bf16 with fp32 master weights")  # fmt: skip
        elif f.name == "gradient_checkpointing":
            p.add_argument(flag, action="store_true", help="recompute activations in backward: less memory, more time")
        else:
            p.add_argument(flag, type=type(value), default=value)
    p.add_argument("--resume", help="continue from OUT/step-N (its weights, optimizer and step)")


def run_config(args):
    from ..train.config import RunConfig

    return RunConfig(**{f.name: getattr(args, f.name) for f in fields(RunConfig)})


def _add_train_sft(sub) -> None:
    from ..train.sft import sft_defaults

    p = add_command(sub, "train-sft", "streaming-thoughts fine-tuning of the speech LM (torchrun: FSDP)", _run_sft)
    p.add_argument("--lm", required=True, help="LM folder to start from (either layout)")
    p.add_argument("--data", required=True, help="JSONL manifest: question, answer_text, answer_codes per line")
    p.add_argument("--out", required=True, help="run folder: checkpoints land in OUT/step-N/")
    p.add_argument("--max-length", type=int, default=8192, help="ids per sample; a longer one is an error")
    add_run_options(p, sft_defaults())


def _run_sft(args) -> int:
    from ..train.loop import finished
    from ..train.sft import train_sft

    cfg = run_config(args)
    records = train_sft(args.lm, args.data, args.out, cfg, max_length=args.max_length, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"glm4voice train-sft: {finished(records)}; checkpoint {args.out}/step-{cfg.steps}", file=sys.stderr)
    return 0


def add(sub) -> None:
    _add_train_sft(sub)
