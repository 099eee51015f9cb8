"""`data speak`: real Debian synthesisers, seeded variation, byte-identical reruns, kill-and-resume, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from glm4voice.cli import main
from glm4voice.data.speak import SpeakError, SpeakSettings, engine_voices, parse_voice, render, speak

ENGLISH = "The quick brown fox jumps over the lazy dog near the river bank."
RATES = {"espeak-ng": 22050, "flite": 16000, "festival:cmu_us_slt_arctic_hts": 32000, "festival:kal_diphone": 16000}
VOICES = ["espeak-ng:en-us", "espeak-ng:en-gb+f3", "flite:slt", "flite:rms", "flite:awb", "flite:kal16",
          "festival:cmu_us_slt_arctic_hts", "festival:kal_diphone"]  # fmt: skip
MANDARIN = "espeak-ng:cmn-latn-pinyin"  # the Mandarin voice that speaks Mandarin (see the refusal test)


def write_texts(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def median_f0(audio: np.ndarray, sr: int) -> float:
    """Median pitch of the voiced 50 ms frames: autocorrelation, unbiased by the window's own (60-400 Hz)."""
    frame, found = int(0.05 * sr), []
    lo, hi = sr // 400, sr // 60
    window = np.hanning(frame)
    norm = np.correlate(window, window, "full")[frame - 1:frame + hi]
    for start in range(0, len(audio) - frame, frame // 2):
        w = audio[start:start + frame] * window
        if np.sqrt(np.mean(w**2)) < 0.02:
            continue
        ac = np.correlate(w, w, "full")[frame - 1:frame + hi] / norm
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.4 * ac[0]:
            found.append(sr / lag)
    return float(np.median(found))


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_engine_speaks_and_seconds_match_the_file(tmp_path):
    rows = [{"id": f"v{i}", "text": ENGLISH, "lang": "en", "voice": v} for i, v in enumerate(VOICES)]
    rows.append({"id": "zh", "text": "今天天气很好，我们去公园散步吧。", "lang": "zh", "voice": MANDARIN})
    summary = speak(write_texts(tmp_path / "texts.jsonl", rows), tmp_path / "out", workers=2, progress=False)
    assert summary["spoken"] == len(rows) and summary["failed"] == 0
    manifest = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in manifest] == [r["id"] for r in rows]  # input order, whatever finished first
    for row, asked in zip(manifest, rows):
        info = sf.info(tmp_path / "out" / row["audio"])
        assert info.format == "FLAC" and info.channels == 1
        assert info.samplerate == (RATES.get(asked["voice"]) or RATES[asked["voice"].split(":")[0]])
        assert row["seconds"] == round(info.frames / info.samplerate, 6) and 1.5 < row["seconds"] < 8
        assert row["speaker"] == row["voice"] == asked["voice"] and row["lang"] == asked["lang"]
        assert 0.85 <= row["rate"] <= 1.15 and -2 <= row["pitch"] <= 2
        audio, _ = sf.read(tmp_path / "out" / row["audio"])
        assert np.abs(audio).max() > 0.1  # speech, not silence


@pytest.mark.parametrize("spec", VOICES + [MANDARIN])
def test_rate_and_pitch_controls_work_for_every_voice(tmp_path, spec):
    voice = parse_voice(spec)
    text = "今天天气很好，我们去公园散步吧。" if voice.lang == "zh" else ENGLISH

    def make(rate, pitch):  # the path `speak` takes: engine controls, sox where the engine has no pitch control
        samples, sr = render(voice, text, {"rate": rate, "pitch": pitch, "augment": {}}, "x", SpeakSettings(), tmp_path)
        return samples / 32768, sr

    (slow, sr), (fast, _) = make(0.75, 0.0), make(1.33, 0.0)
    # 1.33 / 0.75 = 1.77; espeak-ng's Mandarin shortens its syllables more than that at the fast end (measured 1.95)
    assert 1.6 < len(slow) / len(fast) < (2.05 if voice.lang == "zh" else 1.95)
    (low, _), (high, _) = make(1.0, -4.0), make(1.0, 4.0)
    assert 1.45 < median_f0(high, sr) / median_f0(low, sr) < 1.72  # 8 semitones: 1.59


def test_same_seed_same_bytes_any_worker_count(tmp_path):
    rows = [{"id": f"en-{i}", "text": f"Sentence number {i} is spoken here.", "lang": "en"} for i in range(4)]
    rows.append({"id": "zh-0", "text": "你好，很高兴认识你。", "lang": "zh"})
    texts = write_texts(tmp_path / "texts.jsonl", rows)
    settings = SpeakSettings(voices=("espeak-ng:en-us", "flite:slt", "flite:rms", MANDARIN),
                             augment=("tempo", "pitch", "noise", "reverb"), augment_prob=0.6, seed=3)  # fmt: skip
    speak(texts, tmp_path / "a", settings, workers=1, progress=False)
    speak(texts, tmp_path / "b", settings, workers=2, progress=False)
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert a == b and len([k for k in a if k.endswith(".flac")]) == 5
    manifest = [json.loads(line) for line in a["manifest.jsonl"].decode().splitlines()]
    assert {r["voice"] for r in manifest} <= set(settings.voices) and manifest[-1]["voice"] == MANDARIN
    assert any("augment" in r for r in manifest)
    speak(texts, tmp_path / "c", SpeakSettings(**{**settings.__dict__, "seed": 4}), progress=False)
    assert files(tmp_path / "c")["manifest.jsonl"] != a["manifest.jsonl"]


def test_augmentation_changes_audio_and_is_recorded(tmp_path):
    texts = write_texts(tmp_path / "texts.jsonl", [{"id": "fox", "text": ENGLISH, "voice": "flite:slt"}])

    def run(name, **kw):
        settings = SpeakSettings(augment_prob=1.0, tempo=(1.25, 1.25), snr=(20.0, 20.0), **kw)
        speak(texts, tmp_path / name, settings, progress=False)
        row = json.loads((tmp_path / name / "manifest.jsonl").read_text())
        return row, sf.read(tmp_path / name / row["audio"], dtype="float64")[0]

    clean, clean_audio = run("clean")
    noisy, noisy_audio = run("noise", augment=("noise",))
    fast, fast_audio = run("tempo", augment=("tempo",))
    every, every_audio = run("all", augment=("tempo", "pitch", "noise", "reverb"))
    assert "augment" not in clean and noisy["augment"] == {"snr": 20.0} and fast["augment"] == {"tempo": 1.25}
    assert set(every["augment"]) == {"tempo", "pitch", "snr", "reverb"}
    # augmentation never changes the voice, rate or pitch drawn for the row
    assert {(r["voice"], r["rate"], r["pitch"]) for r in (clean, noisy, fast, every)} == {
        (clean["voice"], clean["rate"], clean["pitch"])}
    # the added noise is white noise at the recorded SNR
    noise = noisy_audio - clean_audio
    assert 10 * np.log10(np.mean(clean_audio**2) / np.mean(noise**2)) == pytest.approx(20.0, abs=0.3)
    assert len(fast_audio) / len(clean_audio) == pytest.approx(1 / 1.25, rel=0.03)
    assert noisy["seconds"] == clean["seconds"] and not np.allclose(every_audio[: len(fast_audio)], fast_audio)


def test_kill_and_resume_ends_with_the_uninterrupted_corpus(tmp_path):
    rows = [{"id": f"u{i:02d}", "text": f"This is utterance number {i}.", "lang": "en"} for i in range(10)]
    texts = write_texts(tmp_path / "texts.jsonl", rows)
    argv = ["data", "speak", "--texts", str(texts), "--voices", "festival:kal_diphone,flite:awb", "--seed", "7",
            "--augment", "noise,reverb", "--no-progress"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "whole"), "--workers", "2"]) == 0
    out = tmp_path / "killed"
    job = subprocess.Popen([sys.executable, "-m", "glm4voice", *argv, "--out", str(out)], start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while len(list(out.glob("audio/*.flac"))) < 3 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    done = len(list(out.glob("audio/*.flac")))
    assert job.returncode == -signal.SIGKILL and 3 <= done < 10 and not (out / "manifest.jsonl").exists()
    assert main([*argv, "--out", str(out), "--workers", "2"]) == 0
    assert files(out) == files(tmp_path / "whole")  # same audio, same manifest, no temporary leftovers


def test_texts_an_engine_cannot_speak_become_error_rows(tmp_path, capsys):
    rows = [
        {"id": "ok", "text": "Hello there.", "voice": "flite:slt"},
        {"id": "dots", "text": "...", "voice": "festival:kal_diphone"},  # festival crashes on it
        {"id": "hanzi", "text": "今天", "voice": "flite:slt"},  # flite makes silence
        {"id": "lang", "text": "今天天气很好。", "lang": "zh", "voice": "flite:slt"},
        {"id": "novoice", "text": "你好。", "lang": "zh"},
    ]
    texts = write_texts(tmp_path / "texts.jsonl", rows)
    out = tmp_path / "out"
    assert main(["data", "speak", "--texts", str(texts), "--out", str(out), "--voices", "flite:slt",
                 "--no-progress"]) == 1  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["spoken"] == 1 and summary["failed"] == 4
    errors = {r["id"]: r["error"] for r in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert "crashed on this text" in errors["dots"] and "made no speech" in errors["hanzi"]
    assert "speaks 'en', the row is 'zh'" in errors["lang"] and "no voice in --voices speaks 'zh'" in errors["novoice"]
    assert [json.loads(line)["id"] for line in (out / "manifest.jsonl").read_text().splitlines()] == ["ok"]


def test_bad_inputs_give_one_clear_error(tmp_path, capsys, monkeypatch):
    good = write_texts(tmp_path / "good.jsonl", [{"id": "a", "text": "Hello."}])
    (tmp_path / "file").write_text("not a folder")

    def error(*args, texts=good, out=tmp_path / "out") -> str:
        assert main(["data", "speak", "--texts", str(texts), "--out", str(out), "--no-progress", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("glm4voice data speak: error: "), err
        return err

    assert "unknown voice 'flite:nope': flite has awb, kal, kal16, rms, slt" in error("--voices", "flite:nope")
    assert "unknown engine 'say'" in error("--voices", "say:alex")
    assert "write it engine:name" in error("--voices", "slt")
    assert "unknown augmentation 'echo'" in error("--augment", "echo")
    assert "the range 2.0:1.0 is empty" in error("--rate", "2:1")
    empty = write_texts(tmp_path / "empty.jsonl", [{"id": "a", "text": "Hi."}, {"id": "b", "text": " "}])
    assert f"{empty}:2: need a non-empty 'text'" in error(texts=empty)
    bad_voice = write_texts(tmp_path / "bad.jsonl", [{"id": "a", "text": "Hi.", "voice": "espeak-ng:xx"}])
    assert f"{bad_voice}:1: unknown voice 'espeak-ng:xx'" in error(texts=bad_voice)
    assert "cannot write the corpus there" in error("--voices", "flite:slt", out=tmp_path / "file" / "out")
    assert main(["data", "speak", "--texts", str(good), "--out", str(tmp_path / "run"), "--voices", "flite:slt",
                 "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    assert "holds a run with other texts or settings" in error("--voices", "flite:slt", "--seed", "1",
                                                               out=tmp_path / "run")  # fmt: skip
    monkeypatch.setenv("PATH", str(tmp_path))  # no synthesiser on PATH
    engine_voices.cache_clear()
    try:
        assert "flite is not installed: apt-get install flite" in error("--voices", "flite:slt")
    finally:
        engine_voices.cache_clear()


def test_a_mandarin_voice_that_reads_characters_as_english_is_refused(monkeypatch):
    from glm4voice.data import speak as speak_module

    # the installed espeak-ng: its pinyin voice speaks Mandarin, so it passes the check
    assert parse_voice("espeak-ng:cmn-latn-pinyin+f4").lang == "zh"
    assert "(en)" not in subprocess.run(["espeak-ng", "-q", "-x", "-v", "cmn-latn-pinyin", "你好"],
                                        capture_output=True, text=True, check=True).stdout  # fmt: skip
    # a Mandarin voice whose phonemes switch to English (Debian's espeak-ng 1.51 `cmn`) is refused in one line
    speak_module._reads_hanzi.cache_clear()
    real = speak_module._query
    monkeypatch.setattr(speak_module, "_query", lambda cmd, stdin=None: "(en)h'aU T@r'i:(cmn)" if "-x" in cmd
                        else real(cmd, stdin))  # fmt: skip
    with pytest.raises(SpeakError, match="reads Chinese characters as English.*cmn-latn-pinyin"):
        parse_voice("espeak-ng:cmn-latn-pinyin")
    speak_module._reads_hanzi.cache_clear()
