"""The one utterance row that every corpus file in the project uses, and its JSON-lines reader and writer.

Speech corpora (`data speak`, `data import-lhotse`, `tokenize-corpus`), text manifests (`data tiny-texts`) and
the trainers all read and write the same row, so a file made by one stage is the input of the next without a
conversion step:

    {"id": "en-0001", "audio": "audio/en-0001.flac", "text": "Four.", "lang": "en", "speaker": "flite:slt",
     "seconds": 0.82, "voice": "flite:slt", "rate": 1.03, ...}

`id`, `audio`, `text`, `lang`, `speaker` and `seconds` are typed fields; any further column (voice settings,
augmentation, question/answer, split) lives in `extra` and is written back unchanged. A text manifest is the same
row without audio. Relative audio paths are relative to the manifest's folder: the reader makes them absolute, the
writer makes paths inside that folder relative again, so a corpus folder can be moved or copied as a whole.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_text
from ..errors import Glm4VoiceError
from ..jsonl import read_jsonl

FIELDS = ("id", "audio", "text", "lang", "speaker", "seconds")
LANGS = ("en", "zh")


class ManifestError(Glm4VoiceError, ValueError):
    """A manifest row that is not an utterance: the message names `file:line`."""


@dataclass
class Utterance:
    """One utterance: `audio` is a path (absolute once read), `seconds` its length when known.

    `lang` is `en` or `zh` (or empty when unknown); `speaker` names the voice or the person.
    """

    id: str
    audio: str = ""
    text: str = ""
    lang: str = ""
    speaker: str = ""
    seconds: float | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The row as written: the typed fields that are set, then the extra columns in their order."""
        clash = set(FIELDS) & set(self.extra)
        if clash:
            raise ManifestError(f"{self.id}: extra repeats the field(s) {sorted(clash)}")
        row = {"id": self.id}
        for name in FIELDS[1:]:
            value = getattr(self, name)
            if value not in ("", None):
                row[name] = value
        row.update(self.extra)
        return row

    @classmethod
    def from_json(cls, row: object, where: str, need: Iterable[str] = ("audio",)) -> Utterance:
        """Check one decoded JSON line; `need` lists the string fields that must be non-empty."""
        if not isinstance(row, dict):
            raise ManifestError(f"{where}: need a JSON object per line, not {type(row).__name__}")
        values = {}
        for name in ("id", "audio", "text", "lang", "speaker"):
            value = row.get(name, "")
            if not isinstance(value, str):
                raise ManifestError(f"{where}: {name} must be a string, not {type(value).__name__}")
            values[name] = value
        for name in ("id", *need):
            if not values[name].strip():
                raise ManifestError(f"{where}: need a non-empty {name!r} (a row is "
                                    '{"id": "...", "audio": "path", "text": "...", ...})')  # fmt: skip
        seconds = row.get("seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                    or not 0 <= seconds < math.inf):  # fmt: skip
            raise ManifestError(f"{where}: seconds must be a number >= 0, not {seconds!r}")
        extra = {k: v for k, v in row.items() if k not in FIELDS}
        return cls(**values, seconds=None if seconds is None else float(seconds), extra=extra)


def iter_manifest(path: str | os.PathLike, need: Iterable[str] = ("audio",)) -> Iterator[tuple[str, Utterance]]:
    """Yield ("file:line", Utterance) for every row; relative audio paths become absolute; ids must be unique."""
    path = Path(path)
    folder = path.parent.expanduser()
    need = tuple(need)
    seen: dict[str, str] = {}
    for where, obj in read_jsonl(path, "manifest", error=ManifestError):
        row = Utterance.from_json(obj, where, need)
        if row.id in seen:
            raise ManifestError(f"{where}: id {row.id!r} appears twice (first at line {seen[row.id]})")
        seen[row.id] = where.rsplit(":", 1)[1]
        if row.audio:
            row.audio = os.path.abspath(folder / Path(row.audio).expanduser())
        yield where, row
    if not seen:
        raise ManifestError(f"{path}: no rows")


def read_manifest(path: str | os.PathLike, need: Iterable[str] = ("audio",)) -> list[Utterance]:
    """Every row of a manifest, checked (see `iter_manifest`). A text manifest: `need=("text",)`."""
    return [row for _, row in iter_manifest(path, need)]


def write_manifest(path: str | os.PathLike, rows: Iterable[Utterance]) -> Path:
    """Write rows as JSON lines, atomically; audio inside the manifest's folder is written relative to it.

    A path that cannot be written is a ManifestError; the file there before (if any) is left as it was.
    """
    path = Path(path)
    folder = Path(os.path.abspath(path.parent))
    lines = []
    for row in rows:
        obj = row.to_json()
        if row.audio:
            audio = Path(os.path.abspath(row.audio))
            if audio.is_relative_to(folder):
                obj["audio"] = audio.relative_to(folder).as_posix()
        lines.append(json.dumps(obj, ensure_ascii=False) + "\n")
    try:
        write_text(path, "".join(lines))
    except OSError as exc:
        raise ManifestError(f"{path}: cannot write it ({exc.strerror or exc})") from None
    return path


def first_of_each(rows: Iterable, n: int | None, key: Callable, together: Callable | None = None) -> list:
    """Up to `n` rows of each `key(row)`, in their order (all when n is None), so a sample still holds every kind.
    Rows whose `together(row)` is the same, not None (a story's two endings), count as one and stay together."""
    return _of_each(rows, n, key, together, lambda count: range(min(n, count)))


def spread_of_each(rows: Iterable, n: int | None, key: Callable, together: Callable | None = None) -> list:
    """Like `first_of_each`, but the `n` rows of a kind are evenly spaced through that kind's rows: the first
    n of a task's questions are a few contents phrased every way, n spread ones are n contents (what a figure
    over a sample should stand for). Deterministic: the same rows every run."""
    return _of_each(rows, n, key, together, lambda count: [i * count // n for i in range(n)] if count > n
                    else range(count))  # fmt: skip


def _of_each(rows, n, key, together, chosen: Callable) -> list:
    """The rows of the units (a row, or rows sharing `together`) that `chosen(count)` picks by index within
    each kind's units, in the rows' order."""
    rows = list(rows)
    if n is None:
        return rows
    units: dict = {}  # kind (of the unit's first row) -> [unit id, ...] in order
    unit_of, seen = [], set()  # each row's unit id; the units met so far
    for i, row in enumerate(rows):
        group = together(row) if together is not None else None
        unit = ("group", group) if group is not None else ("row", i)
        unit_of.append(unit)
        if unit not in seen:
            seen.add(unit)
            units.setdefault(key(row), []).append(unit)
    keep = {kind_units[j] for kind_units in units.values() for j in chosen(len(kind_units))}
    return [row for row, unit in zip(rows, unit_of) if unit in keep]


def parquet_rows(paths: list[Path], columns: tuple[str, ...]) -> Iterator[dict]:
    """The rows (dicts of `columns`) of Parquet files, or of every .parquet file in the folders among `paths`."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise Glm4VoiceError("Parquet sources need the data extra: pip install 'glm4voice[data]'") from None
    files = [f for p in paths for f in (sorted(p.glob("*.parquet")) if p.is_dir() else [p])]
    if not files:
        raise Glm4VoiceError(f"{', '.join(map(str, paths))}: no .parquet shards")
    for f in files:
        try:
            table = pq.read_table(f, columns=list(columns))
        except Exception as exc:  # not Parquet, damaged, or without those columns
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise Glm4VoiceError(f"{f}: cannot read the columns {', '.join(columns)} ({detail})") from None
        yield from table.to_pylist()
