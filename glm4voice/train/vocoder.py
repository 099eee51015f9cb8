"""Train the decoder's HiFT vocoder (mel -> 22.05 kHz audio), generator losses only (SPEC §2).

    glm4voice train-decoder --stage hift --init DECODER_DIR --data voice.jsonl --out runs/hift

As CosyVoice trains its HiFT generator, without the discriminators (not yet
here): the F0 predictor reads the mel and learns Praat's F0 track
(`audio.decoder_f0`, L1 over every frame); the sine source is made from the
predicted F0 without gradient, as inference makes it; the generated audio is
held to the recording by the L1 distance of their decoder mels (weight 45, as
HiFi-GAN) and a multi-resolution STFT loss (spectral convergence + log
magnitude at 512/1024/2048-point windows). Batches are equal-length crops of
`--crop-frames` mel frames and their 256 samples each.

The weights train as plain convolutions; the export splits every weight the
`--init` checkpoint keeps weight-normed back into `weight_g`/`weight_v` (g = the
norm over all but dim 0, v = the weight: exact), so `hift.pt` has the
release's keys.
"""

from __future__ import annotations

import random
import shutil
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
    """HiFT with its generator losses as forward (what the loop and FSDP's hooks call)."""

    def __init__(self, hift):
        super().__init__()
        self.hift = hift

    def forward(self, mel, f0, audio) -> tuple[torch.Tensor, dict]:
        from ..audio import decoder_log_mel

        predicted = self.hift.f0(mel)  # [B, F]
        with torch.no_grad():
            source, _ = self.hift.source_from_f0(predicted.detach())
        fake = self.hift(mel, source)[:, : audio.shape[1]]
        mel_l1 = F.l1_loss(decoder_log_mel(fake)[:, :, : mel.shape[2]], decoder_log_mel(audio)[:, :, : mel.shape[2]])
        stft = stft_loss(fake, audio)
        f0_l1 = F.l1_loss(predicted, f0)
        loss = MEL_WEIGHT * mel_l1 + stft + f0_l1
        return loss, {"mel_l1": mel_l1.item(), "stft_loss": stft.item(), "f0_l1": f0_l1.item()}


def weight_norm_keys(hift_pt: Path) -> set[str]:
    """Stems X whose `X.weight` the checkpoint keeps as weight_g/weight_v."""
    state = torch.load(hift_pt, map_location="cpu", weights_only=True)
    return {k[: -len(".weight_g")] for k in state if k.endswith(".weight_g") and k[:-1] + "v" in state}


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


def train_vocoder(source: Path, data, out, cfg: RunConfig, *, valid=None, eval_every: int = 0,
                  crop_frames: int = 64, state=None, log=None) -> list[dict]:  # fmt: skip
    """The HiFT stage of `train_decoder` (`source`: the resolved decoder folder to start from)."""
    from ..decoder import SpeechDecoder

    decoder = SpeechDecoder.from_pretrained(source)
    stems = weight_norm_keys(source / "hift.pt")
    train_set = load_recordings(data, "training")
    valid_set = load_recordings(valid, "validation") if valid is not None else None
    if max(r.mel.shape[1] for r in train_set) < crop_frames:
        raise Glm4VoiceError(f"{data}: no utterance has --crop-frames {crop_frames} mel frames")
    dist = Dist()
    try:
        torch.manual_seed(cfg.seed)
        hift = decoder.hift.to(dist.device).float().train().requires_grad_(True)
        model = VocoderLoss(hift)
        blocks = list(hift.resblocks)
        if dist.sharded:
            shard(model, blocks, cfg.mixed_precision)

        def batch(index: int) -> dict:
            rng = random.Random(f"{cfg.seed}-{index}-{dist.rank}")
            mel, f0, audio = crop_recordings(train_set, cfg.batch_size, crop_frames, rng)
            return {"mel": mel.to(dist.device), "f0": f0.to(dist.device), "audio": audio.to(dist.device)}

        def loss(model, b) -> tuple[torch.Tensor, dict]:
            return model(b["mel"], b["f0"], b["audio"])

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
            hift_weights = split_weight_norm({k.removeprefix("hift."): v.detach().cpu().clone()
                                              for k, v in weights.items()}, stems)  # fmt: skip
            torch.save(hift_weights, folder / "hift.pt")
            for name in ("config.yaml", "flow.pt"):
                shutil.copyfile(source / name, folder / name)

        task = Task(model, batch, loss, write_model, blocks=blocks, after_step=after_step)
        return train(task, cfg, out, dist, state, log=log)
    finally:
        dist.close()

