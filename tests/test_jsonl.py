import pytest

from glm4voice.errors import Glm4VoiceError
from glm4voice.jsonl import read_jsonl


def test_read_jsonl(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n\n  \n[2]\n')
    assert list(read_jsonl(path)) == [(f"{path}:1", {"a": 1}), (f"{path}:4", [2])]
    path.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(Glm4VoiceError, match=r"m.jsonl:2: not JSON"):
        list(read_jsonl(path))
    with pytest.raises(Glm4VoiceError, match="no such file"):
        list(read_jsonl(tmp_path / "missing.jsonl"))
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(Glm4VoiceError, match="cannot read the manifest"):
        list(read_jsonl(path, "manifest"))
