"""lhotse manifests the test builds itself -> our manifest: whole files referenced, segments cut out."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile as sf

from glm4voice.cli import main
from glm4voice.data.lhotse_import import LhotseImportError, import_lhotse
from glm4voice.data.manifest import read_manifest
from tests.conftest import espeak

lhotse = pytest.importorskip("lhotse", reason="the lhotse extra (make installs it)")


@pytest.fixture
def prepared(tmp_path):
    """Two real recordings: English (one supervision, whole file) and Mandarin (two supervised segments)."""
    en = espeak("Hello world, this is a test of the import.")
    zh = espeak("今天天气很好，我们去公园散步吧。", "cmn-latn-pinyin")
    sf.write(tmp_path / "en.wav", en, 16000)
    sf.write(tmp_path / "zh.wav", np.stack([zh, 0.5 * zh], axis=1), 16000)  # two channels
    rec_en = lhotse.Recording.from_file(tmp_path / "en.wav", recording_id="rec-en")
    rec_zh = lhotse.Recording.from_file(tmp_path / "zh.wav", recording_id="rec-zh")
    sups = [
        lhotse.SupervisionSegment("sup-en", "rec-en", 0, rec_en.duration, text="Hello world, this is a test.",
                                  language="English", speaker="spk-en"),
        lhotse.SupervisionSegment("sup-zh1", "rec-zh", 0.25, 1.0, channel=0, text="今天天气很好", language="Chinese",
                                  speaker="spk-zh"),
        lhotse.SupervisionSegment("sup-zh2", "rec-zh", 1.5, 0.75, channel=0, text="我们去公园", language="Chinese",
                                  speaker="spk-zh"),
    ]  # fmt: skip
    recordings = lhotse.RecordingSet.from_recordings([rec_en, rec_zh])
    supervisions = lhotse.SupervisionSet.from_segments(sups)
    recordings.to_file(tmp_path / "recordings.jsonl.gz")
    supervisions.to_file(tmp_path / "supervisions.jsonl.gz")
    cuts = lhotse.CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    return tmp_path, en, zh


def test_cutset_import(prepared, capsys):
    folder, en, zh = prepared
    out = folder / "corpus" / "corpus.jsonl"
    assert main(["data", "import-lhotse", str(folder / "cuts.jsonl.gz"), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = read_manifest(out)
    assert summary["rows"] == 2 and [r.lang for r in rows] == ["en", "zh"]
    first, second = rows
    assert first.audio == str(folder / "en.wav") and first.speaker == "spk-en"  # the file itself, not a copy
    assert first.text == "Hello world, this is a test." and first.seconds == pytest.approx(len(en) / 16000)
    # a two-channel recording cannot be referenced as is: lhotse loads it and it is written as mono flac
    assert second.text == "今天天气很好我们去公园"
    assert second.audio == str(out.parent / "corpus-audio" / f"{second.id}.flac")
    audio, sr = sf.read(second.audio)
    assert sr == 16000 and audio.ndim == 1 and len(audio) == pytest.approx(second.seconds * sr, abs=1)
    assert np.allclose(audio, 0.75 * zh, atol=2e-4)  # the mean of the two channels
    assert json.loads(out.read_text().splitlines()[1])["audio"] == f"corpus-audio/{second.id}.flac"  # moves along


def test_recordings_and_supervisions_give_one_row_per_supervision(prepared):
    folder, _, zh = prepared
    out = folder / "sup.jsonl"
    summary = import_lhotse([folder / "recordings.jsonl.gz", folder / "supervisions.jsonl.gz"], out)
    rows = {r.id: r for r in read_manifest(out)}
    assert summary == {"out": str(out), "rows": 3, "audio_cut_out": 2, "seconds": pytest.approx(rows["sup-en"].seconds
                       + 1.75, abs=0.01), "without_text": 0}  # fmt: skip
    segment = rows["sup-zh2"]
    assert (segment.text, segment.lang, segment.seconds) == ("我们去公园", "zh", 0.75)
    assert segment.extra == {"recording": "rec-zh", "start": 1.5}
    audio, sr = sf.read(segment.audio)
    assert np.allclose(audio, zh[24000:36000], atol=2e-4)  # channel 0 from 1.5 s to 2.25 s
    # a second import finds the cut-out audio already there and gives the same manifest
    before = out.read_bytes()
    import_lhotse([folder / "recordings.jsonl.gz", folder / "supervisions.jsonl.gz"], out)
    assert out.read_bytes() == before


def test_bad_inputs(prepared, monkeypatch, capsys):
    folder, _, _ = prepared
    (folder / "plain.jsonl").write_text('{"id": "a", "audio": "a.wav"}\n')
    cases = [
        ([folder / "missing.jsonl.gz"], "missing.jsonl.gz: no such file"),
        ([folder / "plain.jsonl"], "plain.jsonl: not a lhotse manifest"),
        ([folder / "cuts.jsonl.gz", folder / "cuts.jsonl.gz"], "give one CutSet, or one RecordingSet"),
        ([folder / "supervisions.jsonl.gz"], "give one CutSet, or one RecordingSet and one SupervisionSet"),
    ]
    for paths, message in cases:
        with pytest.raises(LhotseImportError, match=message):
            import_lhotse(paths, folder / "out.jsonl")
    (folder / "en.wav").unlink()  # whole-file cuts are referenced: a missing file is not the importer's business
    (folder / "zh.wav").unlink()
    assert main(["data", "import-lhotse", str(folder / "cuts.jsonl.gz"), "--out", str(folder / "out.jsonl")]) == 2
    assert capsys.readouterr().err == (f"glm4voice data import-lhotse: error: cut 'rec-zh-1': its audio file "
                                       f"{folder / 'zh.wav'} is missing\n")  # fmt: skip
    assert not (folder / "out.jsonl").exists()
    monkeypatch.setitem(sys.modules, "lhotse", None)
    with pytest.raises(LhotseImportError, match=r"needs the lhotse extra: pip install 'glm4voice\[lhotse\]'"):
        import_lhotse([folder / "cuts.jsonl.gz"], folder / "out.jsonl")
