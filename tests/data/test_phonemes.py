"""Phonemes of transcripts by espeak-ng's rules: what the tokenizer's phonemic CTC head learns to hear."""

from __future__ import annotations

import pytest

from glm4voice.data.phonemes import inventory, phonemes
from glm4voice.errors import Glm4VoiceError


def test_english_phonemes_without_stress_or_boundaries():
    zero = phonemes("zero", "en")
    assert zero == ("z", "i@", "r", "oU")  # espeak-ng's en-us: z 'i@ r oU, the stress mark dropped
    sentence = phonemes("What is zero plus one?", "en")
    assert sentence[4:8] == ("z", "z", "i@", "r") and all(p and "'" not in p and " " not in p for p in sentence)
    assert phonemes("zero", "en") is phonemes("zero", "en")  # cached: a corpus is phonemized once


def test_mandarin_phonemes_keep_their_tones():
    # 零 ling2 and 一 yi1: the vowel carries the tone contour (35 rising, 55 level), so tones are classes
    assert phonemes("零", "zh") == ("l", "i35", "N")
    assert phonemes("一", "zh")[-1].endswith("55")
    assert phonemes("零加零。", "zh") == ("l", "i35", "N", "tS;", "iA55", "l", "i35", "N")  # no syllable marks


def test_inventory_is_the_sorted_set_and_bad_language_is_one_line():
    symbols = inventory([("zero", "en"), ("零", "zh"), ("one", "en")])
    assert symbols == sorted(set(symbols)) and {"z", "i35", "N", "w", "V", "n"} <= set(symbols)
    with pytest.raises(Glm4VoiceError, match="no phonemes for language 'fr'"):
        phonemes("bonjour", "fr")
