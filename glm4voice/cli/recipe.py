"""`glm4voice recipe`: the training stages in order, resumable (glm4voice.recipe)."""

from __future__ import annotations

import sys

from .common import add_command


def _add_recipe(sub) -> None:
    p = add_command(sub, "recipe", "train the whole system stage by stage (resumable): `recipe tiny`", _run_recipe)
    p.add_argument("name", choices=["tiny"], help="which recipe: tiny = this project's CPU-sized one")
    p.add_argument("--out", required=True, help="recipe folder: one sub-folder per stage, done.json when finished")
    p.add_argument("--smoke", action="store_true", help="every stage on a handful of rows, in seconds")
    p.add_argument("--until", help="stop after this stage")
    p.add_argument("--only", help="run this stage alone (the stages it reads must be done): e.g. the vocoder in a "
                   "second process beside the tokenizer stage")  # fmt: skip
    p.add_argument("--jobs", type=int, default=1, help="stages run side by side when their inputs are done, each in "
                   "its own process with an even share of the cores, which a trainer's grows when another stage "
                   "finishes (2 on 2 cores: the decoder trains beside the LM stages; each stage's lines go to "
                   "OUT/<stage>/log.txt)")  # fmt: skip


def _run_recipe(args) -> int:
    from ..errors import Glm4VoiceError
    from ..recipe import run_stages
    from ..recipe.tiny import stages

    chosen = stages(smoke=args.smoke)
    names = [s.name for s in chosen]
    for flag, value in (("--until", args.until), ("--only", args.only)):
        if value is not None and value not in names:
            raise Glm4VoiceError(f"{flag} {value!r}: the stages are {', '.join(names)}")
    if args.until is not None and args.only is not None:
        raise Glm4VoiceError("give --until or --only, not both")
    if args.jobs < 1 or (args.jobs > 1 and args.only is not None):
        raise Glm4VoiceError(f"--jobs {args.jobs}: at least 1, and 1 with --only (it runs one stage)")

    def spawn(name: str) -> list[str]:  # one stage alone: what --jobs runs side by side
        return [sys.executable, "-m", "glm4voice", "recipe", args.name, "--out", str(args.out), "--only", name,
                *(["--smoke"] if args.smoke else [])]  # fmt: skip

    done = run_stages(chosen, args.out, until=args.until, only=args.only, jobs=args.jobs, spawn=spawn)
    made = f"the bundle: {done['bundle']['bundle']}" if "bundle" in done else f"stages done: {', '.join(done)}"
    print(f"glm4voice recipe: {made} (stages: {', '.join(names)})", file=sys.stderr)
    return 0


def add(sub) -> None:
    _add_recipe(sub)
