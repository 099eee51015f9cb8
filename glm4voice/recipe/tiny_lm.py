"""The tiny recipe's stages from the text tokenizer on (recipe/tiny.py lists them all): the LM side, then the
bundle, its eval and its card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..jsonl import read_jsonl
from . import Stage
from .runs import copy_bf16, resume_point, run_figures, write_rows

if TYPE_CHECKING:
    from .tiny import Sizes


def _loss(run_dir: Path) -> dict:
    """A trainer stage's loss: the mean of its last 20 logged steps (each is one batch's: noisy alone)."""
    return run_figures(run_dir, "loss", last=20)


def _lm_texts(done: dict) -> str:
    """The texts stage's `lm-texts.jsonl` (what the LMs read: `tiny.lm_texts`)."""
    from ..errors import Glm4VoiceError

    if "lm_texts" not in done["texts"]:  # a run folder from before the texts stage wrote it
        raise Glm4VoiceError("this run's texts stage predates lm-texts.jsonl: delete texts/done.json in the run "
                             "folder and run the recipe again (it redoes the texts stage only, a second)")  # fmt: skip
    return done["texts"]["lm_texts"]


def text_tokenizer(sizes: Sizes):
    def run(folder: Path, done: dict) -> dict:
        from ..lm.vocab import extend_vocab
        from ..train.bpe import write_bpe_folder

        rows = Path(done["texts"]["train_texts"]).read_text(encoding="utf-8").splitlines()
        for sub in ("bpe", "speech"):  # an interrupted run left a partial folder: start them over
            if (folder / sub).exists() and not (folder / sub / "tokenizer_config.json").exists():
                import shutil

                shutil.rmtree(folder / sub)
        if not (folder / "bpe").exists():
            write_bpe_folder((json.loads(r)["text"] for r in rows), sizes.bpe_vocab, folder / "bpe")
        size = json.loads(Path(done["tokenizer"]["released"], "config.json").read_text())["quantize_vocab_size"]
        if not (folder / "speech").exists():
            extend_vocab(folder / "bpe", size, folder / "speech")
        return {"text_tokenizer": str(folder / "speech"), "bpe_vocab": sizes.bpe_vocab, "n_audio": size}

    return Stage("text-tokenizer", run, "a byte-level BPE on the training texts, then the speech ids",
                 needs=("texts", "tokenizer"))  # fmt: skip


def t2t(sizes: Sizes):
    def run(folder: Path, done: dict) -> dict:
        from ..train.t2t import t2t_defaults, train_t2t

        config = folder / "glm.json"
        write_rows(config, [dict(sizes.t2t_config)])
        resume, finished = resume_point(folder / "run", sizes.t2t_steps)
        cfg = t2t_defaults(steps=sizes.t2t_steps, save_every=sizes.save_every, keep_last=2,
                           warmup_steps=min(200, sizes.t2t_steps // 10))  # fmt: skip
        start = {} if resume else {"config": config, "text_tokenizer": done["text-tokenizer"]["text_tokenizer"]}
        splits = [done["codes"][s] for s in ("assistant", "assistant-t2t") if s in done["codes"]]
        if not finished:
            train_t2t([s["shards"] for s in splits], folder / "run", cfg, seq_length=sizes.t2t_seq_length,
                      resume=resume, **start)  # fmt: skip
        return {"t2t": str(folder / "run" / f"step-{sizes.t2t_steps}"), "pairs": sum(s["rows"] for s in splits),
                **_loss(folder / "run")}  # fmt: skip

    return Stage("t2t", run, "the text-to-token model from scratch on the assistant's (text, codes) pairs, the "
                 "domain's and the fortunes' and word lists'",
                 needs=("codes", "text-tokenizer"))  # fmt: skip


def interleaved(sizes: Sizes):
    def run(folder: Path, done: dict) -> dict:
        from ..data.interleave import InterleaveOptions, interleave

        # no `pairs`: the pre-training mixture reads speech, ASR and TTS from the codes' shards as sources of their
        # own; here they made 93 % of the "interleaved" 30 % (its real interleaved share was 2 %)
        texts = _lm_texts(done)
        report = interleave(done["t2t"]["t2t"], [texts], folder / "shards",
                            InterleaveOptions(seq_length=sizes.lm_seq_length), progress=False)  # fmt: skip
        return {"shards": str(folder / "shards"), **{k: v for k, v in report.items() if not isinstance(v, list)}}

    return Stage("interleaved", run, "spans of the training texts turned into speech codes by the t2t model",
                 needs=("texts", "codes", "t2t"))  # fmt: skip


def sft_data(sizes: Sizes):
    def run(folder: Path, done: dict) -> dict:
        import random

        from ..data.manifest import parquet_rows, read_manifest

        def codes_of(split: str) -> dict:
            rows = parquet_rows([Path(done["codes"][split]["shards"])], ("id", "codes"))
            return {r["id"]: r["codes"] for r in rows if r["codes"]}

        heard, answers = codes_of("train"), codes_of("assistant")
        turns, elsewhere, n = [], [], 0
        for row in read_manifest(done["speech"]["train"]["manifest"]):
            extra = row.extra
            if extra.get("role") != "question":
                elsewhere += [row] if row.id in heard and row.text.strip() else []
                continue
            if row.id not in heard or extra.get("answer_id") not in answers:
                continue
            answer = {"answer_text": extra["answer"], "answer_codes": answers[extra["answer_id"]]}
            turns.append({"question": {"codes": heard[row.id]}, **answer})
            n += 1
            if n % sizes.typed_every == 0:
                turns.append({"question": {"text": row.text}, **answer})
        # multi-turn: a conversation's later turns see the earlier ones, as the chat and the server keep them
        # (final turns of both kinds, spoken and typed; earlier turns never with the final one's answer)
        rng, talks = random.Random(0), []
        for i in sorted(rng.sample(range(len(turns)), len(turns) // sizes.multi_turn_every)):
            pool = [t for t in turns if t["answer_text"] != turns[i]["answer_text"]]
            if pool:
                talks.append({**turns[i], "history": rng.sample(pool, min(len(pool), rng.choice((1, 2))))})
        # replay: what pre-training taught that the turns do not repeat (facts behind held-out questions,
        # stories, words heard outside questions), so thousands of fine-tuning steps do not wipe it out
        texts = [r for _, r in read_jsonl(_lm_texts(done), "LM texts")]
        replay = [{"replay": "text", "text": r["text"]} for r in texts if r.get("role") in sizes.replay_roles]
        step = max(1, len(elsewhere) // sizes.asr_replay) if sizes.asr_replay else 0
        heard_rows = elsewhere[::step][: sizes.asr_replay] if step else []
        replay += [{"replay": "asr", "codes": heard[r.id], "text": r.text} for r in heard_rows]
        write_rows(folder / "sft.jsonl", turns + talks + replay)
        return {"sft": str(folder / "sft.jsonl"), "turns": len(turns), "multi_turn": len(talks), "replay": len(replay)}

    return Stage("sft-data", run, "spoken and typed training questions -> answer text + the assistant's codes, "
                 "multi-turn and replay rows", needs=("texts", "speech", "codes"))  # fmt: skip


def pretrain(sizes: Sizes):
    def run(folder: Path, done: dict) -> dict:
        from ..train.lm import lm_defaults, train_lm

        def absolute(path) -> str:  # a mixture file reads relative paths from its own folder, not from here
            return str(Path(path).resolve())

        train_shards = absolute(done["codes"]["train"]["shards"])
        voice_shards = absolute(done["codes"]["assistant"]["shards"])
        texts = absolute(_lm_texts(done))
        mixture = {"seq_length": sizes.lm_seq_length, "sources": [
            {"kind": "text", "path": [texts], "weight": 0.25},
            {"kind": "speech", "path": [train_shards], "weight": 0.15},
            {"kind": "asr", "path": [train_shards], "weight": 0.15},
            {"kind": "tts", "path": [voice_shards], "weight": 0.15},
            {"kind": "interleaved", "path": [absolute(done["interleaved"]["shards"])], "weight": 0.3}]}  # fmt: skip
        write_rows(folder / "mixture.json", [mixture])
        write_rows(folder / "glm.json", [dict(sizes.lm_config)])
        resume, finished = resume_point(folder / "run", sizes.pretrain_steps)
        tokenizer_folder = done["text-tokenizer"]["text_tokenizer"]
        start = {} if resume else {"config": folder / "glm.json", "text_tokenizer": tokenizer_folder}
        cfg = lm_defaults(steps=sizes.pretrain_steps, lr=1e-3, min_lr=1e-4, batch_size=4, save_every=sizes.save_every,
                          keep_last=2, warmup_steps=min(200, sizes.pretrain_steps // 10))  # fmt: skip
        if not finished:
            train_lm(folder / "mixture.json", folder / "run", cfg, resume=resume, **start)
        return {"lm": str(folder / "run" / f"step-{sizes.pretrain_steps}"), **_loss(folder / "run")}

    return Stage("pretrain", run, "the LM from scratch on text, speech, ASR, TTS and interleaved samples",
                 needs=("texts", "codes", "text-tokenizer", "interleaved"))  # fmt: skip


def sft(sizes: Sizes):
    def run(folder: Path, done: dict) -> dict:
        from ..train.config import RunConfig
        from ..train.sft import train_sft

        cfg = RunConfig(steps=sizes.sft_steps, lr=3e-4, min_lr=3e-5, batch_size=4, save_every=sizes.save_every,
                        keep_last=2, warmup_steps=min(100, sizes.sft_steps // 10))  # fmt: skip
        resume, finished = resume_point(folder / "run", sizes.sft_steps)
        if not finished:
            train_sft(done["pretrain"]["lm"], done["sft-data"]["sft"], folder / "run", cfg,
                      max_length=sizes.lm_seq_length, resume=resume, speech_copies=sizes.speech_copies)  # fmt: skip
        return {"lm": str(folder / "run" / f"step-{sizes.sft_steps}"), "steps": sizes.sft_steps,
                "speech_copies": sizes.speech_copies, **_loss(folder / "run")}  # fmt: skip

    return Stage("sft", run, "streaming-thoughts fine-tuning: spoken and typed questions -> interleaved answers",
                 needs=("pretrain", "sft-data"))  # fmt: skip


def bundle(sizes: Sizes):
    def run(folder: Path, done: dict) -> dict:
        import shutil

        from ..chat import VoiceChat
        from .card import megabytes

        parts = {"tokenizer": done["tokenizer"]["released"], "lm": done["sft"]["lm"],
                 "decoder": done["decoder"]["decoder"], "t2t": done["t2t"]["t2t"]}  # fmt: skip
        target = folder / "bundle"
        shutil.rmtree(target, ignore_errors=True)  # an interrupted copy starts over
        for name, source in parts.items():
            copy_bf16(source, target / name)
        VoiceChat.from_pretrained(model_dir=target)  # it loads as `--model-dir` will load it
        return {"bundle": str(target), "megabytes": round(megabytes(target), 1)}

    return Stage("bundle", run, "tokenizer/, lm/, decoder/, t2t/ in one folder (what --model-dir takes)",
                 needs=("tokenizer", "decoder", "t2t", "sft"))  # fmt: skip


def evaluation(sizes: Sizes):
    def run(folder: Path, done: dict) -> dict:
        import shutil

        from ..eval import evaluate

        view = folder / "model"  # the bundle, with the tokenizer's ASR-layout checkpoint (what `asr` needs)
        view.mkdir(exist_ok=True)
        for name in ("lm", "decoder", "t2t"):
            if not (view / name).exists():
                (view / name).symlink_to((Path(done["bundle"]["bundle"]) / name).resolve(), target_is_directory=True)
        if not (view / "tokenizer" / "config.json").exists():  # rounded as the shipped one: every suite its codes
            shutil.rmtree(view / "tokenizer", ignore_errors=True)
            copy_bf16(done["tokenizer"]["asr"], view / "tokenizer")
        results = evaluate(view, list(sizes.eval_suites), done["speech"]["test"]["manifest"], folder / "report",
                           limit=sizes.eval_limit)  # fmt: skip
        return {"report": str(folder / "report" / "results.md"),
                "figures": {suite: {k: v for k, v in f.items() if not isinstance(v, list)}
                            for suite, f in results["suites"].items()}}  # fmt: skip

    return Stage("eval", run, "glm4voice eval of the bundle on the held-out test split",
                 needs=("speech", "tokenizer", "bundle"))  # fmt: skip


def model_card(sizes: Sizes):
    def run(folder: Path, done: dict) -> dict:
        from .card import write_card

        return {"card": str(write_card(Path(done["bundle"]["bundle"]), done, Path(done["eval"]["report"]),
                                       run=folder.parent))}  # fmt: skip

    return Stage("card", run, "the bundle's model card (README.md): data, sizes, training times, the eval table",
                 needs=("bundle", "eval"))  # fmt: skip
