"""Real text for text pre-training and interleaved data: Debian's fortune collections, cleaned, plus any user text.

    glm4voice data text-corpus --out text.jsonl [--langs en,zh] [--no-fortunes] [more.txt more.jsonl ...]

Nothing can be downloaded where this project is built, but Debian ships two fortune collections written by
people: `fortunes` (English: quotations, jokes, definitions, poems) and `fortunes-zh` (Mandarin: Tang and Song
poems, the Debian code of conduct). They become one document per fortune:

- colour escapes and typewriter overstrikes (`_\\bx`) are removed;
- the attribution (`-- Mark Twain`, `作者：李白`, the `题目:` label) is cut, so the model learns text, not
  bylines;
- hard-wrapped lines are joined (with a space in English, directly in Mandarin), paragraphs and 《titles》 kept;
- entries that are mostly not words (ASCII art, tables) are dropped, and duplicates (same words, ignoring case,
  spacing and punctuation) are kept once.

User files: `.jsonl` is read as a text manifest (`id`, `text`, optional `lang`); any other file is plain text,
one document per `%`-separated entry when it has `%` lines, else per blank-line-separated paragraph. The output is
a text manifest (`id`, `text`, `lang`, `source`), or Parquet when `--out` ends in `.parquet`.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from ..atomic import atomic_path
from ..errors import Glm4VoiceError
from .manifest import Utterance, iter_manifest, parquet_rows, write_manifest

FORTUNES = Path("/usr/share/games/fortunes")
CHINESE_FILES = ("chinese", "tang300", "song100")  # the fortunes-zh package
SKIP_FILES = ("ascii-art",)  # pictures, not text
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]?")  # the letter is optional: fortunes-zh has a few broken ones
_OVERSTRIKE = re.compile(r".\x08")
_ATTRIBUTION = re.compile(r"^(\s+(--|—|~~)\s*\S|(--|—)\s+\S)")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_TITLE = re.compile(r"《[^》]*》\S{0,8}")


class TextCorpusError(Glm4VoiceError, ValueError):
    """Missing fortune packages, unreadable input files, an unknown language or output format."""


def guess_lang(text: str) -> str:
    """zh when at least a third of the letters are Chinese characters, else en."""
    letters = sum(c.isalpha() for c in text)
    return "zh" if letters and len(_CJK.findall(text)) * 3 >= letters else "en"


def clean(entry: str, lang: str) -> str:
    """One fortune -> plain text: no escapes, overstrikes, attribution, titles labels or hard wraps."""
    text = _ANSI.sub("", entry)
    while _OVERSTRIKE.search(text):
        text = _OVERSTRIKE.sub("", text)
    lines = [line.rstrip() for line in text.replace("\r", "").split("\n")]
    lines = [line for line in lines if not re.match(r"^\s*作者\s*[:：]", line)]
    lines = [re.sub(r"^\s*题目\s*[:：]\s*", "", line) for line in lines]
    for i in range(len(lines) - 1, 0, -1):
        if _ATTRIBUTION.match(lines[i]):
            del lines[i:]
            break
    paragraphs, current = [], []
    for line in [*lines, ""]:
        line = " ".join(line.split())
        if line:
            current.append(line)
        elif current:
            paragraphs.append(current)
            current = []
    out = []
    for para in paragraphs:
        if lang == "zh":  # Mandarin has no spaces: a wrapped line continues directly; a 《title》 stays a line
            joined = para[0]
            for prev, line in zip(para, para[1:]):
                joined += ("\n" if _TITLE.fullmatch(prev) else "") + line
            out.append(joined)
        else:
            out.append(" ".join(para))
    return "\n".join(out).strip()


def is_prose(text: str) -> bool:
    """Mostly words: drops ASCII art, tables and empty entries."""
    visible = [c for c in text if not c.isspace()]
    return len(visible) >= 3 and sum(c.isalnum() for c in visible) >= 0.6 * len(visible)


def dedupe_key(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum())


def _entries(text: str) -> list[str]:
    if re.search(r"^%\s*$", text, flags=re.M):
        return re.split(r"^%\s*$", text, flags=re.M)
    return re.split(r"\n\s*\n", text)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise TextCorpusError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def fortune_files(langs: tuple[str, ...]) -> list[tuple[Path, str]]:
    """The installed fortune files for `langs`, as (path, lang); an error naming the missing package."""
    files = []
    if "en" in langs:
        english = sorted(p for p in FORTUNES.glob("*") if p.is_file() and not p.suffix
                         and p.name not in CHINESE_FILES + SKIP_FILES) if FORTUNES.is_dir() else []  # fmt: skip
        if not english:
            raise TextCorpusError(f"no English fortunes in {FORTUNES}: apt-get install fortunes (or run make)")
        files += [(p, "en") for p in english]
    if "zh" in langs:
        chinese = [FORTUNES / name for name in CHINESE_FILES if (FORTUNES / name).is_file()]
        if not chinese:
            raise TextCorpusError(f"no Chinese fortunes in {FORTUNES}: apt-get install fortunes-zh (or run make)")
        files += [(p, "zh") for p in chinese]
    return files


def documents(fortunes: bool = True, langs: tuple[str, ...] = ("en", "zh"), files=()) -> Iterator[Utterance]:
    """Every cleaned document, fortunes first, in a fixed order (before deduplication)."""
    bad = [lang for lang in langs if lang not in ("en", "zh")]
    if bad or not langs:
        raise TextCorpusError(f"languages are en and zh, not {', '.join(bad) or 'none'}")
    if fortunes:
        for path, lang in fortune_files(langs):
            for n, entry in enumerate(_entries(_read(path))):
                text = clean(entry, lang)
                if is_prose(text):
                    yield Utterance(f"fortunes-{path.name}-{n:05d}", text=text, lang=lang,
                                    extra={"source": f"fortunes/{path.name}"})  # fmt: skip
    stems = Counter(Path(f).stem for f in files)
    for k, name in enumerate(files):
        path = Path(name)
        label = path.stem if stems[path.stem] == 1 else f"{path.stem}{k}"
        if not path.is_file():
            raise TextCorpusError(f"{path}: no such file")
        if path.suffix == ".parquet":  # a corpus this command wrote (id, text, lang)
            for row in parquet_rows([path], ("id", "text", "lang")):
                if row["lang"] in langs and is_prose(row["text"]):
                    yield Utterance(f"{label}-{row['id']}", text=row["text"], lang=row["lang"],
                                    extra={"source": str(path)})  # fmt: skip
            continue
        if path.suffix == ".jsonl":
            for _, row in iter_manifest(path, need=("text",)):
                text = " ".join(row.text.split()) if "\n" not in row.text else row.text.strip()
                lang = row.lang or guess_lang(text)
                if lang in langs and is_prose(text):
                    yield Utterance(f"{label}-{row.id}", text=text, lang=lang, extra={"source": str(path)})
            continue
        for n, entry in enumerate(_entries(_read(path))):
            lang = guess_lang(entry)
            text = clean(entry, lang)
            if lang in langs and is_prose(text):
                yield Utterance(f"{label}-{n:05d}", text=text, lang=lang, extra={"source": str(path)})


def write_text_corpus(out: str | os.PathLike, fortunes: bool = True, langs: tuple[str, ...] = ("en", "zh"),
                      files=()) -> dict:  # fmt: skip
    """Clean, deduplicate and write the corpus (JSONL, or Parquet for a `.parquet` name); returns counts."""
    out = Path(out)
    if out.suffix not in (".jsonl", ".parquet"):
        raise TextCorpusError(f"{out}: name the output .jsonl or .parquet")
    if not fortunes and not files:
        raise TextCorpusError("nothing to read: keep the fortunes or give text files")
    seen, rows, duplicates = set(), [], 0
    for doc in documents(fortunes, tuple(langs), tuple(files)):
        key = dedupe_key(doc.text)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        rows.append(doc)
    if not rows:
        raise TextCorpusError("no documents: the inputs hold no text")
    if out.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise TextCorpusError(f"Parquet output needs the data extra: pip install 'glm4voice[data]' "
                                  f"({exc})") from None  # fmt: skip
        table = pa.table({"id": [r.id for r in rows], "text": [r.text for r in rows],
                          "lang": [r.lang for r in rows], "source": [r.extra["source"] for r in rows]})  # fmt: skip
        try:
            with atomic_path(out) as tmp:
                pq.write_table(table, tmp)
        except OSError as exc:
            raise TextCorpusError(f"{out}: cannot write it ({exc.strerror or exc})") from None
    else:
        write_manifest(out, rows)
    langs_count = Counter(r.lang for r in rows)
    return {"out": str(out), "documents": len(rows), "duplicates": duplicates,
            "by_lang": dict(sorted(langs_count.items())), "characters": sum(len(r.text) for r in rows)}  # fmt: skip
