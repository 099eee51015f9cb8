"""A model folder as the evaluation sees it: `tokenizer/`, `lm/`, `decoder/`, `t2t/`, each loaded when a suite
first needs it, so a suite runs on a bundle that has only its parts (the `asr` suite needs a tokenizer only)."""

from __future__ import annotations

import functools
from pathlib import Path

from ..errors import Glm4VoiceError


class Bundle:
    def __init__(self, model_dir, device: str = "cpu"):
        self.root = Path(model_dir)
        if not self.root.is_dir():
            raise Glm4VoiceError(f"--model-dir {self.root}: no such folder")
        self.device = device

    def part(self, name: str) -> Path:
        folder = self.root / name
        if not folder.is_dir():
            raise Glm4VoiceError(f"{self.root} has no {name}/ (this suite needs it)")
        return folder

    @functools.cached_property
    def tokenizer(self):
        from ..tokenizer import SpeechTokenizer

        return SpeechTokenizer.from_pretrained(self.part("tokenizer"), device=self.device)

    @functools.cached_property
    def asr(self):
        """(ASR model, transcript codec): the tokenizer's ASR head (the ASR-training layout)."""
        from ..tokenizer.asr import load_asr

        model, codec = load_asr(self.part("tokenizer"))
        return model.to(self.device).eval(), codec

    @functools.cached_property
    def lm(self):
        from ..lm import load_lm

        return load_lm(self.part("lm"), device=self.device)

    @functools.cached_property
    def text_tokenizer(self):
        from ..lm.text import TextTokenizer

        return TextTokenizer.from_pretrained(self.lm.name_or_path)

    @functools.cached_property
    def decoder(self):
        from ..decoder import SpeechDecoder

        return SpeechDecoder.from_pretrained(self.part("decoder"), device=self.device)

    @functools.cached_property
    def t2t(self):
        from ..lm.t2t import TextToToken

        return TextToToken.from_pretrained(self.part("t2t"), device=self.device)

    def chat(self, max_new_tokens: int = 300, speak: bool = True):
        """A fresh conversation, greedy (evaluation is deterministic), with speech output when there is a decoder
        (`speak=False`: text and codes only, for figures that read the reply text alone)."""
        from ..chat import VoiceChat
        from ..lm.generate import SamplingConfig

        decoder = self.decoder if speak and (self.root / "decoder").is_dir() else None
        tokenizer = self.tokenizer if (self.root / "tokenizer").is_dir() else None
        return VoiceChat(tokenizer, self.lm, decoder, self.text_tokenizer,
                         sampling=SamplingConfig(temperature=0, max_new_tokens=max_new_tokens))  # fmt: skip
