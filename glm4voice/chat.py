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
    `decoder.stream(...)`. `trim_history`: when the LM's context is full, drop
    the oldest turns (False: refuse the turn).
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
        trim_history: bool = True,
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
        self.conversation = Conversation(lm, text_tokenizer, system=system, trim_history=trim_history)

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
        `lm_dtype` for the LM ("auto": the one its config names, bf16 for the release).
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
        turn = self.begin(audio, text=text, codes=codes, sample_rate=sample_rate, sampling=sampling)
        yield turn.user_event
        while not turn.done:
            yield from turn.advance(turn.sample())
            if not turn.done:
                turn.reply.step()

    def begin(self, audio=None, *, text: str | None = None, codes: list[int] | None = None,
              sample_rate: int | None = None, sampling: SamplingConfig | None = None) -> ChatTurn:  # fmt: skip
        """Start a turn (speech is tokenized, the prompt ids appended) and return it, to be driven one id at
        a time: `turn()` drives it alone, the server's scheduler drives many with one batched LM step."""
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
        user = UserInput(text=text, speech=speech)  # validates (e.g. no speech codes)
        ids = self.conversation.add_user(user)
        return ChatTurn(self, UserEvent(ids=list(ids), speech=speech, text=text), sampling or self.sampling, start,
                        timings)  # fmt: skip

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


class ChatTurn:
    """One turn in progress: the LM's `ReplyState` and the decoder's stream. `sample()` the next id, hand it
    to `advance` (the chat events out: text, codes, audio chunks, and the `Reply` last), run the LM on it
    (`reply.step()`, or a batched step), until `done`."""

    def __init__(self, chat: VoiceChat, user_event: UserEvent, sampling: SamplingConfig, start: float,
                 timings: Timings):  # fmt: skip
        self.chat, self.user_event, self.sampling = chat, user_event, sampling
        self.start, self.timings = start, timings
        self.reply = None  # the LM's state, made by `prefill`
        self.stream = chat.decoder.stream(**chat.stream_options) if chat.decoder is not None else None
        self.rate = int(chat.decoder.sample_rate) if chat.decoder is not None else 0
        self.chunks: list[torch.Tensor] = []
        self.done = False
        self.defer_audio = False  # True: codes only go into the stream; the caller decodes (decode_due), `audio`

    def prefill(self) -> None:
        """Run the prompt ids the LM's cache lacks (the first `sample` does it when not done before)."""
        from .lm.generate import ReplyState

        self.reply = ReplyState(self.chat.conversation, self.sampling)
        self.reply.prefill()

    def sample(self) -> int:
        if self.reply is None:
            self.prefill()
        return self.reply.sample()

    def advance(self, token: int) -> list[ChatEvent]:
        return self._chat_events(self.reply.accept(token))

    def interrupt(self) -> list[ChatEvent]:
        """End the turn now (barge-in): its `Reply` has reason "interrupted" and the audio made so far."""
        if self.reply is None:
            self.prefill()
        self.stream = None  # no tail: the user spoke over it
        return self._chat_events(self.reply.finish("interrupted"))

    def _chat_events(self, lm_events) -> list[ChatEvent]:
        out: list[ChatEvent] = []
        timings = self.timings
        for event in lm_events:
            if isinstance(event, EndEvent):
                if self.stream is not None:
                    self._chunk(self.stream.flush(), out)
                out.append(self._reply(event))
                continue
            out.append(event)
            if isinstance(event, TextEvent) and event.text and timings.first_text is None:
                timings.first_text = time.perf_counter() - self.start
            if isinstance(event, AudioEvent) and self.stream is not None:
                if self.defer_audio:
                    self.stream.add(event.codes)
                else:
                    self._chunk(self.stream.push(event.codes), out)
        return out

    def audio(self, piece: torch.Tensor) -> list[ChatEvent]:
        """The event for audio the caller decoded from this turn's stream (deferred decoding)."""
        out: list[ChatEvent] = []
        self._chunk(piece, out)
        return out

    def _chunk(self, audio_piece, out: list) -> None:
        if audio_piece is None or audio_piece.numel() == 0:
            return
        audio_piece = audio_piece.detach().float().cpu().reshape(-1)
        self.chunks.append(audio_piece)
        if self.timings.first_audio is None:
            self.timings.first_audio = time.perf_counter() - self.start
        out.append(AudioChunk(audio_piece, self.rate))

    def _reply(self, end: EndEvent) -> Reply:
        self.done = True
        t = self.timings
        t.prefill, t.total, t.ids_per_second = end.prefill_seconds, time.perf_counter() - self.start, end.ids_per_second
        audio = torch.cat(self.chunks) if self.chunks else torch.zeros(0)
        return Reply(text=end.text, codes=end.codes, audio=audio, sample_rate=self.rate, reason=end.reason,
                     n_ids=end.n_ids, timings=t)  # fmt: skip
