"""Train the decoder's HiFT vocoder (mel -> 22.05 kHz audio) (SPEC §2).

    glm4voice train-decoder --stage hift --init DECODER_DIR --data voice.jsonl --out runs/hift \
        [--adversarial-from 2000]

As CosyVoice trains its HiFT generator: the F0 predictor reads the mel and
learns Praat's F0 track (`audio.decoder_f0`, L1 over every frame); the sine
source is made from the predicted F0 as inference makes it (the F0 detached:
the predictor learns from Praat's track only; the harmonic mix trains);
the generated audio is held to the recording by the L1 distance of their
decoder mels (weight 45, as HiFi-GAN) and a multi-resolution STFT loss
(spectral convergence + log magnitude at 512/1024/2048-point windows). From
`--adversarial-from` on (after a generator-only warm-up), multi-period and
multi-resolution discriminators (`discriminators.py`) add least-squares GAN
and feature-matching losses. Batches are equal-length crops of
`--crop-frames` mel frames and their 256 samples each.

The weights train as plain convolutions; the export splits every weight the
start's hift.pt keeps weight-normed back into `weight_g`/`weight_v` (g = the
norm over all but dim 0, v = the weight: exact), so `hift.pt` has the
release's keys.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import Glm4VoiceError
from .config import RunConfig
from .dist import Dist, shard
from .loop import Task, train

STFT_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))  # (n_fft = window, hop)
MEL_WEIGHT = 45.0
FM_WEIGHT = 2.0
DISCRIMINATORS_FILE = "discriminators.pt"  # in each step-N of an adversarial run (training only)


@dataclass
class Recording:
    id: str
    audio: torch.Tensor  # [S] at 22.05 kHz, S = frames * 256
    mel: torch.Tensor  # [80, frames]
    f0: torch.Tensor  # [frames] Hz, 0 unvoiced


def load_recordings(manifest, what: str) -> list[Recording]:
    from ..audio import DECODER_HOP, DECODER_RATE, decoder_f0, decoder_log_mel, load_audio
    from ..data.manifest import read_manifest

    try:
        import parselmouth  # noqa: F401  (decoder_f0's pitch tracker)
    except ImportError:
        raise Glm4VoiceError("the hift stage needs praat-parselmouth: pip install 'glm4voice[train]'") from None

    out = []
    for row in read_manifest(manifest):
        audio = load_audio(row.audio, target_rate=DECODER_RATE)
        frames = len(audio) // DECODER_HOP
        audio = torch.as_tensor(audio[: frames * DECODER_HOP])
        out.append(Recording(row.id, audio, decoder_log_mel(audio)[0][:, :frames], torch.as_tensor(decoder_f0(audio))))
    if not out:
        raise Glm4VoiceError(f"{manifest}: no utterances for the {what} set")
    return out


def crop_recordings(recordings: list[Recording], size: int, frames: int, rng: random.Random, hop: int = 256):
    """`size` crops of `frames` mel frames: (mel [B, 80, F], f0 [B, F], audio [B, F * hop])."""
    long_enough = [r for r in recordings if r.mel.shape[1] >= frames]
    mels, f0s, audios = [], [], []
    for _ in range(size):
        r = rng.choice(long_enough)
        start = rng.randrange(r.mel.shape[1] - frames + 1)
        mels.append(r.mel[:, start : start + frames])
        f0s.append(r.f0[start : start + frames])
        audios.append(r.audio[start * hop : (start + frames) * hop])
    return torch.stack(mels), torch.stack(f0s), torch.stack(audios)


def stft_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT loss: spectral convergence + mean |log magnitude difference|, averaged."""
    total = fake.new_zeros(())
    for n_fft, hop in STFT_RESOLUTIONS:
        window = torch.hann_window(n_fft, device=fake.device)
        mag = [torch.stft(x, n_fft, hop, n_fft, window=window, return_complex=True).abs().clamp(min=1e-7)
               for x in (fake, real)]  # fmt: skip
        convergence = torch.linalg.norm(mag[1] - mag[0]) / torch.linalg.norm(mag[1]).clamp(min=1e-7)
        total = total + convergence + (mag[0].log() - mag[1].log()).abs().mean()
    return total / len(STFT_RESOLUTIONS)


class VocoderLoss(torch.nn.Module):
    """HiFT with its losses as forward (what the loop and FSDP's hooks call); `disc`: the discriminators.

    Adversarial steps add, to the generator's losses, LSGAN's and feature matching (x2, as HiFi-GAN), and
    the discriminators' own loss on the same audio: the discriminators' parameters take no gradient from
    the generator's terms (they are frozen while those are built) and the generator none from theirs (the
    fake audio is detached), so one backward and one AdamW step update both, each by its own loss: the
    simultaneous form of HiFi-GAN's alternating updates."""

    def __init__(self, hift, disc=None):
        super().__init__()
        self.hift = hift
        self.disc = disc

    def forward(self, mel, f0, audio, adversarial: bool = False) -> tuple[torch.Tensor, dict]:
        from ..audio import decoder_log_mel

        predicted = self.hift.f0(mel)  # [B, F]
        source, _ = self.hift.source_from_f0(predicted.detach())  # trains the harmonic mix, not the F0 path
        fake = self.hift(mel, source)[:, : audio.shape[1]]
        mel_l1 = F.l1_loss(decoder_log_mel(fake)[:, :, : mel.shape[2]], decoder_log_mel(audio)[:, :, : mel.shape[2]])
        stft = stft_loss(fake, audio)
        f0_l1 = F.l1_loss(predicted, f0)
        loss = MEL_WEIGHT * mel_l1 + stft + f0_l1
        metrics = {"mel_l1": mel_l1.item(), "stft_loss": stft.item(), "f0_l1": f0_l1.item()}
        if adversarial:
            from .discriminators import discriminator_loss, feature_matching, generator_loss

            real_scores, real_features = self.disc(audio)
            self.disc.requires_grad_(False)
            fake_scores, fake_features = self.disc(fake)
            self.disc.requires_grad_(True)
            adv, fm = generator_loss(fake_scores), feature_matching(real_features, fake_features)
            d_loss = discriminator_loss(real_scores, self.disc(fake.detach())[0])
            loss = loss + adv + FM_WEIGHT * fm + d_loss
            metrics.update(adv_loss=adv.item(), fm_loss=fm.item(), disc_loss=d_loss.item())
        return loss, metrics


RELEASE_PLAIN = ("f0_predictor.classifier.", "m_source.l_linear.", "source_downs.")  # no weight norm there


def weight_norm_keys(hift_state: dict) -> set[str]:
    """Stems X whose `X.weight` a hift.pt state dict keeps as weight_g/weight_v."""
    return {k[: -len(".weight_g")] for k in hift_state if k.endswith(".weight_g") and k[:-1] + "v" in hift_state}


def release_weight_norm_stems(hift_state: dict) -> set[str]:
    """Stems the release keeps weight-normed, for a HiFT made from a config (every conv but RELEASE_PLAIN's)."""
    return {k[: -len(".weight")] for k in hift_state if k.endswith(".weight") and not k.startswith(RELEASE_PLAIN)}


def split_weight_norm(weights: dict, stems: set[str]) -> dict:
    """`X.weight` -> `X.weight_g` (norm over every dim but 0, keepdim) and `X.weight_v` (the weight) for X in stems."""
    out = {}
    for key, value in weights.items():
        stem = key[: -len(".weight")] if key.endswith(".weight") else None
        if stem in stems:
            out[stem + ".weight_g"] = value.norm(dim=tuple(range(1, value.dim())), keepdim=True)
            out[stem + ".weight_v"] = value
        else:
            out[key] = value
    return out


def train_vocoder(start, data, out, cfg: RunConfig, *, valid=None, eval_every: int = 0, crop_frames: int = 64,
                  adversarial_from: int = 0, resume=None, state=None, log=None) -> list[dict]:  # fmt: skip
    """The HiFT stage of `train_decoder` (`start`: its `DecoderStart`). From step `adversarial_from` on
    (0: never) the discriminators train with the generator; they are kept beside each checkpoint."""
    import io

    decoder = start.decoder
    stems = weight_norm_keys(torch.load(io.BytesIO(start.files["hift.pt"]), map_location="cpu", weights_only=True))
    train_set = load_recordings(data, "training")
    valid_set = load_recordings(valid, "validation") if valid is not None else None
    if max(r.mel.shape[1] for r in train_set) < crop_frames:
        raise Glm4VoiceError(f"{data}: no utterance has --crop-frames {crop_frames} mel frames")
    if adversarial_from > cfg.steps:
        raise Glm4VoiceError(f"--adversarial-from {adversarial_from} is after the last step ({cfg.steps})")
    dist = Dist()
    try:
        torch.manual_seed(cfg.seed)
        hift = decoder.hift.to(dist.device).float().train().requires_grad_(True)
        disc = _discriminators(decoder, resume) if adversarial_from else None
        model = VocoderLoss(hift, disc.to(dist.device) if disc is not None else None)
        blocks = list(hift.resblocks)
        if dist.sharded:
            shard(model, blocks, cfg.mixed_precision)

        def batch(index: int) -> dict:
            rng = random.Random(f"{cfg.seed}-{index}-{dist.rank}")
            mel, f0, audio = crop_recordings(train_set, cfg.batch_size, crop_frames, rng)
            step = index // cfg.accumulate + 1
            return {"mel": mel.to(dist.device), "f0": f0.to(dist.device), "audio": audio.to(dist.device),
                    "adversarial": bool(adversarial_from) and step >= adversarial_from}  # fmt: skip

        def loss(model, b) -> tuple[torch.Tensor, dict]:
            return model(b["mel"], b["f0"], b["audio"], b["adversarial"])

        def after_step(step: int) -> dict | None:
            if valid_set is None or not (step == cfg.steps or (eval_every and step % eval_every == 0)):
                return None
            hift.eval()
            try:
                with torch.no_grad():
                    values = [model(r.mel[None].to(dist.device), r.f0[None].to(dist.device),
                                    r.audio[None].to(dist.device))[1] for r in valid_set]  # fmt: skip
                return {f"valid_{k}": round(sum(v[k] for v in values) / len(values), 4) for k in values[0]}
            finally:
                hift.train()

        def write_model(weights: dict, folder: Path) -> None:
            from .decoder import write_decoder_folder

            hift_weights = {k.removeprefix("hift."): v for k, v in weights.items() if k.startswith("hift.")}
            write_decoder_folder(folder, start.files, {"hift.pt": split_weight_norm(hift_weights, stems)})
            if disc is not None:
                torch.save({k.removeprefix("disc."): v.detach().cpu().clone() for k, v in weights.items()
                            if k.startswith("disc.")}, folder / DISCRIMINATORS_FILE)  # fmt: skip

        task = Task(model, batch, loss, write_model, blocks=blocks, after_step=after_step)
        return train(task, cfg, out, dist, state, log=log)
    finally:
        dist.close()


def _discriminators(decoder, resume):
    """The discriminators (HiFi-GAN's widths x base_channels / 512): a resumed run's own, else fresh."""
    from .discriminators import Discriminators

    disc = Discriminators(scale=decoder.config.hift.base_channels / 512)
    saved = Path(resume) / DISCRIMINATORS_FILE if resume is not None else None
    if saved is not None and saved.is_file():
        from ..hub import check_state

        weights = torch.load(saved, map_location="cpu", weights_only=True)
        check_state(disc.state_dict(), weights, f"discriminators {saved}")
        disc.load_state_dict(weights)
    return disc
