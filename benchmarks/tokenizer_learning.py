"""How fast the from-scratch tokenizer learns to align, beside a BiGRU given the same features and targets.

    .venv/bin/python benchmarks/tokenizer_learning.py --data runs/tiny/speech/train/manifest.jsonl \
        [--roles question,answer,fact] [--steps 1000] [--models encoder,gru] [--lr 1e-3] [--config JSON] \
        [--weight-decay 0.0] [--init-std 0.0] [--ctc-weight 0.5] [--normalize] [--window N] [--distill W] [--hint W]

Both models see the same batches (`--batch-seconds` of padded audio, the
manifest's rows of `--roles`) and learn CTC over the same 12.5 Hz frames and
the same transcript BPE (500 ids): the encoder is the tiny recipe's tokenizer
(`tokenizer-tiny.json`, quantizer bypassed, CTC and decoder losses 1:1, as its
VQ warm-up trains it); the GRU is a reference recogniser (8 mel frames stacked,
a linear layer, 2 bidirectional GRU layers of 256). Prints the CPU, then every
50 steps each model's mean CTC loss per target id over those steps (a unigram
guess scores about 5), the encoder's output norm per frame (what the quantizer will
see) and its seconds so far. A slow fall of the first beside
the second says the encoder, not the data, is what takes steps.

Levers to try on the encoder: its loss's CTC share (`--ctc-weight 1`: CTC
alone, as the GRU), features standardised per mel bin (`--normalize`, an affine
map a first convolution could absorb), attention limited to nearby frames
(`--window`, a diagnostic: inference attends to all), and distillation from
the GRU trained first (`--models gru,encoder`): its CTC posteriors as per-frame
targets (`--distill W`), or its hidden states as targets of a linear map of the
encoder's pre-VQ frames (`--hint W`).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_info  # noqa: E402
from glm4voice.tokenizer.asr import TranscriptCodec, new_asr  # noqa: E402
from glm4voice.train.tokenizer import Utterances, duration_batches, labels_for  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "glm4voice" / "train" / "configs" / "tokenizer-tiny.json"


class StackedGru(nn.Module):
    """mel [B, 128, T] -> CTC logits [B, T // 8, vocab]: 8 frames (80 ms, the tokenizer's rate) per step."""

    def __init__(self, vocab: int, stack: int = 8):
        super().__init__()
        self.stack = stack
        self.inp = nn.Linear(128 * stack, 256)
        self.rnn = nn.GRU(256, 256, 2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(512, vocab)

    def hidden(self, features: torch.Tensor) -> torch.Tensor:  # [B, T // 8, 512]
        B, C, T = features.shape
        T -= T % self.stack
        x = features[:, :, :T].transpose(1, 2).reshape(B, T // self.stack, C * self.stack)
        return self.rnn(torch.relu(self.inp(x)))[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(features))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="corpus manifest (the tiny recipe's speech/train)")
    p.add_argument("--roles", default="question,answer,fact", help="rows of these roles (empty: all)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--models", default="encoder,gru")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-seconds", type=float, default=30.0)
    p.add_argument("--config", default="{}", help="JSON fields over tokenizer-tiny.json (the encoder)")
    p.add_argument("--ctc-weight", type=float, default=0.5,
                   help="the encoder's loss: this share CTC, the rest its decoder's (1: CTC alone, as the GRU)")
    p.add_argument("--distill", type=float, default=0.0,
                   help="with --models gru,encoder: the encoder's loss adds this weight times the KL divergence "
                        "from the trained GRU's CTC posteriors, frame by frame (a teacher's alignment)")
    p.add_argument("--normalize", action="store_true",
                   help="the encoder's features standardised per mel bin by the corpus's mean and spread (measured "
                        "on 40 batches): a fixed affine map that folds into its first convolution")
    p.add_argument("--hint", type=float, default=0.0,
                   help="with --models gru,encoder: the encoder's loss adds this weight times the squared error of "
                        "a linear map of its pre-VQ frames to the trained GRU's (normalised) hidden states")
    p.add_argument("--window", type=int, default=0,
                   help="diagnostic: the encoder's attention limited to keys within this many frames (0: all)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's, for both models")
    p.add_argument("--init-std", type=float, default=0.0,
                   help="the encoder's linear and conv weights drawn N(0, std), biases 0, as transformers' Whisper "
                        "initialises (0: PyTorch's defaults, what the trainer does)")  # fmt: skip
    args = p.parse_args()
    if not Path(args.data).is_file():
        p.error(f"no manifest at {args.data} (the tiny recipe's speech stage writes one: runs/tiny/speech/train)")
    if (args.distill or args.hint) and args.models.split(",")[:2] != ["gru", "encoder"]:
        p.error("--distill and --hint need --models gru,encoder (the GRU trains first and teaches)")
    print(cpu_info(), flush=True)
    torch.manual_seed(0)
    rows = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines()]
    roles = set(filter(None, args.roles.split(",")))
    picked = Path("/tmp") / f"tokenizer_learning_{abs(hash((args.data, args.roles)))}.jsonl"
    base = Path(args.data).parent
    picked.write_text("".join(json.dumps({**r, "audio": str(base / r["audio"])}, ensure_ascii=False) + "\n"
                              for r in rows if not roles or r.get("role") in roles))  # fmt: skip
    data = Utterances(picked, "training")
    codec = TranscriptCodec.train((r.text for r in data.rows), 500)
    groups = duration_batches(data.seconds(), args.batch_seconds)
    order = random.Random(0).choices(range(len(groups)), k=args.steps)
    print(json.dumps({"utterances": len(data), "hours": round(sum(data.seconds()) / 3600, 2),
                      "batches": len(groups)}), flush=True)  # fmt: skip
    teacher, shift, scale = None, 0.0, 1.0
    if args.window:
        import glm4voice.tokenizer.network as network

        def banded(q, k, v, key_mask, block):  # every query sees the real keys within `window` frames
            B, H, T, hd = q.shape
            near = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).abs() <= args.window
            mask = near[None, None] & key_mask[:, None, None, :]
            return nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, T, -1)

        network.block_causal_attention = banded
    if args.normalize:
        frames = []
        for g in order[:40]:
            f, m = data.features(groups[g], "cpu")
            frames.append(f.transpose(1, 2)[m])  # [frames, 128]
        frames = torch.cat(frames)
        shift, scale = frames.mean(0)[:, None], frames.std(0)[:, None] + 1e-5  # [128, 1]
        print(json.dumps({"feature_mean": round(float(frames.mean()), 3), "bin_means": [
            round(float(x), 2) for x in shift[::16, 0]], "bin_spreads": [round(float(x), 2) for x in scale[::16, 0]]}))
    for kind in args.models.split(","):
        config = {**json.loads(CONFIG.read_text()), "inter_ctc_weight": 0.0, **json.loads(args.config)}
        if not config["inter_ctc_weight"]:  # this measures the final CTC head and the decoder: no intermediate one
            config.pop("inter_ctc_targets", None)
        model = new_asr(config, codec) if kind == "encoder" else StackedGru(codec.vocab_size)
        if kind == "encoder" and args.init_std > 0:
            for module in [*model.encoder.modules(), *model.post_layers.modules()]:
                if isinstance(module, nn.Linear | nn.Conv1d):
                    nn.init.normal_(module.weight, std=args.init_std)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        probe = nn.Linear(config["d_model"], 512) if kind == "encoder" and args.hint else None
        params = [*model.parameters(), *(probe.parameters() if probe is not None else [])]
        opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)
        losses, start = [], time.perf_counter()
        for step, g in enumerate(order):
            for group in opt.param_groups:
                group["lr"] = args.lr * min(1.0, (step + 1) / 100)
            features, mask = data.features(groups[g], "cpu")
            seqs = [codec.encode(data.rows[i].text, data.rows[i].lang) for i in groups[g]]
            bodies = [s[len(codec.task) + 2 : -1] for s in seqs]
            if kind == "encoder":
                raw, features = features, (features - shift) / scale  # the GRU teacher learnt on raw features
                encoded, m, _, hidden = model.encode(features, mask, bypass=True)
                ctc = model.ctc_loss(encoded, m, bodies, codec.eot)
                loss = args.ctc_weight * ctc
                if teacher is not None and args.distill > 0:  # per 12.5 Hz frame: KL(teacher || encoder)
                    with torch.no_grad():
                        target = torch.log_softmax(teacher(raw), -1)
                    n = min(target.shape[1], encoded.shape[1])
                    student = torch.log_softmax(model.ctc_head(encoded[:, :n]).float(), -1)
                    kl = (target[:, :n].exp() * (target[:, :n] - student)).sum(-1)
                    loss = loss + args.distill * kl[m[:, :n]].mean()
                if teacher is not None and probe is not None:  # per 12.5 Hz frame: the teacher's hidden states
                    with torch.no_grad():
                        target = nn.functional.layer_norm(teacher.hidden(raw), (512,))
                    n = min(target.shape[1], hidden.shape[1])
                    error = ((probe(hidden[:, :n]) - target[:, :n]) ** 2).mean(-1)
                    loss = loss + args.hint * error[m[:, :n]].mean()
                if args.ctc_weight < 1:
                    inputs, labels = labels_for(codec, [data.rows[i] for i in groups[g]], "cpu")
                    logits = model.logits(encoded, inputs, m).flatten(0, 1)
                    loss = loss + (1 - args.ctc_weight) * nn.functional.cross_entropy(logits, labels.flatten())
            else:
                log_probs = torch.log_softmax(model(features), -1).transpose(0, 1)
                frames = mask[:, :: model.stack][:, : log_probs.shape[0]].sum(1)
                targets = torch.tensor([i for b in bodies for i in b])
                ctc = loss = nn.functional.ctc_loss(log_probs, targets, frames, torch.tensor([len(b) for b in bodies]),
                                                    blank=codec.eot, zero_infinity=True)  # fmt: skip
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(ctc.item())
            if (step + 1) % 50 == 0:
                norm = None
                if kind == "encoder":  # the pre-VQ output's size per frame: what the quantizer will see
                    with torch.no_grad():
                        norm = round(float(model.encoder.encode(features, mask)[0][m].norm(dim=-1).mean()), 1)
                print(json.dumps({"model": kind, "step": step + 1, "ctc_loss": round(sum(losses[-50:]) / 50, 3),
                                  "encoder_output_norm": norm, "seconds": round(time.perf_counter() - start)}),
                      flush=True)  # fmt: skip
        if kind == "gru":
            teacher = model.eval()


if __name__ == "__main__":
    main()
