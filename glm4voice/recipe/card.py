"""The model card a recipe writes into its bundle (`README.md`): what the bundle is, what it was trained on, how big
and how long, and how it scores. Every figure comes from the stages' `done.json` and the eval report, so the card
of a retrained bundle is never stale."""

from __future__ import annotations

from pathlib import Path

PARTS = {
    "tokenizer": "speech tokenizer (Whisper encoder up to the VQ, 12.5 Hz codes)",
    "lm": "speech-text LM (Glm)",
    "decoder": "speech decoder (flow matching + HiFT)",
    "t2t": "text-to-token model (Glm)",
}


def _part_parameters(folder: Path) -> int:
    """Parameters stored in a part's weight files (safetensors headers, decoder .pt files)."""
    import torch
    from safetensors import safe_open

    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                n = 1
                for d in f.get_slice(name).get_shape():
                    n *= d
                total += n
    for path in sorted(folder.glob("*.pt")):
        state = torch.load(path, map_location="cpu", weights_only=True)
        total += sum(t.numel() for t in state.values() if torch.is_tensor(t) and t.is_floating_point())
    return total


def megabytes(folder: Path) -> float:
    """Size on disk of every file under `folder`, in MiB."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def card(bundle: Path, done: dict, report: Path | None, run: Path | None = None) -> str:
    """The card's markdown; `done`: every stage's summary by name; `report`: the eval's results.md; `run`: the
    recipe's folder (its stage folders that link to another run's are named, with that run)."""
    lines = ["# glm4voice tiny", "",
             "A GLM-4-Voice-shaped spoken chatbot trained from nothing by `glm4voice recipe tiny` on a 2-core CPU:",
             "synthetic speech (Debian's espeak-ng, flite and festival voices) of a tiny bilingual domain (arithmetic,",
             "capitals, colours, opposites, animals, short stories) and short Debian fortunes. It listens and answers",
             "in that domain only, in one assistant voice per language. It shows the recipe works; it is not the",
             "released 9B model. Weights are stored in bf16; every part computes in float32 on a CPU.", "",
             "    glm4voice chat --model-dir models/tiny question.wav --out reply.wav   (or no --model-dir at all)", "",
             "## Parts", "", "| part | what | parameters | MB |", "|---|---|---|---|"]  # fmt: skip
    for name, what in PARTS.items():
        folder = bundle / name
        if folder.is_dir():
            lines.append(f"| `{name}/` | {what} | {_part_parameters(folder) / 1e6:.2f} M | {megabytes(folder):.1f} |")
    lines += ["", f"In all {megabytes(bundle):.1f} MB.", "", "## Data", ""]
    texts, speech = done.get("texts", {}), done.get("speech", {})
    if texts:
        fortunes = texts.get("fortunes", {})
        lines.append(f"- texts: {texts.get('train_rows')} training rows (the domain and {fortunes.get('en', 0)} "
                     f"English / {fortunes.get('zh', 0)} Mandarin fortunes), {texts.get('test_rows')} held-out "
                     f"test rows (questions and stories never trained on)")  # fmt: skip
    for split, what in (("train", "every voice, augmented"), ("test", "held-out voice settings"),
                        ("assistant", "the assistant's voice"),
                        ("assistant-t2t", "the assistant's voice: fortunes and word lists")):  # fmt: skip
        if split in speech:
            s = speech[split]
            lines.append(f"- speech `{split}` ({what}): {s['rows']} utterances, {s['audio_seconds'] / 3600:.2f} h")
    lines += ["", "## Training", "", "| stage | seconds | figures |", "|---|---|---|"]
    total = 0.0
    for name, summary in done.items():
        # a trainer's seconds count every run it resumed; the stage's own, its last run
        seconds = max(float(summary.get("seconds", 0)), float(summary.get("train_seconds", 0)))
        total += seconds
        figures = {k: v for k, v in summary.items() if isinstance(v, int | float) and "seconds" not in k}
        shown = ", ".join(f"{k} {v}" for k, v in figures.items())
        lines.append(f"| {name} | {seconds:.0f} | {shown} |")
    lines += ["", f"The stages' times add up to {total / 3600:.2f} h of this machine (a trainer's counts every run it "
              "resumed; two stages may have run side by side, so the wall clock may have been shorter). A "
              "trainer's `loss` (and `loss_ids`, the ids a batch's loss counts) is the mean of its last 20 logged "
              "steps.", *_borrowed(run, done), *_continued(done), "",
              "## Evaluation", ""]  # fmt: skip
    if report is not None and report.is_file():
        body = report.read_text(encoding="utf-8").splitlines()
        # the report's title dropped, its sections (qa by task) one level under the card's "Evaluation"
        body = ["#" + line if line.startswith("## ") else line for line in body if not line.startswith("# ")]
        lines += body[next((i for i, line in enumerate(body) if line.strip()), len(body)):]  # from its first words
    else:
        lines.append("(no report)")
    return "\n".join(lines).rstrip() + "\n"


def _borrowed(run: Path | None, done: dict) -> list[str]:
    """A line naming the stages whose folders link to another run's (a run that retrains only its last stages
    reuses the earlier ones that way): whose run made them."""
    if run is None:
        return []
    by_run: dict[str, list[str]] = {}
    home = Path(run).resolve().parent  # a run in the folder that holds `run` is named from it, as `run` is;
    for name in done:  # one elsewhere, by its own full path
        if (Path(run) / name).is_symlink():
            made = (Path(run) / name).resolve().parent
            where = str(Path(run).parent / made.relative_to(home)) if made.is_relative_to(home) else str(made)
            by_run.setdefault(where, []).append(name)
    if not by_run:
        return []
    return ["", "Stages another run made (this run's folders link to theirs): " +
            "; ".join(f"{', '.join(names)}: `{where}`" for where, names in by_run.items()) + "."]  # fmt: skip


def _continued(done: dict) -> list[str]:
    """A line naming the stages a run trained further by hand from another run's checkpoint (their summary's
    `continued_from`), so the card says the stage's figures are not one run of the recipe's settings."""
    named = [f"{name} from `{summary['continued_from']}`" for name, summary in done.items()
             if isinstance(summary.get("continued_from"), str)]  # fmt: skip
    if not named:
        return []
    return ["", "Stages trained further from another run's checkpoint (their figures are the last run's): " +
            "; ".join(named) + "."]


def write_card(bundle: Path, done: dict, report: Path | None, run: Path | None = None) -> Path:
    from ..atomic import write_text

    path = bundle / "README.md"
    write_text(path, card(bundle, done, report, run))
    return path

