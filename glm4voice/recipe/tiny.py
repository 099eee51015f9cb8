"""The tiny recipe: the system trained from nothing on this project's 2-core CPU (issue 14).

Stages, each a folder of OUT:

    texts      the tiny domain (`data tiny-texts`) and short Debian fortunes -> train / test text manifests, and
               the train texts (without the facts' other phrasings: text for the LMs alone) plus word lists of
               their words (`word_lists`): what the user voices speak
    speech     train texts and word lists spoken by every voice with augmentation (answers in the assistant's
               voice), the test questions in held-out voice settings (faster, higher); the domain's texts in
               the assistant's voice alone (the decoder's data); and the fortunes and word lists in the
               assistant's voice too (`assistant-t2t`: the text-to-token model's other pairs) -> corpus manifests
    vocoder    HiFT (mel -> audio) of the assistant's voice from random weights of the packaged decoder-tiny.yaml
               (it needs no speech tokenizer: `--only vocoder` may run beside `--only tokenizer`)
    tokenizer  the speech tokenizer from scratch (`train-tokenizer`, packaged config tokenizer-tiny.json)
    decoder    the flow (codes of that tokenizer -> mel of the assistant's voice) from the vocoder's folder
               -> a decoder folder
    codes      the corpora through that tokenizer (`tokenize-corpus`, Ray Data) -> Parquet shards
    text-tokenizer  a byte-level BPE on the training texts (`train-bpe`), then the speech ids (`extend-vocab`)
    t2t        the text-to-token model from scratch on the assistant's (text, codes) pairs, the domain's and
               `assistant-t2t`'s (`train-t2t`)
    interleaved  the training texts with spans turned into speech codes (`data interleave`), plus the pairs
    sft-data   spoken and typed training questions -> their answers' text and the assistant's codes, some after
               one or two earlier turns (multi-turn), and replay rows: the facts and stories as text, other
               training utterances as ASR (what SFT must not forget)
    pretrain   the LM from scratch on the mixture: text, speech, ASR, TTS, interleaved (`train-lm`)
    sft        streaming-thoughts fine-tuning on the SFT data (`train-sft`)
    bundle     tokenizer/, lm/, decoder/, t2t/ in one folder: what `--model-dir` takes
    eval       `glm4voice eval` of the bundle on the test split (held-out questions and stories, held-out
               voice settings), the ASR suite on the tokenizer's ASR-layout checkpoint
    card       the bundle's README.md (recipe/card.py): data, parts, training times, the eval table

`--smoke` runs every stage on a handful of rows in seconds. "findings" in the comments below is docs/findings.md,
the measurements behind each setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.domain import ASSISTANT
from ..data.manifest import first_of_each
from ..jsonl import read_jsonl
from . import Stage
from .runs import resume_point, run_figures, store_bf16, valid_subset, write_rows
from .tiny_lm import bundle, evaluation, interleaved, model_card, pretrain, sft, sft_data, t2t, text_tokenizer

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"
HELD_OUT_VOICES = {"rate": (1.15, 1.3), "pitch": (2.0, 4.0), "seed": 7}  # test speakers: settings never trained on
AUGMENTS = ("tempo", "pitch", "noise", "reverb")


@dataclass(frozen=True)
class Sizes:
    rows: int | None  # rows of each (language, role) kept (None: all)
    fortunes: dict  # language -> short fortunes spoken beside the domain (their words: vocabulary)
    fortune_chars: dict  # language -> longest fortune kept, in characters (about 7 s spoken either way)
    word_lists: dict  # language -> rows of random training words the user voices speak (the tokenizer's words)
    tokenizer_config: dict | None  # None: the packaged tokenizer-tiny.json
    tokenizer_steps: int  # FULL: 16000 -> 32000, the codes' phoneme error rate en / zh 0.25 / 0.16 -> 0.19 / 0.13
    # (findings: "The tokenizer's run, one schedule twice as long")
    vq_warmup: int
    batch_seconds: float
    tokenizer_max_seconds: float  # longer training utterances (the longest stories) are left out of ASR
    vocab_size: int
    lr: float
    eval_every: int
    save_every: int
    workers: int
    # flow_steps was 2400, then 4800: valid mel L1 1.27 -> 1.12 -> 0.96 (docs/findings.md, "The flow's length")
    flow_steps: int = 24000  # 16000 -> 24000: re-synthesis WER 0.65 -> 0.61 (findings: "The vocoder's length")
    hift_steps: int = 8000  # was 2000: copy synthesis WER 0.43 -> 0.24 (findings: "The vocoder's length")
    decoder_batch: int = 8
    crop_codes: int = 40
    flow_lr: float = 1e-3  # peak (after 500 warm-up steps), linear decay to a tenth; was 5e-4 with 4800 steps
    flow_precision: str = "auto"  # bf16 autocast (fp32 weights) where the CPU has bf16 instructions: 1.31x the
    # float32 step's speed on AVX-512 bf16 (README "Decoder training"); elsewhere "none": emulated, it is far slower
    flow_prior_weight: float = 0.0  # Matcha-TTS's prior loss on mu: 1.0 did not help (findings: the flow's length)
    crop_frames: int = 64
    bpe_vocab: int = 2000  # with bf16 storage, what keeps the bundle within 40 MB
    t2t_config: tuple = (("hidden_size", 256), ("intermediate_size", 768), ("num_hidden_layers", 4),
                         ("num_attention_heads", 4), ("num_key_value_heads", 2), ("head_dim", 64),
                         ("max_position_embeddings", 1024))  # fmt: skip
    t2t_steps: int = 1000
    t2t_roles: tuple = ("fortune", "words")  # training texts the assistant's voice also speaks for the text-to-token
    # model alone: 3430 -> 23430 pairs, unit error rate en 0.85 -> 0.74 (findings: "The text-to-token model's pairs")
    t2t_seq_length: int = 512
    lm_config: tuple = (("hidden_size", 256), ("intermediate_size", 768), ("num_hidden_layers", 6),
                        ("num_attention_heads", 4), ("num_key_value_heads", 2), ("head_dim", 64),
                        ("max_position_embeddings", 2048))  # fmt: skip
    lm_seq_length: int = 1024
    pretrain_steps: int = 1200
    sft_steps: int = 24000  # was 2000, 4000, 12000 (findings: SFT length); 24000 with speech_copies 3 keeps
    # "say it slowly" (findings: "SFT long enough to keep the rate")
    typed_every: int = 1  # every n-th training question is also a typed one (was 4: findings, "SFT replay")
    qa_texts: bool = True  # each training question with its answer, one text more for the LMs (findings: "Facts
    # in several phrasings, questions beside answers")
    replay_roles: tuple = ("fact", "story")  # training texts of these roles ride along in SFT as text samples
    asr_replay: int = 2000  # training utterances (not questions) ride along in SFT as ASR samples
    multi_turn_every: int = 4  # every n-th turn comes again after 1 or 2 other turns (the chat's second turn on)
    speech_copies: int = 3  # train-sft --speech-copies: each turn's speech-output copy this many times a pass
    eval_suites: tuple = ("asr", "lm-asr", "recon", "tts", "qa", "cloze", "rate", "latency")
    eval_limit: int | None = 6  # rows of each (role, task, language): the eval in minutes, not an hour


FULL = Sizes(rows=None, fortunes={"en": 2500, "zh": 1500}, fortune_chars={"en": 100, "zh": 30},
             word_lists={"en": 8000, "zh": 8000},  # was 2000 each (the 2026-12-06 bundle): findings, "Word lists"
             tokenizer_config=None, tokenizer_steps=32000, vq_warmup=4000, batch_seconds=30.0,
             tokenizer_max_seconds=15.0, vocab_size=500, lr=1e-3, eval_every=1000, save_every=500,
             workers=2)  # fmt: skip
SMOKE = Sizes(rows=2, fortunes={"en": 1, "zh": 1}, fortune_chars={"en": 80, "zh": 30}, word_lists={"en": 1, "zh": 1},
              tokenizer_config={"d_model": 64, "encoder_layers": 2, "quantize_position": 1, "pooling_position": 1,
                                "encoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_layers": 1,
                                "decoder_attention_heads": 4, "decoder_ffn_dim": 128, "num_mel_bins": 128,
                                "quantize_vocab_size": 32, "max_target_positions": 128, "ctc_weight": 0.5},
              tokenizer_steps=2, vq_warmup=1, batch_seconds=10.0, tokenizer_max_seconds=30.0, vocab_size=300,
              lr=1e-3, eval_every=0,
              save_every=1, workers=1, flow_steps=2, hift_steps=2, decoder_batch=2, crop_codes=8,
              crop_frames=32, bpe_vocab=300, t2t_steps=2, t2t_seq_length=128,
              t2t_config=(("hidden_size", 32), ("intermediate_size", 64), ("num_hidden_layers", 1),
                          ("num_attention_heads", 2), ("num_key_value_heads", 1), ("head_dim", 16),
                          ("max_position_embeddings", 256)),
              lm_config=(("hidden_size", 32), ("intermediate_size", 64), ("num_hidden_layers", 1),
                         ("num_attention_heads", 2), ("num_key_value_heads", 1), ("head_dim", 16),
                         ("max_position_embeddings", 2048)),
              lm_seq_length=512, pretrain_steps=2, sft_steps=2, typed_every=2, asr_replay=2,
              eval_suites=("asr", "cloze"), eval_limit=1)  # fmt: skip


def _short_pieces(text: str, lang: str, limit: int) -> list[str]:
    """What of a fortune is short enough to speak in a few seconds: an English one whole when it fits; a Mandarin
    one cut into its sentences and clauses ending in 。！？；(fortunes-zh holds long documents and poems), a list
    item's leading `*` or `-` taken off, and kept only when it is characters and punctuation: Latin letters, digits
    and symbols (commands, file names, `a + b`) espeak-ng reads out in English, letter by letter."""
    import re

    if lang != "zh":
        return [text] if len(text) <= limit else []
    pieces = (p.strip().lstrip("*-•· ").strip() for p in re.split(r"(?<=[。！？；])|\n", text))
    plain = re.compile(r"[\u4e00-\u9fff。，？；：！、“”\"（）()［］\[\]《》…— ,.?!;:]+")
    return [p for p in pieces if 4 <= len(p) <= limit and plain.fullmatch(p)]


def lm_texts(train: list[dict], qa: bool) -> list[dict]:
    """What the LMs read (interleaved, pre-training, SFT replay): the training texts without the stories' wrong
    endings, and (`qa`) each training question followed by its answer as one more text.

    The speech corpus speaks both endings; an LM that read the wrong ones as text learns them as likely, and the
    `cloze` suite asks it which ending is right. The question-answer texts put questions beside what answers them
    in pre-training already, as "Physics of Language Models 3.1" (Allen-Zhu & Li) found a model needs, beside
    facts stated in several ways, to answer questions about facts it read elsewhere: the held-out questions ask
    about facts read only as text (findings: "Facts in several phrasings, questions beside answers")."""
    rows = [r for r in train if r.get("right") is not False]
    if qa:
        rows += [{"id": f"{r['id']}-qa", "text": r["text"] + (" " if r["lang"] == "en" else "") + r["answer"],
                  "lang": r["lang"], "role": "qa", "task": r.get("task"), "split": "train"}
                 for r in rows if r.get("role") == "question" and r.get("answer")]  # fmt: skip
    return rows


def texts(sizes: Sizes):
    def run(folder: Path, done: dict) -> dict:
        from ..data.domain import write_tiny_texts
        from ..data.text_corpus import documents

        write_tiny_texts(folder / "domain.jsonl")
        rows = [r for _, r in read_jsonl(folder / "domain.jsonl", "domain texts")]

        def kind(r):  # a fact's other phrasings apart: a few rows of each keep spoken facts
            return (r.get("lang"), r.get("role"), r.get("split"), bool(r.get("phrasing")))

        train = first_of_each([r for r in rows if r.get("split", "train") == "train"], sizes.rows, kind)
        test = first_of_each([r for r in rows if r.get("role") in ("question", "story") and r.get("split") == "test"],
                             sizes.rows, kind)  # fmt: skip
        counts = {lang: 0 for lang in sizes.fortunes}
        for doc in documents(fortunes=True, langs=tuple(sizes.fortunes)):
            for n, text in enumerate(_short_pieces(doc.text, doc.lang, sizes.fortune_chars[doc.lang])):
                if counts[doc.lang] < sizes.fortunes[doc.lang]:
                    counts[doc.lang] += 1
                    train.append({"id": f"{doc.id}-{n}", "text": text, "lang": doc.lang, "role": "fortune"})
        # spoken: every row but the facts' other phrasings (text the LMs read, never heard)
        spoken = [r for r in train if not r.get("phrasing")]
        # the assistant's voice: every domain text it could say (its answers, facts, stories), at rate 1 unless
        # the row asks for another (the slow and quick answers)
        def unvoiced(rows):  # without a voice or pitch of their own: the assistant speaks them in its voice
            return [{k: v for k, v in r.items() if k not in ("voice", "pitch")} for r in rows]

        voice = unvoiced(r for r in spoken if r["role"] != "fortune")
        words = word_lists(spoken, sizes.word_lists)
        pairs = unvoiced(r for r in spoken + words if r["role"] in sizes.t2t_roles)
        write_rows(folder / "train-texts.jsonl", train)
        write_rows(folder / "speech-texts.jsonl", spoken + words)
        write_rows(folder / "test-texts.jsonl", test)
        write_rows(folder / "assistant-texts.jsonl", voice)
        write_rows(folder / "t2t-texts.jsonl", pairs)
        write_rows(folder / "lm-texts.jsonl", lm_texts(train, sizes.qa_texts))
        return {"train_texts": str(folder / "train-texts.jsonl"), "test_texts": str(folder / "test-texts.jsonl"),
                "assistant_texts": str(folder / "assistant-texts.jsonl"), "t2t_texts": str(folder / "t2t-texts.jsonl"),
                "speech_texts": str(folder / "speech-texts.jsonl"), "lm_texts": str(folder / "lm-texts.jsonl"),
                "train_rows": len(train),
                "test_rows": len(test), "assistant_rows": len(voice), "t2t_rows": len(pairs), "fortunes": counts,
                "word_lists": len(words)}  # fmt: skip

    return Stage("texts", run, "the tiny domain, short fortunes and word lists -> train/test text manifests")


WORDS_PER_LIST = {"en": (3, 8), "zh": (2, 5)}  # English words; Mandarin two-character pieces


def word_lists(train: list[dict], counts: dict, seed: int = 0) -> list[dict]:
    """Rows of random words of the training texts, for the user voices to speak (role "words").

    The tiny tokenizer learns the training sentences rather than their words (training questions WER 0.10,
    held-out ones 0.8): a list of words in no sentence's order cannot be learnt as a sentence, only word by word.
    Each word is drawn, with equal chance, from the domain's words or the fortunes' words (each set uniform over
    its distinct words, so the domain's few hundred are not drowned by the fortunes' thousands). English words are
    runs of letters; Mandarin ones are two-character pieces of Han characters. Only training texts are read, so
    the held-out questions stay unheard. A pure function of (texts, counts, seed)."""
    import random
    import re

    def vocabulary(lang: str, fortune: bool) -> list[str]:
        found = set()
        for r in train:
            if r.get("lang") != lang or (r.get("role") == "fortune") != fortune:
                continue
            if lang == "zh":
                for run_ in re.findall(r"[\u4e00-\u9fff]+", r["text"]):
                    found.update(run_[i:i + 2] for i in range(len(run_) - 1))
            else:
                words = re.findall(r"[A-Za-z]+(?:'[a-z]+)?", r["text"])
                found.update(w.lower() for w in words if len(w) > 1 or w in ("a", "I"))
        return sorted(found)

    rows = []
    for lang, count in sorted(counts.items()):
        pools = [p for p in (vocabulary(lang, False), vocabulary(lang, True)) if p]
        rng = random.Random(f"{seed}-{lang}")
        for n in range(count if pools else 0):
            picked = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(*WORDS_PER_LIST[lang]))]
            text = "".join(picked) + "。" if lang == "zh" else " ".join(picked).capitalize() + "."
            rows.append({"id": f"{lang}-words-{n:05d}", "text": text, "lang": lang, "role": "words"})
    return rows


def speech(sizes: Sizes):
    def run(folder: Path, done: dict) -> dict:
        from ..data.speak import SpeakSettings, speak

        made = {}
        held_out = SpeakSettings(**HELD_OUT_VOICES)
        assistant = SpeakSettings(voices=tuple(ASSISTANT.values()), rate=(1.0, 1.0), pitch=(0.0, 0.0))
        jobs = (("train", "speech_texts", SpeakSettings(augment=AUGMENTS)), ("test", "test_texts", held_out),
                ("assistant", "assistant_texts", assistant), ("assistant-test", "test_texts", assistant),
                ("assistant-t2t", "t2t_texts", assistant))  # fmt: skip
        for split, texts_key, settings in jobs:
            if split == "assistant-t2t" and not done["texts"].get(texts_key):
                continue  # a texts stage finished before the t2t's own texts existed: its run goes on as it began
            # a texts stage finished before word lists existed has no speech_texts: its run goes on as it began
            texts_file = done["texts"].get(texts_key) or done["texts"]["train_texts"]
            summary = speak(texts_file, folder / split, settings, workers=sizes.workers,
                            progress=False)  # fmt: skip
            made[split] = {"manifest": str(folder / split / "manifest.jsonl"), "rows": summary["spoken"],
                           "failed": summary["failed"], "audio_seconds": summary["audio_seconds"]}  # fmt: skip
        return made

    return Stage("speech", run, "train texts in every voice (augmented), test questions in held-out voice settings, "
                 "the domain in the assistant's voice", needs=("texts",))  # fmt: skip


def tokenizer(sizes: Sizes):
    def run(folder: Path, done: dict) -> dict:
        from ..train.config import RunConfig
        from ..train.tokenizer import train_tokenizer

        config = CONFIGS / "tokenizer-tiny.json"
        if sizes.tokenizer_config is not None:
            config = folder / "config.json"
            write_rows(config, [sizes.tokenizer_config])
        cfg = RunConfig(steps=sizes.tokenizer_steps, lr=sizes.lr, min_lr=sizes.lr / 10, weight_decay=0.0,
                        warmup_steps=min(500, sizes.tokenizer_steps // 10), save_every=sizes.save_every,
                        keep_last=2)  # fmt: skip
        valid_subset(done["speech"]["test"]["manifest"], 8, folder / "valid.jsonl")
        resume, finished = resume_point(folder / "run", cfg.steps)
        if not finished:
            train_tokenizer(done["speech"]["train"]["manifest"], folder / "run", cfg, config=config,
                            valid=folder / "valid.jsonl", eval_every=sizes.eval_every,
                            batch_seconds=sizes.batch_seconds, vocab_size=sizes.vocab_size,
                            vq_warmup=sizes.vq_warmup, max_seconds=sizes.tokenizer_max_seconds,
                            resume=resume)  # fmt: skip
        store_bf16(folder / "run" / "tokenizer")  # what every later stage tokenizes with is what the bundle ships
        figures = run_figures(folder / "run", "wer_en", "cer_zh", "codes_used", "code_perplexity")
        return {"released": str(folder / "run" / "tokenizer"), "asr": str(folder / "run" / f"step-{cfg.steps}"),
                **figures}  # fmt: skip

    return Stage("tokenizer", run, "the speech tokenizer from scratch (ASR through the 12.5 Hz VQ, CTC beside)",
                 needs=("speech",))  # fmt: skip


def _precision(setting: str) -> str:
    """A stage's mixed precision: "auto" is bf16 where this CPU computes bf16 in hardware, else none."""
    from ..train.config import native_bf16

    if setting != "auto":
        return setting
    return "bf16" if native_bf16() else "none"


def _decoder_run(sizes: Sizes, folder: Path, done: dict, kind: str) -> dict:
    """One decoder stage on the assistant's voice, validated on 2 test questions per language and task (60)."""
    from ..train.config import RunConfig
    from ..train.decoder import train_decoder

    voice = done["speech"]["assistant"]["manifest"]
    dev = valid_subset(done["speech"]["assistant-test"]["manifest"], 2, folder / "valid.jsonl")
    steps, lr, warmup, precision = (sizes.hift_steps, 1e-3, 200, "none") if kind == "hift" else \
        (sizes.flow_steps, sizes.flow_lr, 500, _precision(sizes.flow_precision))  # fmt: skip
    resume, finished = resume_point(folder / "run", steps)
    cfg = RunConfig(steps=steps, lr=lr, min_lr=lr / 10, warmup_steps=min(warmup, steps // 10),
                    batch_size=sizes.decoder_batch, save_every=sizes.save_every, keep_last=2,
                    mixed_precision=precision)  # fmt: skip
    common = dict(valid=dev, crop_codes=sizes.crop_codes, crop_frames=sizes.crop_frames, log=None, resume=resume)
    if kind == "hift" and not finished:  # from random weights of the packaged sizes: the flow stays random
        train_decoder(None, None, voice, folder / "run", cfg, stage="hift",
                      config=None if resume else CONFIGS / "decoder-tiny.yaml", **common)  # fmt: skip
    elif not finished:  # from the vocoder stage's folder: its trained HiFT rides along, the flow trains
        init = None if resume else done["vocoder"]["decoder"]
        train_decoder(init, done["tokenizer"]["released"], voice, folder / "run", cfg, stage="flow",
                      prior_weight=sizes.flow_prior_weight, **common)  # fmt: skip
    return {"decoder": str(folder / "run" / f"step-{steps}"), **run_figures(folder / "run", "valid", "wer", "mcd")}


def vocoder(sizes: Sizes):
    return Stage("vocoder", lambda folder, done: _decoder_run(sizes, folder, done, "hift"),
                 "HiFT (mel -> audio) from random weights in the assistant's voice; needs no speech tokenizer",
                 needs=("speech",))  # fmt: skip


def decoder(sizes: Sizes):
    return Stage("decoder", lambda folder, done: _decoder_run(sizes, folder, done, "flow"),
                 "the flow on the speech tokenizer's codes in the assistant's voice, beside the vocoder's HiFT",
                 needs=("speech", "vocoder", "tokenizer"))  # fmt: skip


def codes(sizes: Sizes):
    def run(folder: Path, done: dict) -> dict:
        from ..data.corpus import open_ray, shards_summary, tokenize_corpus

        made = {}
        with open_ray(None, 1):  # one local Ray for every corpus
            for split in ("train", "assistant", "assistant-t2t"):
                if split not in done["speech"]:  # a speech stage finished before assistant-t2t existed
                    continue
                if (folder / split).exists():  # tokenized before this stage was stopped: finished shards
                    summary = shards_summary(folder / split)
                else:
                    summary = tokenize_corpus(done["tokenizer"]["released"], done["speech"][split]["manifest"],
                                              folder / split)  # fmt: skip
                made[split] = {"shards": str(folder / split), "rows": summary.get("rows"),
                               "failed": summary.get("failed")}  # fmt: skip
        return made

    return Stage("codes", run, "the corpora through the trained tokenizer (Ray Data) -> shards of codes",
                 needs=("speech", "tokenizer"))  # fmt: skip


def stages(smoke: bool = False) -> list[Stage]:
    sizes = SMOKE if smoke else FULL
    return [texts(sizes), speech(sizes), vocoder(sizes), tokenizer(sizes), decoder(sizes), codes(sizes),
            text_tokenizer(sizes), t2t(sizes), interleaved(sizes), sft_data(sizes), pretrain(sizes), sft(sizes),
            bundle(sizes), evaluation(sizes), model_card(sizes)]  # fmt: skip
