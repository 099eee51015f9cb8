"""GLM-4-Voice prompts, built from id pieces (SPEC §3).

The reference formats one string and lets the tokenizer find the control
tokens in it; that also turns control-token strings a user typed into control
ids. Here every control token is an id, and only the pieces of real text go
through `TextTokenizer.encode` (which never produces control ids), split at the
same places the reference splits, so the ids are the reference's ids:

    [gMASK] <sop> <|system|> "\\n{system}" <|user|> "\\n{text}" <|assistant|> "streaming_transcription\\n"
    speech input: <|user|> "\\n" <|begin_of_audio|> <|audio_12|> ... <|end_of_audio|> <|assistant|> ...

The system prompt opens the conversation once (its wording depends on the
first turn's input: speech or text); later turns append
`<|user|> ... <|assistant|>streaming_transcription\\n` after the history.

History: the reference decodes each reply to text, glues it to the prompt
string, `.strip()`s it and re-tokenizes everything every turn. Here a reply
stays the ids the LM generated (stop id excluded), so the KV cache of earlier
turns stays valid. Re-tokenizing gives the same ids except where the LM split
a text span differently from BPE's canonical encoding, or where `.strip()`
would drop trailing whitespace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import Glm4VoiceError
from .text import TextTokenizer

SPEECH_SYSTEM_PROMPT = (
    "User will provide you with a speech instruction. Do it step by step. First, think about the "
    "instruction and respond in a interleaved manner, with 13 text token followed by 26 audio tokens. "
)
TEXT_SYSTEM_PROMPT = (
    "User will provide you with a text instruction. Do it step by step. First, think about the "
    "instruction and respond in a interleaved manner, with 13 text token followed by 26 audio tokens."
)
ASSISTANT_PREFIX = "streaming_transcription\n"
STOP_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")


@dataclass(frozen=True)
class UserInput:
    """One user turn: typed text, or speech as 12.5 Hz token codes (0..16383)."""

    text: str | None = None
    speech: Sequence[int] | None = None

    def __post_init__(self):
        if (self.text is None) == (self.speech is None):
            raise Glm4VoiceError("a user turn is either text or speech codes, exactly one of them")
        if self.text is not None and (not isinstance(self.text, str) or not self.text.strip()):
            raise Glm4VoiceError(f"a typed turn needs some text, got {self.text!r}")
        if self.speech is not None and len(self.speech) == 0:
            raise Glm4VoiceError("the speech input has no speech codes (empty or silent audio?)")
        if self.speech is not None and any(isinstance(c, bool) or not isinstance(c, (int, np.integer))
                                           for c in self.speech):  # fmt: skip
            raise Glm4VoiceError("speech codes must be integers (1.7 or '5' is not a code)")

    @property
    def is_speech(self) -> bool:
        return self.speech is not None


class PromptBuilder:
    """Turns user inputs into the LM's id sequence."""

    def __init__(self, tokenizer: TextTokenizer):
        self.tok = tokenizer
        ids = tokenizer.token_id
        self.gmask, self.sop = ids("[gMASK]"), ids("<sop>")
        self.system_id, self.user_id, self.assistant_id = (
            ids("<|system|>"),
            ids("<|user|>"),
            ids("<|assistant|>"),
        )
        self.begin_audio, self.end_audio = ids("<|begin_of_audio|>"), ids("<|end_of_audio|>")
        self.stop_ids = tuple(ids(name) for name in STOP_TOKENS if name in tokenizer.specials)

    def prefix(self) -> list[int]:
        """`[gMASK]<sop>`, which the reference tokenizer prepends to every encoded prompt."""
        return [self.gmask, self.sop]

    def system(self, text: str) -> list[int]:
        return [self.system_id, *self.tok.encode("\n" + text)]

    def user(self, turn: UserInput) -> list[int]:
        if turn.is_speech:
            audio = self.tok.audio_ids(turn.speech)
            return [self.user_id, *self.tok.encode("\n"), self.begin_audio, *audio, self.end_audio]
        return [self.user_id, *self.tok.encode("\n" + turn.text)]

    def assistant(self) -> list[int]:
        """The assistant header the reply continues from."""
        return [self.assistant_id, *self.tok.encode(ASSISTANT_PREFIX)]

    def turn(self, turn: UserInput, first: bool, system: str | None = None) -> list[int]:
        """Ids to append for one user turn; `first` opens the conversation ([gMASK]<sop> + system)."""
        head: list[int] = []
        if first:
            if system is None:
                system = SPEECH_SYSTEM_PROMPT if turn.is_speech else TEXT_SYSTEM_PROMPT
            head = [*self.prefix(), *self.system(system)]
        return [*head, *self.user(turn), *self.assistant()]

    def render(self, ids: Sequence[int]) -> str:
        """The prompt as the reference's string (control and audio tokens by name)."""
        return self.tok.decode(ids)


def build_prompt(
    tokenizer: TextTokenizer,
    turn: UserInput,
    history: Sequence[tuple[UserInput, Sequence[int]]] = (),
    system: str | None = None,
) -> list[int]:
    """All ids for a conversation: earlier (user input, reply ids) pairs, then the new turn.

    Reply ids are the ids the LM generated (text and audio), without the stop id.
    """
    builder = PromptBuilder(tokenizer)
    ids: list[int] = []
    for i, (user, reply) in enumerate(history):
        ids += builder.turn(user, first=i == 0, system=system)
        ids += list(reply)
    ids += builder.turn(turn, first=not history, system=system)
    return ids
