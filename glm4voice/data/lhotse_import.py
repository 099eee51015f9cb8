"""lhotse manifests -> the project's utterance manifest, so corpora prepared with lhotse's recipes train directly.

    glm4voice data import-lhotse librispeech_cuts_train-clean-100.jsonl.gz --out corpus.jsonl
    glm4voice data import-lhotse aishell_recordings_train.jsonl.gz aishell_supervisions_train.jsonl.gz --out c.jsonl

lhotse (an optional extra: `pip install 'glm4voice[lhotse]'`) has recipes that download and prepare LibriSpeech,
AISHELL, GigaSpeech, WenetSpeech and many more into a CutSet, or into Recording + Supervision manifests. Each cut
(or, for recordings + supervisions, each supervision) becomes one row: its id, its text (the supervisions' texts
in time order), `lang` (en/zh from lhotse's language names), `speaker` and `seconds`.

A cut that is a whole single-channel audio file points at that file, so nothing is copied. Any other cut (a
segment of a longer recording, one channel of several, a mixed or augmented cut, audio held in memory or behind a
URL) has its audio loaded by lhotse and written as a 16-bit flac under `--audio-dir` (atomically; files that
exist are kept, so an interrupted import resumes).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import Glm4VoiceError
from .manifest import Utterance, write_manifest

LANGS = {"english": "en", "en": "en", "chinese": "zh", "mandarin": "zh", "zh": "zh", "cmn": "zh"}


class LhotseImportError(Glm4VoiceError, ValueError):
    """A file that is not a lhotse manifest, a cut without audio, or lhotse not installed."""


def _lhotse():
    try:
        import lhotse
    except ImportError as exc:
        raise LhotseImportError(f"import-lhotse needs the lhotse extra: pip install 'glm4voice[lhotse]' "
                                f"({exc})") from None  # fmt: skip
    return lhotse


def load_cuts(paths: list[str | os.PathLike]):
    """One CutSet, or one RecordingSet plus one SupervisionSet (cut to one utterance per supervision)."""
    lhotse = _lhotse()
    loaded = {}
    for path in paths:
        if not Path(path).is_file():
            raise LhotseImportError(f"{path}: no such file")
        try:
            manifest = lhotse.load_manifest(path)
        except Exception as exc:  # lhotse raises anything from ValueError to KeyError on a foreign file
            raise LhotseImportError(f"{path}: not a lhotse manifest ({type(exc).__name__}: {exc})") from None
        kind = type(manifest).__name__
        if kind not in ("CutSet", "RecordingSet", "SupervisionSet") or kind in loaded:
            raise LhotseImportError(f"{path}: a {kind}; give one CutSet, or one RecordingSet and one SupervisionSet")
        loaded[kind] = manifest
    if set(loaded) == {"CutSet"}:
        return loaded["CutSet"]
    if set(loaded) == {"RecordingSet", "SupervisionSet"}:
        cuts = lhotse.CutSet.from_manifests(recordings=loaded["RecordingSet"], supervisions=loaded["SupervisionSet"])
        return cuts.trim_to_supervisions(keep_overlapping=False)
    raise LhotseImportError("give one CutSet, or one RecordingSet and one SupervisionSet")


def _lang(name: str | None) -> str:
    return LANGS.get((name or "").strip().lower(), (name or "").strip().lower())


def _whole_file(cut) -> str | None:
    """The audio file a cut covers completely, or None when its audio must be cut out or computed."""
    recording = getattr(cut, "recording", None)
    if type(cut).__name__ != "MonoCut" or recording is None or len(recording.sources) != 1:
        return None
    source = recording.sources[0]
    covers = cut.start <= 1e-3 and abs(cut.duration - recording.duration) <= 1e-3
    if source.type != "file" or recording.num_channels != 1 or not covers or getattr(cut, "custom", None):
        return None
    return os.path.abspath(source.source)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "_"


def cut_to_utterance(cut, audio_dir: Path) -> Utterance:
    """One cut -> one row; writes the cut's audio to `audio_dir` when it is not a whole file."""
    supervisions = sorted(cut.supervisions, key=lambda s: s.start)
    langs = {_lang(s.language) for s in supervisions if s.language}
    lang = langs.pop() if len(langs) == 1 else ""
    joiner = "" if lang == "zh" else " "
    text = joiner.join(s.text.strip() for s in supervisions if s.text and s.text.strip())
    speakers = {s.speaker for s in supervisions if s.speaker}
    extra = {}
    audio = _whole_file(cut)
    if audio is None:
        if not cut.has_recording:
            raise LhotseImportError(f"cut {cut.id!r} has no audio (features only?): cannot import it")
        audio = str(audio_dir / f"{_safe(cut.id)}.flac")
        if not Path(audio).exists():
            import soundfile as sf

            for source in getattr(cut.recording, "sources", []) if type(cut).__name__ != "MixedCut" else []:
                if source.type == "file" and not Path(source.source).is_file():
                    raise LhotseImportError(f"cut {cut.id!r}: its audio file {source.source} is missing")
            try:
                samples = np.asarray(cut.load_audio(), dtype=np.float32)
            except Exception as exc:  # a bad URL, a failing command: name the cut, keep lhotse's first line
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise LhotseImportError(f"cut {cut.id!r}: cannot load its audio ({first})") from None
            with atomic_path(audio) as tmp:
                sf.write(tmp, samples.mean(axis=0) if samples.ndim == 2 else samples, cut.sampling_rate,
                         format="FLAC", subtype="PCM_16")  # fmt: skip
        if type(cut).__name__ == "MonoCut":  # where the segment came from
            extra = {"recording": cut.recording_id, "start": round(float(cut.start), 4)}
    return Utterance(cut.id, audio, text, lang, speakers.pop() if len(speakers) == 1 else "",
                     round(float(cut.duration), 6), extra)  # fmt: skip


def import_lhotse(paths: list[str | os.PathLike], out: str | os.PathLike, audio_dir: str | os.PathLike | None = None,
                  ) -> dict:  # fmt: skip
    """Convert lhotse manifest(s) into our manifest at `out`; returns counts."""
    out = Path(out)
    audio_dir = Path(os.path.abspath(audio_dir or out.with_name(out.name.split(".")[0] + "-audio")))
    cuts = load_cuts(list(paths))
    rows, seen = [], set()
    for cut in cuts:
        if cut.id in seen:
            raise LhotseImportError(f"cut id {cut.id!r} appears twice")
        seen.add(cut.id)
        try:
            rows.append(cut_to_utterance(cut, audio_dir))
        except OSError as exc:
            raise LhotseImportError(f"{audio_dir}: cannot write audio there ({exc.strerror or exc})") from None
    if not rows:
        raise LhotseImportError("the manifest holds no cuts")
    write_manifest(out, rows)
    return {"out": str(out), "rows": len(rows), "audio_cut_out": sum(r.audio.startswith(f"{audio_dir}/") for r in rows),
            "seconds": round(sum(r.seconds or 0 for r in rows), 2),
            "without_text": sum(not r.text for r in rows)}  # fmt: skip
