"""Training commands: `train-sft`, `train-lm`, `train-t2t`, `train-tokenizer`, `train-decoder`, `train-bpe`,
`extend-vocab`.

Every trainer takes the shared run options (`RunConfig`) the same way."""

from __future__ import annotations

import os
import sys
from dataclasses import fields

from .common import add_command, add_speech_tokenizer

SWITCHES = {"gradient_checkpointing": "recompute activations in backward: less memory, more time",
            "reschedule": "with --resume: accept other --steps, --lr, --speech-copies, ... (a new schedule or data)"}


def add_run_options(p, defaults, skip: tuple[str, ...] = ()) -> None:
    """One flag per `RunConfig` field, with the trainer's defaults (`skip`: fields the trainer sets itself)."""
    from ..train.config import RunConfig

    for f in fields(RunConfig):
        if f.name in skip:
            p.set_defaults(**{f.name: getattr(defaults, f.name)})
            continue
        flag, value = "--" + f.name.replace("_", "-"), getattr(defaults, f.name)
        if f.name == "mixed_precision":
            p.add_argument(flag, choices=["none", "bf16"], default=value,
                           help="bf16: compute in bf16 with fp32 master weights")  # fmt: skip
        elif isinstance(value, bool):
            p.add_argument(flag, action="store_true", help=SWITCHES[f.name])
        else:
            p.add_argument(flag, type=type(value), default=value)
    p.add_argument("--resume", help="continue from OUT/step-N (its weights, optimizer and step)")


def run_config(args):
    from ..train.config import RunConfig

    return RunConfig(**{f.name: getattr(args, f.name) for f in fields(RunConfig)})


def _add_train_sft(sub) -> None:
    from ..train.sft import sft_defaults

    p = add_command(sub, "train-sft", "streaming-thoughts fine-tuning of the speech LM (torchrun: FSDP)", _run_sft)
    p.add_argument("--lm", required=True, help="LM folder to start from (either layout)")
    p.add_argument("--data", required=True,
                   help="JSONL manifest: question, answer_text, answer_codes (history: earlier turns) per line, "
                   "or a replay row: {replay: text|asr, text, codes}")
    p.add_argument("--out", required=True, help="run folder: checkpoints land in OUT/step-N/")
    p.add_argument("--max-length", type=int, default=8192, help="ids per sample; a longer one is an error")
    p.add_argument("--lora", type=int, default=0, metavar="RANK",
                   help="train LoRA adapters of this rank (PEFT), the LM frozen; checkpoints hold the merged LM")
    p.add_argument("--speech-copies", type=int, default=1, metavar="N",
                   help="each turn's speech-output copy N times per pass over the data, its text-output copy once "
                   "(the paper: 20 epochs on speech output, 4 on text, i.e. 5)")
    add_run_options(p, sft_defaults())


def _run_sft(args) -> int:
    from ..train.loop import finished
    from ..train.sft import train_sft

    cfg = run_config(args)
    records = train_sft(args.lm, args.data, args.out, cfg, max_length=args.max_length, lora=args.lora,
                        resume=args.resume, speech_copies=args.speech_copies)  # fmt: skip
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"glm4voice train-sft: {finished(records)}; checkpoint {args.out}/step-{cfg.steps}", file=sys.stderr)
    return 0




def _add_train_lm(sub) -> None:
    from ..train.lm import lm_defaults

    p = add_command(sub, "train-lm", "pre-train the speech LM on a mixture of text, speech, ASR/TTS and "
                                     "interleaved samples (torchrun: FSDP)", _run_lm)  # fmt: skip
    p.add_argument("--mixture", required=True, help="JSON: seq_length and sources (kind, path, weight)")
    p.add_argument("--out", required=True, help="run folder: checkpoints land in OUT/step-N/")
    p.add_argument("--lm", help="LM folder to start from (either layout; extend-vocab's output)")
    p.add_argument("--config", help="instead of --lm: JSON of Glm sizes (random weights, from scratch)")
    p.add_argument("--text-tokenizer", help="with --config: the folder whose text tokenizer (with audio ids) it gets")
    add_run_options(p, lm_defaults())


def _run_lm(args) -> int:
    from ..train.lm import train_lm
    from ..train.loop import finished

    cfg = run_config(args)
    records = train_lm(args.mixture, args.out, cfg, lm=args.lm, config=args.config, text_tokenizer=args.text_tokenizer,
                       resume=args.resume)  # fmt: skip
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"glm4voice train-lm: {finished(records)}; checkpoint {args.out}/step-{cfg.steps}", file=sys.stderr)
    return 0


def _add_train_t2t(sub) -> None:
    from ..train.t2t import t2t_defaults

    p = add_command(sub, "train-t2t", "train the text-to-token model on (text, speech codes) pairs", _run_t2t)
    p.add_argument("--data", nargs="+", required=True, help="tokenize-corpus shards (files or folders) with text")
    p.add_argument("--out", required=True, help="run folder: checkpoints land in OUT/step-N/")
    p.add_argument("--lm", help="LM folder to start from (with audio ids)")
    p.add_argument("--config", help="instead of --lm: JSON of Glm sizes (random weights, from scratch)")
    p.add_argument("--text-tokenizer", help="with --config: the folder whose text tokenizer (with audio ids) it gets")
    p.add_argument("--seq-length", type=int, default=1024, help="ids per packed sequence")
    add_run_options(p, t2t_defaults())


def _run_t2t(args) -> int:
    from ..train.loop import finished
    from ..train.t2t import train_t2t

    cfg = run_config(args)
    records = train_t2t(args.data, args.out, cfg, lm=args.lm, config=args.config, text_tokenizer=args.text_tokenizer,
                        seq_length=args.seq_length, resume=args.resume)  # fmt: skip
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"glm4voice train-t2t: {finished(records)}; checkpoint {args.out}/step-{cfg.steps}", file=sys.stderr)
    return 0


def _add_train_tokenizer(sub) -> None:
    p = add_command(sub, "train-tokenizer", "train the speech tokenizer: Whisper ASR through a 12.5 Hz VQ bottleneck",
                    _run_tokenizer)  # fmt: skip
    p.add_argument("--data", required=True, help="corpus manifest (JSONL: id, audio, text, lang en|zh)")
    p.add_argument("--out", required=True, help="run folder: OUT/step-N (ASR layout), OUT/tokenizer (released)")
    p.add_argument("--init", help="a transformers Whisper folder, or a checkpoint of this trainer (fine-tuning)")
    p.add_argument("--config", help="JSON: Whisper config + VQ fields (from scratch; or VQ fields for --init)")
    p.add_argument("--valid", help="held-out manifest: WER/CER and codebook usage every --eval-every steps")
    p.add_argument("--eval-every", type=int, default=0, help="steps between validations (0: only at the end)")
    p.add_argument("--batch-seconds", type=float, default=60.0, help="padded audio seconds per micro-batch")
    p.add_argument("--vocab-size", type=int, default=1000, help="transcript BPE size when training from scratch")
    p.add_argument("--max-seconds", type=float, default=30.0,
                   help="skip longer training utterances (at most 30: one encoder pass)")
    p.add_argument("--vq-warmup-steps", type=int, default=0,
                   help="steps that bypass the quantizer before the codebook starts from the encoder (from scratch)")
    p.add_argument("--spec-augment", action="store_true",
                   help="mask random mel bands and 0.1 s stretches of the training audio (small corpora)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="of the transcript cross-entropy, in [0, 1)")
    from ..train.config import RunConfig

    add_run_options(p, RunConfig(lr=1e-4, min_lr=1e-5, weight_decay=0.0), skip=("batch_size",))


def _run_tokenizer(args) -> int:
    from ..train.loop import finished
    from ..train.tokenizer import train_tokenizer

    cfg = run_config(args)
    records = train_tokenizer(args.data, args.out, cfg, init=args.init, config=args.config, valid=args.valid,
                              eval_every=args.eval_every, batch_seconds=args.batch_seconds,
                              vocab_size=args.vocab_size, vq_warmup=args.vq_warmup_steps,
                              spec_augment_on=args.spec_augment, label_smoothing=args.label_smoothing,
                              max_seconds=args.max_seconds, resume=args.resume)  # fmt: skip
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"glm4voice train-tokenizer: {finished(records)}; {args.out}/tokenizer (released layout), "
              f"{args.out}/step-{cfg.steps} (ASR layout)", file=sys.stderr)  # fmt: skip
    return 0


def _add_train_decoder(sub) -> None:
    p = add_command(sub, "train-decoder", "train the speech decoder: the flow (codes -> mel) or the HiFT vocoder",
                    _run_decoder)  # fmt: skip
    p.add_argument("--stage", choices=["flow", "hift"], default="flow",
                   help="flow: codes -> mel (flow matching); hift: mel -> audio (the vocoder)")
    p.add_argument("--init", help="decoder folder or hub id to start from (what the stage does not train is kept)")
    p.add_argument("--config", help="instead of --init: a decoder config.yaml (random weights of its sizes); "
                                    "'tiny': the sizes the tiny recipe trains on a CPU")  # fmt: skip
    add_speech_tokenizer(p)
    p.add_argument("--data", required=True, help="manifest of the voice's recordings (JSONL: id, audio, ...)")
    p.add_argument("--out", required=True, help="run folder: OUT/step-N are decoder folders")
    p.add_argument("--valid", help="held-out manifest: mel L1 of offline decodes every --eval-every steps")
    p.add_argument("--eval-every", type=int, default=0, help="steps between validations (0: only at the end)")
    p.add_argument("--crop-codes", type=int, default=40,
                   help="flow: at most this many codes per training crop (40 = 3.2 s; a shorter utterance whole)")
    p.add_argument("--crop-frames", type=int, default=64, help="hift: mel frames per training crop (64 = 0.74 s)")
    p.add_argument("--adversarial-from", type=int, default=0,
                   help="hift: the step from which the discriminators (multi-period, multi-resolution) train too "
                        "(0: never)")  # fmt: skip
    p.add_argument("--prior-weight", type=float, default=0.0,
                   help="flow: weight of Matcha-TTS's prior loss (the token encoder's mu against the mel itself), "
                        "for small data (0: none)")  # fmt: skip
    from ..train.decoder import decoder_defaults

    add_run_options(p, decoder_defaults())


def _run_decoder(args) -> int:
    from ..train.decoder import train_decoder
    from ..train.loop import finished

    cfg = run_config(args)
    records = train_decoder(args.init, args.speech_tokenizer, args.data, args.out, cfg, stage=args.stage,
                            valid=args.valid, eval_every=args.eval_every, crop_codes=args.crop_codes,
                            crop_frames=args.crop_frames, config=_decoder_config(args.config),
                            adversarial_from=args.adversarial_from, prior_weight=args.prior_weight,
                            resume=args.resume)  # fmt: skip
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"glm4voice train-decoder: {finished(records)}; {args.out}/step-{cfg.steps} (a decoder folder)",
              file=sys.stderr)  # fmt: skip
    return 0


def _decoder_config(name):
    """`tiny` names the packaged config unless a file of that name exists."""
    from pathlib import Path

    if name == "tiny" and not Path(name).exists():
        return Path(__file__).resolve().parents[1] / "train" / "configs" / "decoder-tiny.yaml"
    return name


def _add_train_bpe(sub) -> None:
    p = add_command(sub, "train-bpe", "a byte-level BPE text tokenizer for a from-scratch LM (tiktoken format)",
                    _run_bpe)  # fmt: skip
    p.add_argument("--corpus", nargs="+", required=True,
                   help="text: .jsonl rows with text, .parquet from `data text-corpus`, or plain text files")
    p.add_argument("--vocab-size", type=int, required=True, help="ranks (256 bytes + merges)")
    p.add_argument("--out", required=True, help="a new folder: tokenizer.model, tokenizer_config.json")


def _run_bpe(args) -> int:
    import json

    from ..data.text_corpus import documents
    from ..train.bpe import write_bpe_folder

    texts = (doc.text for doc in documents(fortunes=False, files=tuple(args.corpus)))
    print(json.dumps(write_bpe_folder(texts, args.vocab_size, args.out)))
    return 0


def _add_extend_vocab(sub) -> None:
    p = add_command(sub, "extend-vocab", "a text LM + the speech vocabulary (audio delimiters, <|audio_k|> ids)",
                    _run_extend_vocab)  # fmt: skip
    p.add_argument("--lm", required=True, help="text LM folder or hub id (Glm or ChatGLM layout)")
    p.add_argument("--n-audio", type=int, required=True, help="speech codes (the tokenizer's codebook size)")
    p.add_argument("--out", required=True, help="a new folder (transformers Glm layout)")
    p.add_argument("--seed", type=int, default=0, help="of the new rows' draws")


def _run_extend_vocab(args) -> int:
    import json

    from ..lm.vocab import extend_vocab

    print(json.dumps(extend_vocab(args.lm, args.n_audio, args.out, seed=args.seed)))
    return 0


def add(sub) -> None:
    _add_train_sft(sub)
    _add_train_lm(sub)
    _add_train_t2t(sub)
    _add_train_tokenizer(sub)
    _add_train_decoder(sub)
    _add_train_bpe(sub)
    _add_extend_vocab(sub)
