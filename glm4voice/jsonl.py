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


def read_json_object(path: str | os.PathLike, what: str, error=Glm4VoiceError) -> dict:
    """One JSON object from a file (a config): every way it can fail is one `error` line naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except PermissionError:
        raise error(f"{path}: permission denied (cannot read the {what})") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: the {what} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: the {what} is not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(value, dict):
        raise error(f"{path}: the {what} must be a JSON object, not a {type(value).__name__}")
    return value


def positive_int(value, key: str, source: str, error=Glm4VoiceError) -> int:
    """A config's count (layers, heads, widths): a positive integer, or one `error` line naming the key."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"{source}: {key} must be a positive integer, not {value!r}")
    return value
