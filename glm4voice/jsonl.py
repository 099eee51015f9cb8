"""JSON-lines input files (manifests, token files): one reader, errors that name the file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import Glm4VoiceError


def read_jsonl(path: str | os.PathLike, what: str = "file", error=Glm4VoiceError) -> Iterator[tuple[str, object]]:
    """Yield ("path:line", value) for every non-blank line; `error` (a Glm4VoiceError type) on unreadable input."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read the {what} ({exc})") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{where}: not JSON ({exc.msg})") from None
