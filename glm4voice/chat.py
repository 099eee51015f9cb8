"""Voice chat: speech tokenizer -> speech LM -> streaming speech decoder, one streaming turn at a time.

    chat = VoiceChat.from_pretrained(model_dir="glm-4-voice")   # tokenizer/, lm/, decoder/
    for event in chat.turn("question.wav"):                      # or chat.turn(text="...")
        ...  # UserEvent, TextEvent, AudioEvent, AudioChunk, then Reply (last): see glm4voice.events

A `VoiceChat` is one conversation: it keeps the history and the LM's KV cache,
so each turn only runs its own new ids. Speech codes stream into the decoder as
the LM samples them; the decoder returns its first audio after the first 10
codes (its default chunk schedule 10, 20, 40, ...).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from .errors import CheckpointError, Glm4VoiceError
from .events import AudioChunk, AudioEvent, ChatEvent, EndEvent, Reply, TextEvent, Timings, UserEvent
from .lm.generate import Conversation, SamplingConfig
from .lm.prompt import UserInput
from .lm.text import TextTokenizer


class VoiceChat:
    """One spoken conversation.

    `speech_tokenizer`: a `SpeechTokenizer` (only needed for speech input), `lm`: the
    `GlmForCausalLM` from `load_lm`, `decoder`: a `SpeechDecoder` (None: text
    and speech codes only, no audio), `text_tokenizer`: the LM's
    `TextTokenizer` (default: read from the folder `load_lm` loaded).
    `sampling` sets the defaults of every turn; `stream_options` go to
    `decoder.stream(...)`.
    """

    def __init__(
        self,
        speech_tokenizer,
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
                f"the LM has {text_tokenizer.n_audio} speech codes but the decoder only {dec_vocab}: "
                "they are not from the same release"
            )
        self.speech_tokenizer = speech_tokenizer
        self.lm = lm
        self.decoder = decoder
        self.text_tokenizer = text_tokenizer
        self.sampling = sampling or SamplingConfig()
        self.stream_options = dict(stream_options or {})
        if decoder is not None:
            decoder.stream(**self.stream_options)  # bad options fail now, not at the first spoken reply
        self.conversation = Conversation(lm, text_tokenizer, system=system)

    @classmethod
    def from_pretrained(
        cls,
        speech_tokenizer: str | os.PathLike | None = None,
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

        Explicit paths win over `model_dir`. `dtype` is for the speech tokenizer and decoder,
        `lm_dtype` for the LM ("auto": the checkpoint's, bf16 for the release).
        `int8`: dynamic int8 linear layers in the speech tokenizer and decoder (CPU only).
        """
        if model_dir is not None:
            root = Path(model_dir).expanduser()
            if not root.is_dir():
                raise Glm4VoiceError(f"model dir {root}: no such folder")
            speech_tokenizer = speech_tokenizer or (root / "tokenizer" if (root / "tokenizer").is_dir() else None)
            lm = lm or root / "lm"
            decoder = decoder or (root / "decoder" if (root / "decoder").is_dir() else None)
        if lm is None:
            raise Glm4VoiceError("no LM given: pass lm= (or model_dir= holding lm/)")
        from .lm import load_lm

        speech_tok = None
        if speech_tokenizer is not None:
            from .tokenizer import SpeechTokenizer

            speech_tok = SpeechTokenizer.from_pretrained(speech_tokenizer, device=device, dtype=dtype, int8=int8)
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
        speech = None if codes is None else list(codes)  # UserInput checks they are integers
        if audio is not None:
            if self.speech_tokenizer is None:
                raise Glm4VoiceError("speech input needs a speech tokenizer (VoiceChat(speech_tokenizer=...))")
            speech = list(self.speech_tokenizer.tokenize(audio, sample_rate=sample_rate))
            timings.tokenize = time.perf_counter() - start
        conv = self.conversation
        user = UserInput(text=text, speech=speech)  # validates (e.g. no speech codes)
        ids = conv.add_user(user)
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
        for event in conv.generate(sampling or self.sampling):
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
        timings.ids_per_second = end.ids_per_second
        audio_out = torch.cat(chunks) if chunks else torch.zeros(0)
        yield Reply(
            text=end.text,
            codes=end.codes,
            audio=audio_out,
            sample_rate=rate,
            reason=end.reason,
            n_ids=end.n_ids,
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
