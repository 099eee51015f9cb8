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


_DECODER = None


def recognise_english(audio, sample_rate: int) -> str:
    """pocketsphinx's transcript of mono float audio (its bundled US-English model, 16 kHz)."""
    global _DECODER
    from pocketsphinx import Decoder

    from .audio import resample

    if _DECODER is None:
        _DECODER = Decoder(samprate=16000, loglevel="FATAL")
    audio = resample(np.asarray(audio, dtype=np.float32), sample_rate, 16000) if sample_rate != 16000 else audio
    pcm = (np.clip(np.asarray(audio, dtype=np.float32), -1, 1) * 32767).astype(np.int16).tobytes()
    _DECODER.start_utt()
    _DECODER.process_raw(pcm, full_utt=True)
    _DECODER.end_utt()
    hyp = _DECODER.hyp()
    return hyp.hypstr if hyp is not None else ""
