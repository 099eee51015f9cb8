"""GLM-4's text tokenizer, without remote code: tiktoken over the checkpoint's own files.

- `tokenizer.model`: one `base64(token bytes) rank` per line (151329 ranks for GLM-4).
- Fourteen built-in special tokens take the ids right after the ranks, in the
  order of `BUILTIN_SPECIALS` (`<|endoftext|>` = 151329 ... `<|end_of_video|>` = 151342).
- `tokenizer_config.json` `added_tokens_decoder` (`{"id": {"content": ...}}`)
  adds the rest: audio delimiters, transcription markers and the 16384
  `<|audio_N|>` tokens. Entries that repeat a built-in must agree with it.

`encode` treats its input as plain text only: a user who types
`<|assistant|>` or `<|audio_5|>` gets the ids of those characters, never the
control ids. Control ids come from `token_id(...)` (prompts are built from id
pieces, see `prompt.py`).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from ..errors import CheckpointError, Glm4VoiceError
from ..hub import resolve_checkpoint
from ..jsonl import read_json_object

# GLM-4's pre-tokenization pattern (cl100k-like).
PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BUILTIN_SPECIALS = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
    "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
    "<|begin_of_video|>", "<|end_of_video|>",
)  # fmt: skip
AUDIO_TOKEN = "<|audio_{}|>"


def read_ranks(path: Path) -> dict[bytes, int]:
    """Parse a tiktoken-format `tokenizer.model`."""
    ranks: dict[bytes, int] = {}
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a tiktoken rank file ({exc})") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as exc:
            raise CheckpointError(f"{path}:{number}: expected 'base64 rank', got {line[:40]!r}") from exc
    if not ranks:
        raise CheckpointError(f"{path}: empty rank file")
    return ranks


class TextTokenizer:
    """GLM-4 text tokenizer (ids identical to the official `ChatGLM4Tokenizer`)."""

    def __init__(self, ranks: dict[bytes, int], specials: dict[str, int], source: str = "tokenizer"):
        import tiktoken

        self.source = source
        self.specials = dict(specials)
        self._special_ids = {i: s for s, i in self.specials.items()}
        self._enc = tiktoken.Encoding(
            name=f"glm4voice:{source}", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens=self.specials
        )
        self.n_ranks = len(ranks)
        self.vocab_size = max(max(ranks.values()) + 1, max(self.specials.values(), default=-1) + 1)
        self.audio_offset, self.n_audio = self._audio_range()

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike) -> TextTokenizer:
        """Read `tokenizer.model` and `tokenizer_config.json` from an LM folder (or hub id)."""
        folder = resolve_checkpoint(path_or_id, ["tokenizer.model", "tokenizer_config.json"], "text tokenizer")
        ranks = read_ranks(folder / "tokenizer.model")
        tok_cfg = read_json_object(folder / "tokenizer_config.json", "text tokenizer config", CheckpointError)
        specials = {name: len(ranks) + i for i, name in enumerate(BUILTIN_SPECIALS)}
        added = tok_cfg.get("added_tokens_decoder") or {}
        if not isinstance(added, dict):
            raise CheckpointError(f"{folder}/tokenizer_config.json: added_tokens_decoder must be an object")
        for key, entry in added.items():
            content = entry.get("content") if isinstance(entry, dict) else None
            if not isinstance(content, str) or not str(key).isdigit():
                raise CheckpointError(f"{folder}/tokenizer_config.json: bad added_tokens_decoder entry {key!r}")
            if specials.get(content, int(key)) != int(key):
                raise CheckpointError(
                    f"{folder}/tokenizer_config.json: {content!r} has id {key}, expected {specials[content]}"
                )
            specials[content] = int(key)
        return cls(ranks, specials, source=str(folder))

    def _audio_range(self) -> tuple[int, int]:
        offset = self.specials.get(AUDIO_TOKEN.format(0))
        if offset is None:
            return self.vocab_size, 0
        n = 0
        while self.specials.get(AUDIO_TOKEN.format(n)) == offset + n:
            n += 1
        if AUDIO_TOKEN.format(n) in self.specials:
            raise CheckpointError(f"{self.source}: audio token ids are not contiguous at <|audio_{n}|>")
        return offset, n

    # --- ids ------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids. Special-token strings in `text` stay plain text."""
        return self._enc.encode_ordinary(text)

    def token_id(self, name: str) -> int:
        """The id of a special or added token (`"<|user|>"`, `"[gMASK]"`, ...)."""
        try:
            return self.specials[name]
        except KeyError:
            raise CheckpointError(f"{self.source}: no special token {name!r}") from None

    def audio_ids(self, codes) -> list[int]:
        """Speech codes (0 .. n_audio-1) -> LM ids (`<|audio_N|>`)."""
        out = []
        for c in codes:
            c = int(c)
            if not 0 <= c < self.n_audio:
                raise Glm4VoiceError(
                    f"speech code {c} is outside 0..{self.n_audio - 1} (speech tokenizer and LM not from one release?)"
                )
            out.append(self.audio_offset + c)
        return out

    def is_audio(self, token: int) -> bool:
        return self.audio_offset <= token < self.audio_offset + self.n_audio

    def code_of(self, token: int) -> int | None:
        """The speech code of an `<|audio_N|>` id (N), None for every other id: the one text/speech split.

        (Ids past the last audio token are the LM's unused padding rows: text, rendering as nothing.)
        """
        return token - self.audio_offset if self.is_audio(token) else None

    def is_known(self, token: int) -> bool:
        """False for ids past the vocabulary (the LM's padding rows)."""
        return token in self._special_ids or 0 <= token < self.n_ranks

    def is_special(self, token: int) -> bool:
        return token in self._special_ids

    def token_bytes(self, token: int) -> bytes:
        """The bytes of one id (special tokens give their name's bytes)."""
        if token in self._special_ids:
            return self._special_ids[token].encode()
        try:
            return self._enc.decode_single_token_bytes(token)
        except KeyError:
            raise ValueError(f"id {token} is not in the vocabulary of {self.source}") from None

    def decode(self, ids, skip_special: bool = False) -> str:
        """Ids -> text. Special and audio ids render as their names unless `skip_special`."""
        out: list[str] = []
        pending = b""
        for token in ids:
            token = int(token)
            if token in self._special_ids:
                if pending:
                    out.append(pending.decode("utf-8", errors="replace"))
                    pending = b""
                if not skip_special:
                    out.append(self._special_ids[token])
            else:
                pending += self.token_bytes(token)
        if pending:
            out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)


class TextDecoder:
    """Incremental id -> text for streaming: emits only complete UTF-8 characters.

    Special (and audio) ids are skipped: they are never shown as text.
    """

    def __init__(self, tokenizer: TextTokenizer):
        self.tokenizer = tokenizer
        self._pending = b""

    def push(self, token: int) -> str:
        if self.tokenizer.is_special(token) or not self.tokenizer.is_known(token):
            return ""
        self._pending += self.tokenizer.token_bytes(token)
        try:
            text = self._pending.decode("utf-8")
            self._pending = b""
            return text
        except UnicodeDecodeError as exc:
            if exc.reason == "unexpected end of data":  # an incomplete character at the end: wait
                text = self._pending[: exc.start].decode("utf-8", errors="replace")
                self._pending = self._pending[exc.start :]
                return text
            text = self._pending.decode("utf-8", errors="replace")
            self._pending = b""
            return text

    def flush(self) -> str:
        text = self._pending.decode("utf-8", errors="replace")
        self._pending = b""
        return text
