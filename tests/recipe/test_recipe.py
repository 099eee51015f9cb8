"""`recipe tiny --smoke`: every stage written so far runs on a handful of rows; a finished stage is skipped
on the next run, an interrupted one runs again and its trainer resumes from its last checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from glm4voice.cli import main
from glm4voice.tokenizer import SpeechTokenizer
from tests.conftest import espeak


def espeak_clip():
    return espeak("hello there")


def test_smoke_recipe_runs_skips_and_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = Path("tiny")  # relative, as `make tiny` gives it: every path a stage hands on must still resolve
    assert main(["recipe", "tiny", "--smoke", "--out", str(out)]) == 0
    names = ("texts", "speech", "vocoder", "tokenizer", "decoder", "codes", "text-tokenizer", "t2t", "interleaved",
             "sft-data", "pretrain", "sft", "bundle", "eval", "card")  # fmt: skip
    done = {s: json.loads((out / s / "done.json").read_text()) for s in names}
    assert done["texts"]["test_rows"] > 0 and done["texts"]["fortunes"] == {"en": 1, "zh": 1}
    assert done["speech"]["train"]["failed"] == 0 and done["speech"]["test"]["rows"] > 0
    tok = SpeechTokenizer.from_pretrained(done["tokenizer"]["released"])
    assert tok.config.codebook_size == 32
    assert done["speech"]["assistant"]["rows"] > 0 and done["speech"]["assistant-test"]["rows"] > 0
    from glm4voice.decoder import SpeechDecoder

    decoder = SpeechDecoder.from_pretrained(done["decoder"]["decoder"])  # the flow and HiFT, trained in turn
    vocoder = SpeechDecoder.from_pretrained(done["vocoder"]["decoder"])  # the decoder stage keeps its HiFT
    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))

    assert same(decoder.hift, vocoder.hift) and not same(decoder.flow, vocoder.flow)
    assert decoder.decode(tok.tokenize(espeak_clip())).numel() > 0
    assert done["codes"]["assistant"]["rows"] == done["speech"]["assistant"]["rows"]
    # the text-to-token model's other pairs: the fortunes and word lists in the assistant's voice, tokenized
    t2t_texts = [json.loads(line) for line in Path(done["texts"]["t2t_texts"]).read_text().splitlines()]
    assert {r["role"] for r in t2t_texts} == {"fortune", "words"} and done["texts"]["t2t_rows"] == 4
    assert done["codes"]["assistant-t2t"]["rows"] == done["speech"]["assistant-t2t"]["rows"] == 4
    assert done["t2t"]["pairs"] == done["codes"]["assistant"]["rows"] + 4  # the t2t read both
    assert not done["codes"]["train"]["failed"]
    assert done["text-tokenizer"]["n_audio"] == 32
    from glm4voice.lm.t2t import T2TConfig, TextToToken

    codes = TextToToken.from_pretrained(done["t2t"]["t2t"]).generate(["hello"], T2TConfig(seed=0))[0]
    assert all(0 <= c < 32 for c in codes)
    assert done["interleaved"]["shards"] and done["sft-data"]["turns"] > 0

    def rows_of(path):
        return [json.loads(line) for line in path.read_text().splitlines()]

    # the facts' other phrasings are read by the LMs, never spoken; the question-answer texts too
    heard = rows_of(out / "texts" / "speech-texts.jsonl") + rows_of(out / "texts" / "assistant-texts.jsonl")
    assert any(r.get("phrasing") for r in rows_of(out / "texts" / "train-texts.jsonl"))
    assert not any(r.get("phrasing") or r.get("role") == "qa" for r in heard)
    read = rows_of(Path(done["texts"]["lm_texts"]))
    assert any(r.get("phrasing") for r in read) and any(r["role"] == "qa" for r in read)
    sft_rows = [json.loads(line) for line in (out / "sft-data" / "sft.jsonl").read_text().splitlines()]
    assert {r.get("replay") for r in sft_rows} == {None, "text", "asr"}  # turns, and both kinds of replay
    assert done["sft-data"]["multi_turn"] > 0 and any(r.get("history") for r in sft_rows)
    import pyarrow.parquet as pq  # interleaved samples only: the mixture reads the pairs from the codes' shards

    shards = (out / "interleaved" / "shards").glob("*.parquet")
    kinds = {k for f in shards for k in pq.read_table(f)["kind"].to_pylist()}
    assert kinds == {"interleaved"}
    # the bundle chats: a spoken question in, text and speech out (random-ish weights: what it says is noise)
    from glm4voice.chat import VoiceChat
    from glm4voice.lm.generate import SamplingConfig

    chat = VoiceChat.from_pretrained(model_dir=done["bundle"]["bundle"], sampling=SamplingConfig(max_new_tokens=30))
    reply = chat.reply(espeak_clip())
    assert reply.n_ids > 0 and done["bundle"]["megabytes"] > 0
    # stored in bfloat16 (the bundle's 40 MB), computed in float32
    from safetensors.torch import load_file

    bundle = out / "bundle" / "bundle"
    for part in ("tokenizer", "lm", "t2t"):
        assert {t.dtype for t in load_file(bundle / part / "model.safetensors").values()} >= {torch.bfloat16}
        assert torch.float32 not in {t.dtype for t in load_file(bundle / part / "model.safetensors").values()}
    flow = torch.load(bundle / "decoder" / "flow.pt", weights_only=True)
    assert {t.dtype for t in flow.values() if t.is_floating_point()} == {torch.bfloat16}
    assert chat.lm.dtype == torch.float32 and next(tok.model.parameters()).dtype == torch.float32
    figures = done["eval"]["figures"]  # the report on the held-out split (random-ish models: poor figures)
    assert "wer_en" in figures["asr"] and "t2t" in figures["cloze"]
    assert (out / "eval" / "report" / "results.md").is_file()
    card = (bundle / "README.md").read_text()  # the model card: every part, the data, the times, the eval table
    assert all(f"| `{part}/` |" in card for part in ("tokenizer", "lm", "decoder", "t2t"))
    assert "speech `train`" in card and "| tokenizer |" in card and "| asr | wer_en" in card
    log = capsys.readouterr().out
    assert '"state": "finished"' in log
    # again: every stage is done
    assert main(["recipe", "tiny", "--smoke", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count('"state": "done before"') == len(names)
    # an interrupted tokenizer stage: no marker, its last checkpoint left -> it resumes from there
    (out / "tokenizer" / "done.json").unlink()
    shutil.rmtree(out / "tokenizer" / "run" / "step-2")
    shutil.rmtree(out / "tokenizer" / "run" / "tokenizer")
    assert main(["recipe", "tiny", "--smoke", "--out", str(out)]) == 0
    metrics = [json.loads(line) for line in (out / "tokenizer" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "step" in m][-1] == 2 and (out / "tokenizer" / "run" / "tokenizer").is_dir()
    # stopped after each trainer's last step, before the stage's marker: nothing left to train, each stage finishes
    trainers = ("vocoder", "tokenizer", "decoder", "t2t", "pretrain", "sft")
    logged = {name: (out / name / "run" / "metrics.jsonl").read_text() for name in trainers}
    capsys.readouterr()
    for name in trainers:
        (out / name / "done.json").unlink()
    assert main(["recipe", "tiny", "--smoke", "--out", str(out), "--jobs", "2"]) == 0  # side by side, each alone
    assert capsys.readouterr().out.count('"state": "finished"') == len(trainers)
    assert {name: (out / name / "run" / "metrics.jsonl").read_text() for name in trainers} == logged
    assert all((out / name / "done.json").is_file() for name in trainers)


def test_until_and_bad_stage(tmp_path, capsys):
    assert main(["recipe", "tiny", "--smoke", "--out", str(tmp_path / "t"), "--until", "texts"]) == 0
    assert (tmp_path / "t" / "texts" / "done.json").is_file() and not (tmp_path / "t" / "speech").exists()
    assert main(["recipe", "tiny", "--smoke", "--out", str(tmp_path / "t"), "--until", "nope"]) == 2
    assert "the stages are texts, speech, vocoder, tokenizer, decoder, codes, text-tokenizer, t2t, interleaved" in \
        capsys.readouterr().err


def test_fortunes_are_cut_to_short_plain_sentences():
    from glm4voice.recipe.tiny import _short_pieces

    doc = ("要有礼貌\n在 Debian 这种规模的项目中，很难避免。请接受这一事实，并保持礼貌。春眠不觉晓，处处闻啼鸟。"
           "\n* 保持客观。\n输入 a + b 即可。\n按下 → 键。")
    assert _short_pieces(doc, "zh", 30) == ["要有礼貌", "请接受这一事实，并保持礼貌。", "春眠不觉晓，处处闻啼鸟。",
                                            "保持客观。"]  # fmt: skip
    assert _short_pieces(doc, "zh", 8) == ["要有礼貌", "保持客观。"]
    assert _short_pieces("A short one.", "en", 20) == ["A short one."]
    assert _short_pieces("A sentence far too long for the limit.", "en", 20) == []


def test_only_one_stage_and_a_running_stage_is_refused(tmp_path, capsys):
    import fcntl

    out = tmp_path / "t"
    assert main(["recipe", "tiny", "--smoke", "--out", str(out), "--until", "speech"]) == 0
    assert main(["recipe", "tiny", "--smoke", "--out", str(out), "--only", "decoder"]) == 2  # reads the vocoder
    assert "stage decoder needs stage vocoder done first" in capsys.readouterr().err
    assert main(["recipe", "tiny", "--smoke", "--out", str(out), "--only", "vocoder"]) == 0
    assert (out / "vocoder" / "done.json").is_file() and not (out / "tokenizer").exists()
    (out / "tokenizer").mkdir()
    with open(out / "tokenizer" / ".running", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process is in the tokenizer stage
        assert main(["recipe", "tiny", "--smoke", "--out", str(out), "--only", "tokenizer"]) == 2
        assert "stage tokenizer is running in another process" in capsys.readouterr().err
    assert main(["recipe", "tiny", "--smoke", "--out", str(out), "--only", "tokenizer"]) == 0  # the lock is gone
    assert main(["recipe", "tiny", "--smoke", "--out", str(out), "--until", "speech", "--only", "vocoder"]) == 2


def test_lm_texts_drop_wrong_endings_and_add_question_answer_texts():
    from glm4voice.recipe.tiny import lm_texts

    rows = [{"id": "q", "text": "What is one plus one?", "lang": "en", "role": "question", "answer": "Two."},
            {"id": "z", "text": "一加一等于几？", "lang": "zh", "role": "question", "answer": "二。"},
            {"id": "s-right", "text": "A story. Good end.", "lang": "en", "role": "story", "right": True},
            {"id": "s-wrong", "text": "A story. Bad end.", "lang": "en", "role": "story", "right": False},
            {"id": "f-1", "text": "Paris is the capital of France.", "lang": "en", "role": "fact", "phrasing": 1}]
    assert [r["id"] for r in lm_texts(rows, False)] == ["q", "z", "s-right", "f-1"]
    with_qa = lm_texts(rows, True)
    assert [r["text"] for r in with_qa if r["role"] == "qa"] == ["What is one plus one? Two.", "一加一等于几？二。"]
    assert [r["id"] for r in with_qa if r["role"] != "qa"] == ["q", "z", "s-right", "f-1"]


def test_a_run_whose_texts_predate_lm_texts_is_told_how_to_go_on():
    from glm4voice.errors import Glm4VoiceError
    from glm4voice.recipe.tiny_lm import _lm_texts

    with pytest.raises(Glm4VoiceError, match="texts/done.json"):
        _lm_texts({"texts": {"train_texts": "train-texts.jsonl"}})


def test_stage_figures_come_from_the_last_whole_metrics_line(tmp_path):
    from glm4voice.recipe.runs import run_figures

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0, "train_seconds": 1}\n{"step": 2, "lo\n'
                                            '{"step": 3, "loss": 1.5, "grad_norm": 1, "train_seconds": 5}\n')
    assert run_figures(tmp_path, "loss") == {"loss": 1.5, "train_seconds": 5}
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # killed mid-write
    assert run_figures(tmp_path, "loss") == {"loss": 2.0} and run_figures(tmp_path / "none", "loss") == {}
    # a batch's loss averaged over the last logged steps; a validation figure from the last step that has one
    (tmp_path / "metrics.jsonl").write_text('{"step": 10, "loss": 4.0, "valid_wer": 0.5, "train_seconds": 2}\n'
                                            '{"step": 20, "loss": 1.0, "train_seconds": 4}\n'
                                            '{"step": 30, "loss": 2.0, "train_seconds": 6}\n')
    assert run_figures(tmp_path, "loss", "wer", last=2) == {"loss": 1.5, "valid_wer": 0.5, "train_seconds": 6}
    # killed after step 30, resumed from its checkpoint at 20: the first run's 30 was trained again, and is not read
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 21, "loss": 3.0, "train_seconds": 7}\n{"step": 30, "loss": 5.0, "train_seconds": 9}\n')
    assert run_figures(tmp_path, "loss", last=3) == {"loss": 3.0, "train_seconds": 9}  # 5, 3 and step 20's 1


def test_word_lists_draw_training_words_in_no_sentence_order():
    from glm4voice.recipe.tiny import WORDS_PER_LIST, word_lists

    train = [{"id": "q", "text": "What is two plus three?", "lang": "en", "role": "question"},
             {"id": "f", "text": "A fool and his money are soon parted.", "lang": "en", "role": "fortune"},
             {"id": "z", "text": "二加三是多少？", "lang": "zh", "role": "question"}]
    rows = word_lists(train, {"en": 40, "zh": 10})
    assert rows == word_lists(train, {"en": 40, "zh": 10})  # a pure function of its inputs
    assert rows != word_lists(train, {"en": 40, "zh": 10}, seed=1)
    en = [r for r in rows if r["lang"] == "en"]
    zh = [r for r in rows if r["lang"] == "zh"]
    assert len(en) == 40 and len(zh) == 10 and {r["role"] for r in rows} == {"words"}
    assert len({r["id"] for r in rows}) == 50
    vocabulary = {"what", "is", "two", "plus", "three", "a", "fool", "and", "his", "money", "are", "soon", "parted"}
    for r in en:
        words = r["text"].rstrip(".").lower().split()
        assert set(words) <= vocabulary and WORDS_PER_LIST["en"][0] <= len(words) <= WORDS_PER_LIST["en"][1]
    drawn = {w for r in en for w in r["text"].rstrip(".").lower().split()}
    assert drawn & {"two", "plus"} and drawn & {"fool", "money"}  # both the domain's and the fortunes' words
    for r in zh:
        body = r["text"].rstrip("。")
        pieces = [body[i:i + 2] for i in range(0, len(body), 2)]
        assert set(pieces) <= {"二加", "加三", "三是", "是多", "多少"}
    assert word_lists(train, {"en": 0, "zh": 0}) == [] and word_lists([], {"en": 3}) == []


def test_flow_precision_auto_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    from glm4voice.recipe.tiny import FULL, _precision

    assert FULL.flow_precision == "auto" and _precision("none") == "none" and _precision("bf16") == "bf16"
    for avx512_bf16, amx, expected in ((False, False, "none"), (True, False, "bf16"), (False, True, "bf16")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert _precision("auto") == expected


def test_validation_subsets_hold_absolute_audio_paths(tmp_path, monkeypatch):
    from glm4voice.recipe.runs import valid_subset

    (tmp_path / "speech").mkdir()
    rows = [{"id": f"q{i}", "audio": f"audio/q{i}.flac", "text": "hi", "lang": "en", "task": "add",
             "role": "question"} for i in range(3)]  # fmt: skip
    (tmp_path / "speech" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)  # a recipe run with a relative --out: the subset is read from another folder
    out = valid_subset("speech/manifest.jsonl", 2, tmp_path / "valid.jsonl")
    audio = [json.loads(line)["audio"] for line in out.read_text().splitlines()]
    assert audio == [str(tmp_path / "speech" / "audio" / f"q{i}.flac") for i in range(2)]


def test_codes_stage_stopped_after_one_corpus_reads_it_back(tmp_path, monkeypatch):
    """A finished corpus's shards are read back, not tokenized again (tokenize_corpus refuses an existing OUT)."""
    import contextlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from glm4voice.data import corpus
    from glm4voice.recipe.tiny import SMOKE, codes

    (tmp_path / "train").mkdir()
    pq.write_table(pa.table({"id": ["a", "b", "c"], "seconds": [1.0, 2.5, 0.0], "error": [None, None, "bad.wav"],
                             "codes": [[1, 2], [3], []], "text": ["x", "y", ""]}), tmp_path / "train" / "0.parquet")
    tokenized = []

    def fake_tokenize(tokenizer, manifest, out, **kw):
        tokenized.append(manifest)
        return {"rows": 4, "failed": 0, "audio_seconds": 9.0, "failures": [], "wall_seconds": 1.0}

    monkeypatch.setattr(corpus, "tokenize_corpus", fake_tokenize)
    monkeypatch.setattr(corpus, "open_ray", lambda *a: contextlib.nullcontext())
    done = {"tokenizer": {"released": "tok"}, "speech": {s: {"manifest": f"{s}.jsonl"} for s in ("train", "assistant")}}
    made = codes(SMOKE).run(tmp_path, done)
    assert tokenized == ["assistant.jsonl"]  # and assistant-t2t, absent from this speech stage, is left out
    assert made["train"] == {"shards": str(tmp_path / "train"), "rows": 3, "failed": 1}
    assert made["assistant"]["rows"] == 4 and "assistant-t2t" not in made
    assert corpus.shards_summary(tmp_path / "train") == {"rows": 3, "failed": 1, "audio_seconds": 3.5,
                                                         "failures": [("c", "bad.wav")]}  # fmt: skip
