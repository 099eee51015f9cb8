"""Streaming-thoughts fine-tuning samples (SPEC §4), laid out exactly as the chat decodes at inference.

The reply interleaves 13 text ids and 26 speech ids. When the text runs out,
the rest of the speech follows (and when the speech runs out first, the rest
of the text). Then comes `<|user|>`, the stop id the chat ends on. The prompt
is `PromptBuilder`'s, the one inference feeds, so train and serve cannot drift.

Each (question, text answer, speech answer) gives two samples, as in the
paper: one where the loss falls on the reply's text ids (speech ids masked),
one where it falls on the speech ids (text masked). The prompt never carries
loss. The stop id carries it in both: each copy must learn to end its reply.

    ids = text_tokenizer.encode("Sure, ...")              # the answer's text ids
    codes = speech_tokenizer.tokenize("answer.wav")       # its 12.5 Hz speech codes
    text_copy, speech_copy = sft_samples(text_tokenizer, UserInput(speech=question_codes), ids, codes)
    batch = collate([text_copy, speech_copy], pad_id=text_tokenizer.token_id("<|endoftext|>"))

A manifest may also hold replay rows, pre-training samples laid out as the mixture lays them out
(`text_sample`, `asr_sample`): a small model fine-tuned for thousands of steps on questions forgets what
it read and heard before (facts behind held-out questions, words outside the questions); a share of those
samples among the turns keeps them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import Glm4VoiceError
from ..lm.prompt import PromptBuilder, UserInput, build_prompt
from ..lm.text import TextTokenizer

TEXT_RUN, SPEECH_RUN = 13, 26  # the system prompt's "13 text token followed by 26 audio tokens"
IGNORE = -100  # label of ids without loss (torch's cross_entropy ignore_index)


@dataclass
class TrainingSample:
    """One causal-LM sample. `labels[i]` is `input_ids[i]` where that id carries loss, IGNORE elsewhere
    (not pre-shifted: transformers' causal-LM loss shifts them itself)."""

    input_ids: list[int]
    labels: list[int]

    def __post_init__(self):
        if len(self.input_ids) != len(self.labels):
            raise Glm4VoiceError(f"{len(self.input_ids)} input ids but {len(self.labels)} labels")


def interleave_reply(text_ids: Sequence[int], speech_ids: Sequence[int],
                     text_run: int = TEXT_RUN, speech_run: int = SPEECH_RUN) -> list[int]:  # fmt: skip
    """text[0:13] speech[0:26] text[13:26] speech[26:52] ...; whichever is left over follows at the end."""
    if text_run < 1 or speech_run < 1:
        raise Glm4VoiceError("text_run and speech_run must be positive")
    out: list[int] = []
    t = s = 0
    while t < len(text_ids) or s < len(speech_ids):
        out += text_ids[t : t + text_run]
        t += text_run
        out += speech_ids[s : s + speech_run]
        s += speech_run
    return out


def sft_samples(
    tokenizer: TextTokenizer,
    question: UserInput,
    answer_text_ids: Sequence[int],
    answer_codes: Sequence[int],
    system: str | None = None,
    history: Sequence[tuple[UserInput, Sequence[int]]] = (),
) -> tuple[TrainingSample, TrainingSample]:
    """(text-loss copy, speech-loss copy) of one turn; `history` = earlier (user, reply ids) pairs, no loss."""
    if not answer_text_ids or not answer_codes:
        raise Glm4VoiceError("a streaming-thoughts sample needs both a text answer and a speech answer")
    if any(tokenizer.is_audio(i) or tokenizer.is_special(i) for i in answer_text_ids):
        raise Glm4VoiceError("answer_text_ids must be plain text ids (encode the text with TextTokenizer.encode)")
    builder = PromptBuilder(tokenizer)
    prompt = build_prompt(tokenizer, question, history, system)
    reply = interleave_reply(list(answer_text_ids), tokenizer.audio_ids(answer_codes)) + [builder.user_id]
    ids = prompt + reply
    text_labels = [IGNORE] * len(prompt) + [IGNORE if tokenizer.is_audio(i) else i for i in reply]
    speech_labels = [IGNORE] * len(prompt) + [i if tokenizer.is_audio(i) or i == builder.user_id else IGNORE
                                              for i in reply]  # fmt: skip
    return TrainingSample(ids, text_labels), TrainingSample(list(ids), speech_labels)


def text_sample(tokenizer: TextTokenizer, text: str) -> TrainingSample:
    """A text-LM sample: the text's ids and `<|endoftext|>`, loss on every id (the mixture's `text` kind)."""
    ids = tokenizer.encode(text) + [tokenizer.token_id("<|endoftext|>")]
    return TrainingSample(ids, list(ids))


def speech_ids(tokenizer: TextTokenizer, codes: Sequence[int]) -> list[int]:
    """`<|begin_of_audio|>` codes `<|end_of_audio|>` as LM ids (the mixture's speech segment)."""
    boa, eoa = tokenizer.token_id("<|begin_of_audio|>"), tokenizer.token_id("<|end_of_audio|>")
    return [boa, *tokenizer.audio_ids(codes), eoa]


def asr_sample(tokenizer: TextTokenizer, codes: Sequence[int], text: str) -> TrainingSample:
    """Speech, then its transcript and `<|endoftext|>`, loss on the transcript (the mixture's `asr` kind)."""
    speech, text_ids = speech_ids(tokenizer, codes), text_sample(tokenizer, text).input_ids
    return TrainingSample(speech + text_ids, [IGNORE] * len(speech) + text_ids)


def collate(samples: Sequence[TrainingSample], pad_id: int, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, labels (IGNORE on padding), attention_mask; [B, T] each.

    A sample longer than `max_length` is an error rather than silently cut:
    cutting would drop the reply's end (and its stop id) without a trace.
    """
    if not samples:
        raise Glm4VoiceError("collate: no samples")
    longest = max(len(s.input_ids) for s in samples)
    if max_length is not None and longest > max_length:
        raise Glm4VoiceError(f"collate: a sample has {longest} ids, more than max_length {max_length}")
    ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), longest), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        ids[row, :n] = torch.tensor(s.input_ids)
        labels[row, :n] = torch.tensor(s.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def with_speech_copies(samples: list[TrainingSample], tokenizer: TextTokenizer, copies: int) -> list[TrainingSample]:
    """`samples` with each speech-output copy (a sample whose loss is on speech ids) `copies` times: the paper
    fine-tunes 20 epochs on speech output and 4 on text (SPEC §4), i.e. 5. The speech copies carry the rate of a
    reply ("say it slowly") in a code or two each, which the text copies never carry."""
    if copies < 1:
        raise Glm4VoiceError(f"speech copies must be >= 1, not {copies}")
    speech = [s for s in samples if any(label != IGNORE and tokenizer.is_audio(label) for label in s.labels)]
    return samples + speech * (copies - 1)


def read_sft_manifest(path, tokenizer: TextTokenizer) -> list[TrainingSample]:
    """A JSONL file, one turn per line -> its two samples per line (text-loss, speech-loss copies).

        {"question": {"codes": [12, 907, ...]} | {"text": "..."},
         "answer_text": "...", "answer_codes": [33, 1021, ...], "system": "..." (optional),
         "history": [earlier turns, each {"question", "answer_text", "answer_codes"}] (optional)}

    Earlier turns are context without loss, laid out as the chat keeps them: each one's prompt, then its
    reply's interleaved text and speech ids (the ids the LM generated, without the stop id).

    or a replay row, one sample: `{"replay": "text", "text": "..."}` (`text_sample`) or
    `{"replay": "asr", "codes": [...], "text": "..."}` (`asr_sample`).

    Any bad line is an error naming the file and line; nothing is skipped silently.
    """
    from ..jsonl import read_jsonl

    samples: list[TrainingSample] = []
    for where, row in read_jsonl(path, "manifest"):
        try:
            if not isinstance(row, dict):
                raise ValueError("each line is a JSON object")
            if "replay" in row:
                samples.append(_replay(row, tokenizer))
                continue
            user, answer_ids, codes = _turn(row, tokenizer)
            system = row.get("system")
            if system is not None and not isinstance(system, str):
                raise ValueError("system must be a string")
            earlier = row.get("history", [])
            if not isinstance(earlier, list) or not all(isinstance(t, dict) for t in earlier):
                raise ValueError("history must be a list of earlier turns ({question, answer_text, answer_codes})")
            history = []
            for n, turn in enumerate(earlier):
                try:
                    before, before_ids, before_codes = _turn(turn, tokenizer)
                except KeyError as exc:
                    raise ValueError(f"history[{n}]: missing {exc}") from None
                except ValueError as exc:
                    raise ValueError(f"history[{n}]: {exc}") from None
                history.append((before, interleave_reply(before_ids, tokenizer.audio_ids(before_codes))))
            samples += sft_samples(tokenizer, user, answer_ids, codes, system=system, history=history)
        except KeyError as exc:
            raise Glm4VoiceError(f"{where}: missing {exc}") from None
        except (ValueError, TypeError, Glm4VoiceError) as exc:
            raise Glm4VoiceError(f"{where}: {exc}") from None
    if not samples:
        raise Glm4VoiceError(f"{path}: no samples")
    return samples


def _turn(row: dict, tokenizer: TextTokenizer) -> tuple[UserInput, list[int], list[int]]:
    """One turn's (user input, answer text ids, answer codes), checked."""
    question = row["question"]
    if isinstance(question, dict) and set(question) == {"codes"}:
        user = UserInput(speech=_codes(question["codes"], tokenizer))
    elif isinstance(question, dict) and set(question) == {"text"} and isinstance(question["text"], str):
        user = UserInput(text=question["text"])
    else:
        raise ValueError('question must be {"codes": [...]} or {"text": "..."}')
    if not isinstance(row["answer_text"], str):
        raise ValueError("answer_text must be a string")
    return user, tokenizer.encode(row["answer_text"]), _codes(row["answer_codes"], tokenizer)


def _replay(row: dict, tokenizer: TextTokenizer) -> TrainingSample:
    kind, text = row["replay"], row["text"]
    extra = set(row) - {"replay", "text", "codes"}
    if extra:
        raise ValueError(f"a replay row has replay, text (and codes), not {', '.join(sorted(extra))}")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a replay row's text must be a non-empty string")
    if kind == "text":
        return text_sample(tokenizer, text)
    if kind == "asr":
        codes = _codes(row["codes"], tokenizer)
        if not codes:
            raise ValueError("an asr replay row needs speech codes")
        return asr_sample(tokenizer, codes, text)
    raise ValueError(f'replay must be "text" or "asr", not {kind!r}')


def _codes(values, tokenizer: TextTokenizer) -> list[int]:
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError("speech codes must be a list of integers")
    if values and not 0 <= min(values) <= max(values) < tokenizer.n_audio:
        raise ValueError(f"speech codes must lie in 0..{tokenizer.n_audio - 1}")
    return values
