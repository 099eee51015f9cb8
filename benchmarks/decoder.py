"""Speech decoder speed at full size (random weights): offline RTF, streaming latency and cost.

The architecture is the released glm-4-voice-decoder's (flow: 512-d, 6-block
block-causal Conformer, U-Net estimator with channels [256, 256], 4
transformer blocks per stage, 12 mid stages, 8 heads of 64; HiFT: 512 base
channels, upsampling 8 x 8, iSTFT n_fft 16 hop 4). Weights are random, so the
audio is noise, but the work per id is the real one.

Prints:
- the machine's fp32 matmul peak (a 2048^3 matmul, best of several);
- offline: compute time and RTF (compute seconds per audio second);
- streaming (this package's schedule, ids pushed one by one): time from the
  10th id to the first audio sample (median of --repeats fresh streams),
  beside its floor (the first chunk's FLOPs over the matmul peak), total
  compute and RTF;
- the kernel floor: every matmul, convolution and attention call of the first
  chunk replayed alone at its own shape with hot caches (best of 5), summed.
  No implementation built on these kernels can beat it; it shows how far the
  chunk's small matrices (68 or 136 rows) sit below the 2048^3 peak;
- the same for the opt-in int8 flow (`int8=True`): first audio, offline RTF,
  and its mel distance from fp32;
- total FLOPs of this schedule vs the reference schedule (chunks of 25, 50,
  100, 150, 200, ... ids, each decoded with the whole history as prompt),
  counted with torch's FLOP counter; with --time-reference the reference
  schedule is also run and timed (emulated with these modules);
- streamed-vs-offline mean |delta log-mel| (same noise field), beside the
  distance between two offline decodes that differ only in their noise.

Usage: .venv/bin/python benchmarks/decoder.py [--seconds 30] [--time-reference]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_info, matmul_peak  # noqa: E402
from glm4voice.audio import decoder_log_mel  # noqa: E402
from glm4voice.decoder import SpeechDecoder  # noqa: E402
from glm4voice.decoder.config import DecoderConfig, FlowConfig, HiftConfig  # noqa: E402
from glm4voice.decoder.flow import FlowModel  # noqa: E402
from glm4voice.decoder.hift import HiFT  # noqa: E402
from glm4voice.quant import quantize_linear_int8  # noqa: E402

REFERENCE_CHUNKS = (25, 50, 100, 150, 200)
aten = torch.ops.aten


def _sdpa_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    """Scores and weighted values: 2 b h t s (d + d_v). torch's counter misses the CPU attention op."""
    b, h, t, d = q
    return 2 * b * h * t * k[-2] * (d + v[-1])


SDPA = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
# What the recorder replays: the calls as the model makes them (linear before it becomes addmm).
KERNELS = {aten.linear, aten.matmul, aten.mm, aten.addmm, aten.bmm, aten.conv1d, aten.conv_transpose1d,
           aten.convolution, aten.scaled_dot_product_attention}


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=SDPA)


class KernelRecorder(TorchDispatchMode):
    """Records each matmul / convolution / attention call (op, arguments) made under it."""

    def __init__(self):
        super().__init__()
        self.count, self.calls = Counter(), {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._overloadpacket in KERNELS:
            key = (func, tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else repr(a) for a in args))
            self.count[key] += 1
            self.calls.setdefault(key, (args, kwargs))
        return func(*args, **kwargs)


def kernel_floor(recorder: KernelRecorder) -> tuple[float, float]:
    """(seconds, FLOPs): every recorded call replayed alone, hot caches, best of 5, times its count."""
    seconds = flops = 0.0
    with torch.inference_mode():
        for key, n in recorder.count.items():
            args, kwargs = recorder.calls[key]
            with flop_counter() as counter:
                key[0](*args, **kwargs)
            key[0](*args, **kwargs)
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter()
                key[0](*args, **kwargs)
                best = min(best, time.perf_counter() - start)
            seconds += n * best
            flops += n * counter.get_total_flops()
    return seconds, flops


def full_size_decoder() -> SpeechDecoder:
    torch.manual_seed(0)
    cfg = DecoderConfig(FlowConfig(), HiftConfig())  # the defaults are the released sizes
    return SpeechDecoder(cfg, FlowModel(cfg.flow), HiFT(cfg.hift))


class FlopModel:
    """FLOPs of one flow call (ids, frames) and of HiFT per frame, counted on the meta device."""

    def __init__(self, dec: SpeechDecoder, n_steps: int = 10):
        self.n_steps, self.cache = n_steps, {}
        with torch.device("meta"):
            self.flow = FlowModel(dec.config.flow)
        hift = dec.hift
        with flop_counter() as counter, torch.inference_mode():
            hift(torch.zeros(1, 80, 20), torch.zeros(1, 1, 20 * dec.samples_per_frame))
        self.hift_per_frame = counter.get_total_flops() / 20

    def flow_flops(self, n_ids: int, n_frames: int) -> float:
        key = (n_ids, n_frames)
        if key not in self.cache:
            ids = torch.zeros(1, n_ids, dtype=torch.long, device="meta")
            x = torch.zeros(2, 80, n_frames, device="meta")
            est = self.flow.decoder.estimator
            with flop_counter() as enc, torch.inference_mode():
                self.flow.mu(ids, n_frames)
            with flop_counter() as one, torch.inference_mode():
                est(x, x, torch.zeros(2, device="meta"), torch.zeros(2, 80, device="meta"), x)
            self.cache[key] = enc.get_total_flops() + self.n_steps * one.get_total_flops()
        return self.cache[key]


def stream_flops(fm: FlopModel, dec: SpeechDecoder, stats, overlap: int, vocoder_context: int) -> float:
    total = 0.0
    for i, c in enumerate(stats):
        total += fm.flow_flops(c.codes + c.context_codes, c.frames)
        frames = c.audio_samples // dec.samples_per_frame
        look = min(overlap, vocoder_context) if i < len(stats) - 1 else 0
        total += fm.hift_per_frame * (frames + look + (vocoder_context if i else 0))
    return total


def reference_flops(fm: FlopModel, dec: SpeechDecoder, n_ids: int, overlap: int = 34) -> float:
    """The reference demo: chunk k is decoded with all earlier ids (and mel) as prompt."""
    total, done, k = 0.0, 0, 0
    while done < n_ids:
        size = REFERENCE_CHUNKS[min(k, len(REFERENCE_CHUNKS) - 1)]
        end = min(n_ids, done + size)
        total += fm.flow_flops(end, dec.frames(end))
        new = dec.frames(end) - dec.frames(done) + (overlap if done else 0) - (overlap if end < n_ids else 0)
        total += fm.hift_per_frame * (new + (1 if done else 0))  # 1 frame of HiFT cache
        done, k = end, k + 1
    return total


def run_stream(dec: SpeechDecoder, ids: list[int], **options):
    s = dec.stream(**options)
    pieces, first, t10 = [], None, None
    start = time.perf_counter()
    for i, token in enumerate(ids):
        if i == 9:
            t10 = time.perf_counter()
        piece = s.push([token])
        if piece.numel() and first is None:
            first = time.perf_counter() - t10
        pieces.append(piece)
    pieces.append(s.flush())
    return s, torch.cat(pieces), first, time.perf_counter() - start


def first_chunk_seconds(dec: SpeechDecoder, ids: list[int], repeats: int) -> list[float]:
    """Time of the push that completes the first chunk, on `repeats` fresh streams (after a warm-up)."""
    times = []
    for _ in range(repeats + 1):
        s = dec.stream()
        s.push(ids[:9])
        start = time.perf_counter()
        audio = s.push(ids[9:10])
        times.append(time.perf_counter() - start)
        assert audio.numel(), "the first chunk should come with the 10th id"
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="reply length (12.5 codes per second)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--time-reference", action="store_true", help="also run and time the reference schedule")
    parser.add_argument("--repeats", type=int, default=5, help="fresh streams timed for the first-chunk latency")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dec = full_size_decoder()
    n_ids = int(round(args.seconds * 12.5))
    ids = torch.randint(0, dec.vocab_size, (n_ids,), generator=torch.Generator().manual_seed(1)).tolist()
    n_frames = dec.frames(n_ids)
    audio_s = n_frames * dec.samples_per_frame / dec.sample_rate
    peak = matmul_peak()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"cpu: {cpu_info()}")
    print(f"threads {torch.get_num_threads()}, fp32 matmul peak {peak / 1e9:.1f} GFLOP/s, load average {load}")
    print(f"reply: {n_ids} ids, {n_frames} mel frames, {audio_s:.2f} s of audio")

    # Offline, with the stream's noise field so the two can be compared.
    start = time.perf_counter()
    mel = dec.flow_mel(ids, noise=dec.positional_noise(0, n_frames))
    t_flow = time.perf_counter() - start
    offline_audio = dec.vocode(mel)
    t_off = time.perf_counter() - start
    print(f"offline: {t_off:.1f} s (flow {t_flow:.1f} s, hift {t_off - t_flow:.1f} s), RTF {t_off / audio_s:.2f}")

    opts = dict(keep_mel=True)
    s, audio, _, t_stream = run_stream(dec, ids, **opts)
    fm = FlopModel(dec)
    first_flops = fm.flow_flops(s.stats[0].ids, s.stats[0].frames) + fm.hift_per_frame * (
        s.stats[0].audio_samples // dec.samples_per_frame + min(s.options.overlap_frames, s.options.vocoder_context)
    )
    floor = first_flops / peak
    print(
        f"stream: chunks {[c.codes for c in s.stats]}, context {s.options.context_codes} codes, "
        f"overlap {s.options.overlap_frames} frames"
    )
    firsts = first_chunk_seconds(dec, ids, args.repeats)
    first = statistics.median(firsts)
    print(
        f"  first audio {first:.2f} s after the 10th id (median of {len(firsts)}, min {min(firsts):.2f}); "
        f"floor {floor:.2f} s ({first_flops / 1e9:.0f} GFLOP at peak) -> {first / floor:.2f}x floor"
    )
    recorder = KernelRecorder()
    with recorder:
        dec.stream().push(ids[:10])
    k_seconds, k_flops = kernel_floor(recorder)
    print(
        f"  kernel floor: its {sum(recorder.count.values())} matmul/conv/attention calls "
        f"({k_flops / 1e9:.0f} GFLOP), each alone at its shape, take {k_seconds:.2f} s "
        f"({k_flops / k_seconds / 1e9:.0f} GFLOP/s = {k_flops / k_seconds / peak:.0%} of peak) "
        f"-> {k_seconds / floor:.2f}x floor before any other work"
    )
    print(f"  total {t_stream:.1f} s, RTF {t_stream / audio_s:.2f} ({t_stream / t_off:.2f}x offline)")

    int8 = SpeechDecoder(dec.config, quantize_linear_int8(copy.deepcopy(dec.flow), "decoding"), dec.hift)
    firsts8 = first_chunk_seconds(int8, ids, args.repeats)
    start = time.perf_counter()
    mel8 = int8.flow_mel(ids, noise=dec.positional_noise(0, n_frames))
    t8 = time.perf_counter() - start + (t_off - t_flow)  # same HiFT
    print(
        f"int8 flow: first audio {statistics.median(firsts8):.2f} s (median, min {min(firsts8):.2f}) "
        f"-> {statistics.median(firsts8) / floor:.2f}x the fp32 floor; offline RTF {t8 / audio_s:.2f}; "
        f"mel vs fp32 mean |d| {(mel8 - mel).abs().mean().item():.4f}"
    )

    mine = stream_flops(fm, dec, s.stats, s.options.overlap_frames, s.options.vocoder_context)
    ref = reference_flops(fm, dec, n_ids)
    offline_flops = fm.flow_flops(n_ids, n_frames) + fm.hift_per_frame * n_frames
    print(
        f"compute: offline {offline_flops / 1e12:.2f} TFLOP, this stream {mine / 1e12:.2f} TFLOP, "
        f"reference schedule {ref / 1e12:.2f} TFLOP -> this/reference {mine / ref:.2f}"
    )
    if args.time_reference:
        _, _, ref_first, t_ref = run_stream(
            dec, ids, chunk_codes=REFERENCE_CHUNKS, context_codes=None, noise="reference", fade="hamming"
        )
        print(
            f"  reference schedule run: total {t_ref:.1f} s (RTF {t_ref / audio_s:.2f}), "
            f"first audio {ref_first:.2f} s; this/reference time {t_stream / t_ref:.2f}"
        )

    streamed = torch.cat(s.mel, dim=2)
    resampled = dec.flow_mel(ids, noise=dec.positional_noise(0, n_frames, seed=7))
    d_stream = (streamed - mel).abs().mean().item()
    d_noise = (resampled - mel).abs().mean().item()
    a_stream = (decoder_log_mel(audio) - decoder_log_mel(offline_audio)).abs().mean().item()
    print(
        f"streamed vs offline mean |d log-mel|: mel {d_stream:.3f}, audio {a_stream:.3f}; "
        f"offline vs offline with other noise: {d_noise:.3f}"
    )


if __name__ == "__main__":
    main()
