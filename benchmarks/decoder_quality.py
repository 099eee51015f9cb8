"""A trained decoder's quality on held-out recordings: intelligibility, distortion, streaming, a figure.

    .venv/bin/python benchmarks/decoder_quality.py --decoder DIR --speech-tokenizer TOK --manifest dev.jsonl \
        [--png spectrogram.png]

Every utterance of the manifest goes through the tokenizer to codes and back through the decoder, and prints:
- pocketsphinx's WER of the offline re-synthesis beside its WER of the original recordings of the same
  sentences (English rows with text; pocketsphinx misses many words of any synthetic voice, so the
  recording is the bar), and their ratio;
- mel cepstral distortion of the re-synthesis against the recording (DTW-aligned, `scoring`);
- the vocoder alone (copy synthesis: HiFT of each recording's own mel): the same WER and MCD, which bound
  what the flow can reach with this HiFT;
- streaming: mean |delta log-mel| between the streamed flow (codes pushed one by one, the stream's own
  schedule) and the offline flow with the same noise field, beside the distance between two offline
  decodes that differ only in their noise; the ratio is comparable across decoder sizes (the release's
  size gives 0.125 / 1.172 = 0.11 in `benchmarks/decoder.py`).
`--png`: the decoder mel of the first English recording beside its re-synthesis (matplotlib).
`--vocoder-only`: the copy synthesis alone (a vocoder run's checkpoints, whose flow may be untrained).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_info  # noqa: E402
from glm4voice.decoder import SpeechDecoder  # noqa: E402
from glm4voice.train.decoder import load_examples, offline_mel, resynthesis_scores  # noqa: E402


def copy_synthesis(dec: SpeechDecoder, examples) -> dict:
    """WER and MCD of HiFT run on the recordings' own mels (no flow, no codes)."""
    from glm4voice.audio import decoder_log_mel
    from glm4voice.scoring import errors, mel_cepstral_distortion, recognise_english

    mcd, wrong, words = 0.0, 0, 0
    for e in examples:
        audio = dec.vocode(e.mel[None])
        mcd += mel_cepstral_distortion(decoder_log_mel(audio)[0].numpy(), e.mel.numpy())
        if e.lang == "en" and e.text:
            w, n = errors(e.text, recognise_english(audio.numpy(), dec.sample_rate), "en")
            wrong, words = wrong + w, words + n
    out = {"vocoder_mcd": round(mcd / len(examples), 3)}
    if words:
        out["vocoder_wer"] = round(wrong / words, 4)
    return out


def streaming_closeness(dec: SpeechDecoder, examples) -> dict:
    streamed_d, noise_d = 0.0, 0.0
    for e in examples:
        frames = dec.frames(len(e.codes))
        offline = dec.flow_mel(e.codes.tolist(), noise=dec.positional_noise(0, frames))
        other = dec.flow_mel(e.codes.tolist(), noise=dec.positional_noise(0, frames, seed=7))
        stream = dec.stream(keep_mel=True)
        for code in e.codes.tolist():
            stream.push([code])
        stream.flush()
        streamed = torch.cat(stream.mel, dim=2)[:, :, :frames]
        streamed_d += (streamed - offline).abs().mean().item()
        noise_d += (other - offline).abs().mean().item()
    return {"stream_vs_offline": round(streamed_d / len(examples), 4),
            "offline_vs_other_noise": round(noise_d / len(examples), 4),
            "ratio": round(streamed_d / noise_d, 4)}  # fmt: skip


def figure(dec: SpeechDecoder, example, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from glm4voice.audio import decoder_log_mel

    audio = dec.vocode(offline_mel(dec.flow, example.codes, example.mel.shape[1], "cpu"))
    resynth = decoder_log_mel(audio)[0]
    fig, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=True, constrained_layout=True)
    for ax, mel, title in ((axes[0], example.mel, "original recording"), (axes[1], resynth, "re-synthesis from codes")):
        ax.imshow(mel.numpy(), origin="lower", aspect="auto", vmin=-11.5, vmax=2.0, cmap="magma")
        ax.set_title(f"{title}: {example.text!r}" if title.startswith("orig") else title, fontsize=9)
        ax.set_ylabel("mel bin")
    axes[1].set_xlabel("frame (11.6 ms)")
    fig.savefig(path, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", required=True)
    parser.add_argument("--speech-tokenizer", required=True)
    parser.add_argument("--manifest", required=True, help="held-out recordings (JSONL: id, audio, text, lang)")
    parser.add_argument("--png", type=Path, help="write the spectrogram figure here")
    parser.add_argument("--vocoder-only", action="store_true", help="only the copy synthesis (HiFT alone)")
    args = parser.parse_args()
    print(f"cpu: {cpu_info()}")
    dec = SpeechDecoder.from_pretrained(args.decoder)
    examples = load_examples(args.manifest, args.speech_tokenizer, dec.frames, "evaluation")
    if args.vocoder_only:
        print(json.dumps({"utterances": len(examples), **copy_synthesis(dec, examples)}))
        return
    scores = resynthesis_scores(dec.flow, dec, examples, "cpu")
    if "valid_wer_original" in scores:
        scores["wer_ratio"] = round(scores["valid_wer_resynth"] / max(scores["valid_wer_original"], 1e-9), 3)
    print(json.dumps({"utterances": len(examples), **scores}))
    print(json.dumps(copy_synthesis(dec, examples)))
    print(json.dumps(streaming_closeness(dec, examples)))
    if args.png:
        english = [e for e in examples if e.lang == "en"] or examples
        figure(dec, english[0], args.png)
        print(json.dumps({"figure": str(args.png)}))


if __name__ == "__main__":
    main()
