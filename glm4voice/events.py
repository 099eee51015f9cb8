"""Every event a spoken turn streams, in one place: the LM's (`TextEvent`, `AudioEvent`, `EndEvent`) and the
chat's (`UserEvent`, `AudioChunk`, `Reply`).

Words: LM vocabulary entries are **ids**; the 12.5 Hz speech units (0..16383, the
speech tokenizer's codebook indices, `<|audio_N|>` in the LM) are **codes**.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class UserEvent:
    """The user's turn as the LM sees it: the prompt ids appended, and the speech codes or text."""

    ids: list[int]
    speech: list[int] | None
    text: str | None


@dataclass
class TextEvent:
    """A sampled text id; `text` is what it adds to the reply (may be "" mid-character)."""

    text: str
    ids: list[int]


@dataclass
class AudioEvent:
    """Sampled speech, as codes 0..16383 for the speech decoder."""

    codes: list[int]


@dataclass
class EndEvent:
    """The LM's reply is over: `reason` is "stop" (a stop id was sampled) or "length" (max_new_tokens)."""

    reason: str
    stop_id: int | None
    n_ids: int  # generated ids, the stop id excluded
    text: str
    codes: list[int]
    prompt_ids: int  # ids run in the prefill of this turn
    prefill_seconds: float  # turn start -> first id sampled
    decode_seconds: float  # first id sampled -> last id sampled
    sampled: int = 0  # ids sampled, the stop id included

    @property
    def ids_per_second(self) -> float:
        """Decode rate: ids sampled after the first, per second (each took one model step)."""
        steps = self.sampled - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else 0.0


@dataclass
class AudioChunk:
    """Reply audio from the streaming decoder (1-D float32 at `sample_rate`)."""

    audio: torch.Tensor
    sample_rate: int


@dataclass
class Timings:
    """Seconds from the start of the turn (speech tokenization included), and decode speed."""

    tokenize: float = 0.0  # speech input -> codes
    first_text: float | None = None  # first visible reply text
    first_audio: float | None = None  # first audio chunk
    prefill: float = 0.0  # LM prompt pass
    total: float = 0.0
    ids_per_second: float = 0.0  # LM ids sampled per second of decode (decoder time included)


@dataclass
class Reply:
    """The whole reply: text, speech codes, audio, why it ended, timings."""

    text: str
    codes: list[int]
    audio: torch.Tensor
    sample_rate: int
    reason: str
    n_ids: int
    timings: Timings = field(default_factory=Timings)

    @property
    def seconds(self) -> float:
        return self.audio.numel() / self.sample_rate if self.sample_rate else 0.0


LMEvent = TextEvent | AudioEvent | EndEvent
ChatEvent = UserEvent | TextEvent | AudioEvent | AudioChunk | Reply
