"""`glm4voice eval`: each suite on tiny fixtures (golden tokenizer and decoder, a tiny random LM, a tiny ASR
trained on the spot), with cases that must score 1 and cases that must score 0, and the report files."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from glm4voice.cli import main
from glm4voice.eval import Bundle, evaluate, parse_suites, suites
from glm4voice.events import Reply, Timings
from glm4voice.lm.tiny import write_tiny_lm
from glm4voice.machine import cpu_info
from tests.conftest import espeak

QUESTIONS = [("q1", "en", "What is the capital of France?", "Paris", "capital"),
             ("q2", "zh", "法国的首都是哪里？", "巴黎", "capital"),
             ("s1", "en", "Say good night.", "good night", "say"),
             ("s2", "en", "Say good night slowly.", "good night", "say_slowly"),
             ("s3", "en", "Say good night quickly.", "good night", "say_quickly")]  # fmt: skip
STORY = ("Tom was thirsty.", "He drank a glass of cold water.", "He ate sand.")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, golden):
    root = tmp_path_factory.mktemp("bundle")
    for part in ("tokenizer", "decoder"):
        (root / part).symlink_to(golden / part, target_is_directory=True)
    write_tiny_lm(root / "lm", n_audio=512, seed=3)
    write_tiny_lm(root / "t2t", n_audio=512, seed=4)  # a random text-to-token model: the suite runs, scores badly
    return root


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("rows")
    rows = []
    for id_, lang, text, key, task in QUESTIONS:
        sf.write(root / f"{id_}.wav", espeak(text, voice="en-us" if lang == "en" else "cmn-latn-pinyin"), 16000)
        rows.append({"id": id_, "audio": f"{id_}.wav", "text": text, "lang": lang, "role": "question",
                     "task": task, "key": key})  # fmt: skip
    story, right, wrong = STORY
    for name, ending in (("right", right), ("wrong", wrong)):
        sf.write(root / f"{name}.wav", espeak(f"{story} {ending}"), 16000)
        rows.append({"id": f"st-{name}", "audio": f"{name}.wav", "text": f"{story} {ending}", "lang": "en",
                     "role": "story", "pair": "st", "story": story, "ending": ending, "right": name == "right"})
    (root / "m.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return root / "m.jsonl"


def rows_of(manifest):
    from glm4voice.data.manifest import read_manifest

    return read_manifest(manifest, need=())


class FakeChat:
    """Replies with a text and an audio of a given length: what a perfect (or a useless) model would say."""

    def __init__(self, answer, seconds=1.0, typed=lambda text: "no idea", later=None):
        self.answer, self.seconds, self.typed, self.later, self.turns = answer, seconds, typed, later or typed, 0

    def reply(self, audio=None, *, text=None):
        seconds = self.seconds(audio) if callable(self.seconds) else self.seconds
        self.turns += 1  # `later`: what it says to a typed question after its first turn
        text = self.answer(audio) if text is None else (self.typed if self.turns == 1 else self.later)(text)
        return Reply(text=text, codes=[], audio=torch.zeros(int(seconds * 22050)), sample_rate=22050,
                     reason="stop", n_ids=3, timings=Timings())  # fmt: skip


def test_says_compares_words_and_characters():
    assert suites.says("The capital of France is Paris.", "Paris", "en")
    assert not suites.says("Parisian food.", "Paris", "en")  # whole words in English
    assert suites.says("法国的首都是巴黎。", "巴黎", "zh") and not suites.says("不知道", "巴黎", "zh")


def test_qa_scores_one_for_right_answers_and_zero_for_wrong(bundle_dir, manifest, monkeypatch):
    bundle, rows = Bundle(bundle_dir), rows_of(manifest)
    key_of = {q[2]: q[3] for q in QUESTIONS}  # typed question -> its key
    keys = iter([q[3] for q in QUESTIONS])  # the spoken replies, in row order
    right = lambda n=300, speak=True: FakeChat(lambda audio: f"I think it is {next(keys)}.",  # noqa: E731
                                               typed=lambda text: f"It is {key_of[text]}.")
    monkeypatch.setattr(bundle, "chat", right)
    good = suites.qa(bundle, rows)
    assert good["s2t_en"] == 1.0 and good["s2t_zh"] == 1.0 and good["n_s2t_en"] == 4
    assert good["t2t_en"] == 1.0 and good["t2t_zh"] == 1.0 and good["n_t2t_zh"] == 1
    assert good["s2s_en"] == 0.0  # the fake reply's audio is silence: pocketsphinx hears no answer
    assert good["by_task"]["capital"] == {"s2s_en": 0.0, "s2t_en": 1.0, "s2t_zh": 1.0, "t2t_en": 1.0, "t2t_zh": 1.0}
    assert good["by_task"]["say"]["t2t_turn2_en"] == 1.0  # asked after the capital question
    # as second turns: "Say good night." after the capital question; not the two after it, whose previous
    # question has the same answer (a model could copy it)
    assert good["t2t_turn2_en"] == 1.0 and good["n_t2t_turn2_en"] == 1
    assert "t2t_turn2_zh" not in good  # one Mandarin question: no conversation before it
    assert set(good["by_task"]) == {"capital", "say", "say_slowly", "say_quickly"}
    # an LM that knows the answers but does not hear the questions: T->T right, S->T wrong
    deaf = lambda n=300, speak=True: FakeChat(lambda audio: "no idea", typed=lambda text: key_of[text])  # noqa: E731
    monkeypatch.setattr(bundle, "chat", deaf)
    bad = suites.qa(bundle, rows)
    assert bad["s2t_en"] == 0.0 and bad["s2t_zh"] == 0.0 and bad["t2t_en"] == 1.0 and bad["t2t_zh"] == 1.0
    assert bad["by_task"]["say"]["s2t_en"] == 0.0 and bad["by_task"]["say"]["t2t_en"] == 1.0
    # an LM that answers a first turn and loses its way after it
    once = lambda n=300, speak=True: FakeChat(lambda audio: "no idea", typed=lambda text: key_of[text],  # noqa: E731
                                              later=lambda text: "Hello again!")
    monkeypatch.setattr(bundle, "chat", once)
    lost = suites.qa(bundle, rows)
    assert lost["t2t_en"] == 1.0 and lost["t2t_turn2_en"] == 0.0
    for row in rows:  # a user's manifest without tasks: the figures, no breakdown
        row.extra.pop("task", None)
    untasked = suites.qa(bundle, rows)
    assert untasked["t2t_en"] == 1.0 and untasked["by_task"] == {}
    rows[0].text = " "  # a question without its text: asked spoken only
    assert suites.qa(bundle, rows)["n_t2t_en"] == untasked["n_t2t_en"] - 1


def test_bundle_chat_without_speech_has_no_decoder(bundle_dir):
    bundle = Bundle(bundle_dir)
    assert bundle.chat(10).decoder is not None and bundle.chat(10, speak=False).decoder is None


def test_rate_is_the_ratio_of_reply_durations(bundle_dir, manifest, monkeypatch):
    bundle, rows = Bundle(bundle_dir), rows_of(manifest)
    by_task = {r.extra["task"]: r for r in rows if r.extra.get("task", "").startswith("say")}
    lengths = {"say": 2.0, "say_slowly": 3.0, "say_quickly": 1.0}
    seconds = iter(lengths[r.extra["task"]] for r in rows if r.extra.get("task") in lengths)
    fake = lambda n=300, speak=True: FakeChat(lambda audio: "", lambda audio: next(seconds))  # noqa: E731
    monkeypatch.setattr(bundle, "chat", fake)
    out = suites.rate(bundle, rows)
    assert len(by_task) == 3 and out["slow_over_normal"] == 1.5 and out["normal_over_quick"] == 2.0


def test_rate_per_character_tells_pace_from_length_in_each_language(bundle_dir, manifest, monkeypatch):
    bundle = Bundle(bundle_dir)
    english = [r for r in rows_of(manifest) if r.extra.get("task", "").startswith("say")]
    rows = english + [dataclasses.replace(r, lang="zh") for r in english]
    # English slow replies say twice the words in twice the time: longer, not slower; quick ones are empty.
    # Mandarin slow replies say the same characters in three times the time: slower.
    said = {("en", "say"): ("Good night.", 2.0), ("en", "say_slowly"): ("Good night good night.", 4.0),
            ("en", "say_quickly"): ("", 1.0), ("zh", "say"): ("晚安。", 1.0), ("zh", "say_slowly"): ("晚安。", 3.0),
            ("zh", "say_quickly"): ("晚安。", 0.5)}  # fmt: skip
    replies = iter(said[r.lang, r.extra["task"]] for r in rows)

    def chat(n=300, speak=True):
        text, seconds = next(replies)
        return FakeChat(lambda audio: text, seconds)

    monkeypatch.setattr(bundle, "chat", chat)
    out = suites.rate(bundle, rows)
    assert out["slow_over_normal"] == round(3.5 / 1.5, 3) and out["normal_over_quick"] == 2.0
    assert out["slow_over_normal_per_char_en"] == 1.0 and out["slow_over_normal_per_char_zh"] == 3.0
    assert out["normal_over_quick_per_char_zh"] == 2.0 and out["n_slow_over_normal_per_char_en"] == 2
    assert "normal_over_quick_per_char_en" not in out  # no words, no pace


def test_log_likelihood_and_cloze(bundle_dir, manifest, monkeypatch):
    bundle, rows = Bundle(bundle_dir), rows_of(manifest)
    lm = bundle.lm
    context, continuation = [5, 6, 7], [8, 9]
    with torch.no_grad():
        logp = torch.log_softmax(lm(input_ids=torch.tensor([context + continuation])).logits[0].float(), -1)
    expected = float(logp[2, 8] + logp[3, 9])
    assert suites.log_likelihood(lm, context, continuation) == pytest.approx(expected, abs=1e-4)
    real = suites.cloze(bundle, rows)  # the random LM: some answer, on every kind with the data for it
    assert set(real) == {"t2t", "s2s", "n_t2t", "n_s2s"} and real["n_t2t"] == 1 and 0 <= real["t2t"] <= 1
    # the decision: a scorer that likes longer endings picks the right one here (1), one that likes shorter
    # endings picks the wrong one (0)
    monkeypatch.setattr(suites, "log_likelihood", lambda lm, ctx, cont: float(len(cont)))
    assert suites.cloze(bundle, rows)["t2t"] == 1.0
    monkeypatch.setattr(suites, "log_likelihood", lambda lm, ctx, cont: -float(len(cont)))
    assert suites.cloze(bundle, rows)["t2t"] == 0.0


def test_asr_perfect_and_all_wrong(tmp_path, manifest):
    """A tiny ASR trained on three utterances transcribes them exactly (WER 0); against other texts, all wrong."""
    from glm4voice.train.config import RunConfig
    from glm4voice.train.tokenizer import train_tokenizer
    from tests.train.test_train_tokenizer import FAST, TINY

    rows = [r for r in rows_of(manifest) if r.id in ("q1", "s1", "q2")]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rows))
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    train_tokenizer(data, tmp_path / "run", RunConfig(steps=100, **FAST), config=tmp_path / "tiny.json",
                    batch_seconds=8, vocab_size=300, log=lambda line: None)  # fmt: skip  (all three in each batch)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tokenizer").symlink_to(tmp_path / "run" / "step-100", target_is_directory=True)
    bundle = Bundle(tmp_path / "b")
    perfect = suites.asr(bundle, rows)
    assert perfect["wer_en"] == 0.0 and perfect["cer_zh"] == 0.0
    english = [r for r in rows if r.lang == "en"]
    english[0].text, english[1].text = english[1].text, english[0].text  # each scored against the other's words
    assert suites.asr(bundle, english)["wer_en"] >= 1.0


class Scripted(torch.nn.Module):
    """An LM that says `script` (ids) after a prompt of `prompt` ids, and keeps what it was given, to check."""

    def __init__(self, lm, script, prompt):
        super().__init__()
        self.lm, self.script, self.prompt, self.seen = lm, list(script), prompt, []

    @property
    def config(self):
        return self.lm.config

    @property
    def device(self):
        return self.lm.device

    def forward(self, input_ids, **kwargs):
        self.seen += input_ids[0].tolist()
        logits = torch.zeros(1, input_ids.shape[1], self.lm.config.vocab_size)
        logits[0, -1, self.script[min(len(self.seen) - self.prompt, len(self.script) - 1)]] = 1.0
        return dataclasses.make_dataclass("Out", ["logits"])(logits)


def test_lm_transcript_prompts_with_the_codes_and_stops_at_the_end(bundle_dir):
    from glm4voice.data.sft import speech_ids

    bundle = Bundle(bundle_dir)
    tok = bundle.text_tokenizer
    end = tok.token_id("<|endoftext|>")
    codes = [3, 1, 4, 1, 5]
    prompt = speech_ids(tok, codes)  # the pre-training `asr` layout, nothing more
    model = Scripted(bundle.lm, [*tok.encode("hello world"), end, *tok.encode(" never")], len(prompt))
    assert suites.lm_transcript(model, tok, codes) == "hello world" and model.seen[: len(prompt)] == prompt
    first = tok.encode("hello world")[:1]
    assert suites.lm_transcript(Scripted(bundle.lm, tok.encode("hello world"), len(prompt)), tok, codes,
                                max_new_tokens=1) == tok.decode(first)  # fmt: skip


def test_lm_asr_scores_its_transcripts(bundle_dir, manifest, monkeypatch):
    bundle, rows = Bundle(bundle_dir), rows_of(manifest)
    questions = [r for r in rows if r.extra.get("role") == "question"]
    heard = {tuple(bundle.tokenizer.tokenize(suites._load(r))): r.text for r in questions}
    assert len(heard) == len(questions)  # each row's codes tell it apart
    real = suites.lm_asr(bundle, questions)  # the random LM: some transcript, a figure per language
    assert real["n_wer_en"] > 0 and real["n_cer_zh"] > 0 and real["wer_en"] >= 0 and len(real["examples"]) == 5
    monkeypatch.setattr(suites, "lm_transcript", lambda lm, tok, codes, n: heard[tuple(codes)])
    perfect = suites.lm_asr(bundle, questions)
    assert perfect["wer_en"] == 0.0 and perfect["cer_zh"] == 0.0
    monkeypatch.setattr(suites, "lm_transcript", lambda lm, tok, codes, n: "")
    deaf = suites.lm_asr(bundle, questions)
    assert deaf["wer_en"] == 1.0 and deaf["cer_zh"] == 1.0


def test_tts_unit_error_rate_against_the_recordings_codes(bundle_dir, manifest):
    bundle = Bundle(bundle_dir)
    row = next(r for r in rows_of(manifest) if r.lang == "en" and r.audio and r.text)
    own = bundle.tokenizer.tokenize(suites._load(row))

    class Writes:  # a text-to-token model that writes the given codes for every text
        def __init__(self, codes):
            self.codes = codes

        def generate(self, texts):
            return [list(self.codes) for _ in texts]

    bundle.t2t = Writes(own)  # the recording's own codes: no unit wrong
    perfect = suites.tts(bundle, [row])
    assert perfect["unit_error_rate"] == 0.0 and perfect["n_units"] == len(own) > 0
    bundle.t2t = Writes([])  # nothing written: every unit missing
    assert suites.tts(bundle, [row])["unit_error_rate"] == 1.0


def test_cli_runs_recon_tts_latency_and_writes_the_report(bundle_dir, manifest, tmp_path, capsys):
    two = tmp_path / "two.jsonl"  # one English and one Mandarin question: enough for every figure, quick
    two.write_text("".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rows_of(manifest)
                           if r.id in ("q1", "q2")))  # fmt: skip
    code = main(["eval", "--model-dir", str(bundle_dir), "--suite", "recon,tts,latency", "--manifest", str(two),
                 "--out", str(tmp_path / "report")])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "report" / "results.json").read_text())
    assert report["machine"].startswith(cpu_info().split(";")[0]) and report["limit"] is None
    results = report["suites"]
    assert results["recon"]["mcd"] > 0 and results["recon"]["n_words"] > 0 and "wer_ratio" in results["recon"]
    assert "wer_tts" in results["tts"] and results["tts"]["unit_error_rate"] >= 0
    assert results["latency"]["first_audio_p50"] > 0
    table = (tmp_path / "report" / "results.md").read_text()
    assert "| latency | first_audio_p50" in table and "<= 1.0" in table
    # where it was measured, and the command that measures it again
    again = f"`glm4voice eval --model-dir {bundle_dir} --suite recon,tts,latency --manifest {two} --out REPORT`"
    assert f"on cpu ({report['machine']}), every row of `{two}`. Again: {again}." in table
    assert (tmp_path / "report" / "latency.png").stat().st_size > 1000


def test_the_report_tables_a_breakdown_apart():
    from glm4voice.eval import table

    results = {"model_dir": "m", "suites": {"qa": {"s2t_en": 0.5, "n_s2t_en": 2, "examples": [["q", "k", "r"]],
                                                   "by_task": {"add": {"s2t_en": 0.0, "t2t_en": 1.0},
                                                               "capital": {"s2t_en": 1.0}}}}}  # fmt: skip
    lines = table(results).splitlines()
    assert "| qa | s2t_en (n=2) | 0.5 | >= 0.9 | no |" in lines and not any("by_task |" in x for x in lines)
    assert lines[-6:] == ["## qa, by task", "", "| | s2t_en | t2t_en |", "|---|---|---|", "| add | 0.0 | 1.0 |",
                          "| capital | 1.0 |  |"]


@pytest.mark.parametrize("argv, message", [
    (["--suite", "nope"], "choose from"),
    (["--suite", "asr"], "--manifest is needed"),
    (["--suite", "qa", "--manifest", "MANIFEST", "--limit", "0"], "--limit"),
    (["--suite", "asr", "--manifest", "MANIFEST"], "no tokenizer/"),
])  # fmt: skip
def test_bad_input_is_one_line(tmp_path, manifest, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    argv = [str(manifest) if a == "MANIFEST" else a for a in argv]
    code = main(["eval", "--model-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert parse_suites("all") == list(suites.SUITES)


def test_a_suite_without_its_rows_says_so(bundle_dir, tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "x", "text": "hello", "lang": "en"}) + "\n")
    with pytest.raises(Exception, match="no spoken questions"):
        evaluate(bundle_dir, ["qa"], tmp_path / "m.jsonl", tmp_path / "r", log=lambda line: None)
    assert np.isfinite(0.0)


def test_the_report_says_where_and_how_to_measure_again():
    from glm4voice.eval import table

    results = {"model_dir": "m", "manifest": "t.jsonl", "limit": 6, "device": "cuda:1", "machine": "H100; EPYC",
               "date": "2026-12-07", "suites": {"asr": {"wer_en": 0.1}, "rate": {}}}  # fmt: skip
    assert table(results).splitlines()[2] == (
        "Measured 2026-12-07 on cuda:1 (H100; EPYC), at most 6 rows of each role, task and language of `t.jsonl`, "
        "evenly spaced. Again: `glm4voice eval --model-dir m --suite asr,rate --manifest t.jsonl --limit 6 "
        "--device cuda:1 --out REPORT`.")
    spaced = {**results, "model_dir": "my models/tiny", "device": "cpu", "limit": None}
    assert "--model-dir 'my models/tiny' --suite asr,rate --manifest t.jsonl --out REPORT`." in table(spaced)
    old = {"model_dir": "m", "suites": {"asr": {"wer_en": 0.1}}}  # a report written before it: no line
    assert table(old).splitlines()[2].startswith("| suite |")
