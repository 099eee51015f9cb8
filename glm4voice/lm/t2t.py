"""The text-to-token model: text in, 12.5 Hz speech codes out (the synthetic-interleaving paper's converter).

It is an LM folder in the project's own format (Glm weights, tokenizer files with the audio ids), so the LM
loader, the trainer (`train-t2t` is `train-lm` on one TTS source) and this generation code are shared. A
sample is `text <|endoftext|> <|begin_of_audio|> codes <|end_of_audio|>` with the loss on the codes and the
end marker; generation feeds the text and `<|begin_of_audio|>` and samples codes until `<|end_of_audio|>`.

    t2t = TextToToken.from_pretrained("runs/t2t/step-2000")
    codes = t2t.generate(["Hello there.", "你好。"])        # [[907, 33, ...], [...]]

Small TTS LMs fall into loops; two guards keep them out:
- repetition-aware sampling (VALL-E 2, CosyVoice 2): a code drawn by top-k/top-p that already fills more
  than `repeat_share` of the last `repeat_window` codes is drawn again from the whole distribution;
- a length window in codes per character of text: the end marker is forbidden before `min_codes_per_char`
  x characters and forced at `max_codes_per_char` x characters.
Rows are generated together (left-padded, one KV cache), only audio ids and the end marker allowed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import Glm4VoiceError
from .generate import Sampler, SamplingConfig
from .text import TextTokenizer


@dataclass
class T2TConfig:
    """Sampling and guards of `TextToToken.generate` (sampling: `SamplingConfig`'s meaning)."""

    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 25
    repeat_window: int = 10
    repeat_share: float = 0.1
    min_codes_per_char: float = 0.5
    max_codes_per_char: float = 6.0
    seed: int | None = 0

    def __post_init__(self):
        SamplingConfig(self.temperature, self.top_p, self.top_k, 1, seed=self.seed)  # the same checks
        if self.repeat_window < 1 or not 0 < self.repeat_share <= 1:
            raise Glm4VoiceError("repeat_window must be >= 1 and repeat_share in (0, 1]")
        if not 0 <= self.min_codes_per_char < self.max_codes_per_char:
            raise Glm4VoiceError("need 0 <= min_codes_per_char < max_codes_per_char")


def t2t_sample_ids(tok: TextTokenizer, text: str, codes: Sequence[int]) -> tuple[list[int], list[int]]:
    """(ids, labels) of one training pair: loss on the codes and the end marker only."""
    prompt = t2t_prompt(tok, text)
    target = [*tok.audio_ids(codes), tok.token_id("<|end_of_audio|>")]
    return prompt + target, [-100] * len(prompt) + target


def t2t_prompt(tok: TextTokenizer, text: str) -> list[int]:
    return [*tok.encode(text), tok.token_id("<|endoftext|>"), tok.token_id("<|begin_of_audio|>")]


class TextToToken:
    def __init__(self, model, tokenizer: TextTokenizer):
        if not tokenizer.n_audio:
            raise Glm4VoiceError(f"{tokenizer.source}: a text-to-token model needs audio ids in its tokenizer")
        self.model, self.tok = model.eval(), tokenizer
        self.end = tokenizer.token_id("<|end_of_audio|>")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device="cpu", dtype="float32") -> TextToToken:
        from .checkpoint import load_lm

        return cls(load_lm(path, device=device, dtype=dtype), TextTokenizer.from_pretrained(path))

    @torch.inference_mode()
    def generate(self, texts: Sequence[str], config: T2TConfig | None = None) -> list[list[int]]:
        """Speech codes (0 .. n_audio-1) for each text, all rows in one batch."""
        from transformers import DynamicCache

        cfg = config or T2TConfig()
        if not texts:
            return []
        if any(not isinstance(t, str) or not t.strip() for t in texts):
            raise Glm4VoiceError("every text must be a non-empty string")
        device = self.model.device
        prompts = [t2t_prompt(self.tok, t) for t in texts]
        chars = [len("".join(t.split())) for t in texts]
        low = [int(cfg.min_codes_per_char * c) for c in chars]
        high = [max(1, int(cfg.max_codes_per_char * c + 0.999)) for c in chars]
        width, rows = max(len(p) for p in prompts), len(prompts)
        pad = self.tok.token_id("<|endoftext|>")
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        allowed = torch.full((self.model.config.vocab_size,), float("-inf"), device=device)
        allowed[self.tok.audio_offset : self.tok.audio_offset + self.tok.n_audio] = 0.0
        allowed[self.end] = 0.0
        pick = Sampler(SamplingConfig(cfg.temperature, cfg.top_p, cfg.top_k, 1, seed=cfg.seed), device)
        fallback = Sampler(SamplingConfig(1.0, 1.0, 0, 1), device)
        fallback.generator = pick.generator  # one stream of randomness: the output is a function of the seed
        cache = DynamicCache(config=self.model.config)
        out: list[list[int]] = [[] for _ in texts]
        done = [False] * rows
        logits = self._step(ids, mask, positions, cache)
        for _ in range(max(high)):
            step = torch.full((rows, 1), pad, device=device)
            for r in range(rows):
                if done[r]:
                    continue
                row = logits[r] + allowed
                if len(out[r]) < low[r]:
                    row[self.end] = float("-inf")
                token = self.end if len(out[r]) >= high[r] else self._sample(row, out[r], pick, fallback, cfg)
                if token == self.end:
                    done[r] = True
                else:
                    out[r].append(token)
                    step[r, 0] = token
            if all(done):
                break
            mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)
            positions = positions[:, -1:] + 1
            logits = self._step(step, mask, positions, cache)
        return [[self.tok.code_of(t) for t in row] for row in out]

    def _step(self, ids, mask, positions, cache) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                         logits_to_keep=1)  # fmt: skip
        return out.logits[:, -1].float()

    @staticmethod
    def _sample(logits, history: list[int], pick: Sampler, fallback: Sampler, cfg: T2TConfig) -> int:
        token = pick(logits)
        recent = history[-cfg.repeat_window :]
        if recent.count(token) >= max(1, cfg.repeat_share * cfg.repeat_window):
            token = fallback(logits)  # repetition-aware: a looping code is drawn again from everything
        return token
