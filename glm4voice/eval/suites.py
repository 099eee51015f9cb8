"""The evaluation suites. Each takes the bundle and the manifest rows it applies to and returns its figures.

    asr      WER (en) / CER (zh) of the tokenizer's ASR head
    lm-asr   WER (en) / CER (zh) of the LM's own transcripts of the codes (the papers' base-model ASR figure)
    recon    speech -> codes -> decoder: pocketsphinx WER of the re-synthesis beside the originals', and MCD
    tts      text -> text-to-token codes -> decoder: pocketsphinx WER beside the original recordings'; the codes'
             unit error rate against the tokenizer's codes of the recordings
    qa       spoken questions: S->T (the reply text says the row's `key`) and S->S (pocketsphinx hears it; en);
             T->T, the same questions typed (what the LM knows without listening); each also by task
    cloze    story pairs: the LM's likelihood prefers the right ending; T->T, S->T (rows with `story_audio`), S->S
    rate     "say ... slowly / quickly": reply speech duration against the plain "say ...", also per character
    latency  end of the user's speech -> first reply text / audio, through the streaming tokenizer

Rows are corpus-manifest rows (`data speak` output of `data tiny-texts`, or any manifest with the fields a
suite reads). Accuracies are shares in [0, 1]; every figure says over how many rows (`n_...`).
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch

from ..errors import Glm4VoiceError
from ..scoring import errors, normalize, symbol_errors

EXAMPLES = 5  # (reference, hypothesis) pairs kept per suite, to read


def _need(rows, what: str, suite: str):
    if not rows:
        raise Glm4VoiceError(f"suite {suite}: the manifest has no {what}")
    return rows


def _rates(totals: dict) -> dict:
    """{"en": [errors, words], "zh": [...]} -> wer_en / cer_zh and their counts."""
    out = {}
    for lang, key in (("en", "wer_en"), ("zh", "cer_zh")):
        wrong, n = totals.get(lang, (0, 0))
        if n:
            out[key], out[f"n_{key}"] = round(wrong / n, 4), n
    return out


def _load(row):
    from ..audio import load_audio

    return load_audio(row.audio)


# ------------------------------------------------------------------------------------------------ asr


def asr(bundle, rows) -> dict:
    from ..tokenizer.asr import transcribe

    rows = _transcribed(rows, "asr")
    model, codec = bundle.asr
    hyps = transcribe(model, codec, [_load(r) for r in rows], langs=[r.lang for r in rows])  # never guessed
    return _scored(rows, hyps)


def _transcribed(rows, suite: str) -> list:
    """The rows a transcript can be scored on (both ASR suites)."""
    return _need([r for r in rows if r.audio and r.text and r.lang in ("en", "zh")], "rows with audio, text and "
                 "lang", suite)  # fmt: skip


def _scored(rows, hyps) -> dict:
    """WER (en) / CER (zh) of the transcripts `hyps` against the rows' texts, and a few of them to read."""
    totals: dict = defaultdict(lambda: [0, 0])
    for row, hyp in zip(rows, hyps):
        wrong, n = errors(row.text, hyp, row.lang)
        totals[row.lang][0] += wrong
        totals[row.lang][1] += n
    return {**_rates(totals), "examples": [[r.text, h] for r, h in zip(rows, hyps)][:EXAMPLES]}


def lm_asr(bundle, rows, max_new_tokens: int = 100) -> dict:
    """The LM transcribes the codes: speech in pre-training's `asr` layout, then greedy text up to
    `<|endoftext|>` (the papers' ASR figure of their base model). Beside `asr` (the tokenizer's own head, which
    reads the same codes) it tells whether the LM hears what the codes carry, or less."""
    rows = _transcribed(rows, "lm-asr")
    heard = bundle.tokenizer.tokenize_batch([_load(r) for r in rows])  # the same codes as one by one
    return _scored(rows, [lm_transcript(bundle.lm, bundle.text_tokenizer, c, max_new_tokens) for c in heard])


def lm_transcript(lm, text_tokenizer, codes, max_new_tokens: int = 100) -> str:
    """`<|begin_of_audio|>` codes `<|end_of_audio|>`, then the LM's greedy text until `<|endoftext|>` (or
    `max_new_tokens`)."""
    from transformers import DynamicCache

    from ..data.sft import speech_ids
    from ..lm.generate import Sampler, SamplingConfig, sample_ids

    end = text_tokenizer.token_id("<|endoftext|>")
    sampler = Sampler(SamplingConfig(temperature=0, max_new_tokens=max_new_tokens))
    ids = sample_ids(lm, speech_ids(text_tokenizer, codes), DynamicCache(config=lm.config), sampler,
                     max_new_tokens, [end])  # fmt: skip
    return text_tokenizer.decode(list(ids), skip_special=True)  # audio ids, if it speaks instead, say no word


# ------------------------------------------------------------------------------------------------ recon, tts


def _english_wer(pairs) -> tuple[float, int]:
    """WER of (reference text, audio, rate) triples through pocketsphinx."""
    from ..scoring import recognise_english

    wrong = total = 0
    for text, audio, rate in pairs:
        e, n = errors(text, recognise_english(audio, rate), "en")
        wrong, total = wrong + e, total + n
    return (wrong / total if total else float("nan")), total


def recon(bundle, rows) -> dict:
    from ..audio import DECODER_RATE, decoder_log_mel, resample
    from ..scoring import mel_cepstral_distortion

    rows = _need([r for r in rows if r.audio], "rows with audio", "recon")
    dec, tok = bundle.decoder, bundle.tokenizer
    originals, remade, mcd = [], [], []
    for row in rows:
        wave = _load(row)
        audio = dec.decode(tok.tokenize(wave)).numpy()
        ref = torch.from_numpy(resample(wave, 16000, DECODER_RATE))[None]
        mcd.append(mel_cepstral_distortion(decoder_log_mel(ref)[0].numpy(),
                                           decoder_log_mel(torch.from_numpy(audio)[None])[0].numpy()))  # fmt: skip
        if row.lang == "en" and row.text:
            originals.append((row.text, wave, 16000))
            remade.append((row.text, audio, DECODER_RATE))
    out = {"mcd": round(float(np.mean(mcd)), 3), "n_mcd": len(mcd)}
    if originals:
        wer_o, n = _english_wer(originals)
        wer_r, _ = _english_wer(remade)
        out.update({"wer_resynth": round(wer_r, 4), "wer_original": round(wer_o, 4), "n_words": n,
                    "wer_ratio": round(wer_r / wer_o, 3) if wer_o else None})  # fmt: skip
    return out


def tts(bundle, rows) -> dict:
    from ..audio import DECODER_RATE

    rows = _need([r for r in rows if r.lang == "en" and r.text and r.audio], "English rows with text and audio",
                 "tts")  # fmt: skip
    codes = bundle.t2t.generate([r.text for r in rows])
    made = [(r.text, bundle.decoder.decode(c).numpy() if c else np.zeros(1, np.float32), DECODER_RATE)
            for r, c in zip(rows, codes)]  # fmt: skip
    wer_t, n = _english_wer(made)
    waves = [_load(r) for r in rows]
    wer_o, _ = _english_wer([(r.text, w, 16000) for r, w in zip(rows, waves)])
    # the text-to-token model's codes beside the tokenizer's codes of the recordings, before any decoder:
    # meaningful where the recordings are in the voice the model learnt (the assistant's)
    wrong = total = 0
    for made_codes, wave in zip(codes, waves):
        e, k = symbol_errors(bundle.tokenizer.tokenize(wave), made_codes)
        wrong, total = wrong + e, total + k
    return {"wer_tts": round(wer_t, 4), "wer_original": round(wer_o, 4), "n_words": n,
            "wer_ratio": round(wer_t / wer_o, 3) if wer_o else None,
            "unit_error_rate": round(wrong / total, 4) if total else None, "n_units": total}  # fmt: skip


# ------------------------------------------------------------------------------------------------ qa, rate


def says(text: str, key: str, lang: str) -> bool:
    """Does `text` say `key` (after normalising both: case, punctuation; whole words in English)?"""
    t, k = normalize(text, lang), normalize(key, lang)
    return f" {k} " in f" {t} " if lang == "en" else k in t


def qa(bundle, rows, max_new_tokens: int = 300) -> dict:
    """S->T and S->S on the spoken questions, and T->T on the same questions typed: the control that tells what
    the LM knows from what it hears (a low S->T beside a high T->T is the speech tokenizer's fault). `t2t_turn2`:
    each typed question again as the second turn of a conversation whose first was the previous question of its
    language, unless that one had the same answer (what a chat after its first turn asks of the LM). `by_task`
    splits every figure by the row's task (arithmetic, capitals, ...), where the misses are."""
    from ..scoring import recognise_english

    rows = _need([r for r in rows if r.audio and r.extra.get("role") == "question" and r.extra.get("key")],
                 "spoken questions with a key", "qa")  # fmt: skip
    right: dict = defaultdict(lambda: [0, 0])  # (kind, lang) -> [right, asked]
    by_task: dict = defaultdict(lambda: defaultdict(lambda: [0, 0]))  # task -> (kind, lang) -> [right, asked]
    examples = []

    def score(kind: str, lang: str, task: str | None, ok: bool) -> None:
        for tally in (right[kind, lang], *([] if task is None else [by_task[task][kind, lang]])):
            tally[0] += ok
            tally[1] += 1

    earlier: dict = {}  # lang -> (the typed conversation of that language's previous question, one turn in; its key)
    for row in rows:
        key, task = row.extra["key"], row.extra.get("task")  # a manifest without tasks: no breakdown
        reply = bundle.chat(max_new_tokens).reply(_load(row))
        score("s2t", row.lang, task, says(reply.text, key, row.lang))
        if row.lang == "en" and reply.audio.numel():
            score("s2s", "en", task, says(recognise_english(reply.audio.numpy(), reply.sample_rate), key, "en"))
        if row.text and row.text.strip():  # a row without its question's text: no T->T for it
            before, before_key = earlier.get(row.lang, (None, None))
            if before is not None and normalize(before_key, row.lang) != normalize(key, row.lang):
                second = before.reply(text=row.text)  # as a second turn (never after its own answer: no copying)
                score("t2t_turn2", row.lang, task, says(second.text, key, row.lang))
            chat = bundle.chat(max_new_tokens, speak=False)
            typed = chat.reply(text=row.text)
            earlier[row.lang] = (chat, key)
            score("t2t", row.lang, task, says(typed.text, key, row.lang))
        if len(examples) < EXAMPLES:
            examples.append([row.text, key, reply.text])

    def shares(tallies: dict) -> dict:
        return {f"{kind}_{lang}": round(r / n, 4) for (kind, lang), (r, n) in sorted(tallies.items())}

    out = shares(right)
    out.update({f"n_{kind}_{lang}": n for (kind, lang), (_, n) in sorted(right.items())})
    return {**out, "by_task": {task: shares(t) for task, t in sorted(by_task.items())}, "examples": examples}


def rate(bundle, rows, max_new_tokens: int = 300) -> dict:
    """Mean reply durations of "say ..." against "say ... slowly / quickly" (what the issue's target asks), and the
    same ratios per character of what the reply says, in each language (`*_per_char_en`, `*_per_char_zh`): a
    reply with other words than asked has another length for that alone, and the tiny model's often do, so the
    per-character pace tells whether it still slowed down or sped up. Per language, as a Mandarin character
    takes several times an English letter's time."""
    kinds = {"say": "normal", "say_slowly": "slow", "say_quickly": "quick"}
    rows = _need([r for r in rows if r.audio and r.extra.get("task") in kinds], "say / say_slowly / say_quickly "
                 "questions", "rate")  # fmt: skip
    seconds: dict = defaultdict(list)
    pace: dict = defaultdict(lambda: defaultdict(list))  # lang -> kind -> seconds per character of the reply's
    for row in rows:  # text (no spaces, no punctuation), from the replies that say something
        reply = bundle.chat(max_new_tokens).reply(_load(row))
        seconds[kinds[row.extra["task"]]].append(reply.seconds)
        chars = len(normalize(reply.text, row.lang).replace(" ", "").strip("-"))
        if chars and reply.seconds:
            pace[row.lang][kinds[row.extra["task"]]].append(reply.seconds / chars)
    mean = {k: float(np.mean(v)) for k, v in seconds.items() if v}
    out = {f"seconds_{k}": round(v, 3) for k, v in mean.items()}
    out.update({f"n_{k}": len(v) for k, v in seconds.items()})
    out.update(_rate_ratios(mean, ""))
    for lang, by_kind in sorted(pace.items()):
        suffix = f"_per_char_{lang}"
        ratios = _rate_ratios({k: float(np.mean(v)) for k, v in by_kind.items()}, suffix)
        out.update(ratios)
        for name, over, under in RATE_RATIOS:  # how many replies each came from
            if f"{name}{suffix}" in ratios:
                out[f"n_{name}{suffix}"] = len(by_kind[over]) + len(by_kind[under])
    return out


RATE_RATIOS = (("slow_over_normal", "slow", "normal"), ("normal_over_quick", "normal", "quick"))  # name, over, under


def _rate_ratios(mean: dict, suffix: str) -> dict:
    """slow over normal and normal over quick of per-kind means, where both kinds have one."""
    return {f"{name}{suffix}": round(mean[over] / mean[under], 3) for name, over, under in RATE_RATIOS
            if mean.get(under) and over in mean}  # fmt: skip


# ------------------------------------------------------------------------------------------------ cloze


@torch.inference_mode()
def log_likelihood(lm, context: list[int], continuation: list[int]) -> float:
    """Sum of log p(continuation ids | context ids) under the LM (one forward pass)."""
    ids = torch.tensor([context + continuation], device=lm.device)
    logits = lm(input_ids=ids).logits[0, len(context) - 1 : -1].float()
    picked = torch.log_softmax(logits, -1).gather(1, ids[0, len(context) :, None])
    return float(picked.sum())


def cloze(bundle, rows) -> dict:
    """Pairs of rows sharing `pair`, one with `right` true: does the LM find the right ending likelier?

    T->T: the ending's text given the story's text. S->S: each whole spoken row (story and ending as speech)
    between <|begin_of_audio|> and <|end_of_audio|>, as the pre-training's speech samples. S->T: the story's
    speech (`story_audio`) then the ending's text."""
    pairs: dict = defaultdict(dict)
    for r in rows:
        if r.extra.get("role") == "story" and r.extra.get("pair") and "ending" in r.extra and "story" in r.extra:
            pairs[r.extra["pair"]]["right" if r.extra.get("right") else "wrong"] = r
    pairs = {p: v for p, v in pairs.items() if len(v) == 2}
    _need(pairs, "story pairs (rows with pair, story, ending, right)", "cloze")
    lm, tok = bundle.lm, bundle.text_tokenizer
    boa, eoa = tok.token_id("<|begin_of_audio|>"), tok.token_id("<|end_of_audio|>")
    wins: dict = defaultdict(lambda: [0, 0])
    speech_cache: dict = {}

    def speech(path: str) -> list[int]:
        if path not in speech_cache:
            from ..audio import load_audio

            speech_cache[path] = [boa, *tok.audio_ids(bundle.tokenizer.tokenize(load_audio(path))), eoa]
        return speech_cache[path]

    for pair in pairs.values():
        glue = " " if pair["right"].lang == "en" else ""
        scores = {}
        for name, row in pair.items():
            story, ending = tok.encode(row.extra["story"]), tok.encode(glue + row.extra["ending"])
            scores["t2t", name] = log_likelihood(lm, story, ending)
            if row.audio and (bundle.root / "tokenizer").is_dir():
                ids = speech(row.audio)
                scores["s2s", name] = log_likelihood(lm, ids[:1], ids[1:])
            if row.extra.get("story_audio") and (bundle.root / "tokenizer").is_dir():
                scores["s2t", name] = log_likelihood(lm, speech(row.extra["story_audio"]), ending)
        for kind in ("t2t", "s2t", "s2s"):
            if (kind, "right") in scores and (kind, "wrong") in scores:
                wins[kind][0] += scores[kind, "right"] > scores[kind, "wrong"]
                wins[kind][1] += 1
    out = {kind: round(w / n, 4) for kind, (w, n) in wins.items()}
    out.update({f"n_{kind}": n for kind, (_, n) in wins.items()})
    return out


# ------------------------------------------------------------------------------------------------ latency


def latency(bundle, rows, max_new_tokens: int = 60, piece_seconds: float = 0.08) -> dict:
    """The user's speech goes through the streaming tokenizer in `piece_seconds` pieces as it would arrive;
    the clock starts when the last piece is in (the end of speech) and stops at the first reply text and
    the first reply audio."""
    from ..events import AudioChunk, TextEvent

    rows = _need([r for r in rows if r.audio], "rows with audio", "latency")
    first_text, first_audio = [], []
    for row in rows:
        wave, chat = _load(row), bundle.chat(max_new_tokens)
        stream, codes, step = bundle.tokenizer.stream(), [], int(16000 * piece_seconds)
        for start in range(0, len(wave), step):
            codes += stream.push(wave[start : start + step])
        t0 = time.perf_counter()
        codes += stream.flush()
        text_at = audio_at = None
        for event in chat.turn(codes=codes):
            now = time.perf_counter() - t0
            if isinstance(event, TextEvent) and event.text and text_at is None:
                text_at = now
            if isinstance(event, AudioChunk) and audio_at is None:
                audio_at = now
                break
        if text_at is not None:
            first_text.append(text_at)
        if audio_at is not None:
            first_audio.append(audio_at)
    out = {}
    for name, values in (("first_text", first_text), ("first_audio", first_audio)):
        if values:
            out[f"{name}_p50"] = round(float(np.percentile(values, 50)), 3)
            out[f"{name}_p90"] = round(float(np.percentile(values, 90)), 3)
            out[f"n_{name}"] = len(values)
    out["first_audio_seconds"] = [round(x, 3) for x in first_audio]  # for the plot
    return out


SUITES = {"asr": asr, "lm-asr": lm_asr, "recon": recon, "tts": tts, "qa": qa, "cloze": cloze, "rate": rate,
          "latency": latency}
