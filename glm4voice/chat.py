"""Voice chat: speech tokenizer -> speech LM -> streaming speech decoder, one streaming turn at a time.

    chat = VoiceChat.from_pretrained(model_dir="glm-4-voice")   # tokenizer/, lm/, decoder/
    for event in chat.turn("question.wav"):                      # or chat.turn(text="...")
        ...  # UserEvent, TextEvent, AudioEvent, AudioChunk, then Reply (last)

A `VoiceChat` is one conversation: it keeps the history and the LM's KV cache,
so each turn only runs its own new ids. Speech ids stream into the decoder as
the LM samples them; the decoder returns its first audio after the first 10
speech ids (its default chunk schedule 10, 20, 40, ...).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import CheckpointError, Glm4VoiceError
from .lm.generate import AudioEvent, Conversation, EndEvent, SamplingConfig, TextEvent
from .lm.prompt import UserInput
from .lm.text import TextTokenizer


@dataclass
class UserEvent:
    """The user's turn as the LM sees it: the prompt ids appended, and the speech codes or text."""

    ids: list[int]
    speech: list[int] | None
    text: str | None


@dataclass
class AudioChunk:
    """Reply audio from the streaming decoder (1-D float32 at `sample_rate`)."""

    audio: torch.Tensor
    sample_rate: int


@dataclass
class Timings:
    """Seconds from the start of the turn (speech tokenization included), and decode speed."""

    tokenize: float = 0.0  # speech input -> ids
    first_text: float | None = None  # first visible reply text
    first_audio: float | None = None  # first audio chunk
    prefill: float = 0.0  # LM prompt pass
    total: float = 0.0
    tokens_per_second: float = 0.0  # LM tokens sampled per second of decode (decoder time included)


@dataclass
class Reply:
    """The whole reply: text, speech codes, audio, why it ended, timings."""

    text: str
    codes: list[int]
    audio: torch.Tensor
    sample_rate: int
    reason: str
    n_tokens: int
    timings: Timings = field(default_factory=Timings)

    @property
    def seconds(self) -> float:
        return self.audio.numel() / self.sample_rate if self.sample_rate else 0.0


ChatEvent = UserEvent | TextEvent | AudioEvent | AudioChunk | Reply


class VoiceChat:
    """One spoken conversation.

    `tokenizer`: a `SpeechTokenizer` (only needed for speech input), `lm`: the
    `GlmForCausalLM` from `load_lm`, `decoder`: a `SpeechDecoder` (None: text
    and speech codes only, no audio), `text_tokenizer`: the LM's
    `TextTokenizer` (default: read from the folder `load_lm` loaded).
    `sampling` sets the defaults of every turn; `stream_options` go to
    `decoder.stream(...)`.
    """

    def __init__(
        self,
        tokenizer,
        lm,
        decoder=None,
        text_tokenizer: TextTokenizer | None = None,
        *,
        system: str | None = None,
        sampling: SamplingConfig | None = None,
        stream_options: dict | None = None,
    ):
        if text_tokenizer is None:
            source = getattr(lm, "name_or_path", None)
            if not source:
                raise Glm4VoiceError("pass text_tokenizer= (the LM was not loaded from a folder)")
            text_tokenizer = TextTokenizer.from_pretrained(source)
        dec_vocab = getattr(decoder, "vocab_size", None)
        if dec_vocab is not None and text_tokenizer.n_audio > dec_vocab:
            raise CheckpointError(
                f"the LM has {text_tokenizer.n_audio} speech tokens but the decoder only {dec_vocab}: "
                "they are not from the same release"
            )
        self.tokenizer = tokenizer
        self.lm = lm
        self.decoder = decoder
        self.text_tokenizer = text_tokenizer
        self.sampling = sampling or SamplingConfig()
        self.stream_options = dict(stream_options or {})
        self.conversation = Conversation(lm, text_tokenizer, system=system)

    @classmethod
    def from_pretrained(
        cls,
        tokenizer: str | os.PathLike | None = None,
        lm: str | os.PathLike | None = None,
        decoder: str | os.PathLike | None = None,
        *,
        model_dir: str | os.PathLike | None = None,
        device="cpu",
        dtype="float32",
        lm_dtype="auto",
        int8: bool = False,
        **options,
    ) -> VoiceChat:
        """Load the three parts (folders or hub ids); `model_dir` holds `tokenizer/`, `lm/`, `decoder/`.

        Explicit paths win over `model_dir`. `dtype` is for the tokenizer and decoder,
        `lm_dtype` for the LM ("auto": the checkpoint's, bf16 for the release).
        `int8`: dynamic int8 linear layers in the tokenizer and decoder (CPU only).
        """
        if model_dir is not None:
            root = Path(model_dir).expanduser()
            if not root.is_dir():
                raise Glm4VoiceError(f"model dir {root}: no such folder")
            tokenizer = tokenizer or (root / "tokenizer" if (root / "tokenizer").is_dir() else None)
            lm = lm or root / "lm"
            decoder = decoder or (root / "decoder" if (root / "decoder").is_dir() else None)
        if lm is None:
            raise Glm4VoiceError("no LM given: pass lm= (or model_dir= holding lm/)")
        from .lm import load_lm

        speech_tok = None
        if tokenizer is not None:
            from .tokenizer import SpeechTokenizer

            speech_tok = SpeechTokenizer.from_pretrained(tokenizer, device=device, dtype=dtype, int8=int8)
        model = load_lm(lm, device=device, dtype=lm_dtype)
        text_tok = TextTokenizer.from_pretrained(model.name_or_path)
        speech_dec = None
        if decoder is not None:
            from .decoder import SpeechDecoder

            speech_dec = SpeechDecoder.from_pretrained(decoder, device=device, dtype=dtype, int8=int8)
        return cls(speech_tok, model, speech_dec, text_tok, **options)

    # --- turns ------------------------------------------------------------------------------

    def turn(
        self,
        audio=None,
        *,
        text: str | None = None,
        codes: list[int] | None = None,
        sample_rate: int | None = None,
        sampling: SamplingConfig | None = None,
    ) -> Iterator[ChatEvent]:
        """One user turn (speech: a path, bytes or 16 kHz array; `text=`; or `codes=`, speech
        already tokenized, e.g. by a `TokenizerStream` while the user spoke); streams the reply.

        Events, in order: `UserEvent`; then `TextEvent` / `AudioEvent` (speech
        codes) as the LM samples them, `AudioChunk` whenever the decoder has
        audio; finally `Reply` with the whole reply and its timings.
        """
        if sum(x is not None for x in (audio, text, codes)) != 1:
            raise Glm4VoiceError("a turn takes speech audio, text= or codes=, exactly one of them")
        start = time.perf_counter()
        timings = Timings()
        speech = None if codes is None else [int(c) for c in codes]
        if audio is not None:
            if self.tokenizer is None:
                raise Glm4VoiceError("speech input needs a speech tokenizer (VoiceChat(tokenizer=...))")
            speech = list(self.tokenizer.tokenize(audio, sample_rate=sample_rate))
            timings.tokenize = time.perf_counter() - start
        conv = self.conversation
        user = UserInput(text=text, speech=speech)  # validates (e.g. no speech tokens)
        ids = conv.add_user(user)
        reply_ids: list[int] = []
        conv.turns.append((user, reply_ids))
        yield UserEvent(ids=list(ids), speech=speech, text=text)

        stream = self.decoder.stream(**self.stream_options) if self.decoder is not None else None
        rate = int(self.decoder.sample_rate) if self.decoder is not None else 0
        chunks: list[torch.Tensor] = []

        def chunk(audio_piece) -> AudioChunk | None:
            if audio_piece is None or audio_piece.numel() == 0:
                return None
            audio_piece = audio_piece.detach().float().cpu().reshape(-1)
            chunks.append(audio_piece)
            if timings.first_audio is None:
                timings.first_audio = time.perf_counter() - start
            return AudioChunk(audio_piece, rate)

        end: EndEvent | None = None
        for event in conv.generate(sampling or self.sampling, reply_ids):
            if isinstance(event, EndEvent):
                end = event
                break
            yield event
            if isinstance(event, TextEvent) and event.text and timings.first_text is None:
                timings.first_text = time.perf_counter() - start
            if isinstance(event, AudioEvent) and stream is not None:
                out = chunk(stream.push(event.codes))
                if out is not None:
                    yield out
        if stream is not None:
            out = chunk(stream.flush())
            if out is not None:
                yield out
        timings.prefill = end.prefill_seconds
        timings.total = time.perf_counter() - start
        timings.tokens_per_second = end.tokens_per_second
        audio_out = torch.cat(chunks) if chunks else torch.zeros(0)
        yield Reply(
            text=end.text,
            codes=end.codes,
            audio=audio_out,
            sample_rate=rate,
            reason=end.reason,
            n_tokens=end.n_tokens,
            timings=timings,
        )

    def reply(self, audio=None, *, text: str | None = None, **kwargs) -> Reply:
        """Run a turn to the end and return its `Reply`."""
        events = list(self.turn(audio, text=text, **kwargs))
        return events[-1]

    def reset(self) -> None:
        """Forget the conversation (history and cache)."""
        self.conversation.reset()

    @property
    def history(self) -> str:
        """The conversation so far, as the reference's prompt string."""
        return self.conversation.render()
