"""The tiny bilingual domain: coverage, a held-out split that shares nothing with training, answers as spoken."""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest
import soundfile as sf

from glm4voice.cli import main
from glm4voice.data.domain import (
    ASSISTANT,
    COLOURS,
    COUNTRIES,
    FACT_PHRASINGS,
    FAST,
    LEGS,
    OPPOSITES,
    PHRASINGS,
    SLOW,
    en_number,
    tiny_texts,  # fmt: skip
    zh_number,
)
from glm4voice.data.manifest import read_manifest
from glm4voice.data.speak import SpeakSettings, speak


@pytest.fixture(scope="module")
def rows():
    return tiny_texts()


def questions(rows, split=None):
    return [r for r in rows if r.extra["role"] == "question" and split in (None, r.extra["split"])]


def test_numbers_in_words():
    assert [en_number(n) for n in (0, 7, 13, 20, 21, 25)] == ["zero", "seven", "thirteen", "twenty", "twenty-one",
                                                             "twenty-five"]  # fmt: skip
    assert [zh_number(n) for n in (0, 2, 10, 11, 20, 25)] == ["零", "二", "十", "十一", "二十", "二十五"]


def test_the_cli_writes_the_same_bytes_every_run(tmp_path, capsys):
    assert main(["data", "tiny-texts", "--out", str(tmp_path / "a.jsonl")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert main(["data", "tiny-texts", "--out", str(tmp_path / "b.jsonl")]) == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert summary["rows"] == len(read_manifest(tmp_path / "a.jsonl", need=("text",)))
    assert main(["data", "tiny-texts", "--out", str(tmp_path / "c.jsonl"), "--langs", "en,fr"]) == 2
    assert "languages are en and zh, not fr" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["data", "tiny-texts", "--out", str(tmp_path / "file" / "t.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"glm4voice data tiny-texts: error: {tmp_path}/file/t.jsonl: cannot write it (")
    assert err.count("\n") == 1


def test_coverage_of_tasks_languages_and_phrasings(rows):
    assert len(COUNTRIES) >= 30 and len(OPPOSITES) >= 30 and len(COLOURS) >= 20 and len(LEGS) >= 20
    tasks = defaultdict(set)
    for r in questions(rows):
        tasks[r.extra["task"]].add(r.lang)
    assert set(tasks) == {*PHRASINGS, "greeting", "identity"} and all(v == {"en", "zh"} for v in tasks.values())
    # every content is asked in several phrasings, in each language
    by_answer = defaultdict(set)
    for r in questions(rows):
        by_answer[r.lang, r.extra["task"], r.extra["answer"]].add(r.text)
    assert min(len(v) for k, v in by_answer.items() if k[1] not in ("greeting", "identity")) >= 3
    assert by_answer["en", "add", "Two plus three is five."] == {
        "What is two plus three?", "How much is two plus three?", "Add two and three.",
        "Can you tell me what two plus three makes?"}  # fmt: skip
    assert "四乘五等于二十。" in {r.extra["answer"] for r in questions(rows) if r.lang == "zh"}
    counts = {t: sum(r.extra["task"] == t for r in questions(rows)) for t in ("add", "subtract", "multiply")}
    assert counts == {"add": 121 * 4 * 2, "subtract": 66 * 4 * 2, "multiply": 36 * 4 * 2}


def test_the_held_out_split_shares_no_question_answer_pair(rows):
    train, test = questions(rows, "train"), questions(rows, "test")
    assert len(test) > 0.2 * len(train)
    pairs = {(r.text, r.extra["answer"]) for r in train}
    assert not {(r.text, r.extra["answer"]) for r in test} & pairs
    assert not {r.text for r in test} & {r.text for r in train}  # not even the question
    for task in PHRASINGS:  # held-out phrasing: the last template never appears in training
        for lang, phrasings in zip(("en", "zh"), PHRASINGS[task]):
            pattern = re.compile(re.escape(phrasings[-1]).replace(r"\{a\}", ".+").replace(r"\{b\}", ".+")
                                 .replace(r"\{x\}", ".+"))  # fmt: skip
            assert not [r.text for r in train if r.lang == lang and pattern.fullmatch(r.text)]
            assert [r.text for r in test if r.lang == lang and r.extra["task"] == task and pattern.fullmatch(r.text)]
    # held-out contents: some countries, adjectives and number pairs are only ever asked in the test
    for task, names in (("capital", [c[0] for c in COUNTRIES]), ("opposite", [o[0] for o in OPPOSITES])):
        asked_in_train = {n for n in names for r in train if r.extra["task"] == task and r.lang == "en"
                          and re.search(rf"\b{re.escape(n)}\b", r.text)}  # fmt: skip
        held = set(names) - asked_in_train
        assert len(held) >= 0.15 * len(names)
        # ... while their facts are training text: the test asks for knowledge in a form never seen with it
        facts = {r.text for r in rows if r.extra["role"] == "fact" and r.extra["split"] == "train"}
        for r in test:
            if r.extra["task"] == task and r.lang == "en" and any(re.search(rf"\b{re.escape(n)}\b", r.text)
                                                                 for n in held):  # fmt: skip
                assert r.extra["answer"] in facts
    sums_train = {r.text for r in train if r.extra["task"] == "add" and r.text.startswith("What is")}
    sums_test = {r.text for r in test if r.extra["task"] == "add" and r.text.startswith("What is")}
    assert len(sums_test) >= 20 and not sums_test & sums_train


def test_facts_come_in_several_phrasings_none_a_held_out_question(rows):
    facts = [r for r in rows if r.extra["role"] == "fact"]
    assert len({r.id for r in facts}) == len(facts) and len({r.text for r in facts}) == len(facts)
    first = [r for r in facts if "phrasing" not in r.extra]  # the answer sentences: ids as before
    assert first[0].id == "en-fact-00001" and first[0].text == "The capital of France is Paris."
    others = defaultdict(list)
    for r in facts:
        if "phrasing" in r.extra:
            others[r.id.rsplit("-", 1)[0]].append(r)
    assert set(others) == {r.id for r in first if r.extra["task"] in FACT_PHRASINGS}
    assert all([r.extra["phrasing"] for r in v] == [1, 2, 3] for v in others.values())
    assert [r.text for r in others["en-fact-00001"]] == [
        "Paris is the capital of France.", "In France, the capital is Paris.", "France has Paris as its capital."]
    assert "蛇一条腿也没有。" in {r.text for r in facts}  # no "有没有条腿"
    held_out = {r.text for r in questions(rows, "test")}
    for r in facts:
        assert r.extra["split"] == "train" and r.text not in held_out and r.text.rstrip()[-1] in ".。"
    # no other phrasing restates a held-out question form: no four words (Mandarin: characters) of its frame
    for task, (en, zh) in FACT_PHRASINGS.items():
        for held, templates in ((PHRASINGS[task][0][-1], en), (PHRASINGS[task][1][-1], zh)):
            assert not [t for t in templates if restates(held, t)], (task, held)
    assert restates("Name the capital city of {x}.", "The capital city of {x} is {y}.")  # what the test catches
    assert restates("请问{x}的首都在哪里？", "{x}的首都在哪里都知道。")


def restates(question: str, template: str) -> bool:
    """Whether a template shares four running words (Mandarin: characters) with a question's frame."""
    def grams(text: str) -> set:
        out = set()
        for piece in re.split(r"\{\w\}", text.lower()):
            units = re.findall(r"[a-z']+", piece) or [c for c in piece if "\u4e00" <= c <= "\u9fff"]
            out |= {tuple(units[i : i + 4]) for i in range(len(units) - 3)}
        return out

    return bool(grams(question) & grams(template))


def test_answers_are_spoken_sentences_in_the_assistant_voice(rows):
    answers = {r.id: r for r in rows if r.extra["role"] == "answer"}
    assert len({(a.lang, a.text, a.extra["rate"]) for a in answers.values()}) == len(answers)  # each made once
    for q in questions(rows):
        a = answers[q.extra["answer_id"]]
        assert (a.text, a.lang, a.extra["rate"]) == (q.extra["answer"], q.lang, q.extra["answer_rate"])
        assert a.extra["voice"] == ASSISTANT[q.lang] and a.extra["pitch"] == 0.0
        expected = {"say_slowly": SLOW, "say_quickly": FAST}.get(q.extra["task"], 1.0)
        assert q.extra["answer_rate"] == expected
    for r in rows:
        assert not re.search(r"[0-9+*/=]", r.text), r.text  # numbers in words, no symbols
        assert r.text.rstrip()[-1] in ".!?。！？", r.text
    say = {q.text: answers[q.extra["answer_id"]] for q in questions(rows) if q.lang == "en"}
    assert say["Say good night slowly."].text == "Good night." and say["Say good night slowly."].extra["rate"] == SLOW


def test_story_pairs(rows):
    stories = [r for r in rows if r.extra["role"] == "story"]
    pairs = defaultdict(list)
    for r in stories:
        pairs[r.extra["pair"]].append(r)
    assert len(pairs) >= 100 and {r.lang for r in stories} == {"en", "zh"}
    for pair in pairs.values():
        right, wrong = sorted(pair, key=lambda r: not r.extra["right"])
        assert right.extra["right"] and not wrong.extra["right"] and right.extra["story"] == wrong.extra["story"]
        assert right.extra["split"] == wrong.extra["split"] and right.extra["ending"] != wrong.extra["ending"]
        assert right.text.startswith(right.extra["story"]) and right.text.endswith(right.extra["ending"])
    assert {r.extra["split"] for r in stories} == {"train", "test"}


def test_data_speak_reads_it_and_the_answer_rate_is_the_speech_rate(tmp_path, rows):
    """Speak the three answers of "say good night" (normal, slowly, quickly) and a Mandarin question."""
    wanted = {q.extra["answer_id"] for q in questions(rows) if q.lang == "en" and "good night" in q.text}
    picked = [r for r in rows if r.id in wanted]
    picked.append(next(r for r in questions(rows) if r.lang == "zh"))
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in picked), encoding="utf-8")
    summary = speak(texts, tmp_path / "out", SpeakSettings(voices=("espeak-ng:cmn-latn-pinyin",)), progress=False)
    assert summary["failed"] == 0
    spoken = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert [r.id for r in spoken] == [r.id for r in picked] and spoken[-1].speaker == "espeak-ng:cmn-latn-pinyin"
    by_rate = {r.extra["rate"]: r for r in spoken[:-1]}
    assert set(by_rate) == {SLOW, 1.0, FAST} and {r.speaker for r in spoken[:-1]} == {ASSISTANT["en"]}
    seconds = [sf.info(by_rate[rate].audio).duration for rate in (SLOW, 1.0, FAST)]
    assert seconds[0] > 1.2 * seconds[1] > 1.2 * 1.2 * seconds[2]
