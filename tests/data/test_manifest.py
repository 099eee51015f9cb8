"""The one utterance row: round trip through JSON lines, relative audio paths, and `file:line` errors."""

from __future__ import annotations

import json
import shutil

import pytest

from glm4voice.data.manifest import ManifestError, Utterance, iter_manifest, read_manifest, write_manifest
from glm4voice.errors import Glm4VoiceError


def test_round_trip_keeps_every_column_and_relative_paths(tmp_path):
    corpus = tmp_path / "corpus"
    rows = [
        Utterance("u1", str(corpus / "audio" / "u1.flac"), "Four.", "en", "flite:slt", 0.82,
                  {"voice": "flite:slt", "rate": 1.03, "augment": {"snr": 18.5}}),
        Utterance("u2", "/elsewhere/u2.wav", "今天天气很好。", "zh", seconds=None, extra={"split": "test"}),
        Utterance("u3", str(corpus / "u3.wav")),
    ]  # fmt: skip
    path = write_manifest(corpus / "manifest.jsonl", rows)
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    # inside the folder: relative; outside: as given; unset fields are left out; extra columns follow in order
    assert lines[0] == {"id": "u1", "audio": "audio/u1.flac", "text": "Four.", "lang": "en", "speaker": "flite:slt",
                        "seconds": 0.82, "voice": "flite:slt", "rate": 1.03, "augment": {"snr": 18.5}}  # fmt: skip
    assert lines[1] == {"id": "u2", "audio": "/elsewhere/u2.wav", "text": "今天天气很好。", "lang": "zh",
                        "split": "test"}  # fmt: skip
    assert "今天" in path.read_text(encoding="utf-8")  # readable UTF-8, not \u escapes
    assert read_manifest(path) == rows
    # the folder moves as a whole: paths resolve against the manifest's new place
    moved = tmp_path / "moved"
    shutil.move(corpus, moved)
    again = read_manifest(moved / "manifest.jsonl")
    assert again[0].audio == str(moved / "audio" / "u1.flac") and again[1].audio == "/elsewhere/u2.wav"
    # writing what was read gives the same bytes
    before = (moved / "manifest.jsonl").read_bytes()
    write_manifest(moved / "manifest.jsonl", again)
    assert (moved / "manifest.jsonl").read_bytes() == before


def test_text_manifest_needs_text_not_audio(tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_text('{"id": "q1", "text": "Hello!", "lang": "en", "voice": "flite:slt"}\n')
    (row,) = read_manifest(path, need=("text",))
    assert row == Utterance("q1", "", "Hello!", "en", extra={"voice": "flite:slt"})
    with pytest.raises(ManifestError, match=r"texts.jsonl:1: need a non-empty 'audio'"):
        read_manifest(path)
    path.write_text('{"id": "q1", "text": "   "}\n')
    with pytest.raises(ManifestError, match=r"texts.jsonl:1: need a non-empty 'text'"):
        read_manifest(path, need=("text",))


@pytest.mark.parametrize("content, line, message", [
    ('{"id": "a", "audio": "a.wav"}\nnot json\n', 2, "not JSON"),
    ('["a", "a.wav"]\n', 1, "need a JSON object per line, not list"),
    ('{"audio": "a.wav"}\n', 1, "need a non-empty 'id'"),
    ('{"id": "a"}\n', 1, "need a non-empty 'audio'"),
    ('{"id": 7, "audio": "a.wav"}\n', 1, "id must be a string, not int"),
    ('{"id": "a", "audio": "a.wav", "text": 3}\n', 1, "text must be a string, not int"),
    ('{"id": "a", "audio": "a.wav", "lang": ["en"]}\n', 1, "lang must be a string, not list"),
    ('{"id": "a", "audio": "a.wav", "seconds": "2.5"}\n', 1, "seconds must be a number >= 0"),
    ('{"id": "a", "audio": "a.wav", "seconds": true}\n', 1, "seconds must be a number >= 0"),
    ('{"id": "a", "audio": "a.wav", "seconds": -1}\n', 1, "seconds must be a number >= 0"),
    ('{"id": "a", "audio": "a.wav"}\n\n{"id": "a", "audio": "b.wav"}\n', 3,
     "id 'a' appears twice \\(first at line 1\\)"),
])  # fmt: skip
def test_bad_rows_name_file_and_line(tmp_path, content, line, message):
    path = tmp_path / "m.jsonl"
    path.write_text(content)
    with pytest.raises(ManifestError, match=f"^{path}:{line}: {message}"):
        read_manifest(path)


def test_empty_missing_and_unreadable_files(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("\n  \n")
    with pytest.raises(ManifestError, match="m.jsonl: no rows"):
        read_manifest(path)
    with pytest.raises(ManifestError, match="no such file"):
        read_manifest(tmp_path / "missing.jsonl")
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(Glm4VoiceError, match="cannot read the manifest"):
        read_manifest(path)


def test_iter_manifest_reports_where_each_row_is(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "audio": "a.wav"}\n\n{"id": "b", "audio": "sub/b.wav", "seconds": 2}\n')
    assert [(where, row.id, row.audio, row.seconds) for where, row in iter_manifest(path)] == [
        (f"{path}:1", "a", str(tmp_path / "a.wav"), None), (f"{path}:3", "b", str(tmp_path / "sub" / "b.wav"), 2.0)]


def test_a_failed_write_keeps_the_old_manifest(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest(path, [Utterance("a", str(tmp_path / "a.wav"))])
    before = path.read_bytes()
    with pytest.raises(ManifestError, match="extra repeats the field"):
        write_manifest(path, [Utterance("b", "b.wav", extra={"text": "clash"})])
    with pytest.raises(TypeError):  # a value JSON cannot hold
        write_manifest(path, [Utterance("b", "b.wav", extra={"blob": object()})])
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]
    with pytest.raises(ManifestError, match=r"m.jsonl/x.jsonl: cannot write it \(File exists\)"):
        write_manifest(path / "x.jsonl", [Utterance("a", "a.wav")])


def test_first_of_each_keeps_order_kinds_and_pairs_together():
    from glm4voice.data.manifest import first_of_each

    rows = [{"k": "a", "id": 0}, {"k": "a", "id": 1, "pair": "s"}, {"k": "b", "id": 2},
            {"k": "a", "id": 3, "pair": "s"}, {"k": "a", "id": 4}, {"k": "b", "id": 5}, {"k": "b", "id": 6}]
    kept = first_of_each(rows, 2, lambda r: r["k"], lambda r: r.get("pair"))
    assert [r["id"] for r in kept] == [0, 1, 2, 3, 5]  # the pair's second row rides along; a's third is left
    assert [r["id"] for r in first_of_each(rows, 1, lambda r: r["k"])] == [0, 2]
    assert first_of_each(rows, None, lambda r: r["k"]) == rows


def test_spread_of_each_spaces_its_rows_through_each_kind():
    from glm4voice.data.manifest import spread_of_each

    rows = [{"k": "a", "id": i} for i in range(12)] + [{"k": "b", "id": 12}, {"k": "b", "id": 13, "pair": "s"},
                                                       {"k": "b", "id": 14, "pair": "s"}]  # fmt: skip
    kept = [r["id"] for r in spread_of_each(rows, 3, lambda r: r["k"], lambda r: r.get("pair"))]
    assert kept == [0, 4, 8, 12, 13, 14]  # a: every fourth; b has two units (a row, a pair): both, all rows
    assert [r["id"] for r in spread_of_each(rows, 1, lambda r: r["k"])] == [0, 12]
    assert spread_of_each(rows, None, lambda r: r["k"]) == rows and len(spread_of_each(rows, 20, lambda r: 0)) == 15
