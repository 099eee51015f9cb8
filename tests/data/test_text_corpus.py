"""Real text: Debian's fortunes cleaned into one document per fortune, deduplicated, plus user files."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from glm4voice.cli import main
from glm4voice.data import text_corpus
from glm4voice.data.manifest import read_manifest
from glm4voice.data.text_corpus import TextCorpusError, clean, dedupe_key, guess_lang, write_text_corpus
from glm4voice.errors import Glm4VoiceError


def test_clean_removes_attribution_escapes_overstrikes_and_wrapping():
    entry = ("It is better to keep your mouth closed and let people think you are\n"
             "a fool than to open it and remove all doubt.\n\n"
             "Second  paragraph,\twith spaces.\n"
             "\t\t-- Mark Twain, \"Pudd'nhead\n\t\tWilson's Calendar\"\n")  # fmt: skip
    assert clean(entry, "en") == ("It is better to keep your mouth closed and let people think you are a fool than "
                                  "to open it and remove all doubt.\nSecond paragraph, with spaces.")  # fmt: skip
    assert clean("_\bB_\bo_\bl_\bd words \x1b[33mhere\x1b[m.\n", "en") == "Bold words here."
    assert clean("-- A line that starts with dashes is text.\n", "en") == "-- A line that starts with dashes is text."
    poem = "\x1b[32m《送别》\x1b[m\n\x1b[33m作者：王维\x1b[m\n下马饮君酒，\n问君何所之。\n"
    assert clean(poem, "zh") == "《送别》\n下马饮君酒，问君何所之。"
    debian = ("要有礼貌\n\n在 Debian 这种规模的项目中，很难避免遇到与你意见不和，或者难以合作\n的人。\n\n"
              "\x1b[33m    -- Debian\x1b[m\n")
    assert clean(debian, "zh") == "要有礼貌\n在 Debian 这种规模的项目中，很难避免遇到与你意见不和，或者难以合作的人。"
    assert clean("题目:《塞上》\n鸣骹直上一千尺。", "zh") == "《塞上》\n鸣骹直上一千尺。"


def test_guess_lang_and_dedupe_key():
    assert guess_lang("今天天气很好 OK") == "zh" and guess_lang("Hello, 世界 and everyone else") == "en"
    assert dedupe_key("Hello,  World!") == dedupe_key("hello world") != dedupe_key("hello words")


def test_fortunes_become_a_clean_deduplicated_corpus(tmp_path, capsys):
    out = tmp_path / "text.jsonl"
    assert main(["data", "text-corpus", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = read_manifest(out, need=("text",))
    assert summary["documents"] == len(rows) and summary["duplicates"] > 0
    by_lang = {lang: [r for r in rows if r.lang == lang] for lang in ("en", "zh")}
    assert len(by_lang["en"]) > 10000 and len(by_lang["zh"]) > 3000
    assert {r.extra["source"].split("/")[1] for r in by_lang["zh"]} == {"chinese", "tang300", "song100"}
    assert len({dedupe_key(r.text) for r in rows}) == len(rows) and len({r.id for r in rows}) == len(rows)
    for r in rows:
        assert "\x1b" not in r.text and "\b" not in r.text and r.text == r.text.strip()
        last = r.text.splitlines()[-1]
        assert not (last.startswith("-- ") and len(last.split()) <= 7), r.text  # a byline ("-- Mark Twain") left
        assert not re.search(r"^作者\s*[:：]", r.text, flags=re.M), r.text  # a poem's byline left
    tang = [r.text for r in by_lang["zh"] if r.extra["source"] == "fortunes/tang300"]
    assert tang[0].startswith("《") and "\n" in tang[0] and all(guess_lang(t) == "zh" for t in tang)
    # the same bytes on every run
    assert main(["data", "text-corpus", "--out", str(tmp_path / "again.jsonl")]) == 0
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()


def test_user_files_and_parquet(tmp_path):
    (tmp_path / "jokes.txt").write_text("First joke.\n\t-- Someone\n%\nSecond joke,\nwrapped.\n%\n%\nFirst joke.\n")
    (tmp_path / "notes.txt").write_text("A paragraph\nof notes.\n\n今天天气很好，我们去公园散步吧。\n\n"
                                        "+--+--+\n| | |\n")
    (tmp_path / "more.jsonl").write_text('{"id": "m1", "text": "Second joke, wrapped."}\n'
                                         '{"id": "m2", "text": "A new line of text.", "lang": "en"}\n')  # fmt: skip
    out = tmp_path / "corpus.parquet"
    summary = write_text_corpus(out, fortunes=False, files=[tmp_path / n for n in ("jokes.txt", "notes.txt",
                                                                                    "more.jsonl")])  # fmt: skip
    table = pq.read_table(out).to_pydict()
    assert table["text"] == ["First joke.", "Second joke, wrapped.", "A paragraph of notes.",
                             "今天天气很好，我们去公园散步吧。", "A new line of text."]  # fmt: skip
    assert table["lang"] == ["en", "en", "en", "zh", "en"] and table["id"][-1] == "more-m2"
    assert summary["duplicates"] == 2 and summary["documents"] == 5  # the ASCII table is dropped


def test_bad_inputs(tmp_path, monkeypatch):
    (tmp_path / "file.txt").write_text("Some text to write.\n")
    with pytest.raises(TextCorpusError, match="name the output .jsonl or .parquet"):
        write_text_corpus(tmp_path / "out.txt")
    with pytest.raises(TextCorpusError, match="nothing to read"):
        write_text_corpus(tmp_path / "out.jsonl", fortunes=False)
    with pytest.raises(TextCorpusError, match="missing.txt: no such file"):
        write_text_corpus(tmp_path / "out.jsonl", fortunes=False, files=[tmp_path / "missing.txt"])
    (tmp_path / "file").write_text("")
    for name in ("out.jsonl", "out.parquet"):
        with pytest.raises(Glm4VoiceError, match=f"file/{name}: cannot write it"):
            write_text_corpus(tmp_path / "file" / name, fortunes=False, files=[tmp_path / "file.txt"])
    with pytest.raises(TextCorpusError, match="languages are en and zh, not fr"):
        write_text_corpus(tmp_path / "out.jsonl", langs=("fr",))
    monkeypatch.setattr(text_corpus, "FORTUNES", tmp_path / "nowhere")
    with pytest.raises(TextCorpusError, match="apt-get install fortunes "):
        write_text_corpus(tmp_path / "out.jsonl")
    with pytest.raises(TextCorpusError, match="apt-get install fortunes-zh"):
        write_text_corpus(tmp_path / "out.jsonl", langs=("zh",))
    assert not (tmp_path / "out.jsonl").exists()
