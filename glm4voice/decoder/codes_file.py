"""Read speech codes from a JSON file for `glm4voice decode`.

Accepted: a JSON list of codes; an object `{"codes": [...]}`; or the JSON lines
`glm4voice tokenize` prints (`{"file": ..., "seconds": ..., "codes": [...]}`
per file). Several lines are concatenated in order, so the codes of every file
are decoded as one utterance; lines carrying an `error` are skipped. The key
`tokens` (what earlier versions wrote) is read as `codes`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import Glm4VoiceError

KEYS = ("codes", "tokens")


class CodesFileError(Glm4VoiceError, ValueError):
    """A codes file that is missing or holds no usable codes."""


def _codes_of(value, where: str) -> list[int]:
    if isinstance(value, dict):
        key = next((k for k in KEYS if k in value), None)
        if key is None:
            raise CodesFileError(f"{where}: object without a 'codes' list")
        value = value[key]
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise CodesFileError(f"{where}: expected a list of integer codes")
    return value


def read_codes_file(path: str | os.PathLike) -> list[int]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise CodesFileError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CodesFileError(f"{path}: cannot read ({exc})") from exc
    if not text.strip():
        raise CodesFileError(f"{path}: empty file")
    try:
        return _codes_of(json.loads(text), str(path))
    except json.JSONDecodeError:
        pass  # maybe JSON lines
    codes: list[int] = []
    found = False
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CodesFileError(f"{path}: line {number} is not JSON ({exc.msg})") from exc
        if isinstance(record, dict) and "error" in record and not any(k in record for k in KEYS):
            continue
        codes += _codes_of(record, f"{path}: line {number}")
        found = True
    if not found:
        raise CodesFileError(f"{path}: no line holds speech codes")
    return codes
