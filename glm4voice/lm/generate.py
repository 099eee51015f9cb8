"""Streaming generation for the speech LM: typed events, one sampler, a KV cache kept across turns.

`Conversation` holds the ids of the whole dialogue and a `DynamicCache` with
the keys/values of every id already run through the model. A turn appends the
new prompt ids, runs only the ids the cache lacks (turn n never re-encodes
turns 1..n-1), then samples one id at a time:

    TextEvent(text=" Hel", ids=[...])   a text id, with the decoded delta (UTF-8 safe)
    AudioEvent(codes=[907])             a speech id, as its code (code = id - <|audio_0|> id)
    EndEvent(reason="stop"|"length")    the reply is over

(The event types live in `glm4voice.events`, beside the chat's.)

The decode loop is a plain loop over `model(...)` calls (no `generate`): only the
last position's logits are computed, no logits processors or stopping
criteria run per step, and sampling works on the top-k candidates only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..errors import Glm4VoiceError
from ..events import AudioEvent, EndEvent, LMEvent, TextEvent
from .prompt import PromptBuilder, UserInput
from .text import TextDecoder, TextTokenizer


@dataclass
class SamplingConfig:
    """Reference defaults: temperature 0.2, top_p 0.8, max 2000 new tokens; top_k 50 as `generate`'s default.

    temperature 0 means greedy. `stop_ids` None means the tokenizer's
    `<|endoftext|>`, `<|user|>`, `<|observation|>`. `seed` seeds a private generator.
    """

    temperature: float = 0.2
    top_p: float = 0.8
    top_k: int = 50
    max_new_tokens: int = 2000
    stop_ids: Sequence[int] | None = None
    seed: int | None = None

    def __post_init__(self):
        def number(name, value):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise Glm4VoiceError(f"{name} must be a finite number, got {value!r}")

        def integer(name, value):
            if isinstance(value, bool) or not isinstance(value, int):
                raise Glm4VoiceError(f"{name} must be an integer, got {value!r}")

        number("temperature", self.temperature)
        number("top_p", self.top_p)
        integer("top_k", self.top_k)
        integer("max_new_tokens", self.max_new_tokens)
        if self.temperature < 0:
            raise Glm4VoiceError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise Glm4VoiceError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise Glm4VoiceError(f"top_k must be >= 0 (0: no top-k cut), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise Glm4VoiceError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.seed is not None:
            integer("seed", self.seed)
            if not 0 <= self.seed < 2**63:
                raise Glm4VoiceError(f"seed must lie in 0..2**63-1, got {self.seed}")


class Sampler:
    """Next id from last-position logits: greedy, or temperature -> top-k -> top-p -> multinomial.

    Same filtering order and rule as `transformers` (top-p keeps a token while the
    probability mass ranked above it is < top_p), but softmax and the top-p cut
    run over the k candidates, not the whole vocabulary.
    """

    def __init__(self, config: SamplingConfig, device="cpu"):
        self.config = config
        self.greedy = config.temperature == 0 or config.top_k == 1
        self.generator = None
        if config.seed is not None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(config.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        if self.greedy:
            return int(logits.argmax())
        cfg = self.config
        k = cfg.top_k if 0 < cfg.top_k < logits.shape[-1] else logits.shape[-1]
        values, index = torch.topk(logits.float(), k)  # sorted, descending
        probs = torch.softmax(values / cfg.temperature, dim=-1)
        if cfg.top_p < 1:
            mass_above = torch.cumsum(probs, dim=-1) - probs
            cut = mass_above >= cfg.top_p
            cut[..., 0] = False  # the best candidate always stays (as transformers' min_tokens_to_keep=1)
            probs = probs.masked_fill(cut, 0.0)
        choice = torch.multinomial(probs, 1, generator=self.generator)
        return int(index[choice])


@torch.inference_mode()
def step_logits(model, ids: torch.Tensor, cache) -> torch.Tensor:
    """Run `ids` ([1, n]) after the cached ones; return the last position's logits ([vocab])."""
    out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    return out.logits[0, -1]


def sample_ids(model, new_ids: Sequence[int], cache, sampler: Sampler, max_new_tokens: int, stop_ids) -> Iterator[int]:
    """Prefill `new_ids` into `cache`, then yield sampled ids until a stop id or `max_new_tokens`.

    A yielded stop id ends the loop; neither it nor the last id of a
    length-limited reply is run through the model (the cache ends one id short).
    Inference mode is on only inside the model calls, never while the consumer runs.
    """
    stop = set(stop_ids)
    device = model.device
    logits = step_logits(model, torch.tensor([list(new_ids)], device=device), cache)
    buffer = torch.empty((1, 1), dtype=torch.long, device=device)
    for n in range(max_new_tokens):
        with torch.inference_mode():
            token = sampler(logits)
        yield token
        if token in stop or n + 1 == max_new_tokens:
            return
        buffer.fill_(token)
        logits = step_logits(model, buffer, cache)


class Conversation:
    """A multi-turn dialogue with the LM: history ids, KV cache, streaming replies.

    `ids` is the whole dialogue (prompts and replies, stop ids excluded); the
    cache covers `ids[:cached]`. `turn(...)` appends a user turn and streams
    the reply; the next turn only runs what the cache lacks.
    """

    def __init__(self, lm, tokenizer: TextTokenizer, system: str | None = None, trim_history: bool = True):
        from transformers import DynamicCache

        self.lm = lm
        self.tok = tokenizer
        self.prompts = PromptBuilder(tokenizer)
        self.system = system
        self.trim_history = trim_history  # at the context's end: drop the oldest turns (False: refuse the turn)
        self.dropped_turns = 0
        self.ids: list[int] = []
        self.turns: list[tuple[UserInput, list[int]]] = []
        self._cache_cls = DynamicCache
        self.cache = DynamicCache(config=lm.config)

    @property
    def cached(self) -> int:
        return self.cache.get_seq_length()

    def drop_cache(self) -> None:
        """Forget the keys/values (the ids stay): the next prefill runs the whole history once."""
        self.cache = self._cache_cls(config=self.lm.config)

    def reset(self) -> None:
        self.dropped_turns = 0
        self.ids.clear()
        self.turns.clear()
        self.drop_cache()

    def add_user(self, turn: UserInput) -> list[int]:
        """Append the prompt ids of one user turn and open its entry in `turns`; returns the ids."""
        new = self.prompts.turn(turn, first=not self.ids, system=self.system)
        limit = self.context_length
        if limit and len(self.ids) + len(new) >= limit and self.trim_history and self.turns:
            self._drop_oldest(len(new), limit)
            new = self.prompts.turn(turn, first=not self.ids, system=self.system)
        if limit and len(self.ids) + len(new) >= limit:
            raise Glm4VoiceError(
                f"this turn would make the conversation {len(self.ids) + len(new)} ids long; the LM's context is "
                f"{limit}: start a new conversation (reset())"
            )
        self.ids += new
        self.turns.append((turn, []))
        return new

    def _drop_oldest(self, incoming: int, limit: int) -> None:
        """Forget the oldest turns until the history and the incoming turn fill at most 3/4 of the context
        (a quarter stays for the reply). The ids are rebuilt from the kept turns (the system prompt opens
        them again) and the cache starts over: the next prefill runs them all once."""
        while self.turns and len(self.ids) + incoming > limit * 3 // 4:
            self.turns.pop(0)
            self.dropped_turns += 1
            self.ids = []
            for i, (user, reply) in enumerate(self.turns):
                self.ids += [*self.prompts.turn(user, first=i == 0, system=self.system), *reply]
        self.drop_cache()

    def add_reply(self, ids: Sequence[int]) -> None:
        """Append an earlier reply as ids, after its `add_user` (a history a stateless client sends back);
        the model runs on it with the next turn's prefill."""
        if not self.turns or self.turns[-1][1]:
            raise Glm4VoiceError("a reply follows a user turn: add_user first")
        limit = self.context_length
        if limit and len(self.ids) + len(ids) >= limit:
            raise Glm4VoiceError(f"the history is longer than the LM's context ({limit} ids)")
        self.ids += list(ids)
        self.turns[-1][1].extend(ids)

    @property
    def context_length(self) -> int | None:
        """The LM's context (`seq_length` of the checkpoint: 8192 for the release)."""
        return getattr(self.lm.config, "max_position_embeddings", None)

    def turn(self, text: str | None = None, speech: Sequence[int] | None = None, sampling=None) -> Iterator[LMEvent]:
        """Add a user turn (text, or speech codes) and stream the reply's events."""
        self.add_user(UserInput(text=text, speech=speech))
        yield from self.generate(sampling)

    def generate(self, sampling: SamplingConfig | None = None) -> Iterator[LMEvent]:
        """Stream a reply to the current `ids` (ending in an assistant header); its ids go to the last turn."""
        reply = self.start_reply(sampling)
        while True:
            yield from reply.accept(reply.sample())
            if reply.done:
                return
            reply.step()

    def start_reply(self, sampling: SamplingConfig | None = None) -> ReplyState:
        """Prefill what the cache lacks and return the reply's state, ready to sample its first id."""
        reply = ReplyState(self, sampling or SamplingConfig())
        reply.prefill()
        return reply

    def render(self) -> str:
        """The whole dialogue as the reference's prompt string."""
        return self.prompts.render(self.ids)


class ReplyState:
    """One reply being sampled: `sample` the next id from `logits`, `accept` it (events out), run the model on
    it (`step` alone, or the server's batched step for many conversations at once), until `done`.

    A stop id ends the reply; neither it nor the last id of a length-limited reply is run through the model
    (the cache ends one id short, and the next turn's prefill runs what it lacks)."""

    def __init__(self, conv: Conversation, cfg: SamplingConfig):
        self.conv = conv
        self.stop_ids = conv.prompts.stop_ids if cfg.stop_ids is None else tuple(cfg.stop_ids)
        if not _cache_consistent(conv.cache) or conv.cached > len(conv.ids):
            conv.drop_cache()  # interrupted mid-step: rebuild
        if len(conv.ids) <= conv.cached:
            raise Glm4VoiceError("nothing to generate from: add a user turn first")
        self.pending = conv.ids[conv.cached :]
        self.max_new = cfg.max_new_tokens
        if conv.context_length:  # a reply never runs past the context: it ends on "length"
            self.max_new = max(1, min(self.max_new, conv.context_length - len(conv.ids)))
        self.sampler = Sampler(cfg, device=conv.lm.device)
        self.text = TextDecoder(conv.tok)
        self.reply = conv.turns[-1][1] if conv.turns else []
        self.pieces: list[str] = []
        self.codes: list[int] = []
        self.sampled = 0
        self.start = time.perf_counter()
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.last_id: int | None = None  # the id the model runs next
        self.logits: torch.Tensor | None = None  # [vocab]: for the next id
        self.done = False

    def prefill(self) -> None:
        self.logits = step_logits(self.conv.lm, torch.tensor([self.pending], device=self.conv.lm.device),
                                  self.conv.cache)  # fmt: skip

    def sample(self) -> int:
        with torch.inference_mode():
            return self.sampler(self.logits)

    def step(self) -> None:
        """Run the last accepted id through the model, alone."""
        ids = torch.tensor([[self.last_id]], device=self.conv.lm.device)
        self.logits = step_logits(self.conv.lm, ids, self.conv.cache)

    def accept(self, token: int) -> list[LMEvent]:
        """Take a sampled id: its event, and when the reply is over the text's tail and the `EndEvent`."""
        self.last_at = time.perf_counter()
        self.sampled += 1
        self.first_at = self.first_at or self.last_at
        events: list[LMEvent] = []
        reason, stop_id = None, None
        if token in self.stop_ids:
            reason, stop_id = "stop", token
        else:
            self.reply.append(token)
            self.conv.ids.append(token)
            self.last_id = token
            code = self.conv.tok.code_of(token)
            if code is not None:
                self.codes.append(code)
                events.append(AudioEvent([code]))
            else:
                delta = self.text.push(token)
                self.pieces.append(delta)
                events.append(TextEvent(delta, [token]))
            if self.sampled == self.max_new:
                reason = "length"
        if reason is not None:
            events += self.finish(reason, stop_id)
        return events

    def finish(self, reason: str, stop_id: int | None = None) -> list[LMEvent]:
        """End the reply now (`reason`: stop, length, or the caller's, e.g. interrupted)."""
        self.done = True
        events: list[LMEvent] = []
        tail = self.text.flush()
        if tail:
            self.pieces.append(tail)
            events.append(TextEvent(tail, []))
        end = time.perf_counter()
        first_at, last_at = self.first_at or end, self.last_at or end
        events.append(EndEvent(reason=reason, stop_id=stop_id, n_ids=len(self.reply), text="".join(self.pieces),
                               codes=self.codes, prompt_ids=len(self.pending), prefill_seconds=first_at - self.start,
                               decode_seconds=last_at - first_at, sampled=self.sampled))  # fmt: skip
        return events


def _cache_consistent(cache) -> bool:
    lengths = {layer.get_seq_length() for layer in getattr(cache, "layers", [])}
    return len(lengths) <= 1


__all__ = ["Conversation", "ReplyState", "Sampler", "SamplingConfig", "sample_ids", "step_logits"]
