"""Train the speech decoder's flow (codes -> mel) by conditional flow matching (SPEC §2).

    glm4voice train-decoder --stage flow --init THUDM/glm-4-voice-decoder --speech-tokenizer TOK \
        --data voice.jsonl --valid voice-dev.jsonl --out runs/dec          # a new voice, on a GPU
    glm4voice train-decoder --stage flow --config tiny --speech-tokenizer TOK --data ... --out runs/tiny
    torchrun --nproc_per_node 8 -m glm4voice train-decoder --stage flow ...

The loss is the released decoder's (CosyVoice `ConditionalCFM`), on the modules
inference runs: for a target mel x1, noise z and a time t drawn uniformly and
bent by the cosine schedule (t <- 1 - cos(t pi / 2)), the estimator sees
    y = (1 - (1 - sigma_min) t) z + t x1    and learns    u = x1 - (1 - sigma_min) z
by mean squared error over the frames outside the prompt. The prompt is a
random prefix of the target (none half of the time, else up to 80 % of it)
given as `cond`, as a stream's context is. With chance `training_cfg_rate`
(0.2) a sample's conditions (mu, speaker, cond) are all zero: the
unconditioned branch of inference's classifier-free guidance. Optionally
(`--prior-weight`) Matcha-TTS's prior loss pulls mu itself toward the mel.

Batches are equal-length crops (at most `--crop-codes` codes and their mel
frames; length buckets, a shorter utterance whole beside ones of nearly its
length; every second of speech as likely), so nothing is padded: half
of them start at an utterance's first code, as a stream's first chunk does.
Speech codes come from `--speech-tokenizer`; the mel from the one decoder mel
function (`audio.decoder_log_mel`).
Checkpoints `OUT/step-N/` are decoder folders (`decode`, `chat` and
`SpeechDecoder.from_pretrained` read them); what the stage does not train
(the HiFT vocoder, the config) is copied from the start byte for byte. The
start is `--init` (a decoder folder: the release, for a new voice) or
`--config` (a config.yaml, the release's layout: random weights of its sizes;
`tiny` is the packaged CPU-sized one). Validation decodes held-out utterances
offline: mel L1, mel cepstral distortion of the re-synthesis (DTW-aligned),
and pocketsphinx's WER of the re-synthesis beside its WER of the recordings.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import Glm4VoiceError
from .config import RunConfig
from .dist import Dist, shard
from .loop import Task, open_run, train


@dataclass
class Example:
    id: str
    codes: torch.Tensor  # [N] long
    mel: torch.Tensor  # [80, M]
    text: str | None = None
    lang: str | None = None
    audio: str | None = None  # the recording (validation compares its recognised words with the re-synthesis')
    original_hyp: str | None = None  # what the recogniser heard in the recording (computed once, by validation)


def load_examples(manifest, speech_tokenizer, frames, what: str) -> list[Example]:
    """Every utterance's speech codes and decoder mel (the codes batched through the speech tokenizer).

    `frames(n)`: mel frames of n codes (`SpeechDecoder.frames`, the one formula)."""
    from ..audio import DECODER_RATE, decoder_log_mel, load_audio
    from ..data.manifest import read_manifest
    from ..tokenizer import SpeechTokenizer

    rows = list(read_manifest(manifest))
    if not rows:
        raise Glm4VoiceError(f"{manifest}: no utterances for the {what} set")
    tok = speech_tokenizer if isinstance(speech_tokenizer, SpeechTokenizer) else \
        SpeechTokenizer.from_pretrained(speech_tokenizer)  # fmt: skip
    codes = tok.tokenize_batch([load_audio(r.audio) for r in rows])
    examples = []
    for row, c in zip(rows, codes):
        mel = decoder_log_mel(torch.as_tensor(load_audio(row.audio, target_rate=DECODER_RATE)))[0]
        n = len(c)
        while n and frames(n) > mel.shape[1]:  # the codes whose frames the recording has in full
            n -= 1
        examples.append(Example(row.id, torch.tensor(c[:n], dtype=torch.long), mel[:, : frames(n)], row.text,
                                row.lang, row.audio))  # fmt: skip
    return examples


MIN_CODES = 2  # an utterance shorter than this (a fraction of a second) is not trained on
BUCKET_RATIO = 1.25  # utterances in a length bucket differ by less than this factor: a crop cuts under 20 %


@dataclass
class Bucket:
    """Utterances within a factor BUCKET_RATIO in length (or all of at least the crop): one batch's source."""

    members: list[Example]
    weights: list[int]  # cumulative codes of the members: each drawn in proportion to its codes
    length: int  # the batch's crop: the shortest member's codes, at most the crop


def length_buckets(examples: list[Example], crop: int) -> list[Bucket]:
    """The training set's length buckets, shortest first (made once: batches draw from them every step)."""
    groups: dict[int, list[Example]] = {}
    for e in examples:
        if len(e.codes) >= MIN_CODES:
            key = -1 if len(e.codes) >= crop else int(math.log(len(e.codes)) / math.log(BUCKET_RATIO))
            groups.setdefault(key, []).append(e)
    return [Bucket(g, list(itertools.accumulate(len(e.codes) for e in g)), min(crop, min(len(e.codes) for e in g)))
            for g in (groups[k] for k in sorted(groups))]  # fmt: skip


def crop_batch(buckets: list[Bucket], size: int, crop: int, rng: random.Random, frames):
    """Equal-length crops of at most `crop` codes (and their frames), drawn from every utterance.

    A code drawn at random over the corpus picks the bucket (`length_buckets`), so every second of speech is as
    likely. The batch holds `size * crop // L` crops of the bucket's L codes (the same number of codes every
    step) of its utterances, each drawn in proportion to its codes; half start at code 0, as a stream's first
    chunk does. Equal lengths need no padding masks. (Requiring `crop` codes of every utterance left out the
    many short ones: 91 % of the tiny recipe's assistant corpus at 40.)

    Returns codes [B, L], mel [B, 80, frames(L)]."""
    bucket = rng.choices(buckets, cum_weights=list(itertools.accumulate(b.weights[-1] for b in buckets)))[0]
    length = bucket.length
    picks = rng.choices(bucket.members, cum_weights=bucket.weights, k=size * crop // length)
    codes, mels, n = [], [], frames(length)
    for e in picks:
        start = 0 if rng.random() < 0.5 else rng.randrange(len(e.codes) - length + 1)
        begin = min(frames(start), e.mel.shape[1] - n)
        codes.append(e.codes[start : start + length])
        mels.append(e.mel[:, begin : begin + n])
    return torch.stack(codes), torch.stack(mels)


class FlowLoss(torch.nn.Module):
    """The flow with `flow_loss` as its forward: what the loop (and FSDP's hooks) call."""

    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def forward(self, codes, mel, prompt, drop, t, z) -> tuple[torch.Tensor, torch.Tensor]:
        return flow_terms(self.flow, codes, mel, prompt, drop, t, z)


def flow_loss(flow, codes, mel, prompt, drop, t, z) -> torch.Tensor:
    """The conditional flow-matching loss (see the module's docstring).

    codes [B, N]; mel [B, 80, T] targets; prompt [B] frames of the target given as `cond`; drop [B] bool
    (conditions zeroed); t [B] times after the schedule; z [B, 80, T] noise. Mean over unprompted frames.
    """
    return flow_terms(flow, codes, mel, prompt, drop, t, z)[0]


def flow_terms(flow, codes, mel, prompt, drop, t, z) -> tuple[torch.Tensor, torch.Tensor]:
    """`flow_loss`, and beside it Matcha-TTS's prior loss: how far the codes' condition mu is from the target
    mel itself (0.5 x mean squared error over every frame: a unit-variance Gaussian's log-likelihood without its
    constant). Weighted in (`prior_weight`), it asks the token encoder to say the mel outright, a direct signal
    for a small flow on little data, which the flow-matching loss gives it only through the estimator."""
    b, channels, frames = mel.shape
    mu = flow.mu(codes, frames)
    in_prompt = torch.arange(frames, device=mel.device)[None] < prompt[:, None]  # [B, T]
    keep = (~drop).to(mel.dtype)
    cond = mel * in_prompt[:, None].to(mel.dtype) * keep[:, None, None]
    spk = flow.speaker(mel.dtype, mel.device).expand(b, -1) * keep[:, None]
    sigma = flow.cfg.sigma_min
    tt = t[:, None, None].to(mel.dtype)
    y = (1 - (1 - sigma) * tt) * z + tt * mel
    target = mel - (1 - sigma) * z
    pred = flow.decoder.estimator(y, mu * keep[:, None, None], t, spk, cond)
    weight = (~in_prompt).to(mel.dtype)[:, None]  # [B, 1, T]
    fm = (((pred - target) ** 2) * weight).sum() / (weight.sum() * channels).clamp(min=1)
    return fm, 0.5 * ((mu - mel) ** 2).mean()


def sample_conditions(flow, b: int, frames: int, device):
    """Per-sample prompt length, dropout flag, scheduled time and noise (from torch's per-step generator)."""
    has_prompt = torch.rand(b) < 0.5
    prompt = (torch.rand(b) * 0.8 * frames).long() * has_prompt
    drop = torch.rand(b) < flow.cfg.training_cfg_rate
    t = torch.rand(b)
    if flow.cfg.t_scheduler == "cosine":
        t = 1 - torch.cos(t * 0.5 * math.pi)
    z = torch.randn(b, flow.cfg.output_size, frames)
    return prompt.to(device), drop.to(device), t.to(device), z.to(device)


@torch.no_grad()
def offline_mel(flow, codes: torch.Tensor, frames: int, device, n_steps: int = 10) -> torch.Tensor:
    """The mel [1, 80, frames] inference makes of whole-utterance codes [N] (seed-42 noise, guidance)."""
    noise = torch.randn(1, flow.cfg.output_size, frames, generator=torch.Generator().manual_seed(42))
    mu = flow.mu(codes[None].to(device), frames)
    return flow.solve(noise.to(device), mu, torch.zeros_like(mu), n_steps)


def mel_l1(flow, examples: list[Example], device, n_steps: int = 10) -> float:
    """Mean |mel - target| of whole utterances decoded offline."""
    total, count = 0.0, 0
    for e in examples:
        total += float((offline_mel(flow, e.codes, e.mel.shape[1], device, n_steps)[0].cpu() - e.mel).abs().sum())
        count += e.mel.numel()
    return round(total / max(count, 1), 4)


def resynthesis_scores(flow, decoder, examples: list[Example], device) -> dict:
    """Every held-out utterance re-synthesised from its codes (offline flow + the decoder's HiFT): the mel
    cepstral distortion against the recording (DTW-aligned), and for the English ones pocketsphinx's WER
    beside its WER on the original recordings of the same sentences (without pocketsphinx: MCD only)."""
    from ..audio import decoder_log_mel, load_audio
    from ..scoring import errors, mel_cepstral_distortion

    try:
        import pocketsphinx  # noqa: F401

        from ..scoring import recognise_english
    except ImportError:
        recognise_english = None
    mcd, totals = 0.0, [0, 0, 0]  # resynthesis errors, original errors, words
    for e in examples:
        audio = decoder.vocode(offline_mel(flow, e.codes, e.mel.shape[1], device))
        mcd += mel_cepstral_distortion(decoder_log_mel(audio.float())[0].numpy(), e.mel.numpy())
        if recognise_english is None or e.lang != "en" or not e.text or not e.audio:
            continue
        if e.original_hyp is None:  # the recording's words, recognised once
            e.original_hyp = recognise_english(load_audio(e.audio), 16000)
        wrong, n = errors(e.text, recognise_english(audio.numpy(), decoder.sample_rate), "en")
        totals[0] += wrong
        totals[1] += errors(e.text, e.original_hyp, "en")[0]
        totals[2] += n
    out = {"valid_mcd": round(mcd / len(examples), 3)}
    if totals[2]:
        out["valid_wer_resynth"] = round(totals[0] / totals[2], 4)
        out["valid_wer_original"] = round(totals[1] / totals[2], 4)
    return out


def train_decoder(init, speech_tokenizer, data, out, cfg: RunConfig, *, stage: str = "flow", valid=None,
                  eval_every: int = 0, crop_codes: int = 40, crop_frames: int = 64, config=None,
                  adversarial_from: int = 0, prior_weight: float = 0.0, resume=None,
                  log=None) -> list[dict]:  # fmt: skip
    """Train one stage of the decoder (flow: codes -> mel; hift: mel -> audio); returns the logged records.

    Starts from `init` (a decoder folder or hub id) or `config` (a config.yaml: random weights of its sizes);
    `adversarial_from` (hift): the step from which the discriminators train with the generator (0: never);
    `prior_weight` (flow): the weight of the prior loss beside the flow-matching one (`flow_terms`; 0: none)."""
    if stage not in ("flow", "hift"):
        raise Glm4VoiceError(f"--stage {stage}: flow or hift")
    if crop_codes < 2 or crop_frames < 16 or eval_every < 0 or adversarial_from < 0:
        raise Glm4VoiceError("--crop-codes must be at least 2, --crop-frames at least 16, --eval-every and "
                             "--adversarial-from >= 0")  # fmt: skip
    if not math.isfinite(prior_weight) or prior_weight < 0:
        raise Glm4VoiceError(f"--prior-weight must be a finite number >= 0, got {prior_weight}")
    if prior_weight and stage != "flow":
        raise Glm4VoiceError("--prior-weight is for the flow stage (the loss on its token encoder's output)")
    if adversarial_from and stage != "hift":
        raise Glm4VoiceError("--adversarial-from is for the hift stage (the vocoder's discriminators)")
    if stage == "flow" and speech_tokenizer is None:
        raise Glm4VoiceError("the flow stage needs --speech-tokenizer (the codes it learns to speak)")
    if init is not None and config is not None:
        raise Glm4VoiceError("give --init (a decoder to start from) or --config (random weights), not both")
    if init is None and config is None and resume is None:
        raise Glm4VoiceError("give --init (a decoder folder or hub id), --config (a decoder config.yaml: random "
                             "weights of its sizes) or --resume")  # fmt: skip
    state = open_run(out, resume, cfg)
    start = decoder_start(init, config, resume, cfg.seed)
    if stage == "hift":
        from .vocoder import train_vocoder

        return train_vocoder(start, data, out, cfg, valid=valid, eval_every=eval_every, crop_frames=crop_frames,
                             adversarial_from=adversarial_from, resume=resume, state=state, log=log)  # fmt: skip
    decoder = start.decoder  # flow, HiFT and config; the flow is trained
    train_set = load_examples(data, speech_tokenizer, decoder.frames, "training")
    valid_set = load_examples(valid, speech_tokenizer, decoder.frames, "validation") if valid is not None else None
    buckets = length_buckets(train_set, crop_codes)
    if not buckets:
        raise Glm4VoiceError(f"{data}: no utterance has {MIN_CODES} speech codes to train on")
    vocab = decoder.vocab_size
    if max(int(e.codes.max()) for b in buckets for e in b.members) >= vocab:
        raise Glm4VoiceError(f"the speech tokenizer's codes exceed the decoder's vocabulary ({vocab}): "
                             "a tokenizer and a decoder of different releases")  # fmt: skip
    dist = Dist()
    try:
        torch.manual_seed(cfg.seed)
        flow = decoder.flow.to(dist.device).float().train().requires_grad_(True)
        model = FlowLoss(flow)
        blocks = list(flow.encoder.encoders)
        if dist.sharded:
            shard(model, blocks, cfg.mixed_precision)

        def batch(index: int) -> dict:
            rng = random.Random(f"{cfg.seed}-{index}-{dist.rank}")
            codes, mel = crop_batch(buckets, cfg.batch_size, crop_codes, rng, decoder.frames)
            return {"codes": codes.to(dist.device), "mel": mel.to(dist.device)}

        def loss(model, b) -> tuple[torch.Tensor, dict]:
            conditions = sample_conditions(flow, b["mel"].shape[0], b["mel"].shape[2], dist.device)
            fm, prior = model(b["codes"], b["mel"], *conditions)
            if not prior_weight:
                return fm, {"flow_loss": fm.item()}
            return fm + prior_weight * prior, {"flow_loss": fm.item(), "prior_loss": prior.item()}

        def after_step(step: int) -> dict | None:
            if valid_set is None or not (step == cfg.steps or (eval_every and step % eval_every == 0)):
                return None
            judged = whole_flow(model, flow, dist)  # under FSDP: a full copy on rank 0 (None elsewhere)
            result: list[dict | None] = [None]
            if judged is not None:
                judged.eval()
                try:
                    result[0] = {"valid_mel_l1": mel_l1(judged, valid_set, dist.device),
                                 **resynthesis_scores(judged, decoder, valid_set, dist.device)}  # fmt: skip
                finally:
                    judged.train()
            if dist.sharded:  # every rank returns the same metrics: the loop averages each key over the ranks
                import torch.distributed as td

                td.broadcast_object_list(result, src=0)
            return result[0]

        def write_model(weights: dict, folder: Path) -> None:
            write_decoder_folder(folder, start.files, {"flow.pt": {k.removeprefix("flow."): v
                                                                   for k, v in weights.items()}})  # fmt: skip

        task = Task(model, batch, loss, write_model, blocks=blocks, after_step=after_step)
        return train(task, cfg, out, dist, state, log=log)
    finally:
        dist.close()


def whole_flow(model, flow, dist: Dist):
    """The flow to validate: itself in one process; under FSDP a gathered copy on rank 0 (None on the others)."""
    if not dist.sharded:
        return flow
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from ..decoder.flow import FlowModel

    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.rank != 0:
        return None
    copy = FlowModel(flow.cfg)
    copy.load_state_dict({k.removeprefix("flow."): v for k, v in weights.items()})
    return copy.to(dist.device)


@dataclass
class DecoderStart:
    """What a decoder run starts from: the decoder, and its files as they were (a checkpoint copies the ones
    its stage does not train byte for byte)."""

    decoder: object  # SpeechDecoder
    files: dict[str, bytes]  # config.yaml, flow.pt, hift.pt


def decoder_start(init, config, resume, seed: int) -> DecoderStart:
    """The resumed checkpoint, the `init` decoder folder (or hub id), or random weights of `config`'s sizes."""
    import io

    from ..decoder import SpeechDecoder
    from ..decoder.model import DECODER_FILES
    from ..hub import resolve_checkpoint

    if resume is not None or init is not None:
        folder = resolve_checkpoint(resume if resume is not None else init, DECODER_FILES, "decoder")
        files = {name: (folder / name).read_bytes() for name in DECODER_FILES}
        return DecoderStart(SpeechDecoder.from_pretrained(folder), files)
    from ..decoder.config import parse_config
    from ..decoder.flow import FlowModel
    from ..decoder.hift import HiFT
    from .vocoder import release_weight_norm_stems, split_weight_norm

    try:
        text = Path(config).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Glm4VoiceError(f"--config {config}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    cfg = parse_config(text, str(config))
    torch.manual_seed(seed)
    flow, hift = FlowModel(cfg.flow), HiFT(cfg.hift)
    files = {"config.yaml": text.encode("utf-8")}
    hift_state = hift.state_dict()
    for name, weights in (("flow.pt", flow.state_dict()),
                          ("hift.pt", split_weight_norm(hift_state, release_weight_norm_stems(hift_state)))):
        buffer = io.BytesIO()
        torch.save(weights, buffer)
        files[name] = buffer.getvalue()
    return DecoderStart(SpeechDecoder(cfg, flow, hift), files)


def write_decoder_folder(folder: Path, files: dict[str, bytes], trained: dict[str, dict]) -> None:
    """A decoder folder: the `trained` state dicts (by file name), the other `files` as they were."""
    for name, data in files.items():
        if name in trained:
            torch.save({k: v.detach().cpu().clone() for k, v in trained[name].items()}, folder / name)
        else:
            (folder / name).write_bytes(data)


def decoder_defaults(**overrides) -> RunConfig:
    """Small-data flow training (CosyVoice's recipes use Adam at 1e-4 to 1e-3 with warm-up)."""
    return RunConfig(**{"lr": 1e-4, "min_lr": 1e-5, "warmup_steps": 100, "weight_decay": 0.0, "batch_size": 8,
                        **overrides})  # fmt: skip


