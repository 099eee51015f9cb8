"""Seeded fuzzing of the CLI and the Python API with generated bad input (issue 16's proof).

Every case damages one input (a checkpoint file, a codes file, an audio file, a
manifest) or passes one bad option value, runs the command in this process,
and checks what a user would: a traceback never escapes, nothing hangs, and a
failure is exit 2 with one stderr line `glm4voice CMD: error: ...` that names
the damaged input (or exit 1 with a per-file error line, where documented),
leaving the output that was there before byte-identical. A damage that leaves
the input usable (a flipped bit inside a weight) may succeed: that is fine.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
from pathlib import Path

import pytest

from glm4voice.cli import main

GOLDEN = Path(__file__).parent / "golden"
SEED = 16
KEEP = b"an earlier reply, which a failed run must leave as it is"

# target -> (the files that get damaged, how the command is run)
FILES = {
    "tokenizer": ["config.json", "preprocessor_config.json", "model.safetensors"],
    "decoder": ["config.yaml", "flow.pt", "hift.pt"],
    "lm": ["config.json", "model.safetensors", "tokenizer_config.json", "tokenizer.model"],
    "codes": ["codes.json"],
    "audio": ["in.wav"],
}
JSON_VALUES = ["x", -1, 0, 2.5, None, [], {}, 1e30, True, "", [1, 2]]
OPTIONS = {  # command -> options with values a user might mistype
    "tokenize": {"--batch-size": ["0", "-3", "2.5", "abc", ""], "--device": ["cuda:99", "gpu", ""],
                 "--dtype": ["float8", "int"]},
    "decode": {"--mode": ["fast"], "--device": ["bogus", "mps:7"], "--dtype": ["half8"]},
    "chat": {"--temperature": ["nan", "-1", "inf", "x"], "--top-p": ["0", "1.5", "nan"], "--top-k": ["-1", "2.5"],
             "--max-new-tokens": ["0", "-5", "1e3"], "--seed": ["-1", str(2**64), "s"],
             "--flow-steps": ["0", "-2", "1.5"]},
}  # fmt: skip


def damage(data: bytes, kind: str, rng: random.Random, name: str) -> bytes:
    if kind == "empty":
        return b""
    if kind == "truncate":
        return data[: rng.randrange(max(1, len(data)))]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == "garbage":
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096)))
    if kind == "not-utf8":
        return b"\xff\xfe\x00" + data
    if kind == "json-value":
        doc = json.loads(data)
        if isinstance(doc, dict) and doc:
            doc[rng.choice(sorted(doc))] = rng.choice(JSON_VALUES)
        elif isinstance(doc, list) and doc:
            doc[rng.randrange(len(doc))] = rng.choice(JSON_VALUES)
        return json.dumps(doc).encode()
    if kind == "json-type":
        return json.dumps(rng.choice([[1, 2], "text", 3, None, [{"codes": "x"}]])).encode()
    if kind == "json-drop":
        doc = json.loads(data)
        if isinstance(doc, dict) and doc:
            del doc[rng.choice(sorted(doc))]
        return json.dumps(doc).encode()
    if kind == "yaml-value":  # a number of the decoder's config becomes something else
        lines = data.decode().splitlines()
        numeric = [i for i, line in enumerate(lines) if line.rstrip().split(":")[-1].strip().lstrip("-").isdigit()]
        i = rng.choice(numeric)
        key = lines[i].rsplit(":", 1)[0]
        lines[i] = f"{key}: {rng.choice(['0', '-3', '2.5', 'abc', '[]', '{', '!!python/object:os.system'])}"
        return ("\n".join(lines) + "\n").encode()
    if kind == "yaml-line":
        lines = data.decode().splitlines()
        del lines[rng.randrange(len(lines))]
        return ("\n".join(lines) + "\n").encode()
    raise AssertionError(kind)


def kinds_for(name: str) -> list[str]:
    base = ["empty", "truncate", "flip", "garbage"]
    if name.endswith(".json"):
        return [*base, "not-utf8", "json-value", "json-type", "json-drop"]
    if name.endswith(".yaml"):
        return [*base, "not-utf8", "yaml-value", "yaml-line"]
    return base


def file_cases() -> list[tuple[str, str, str, int]]:
    rng = random.Random(SEED)
    cases = []
    for target, names in FILES.items():
        for name in names:
            for kind in kinds_for(name):
                cases.append((target, name, kind, rng.randrange(2**31)))
    return cases


def option_cases() -> list[tuple[str, str, str]]:
    return [(cmd, flag, value) for cmd, options in OPTIONS.items() for flag, values in options.items()
            for value in values]  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    from glm4voice.lm.tiny import write_tiny_lm

    root = tmp_path_factory.mktemp("fuzz-models")
    write_tiny_lm(root / "lm", n_audio=16, seed=0)
    return root


def setup(work: Path, models: Path) -> dict[str, Path]:
    """Fresh, good inputs in `work`: a damaged case never sees another's damage."""
    paths = {"tokenizer": work / "tokenizer", "decoder": work / "decoder", "lm": work / "lm"}
    shutil.copytree(GOLDEN / "tokenizer", paths["tokenizer"])
    shutil.copytree(GOLDEN / "decoder", paths["decoder"])
    shutil.copytree(models / "lm", paths["lm"])
    paths["codes"], paths["audio"], paths["out"] = work / "codes", work / "audio", work / "out.wav"
    paths["codes"].mkdir()
    paths["audio"].mkdir()
    (paths["codes"] / "codes.json").write_text(json.dumps({"codes": [1, 5, 9, 2, 7, 3, 3, 8]}))
    shutil.copy(GOLDEN / "tokenizer" / "in0.wav", paths["audio"] / "in.wav")
    paths["out"].write_bytes(KEEP)
    return paths


def argv_for(target: str, p: dict[str, Path]) -> list[str]:
    if target in ("tokenizer", "audio"):
        return ["tokenize", "--speech-tokenizer", str(p["tokenizer"]), str(p["audio"] / "in.wav")]
    if target in ("decoder", "codes"):
        return ["decode", "--decoder", str(p["decoder"]), "--codes", str(p["codes"] / "codes.json"),
                "--out", str(p["out"])]  # fmt: skip
    return ["chat", "--lm", str(p["lm"]), "--speech-tokenizer", str(p["tokenizer"]), "--decoder", str(p["decoder"]),
            "--text", "hi", "--max-new-tokens", "12", "--flow-steps", "2", "--out", str(p["out"])]  # fmt: skip


def run_bounded(argv: list[str], seconds: int = 60) -> int:
    """main(argv) in this process; a hang is a failure, and so is any exception that escapes."""

    def hung(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        try:
            return main(argv)
        except SystemExit as exc:  # argparse
            return int(exc.code or 0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def check_failure(code: int, out: str, err: str, command: str, names: list[str], per_file: bool) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    if per_file and code == 1:  # `tokenize`: an error line on stdout per file, one summary line on stderr
        rows = [json.loads(line) for line in out.splitlines()]
        assert any("error" in row and any(n in row["error"] for n in names) for row in rows), out
        assert len(lines) == 1 and "files failed" in lines[0], err
        return
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith(f"glm4voice {command}: error: "), err
    assert any(n in lines[0] for n in names), (names, lines[0])


@pytest.mark.parametrize("target, name, kind, seed", file_cases(), ids=lambda v: str(v))
def test_damaged_inputs(tmp_path, models, capsys, target, name, kind, seed):
    p = setup(tmp_path, models)
    folder = p[target]
    path = folder / name
    path.write_bytes(damage(path.read_bytes(), kind, random.Random(seed), name))
    argv = argv_for(target, p)
    code = run_bounded(argv)
    out, err = capsys.readouterr()
    if code == 0:  # the damage left the input usable
        assert "Traceback" not in err
        return
    check_failure(code, out, err, argv[0], [str(folder)], per_file=argv[0] == "tokenize")
    assert p["out"].read_bytes() == KEEP  # the earlier output is untouched


@pytest.mark.parametrize("command, flag, value", option_cases())
def test_bad_option_values(tmp_path, models, capsys, command, flag, value):
    p = setup(tmp_path, models)
    target = {"tokenize": "tokenizer", "decode": "decoder", "chat": "lm"}[command]
    argv = [*argv_for(target, p), f"{flag}={value}"]
    code = run_bounded(argv)
    out, err = capsys.readouterr()
    assert code == 2, (argv, code, out[-300:], err)
    names = [flag, flag.lstrip("-"), flag.lstrip("-").replace("-", "_"), value]
    check_failure(code, out, err, command, [n for n in names if n], per_file=False)
    assert p["out"].read_bytes() == KEEP


MANIFEST_DAMAGE = ["empty", "truncate", "flip", "garbage", "not-utf8", "json-value", "json-type", "json-drop"]


@pytest.mark.parametrize("kind", MANIFEST_DAMAGE)
def test_damaged_manifests(tmp_path, capsys, kind):
    """A corpus manifest (every trainer's input) and a text manifest (`data speak`): a named line, or fine."""
    from glm4voice.data.manifest import read_manifest
    from glm4voice.errors import Glm4VoiceError

    rng = random.Random(f"{SEED}-{kind}")
    rows = [{"id": f"u{i}", "audio": "in.wav", "text": "hello there", "lang": "en", "speaker": "s", "seconds": 1.0}
            for i in range(4)]  # fmt: skip
    shutil.copy(GOLDEN / "tokenizer" / "in0.wav", tmp_path / "in.wav")
    lines = [json.dumps(r).encode() for r in rows]
    i = rng.randrange(len(lines))
    lines[i] = damage(lines[i], kind, rng, "manifest.jsonl").replace(b"\n", b" ")
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    try:
        list(read_manifest(manifest))
    except Glm4VoiceError as exc:
        assert str(manifest) in str(exc) and "\n" not in str(exc)
    texts = tmp_path / "texts.jsonl"
    texts.write_bytes(b"\n".join(lines) + b"\n")
    code = run_bounded(["data", "speak", "--texts", str(texts), "--out", str(tmp_path / "corpus"), "--no-progress"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if code != 0:
        assert code in (1, 2) and len(err.strip().splitlines()) == 1 and str(texts) in err, (code, out, err)
