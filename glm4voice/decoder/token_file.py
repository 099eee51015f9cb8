"""Read speech ids from a JSON file for `glm4voice decode`.

Accepted: a JSON list of ids; an object `{"tokens": [...]}`; or the JSON lines
`glm4voice tokenize` prints (`{"file": ..., "seconds": ..., "tokens": [...]}`
per file). Several lines are concatenated in order, so the ids of every file
are decoded as one utterance; lines carrying an `error` are skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import Glm4VoiceError


class TokenFileError(Glm4VoiceError, ValueError):
    """A token file that is missing or holds no usable ids."""


def _ids_of(value, where: str) -> list[int]:
    if isinstance(value, dict):
        if "tokens" not in value:
            raise TokenFileError(f"{where}: object without a 'tokens' list")
        value = value["tokens"]
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TokenFileError(f"{where}: expected a list of integer ids")
    return value


def read_token_file(path: str | os.PathLike) -> list[int]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise TokenFileError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"{path}: cannot read ({exc})") from exc
    if not text.strip():
        raise TokenFileError(f"{path}: empty file")
    try:
        return _ids_of(json.loads(text), str(path))
    except json.JSONDecodeError:
        pass  # maybe JSON lines
    ids: list[int] = []
    found = False
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TokenFileError(f"{path}: line {number} is not JSON ({exc.msg})") from exc
        if isinstance(record, dict) and "error" in record and "tokens" not in record:
            continue
        ids += _ids_of(record, f"{path}: line {number}")
        found = True
    if not found:
        raise TokenFileError(f"{path}: no line holds speech ids")
    return ids
