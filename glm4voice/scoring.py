"""Scoring speech: transcript normalisation, error counts, and an independent English recogniser.

One place for what every quality figure uses: the tokenizer's validation WER/CER,
the decoder's intelligibility check, and evaluation. The recogniser is
pocketsphinx (its wheel carries an English model: nothing to download). Its own
error rate on clean synthetic speech is 5-70 % depending on the voice, so
compare a re-synthesis with the original recording of the same sentences, never
with zero.
"""

from __future__ import annotations

import unicodedata

import numpy as np


def normalize(text: str, lang: str) -> str:
    """Lower case, no punctuation; Mandarin without spaces (CER counts characters)."""
    kept = "".join(c if not unicodedata.category(c).startswith("P") else " " for c in text.lower())
    if lang == "zh":
        return "".join(kept.split()) or "-"
    return " ".join(kept.split()) or "-"


def errors(reference: str, hypothesis: str, lang: str) -> tuple[int, int]:
    """(edit errors, reference length): words for English, characters for Mandarin (jiwer), after `normalize`."""
    import jiwer

    ref, hyp = normalize(reference, lang), normalize(hypothesis, lang)
    out = jiwer.process_words(ref, hyp) if lang == "en" else jiwer.process_characters(ref, hyp)
    return out.substitutions + out.deletions + out.insertions, out.substitutions + out.deletions + out.hits


def symbol_errors(reference: list[int], hypothesis: list[int]) -> tuple[int, int]:
    """(edit errors, reference length) between two symbol sequences, e.g. phoneme ids (jiwer, a symbol a word)."""
    import jiwer

    if not reference:
        return len(hypothesis), 0
    out = jiwer.process_words(" ".join(map(str, reference)), " ".join(map(str, hypothesis)) or "-")
    return out.substitutions + out.deletions + out.insertions, len(reference)


_DECODER = None


def recognise_english(audio, sample_rate: int) -> str:
    """pocketsphinx's transcript of mono float audio (its bundled US-English model, 16 kHz).

    Its feature front end (cepstral mean, noise estimate) is reset before every utterance: left as it was, it
    carries over, and the words heard in one recording depended on what was recognised before it (a
    recording after a noisy re-synthesis lost words it had when heard first)."""
    global _DECODER
    from pocketsphinx import Decoder

    from .audio import resample

    if _DECODER is None:
        _DECODER = Decoder(samprate=16000, loglevel="FATAL")
    audio = resample(np.asarray(audio, dtype=np.float32), sample_rate, 16000) if sample_rate != 16000 else audio
    pcm = (np.clip(np.asarray(audio, dtype=np.float32), -1, 1) * 32767).astype(np.int16).tobytes()
    _DECODER.reinit_feat()
    _DECODER.start_utt()
    _DECODER.process_raw(pcm, full_utt=True)
    _DECODER.end_utt()
    hyp = _DECODER.hyp()
    return hyp.hypstr if hyp is not None else ""


MCD_COEFFICIENTS = 24  # cepstral coefficients 1..24 (c0, the loudness, excluded)


def mel_cepstra(log_mel: np.ndarray) -> np.ndarray:
    """Cepstra [frames, 24] of a natural-log mel spectrogram [bins, frames]: orthonormal DCT-II over bins."""
    bins = log_mel.shape[0]
    k, n = np.arange(bins)[:, None], np.arange(bins)[None]
    basis = np.cos(np.pi * k * (n + 0.5) / bins) * np.sqrt(2.0 / bins)  # [k, bin]
    return (basis[1 : MCD_COEFFICIENTS + 1] @ log_mel).T


def dtw(cost: np.ndarray) -> tuple[float, int]:
    """The cheapest monotonic alignment of a pair-cost matrix [Na, Nb] (steps right, down, diagonal) from
    (0, 0) to the last pair: (its summed cost, its number of pairs). Row by row: D[i, j] = cost[i, j] +
    min(D[i-1, j], D[i-1, j-1], D[i, j-1]), the in-row term unrolled as a running minimum of prefix sums."""
    rows, cols = cost.shape
    total = np.full(cost.shape, np.inf)
    for i in range(rows):
        if i:
            above = cost[i] + np.minimum(total[i - 1], np.r_[np.inf, total[i - 1][:-1]])
        else:
            above = np.r_[cost[0, 0], np.full(cols - 1, np.inf)]
        prefix = np.cumsum(cost[i])
        total[i] = prefix + np.minimum.accumulate(above - prefix)
    i, j, pairs = rows - 1, cols - 1, 1  # walk the cheapest path back to count its pairs
    while i or j:
        options = [(total[i - 1, j - 1], i - 1, j - 1)] if i and j else []
        options += [(total[i - 1, j], i - 1, j)] if i else []
        options += [(total[i, j - 1], i, j - 1)] if j else []
        _, i, j = min(options)
        pairs += 1
    return float(total[-1, -1]), pairs


def mel_cepstral_distortion(log_mel_a, log_mel_b) -> float:
    """Mel cepstral distortion (dB) of two log-mel spectrograms [bins, frames], aligned by DTW.

    (10 / ln 10) sqrt(2 sum_k (c_k - c'_k)^2), averaged over the frame pairs of the cheapest monotonic
    alignment, so a re-synthesis that is a little faster or slower is not punished for its timing. The
    cepstra come from the mel (an MFCC-style approximation of SPTK's mel-cepstrum): figures compare
    within this project, not with papers' MCD."""
    a, b = mel_cepstra(np.asarray(log_mel_a, np.float64)), mel_cepstra(np.asarray(log_mel_b, np.float64))
    total, pairs = dtw(np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)))
    return float(10 / np.log(10) * np.sqrt(2) * total / pairs)
