"""Transcripts as phonemes, by espeak-ng's own rules: the targets of the tokenizer's phonemic CTC head.

    phonemes("What is zero plus one?", "en")  -> ('w', 'V', 't', 'I', 'z', 'z', 'i@', 'r', 'oU', ...)
    phonemes("零加零。", "zh")                 -> ('l', 'i35', 'N', 'tS;', 'iA55', 'l', 'i35', 'N')

Why: a small recogniser from scratch learns sounds sooner than spellings. A byte-level BPE piece ("ero" of
"zero") stands for different sounds in different words and a Mandarin character for one of many homophones,
while a phoneme sequence is what was said (lower-layer phoneme CTC beside subword targets above: hierarchical
multitask CTC). For the synthetic corpora the Mandarin and espeak-ng English phonemes are exactly what the
synthesiser spoke; flite's and festival's lexicons differ from espeak-ng's in few words.

libespeak-ng (the `espeak-ng` Debian package, which `make` installs) through ctypes: its
`espeak_TextToPhonemes` in ASCII mode (Kirshenbaum-like names, with Mandarin's tone contours as digits:
`i214`, `ua51`; its IPA mode collapses 55 and 51, espeak-ng PR #2542), a `_` between phonemes. Stress marks,
word, syllable and clause boundaries and pauses are dropped: CTC targets are what is heard, in order.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

from ..errors import Glm4VoiceError

VOICES = {"en": "en-us", "zh": "cmn-latn-pinyin"}  # the Mandarin voice that says Mandarin (see data.speak)
_SEPARATOR = ord("_") << 8  # phoneme mode bits 8-23: the character between phonemes; bit 1 (IPA) off
_RETRIEVAL, _DONT_EXIT = 1, 0x8000  # espeak_Initialize: no audio device; errors return instead of exiting


class PhonemesUnavailable(Glm4VoiceError):
    """libespeak-ng is missing or will not start."""


@functools.cache
def _library():
    path = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    try:
        lib = ctypes.cdll.LoadLibrary(path)
    except OSError:
        raise PhonemesUnavailable("phonemes need libespeak-ng: apt-get install espeak-ng (or run make)") from None
    if lib.espeak_Initialize(_RETRIEVAL, 0, None, _DONT_EXIT) < 0:
        raise PhonemesUnavailable("libespeak-ng would not start (espeak_Initialize failed)")
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    return lib


@functools.lru_cache(maxsize=1 << 16)
def phonemes(text: str, lang: str) -> tuple[str, ...]:
    """The phonemes espeak-ng says `text` with, in the voice of `lang` (en, zh); stress and boundaries dropped."""
    if lang not in VOICES:
        raise Glm4VoiceError(f"no phonemes for language {lang!r}: en or zh")
    lib = _library()
    if lib.espeak_SetVoiceByName(VOICES[lang].encode()) != 0:
        raise PhonemesUnavailable(f"espeak-ng has no voice {VOICES[lang]!r}")
    buffer = ctypes.create_string_buffer(text.encode("utf-8"))
    cursor = ctypes.c_void_p(ctypes.addressof(buffer))  # espeak moves it clause by clause; NULL at the end
    out: list[str] = []
    while cursor.value:
        clause = lib.espeak_TextToPhonemes(ctypes.byref(cursor), 1, _SEPARATOR)  # 1: UTF-8 text
        for word in (clause or b"").decode("utf-8", "replace").split():
            out += [p for p in map(_symbol, word.split("_")) if p and not p.startswith("(")]
    return tuple(out)


def _symbol(name: str) -> str:
    """One phoneme name without its stress marks (`'` primary, `,` secondary) and the boundary marks before it
    (`|` between Mandarin syllables, `:` a short pause); '' for a bare mark or a language switch `(en)`."""
    return name.replace("'", "").replace(",", "").lstrip("|:")


def inventory(pairs) -> list[str]:
    """The sorted phoneme symbols of (text, lang) pairs: a phonemic CTC head's output classes (after the blank)."""
    return sorted({p for text, lang in pairs for p in phonemes(text, lang)})
