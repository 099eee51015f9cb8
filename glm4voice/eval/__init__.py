"""`glm4voice eval`: the figures of a model bundle (the tiny one here, the released one on a GPU).

    glm4voice eval --model-dir models/tiny --suite asr,qa,rate --manifest test.jsonl --out report/

Writes REPORT/results.json (every figure, with the rows it came from), REPORT/results.md (a table beside the
tiny recipe's targets) and plots where a picture says more (latency, rate). The suites are in suites.py.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from ..errors import Glm4VoiceError
from ..machine import machine
from .bundle import Bundle
from .suites import SUITES

# The tiny recipe's targets (issue 14), shown beside the figures: (suite, figure) -> (rule, bound).
TARGETS = {("asr", "wer_en"): ("<=", 0.05), ("asr", "cer_zh"): ("<=", 0.08), ("recon", "wer_ratio"): ("<=", 1.5),
           ("qa", "s2t_en"): (">=", 0.9), ("qa", "s2t_zh"): (">=", 0.8), ("qa", "s2s_en"): (">=", 0.7),
           ("cloze", "s2t"): (">=", 0.9), ("cloze", "s2s"): (">=", 0.8), ("rate", "slow_over_normal"): (">=", 1.25),
           ("rate", "normal_over_quick"): (">=", 1.25), ("latency", "first_audio_p50"): ("<=", 1.0)}  # fmt: skip


def parse_suites(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in SUITES and s != "all"]
    if bad or not names:
        raise Glm4VoiceError(f"--suite {text!r}: choose from {', '.join(SUITES)} (or all), comma-separated")
    return list(SUITES) if "all" in names else names


def evaluate(model_dir, suites: list[str], manifest, out, limit: int | None = None, device: str = "cpu",
             log=print) -> dict:  # fmt: skip
    """Run `suites` on the bundle over the manifest's rows (`limit` of each (role, task, language) when given,
    evenly spaced through them: different contents rather than one content phrased every way)."""
    from ..data.manifest import read_manifest, spread_of_each

    rows = read_manifest(manifest, need=()) if manifest is not None else []
    bundle = Bundle(model_dir, device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # where and how the figures were measured: latency and speed depend on the machine, the rest on the rows
    results = {"model_dir": str(model_dir), "manifest": None if manifest is None else str(manifest),
               "limit": limit, "device": str(device), "machine": machine(device),
               "date": time.strftime("%Y-%m-%d", time.gmtime()), "suites": {}}  # fmt: skip
    # up to `limit` of each (role, task, lang), evenly spaced through its rows; a story's endings count as one
    picked = spread_of_each(rows, limit, lambda r: (r.extra.get("role"), r.extra.get("task"), r.lang),
                            lambda r: r.extra.get("pair"))  # fmt: skip
    for name in suites:
        start = time.perf_counter()
        figures = SUITES[name](bundle, picked)
        figures["seconds_taken"] = round(time.perf_counter() - start, 1)
        results["suites"][name] = figures
        log(json.dumps({"suite": name, **{k: v for k, v in figures.items() if not isinstance(v, (list, dict))}},
                       ensure_ascii=False))  # fmt: skip
    from ..atomic import write_text

    write_text(out / "results.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    write_text(out / "results.md", table(results))
    plots(results, out)
    return results


def table(results: dict) -> str:
    lines = [f"# Evaluation of `{results['model_dir']}`", "", *(f"{line}\n" for line in _measured_on(results)),
             "| suite | figure | value | target | met |", "|---|---|---|---|---|"]  # fmt: skip
    for suite, figures in results["suites"].items():
        for name, value in figures.items():
            if isinstance(value, (list, dict)) or name.startswith("n_") or name == "seconds_taken":
                continue
            rule = TARGETS.get((suite, name))
            target = f"{rule[0]} {rule[1]}" if rule else ""
            met = "" if rule is None or value is None else ("yes" if (value <= rule[1] if rule[0] == "<=" else
                                                                     value >= rule[1]) else "no")  # fmt: skip
            n = figures.get(f"n_{name}", "")
            lines.append(f"| {suite} | {name}{f' (n={n})' if n else ''} | {value} | {target} | {met} |")
    for suite, figures in results["suites"].items():  # breakdowns (qa's by_task): one table each
        for name, value in figures.items():
            if isinstance(value, dict) and value:
                kinds = sorted({kind for row in value.values() for kind in row})
                lines += ["", f"## {suite}, {name.replace('_', ' ')}", "", f"| | {' | '.join(kinds)} |",
                          "|---" * (len(kinds) + 1) + "|"]  # fmt: skip
                lines += [f"| {key} | {' | '.join(str(row.get(kind, '')) for kind in kinds)} |"
                          for key, row in value.items()]  # fmt: skip
    return "\n".join(lines) + "\n"


def _measured_on(results: dict) -> list[str]:
    """The report's provenance, as the line that says how to measure it again (reports written before it: none)."""
    if "machine" not in results:
        return []
    limit = results.get("limit")
    manifest = results["manifest"]
    rows = ("no manifest" if manifest is None else f"every row of `{manifest}`" if limit is None else
            f"at most {limit} rows of each role, task and language of `{manifest}`, evenly spaced")  # fmt: skip
    q = shlex.quote  # a path with spaces stays one argument when the command is pasted into a shell
    again = " ".join(["glm4voice eval", f"--model-dir {q(results['model_dir'])}",
                      f"--suite {','.join(results['suites'])}",
                      *([] if manifest is None else [f"--manifest {q(manifest)}"]),
                      *([] if limit is None else [f"--limit {limit}"]),
                      *([] if results["device"] == "cpu" else [f"--device {results['device']}"]), "--out REPORT"])
    return [f"Measured {results['date']} on {results['device']} ({results['machine']}), {rows}. "
            f"Again: `{again}`."]


def plots(results: dict, out: Path) -> None:
    """latency.png (first audio, each turn) and rate.png (reply seconds by kind), when those suites ran."""
    suites = results["suites"]
    if "latency" not in suites and "rate" not in suites:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if suites.get("latency", {}).get("first_audio_seconds"):
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.hist(suites["latency"]["first_audio_seconds"], bins=20)
        ax.axvline(1.0, color="red", linestyle="--", label="target 1.0 s")
        ax.set_xlabel("end of speech -> first reply audio (s)")
        ax.set_ylabel("turns")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=120)
        plt.close(fig)
    rate = suites.get("rate", {})
    kinds = [k for k in ("slow", "normal", "quick") if f"seconds_{k}" in rate]
    if kinds:
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.bar(kinds, [rate[f"seconds_{k}"] for k in kinds])
        ax.set_ylabel("reply speech (s, mean)")
        fig.tight_layout()
        fig.savefig(out / "rate.png", dpi=120)
        plt.close(fig)


__all__ = ["Bundle", "SUITES", "evaluate", "parse_suites"]
