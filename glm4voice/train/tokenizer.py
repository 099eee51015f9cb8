"""Train the supervised speech tokenizer: Whisper ASR through a 12.5 Hz VQ bottleneck (SPEC §1).

    glm4voice train-tokenizer --init openai/whisper-large-v3 --data train.jsonl --valid dev.jsonl --out runs/tok
    glm4voice train-tokenizer --config tiny.json --data train.jsonl --out runs/tok      # from scratch
    torchrun --nproc_per_node 8 -m glm4voice train-tokenizer ...                         # FSDP, EMA all-reduced

Three starts: `--init` a transformers Whisper folder (its tokenizer gives the
transcript ids; `--config` may set the VQ fields, e.g. quantize_position), or
`--init` one of this trainer's own checkpoints (fine-tuning), or `--config` alone:
a model from scratch whose transcript tokenizer is a byte-level BPE trained on
the manifest's transcripts. Data is the corpus manifest (`data.manifest`),
batched by duration. Every micro-batch is one EMA step of the codebook; every
`quantize_restart_interval` of them, dead codes restart. A fresh codebook starts
at random frames of the first batch. Validation (greedy transcription through
the quantized bottleneck: WER for English, CER for Mandarin, codebook usage)
runs every `--eval-every` steps. Checkpoints `OUT/step-N` are the ASR-training
layout; at the end `OUT/tokenizer` gets the released layout too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..errors import Glm4VoiceError
from .config import RunConfig
from .dist import Dist, shard
from .loop import Task, open_run, train
from .schedule import batch_indices

MAX_SECONDS = 30.0  # one encoder pass


def duration_batches(seconds: list[float], budget: float) -> list[list[int]]:
    """Indices grouped by length so each group's padded audio (longest x size) stays within `budget` seconds."""
    order = sorted(range(len(seconds)), key=lambda i: (seconds[i], i))
    groups: list[list[int]] = []
    for i in order:
        if groups and seconds[i] * (len(groups[-1]) + 1) <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


class Utterances:
    """A manifest's speech and transcripts, loaded once; features exactly as inference computes them."""

    def __init__(self, path: str | os.PathLike, what: str, max_seconds: float = MAX_SECONDS):
        from ..audio import load_audio
        from ..data.manifest import read_manifest

        self.rows, self.waves, skipped = [], [], 0
        for row in read_manifest(path):
            if not row.text or row.lang not in ("en", "zh"):
                raise Glm4VoiceError(f"{path}: utterance {row.id!r} needs a text and lang en or zh for ASR training")
            wave = load_audio(row.audio)
            if len(wave) > max_seconds * 16000:
                skipped += 1
                continue
            self.rows.append(row)
            self.waves.append(wave)
        if not self.rows:
            raise Glm4VoiceError(f"{path}: no utterances of at most {max_seconds:g} s for the {what} set")
        self.skipped = skipped

    def __len__(self) -> int:
        return len(self.rows)

    def drop_long_transcripts(self, codec, limit: int) -> int:
        """Drop utterances whose transcript is too long for the decoder's positions; returns how many."""
        keep = [i for i, r in enumerate(self.rows) if len(codec.encode(r.text, r.lang)) <= limit]
        self.dropped = len(self.rows) - len(keep)
        self.rows, self.waves = [self.rows[i] for i in keep], [self.waves[i] for i in keep]
        if not self.rows:
            raise Glm4VoiceError(f"every transcript is longer than the decoder's {limit} positions")
        return self.dropped

    def seconds(self) -> list[float]:
        return [len(w) / 16000 for w in self.waves]

    def features(self, picked: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        from ..audio import whisper_log_mel

        return whisper_log_mel([self.waves[i] for i in picked], device=device)


def spec_augment(features: torch.Tensor, mask: torch.Tensor, seed: int) -> torch.Tensor:
    """SpecAugment on log-mel features [B, 128, T] (mask [B, T] marks real frames): per utterance two frequency
    masks of up to 27 bins and one time mask of up to 10 frames (0.1 s) per second of speech, set to 0 (the
    middle of Whisper's normalised range). Pure in `seed`, so a resumed run masks the same frames. It makes a
    small ASR model listen rather than recite a small corpus's sentences."""
    gen = torch.Generator().manual_seed(seed)
    out = features.clone()
    bins = features.shape[1]
    for b in range(features.shape[0]):
        frames = int(mask[b].sum())
        for _ in range(2):
            width = int(torch.randint(0, 28, (), generator=gen))
            start = int(torch.randint(0, bins - width + 1, (), generator=gen))
            out[b, start : start + width, :frames] = 0.0
        for _ in range(max(1, frames // 100)):
            width = min(int(torch.randint(0, 11, (), generator=gen)), frames)
            start = int(torch.randint(0, frames - width + 1, (), generator=gen))
            out[b, :, start : start + width] = 0.0
    return out


def labels_for(codec, rows, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoder input ids, labels) [B, L]: the transcript shifted by one, labels -100 on padding."""
    seqs = [codec.encode(r.text, r.lang) for r in rows]
    longest = max(len(s) for s in seqs) - 1
    inputs = torch.full((len(seqs), longest), codec.eot, dtype=torch.long)
    labels = torch.full((len(seqs), longest), -100, dtype=torch.long)
    for row, s in enumerate(seqs):
        inputs[row, : len(s) - 1] = torch.tensor(s[:-1])
        labels[row, : len(s) - 1] = torch.tensor(s[1:])
    return inputs.to(device), labels.to(device)


def error_rates(model, codec, data: Utterances, device, batch: int = 8, rank: int = 0, world: int = 1,
                bypass: bool = False) -> dict:  # fmt: skip
    """WER (en) and CER (zh) of greedy transcripts (from each row's language and task tokens, as in training),
    how often the decoder would have named the language itself (`lang_accuracy`), and codebook usage, over
    `data` (ranks share it); with a CTC head, also those of its greedy transcripts (`ctc_wer_en`, `ctc_cer_zh`:
    the encoder's own hearing), and with an intermediate one, its own (`inter_ctc_wer_en`, `inter_ctc_cer_zh`:
    what the 50 Hz states hear); a head on phonemes is scored by phoneme error rate instead (`ctc_per_en`,
    `inter_ctc_per_zh`, ...).

    `bypass` (the VQ warm-up): transcripts of the unquantized encoder, and no codebook usage (no codebook yet)."""
    from ..scoring import errors, symbol_errors

    ctc, inter = model.ctc_head is not None, model.inter_ctc_head is not None
    phonemic = {0: False, 4: model.phonemic, 8: model.inter_phonemic}  # which transcripts are phonemes
    # en errors, en words, zh errors, zh chars; then the same for the CTC and the intermediate CTC transcripts;
    # then languages guessed right, rows
    totals = torch.zeros(14, dtype=torch.float64, device=device)
    counts = torch.zeros(model.vq.size, dtype=torch.float64, device=device)  # codes over the validation frames
    mine = list(range(rank, len(data), world))
    rounds = -(-len(data) // world)  # every rank runs as many batches (FSDP), repeating its last if short
    for start in range(0, rounds, batch):
        picked = [mine[min(k, len(mine) - 1)] for k in range(start, min(start + batch, rounds))] if mine else [0]
        real = [k < len(mine) for k in range(start, min(start + batch, rounds))]
        features, mask = data.features(picked, device)
        pre_pool = [] if inter else None
        encoded, m, _, h = model.encode(features, mask, bypass=bypass, pre_pool=pre_pool)  # h: codebook usage
        langs = [data.rows[k].lang for k in picked]  # given to the decoder: a transcript, not a language guess
        hyps = model.greedy_ids(encoded, m, codec, langs=langs)  # one encoder pass: the decoder and both CTC heads
        sot = torch.full((len(picked), 1), codec.sot, dtype=torch.long, device=device)
        guessed = model.logits(encoded, sot, m)[:, -1].argmax(-1).tolist()  # the language it would have said
        ctc_hyps = model.ctc_ids(encoded, m, model.blank(codec.eot)) if ctc else None
        inter_hyps = model.inter_ctc_ids(pre_pool, model.inter_blank(codec.eot)) if inter else None
        for i, keep in zip(range(len(picked)), real):
            if not keep:
                continue
            row = data.rows[picked[i]]
            totals[12] += guessed[i] == codec.lang_id(row.lang)
            totals[13] += 1
            sounds = phoneme_targets(model, [row])[0] if any(phonemic.values()) else None  # once for both
            if not bypass:
                counts += torch.bincount(model.vq.nearest(h[i][m[i]]), minlength=model.vq.size).to(counts)
            for offset, hyps_of in ((0, hyps), (4, ctc_hyps), (8, inter_hyps)):
                hyp = hyps_of[i] if hyps_of else None
                if hyp is not None:
                    if phonemic[offset]:  # phoneme errors over phoneme counts
                        wrong, n = symbol_errors(sounds, hyp)
                    else:
                        wrong, n = errors(row.text, codec.decode(hyp), row.lang)
                    totals[offset + (0 if row.lang == "en" else 2)] += wrong
                    totals[offset + (1 if row.lang == "en" else 3)] += n
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # on the device: NCCL reduces nothing on the CPU
        dist.all_reduce(totals)
        dist.all_reduce(counts)
    totals = totals.cpu()
    p = counts / counts.sum().clamp(min=1)
    perplexity = float(torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum()))
    if bypass:
        out = {"vq_bypassed": True}
    else:
        out = {"codes_used": round(float((counts > 0).double().mean()), 4), "code_perplexity": round(perplexity, 2)}
    if totals[13]:
        out["lang_accuracy"] = round(float(totals[12] / totals[13]), 4)
    for prefix, offset in (("", 0), ("ctc_", 4), ("inter_ctc_", 8)):
        en, zh = ("per_en", "per_zh") if phonemic[offset] else ("wer_en", "cer_zh")
        if totals[offset + 1]:
            out[f"{prefix}{en}"] = round(float(totals[offset] / totals[offset + 1]), 4)
        if totals[offset + 3]:
            out[f"{prefix}{zh}"] = round(float(totals[offset + 2] / totals[offset + 3]), 4)
    return out


def phoneme_targets(model, rows) -> list[list[int]]:
    """Rows' phonemes as the phonemic head's classes (1.., blank 0); symbols outside its inventory dropped."""
    from ..data.phonemes import phonemes
    from ..tokenizer.asr import PHONEMES_FIELD

    index = {p: i + 1 for i, p in enumerate(model.config[PHONEMES_FIELD])}
    return [[index[p] for p in phonemes(r.text, r.lang) if p in index] for r in rows]


def train_tokenizer(data: str | os.PathLike, out: str | os.PathLike, cfg: RunConfig, *, init=None, config=None,
                    valid=None, eval_every: int = 0, batch_seconds: float = 60.0, vocab_size: int = 1000,
                    vq_warmup: int = 0, spec_augment_on: bool = False, label_smoothing: float = 0.0,
                    max_seconds: float = MAX_SECONDS, resume=None, log=None) -> list[dict]:  # fmt: skip
    """Train; returns the logged records. `config`: a JSON file (from scratch, or VQ fields for a Whisper start).

    `max_seconds`: longer training utterances are skipped (30 s, one encoder pass, at most). A small model from
    scratch learns to align sooner from short sentences than from long documents.

    `vq_warmup`: steps in which the hidden states bypass the quantizer, before the codebook starts at random
    frames of the then trained encoder (for a model from scratch, whose first features are all alike: a codebook
    started on them collapses to a few codes).
    """
    from ..data.phonemes import inventory
    from ..tokenizer.asr import (
        INTER_TARGETS_FIELD,
        PHONEMES_FIELD,
        TARGETS_FIELD,
        TranscriptCodec,
        load_asr,
        new_asr,
        write_asr_folder,
    )

    if init is None and config is None and resume is None:
        raise Glm4VoiceError("give --init (a Whisper or tokenizer folder), --config (from scratch) or --resume")
    if not 0 < max_seconds <= MAX_SECONDS:
        raise Glm4VoiceError(f"--max-seconds must lie in (0, {MAX_SECONDS:g}], not {max_seconds}")
    if batch_seconds <= 0 or eval_every < 0 or vq_warmup < 0:
        raise Glm4VoiceError("--batch-seconds must be positive, --eval-every and --vq-warmup-steps >= 0")
    if not 0.0 <= label_smoothing < 1.0:
        raise Glm4VoiceError(f"--label-smoothing must lie in [0, 1), not {label_smoothing}")
    if vq_warmup >= cfg.steps:
        raise Glm4VoiceError(f"--vq-warmup-steps {vq_warmup} leaves no step for the quantizer (--steps {cfg.steps})")
    state = open_run(out, resume, cfg)
    torch.manual_seed(cfg.seed)  # a model from scratch starts the same on every rank and in every run
    overrides = _read_config(config) if config is not None else None
    train_set = Utterances(data, "training", max_seconds)
    valid_set = Utterances(valid, "validation") if valid is not None else None
    if train_set.skipped:
        print(json.dumps({"skipped_longer_than_max_seconds": train_set.skipped}), flush=True)
    if overrides and "phonemes" in (overrides.get(INTER_TARGETS_FIELD), overrides.get(TARGETS_FIELD)) \
            and not overrides.get(PHONEMES_FIELD):
        overrides[PHONEMES_FIELD] = inventory((r.text, r.lang) for r in train_set.rows)  # the head's classes
    if resume is not None or init is not None:
        model, codec = load_asr(resume if resume is not None else init, None if resume is not None else overrides)
    else:
        codec = TranscriptCodec.train((r.text for r in train_set.rows), vocab_size)
        model = new_asr(overrides, codec)
    limit = model.config.get("max_target_positions", 448)
    for data in (train_set, valid_set):
        if data is not None and data.drop_long_transcripts(codec, limit):
            print(json.dumps({"skipped_transcripts_over_max_target_positions": data.dropped}), flush=True)
    groups = duration_batches(train_set.seconds(), batch_seconds)
    ctc_weight, inter_weight = model.config["ctc_weight"], model.config["inter_ctc_weight"]
    dist = Dist()
    try:
        model.to(dist.device).requires_grad_(True)
        warm = vq_warmup * cfg.accumulate  # micro-batches that bypass the quantizer
        if getattr(model, "fresh_vq", False) and not warm:
            _codebook_from_data(model, train_set, groups, dist)
        if dist.sharded:
            from torch.distributed.fsdp import register_fsdp_forward_method

            shard(model, model.blocks, cfg.mixed_precision)
            for method in ("encode", "logits", "ctc_loss", "ctc_ids"):  # called directly, not via forward
                register_fsdp_forward_method(model, method)

        def batch(index: int) -> dict:
            group = groups[batch_indices(index, dist.rank, dist.world, 1, len(groups), cfg.seed)[0]]
            features, mask = train_set.features(group, dist.device)
            if spec_augment_on:
                features = spec_augment(features.cpu(), mask.cpu(), cfg.seed * 1_000_003 + index).to(dist.device)
            rows = [train_set.rows[i] for i in group]
            inputs, labels = labels_for(codec, rows, dist.device)
            bodies = [codec.encode(r.text, r.lang)[len(codec.task) + 2 : -1] for r in rows]  # the CTC targets
            sounds = phoneme_targets(model, rows) if model.phonemic or model.inter_phonemic else None
            return {"index": index, "features": features, "mask": mask, "inputs": inputs, "labels": labels,
                    "targets": sounds if model.phonemic else bodies,  # the final head's
                    "inter_targets": sounds if model.inter_phonemic else bodies}  # the intermediate head's

        def loss(model, b) -> tuple[torch.Tensor, dict]:
            if warm and b["index"] == warm:  # the warm-up is over: the codebook starts from the trained encoder
                _codebook_from_data(model, train_set, groups, dist)
            bypass = b["index"] < warm
            pre_pool = [] if model.inter_ctc_head is not None else None  # the 50 Hz states, for InterCTC
            encoded, mask, vq, hidden = model.encode(b["features"], b["mask"], update=not bypass, bypass=bypass,
                                                     pre_pool=pre_pool)  # fmt: skip
            logits = model.logits(encoded, b["inputs"], mask)
            asr = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), b["labels"].flatten(),
                                                  label_smoothing=label_smoothing)
            if not bypass and (b["index"] - warm + 1) % model.vq.restart_every == 0:
                restarted[0] += model.vq.restart_dead(hidden, mask)  # the same number on every rank
            metrics = {"asr_loss": asr.item(), "commit_loss": vq.loss.item(), "codes_in_batch": vq.used}
            if warm and b["index"] == warm and dist.rank == 0:
                _warn_if_commitment_dominates(model, hidden, mask, metrics)
            if model.ctc_head is None:
                return asr + vq.loss, metrics
            ctc = model.ctc_loss(encoded, mask, b["targets"], model.blank(codec.eot))
            metrics["ctc_loss"] = ctc.item()
            if pre_pool is not None:  # the CTC share splits between the final and the intermediate head
                inter = model.inter_ctc_loss(pre_pool, b["inter_targets"], model.inter_blank(codec.eot))
                metrics["inter_ctc_loss"] = inter.item()
                ctc = (1 - inter_weight) * ctc + inter_weight * inter
            return (1 - ctc_weight) * asr + ctc_weight * ctc + vq.loss, metrics

        restarted = [0]  # codes restarted since the last record

        def after_step(step: int) -> dict | None:
            out = {}
            logged = step % cfg.log_every == 0 or step == cfg.steps
            if logged and restarted[0]:
                out["codes_restarted"], restarted[0] = restarted[0], 0
            if dist.sharded and logged:
                # the EMA is all-reduced, so every rank must hold the same codebook: show that it does
                import torch.distributed as td

                total = model.vq.codebook.double().sum().reshape(1)
                low, high = total.clone(), total.clone()
                td.all_reduce(low, op=td.ReduceOp.MIN)
                td.all_reduce(high, op=td.ReduceOp.MAX)
                out["codebook_rank_spread"] = float(high - low)
            if valid_set is not None and (step == cfg.steps or (eval_every and step % eval_every == 0)):
                model.eval()  # validation every `eval_every` steps, and always at the end
                try:
                    out.update(error_rates(model, codec, valid_set, dist.device, rank=dist.rank, world=dist.world,
                                           bypass=step <= vq_warmup))  # fmt: skip
                finally:
                    model.train()
            return out or None

        def write_model(weights: dict, folder: Path) -> None:
            write_asr_folder(model, codec, folder, weights)

        task = Task(model, batch, loss, write_model, blocks=model.blocks, after_step=after_step)
        records = train(task, cfg, out, dist, state, log=log)
        _export_released(model, Path(out), dist)
        return records
    finally:
        dist.close()


def _warn_if_commitment_dominates(model, hidden, mask, metrics: dict) -> None:
    """At the quantizer's start after a warm-up: a from-scratch encoder's output may have grown far beyond the
    scale `quantize_loss_scale` was chosen for (the paper's 10 suits Whisper large-v3). Then the commitment
    loss swamps the ASR loss, the encoder shrinks its output faster than the EMA codebook follows, and the
    codebook collapses (seen on the tiny recipe: a norm of 590 per frame, commitment 39 beside ASR 2, the
    codes in a batch 182 -> 9-20). Say so, with the scale that would start the two even."""
    commit, asr = metrics["commit_loss"], max(metrics["asr_loss"], 1e-9)
    if commit <= 5 * asr:
        return
    scale = model.config["quantize_loss_scale"]
    norm = float(hidden.detach().float()[mask].norm(dim=-1).mean())
    print(json.dumps({"warning": f"the commitment loss ({commit:.3g}) is {commit / asr:.0f}x the ASR loss at the "
                                 f"quantizer's start (encoder output norm {norm:.0f} per frame): the codebook may "
                                 f"collapse; quantize_loss_scale {scale:g} -> about {scale * asr / commit:.2g} "
                                 "starts them even"}), flush=True)  # fmt: skip


def _read_config(path) -> dict:
    from ..jsonl import read_json_object

    return read_json_object(path, "--config (Whisper config and VQ fields)")


@torch.no_grad()
def _codebook_from_data(model, data: Utterances, groups: list[list[int]], dist: Dist) -> None:
    """A fresh codebook: k-means (10 Lloyd steps) of encoder outputs from batches spread over the corpus's
    length range (up to 16, until there are four frames per code; until 2026-12-07 taken shortest first, so
    the recipe's drew from the shortest third of its utterances). Random frames alone make a codebook that
    collapses: most frames lie nearest a few of them (seen here: 49 codes in a batch, then 3-10);
    k-means places the codes where the frames are. An empty cluster restarts at the frame farthest from its
    code. Rank 0's codebook is broadcast, so every rank starts from the same one."""
    size = model.vq.size
    chunks, n = [], 0
    for group in spread_batches(groups):  # the frames suffice after a few batches
        features, mask = data.features(group, dist.device)
        _, m, _, h = model.encode(features, mask, bypass=True)
        chunks.append(h[m].float())
        n += len(chunks[-1])
        if n >= 4 * size:
            break
    book = kmeans(torch.cat(chunks), size, steps=10)
    if dist.sharded:
        import torch.distributed as td

        td.broadcast(book, 0)
    model.vq.codebook.copy_(book)
    model.vq.ema_weight.copy_(book)
    model.vq.ema_count.fill_(1.0)


def spread_batches(groups: list) -> list:
    """Up to 16 of `groups` (in length order), evenly spaced from the first to the last, in bit-reversed order
    (0, 8, 4, 12, 2, ... of the 16): every first few of them spread over the whole length range."""
    picked = [groups[round(j * (len(groups) - 1) / 15)] for j in range(16)] if len(groups) > 16 else list(groups)
    order = sorted(range(len(picked)), key=lambda i: int(f"{i:04b}"[::-1], 2))
    return [picked[i] for i in order]


def kmeans(frames: torch.Tensor, k: int, steps: int = 10, seed: int = 0) -> torch.Tensor:
    """k centroids [k, D] of frames [N, D]: k-means++ seeding (each next seed drawn with probability growing
    with its squared distance to the seeds so far; with fewer frames than k, the rest are frames again with a
    little noise), then Lloyd steps; an empty cluster restarts at the frame farthest from its centroid."""
    gen = torch.Generator().manual_seed(seed)
    n = len(frames)
    seeds = [int(torch.randint(n, (1,), generator=gen))]
    nearest2 = ((frames - frames[seeds[0]]) ** 2).sum(1)
    for _ in range(min(k, n) - 1):
        weights = nearest2.cpu().double()
        if weights.sum() <= 0:
            break
        seeds.append(int(torch.multinomial(weights, 1, generator=gen)))
        nearest2 = torch.minimum(nearest2, ((frames - frames[seeds[-1]]) ** 2).sum(1))
    extra = torch.randint(n, (k - len(seeds),), generator=gen).to(frames.device)
    noise = 0.01 * frames.std() * torch.randn(len(extra), frames.shape[1], generator=gen).to(frames)
    book = torch.cat([frames[torch.tensor(seeds, device=frames.device)], frames[extra] + noise])
    for _ in range(steps):
        distance = torch.cdist(frames, book)  # [N, k]
        nearest = distance.argmin(1)
        counts = torch.bincount(nearest, minlength=k)
        sums = torch.zeros_like(book).index_add_(0, nearest, frames)
        filled = counts > 0
        book[filled] = sums[filled] / counts[filled, None].to(book)
        empty = (~filled).nonzero().flatten()
        if len(empty):
            far = distance.gather(1, nearest[:, None]).flatten().argsort(descending=True)[: len(empty)]
            book[empty[: len(far)]] = frames[far]
    return book


def _export_released(model, out: Path, dist: Dist) -> None:
    """OUT/tokenizer: the released (inference-only) layout of the final weights."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from ..tokenizer.asr import write_released_folder

    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.rank == 0:
        with atomic_path(out / "tokenizer", folder=True) as tmp:
            write_released_folder(model, tmp, weights)
    dist.barrier()
