"""data interleave: span statistics, loss masks of every kind, the same bytes for any number of actors,
a run killed with SIGKILL finishing byte-identical, clear errors."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

from glm4voice.cli import main  # noqa: E402
from glm4voice.data.interleave import sample_spans, words_of  # noqa: E402
from glm4voice.lm.text import TextTokenizer  # noqa: E402
from glm4voice.lm.tiny import write_tiny_lm  # noqa: E402

WORDS = "the quick brown fox jumps over a lazy dog while seven small birds sing in the old oak tree".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("il")
    t2t = write_tiny_lm(root / "t2t", n_audio=32)  # random weights: the pipeline, not the speech, is tested here
    rng = random.Random(0)
    rows = [{"id": f"d{i}", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20)))} for i in range(18)]
    rows.append({"id": "zh", "text": "今天是星期三，明天是星期四。", "lang": "zh"})
    (root / "corpus.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return root, t2t


def test_span_statistics_match_the_settings():
    rng = random.Random(1)
    for eta, mean in ((0.3, 5.0), (0.2, 2.0)):
        covered = total = spans = 0
        for _ in range(3000):
            n = rng.randint(30, 80)
            found = sample_spans(n, eta, mean, rng)
            assert all(b - a >= 1 for a, b in found) and all(b1 < a2 for (_, b1), (a2, _) in zip(found, found[1:]))
            covered += sum(b - a for a, b in found)
            total += n
            spans += len(found)
        assert covered / total == pytest.approx(eta, abs=0.01)
        assert covered / spans == pytest.approx(mean, rel=0.1)
    assert "".join(words_of("  Hello  wide world", "en")) == "  Hello  wide world"
    assert words_of("你好", "zh") == ["你", "好"]


def test_short_documents_get_their_share_of_speech():
    """The expected speech is eta * n for short documents too (sentences, question/answer pairs), not only for
    documents many spans long: sampling stopped before the target left them mostly text."""
    rng = random.Random(2)
    for n in (1, 3, 6, 10):
        draws = [sample_spans(n, 0.3, 5.0, rng) for _ in range(20000)]
        covered = sum(b - a for found in draws for a, b in found)
        assert covered / (n * len(draws)) == pytest.approx(0.3, abs=0.01), n
        assert all(0 <= a < b <= n for found in draws for a, b in found)
    assert sample_spans(0, 0.3, 5.0, rng) == []


def run_cli(setup, out, *extra):
    root, t2t = setup
    return main(["data", "interleave", "--t2t", str(t2t), "--corpus", str(root / "corpus.jsonl"), "--out", str(out),
                 "--docs-per-shard", "2", "--seq-length", "64", "--pairs", str(root / "pairs"), "--no-progress",
                 *extra])  # fmt: skip


def shard_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.parquet"))}


@pytest.fixture(scope="module")
def one_actor(setup, tmp_path_factory):
    import pyarrow as pa

    root, _ = setup
    (root / "pairs").mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["hello", None],
                             "codes": pa.array([[1, 2, 3], [4, 5]], pa.list_(pa.int32()))}),
                   root / "pairs" / "p.parquet")  # fmt: skip
    out = tmp_path_factory.mktemp("one") / "out"
    assert run_cli(setup, out) == 0
    return out


def test_same_bytes_with_one_and_two_actors_and_loss_masks(setup, one_actor, tmp_path, capsys):
    root, t2t = setup
    assert run_cli(setup, tmp_path / "two", "--actors", "2") == 0
    assert shard_bytes(one_actor) == shard_bytes(tmp_path / "two") and len(shard_bytes(one_actor)) == 11
    report = json.loads((one_actor / "report.json").read_text())
    assert report["documents"] == 19 and report["failed"] == 0 and 0.2 < report["achieved_eta"] < 0.4
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["ids"] == report["ids"]  # printed = on disk
    table = [row for shard in sorted(one_actor.glob("shard-*.parquet")) for row in pq.read_table(shard).to_pylist()]
    tok = TextTokenizer.from_pretrained(t2t)
    boa, eoa = tok.token_id("<|begin_of_audio|>"), tok.token_id("<|end_of_audio|>")
    mixed = [r for r in table if r["kind"] == "interleaved"]
    assert {r["doc_id"] for r in mixed} == {f"corpus-d{i}" for i in range(18)} | {"corpus-zh"}
    for r in mixed:
        assert len(r["ids"]) <= 64 and r["loss_mask"] == [1] * len(r["ids"])
    whole = [r for r in mixed if r["piece"] == 0 and r["spans"] and len(r["ids"]) < 64]
    assert whole and all(r["ids"].count(boa) == len(r["spans"]) for r in whole)
    inside = False  # every id between the delimiters is a speech unit, every other id is text
    for r in mixed:
        for i in r["ids"]:
            inside = True if i == boa else False if i == eoa else inside
            assert tok.is_audio(i) == (inside and i != boa)
    # the paired kinds: speech only (both rows), ASR (loss on the text only), TTS (loss on the speech)
    paired = {r["kind"]: r for r in table if r["kind"] in ("asr", "tts")}
    assert [r["kind"] for r in table].count("speech") == 2 and set(paired) == {"asr", "tts"}
    for kind, row in paired.items():
        speech = [tok.is_audio(i) for i in row["ids"]]
        learn = [bool(m) for m in row["loss_mask"]]
        if kind == "asr":
            assert not any(s and m for s, m in zip(speech, learn)) and any(learn)
        else:
            assert all(m for s, m in zip(speech, learn) if s) and not all(learn)
    assert run_cli(setup, one_actor) == 2  # a finished run is never overwritten
    assert "already exists" in capsys.readouterr().err


def test_killed_run_finishes_byte_identical(setup, one_actor, tmp_path):
    root, t2t = setup
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "glm4voice", "data", "interleave", "--t2t", str(t2t), "--corpus",
           str(root / "corpus.jsonl"), "--out", str(out), "--docs-per-shard", "2", "--seq-length", "64",
           "--pairs", str(root / "pairs"), "--no-progress"]  # fmt: skip
    ray_home = tempfile.mkdtemp(prefix="il-", dir="/tmp")  # the killed run's Ray lives here (a short path:
    # Ray's socket names must fit), so its remains can be found and ended
    env = {**os.environ, "RAY_TMPDIR": str(ray_home)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env)  # fmt: skip
    partial = tmp_path / "killed.partial"
    deadline = time.time() + 600
    while time.time() < deadline and len(list(partial.glob("shard-*.parquet"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _end_processes_with(ray_home)  # Ray's workers run in sessions of their own: not in the killed group
    assert not out.exists(), "killed before the end (make the corpus bigger if this machine is that fast)"
    shutil.rmtree(ray_home, ignore_errors=True)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-1500:]
    assert shard_bytes(out) == shard_bytes(one_actor) and not list(out.glob(".*"))
    assert json.loads(done.stdout)["documents"] == 19


def _end_processes_with(marker: str) -> None:
    """SIGKILL every process whose environment holds `marker` (the killed run's Ray workers)."""
    from pathlib import Path

    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def test_bad_input_is_one_line(setup, tmp_path, capsys):
    root, t2t = setup
    (root / "bad.jsonl").write_text('{"id": "x", "text": "ok"}\nnot json\n')
    assert main(["data", "interleave", "--t2t", str(t2t), "--corpus", str(root / "bad.jsonl"), "--out",
                 str(tmp_path / "a")]) == 2  # fmt: skip
    assert main(["data", "interleave", "--t2t", str(tmp_path / "none"), "--corpus", str(root / "corpus.jsonl"),
                 "--out", str(tmp_path / "b")]) == 2  # fmt: skip
    assert run_cli(setup, tmp_path / "c", "--eta", "1.5") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "bad.jsonl:2" in err[0] and "--eta" in err[2], err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_blank_stretches_stay_text(setup, tmp_path):
    """A span of nothing but a space (Mandarin text with spaces: each character and each space is a piece) is
    never sent to the t2t model, which refuses an empty text and took the whole block's documents with it."""
    from glm4voice.data.interleave import InterleaveOptions, make_shard
    from glm4voice.lm.t2t import TextToToken

    _, t2t = setup
    model = TextToToken.from_pretrained(t2t)
    docs = [{"id": f"s{i}", "text": "今 天 是 星 期 三 ， 明 天 是 星 期 四", "lang": "zh"} for i in range(8)]
    for index in range(3):
        report = make_shard(model, {"index": index, "docs": docs}, InterleaveOptions(eta=0.5, span_mean=1.0),
                            tmp_path)  # fmt: skip
        assert report["failed"] == [] and report["documents"] == 8
