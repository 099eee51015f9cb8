import huggingface_hub
import pytest

from glm4voice.errors import CheckpointError
from glm4voice.hub import resolve_checkpoint


def test_local_folder_never_touches_the_network(golden, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a local folder must not reach the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    folder = resolve_checkpoint(golden / "tokenizer", ["config.json"], "tokenizer")
    assert folder == golden / "tokenizer"


def test_hub_id_in_offline_mode_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="hub download failed") as info:
        resolve_checkpoint("THUDM/glm-4-voice-tokenizer", ["config.json"], "tokenizer")
    assert "THUDM/glm-4-voice-tokenizer" in str(info.value)


def test_hub_id_goes_through_huggingface_hub(golden, monkeypatch, tmp_path):
    calls = []

    def fake_download(repo_id, allow_patterns):
        calls.append(repo_id)
        return str(golden / "tokenizer")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.chdir(tmp_path)
    folder = resolve_checkpoint("THUDM/glm-4-voice-tokenizer", ["config.json"], "tokenizer")
    assert calls == ["THUDM/glm-4-voice-tokenizer"] and (folder / "config.json").is_file()


def test_missing_files_and_non_folders(golden, tmp_path):
    with pytest.raises(CheckpointError, match="missing nope.bin"):
        resolve_checkpoint(golden / "tokenizer", ["config.json", "nope.bin"], "tokenizer")
    file = tmp_path / "f.txt"
    file.write_text("x")
    with pytest.raises(CheckpointError, match="not a folder"):
        resolve_checkpoint(file, ["config.json"], "tokenizer")
